"""Every bad input gets a clear message before any work, and nothing passes silently (issue 16 §3).

The tables below ARE the record of what was tried: each row is one wrong value of one flag or one yaml
field, and the words the message must contain (the flag or file, and what is wrong). Most rows call
the validation directly (engine/options.py, utils/data/config.py). test_bad_inputs_runs.py has the
results.csv, --exist-ok and warmup cases and one subprocess per script (exit status 2, no traceback).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import yaml

import train
from engine.options import (
    check_classes_in_model,
    check_detect_args,
    check_export_args,
    check_train_opt,
    check_val_args,
)
from utils.data.config import check_dataset
from utils.general import UserError, check_file

ROOT = Path(__file__).resolve().parents[1]
HYP = ROOT / "data" / "hyps" / "hyp.scratch.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from utils.data.synthetic import build_synthetic_dataset

    return build_synthetic_dataset(tmp_path_factory.mktemp("bad_inputs") / "ds", n_train=4, n_val=2, img_size=64,
                                   nc=3, seed=2)


@pytest.fixture(scope="module")
def sd_checkpoint(tmp_path_factory):
    """A state_dict-only .pt of a yolov5n with nc=3 (no pickled model: needs --cfg to be built)."""
    from models.yolo import Model

    torch.manual_seed(0)
    f = tmp_path_factory.mktemp("sd") / "sd_only.pt"
    torch.save(Model(ROOT / "models" / "yolov5n.yaml", nc=3).state_dict(), f)
    return f


def _raises(fn, *words):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    for w in words:
        assert w in msg, f"{w!r} not in message: {msg}"
    return msg


# ------------------------------------------------------------------------------------------------
# train.py flags: (extra argv, words the message must contain)

TRAIN_CASES = [
    (["--epochs", "-1"], ["--epochs -1", ">= 1"]),
    (["--epochs", "0"], ["--epochs 0"]),
    (["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
    (["--imgsz", "0"], ["--imgsz 0", "multiple of 32"]),
    (["--img", "16"], ["--imgsz 16"]),
    (["--workers", "-1"], ["--workers -1"]),
    (["--label-smoothing", "1.5"], ["--label-smoothing 1.5", "[0, 1)"]),
    (["--patience", "-3"], ["--patience -3"]),
    (["--freeze", "-1"], ["--freeze -1"]),
    (["--seed", "-1"], ["--seed -1"]),
    (["--cache", "gpu"], ["--cache gpu", "'ram' or 'disk'"]),
    (["--cfg", "nope.yaml"], ["--cfg file 'nope.yaml' not found"]),
    (["--cfg", str(ROOT / "data" / "hyps")], ["--cfg", "is a folder"]),
    (["--cfg", str(ROOT / "README.md")], ["--cfg", "not a yaml file"]),
    (["--weights", "nope.pt"], ["--weights nope.pt not found", "download_weights.py"]),
    (["--weights", str(ROOT / "weights")], ["--weights", "is a folder"]),
    (["--data", "missing.yaml"], ["--data file 'missing.yaml' not found"]),
    (["--hyp", "missing_hyp.yaml"], ["--hyp file 'missing_hyp.yaml' not found"]),
    (["--name", ""], ["--name is empty"]),
    (["--device", "gpu0"], ["--device gpu0", "0,1,2,3"]),
    (["--project", str(ROOT / "README.md")], ["--project", "is a file"]),
    (["--cfg", str(HYP)], ["--cfg", "is not a model yaml", "backbone"]),
    (["--quad"], ["--quad", "--batch-size 2 must be a multiple of 4"]),
]


def _train_opt(data, *extra):
    argv = ["--data", str(data), "--cfg", str(ROOT / "models/yolov5n.yaml"), "--img", "64", "--epochs", "1",
            "--batch-size", "2", "--workers", "0", *extra]
    return train.get_args_parser().parse_args(argv)


@pytest.mark.parametrize(("extra", "words"), TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_train_flags(data, extra, words):
    _raises(lambda: check_train_opt(_train_opt(data, *extra)), *words)


def test_freeze_everything_is_refused():
    from engine.setup import freeze_layers
    from models.yolo import Model

    model = Model(ROOT / "models" / "yolov5n.yaml", nc=3)
    _raises(lambda: freeze_layers(model, 25), "--freeze 25", "25 layers", "nothing to train")
    freeze_layers(model, 10)  # the backbone: fine
    assert not model.model[0].conv.weight.requires_grad and model.model[24].m[0].weight.requires_grad


def test_sync_bn_without_ddp_is_warned(data, caplog):
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        check_train_opt(_train_opt(data, "--sync-bn"))
    assert "--sync-bn only applies to multi-GPU" in caplog.text


def test_train_good_options_pass(data):
    opt = check_train_opt(_train_opt(data, "--cache", "--label-smoothing", "0.1"))
    assert opt.epochs == 1 and opt.cache == "ram"


# hyp yaml fields: (changes to hyp.scratch.yaml, words)
HYP_CASES = [
    ({"lr0": 0}, ["lr0 0 is out of range", "> 0"]),
    ({"lr0": -0.01}, ["lr0 -0.01"]),
    ({"momentum": 1.0}, ["momentum 1.0", "[0, 1)"]),
    ({"anchor_t": 1}, ["anchor_t 1", "nothing matches"]),
    ({"fliplr": 2}, ["fliplr 2", "probability"]),
    ({"mosaic": -0.1}, ["mosaic -0.1"]),
    ({"scale": 1.0}, ["scale 1.0"]),
    ({"hsv_v": 1.5}, ["hsv_v 1.5"]),
    ({"weight_decay": "5e-4"}, ["weight_decay must be a number", "decimal point"]),
    ({"box": "big"}, ["box must be a number"]),
    ({"nbs": 0}, ["nbs 0"]),
    ({"warmup_min_iters": 1.5}, ["warmup_min_iters must be an integer"]),
    ({"lr0": None}, ["lr0 must be a number"]),
    ({"lr0": "DELETE"}, ["lacks keys ['lr0']"]),
    # keys declared by their readers (utils/losses/yolov8.py, distill/yolo_output.py, engine/train_utils.py)
    ({"dfl": -1.5}, ["dfl -1.5 is out of range", ">= 0", "distribution focal loss"]),
    ({"tal_topk": 0}, ["tal_topk 0 is out of range", ">= 1"]),
    ({"tal_topk": 2.5}, ["tal_topk must be an integer"]),
    ({"kd": -1.0}, ["kd -1.0 is out of range", ">= 0"]),
    ({"kd": "high"}, ["kd must be a number"]),
    ({"giou": -0.05}, ["giou -0.05 is out of range"]),
    ({"close_mosaic": -1}, ["close_mosaic -1 is out of range", ">= 0"]),
    ({"close_mosaic": 2.5}, ["close_mosaic must be an integer"]),
]


@pytest.mark.parametrize(("change", "words"), HYP_CASES, ids=[str(c[0]) for c in HYP_CASES])
def test_hyp_fields(data, tmp_path, change, words):
    hyp = yaml.safe_load(HYP.read_text())
    for k, v in change.items():
        hyp.pop(k) if v == "DELETE" else hyp.update({k: v})
    f = tmp_path / "bad_hyp.yaml"
    f.write_text(yaml.safe_dump(hyp))
    msg = _raises(lambda: check_train_opt(_train_opt(data, "--hyp", str(f))), *words)
    assert f"--hyp {f}" in msg  # the file is named as the --hyp file


def test_hyp_unknown_key_is_warned(data, tmp_path, caplog):
    f = tmp_path / "typo.yaml"
    f.write_text(HYP.read_text() + "lr_0: 0.02\n")
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        check_train_opt(_train_opt(data, "--hyp", str(f)))
    assert "unknown keys ['lr_0']" in caplog.text


SHIPPED_HYPS = sorted((ROOT / "data" / "hyps").glob("*.yaml"))


@pytest.mark.parametrize("hyp", SHIPPED_HYPS, ids=[f.name for f in SHIPPED_HYPS])
def test_shipped_hyps_have_no_unknown_keys(data, hyp, caplog):
    """hyp.v8.yaml's dfl, tal_topk and close_mosaic (and every other shipped key) are read by some module,
    so none is reported as unknown; each is range-checked instead."""
    cfg = "models/yolov8n.yaml" if hyp.name.startswith("hyp.v8") else "models/yolov5n.yaml"
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        check_train_opt(_train_opt(data, "--hyp", str(hyp), "--cfg", str(ROOT / cfg)))
    assert "unknown keys" not in caplog.text


def test_kd_hyp_keys_are_known(data, tmp_path, caplog):
    """kd and giou (read by the output distillation) are checked, not reported as unknown."""
    f = tmp_path / "kd.yaml"
    f.write_text(HYP.read_text() + "kd: 0.5\ngiou: 0.05\n")
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        check_train_opt(_train_opt(data, "--hyp", str(f)))
    assert "unknown keys" not in caplog.text


HYP_READ = re.compile(r"\bhyp\b(?:\s+or\s+\{\}\))?(?:\[|\.get\()\s*[\"'](\w+)[\"']")  # hyp["k"], x.hyp.get("k", ...)


def test_every_hyp_key_read_is_declared():
    """The hyp keys read anywhere in the layers (hyp["k"], hyp.get("k"), (hyp or {}).get("k")) are exactly
    the keys the readers declare in their HYP_KEYS, plus engine.options.UNREAD_HYP_KEYS (iou_t): a new
    reader without a declaration, or a declaration left behind by a removed reader, fails here."""
    from engine.options import UNREAD_HYP_KEYS, hyp_rules

    read: dict[str, set[str]] = {}
    for layer in ("utils", "models", "distill", "engine"):
        for f in sorted((ROOT / layer).rglob("*.py")):
            for key in HYP_READ.findall(f.read_text()):
                read.setdefault(key, set()).add(str(f.relative_to(ROOT)))
    assert {"lr0", "dfl", "tal_topk", "close_mosaic", "kd", "giou", "mosaic", "anchors"} <= read.keys()  # seen
    declared = hyp_rules()
    undeclared = {k: sorted(v) for k, v in read.items() if k not in declared}
    assert not undeclared, f"hyp keys read but declared in no HYP_KEYS: {undeclared}"
    assert set(declared) - set(read) == set(UNREAD_HYP_KEYS)


def test_a_key_declared_twice_needs_one_range(monkeypatch):
    """box is read by both losses; declarations that disagree on its range are a programming error."""
    import utils.losses.yolov8
    from engine.options import hyp_rules

    monkeypatch.setitem(utils.losses.yolov8.HYP_KEYS, "box", (1, None, False, False, False, "box gain"))
    hyp_rules.cache_clear()
    try:
        with pytest.raises(ValueError, match="hyp key box is declared with two ranges"):
            hyp_rules()
    finally:
        monkeypatch.undo()
        hyp_rules.cache_clear()
    assert hyp_rules()["box"][:5] == (0, None, False, False, False)


def test_resume_folder_and_missing(tmp_path):
    run = tmp_path / "exp"
    (run / "weights").mkdir(parents=True)
    opt = train.get_args_parser().parse_args(["--resume", str(run)])
    _raises(lambda: check_train_opt(opt), f"--resume {run}: no weights/last.pt in this folder")
    (run / "weights" / "last.pt").write_bytes(b"x")
    assert check_train_opt(train.get_args_parser().parse_args(["--resume", str(run)])).resume == str(
        run / "weights" / "last.pt")
    opt = train.get_args_parser().parse_args(["--resume", str(tmp_path / "nope" / "last.pt")])
    _raises(lambda: check_train_opt(opt), "does not exist")


def test_absolute_path_message_names_it_once(tmp_path):
    msg = _raises(lambda: check_file(tmp_path / "x.yaml", "--hyp file"), f"--hyp file '{tmp_path / 'x.yaml'}' not found")
    assert "looked in" not in msg


# ------------------------------------------------------------------------------------------------
# data yaml fields: (changes to the generated data.yaml, words)

DATA_CASES = [
    ({"names": {0: "a", 2: "c", 3: "d"}}, ["'names' keys must be exactly 0..2", "missing ids [1]"]),
    ({"names": {"a": 0, "b": 1, "c": 2}}, ["'names' looks inverted", "0: a"]),
    ({"names": {"x": "a", 1: "b", 2: "c"}}, ["'names' keys must be class ids"]),
    ({"nc": 0, "names": []}, ["'nc' is 0", "at least 1 class"]),
    ({"nc": 2.5}, ["'nc' must be a whole number", "2.5"]),
    ({"nc": "three"}, ["'nc' must be a whole number"]),
    ({"nc": 4}, ["nc=4 but 3 names"]),
    ({"names": ["a", None, "c"]}, ["class 1 has an empty name"]),
    ({"names": "abc"}, ["'names' must be a list"]),
    ({"names": [["a", "b", "c"]], "nc": 1}, ["flat list"]),
    ({"train": None}, ["'train' is missing"]),
    ({"val": "images/nowhere"}, ["dataset paths not found", "images/nowhere"]),
]


def _data_variant(data: Path, tmp_path: Path, change: dict) -> Path:
    d = yaml.safe_load(data.read_text())
    d.update(change)
    f = tmp_path / "variant.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


@pytest.mark.parametrize(("change", "words"), DATA_CASES, ids=[str(c[0]) for c in DATA_CASES])
def test_data_yaml_fields(data, tmp_path, change, words):
    f = _data_variant(data, tmp_path, change)
    msg = _raises(lambda: check_dataset(f, autodownload=False), *words)
    assert str(f) in msg  # the data yaml is named


def test_data_fields_are_checked_before_any_run_folder(data, tmp_path):
    """train.py and val.py read the data yaml's fields first: no run folder is made for a wrong names dict."""
    f = _data_variant(data, tmp_path, {"names": {"a": 0, "b": 1, "c": 2}})
    opt = _train_opt(f, "--project", str(tmp_path / "runs"))
    _raises(lambda: check_train_opt(opt), str(f), "looks inverted")
    _raises(lambda: train.main(_train_opt(f, "--project", str(tmp_path / "runs"))), "looks inverted")
    assert not (tmp_path / "runs").exists()
    _raises(_val(f, ROOT / "models" / "yolov5n.yaml"), "looks inverted")


