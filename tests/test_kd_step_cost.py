"""The cheaper distillation step (issue 15 §4): a reduced-precision teacher, a teacher forward that stops
after its last distilled layer, and a training loop that reads the logged terms without a host sync per
step. Each test fails when the piece it names is taken out."""

from collections import OrderedDict
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch

from distill.hooks import FeatureHooks, StopForward
from distill.objective import build_kd_objective
from engine.kd_flags import objective_options
from models.yolo import Model
from utils.general import UserError
from utils.losses.yolov5 import ComputeLoss
from utils.torch_utils import native_bf16_cpu, resolve_teacher_dtype

HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0,
       "label_smoothing": 0.0}


def _pair(nc=3):
    torch.manual_seed(0)
    student = Model("models/yolov5n.yaml", nc=nc).train()
    teacher = Model("models/yolov5s.yaml", nc=nc).fuse().eval()
    return student, teacher


def _batch(nc=3, b=2, size=64):
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(b, 3, size, size, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2]], dtype=torch.float32)
    return imgs, targets


def _terms(student, teacher, flags: dict, kd_config=None) -> dict:
    s, t = deepcopy(student), deepcopy(teacher)
    objective = build_kd_objective(s, t, ComputeLoss.from_model(s, HYP), dict(HYP),
                                   **objective_options(SimpleNamespace(**flags)), kd_config=kd_config)
    imgs, targets = _batch()
    out = objective(s, imgs, targets)
    return {k: float(v.detach()) for k, v in out.items()}, objective


def test_bf16_teacher_changes_the_loss_by_bf16_rounding_only():
    """--teacher_dtype bf16 runs the teacher's forward under bf16 autocast: the KD terms move, but only by
    bf16 rounding. bf16 keeps 8 significant bits (unit roundoff 2^-9 = 2e-3); through the ~25 convs of a
    yolov5s these add up to relative feature errors of ~1e-2, so each term must agree within 5e-2 and
    differ by more than float32 noise (1e-6), which shows the bf16 path actually ran (emulated bf16 on CPUs
    without native support computes the same values, only slower)."""
    student, teacher = _pair()
    ref, _ = _terms(student, teacher, {"kd_loss": "l2", "feature_loss": "at", "teacher_dtype": "fp32"})
    low, obj = _terms(student, teacher, {"kd_loss": "l2", "feature_loss": "at", "teacher_dtype": "bf16"})
    assert obj.distiller.teacher_dtype == torch.bfloat16
    for k in ("kd", "at"):
        rel = abs(low[k] - ref[k]) / abs(ref[k])
        assert 1e-6 < rel < 5e-2, (k, ref[k], low[k])
    for k in ("box", "obj", "cls"):  # the student's own loss does not see the teacher's precision
        assert low[k] == ref[k]


def test_teacher_stops_after_its_last_distilled_layer():
    """Feature-only KD (no loss reads the teacher's output): the teacher's Detect never runs, and the loss
    is exactly that of the full forward. Output KD keeps the full forward."""
    student, teacher = _pair()
    cfg = {"losses": [{"type": "mse", "name": "mse"}]}  # on the maps entering Detect
    _, obj = _terms(student, teacher, {"teacher_dtype": "fp32"}, kd_config=cfg)
    assert obj.distiller.teacher_early_exit
    calls = []
    obj.distiller.teacher.model[-1].register_forward_hook(lambda *a: calls.append(1))
    s = obj.distiller.student  # train mode: BN normalises by batch statistics, the same in both calls
    early = obj(s, *_batch())
    assert calls == []  # the head did not run
    obj.distiller.teacher_early_exit = False
    full = obj(s, *_batch())
    assert calls == [1]
    assert float(early["mse"]) == float(full["mse"])  # same arithmetic up to the last distilled layer
    _, obj = _terms(student, teacher, {"kd_loss": "l2", "feature_loss": "none", "teacher_dtype": "fp32"})
    calls.clear()
    obj.distiller.teacher.model[-1].register_forward_hook(lambda *a: calls.append(1))
    obj(obj.distiller.student, *_batch())
    assert calls == [1]  # output KD distils the head: it runs


def test_feature_hooks_stop_when_done():
    nn = torch.nn
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(2, 2), act=nn.ReLU(), fc2=nn.Linear(2, 2)))
    ran = []
    model.fc2.register_forward_hook(lambda *a: ran.append(1))
    with FeatureHooks(model, ["fc1", "act"], stop_when_done=True) as h, pytest.raises(StopForward):
        model(torch.rand(1, 2))
    assert ran == [] and len(h.outputs) == 2


