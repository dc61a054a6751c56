"""Head families in train_kd.py: which recipe a student/teacher pair gets by default, and how output KD
entries fit the pair. Output KD compares two heads of one family (YOLOv5 anchors, or YOLOv8-style anchor-free
heads: YOLOv8/YOLO11 with DFL and YOLO26 with reg_max 1 pair in any direction, v8_output_kd comparing decoded
edge distances where the bins differ); features can be distilled across families.
"""

from __future__ import annotations

from torch import nn

from distill.hooks import model_head
from distill.recipe import Recipe
from distill.v8_output import LD_TEMPERATURE
from distill.yolo_config import V8_FORM
from utils.general import LOGGER, UserError

OUTPUT_FAMILY = {"YoloKDLoss": "v5", "v8_output_kd": "v8"}  # the head family each output loss reads
# Both seeds at once: ver2 on the heads, ver1 on the maps entering them. mse keeps its registered v8 weight 1
# (the seed's plain sum) whichever way it is asked for (--kd_layer, --feature_loss mse, a file): at 1.3% of
# the detection loss (raw mse 0.20 against 15.2 on the batch measured for v8_output_kd's weight), raise it
# with --beta (25 would be a third).
V8_DEFAULT_CONFIG = Recipe.from_dict({"losses": [
    {"type": "v8_output_kd", "name": "kd", "layers": "detect", "T": LD_TEMPERATURE},
    {"type": "mse", "name": "mse", "layers": "detect_inputs"},
]})
CROSS_DEFAULT_CONFIG = Recipe.from_dict({"losses": [{"type": "mse", "name": "mse", "layers": "detect_inputs"}]})


def family(model: nn.Module) -> str:
    """'v5' or 'v8': the head family of a Model (looked through DP/DDP)."""
    return str(getattr(model_head(model), "family", "v5"))


def default_config(student: nn.Module, teacher: nn.Module, v5_default: Recipe) -> Recipe:
    """The recipe train_kd.py uses without a file: v5_default for two YOLOv5 models, V8_DEFAULT_CONFIG
    for two v8 models, feature MSE alone across families (output KD needs one head family)."""
    fs, ft = family(student), family(teacher)
    if fs == ft == "v5":
        return v5_default.copy()
    if fs == ft:
        return V8_DEFAULT_CONFIG.copy()
    LOGGER.info(f"distillation: student {fs}, teacher {ft}: feature distillation only by default (mse on the "
                "maps entering the heads)")
    return CROSS_DEFAULT_CONFIG.copy()


def for_family(recipe: Recipe, student: nn.Module, teacher: nn.Module) -> Recipe:
    """The recipe with its output entries fitting the pair: YoloKDLoss entries become v8_output_kd for two v8
    models (so the output flags mean the same with either family: T and weight are kept, a variant other
    than kl is refused by V8OutputKD); UserError naming both families when output KD crosses families."""
    fs, ft = family(student), family(teacher)
    entries = []
    for i, e in enumerate(recipe.losses):
        needs = OUTPUT_FAMILY.get(e.type)
        if needs is not None:
            e = _fit_output(i, e, fs, ft, student, teacher)
        entries.append(e)
    return Recipe(entries)


def _fit_output(i: int, e, fs: str, ft: str, student: nn.Module, teacher: nn.Module):
    needs = OUTPUT_FAMILY[e.type]
    if fs != ft:
        raise UserError(f"output distillation ({e.type}, losses[{i}] '{e.log_name}') compares "
                        f"the heads of one family, but the student is {fs} and the teacher {ft}: use a {fs} "
                        "teacher, or distil features only: drop the output flags (--alpha, --temperature, "
                        "--kd_loss_selected) and output entries (without them train_kd.py distils the maps "
                        "entering the heads with mse)")
    rs, rt = getattr(model_head(student), "reg_max", None), getattr(model_head(teacher), "reg_max", None)
    if fs == "v8" and rs != rt:  # a YOLO26 head (reg_max 1) and a DFL one: v8_output_kd compares decoded boxes
        LOGGER.info(f"distillation: {e.log_name}: student reg_max {rs}, teacher {rt}: the box term compares the "
                    "decoded edge distances (L1), not the bins")
    if needs != fs and fs == "v8":
        e = e.replace(type="v8_output_kd")
        if e.get("normalize") in V8_FORM:
            e = e.replace(normalize=V8_FORM[e.get("normalize")])
        return e.without("variant") if e.params.get("variant") == "kl" else e
    if needs != fs:
        raise UserError(f"losses[{i}] '{e.log_name}': {e.type} reads v8 heads but student and "
                        "teacher are v5: use YoloKDLoss")
    return e