def test_names_dict_in_order_is_accepted(data, tmp_path, caplog):
    f = _data_variant(data, tmp_path, {"names": {2: "c", 0: "a", 1: "a"}})
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        assert check_dataset(f)["names"] == ["a", "a", "c"]
    assert "['a'] appear more than once" in caplog.text


def test_txt_list_with_missing_images(data, tmp_path, caplog):
    real = sorted((data.parent / "images" / "train").glob("*.jpg"))
    gone = [str(tmp_path / "deleted1.jpg"), str(tmp_path / "deleted2.jpg")]
    lst = tmp_path / "train.txt"
    lst.write_text("\n".join(gone) + "\n")
    f = _data_variant(data, tmp_path, {"train": str(lst)})
    _raises(lambda: check_dataset(f), f"none of the 2 images listed in {lst}", "deleted1.jpg", "Regenerate")
    lst.write_text("\n".join([str(real[0]), *gone]) + "\n")
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        check_dataset(f)
    assert f"2 of 3 images listed in {lst} ('train') do not exist" in caplog.text


# ------------------------------------------------------------------------------------------------
# val.py / detect.py / export.py arguments


def _val(data, weights, **kw):
    a = {"batch_size": 2, "imgsz": 64, "conf_thres": 0.001, "iou_thres": 0.6, "task": "val", "workers": 0}
    a.update(kw)
    return lambda: check_val_args(data, weights, **a)


