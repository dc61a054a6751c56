"""train_kd.py's DistillObjective with real small YOLOv5 models (yolov5n student, yolov5s teacher, 64x64, CPU)."""

import logging
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distill.objective import (
    build_kd_objective,
    check_compatible,
    load_teacher,
)
from distill.pairing import default_feature_layers, infer_is_large, pair_layers
from distill.yolo_output import OUTPUT_DEFAULT_ALPHA
from engine.kd_flags import objective_options
from models.yolo import Model
from utils.general import LOGGER, UserError
from utils.losses.yolov5 import ComputeLoss

NC = 3
HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "kd": 1.0}
P5_LAYERS = [f"model.{i}" for i in (2, 4, 6, 8, 9, 13, 17, 20, 23)]


_BUILT = {}


def _build(cfg, nc=NC):
    """Each yaml is built once per test session (building runs a FLOP count); tests get copies."""
    if (cfg, nc) not in _BUILT:
        torch.manual_seed(0)
        _BUILT[cfg, nc] = Model(cfg, nc=nc)
    return deepcopy(_BUILT[cfg, nc])


def _models(teacher_cfg="yolov5s.yaml", teacher_nc=NC):
    return _build("yolov5n.yaml"), _build(teacher_cfg, teacher_nc)


def _batch(seed=0, bs=2):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(bs, 3, 64, 64, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.5], [1, 0, 0.7, 0.3, 0.3, 0.3]])
    return imgs, targets


def _objective(student, teacher, compute_loss=None, **opt):
    """The objective for these flags; the feature loss is AT unless given (these tests check output KD +
    AT, the card's pair; train_kd.py's default feature loss is scorel2, tests/test_distiller_yolo.py)."""
    compute_loss = compute_loss or ComputeLoss.from_model(student, HYP)
    opt.setdefault("feature_loss", "at")
    return build_kd_objective(student, teacher, compute_loss, HYP, **objective_options(SimpleNamespace(**opt)))


def _adapters(objective):
    return objective.distiller.losses["fitnet"].adapters


class Counter:
    def __init__(self, module):
        self.calls, self.modes = 0, []
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, inputs):
        self.calls += 1
        self.modes.append(module.training)


def test_teacher_frozen_and_called_once_per_batch():
    student, teacher = _models()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # params and BN buffers
    objective = _objective(student, teacher, feature_loss="fitnet", kd_loss="kl")
    optimizer = torch.optim.SGD(list(student.parameters()) + list(objective.parameters()), lr=0.1, momentum=0.9)
    teacher_ids = {id(p) for p in teacher.parameters()}
    opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not teacher_ids & opt_ids
    adapters = _adapters(objective)
    assert {id(p) for p in adapters.parameters()} <= opt_ids and len(adapters) == len(P5_LAYERS)
    adapter_before = adapters[0].conv.weight.detach().clone()

    counter = Counter(teacher)
    nn.ModuleList([student, objective]).train()  # a wrapper putting "everything" in train mode
    teacher.train()  # even an explicit flip is undone by the objective
    steps = 3
    for step in range(steps):
        imgs, targets = _batch(step)
        out = objective(student, imgs, targets)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert counter.calls == steps and counter.modes == [False] * steps
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed"
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not torch.equal(adapters[0].conv.weight, adapter_before)  # adapters really train


def test_state_dict_and_parameters_exclude_teacher():
    student, teacher = _models()
    at = _objective(student, teacher)  # AT needs no adapters
    assert list(at.state_dict()) == ["kd.iteration"] and list(at.parameters()) == []  # batch counter only
    assert at.teacher is teacher and teacher not in list(at.modules())
    assert student not in list(at.modules())  # the student is the loop's model, saved as 'model'
    fit = _objective(student, teacher, feature_loss="fitnet")
    keys = [k for k in fit.state_dict() if k != "kd.iteration"]
    assert keys and all(k.startswith("kd.losses.fitnet.adapters.") for k in keys)
    n_adapter = sum(p.numel() for p in _adapters(fit).parameters())
    assert sum(p.numel() for p in fit.parameters()) == n_adapter
    fit.load_state_dict(fit.state_dict())  # round trip for 'kd_state'
    old = {k.removeprefix("kd.losses.fitnet."): v for k, v in fit.state_dict().items() if "adapters" in k}
    fit.load_state_dict(old)  # 'kd_state' of a run saved before the Distiller engine
    beta = {o.distiller.names[1]: o.distiller.weights[1] for o in (at, fit)}
    assert beta == {"at": 0.01, "fitnet": 0.1}  # per-feature-loss defaults when no --beta is given
    assert _objective(student, teacher, feature_loss="fitnet", beta=2.0).distiller.weights[1] == 2.0