def test_teacher_dtype_choices():
    cpu = torch.device("cpu")
    assert resolve_teacher_dtype("fp32", cpu) == torch.float32
    assert resolve_teacher_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_teacher_dtype("auto", cpu) == (torch.bfloat16 if native_bf16_cpu() else torch.float32)
    assert resolve_teacher_dtype("auto", torch.device("cuda", 0)) == torch.float16
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_teacher_dtype("fp16", cpu)


def test_no_native_bf16_when_the_isa_is_capped(monkeypatch):
    """DNNL_MAX_CPU_ISA=AVX2 (as .ci/run uses) turns bf16 kernels off: 'auto' must then stay fp32."""
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert not native_bf16_cpu()
    assert resolve_teacher_dtype("auto", torch.device("cpu")) == torch.float32


def test_iteration_counter_has_a_host_copy_that_follows_loads():
    """ctx.iteration comes from a host-side count (reading the buffer every step would sync a GPU); a
    loaded state (resume) must reset it to the loaded value."""
    student, teacher = _pair()
    _, obj = _terms(student, teacher, {"kd_loss": "l2", "feature_loss": "at", "teacher_dtype": "fp32"})
    kd = obj.distiller.kd
    assert kd.count() == int(kd.iteration) == 0  # the training loop steps it after each optimizer step (issue 27)
    obj.optimizer_step()
    assert kd.count() == int(kd.iteration) == 1
    state = deepcopy(kd.state_dict())
    state["iteration"] = torch.tensor(41)
    kd.load_state_dict(state)
    assert kd.count() == 41
    kd.step()
    assert kd.count() == int(kd.iteration) == 42


def test_running_means_without_per_step_sync():
    """The loop's logged means are the same whether read every step (CPU) or only when due (CUDA), and a
    non-finite loss is reported at the next read."""
    from engine.train_utils import RunningMeans

    steps = [{"loss": torch.tensor(v * 3), "box": torch.tensor(v), "kd": torch.tensor(2 * v)} for v in (0.1, 0.4, 0.25)]
    a, b = RunningMeans(sync_every_step=True), RunningMeans(sync_every_step=False, every_s=1e9)
    for out in steps:
        a.add(out, out["loss"])
        b.add(out, out["loss"])
    assert a.synced and not b.synced
    assert a.means() == b.means()  # the same float64 sums, read at another time
    # inputs are float32: 0.1 etc. carry their float32 rounding (relative 6e-8), summed exactly in float64
    assert a.means() == pytest.approx({"box": 0.25, "kd": 0.5}, rel=1e-7)
    b.add({"loss": torch.tensor(float("nan")), "box": torch.tensor(1.0), "kd": torch.tensor(1.0)},
          torch.tensor(float("nan")))
    assert b.finite  # not read yet
    b.means()
    assert not b.finite


@pytest.mark.parametrize("feature", ["scorel2", "at", "fitnet", "cwd", "mse", "pkd"])
def test_kd_losses_have_no_data_dependent_step(feature):
    """Every distillation term of the step (output KD + the feature loss) traces as one graph
    (torch.compile fullgraph, eager backend): no .item(), boolean selection or branch on a tensor value,
    so on CUDA the KD terms never make the step wait for the device (utils/losses/yolov5.py's test covers the
    detection loss). imitation is not listed: on the CPU it checks the targets' image indices with a clear error (a
    graph break; on CUDA the check is torch._assert_async, no wait).
    Mutation seen failing: a `bool((x < 0).any())` check added to ScoreWeightedL2.forward."""
    student, teacher = _pair()
    objective = build_kd_objective(student, teacher, ComputeLoss.from_model(student, HYP), dict(HYP),
                                   **objective_options(SimpleNamespace(kd_loss_selected="kl", feature_loss=feature)))
    distiller, captured = objective.distiller, {}
    losses = distiller._losses
    distiller._losses = lambda s, t, ctx: captured.setdefault("args", (s, t, ctx)) and losses(s, t, ctx)
    objective(student, *_batch())
    distiller._losses = losses
    torch._dynamo.reset()
    traced = torch.compile(losses, fullgraph=True, backend="eager")(*captured["args"])
    assert torch.equal(traced, losses(*captured["args"]))
