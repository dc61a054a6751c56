"""torch.hub loading from a local clone and the AutoShape / Detections Python API (issue 16 §2).

Offline: no URL is ever fetched (the URL error path is exercised against a closed local port only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_detect import NAMES, make_checkpoint

from models.autoshape import AutoShape, Detections
from utils.general import UserError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny nc=3 checkpoint and two lossless (PNG) images of different shapes, so that every decoder
    gives the same pixels."""
    root = tmp_path_factory.mktemp("hub")
    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate([(96, 128), (128, 80)]):
        im = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        cv2.circle(im, (w // 3, h // 2), min(h, w) // 5, (0, 0, 255), -1)
        cv2.rectangle(im, (w // 2, h // 6), (w - 8, h // 2), (255, 0, 0), -1)
        cv2.imwrite(str(root / f"im{i}.png"), im)
        files.append(root / f"im{i}.png")
    return make_checkpoint(root / "tiny.pt"), files


@pytest.fixture(scope="module")
def model(assets):
    import hubconf

    m = hubconf.custom(path=assets[0], verbose=False)
    m.conf, m.max_det = 0.5, 8  # few boxes: fast crops, same settings for every comparison below
    return m


def test_torch_hub_load_local_from_repo_root(assets, monkeypatch):
    monkeypatch.chdir(ROOT)
    m = torch.hub.load(".", "custom", path=str(assets[0]), source="local", verbose=False)
    assert isinstance(m, AutoShape) and m.names == NAMES and not m.training
    raw = torch.hub.load(".", "custom", path=str(assets[0]), source="local", autoshape=False, verbose=False)
    assert not isinstance(raw, AutoShape) and raw.names == NAMES
    n = torch.hub.load(".", "yolov5n", pretrained=False, classes=3, source="local", verbose=False)  # no weights needed
    assert isinstance(n, AutoShape) and n.model.model[-1].nc == 3
    import hubconf

    assert all(callable(getattr(hubconf, f"yolov5{s}")) for s in "nsmlx")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-3)


def test_every_input_type_gives_the_same_detections(model, assets):
    _, files = assets
    ref = model(str(files[0]), size=SIZE)
    assert len(ref) == 1 and len(ref.xyxy[0]) > 0 and ref.files == ["im0.jpg"]
    bgr = cv2.imread(str(files[0]))
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    for x in (files[0], Image.open(files[0]), rgb, rgb.transpose(2, 0, 1), Image.open(files[0]).convert("RGBA"),
              rgb.astype(np.float32) / 255):
        got = model(x, size=SIZE)
        assert _same(got.xyxy[0], ref.xyxy[0]), type(x)
    both = model([str(files[0]), Image.open(files[1])], size=SIZE)  # a list: one batch of different shapes
    assert both.n == 2 and both.imgs[1].shape == (128, 80, 3) and both.files == ["im0.jpg", "im1.jpg"]
    grey = model(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), size=SIZE)  # HW grey -> 3 channels
    assert grey.imgs[0].shape == (96, 128, 3) and grey.files == ["image0.jpg"]


def test_boxes_are_in_original_pixels_like_detect_py(model, assets, tmp_path):
    """detect.py on the same file, same size and thresholds: the same boxes (its labels are rounded to pixels)."""
    import detect

    weights, files = assets
    save_dir = detect.run(weights=str(weights), source=str(files[1]), imgsz=[SIZE], conf_thres=model.conf,
                          iou_thres=model.iou, max_det=model.max_det, device="cpu", project=str(tmp_path),
                          save_txt=True, save_conf=True, nosave=True)
    rows = np.loadtxt(save_dir / "labels" / "im1.txt", ndmin=2)  # cls x y w h conf, normalised
    res = model(str(files[1]), size=SIZE)
    ours = res.xywhn[0].numpy()
    assert len(ours) == len(rows) > 0
    theirs = np.concatenate((rows[:, 1:6], rows[:, :1]), 1)  # -> x y w h conf cls, like ours
    tol = np.array([1 / 80, 1 / 128, 1 / 80, 1 / 128, 2e-5, 0])  # one pixel (detect.py rounds), conf (%g), class
    unmatched = list(range(len(theirs)))
    for row in ours:  # every box has its own counterpart
        j = next((j for j in unmatched if np.all(np.abs(theirs[j] - row) <= tol + 1e-6)), None)
        assert j is not None, f"no detect.py box for {row}"
        unmatched.remove(j)


def test_box_formats_agree(model, assets):
    r = model([str(f) for f in assets[1]], size=SIZE)
    for i, im in enumerate(r.imgs):
        h, w = im.shape[:2]
        xyxy, xywh = r.xyxy[i], r.xywh[i]
        assert torch.allclose(xywh[:, :2], (xyxy[:, :2] + xyxy[:, 2:4]) / 2)
        assert torch.allclose(xywh[:, 2:4], xyxy[:, 2:4] - xyxy[:, :2])
        gain = torch.tensor([w, h, w, h])
        assert torch.allclose(r.xyxyn[i][:, :4] * gain, xyxy[:, :4], atol=1e-4)
        assert torch.allclose(r.xywhn[i][:, :4] * gain, xywh[:, :4], atol=1e-4)
        assert (r.xyxyn[i][:, :4] >= 0).all() and (r.xyxyn[i][:, :4] <= 1).all()
        assert torch.equal(r.xyxy[i][:, 4:], r.xywhn[i][:, 4:])  # conf and class untouched
    assert [len(d) for d in r.tolist()] == [1, 1] and r.tolist()[1].xyxy[0] is r.xyxy[1]


def test_print_save_crop(model, assets, tmp_path, capsys):
    r = model([str(f) for f in assets[1]], size=SIZE)
    r.print()
    out = capsys.readouterr().out
    assert "image 1/2: 96x128 " in out and "image 2/2: 128x80 " in out and "Speed: " in out
    assert any(n in out for n in NAMES)
    d = r.save(tmp_path / "saved")
    for f, im in zip(("im0.jpg", "im1.jpg"), r.imgs):
        saved = np.asarray(Image.open(d / f))
        assert saved.shape == im.shape and np.abs(saved.astype(int) - im).mean() > 1  # boxes drawn, same size
    crops = r.crop(tmp_path / "crops_run")
    n_boxes = sum(len(x) for x in r.xyxy)
    files = list((tmp_path / "crops_run" / "crops").rglob("*.jpg"))
    assert len(crops) == len(files) == n_boxes > 0
    assert {f.parent.name for f in files} <= set(NAMES) and {c["label"].split()[0] for c in crops} <= set(NAMES)
    assert all(c["im"].ndim == 3 and c["im"].shape[2] == 3 for c in crops)
    assert len(r.crop(save=False)) == n_boxes and not Path("runs/detect/exp/crops").exists()


def test_pandas(model, assets):
    pytest.importorskip("pandas")
    r = model(str(assets[1][0]), size=SIZE)
    p = r.pandas()
    df = p.xyxy[0]
    assert list(df.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert len(df) == len(r.xyxy[0]) and np.allclose(df[["xmin", "ymin", "xmax", "ymax"]].values, r.xyxy[0][:, :4])
    assert list(df["name"]) == [NAMES[int(c)] for c in r.xyxy[0][:, 5]]
    assert list(p.xywh[0].columns[:4]) == ["xcenter", "ycenter", "width", "height"]
    assert np.allclose(p.xywhn[0]["width"].values, r.xywhn[0][:, 2]) and len(p.xyxyn[0]) == len(df)


def test_pandas_missing_is_a_clear_message(model, assets, monkeypatch):
    ref = model(str(assets[1][0]), size=SIZE)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    r = model(str(assets[1][0]), size=SIZE)  # inference and the box tensors need no pandas
    with pytest.raises(UserError, match="pip install pandas"):
        r.pandas()
    assert len(r.xyxy[0]) > 0  # as the message says, the tensors work: the boxes of a run with pandas
    for k in ("xyxy", "xyxyn", "xywh", "xywhn"):
        assert torch.equal(getattr(r, k)[0], getattr(ref, k)[0]), k


def test_tensor_input_is_passed_through(model):
    out = model(torch.zeros(1, 3, 64, 64))
    assert isinstance(out, tuple) and out[0].shape[-1] == 5 + len(NAMES)


def test_bad_inputs(model, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        model(str(tmp_path / "nope.jpg"))
    with pytest.raises(UserError, match="unsupported type int"):
        model(123)
    with pytest.raises(UserError, match="not an image"):
        model(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(UserError, match="size=0"):
        model(np.zeros((32, 32, 3), np.uint8), size=0)
    # a URL is fetched only when given; here a closed local port, never the internet
    with pytest.raises(UserError, match="could not be fetched"):
        model("http://127.0.0.1:9/image.jpg")


def test_hub_entries_use_local_weights_only(assets, tmp_path, monkeypatch):
    import hubconf

    with pytest.raises(UserError, match="never downloaded"):
        hubconf.custom(path="https://example.com/best.pt")
    with pytest.raises(UserError, match="file not found"):
        hubconf.custom(path=tmp_path / "nope.pt")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "yolov5n.yaml").write_text((ROOT / "models" / "yolov5n.yaml").read_text())
    (tmp_path / "weights").mkdir()
    import models.hub

    monkeypatch.setattr(models.hub, "ROOT", tmp_path)  # where hubconf.py's entries look for weights/ and models/
    with pytest.raises(UserError, match=r"python weights/download_weights.py yolov5n"):
        hubconf.yolov5n(verbose=False)
    m = hubconf.yolov5n(pretrained=False, classes=2, verbose=False)  # random weights, built from the yaml
    assert isinstance(m, AutoShape) and m.model.model[-1].nc == 2
    (tmp_path / "weights" / "yolov5n.pt").write_bytes(assets[0].read_bytes())
    m = hubconf.yolov5n(classes=3, verbose=False)
    assert m.names == NAMES
    m = hubconf.yolov5n(classes=5, autoshape=False, verbose=False)  # new head, the rest transferred
    assert m.model[-1].nc == 5 and torch.equal(m.model[0].conv.weight, hubconf.custom(
        path=assets[0], autoshape=False, verbose=False).model[0].conv.weight)


def test_detections_without_boxes():
    d = Detections([np.zeros((10, 20, 3), np.uint8)], [torch.zeros(0, 6)], ["a.jpg"], names=["x"])
    assert "(no detections)" in str(d) and d.xywhn[0].shape == (0, 6) and d.crop(save=False) == []