def _direct_kd_terms(student, teacher, imgs, kd_loss, at_layers):
    """The output-KD value, its parts and AT computed here from the two models' own forwards, without the
    Distiller: YoloKDLoss's math (its default reduction) on the raw Detect outputs, AT on hooked features."""
    from distill.hooks import FeatureHooks
    from distill.losses import AttentionTransfer
    from distill.yolo_config import DEFAULT_TEMPERATURE
    from distill.yolo_output import VARIANTS, raw_outputs

    with torch.no_grad(), FeatureHooks(teacher, at_layers) as th:
        t_out = teacher.eval()(imgs)
    with FeatureHooks(student, at_layers) as sh:
        s_out = student(imgs)
    hyp = {"box": HYP["box"], "obj": HYP["obj"], "cls": HYP["cls"], "kd": HYP["kd"]}
    kd, parts = VARIANTS[kd_loss](hyp=hyp, temperature=DEFAULT_TEMPERATURE)(raw_outputs(s_out), raw_outputs(t_out),
                                                             student.model[-1].anchors,
                                                             teacher.model[-1].anchors)
    return s_out, kd, parts, AttentionTransfer()(sh.outputs, th.outputs)


def test_loss_dict_and_scaling():
    """The objective's loss equals ComputeLoss(student) + bs * (alpha * output KD + beta * AT), each
    computed here from the models' own forwards (not from the objective's logged entries), and every
    entry is logged. Both sides run the same float32 kernels on the same inputs: the only differences
    are summation order in the final additions (rel ~1e-7), hence rel=1e-5.
    Mutations seen failing: the `* imgs.shape[0]` batch scaling in DistillObjective.forward dropped;
    Distiller._losses ignoring the weights (term = value)."""
    student, teacher = _models()
    objective = _objective(student, teacher, kd_loss="l2", beta=10.0)
    student.train()
    imgs, targets = _batch()
    out = objective(student, imgs, targets)
    # issue 27: output KD's weighted parts are logged by default, after the terms
    assert list(out) == ["loss", "box", "obj", "cls", "kd", "at", "kd_box", "kd_obj", "kd_cls"]
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    s_out, kd, parts, at = _direct_kd_terms(student, teacher, imgs, "l2", P5_LAYERS)
    det, items = ComputeLoss.from_model(student, HYP)(s_out, targets)
    alpha = objective.distiller.weights[0]
    assert alpha == OUTPUT_DEFAULT_ALPHA["l2"] == 1.0  # the default weight of l2 (issue 27: 1, was 10)
    assert objective.distiller.losses["kd"].core.normalize == "weight"  # issue 27's default reduction
    expected = det + imgs.shape[0] * (alpha * kd + 10.0 * at)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert float(out["kd"]) == pytest.approx(alpha * kd.item(), rel=1e-5) and float(out["kd"]) > 0
    assert float(out["at"]) == pytest.approx(10.0 * at.item(), rel=1e-5) and float(out["at"]) > 0
    assert torch.allclose(torch.stack([out["box"], out["obj"], out["cls"]]), items, rtol=1e-5)
    for k in ("kd_box", "kd_obj", "kd_cls"):  # each part = alpha x the part computed here, and they add up to kd
        assert float(out[k]) == pytest.approx(alpha * parts[k].item(), rel=1e-5) and float(out[k]) > 0, k
    assert float(out["kd_box"] + out["kd_obj"] + out["kd_cls"]) == pytest.approx(float(out["kd"]), rel=1e-5)


def _grad_norms(student, objective, imgs, targets):
    student.zero_grad()
    objective(student, imgs, targets)["loss"].backward()
    return {i: sum(float(p.grad.abs().sum()) for p in student.model[i].parameters() if p.grad is not None)
            for i in range(len(student.model))}


def test_distillation_terms_reach_the_student():
    """Each distillation term alone (detection loss replaced by zero) sends gradients to the student
    layers it reads, and only to those: AT alone reaches the hooked backbone layers but not the Detect
    convs (which run after every hooked layer), output KD alone reaches Detect.
    Mutations seen failing: AT's student attention computed from `s.detach()` (AttentionTransfer.forward);
    YoloKDLoss's student outputs detached (fp32(ps.detach()) in _OutputKD.forward)."""
    student, teacher = _models()

    def zero_loss(pred, targets):
        return pred[0].sum() * 0, torch.zeros(3)

    student.train()
    imgs, targets = _batch()
    at_only = build_kd_objective(student, teacher, zero_loss, HYP,
                                 kd_config={"losses": [{"type": "at", "layers": "auto"}]})
    assert at_only.distiller.names == ["at"]
    g = _grad_norms(student, at_only, imgs, targets)
    assert g[2] > 0 and g[4] > 0  # hooked C3 outputs of the backbone
    assert g[len(student.model) - 1] == 0  # Detect runs after every hooked layer: AT cannot reach it
    kd_only = _objective(student, teacher, zero_loss, kd_loss="bce", feature_loss="none")
    g = _grad_norms(student, kd_only, imgs, targets)
    assert g[len(student.model) - 1] > 0 and g[2] > 0  # through the whole network from the outputs


