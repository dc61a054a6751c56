"""The Distiller's config, checked and turned into parts: layer names, loss specs, the mapping of layer
pairs to losses, log names, and the losses built with their channel counts (distill/distiller.py's
docstring gives the rules). Every error is a ValueError naming the config key."""

from __future__ import annotations

import inspect

from torch import nn

from distill.hooks import closest_names, resolve_layer_names
from distill.losses import LOSSES

REQUIRED_KEYS = ("student_model", "teacher_model", "student_distill_layer", "teacher_distill_layer", "loss")
OPTIONAL_KEYS = ("weights", "student_out_layer", "device", "example_input", "teacher_dtype", "teacher_early_exit")
ENGINE_LOSS_KEYS = ("type", "name", "pairs")  # read by the engine, not passed to the loss


# --------------------------------------------------------------------------------------------------
# config checks


def check_keys(config) -> dict:
    if not isinstance(config, dict):
        raise TypeError(f"Distiller config must be a dict, got {type(config).__name__}")
    known = REQUIRED_KEYS + OPTIONAL_KEYS
    for key in config:
        if key not in known:
            raise ValueError(f"unknown config key {key!r}{closest_names(key, known)}; keys: {', '.join(known)}")
    missing = [k for k in REQUIRED_KEYS if config.get(k) is None]
    if missing:
        raise ValueError(f"config is missing {', '.join(repr(k) for k in missing)} (required: {', '.join(REQUIRED_KEYS)})")
    return config


def config_layers(model: nn.Module, config: dict, key: str) -> list[str]:
    layers = config[key]
    layers = [layers] if isinstance(layers, (str, int)) else list(layers)
    if not layers:
        raise ValueError(f"config['{key}'] is empty: name at least one layer")
    try:
        return resolve_layer_names(model, layers)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config['{key}']: {e}") from e


def loss_specs(loss) -> list[dict]:
    specs = [loss] if isinstance(loss, dict) else list(loss)
    if not specs:
        raise ValueError("config['loss'] is empty: give at least one dict(type=...)")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "type" not in spec:
            raise ValueError(f"config['loss'][{i}] must be a dict with a 'type' key, got {spec!r}")
        if spec["type"] not in LOSSES:
            raise ValueError(f"config['loss'][{i}]: unknown loss type {spec['type']!r}"
                             f"{closest_names(spec['type'], LOSSES)}; registered: {', '.join(LOSSES)}")
    return [dict(s) for s in specs]


def map_pairs(specs: list[dict], s_layers: list[str], t_layers: list[str]) -> list[list[int]]:
    """Layer-pair indices of each loss (see the module docstring for the rules)."""
    n = len(s_layers)
    implicit = [i for i, s in enumerate(specs) if s.get("pairs") is None]
    if implicit and len(specs) not in (n, 1):
        raise ValueError(f"config['loss'] has {len(specs)} losses for {n} layer pairs: give one loss per pair, "
                         "one loss for all pairs, or pairs=[...] (indices into the layer lists) in each loss dict")
    mapping = []
    for i, spec in enumerate(specs):
        pairs = spec.get("pairs")
        if pairs is None:
            pairs = list(range(n)) if len(specs) == 1 else [i]
        pairs = [pairs] if isinstance(pairs, int) else list(pairs)
        bad = [k for k in pairs if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n]
        if bad or not pairs:
            raise ValueError(f"config['loss'][{i}] ({spec['type']}): pairs={pairs} must be indices 0..{n - 1} "
                             "into the layer lists")
        mapping.append(pairs)
    unused = sorted(set(range(n)) - {k for pairs in mapping for k in pairs})
    if unused:
        raise ValueError("layer pair(s) " + ", ".join(f"{k} ({s_layers[k]} -> {t_layers[k]})" for k in unused) +
                         " feed no loss: remove them or map them with pairs=[...]")
    return mapping


def loss_names(specs: list[dict]) -> list[str]:
    types = [s["type"] for s in specs]
    names = []
    for i, spec in enumerate(specs):
        name = spec.get("name")
        if name is None:
            name = spec["type"] if types.count(spec["type"]) == 1 else f"{spec['type']}_{types[:i].count(spec['type'])}"
        name = str(name)
        if not name.isidentifier() or name in names:
            raise ValueError(f"config['loss'][{i}]: name {name!r} must be a unique identifier (it is a log key)")
        names.append(name)
    return names


def build_loss(i: int, spec: dict, s_shapes, t_shapes) -> nn.Module:
    """Instantiate loss i; fill student_channels/teacher_channels from probed shapes when it takes them."""
    cls = LOSSES[spec["type"]]
    kwargs = {k: v for k, v in spec.items() if k not in ENGINE_LOSS_KEYS}
    params = inspect.signature(cls.__init__).parameters
    where = f"config['loss'][{i}] ({spec['type']})"
    unknown = [k for k in kwargs if k not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values())]
    if unknown:
        accepted = [p for p in params if p != "self"]
        raise ValueError(f"{where}: unknown parameter(s) {unknown}{closest_names(unknown[0], accepted)}; "
                         f"accepted: {', '.join(accepted) or 'none'}")
    wants = "student_channels" in params and "teacher_channels" in params
    seed_form = "inC" in kwargs  # vid's explicit channel form
    if wants and "student_channels" not in kwargs and not seed_form:
        if s_shapes is not None and all(s is not None and len(s) >= 2 for s in s_shapes + t_shapes):
            kwargs["student_channels"] = [int(s[1]) for s in s_shapes]
            kwargs["teacher_channels"] = [int(t[1]) for t in t_shapes]
        elif params["student_channels"].default is inspect.Parameter.empty:
            raise ValueError(f"{where} needs the channel counts of its layers: give student_channels/"
                             "teacher_channels in its dict, or an example_input in the config")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from e