VAL_CASES = [
    ({"conf_thres": 2}, ["--conf-thres 2", "between 0 and 1"]),
    ({"conf_thres": -0.1}, ["--conf-thres -0.1"]),
    ({"iou_thres": 1.5}, ["--iou-thres 1.5"]),
    ({"batch_size": 0}, ["--batch-size 0"]),
    ({"imgsz": 0}, ["--imgsz 0"]),
    ({"task": "bogus"}, ["--task bogus", "speed"]),
    ({"workers": -2}, ["--workers -2"]),
    ({"cfg": "nope.yaml"}, ["--cfg file 'nope.yaml' not found"]),
    ({"cfg": str(HYP)}, ["--cfg", "is not a model yaml"]),
    ({"device": "cuda0"}, ["--device cuda0"]),
    ({"project": str(HYP)}, ["--project", "is a file"]),
]


@pytest.mark.parametrize(("kw", "words"), VAL_CASES, ids=[str(c[0]) for c in VAL_CASES])
def test_val_args(data, sd_checkpoint, kw, words):
    _raises(_val(data, sd_checkpoint, **kw), *words)


def test_val_weights_and_data_files(data, sd_checkpoint, tmp_path):
    _raises(_val(data, tmp_path / "missing.pt"), "--weights", "missing.pt not found", "download_weights.py")
    _raises(_val(data, tmp_path), "--weights", "is a folder")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"0")
    _raises(_val(data, onnx), "--weights", "use detect.py")
    _raises(_val(tmp_path / "nope.yaml", sd_checkpoint), "--data file")
    _raises(_val(data, None), "--weights is required")
    assert check_val_args(data, [str(sd_checkpoint)], 2, 64, 0.1, 0.5, "speed", 0) == [sd_checkpoint]


