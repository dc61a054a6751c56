"""Before any training: does this teacher suit this student and data? (compare_kd.py --probe)

`probe(...)` returns a markdown report and one-line warnings (no 'WARNING:' prefix: the caller logs them):
  * the teacher's val mAP@0.5 and mAP@0.5:0.95 at the probe's image size (engine.validate.run, on at most
    VAL_IMAGES val images), and the student's own when it starts from a checkpoint;
  * the data's and the teacher's class names side by side;
  * per recipe and distillation term: its value and the pull of its gradient on the student's own parameters,
    both against the detection loss (engine.term_balance, also behind bench/kd_grad_balance.py);
  * warnings that say what to change: a term above DOMINANT x the detection loss (with the weight that puts
    it at a third of it), a teacher weaker than the student, a teacher trained at another image size, a term
    whose gradient points against the detection loss's.

The student, its hyp, its detection loss and the distillation objective are built as train_kd.py builds them
(engine.setup.build_model, model.loss_gains / model.build_loss, distill.objective.build_kd_objective), on a few
fixed training batches without augmentation. Nothing is written and nothing is downloaded (a data yaml's
`download:` entry that builds the data locally runs, as in training).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from distill.recipe import class_key
from engine.term_balance import BALANCE_HEADER, balance_warnings, fixed_batches, term_balance
from utils.general import LOGGER, UserError, check_img_size, init_seeds, yaml_load

SIZE_RATIO = 1.25  # teacher trained at an image size more than this factor away from the probe's: warned
VAL_IMAGES = 256  # the teacher's val mAP on at most this many val images (whole batches, evenly spaced)


# --------------------------------------------------------------------------------------------------
# inputs


def recipe_file(value: str | None) -> Path | None:
    """The kd config file of a recipe value: None or 'default' -> None (train_kd.py's default for the pair), a
    file, or the name of one in data/kd/; anything else is a UserError listing the known names."""
    from distill.yolo_config import KD_DIR

    if value is None or str(value) == "default":
        return None
    path = Path(value)
    if not path.is_file() and not path.suffix and (KD_DIR / f"{value}.yaml").is_file():
        path = KD_DIR / f"{value}.yaml"
    if not path.is_file():
        known = ", ".join(["default", *sorted(p.stem for p in KD_DIR.glob("*.yaml"))])
        raise UserError(f"--recipes {value}: neither a kd config file nor a recipe of data/kd/; known: {known}")
    return path


def resolve_recipes(recipes: Mapping[str, str | None]) -> dict[str, object]:
    """name -> distill.recipe.Recipe read from its recipe_file, or None (the default); UserError for a bad one."""
    from distill.yolo_config import load_kd_config

    if not recipes:
        raise UserError("--recipes: give at least one recipe (default, a data/kd/ name or a kd config file)")
    files = {name: recipe_file(value) for name, value in recipes.items()}  # every name checked before any file is read
    return {name: None if f is None else load_kd_config(f) for name, f in files.items()}


def _check_inputs(data: str, cfg: str, weights: str, teacher: str, imgsz: int, hyp: str | None,
                  device: str, batch_size: int, batches: int) -> str:
    """Every path and number checked before anything is loaded (UserError naming the flag); returns the hyp
    file (the family's default when hyp is None)."""
    from engine.kd import check_teacher_path
    from engine.options import (
        check_device,
        check_hyp,
        check_imgsz,
        check_model_yaml,
        check_pt_file,
        check_range,
        check_yaml_file,
        default_hyp,
    )
    from models.checkpoint import weights_hint

    check_yaml_file("--data", data)
    if not cfg and not weights:
        raise UserError("either --cfg or --weights must be given (e.g. --cfg models/yolov5n.yaml --weights '')")
    if cfg:
        check_model_yaml("--cfg", cfg)
    if weights:
        check_pt_file("--weights", weights, f"{weights_hint(weights)}, or use --weights '' --cfg <yaml>")
    if not teacher:
        raise UserError("--teacher_weight is required: the trained teacher checkpoint to probe (e.g. its run's "
                        "weights/best.pt)")
    check_teacher_path(teacher)
    check_imgsz("--imgsz", imgsz)
    check_range("--batch-size", batch_size, 1, integer=True, hint="images per batch, e.g. 16")
    check_range("batches", batches, 1, integer=True, hint="fixed training batches the terms are averaged over")
    check_device(device)
    hyp = str(hyp) if hyp is not None else str(default_hyp(cfg, weights))
    check_hyp(yaml_load(check_yaml_file("--hyp", hyp)), f"--hyp {hyp}")
    return hyp


def student_builder(cfg: str, weights: str, nc: int, hyp: Mapping, device: torch.device,
                    seed: int) -> Callable[[], nn.Module]:
    """make_student for term_balance: the student train_kd.py starts from (engine.setup.build_model: cfg and/or
    weights, '' = from scratch), its weights initialised from `seed`, in train mode."""
    from engine.setup import build_model

    opt = SimpleNamespace(cfg=cfg, weights=weights, resume=False, trust_checkpoint=False)

    def make() -> nn.Module:
        init_seeds(seed)
        model = build_model(opt, nc, hyp, device)[0]
        model.half().float()  # engine.trainer rounds a new run's weights (v6.0's anchor pre-reduction) likewise
        return model.train()

    return make


def val_subset(path, imgsz: int, batch_size: int, stride: int, hyp: Mapping, max_images: int = VAL_IMAGES):
    """(loader, images, of total): the val loader as training builds it (rect, pad 0.5), cut to whole batches
    evenly spaced over its aspect-ratio order when the val set holds more than max_images images."""
    from torch.utils.data import DataLoader

    from utils.data.dataloaders import create_dataloader
    from utils.data.datasets import LoadImagesAndLabels

    loader, dataset = create_dataloader(path, imgsz, batch_size, stride, hyp=dict(hyp), rect=True, pad=0.5,
                                        workers=0)
    total, nb = len(dataset), len(loader)
    keep = max(1, max_images // batch_size)
    if total <= max_images or keep >= nb:
        return loader, total, total
    chosen = np.linspace(0, nb - 1, keep).round().astype(int)
    index = [np.flatnonzero(dataset.batch == b).tolist() for b in chosen]  # a rect batch shares one shape
    subset = DataLoader(dataset, batch_sampler=index, num_workers=0, collate_fn=LoadImagesAndLabels.collate_fn)
    return subset, sum(map(len, index)), total


def teacher_imgsz(path: str | Path) -> tuple[int | None, str]:
    """(image size the teacher was trained at, where it was read) or (None, why not): the checkpoint's options
    ('opt' of YOLOv5 >= v6.1, 'train_args' of ultralytics), else the opt.yaml of the run folder that holds
    weights/<file> (train.py writes it; v6.0 checkpoints store no options)."""
    from models.checkpoint import safe_torch_load

    ckpt = safe_torch_load(path, map_location="cpu")
    for key in ("opt", "train_args"):
        size = _size_of(ckpt.get(key) if isinstance(ckpt, dict) else None)
        if size:
            return size, f"the checkpoint's '{key}'"
    path = Path(path).absolute()  # not resolved: a link placed in a run's weights/ folder counts as that run's
    opt_file = path.parent.parent / "opt.yaml"
    if path.parent.name == "weights" and opt_file.is_file():
        size = _size_of(yaml_load(opt_file))
        if size:
            return size, str(opt_file)
    return None, "not recorded (no options in the checkpoint, no opt.yaml of its run)"


def _size_of(opts) -> int | None:
    if not isinstance(opts, Mapping):
        return None
    size = opts.get("imgsz", opts.get("img_size"))
    size = max(size) if isinstance(size, (list, tuple)) and size else size
    return int(size) if isinstance(size, (int, float)) and size > 0 else None


# --------------------------------------------------------------------------------------------------
# report and warnings


def class_table(data_names: list[str], teacher_names: list[str], index: Sequence[int] | None = None) -> list[str]:
    """Markdown rows: each data class and the teacher class that teaches it (index[c], -1: none; default: class
    i of each), ok / differs by name, then the teacher's classes that teach none ('-' in the data column)."""
    index = list(range(len(data_names))) if index is None else list(index)
    lines = ["| class | data | teacher | |", "|---|---|---|---|"]
    for i, a in enumerate(data_names):
        t = index[i] if i < len(index) else -1
        b = teacher_names[t] if 0 <= t < len(teacher_names) else "-"
        lines.append(f"| {i} | {a} | {b} | {'ok' if b != '-' and class_key(a) == class_key(b) else 'differs'} |")
    lines += [f"| {i} | - | {b} | differs |" for i, b in enumerate(teacher_names) if i not in index]
    return lines


def teacher_warnings(t_map: float | None, imgsz: int, t_size: int | None, t_size_from: str,
                     references: list[tuple[str, float | None]]) -> list[str]:
    """(b) a teacher whose val mAP@0.5:0.95 (None: not measured) is below a student's (references: (whose, mAP or
    None)), (c) a
    teacher trained at an image size more than SIZE_RATIO away from imgsz."""
    out = []
    for whose, ref in references:
        if ref is not None and t_map is not None and t_map < ref:
            out.append(f"the teacher's val mAP@0.5:0.95 {t_map:.4f} is below {whose} {ref:.4f}: a teacher "
                       "weaker than the student teaches it little; train the teacher longer or on more data, or use a "
                       "larger one")
    if t_size and max(t_size / imgsz, imgsz / t_size) > SIZE_RATIO:
        out.append(f"the teacher was trained at {t_size} px ({t_size_from}), the probe runs at {imgsz} px: "
                   f"its features and outputs suit objects of the sizes it saw; distil at --img {t_size}, or use a "
                   f"teacher trained near {imgsz} px")
    return out


def class_notes(data_names: list[str], t_names: list[str], cmap, refused: str | None) -> tuple[str, list[str]]:
    """(a line under the class table, warnings): why distillation refuses the pair (no class matched by name),
    or how the teacher's classes are matched with the data's (distill.recipe.match_classes), or agreement."""
    if refused:
        return f"Distillation refuses this pair: {refused}", [refused]
    if cmap.identity:
        same = all(class_key(a) == class_key(b) for a, b in zip(data_names, t_names))
        return ("The class names agree." if same else
                "Generic class names: output KD teaches class i from the teacher's class i."), []
    taught = sum(i >= 0 for i in cmap.index)
    note = (f"Matched by name: {taught} of {len(data_names)} data classes have a teacher class; the teacher's "
            f"{len(t_names) - taught} other classes count as background in output KD's objectness. The teacher's "
            "mAP above is not measured: validation pairs classes by index.")
    missing = len(data_names) - taught
    return note, ([] if not missing else [(f"{missing} data classes have no teacher class (no class KD for them); "
                                           "--teacher_classes DATA:TEACHER,... names synonyms")])


def _teacher(path: str, device: torch.device, data_names: list[str]):
    """(teacher, its ClassMap or None, the refusal or None): distill.objective.load_teacher with any class count,
    then train_kd.py's class matching; a pair that shares no class is still listed, its refusal reported."""
    from distill.objective import load_teacher
    from distill.recipe import match_classes

    model = load_teacher(path, device, len(data_names), any_classes=True)
    try:
        return model, match_classes(data_names, _names(model)), None
    except UserError as e:
        return model, None, str(e)


def _names(model: nn.Module) -> list[str]:
    names = getattr(model, "names", None) or []
    return [str(n) for n in (names.values() if isinstance(names, dict) else names)]


def _evaluate(data_dict: dict, model: nn.Module, loader, imgsz: int, device: torch.device) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) of model on loader, as training validates (engine.validate.run)."""
    from engine import validate

    (_, _, map50, map_, *_), _, _ = validate.run(data_dict, model=model, dataloader=loader, imgsz=imgsz,
                                                plots=False, half=device.type == "cuda")
    return float(map50), float(map_)


def probe(data: str, cfg: str, weights: str, teacher: str, imgsz: int, hyp: str | None,
          recipes: dict[str, str | None], device: str = "", batch_size: int = 16, batches: int = 4,
          plain_map: float | None = None, seed: int = 0) -> tuple[str, list[str]]:
    """(markdown report, warnings). recipes: name -> kd config path (None = train_kd.py's default recipe for
    the student/teacher pair). hyp None = the hyp train.py/train_kd.py would use for this student.

    weights '' = the student from scratch (cfg, initialised from seed); plain_map: the plain student's best val
    mAP@0.5:0.95 from an earlier run (None: not known). Every input is checked first (UserError naming the
    flag); a teacher with other classes than the data is reported, not refused (no terms are measured)."""
    from utils.data.config import check_dataset
    from utils.torch_utils import select_device

    hyp = _check_inputs(data, cfg, weights, teacher, imgsz, hyp, device, batch_size, batches)
    resolved = resolve_recipes(recipes)
    dev = select_device(device, batch_size=batch_size)
    data_dict = check_dataset(data)
    nc, data_names = int(data_dict["nc"]), [str(n) for n in data_dict["names"]]
    hyp_dict = {**yaml_load(hyp), "label_smoothing": 0.0}  # what engine.trainer passes without --label-smoothing
    make_student = student_builder(cfg, weights, nc, hyp_dict, dev, seed)
    student = make_student()
    gs = max(int(student.stride.max()), 32)
    imgsz = check_img_size(imgsz, gs, floor=gs * 2)

    t_model, cmap, refused = _teacher(teacher, dev, data_names)
    loader, n_val, n_total = val_subset(data_dict["val"], imgsz, batch_size * 2, gs, hyp_dict, VAL_IMAGES)
    LOGGER.info(f"probe: the teacher {teacher} on {n_val} of {n_total} val images at {imgsz} px")
    lined_up = cmap is not None and cmap.identity  # validation pairs class i with class i
    t_map = _evaluate(data_dict, t_model, loader, imgsz, dev) if lined_up else None
    s_map = _evaluate(data_dict, student, loader, imgsz, dev) if weights else None
    t_size, t_size_from = teacher_imgsz(teacher)
    note, warnings = class_notes(data_names, _names(t_model), cmap, refused)
    warnings += teacher_warnings(t_map[1] if t_map else None, imgsz, t_size, t_size_from, [
        ("the plain student's best (plain_map)", plain_map),
        (f"the student's own (--weights {weights})", s_map[1] if s_map else None)])

    report = [f"## Distillation probe: {Path(teacher).name} -> {Path(cfg or weights).name}", "",
              (f"data {data} ({nc} classes), student {cfg or weights}{' from ' + weights if cfg and weights else ''}"
               f"{'' if weights else ' from scratch'} (seed {seed}), teacher {teacher}, {imgsz} px, hyp {hyp}"), "",
              "### Validation", "", "| model | mAP@0.5 | mAP@0.5:0.95 |", "|---|---|---|",
              (f"| teacher | {t_map[0]:.4f} | {t_map[1]:.4f} |" if t_map else "| teacher | - | - |")]
    if s_map is not None:
        report.append(f"| student (--weights) | {s_map[0]:.4f} | {s_map[1]:.4f} |")
    if plain_map is not None:
        report.append(f"| plain student, earlier run | | {plain_map:.4f} |")
    trained = f" was trained at {t_size} px ({t_size_from})" if t_size else f"'s training image size is {t_size_from}"
    report += ["", f"On {n_val} of {n_total} val images at {imgsz} px. The teacher{trained}.", "",
               "### Classes", "", *class_table(data_names, _names(t_model), cmap.index if cmap else None), "", note,
               "", "### Distillation terms against the detection loss", ""]
    if refused:
        report.append("Not measured: the teacher shares no class with the data.")
    else:
        fixed = fixed_batches(data_dict["train"], imgsz, batch_size, batches, hyp_dict, gs, nc, data, dev)
        with torch.enable_grad():
            rows = term_balance(make_student, t_model, hyp_dict, imgsz, fixed, resolved, data_names=data_names)
        warnings += balance_warnings(rows, {k: recipe_file(v) for k, v in recipes.items()})
        report += [(f"The student at its start, on {len(fixed)} fixed training batch{'es' * (len(fixed) > 1)} of "
                    f"{batch_size} at {imgsz} px (no augmentation), means over the batches; gradients w.r.t. the "
                    "student's own parameters."), "", BALANCE_HEADER, *(r.row() for r in rows)]
    report += ["", "### Warnings", "", *([f"- {w}" for w in warnings] or ["none"])]
    return "\n".join(report) + "\n", warnings