def test_self_distillation_is_zero_and_kd_uses_the_teacher():
    """Teacher == an independent copy of the student (both eval): every KD term is exactly 0. With a
    different teacher the terms equal those computed here from the teacher's own forward (rel 1e-5: the
    same float32 kernels, only the final sums may be ordered differently), so a Distiller comparing the
    student with itself, or with the wrong model, fails.
    Mutation seen failing: Distiller._losses given the student's features as the teacher's."""
    student = _build("yolov5n.yaml")
    twin = deepcopy(student)
    student.eval()
    for kd_loss in ("l2", "kl"):
        out = _objective(student, twin, kd_loss=kd_loss)(student, *_batch())
        assert float(out["kd"]) == 0.0 and float(out["at"]) == 0.0
    student, teacher = _models()
    student.eval()
    imgs, targets = _batch()
    objective = _objective(student, teacher, kd_loss="kl", alpha=1.0, beta=1.0)
    out = objective(student, imgs, targets)
    _, kd, _, at = _direct_kd_terms(student, teacher, imgs, "kl", P5_LAYERS)
    assert float(out["kd"]) == pytest.approx(kd.item(), rel=1e-5) and kd.item() > 0
    assert float(out["at"]) == pytest.approx(at.item(), rel=1e-5) and at.item() > 0


def test_engine_optimizer_trains_the_adapters():
    """engine.trainer builds the run's optimizer over the student and the objective (FitNet's 1x1
    adapters); one step moves the adapters and leaves the teacher alone.
    Mutation seen failing: engine.trainer._optimizer without extra_params=[objective]."""
    from engine.trainer import _optimizer

    student, teacher = _models()
    objective = _objective(student, teacher, feature_loss="fitnet")
    opt = SimpleNamespace(batch_size=2, adam=False, epochs=3, linear_lr=False)
    r = SimpleNamespace(hyp={**HYP, "lr0": 0.01, "lrf": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nbs": 2},
                        nbs=2, weight_decay=5e-4)
    optimizer, _, _ = _optimizer(opt, r, student, objective)
    adapters = _adapters(objective)
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in adapters.parameters()} <= in_opt
    assert not {id(p) for p in teacher.parameters()} & in_opt
    before = [p.detach().clone() for p in adapters.parameters()]
    student.train()
    objective(student, *_batch())["loss"].backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, adapters.parameters()))


def test_output_option_flags_reach_the_loss():
    """--kd_obj bce and --bce_subtract_entropy set the YoloKDLoss entry (recorded in the resolved config,
    so kd.yaml and --resume keep them); defaults untouched without them; refused without output KD."""
    from distill.kd_terms import binary_kl

    student, teacher = _models()
    plain = _objective(student, teacher, kd_loss="l2").distiller.losses["kd"]
    assert "obj_term" not in vars(plain.core)  # the l2 class's own squared difference
    objective = _objective(student, teacher, kd_loss="l2", kd_obj="bce")
    assert objective.distiller.losses["kd"].core.obj_term is binary_kl
    assert objective.resolved.losses[0].params["obj_term"] == "bce"
    centred = _objective(student, teacher, kd_loss="bce", bce_subtract_entropy=True)
    assert centred.distiller.losses["kd"].zero_at_optimum and centred.resolved.losses[0].params["subtract_entropy"]
    with pytest.raises(UserError, match="subtract_entropy"):
        _objective(student, teacher, kd_loss="kl", bce_subtract_entropy=True)
    with pytest.raises(UserError, match="--kd_obj"):
        build_kd_objective(student, teacher, ComputeLoss.from_model(student, HYP), HYP,
                           **objective_options(SimpleNamespace(kd_obj="bce")),
                           kd_config={"losses": [{"type": "at", "layers": "auto"}]})


def test_default_pairing_by_type_and_stride():
    student, teacher = _models()
    pairing = pair_layers(student, teacher)
    assert pairing.student.names == P5_LAYERS == pairing.teacher.names
    assert pairing.student.strides == [4, 8, 16, 32, 32, 16, 8, 16, 32]
    assert pairing.student.channels == [32, 64, 128, 256, 256, 128, 64, 128, 256]
    assert pairing.teacher.channels == [2 * c for c in pairing.student.channels]
    se = _build("yolov5s-se.yaml")
    assert default_feature_layers(se) == [f"model.{i}" for i in (3, 6, 9, 12, 13, 18, 23, 27, 31)]
    assert pair_layers(student, se).teacher.strides == pairing.student.strides  # plain vs attention yaml
    assert student.training and teacher.training  # probing restored the modes