def test_state_dict_checkpoint_with_cfg(data, sd_checkpoint, tmp_path):
    """The README promises state_dict-only files work with --cfg: val.py and detect.py have the flag."""
    import detect
    import val
    from models.backend import DetectBackend

    cfg = str(ROOT / "models" / "yolov5n.yaml")
    _raises(lambda: val.run(data, weights=str(sd_checkpoint), imgsz=64, batch_size=2, workers=0, device="cpu",
                            project=tmp_path), "state_dict")
    (_, _, map50, map_, *_), maps, _ = val.run(data, weights=str(sd_checkpoint), cfg=cfg, imgsz=64, batch_size=2,
                                                 workers=0, device="cpu", project=tmp_path, plots=False)
    assert maps.shape == (3,) and 0 <= map_ <= map50 <= 1
    assert val.parse_opt(["--cfg", cfg]).cfg == cfg and detect.parse_opt(["--cfg", cfg]).cfg == cfg
    assert len(DetectBackend(sd_checkpoint, cfg=cfg).names) == 3
    import export

    assert export.parse_opt(["--cfg", cfg]).cfg == cfg
    assert export.load_for_export(sd_checkpoint, torch.device("cpu"), cfg=cfg).model[-1].nc == 3


DETECT_CASES = [
    ({"conf_thres": 2}, ["--conf-thres 2"]),
    ({"iou_thres": -1}, ["--iou-thres -1"]),
    ({"max_det": 0}, ["--max-det 0"]),
    ({"line_thickness": 0}, ["--line-thickness 0"]),
    ({"classes": [-1]}, ["--classes -1"]),
    ({"imgsz": [64, 64, 64]}, ["--imgsz takes one value (square) or two", "64 64 64"]),
    ({"imgsz": [0]}, ["--imgsz 0"]),
    ({"source": "nope_dir/x.jpg"}, ["--source nope_dir/x.jpg does not exist"]),
    ({"source": ""}, ["--source is empty"]),
    ({"source": "https://example.com/a.jpg"}, ["--source https://example.com/a.jpg is a remote file"]),
    ({"device": "first"}, ["--device first"]),
    ({"project": str(HYP)}, ["--project", "is a file"]),
]


