"""train_kd.py's distillation as data: a kd config file (data/kd/*.yaml), the flags, and their resolution
into a `Distiller` config for a YOLOv5 student/teacher pair.

A kd config file is a list of losses, each a registry type with its parameters, its layers and its weight:

    losses:
      - {type: YoloKDLoss, name: kd, layers: detect, variant: kl, T: 20}   # output KD on the Detect heads
      - {type: at, name: at, layers: auto, weight: 0.01}                   # AT on the paired C3/SPPF outputs

Keys of an entry: `type` (registered loss), `name` (log key: results.csv column train/<name>_loss),
`weight` (default: train_kd.py's default for the type, DEFAULT_WEIGHTS), `layers` ('detect' = the
Detect heads, 'auto' = the C3/SPPF outputs paired by position (distill.pairing), 'detect_inputs' = the
maps entering Detect) or `student_layers` / `teacher_layers` (names or indices, paired by position);
every other key is a parameter of the loss. YoloKDLoss takes its box/obj/cls gains from the run's hyp
(box or giou, obj, cls, kd) unless the entry sets giou/obj/cls/dist.

Flags given next to a file override it (see `apply_flags`); with no file, the flags alone describe the
run exactly as before the engine existed (DEFAULT_CONFIG is their defaults). The resolved config
(explicit layer names, every weight) is written into the run folder as kd.yaml and read back by --resume.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from torch import nn

from distill.feature_weights import DEFAULT_WEIGHTS, PAPER_WEIGHTS
from distill.hooks import closest_names, model_head, unwrap_parallel
from distill.losses import LOSSES
from distill.pairing import pair_layers, parse_layer_list
from utils.general import LOGGER, UserError

ROOT = Path(__file__).resolve().parents[1]
KD_DIR = ROOT / "data" / "kd"
OUTPUT_TYPES = ("YoloKDLoss", "v8_output_kd")  # YOLOv5 heads, v8 DFL heads (distill/v8_output.py)
LAYER_KEYWORDS = ("detect", "auto", "detect_inputs")
ENTRY_KEYS = ("type", "name", "weight", "layers", "student_layers", "teacher_layers")

DEFAULT_TEMPERATURE = 20.0  # the fork's --temperature; only the 'kl'/'bce' class terms use it
# Default weights put each KD term at roughly a third of the detection loss at the start of training
# (measured: yolov5n student from scratch, yolov5s teacher, shapes data at 160 px, hyp.short gains):
# detection items sum ~0.20; raw l2 ~0.008, kl ~0.04 (bce = kl + the teacher's constant entropy);
# AT (sum over positions, 9 layer pairs) ~6.6; FitNet ~1 per layer. alpha=None / beta=None pick these.
OUTPUT_DEFAULT_ALPHA = {"l2": 10.0, "kl": 2.0, "bce": 2.0}
DEFAULT_ALPHA = 1.0  # used for output losses missing from OUTPUT_DEFAULT_ALPHA
DEFAULT_BETA = 0.01  # attention transfer
FEATURE_DEFAULT_BETA = {"at": DEFAULT_BETA, "fitnet": 0.1}

# train_kd.py's default (no --kd_config, no distillation flags): output KD as per-class binary KL plus the
# score-weighted L2 on the maps entering Detect = data/kd/scorel2.yaml. Chosen by measurement (bench/RESULTS.md,
# "Distillation methods compared"): the best of eight recipes at 20 epochs / 160 px (with imitation) and the
# only feature loss above output KD alone at the recorded 30 epochs / 192 px (0.270 vs 0.253 mAP@0.5:0.95,
# 2 seeds); it needs no ground truth and no warm-up. The former default (l2 + AT) is data/kd/l2_at.yaml, the card's (kl + AT)
# data/kd/card.yaml.
DEFAULT_CONFIG = {"losses": [
    {"type": "YoloKDLoss", "name": "kd", "layers": "detect", "variant": "kl", "T": DEFAULT_TEMPERATURE},
    {"type": "scorel2", "name": "scorel2", "layers": "detect_inputs"},
]}


# Per student family overrides of the detection losses' default weights. A v8 student's detection loss
# is ~75x a v5 one's at the start (box + cls + dfl 15.2 vs 0.20, distill/v8_output.py), so mse keeps the
# v8 seed's plain sum 1.0 there (1.3% of that loss), while a v5 student needs 0.002; imitation, cwd and pkd
# keep the papers' weights there (0.2x-2x that loss), while a v5 student gets the balanced ones.
FAMILY_WEIGHTS = {"v8": {"mse": 1.0, **PAPER_WEIGHTS}}


def default_weight(entry: dict, family: str = "v5") -> float:
    """train_kd.py's default weight of a config entry (its --alpha / --beta default) for a student of this
    head family; a loss class may declare its own (`default_weight`, e.g. v8_output_kd)."""
    if entry["type"] in FAMILY_WEIGHTS.get(family, {}):
        return float(FAMILY_WEIGHTS[family][entry["type"]])
    own = getattr(LOSSES.get(entry["type"]), "default_weight", None)
    if own is not None:
        return float(own)
    if entry["type"] in OUTPUT_TYPES:
        return OUTPUT_DEFAULT_ALPHA.get(entry.get("variant", "l2"), DEFAULT_ALPHA)
    if entry["type"] in FEATURE_DEFAULT_BETA:
        return FEATURE_DEFAULT_BETA[entry["type"]]
    return float(DEFAULT_WEIGHTS.get(entry["type"], 1.0))


def find_kd_config(name: str | Path) -> Path:
    """A kd config path; a bare name ('card') means data/kd/card.yaml."""
    path = Path(name)
    if not path.is_file() and not path.suffix and (KD_DIR / f"{name}.yaml").is_file():
        path = KD_DIR / f"{name}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in KD_DIR.glob("*.yaml")))
        raise UserError(f"--kd_config {name}: file not found (shipped recipes in data/kd/: {shipped})")
    return path


def load_kd_config(name: str | Path) -> dict:
    """Read and check a kd config file: {'losses': [entry, ...]}; UserError names the bad entry."""
    path = find_kd_config(name)
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"--kd_config {path}: not valid YAML: {e}") from e
    try:
        return check_kd_config(cfg)
    except UserError as e:
        raise UserError(f"--kd_config {path}: {e}") from e


def check_kd_config(cfg) -> dict:
    if not isinstance(cfg, dict) or set(cfg) != {"losses"} or not isinstance(cfg["losses"], list) or not cfg["losses"]:
        raise UserError("a kd config is a mapping with one key, 'losses': a non-empty list of loss entries")
    names = []
    for i, entry in enumerate(cfg["losses"]):
        if not isinstance(entry, dict) or "type" not in entry:
            raise UserError(f"losses[{i}] must be a mapping with a 'type' key, got {entry!r}")
        if entry["type"] not in LOSSES:
            raise UserError(f"losses[{i}]: unknown loss type {entry['type']!r}{closest_names(entry['type'], LOSSES)}; "
                            f"registered: {', '.join(LOSSES)}")
        layers = entry.get("layers")
        if layers is not None and layers not in LAYER_KEYWORDS:
            raise UserError(f"losses[{i}] ({entry['type']}): layers: {layers!r} must be one of "
                            f"{', '.join(LAYER_KEYWORDS)}; list names under student_layers/teacher_layers")
        names.append(entry.get("name", entry["type"]))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"loss names {dup} are used twice; give each entry a unique 'name' (its log key)")
    return cfg


def _given(opt_like, *names):
    for n in names:
        v = getattr(opt_like, n, None)
        if v is not None:
            return v
    return None


def apply_flags(cfg: dict, opt_like) -> dict:
    """A copy of cfg with the explicitly given train_kd.py flags applied (None / False = not given).

    Output flags (--kd_loss_selected, --temperature, --alpha, --weight_by_cls, --kl_softmax) set the
    YoloKDLoss entry (added if the file has none). --feature_loss X [Y ...] replaces the feature entries by
    one entry per type (on the replaced entry's explicit layer lists when it had some and one type is
    given, else on the type's default layers), 'none' removes them; --beta sets the feature entry's weight;
    --student_layers / --teacher_layers set the feature entries' layers.
    """
    cfg = copy.deepcopy(cfg)
    losses = cfg["losses"]
    out = {k: v for k, v in {"variant": _given(opt_like, "kd_loss_selected", "kd_loss"),
                             "T": _given(opt_like, "temperature"), "weight": _given(opt_like, "alpha"),
                             "weight_by_cls": getattr(opt_like, "weight_by_cls", False) or None,
                             "kl_softmax": getattr(opt_like, "kl_softmax", False) or None}.items() if v is not None}
    if out:
        outputs = [e for e in losses if e["type"] in OUTPUT_TYPES]
        if not outputs:
            outputs = [{"type": "YoloKDLoss", "name": "kd", "layers": "detect", "T": DEFAULT_TEMPERATURE}]
            losses.insert(0, outputs[0])
        for e in outputs:
            e.update({k: float(v) if k in ("T", "weight") else v for k, v in out.items()})
    features = [e for e in losses if e["type"] not in OUTPUT_TYPES]
    kinds = _given(opt_like, "feature_loss")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        off = [k for k in kinds if str(k).lower() in ("", "none")]
        if off and len(off) != len(kinds):
            raise UserError(f"--feature_loss {' '.join(map(str, kinds))}: 'none' cannot be combined with losses")
        # explicit layer lists of the replaced entry are kept; a keyword ('auto') gives way to the new type's default
        keep = {k: features[0][k] for k in ("student_layers", "teacher_layers") if features and features[0].get(k)}
        losses[:] = [e for e in losses if e["type"] in OUTPUT_TYPES]
        features = [] if off else [{"type": k, "name": k, **(keep if keep and len(kinds) == 1 else
                                                            {"layers": _default_layers(k)})} for k in kinds]
        losses.extend(features)
    beta = _given(opt_like, "beta")
    if beta is not None:
        if len(features) != 1:
            raise UserError(f"--beta sets the weight of the feature loss, but the config has {len(features)} "
                            "feature losses; set each 'weight' in the kd config file instead")
        features[0]["weight"] = float(beta)
    _apply_loss_flags(losses, opt_like)
    s_layers, t_layers = _given(opt_like, "student_layers"), _given(opt_like, "teacher_layers")
    for e in features if (s_layers or t_layers) else []:
        e.pop("layers", None)
        e["student_layers"], e["teacher_layers"] = parse_layer_list(s_layers), parse_layer_list(t_layers)
    if not losses:
        raise UserError("nothing to distil: the kd config and flags leave no loss")
    return check_kd_config(cfg)


# Per-loss flags of train_kd.py: flag -> (loss type, config key). Each sets that key on every entry of
# that type; given for a loss the run does not have, it is an error (it would silently do nothing).
LOSS_FLAGS = {
    "imitation_weight": ("imitation", "weight"), "imitation_psi": ("imitation", "psi"),
    "imitation_warmup": ("imitation", "warmup"), "cwd_weight": ("cwd", "weight"), "cwd_tau": ("cwd", "tau"),
    "mse_weight": ("mse", "weight"), "pkd_weight": ("pkd", "weight"), "scorel2_weight": ("scorel2", "weight"),
}


def _apply_loss_flags(losses: list[dict], opt_like) -> None:
    for flag, (loss_type, key) in LOSS_FLAGS.items():
        value = _given(opt_like, flag)
        if value is None:
            continue
        entries = [e for e in losses if e["type"] == loss_type]
        if not entries:
            raise UserError(f"--{flag} {value}: the run has no '{loss_type}' loss; add it with "
                            f"--feature_loss {loss_type} (or in the --kd_config file)")
        ok = {"psi": 0 < value <= 1, "tau": value > 0}.get(key, value >= 0)  # weight, warmup: >= 0
        if not ok:
            want = {"psi": "in (0, 1], e.g. 0.5", "tau": "> 0, e.g. 1"}.get(key, ">= 0")
            raise UserError(f"--{flag} {value}: must be {want}")
        for e in entries:
            e[key] = int(value) if key == "warmup" else float(value)


def _default_layers(loss_type: str) -> str:
    """Where a feature loss goes when no layers are given: its class's `default_layers`; else the maps
    entering Detect for the detection losses (distill/detection_losses.py: built for the FPN levels the
    anchors belong to), 'auto' (the C3/SPPF pairs) for the others."""
    cls = LOSSES.get(loss_type)
    default = "detect_inputs" if getattr(cls, "__module__", "") == "distill.detection_losses" else "auto"
    return getattr(cls, "default_layers", default)


def _detect_name(model: nn.Module) -> list[str]:
    layers = getattr(unwrap_parallel(model), "model", None)
    if not isinstance(layers, nn.Sequential):
        raise UserError(f"{type(unwrap_parallel(model)).__name__} is not a YOLOv5 Model: 'detect' layers need one")
    return [f"model.{len(layers) - 1}"]


def _detect_inputs(model: nn.Module) -> list[str]:
    head = unwrap_parallel(model).model[-1]
    sources = head.f if isinstance(head.f, list) else [head.f]
    n = len(unwrap_parallel(model).model)
    return [f"model.{i % n if i < 0 else i}" for i in sources]


def resolve_layers(cfg: dict, student: nn.Module, teacher: nn.Module) -> dict:
    """A copy of cfg with explicit student_layers/teacher_layers and a weight in every entry."""
    cfg = copy.deepcopy(cfg)
    family = getattr(model_head(student), "family", "v5")
    for i, e in enumerate(cfg["losses"]):
        e.setdefault("name", e["type"])
        e.setdefault("weight", default_weight(e, family))
        e["weight"] = float(e["weight"])
        layers = e.pop("layers", None)
        if layers is None and e.get("student_layers") is None and e.get("teacher_layers") is None:
            layers = "detect" if e["type"] in OUTPUT_TYPES else _default_layers(e["type"])
        if layers == "detect":
            e["student_layers"], e["teacher_layers"] = _detect_name(student), _detect_name(teacher)
        elif layers == "detect_inputs":
            e["student_layers"], e["teacher_layers"] = _detect_inputs(student), _detect_inputs(teacher)
        elif e["type"] not in OUTPUT_TYPES:  # 'auto' or explicit (one side may default)
            pairing = pair_layers(student, teacher, e.get("student_layers"), e.get("teacher_layers"))
            e["student_layers"], e["teacher_layers"] = pairing.student.names, pairing.teacher.names
            LOGGER.info(f"Distilling features with {e['name']} (student -> teacher): " + ", ".join(
                f"{s}({cs}) -> {t}({ct})" for s, cs, t, ct in zip(pairing.student.names, pairing.student.channels,
                                                                pairing.teacher.names, pairing.teacher.channels)))
        else:
            e["student_layers"] = [str(x) for x in parse_layer_list(e.get("student_layers")) or _detect_name(student)]
            e["teacher_layers"] = [str(x) for x in parse_layer_list(e.get("teacher_layers")) or _detect_name(teacher)]
        e["student_layers"] = [f"model.{x}" if isinstance(x, int) else str(x) for x in e["student_layers"]]
        e["teacher_layers"] = [f"model.{x}" if isinstance(x, int) else str(x) for x in e["teacher_layers"]]
    return cfg


def distiller_config(resolved: dict, student: nn.Module, teacher: nn.Module, hyp: dict) -> dict:
    """The Distiller config (the seed's keys) of a resolved kd config: layer lists concatenated, each
    loss mapped to its own slice by pairs=[...], YoloKDLoss given the run's hyp gains."""
    s_layers, t_layers, losses, weights = [], [], [], []
    for e in resolved["losses"]:
        params = {k: v for k, v in e.items() if k not in ENTRY_KEYS}
        if e["type"] in OUTPUT_TYPES and not {"giou", "obj", "cls", "dist"} & set(params):
            params["hyp"] = hyp
        start = len(s_layers)
        s_layers += e["student_layers"]
        t_layers += e["teacher_layers"]
        losses.append({"type": e["type"], "name": e["name"], "pairs": list(range(start, len(s_layers))), **params})
        weights.append(e["weight"])
    return {"student_model": student, "teacher_model": teacher, "student_distill_layer": s_layers,
            "teacher_distill_layer": t_layers, "loss": losses, "weights": weights, "student_out_layer": None}


def write_kd_config(resolved: dict, path: Path, source: str) -> None:
    """kd.yaml of a run: the resolved config, loadable by --kd_config and read back by --resume."""
    header = (f"# Resolved distillation config of this run ({source}).\n"
              "# Repeat it with: python train_kd.py --kd_config <this file> ...; --resume reads it back.\n"
              "# YoloKDLoss gains come from the run's hyp (hyp.yaml) unless giou/obj/cls/dist are set here.\n")
    path.write_text(header + yaml.safe_dump(resolved, sort_keys=False))