def test_explicit_layers_and_count_mismatch():
    student, teacher = _models()
    pairing = pair_layers(student, teacher, "model.4,model.6", "4,6")
    assert pairing.student.names == ["model.4", "model.6"] == pairing.teacher.names
    with pytest.raises(UserError, match="paired by position"):
        pair_layers(student, teacher, "model.4,model.6", None)
    with pytest.raises(UserError, match="model.99"):
        pair_layers(student, teacher, "model.99", "model.4")


def test_class_count_mismatch_is_a_user_error():
    student, teacher = _models(teacher_nc=NC + 2)
    with pytest.raises(UserError, match="classes"):
        check_compatible(student, teacher)
    with pytest.raises(UserError, match="classes"):
        _objective(student, teacher)


def test_unknown_or_wrong_kind_loss():
    student, teacher = _models()
    with pytest.raises(UserError, match="l2, kl, bce"):
        _objective(student, teacher, kd_loss="at")
    with pytest.raises(UserError, match="vanilla_kd, vid, irg, at, fitnet"):
        _objective(student, teacher, feature_loss="nope")


def test_is_large_flag_is_only_a_warning():
    student, teacher = _models()
    assert infer_is_large(teacher) is False
    assert infer_is_large(SimpleNamespace(yaml={"depth_multiple": 1.0, "width_multiple": 1.0})) is True
    # both multiples must be 1 (a mutant needing only one survived the real configs, where they agree)
    assert infer_is_large(SimpleNamespace(yaml={"depth_multiple": 1.0, "width_multiple": 0.5})) is False
    assert infer_is_large(SimpleNamespace(yaml={"depth_multiple": 0.33, "width_multiple": 1.0})) is False
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:
        plain = _objective(student, teacher).distiller.student_layers
        flagged = _objective(student, teacher, isL="True").distiller.student_layers
    finally:
        LOGGER.removeHandler(handler)
    assert plain == flagged  # the flag never changes the pairing
    assert any("--isL" in r.getMessage() for r in records)


def test_load_teacher_checks_classes(tmp_path):
    checkpoint = pytest.importorskip("models.checkpoint")
    _, teacher = _models()
    path = tmp_path / "teacher.pt"
    checkpoint.save_checkpoint({"epoch": -1, "model": teacher.half(), "ema": None}, path)
    loaded = load_teacher(path, "cpu", nc=NC)
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    assert next(loaded.parameters()).dtype == torch.float32
    with pytest.raises(UserError, match="classes"):
        load_teacher(path, "cpu", nc=NC + 1)


def _warnings_of(fn):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:
        fn()
    finally:
        LOGGER.removeHandler(handler)
    return [r.getMessage() for r in records if "starts at" in r.getMessage()]


def test_a_dominant_term_is_reported_once_with_a_weight_that_balances_it():
    """A KD term more than 10x the detection loss at its first non-zero batch gets one warning naming the
    term, the ratio and the weight that puts it at a third of the detection loss; a term below gets none,
    and evaluation mode never checks. (The check runs every 50th training call until each term was seen.) Mutations seen failing: the ratio test inverted (value < 10 det),
    the warning repeated every batch (no bookkeeping), the suggested weight not scaled by w."""
    student, teacher = _models()
    imgs, targets = _batch()
    heavy = _objective(student, teacher, feature_loss="cwd", cwd_weight=1000.0)
    light_student = deepcopy(student)
    light = _objective(light_student, teacher, feature_loss="cwd", cwd_weight=1e-6)
    msgs = _warnings_of(lambda: [heavy(student, imgs, targets) for _ in range(51)])  # checked at calls 0, 50
    assert len(msgs) == 1 and "'cwd'" in msgs[0] and "--cwd_weight" in msgs[0]
    out = heavy(student, imgs, targets)
    det = float(out["box"] + out["obj"] + out["cls"])
    ratio = float(out["cwd"]) / det
    assert f"{ratio:.0f}x" in msgs[0]
    suggested = float(msgs[0].split("; weight ")[1].split(" ")[0])
    # one significant digit of 1000 * det / 3 / cwd: within 50% of the exact balancing weight (rounding)
    assert 0.5 < suggested / (1000.0 / 3 / ratio) < 1.5
    assert _warnings_of(lambda: light(light_student, imgs, targets)) == []
    eval_student = deepcopy(student)
    heavy_eval = _objective(eval_student, teacher, feature_loss="cwd", cwd_weight=1000.0).eval()
    assert _warnings_of(lambda: heavy_eval(eval_student, imgs, targets)) == []