@pytest.mark.parametrize(("kw", "words"), DETECT_CASES, ids=[str(c[0]) for c in DETECT_CASES])
def test_detect_args(sd_checkpoint, kw, words):
    a = {"weights": sd_checkpoint, "source": str(ROOT / "data" / "images"), "imgsz": [64], "conf_thres": 0.25,
         "iou_thres": 0.45, "max_det": 100, "classes": None, "line_thickness": 3}
    a.update(kw)
    _raises(lambda: check_detect_args(**a), *words)


def test_detect_weights_and_classes(tmp_path):
    bad = tmp_path / "m.txt"
    bad.write_text("x")
    _raises(lambda: check_detect_args(bad, ROOT / "data/images", [64], 0.2, 0.4, 10, None, 3), "--weights", ".onnx")
    _raises(lambda: check_classes_in_model([0, 5], ["a", "b", "c"]), "--classes 5", "3 classes", "0..2")
    check_classes_in_model([2], ["a", "b", "c"])


EXPORT_CASES = [
    ({"imgsz": [0]}, ["--imgsz 0"]),
    ({"batch_size": 0}, ["--batch-size 0"]),
    ({"opset": 3}, ["--opset 3", "[7,"]),
    ({"opset": 999}, ["--opset 999"]),
    ({"device": "cpu0"}, ["--device cpu0"]),
]


@pytest.mark.parametrize(("kw", "words"), EXPORT_CASES, ids=[str(c[0]) for c in EXPORT_CASES])
def test_export_args(sd_checkpoint, kw, words):
    a = {"weights": sd_checkpoint, "imgsz": [64], "batch_size": 1, "opset": 13, "include": ["onnx"]}
    a.update(kw)
    _raises(lambda: check_export_args(**a), *words)


def test_hyp_default_follows_the_model_family(tmp_path):
    """No --hyp: YOLOv5 models get v6.0's hyp.scratch.yaml, YOLOv8-style ones hyp.v8.yaml (their loss
    needs the dfl gain; the YOLOv8 KD seed's command gives no --hyp)."""
    from engine.options import default_hyp

    assert default_hyp("models/yolov5n.yaml", "").name == "hyp.scratch.yaml"
    assert default_hyp("models/yolov8n.yaml", "").name == "hyp.v8.yaml"
    assert default_hyp(str(ROOT / "models/yolov8s-cbam.yaml"), "").name == "hyp.v8.yaml"
