"""detect.py end to end on generated images with a tiny yolov5n checkpoint (CPU, --img 128)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["circle", "square", "triangle"]


def make_checkpoint(path: Path) -> Path:
    """A v6.0-format checkpoint of yolov5n (nc=3) whose Detect biases give confident, varied detections.

    Random weights alone give obj*cls ~ 1e-5; raising the objectness and class biases makes boxes pass a
    normal --conf-thres while the (random) class logits still differ from box to box.
    """
    from models.checkpoint import save_checkpoint
    from models.yolo import Model

    torch.manual_seed(0)
    model = Model(ROOT / "models" / "yolov5n.yaml", nc=len(NAMES))
    # fresh BatchNorm statistics (mean 0, var 1) and the small default Detect init make every box score
    # about the same: re-estimate the statistics and scale the Detect convs so outputs depend on the image
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 3, 128, 128))
    model.eval()
    with torch.no_grad():
        raw = model(torch.rand(2, 3, 128, 128))[1]
        for conv, r in zip(model.model[-1].m, raw):
            r = r[..., 4:]  # (B, na, ny, nx, 1 + nc) objectness and class logits
            mean = r.mean((0, 2, 3))  # (na, 1 + nc)
            k = 1.5 / (r - mean[:, None, None]).std()  # logits spread ~1.5 across cells and images
            b = conv.bias.view(model.model[-1].na, -1)  # (na*no,) -> (na, no) view
            b[:, 4:] = k * (b[:, 4:] - mean)  # centred on logit 0 after scaling the weights
            conv.weight *= k
    model.names, model.nc = list(NAMES), len(NAMES)
    ckpt = {"epoch": -1, "best_fitness": np.zeros(1), "model": model.half(), "ema": None, "updates": None,
            "optimizer": None, "wandb_id": None}
    return save_checkpoint(ckpt, path)


def make_images(folder: Path, n: int = 2) -> Path:
    """n small BGR jpgs of different (non-square) shapes with a filled circle and square."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(96, 128), (128, 80), (112, 112)][:n]):
        im = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        cv2.circle(im, (w // 3, h // 2), min(h, w) // 5, (0, 0, 255), -1)
        cv2.rectangle(im, (w // 2, h // 6), (w - 8, h // 2), (255, 0, 0), -1)
        cv2.imwrite(str(folder / f"img{i}.jpg"), im)
    return folder


def read_labels(d: Path) -> dict[str, np.ndarray]:
    """{stem: (n, k) array} of every labels/*.txt in a run directory."""
    return {f.stem: np.loadtxt(f, ndmin=2) for f in sorted((d / "labels").glob("*.txt"))}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    return make_checkpoint(root / "tiny.pt"), make_images(root / "images")


def _detect(weights, source, project, **kw) -> Path:
    import detect

    opts = {"weights": str(weights), "source": str(source), "imgsz": [128], "project": str(project),
            "name": "exp", "device": "cpu", "max_det": 20}
    opts.update(kw)
    return detect.run(**opts)


def test_annotated_images_and_labels(assets, tmp_path):
    weights, images = assets
    save_dir = _detect(weights, images, tmp_path, save_txt=True, save_conf=True, save_crop=True)
    for f in images.glob("*.jpg"):  # annotated copies keep the file names and the original size
        out = cv2.imread(str(save_dir / f.name))
        assert out is not None and out.shape == cv2.imread(str(f)).shape
        assert not np.array_equal(out, cv2.imread(str(f)))  # boxes were drawn
    labels = read_labels(save_dir)
    assert set(labels) == {"img0", "img1"}
    for rows in labels.values():
        assert rows.shape[1] == 6 and 0 < len(rows) <= 20
        assert np.all(rows[:, 0] == rows[:, 0].round()) and set(rows[:, 0].astype(int)) <= {0, 1, 2}
        assert np.all((rows[:, 1:5] >= 0) & (rows[:, 1:5] <= 1))
        assert np.all((rows[:, 5] > 0.25) & (rows[:, 5] <= 1))
    crops = list((save_dir / "crops").rglob("*.jpg"))
    assert crops and {c.parent.name for c in crops} <= set(NAMES)


def test_label_rows_match_boxes(assets, tmp_path):
    """Rows are the NMS boxes mapped to the original image and normalised by its width and height."""
    import detect

    row = detect.label_row(torch.tensor([10.0, 20.0, 50.0, 60.0]), 2, 0.5, torch.tensor([100.0, 80, 100, 80]), True)
    assert row == "2 0.3 0.5 0.4 0.5 0.5\n"
    assert detect.label_row(torch.tensor([10.0, 20.0, 50.0, 60.0]), 1, 0.5, torch.tensor([100.0, 80, 100, 80]),
                            False) == "1 0.3 0.5 0.4 0.5\n"
    weights, images = assets
    save_dir = _detect(weights, images / "img1.jpg", tmp_path, save_txt=True)  # 128x80 (h x w)
    rows = read_labels(save_dir)["img1"]
    assert rows.shape[1] == 5  # no conf without --save-conf
    xyxy = torch.tensor(rows[:, 1:5]) * torch.tensor([80, 128, 80, 128])
    xyxy = torch.cat((xyxy[:, :2] - xyxy[:, 2:] / 2, xyxy[:, :2] + xyxy[:, 2:] / 2), 1)  # back to pixels
    assert torch.allclose(xyxy, xyxy.round(), atol=1e-3)  # boxes were rounded to whole pixels before saving
    # clipped to the 80x128 image (random weights also predict boxes in the padding: zero-size after clipping)
    assert torch.all(xyxy[:, 2:] >= xyxy[:, :2]) and xyxy[:, [0, 2]].max() <= 80 and xyxy[:, [1, 3]].max() <= 128


def test_classes_filter(assets, tmp_path):
    weights, images = assets
    all_cls = np.concatenate([r[:, 0] for r in read_labels(_detect(weights, images, tmp_path / "a", save_txt=True)).values()])
    assert len(set(all_cls.astype(int))) >= 2, "the fixture model should predict several classes"
    keep = int(all_cls[0])
    filtered = read_labels(_detect(weights, images, tmp_path / "b", save_txt=True, classes=[keep]))
    got = np.concatenate([r[:, 0] for r in filtered.values()])
    assert len(got) and set(got.astype(int)) == {keep}


def test_nosave_and_console(assets, tmp_path, caplog):
    weights, images = assets
    with caplog.at_level("INFO", logger="yolov5"):
        save_dir = _detect(weights, images, tmp_path, nosave=True, hide_labels=True)
    assert not list(save_dir.glob("*.jpg"))
    text = caplog.text
    assert f"image 1/2 {images / 'img0.jpg'}: 96x128 " in text and "Done. (" in text
    assert "Speed: " in text and "per image at shape (1, 3, 128, 128)" in text


def test_txt_list_and_glob_sources(assets, tmp_path):
    weights, images = assets
    lst = tmp_path / "list.txt"
    lst.write_text(f"{images / 'img1.jpg'}\n")
    assert sorted(p.name for p in _detect(weights, lst, tmp_path / "a").glob("*.jpg")) == ["img1.jpg"]
    got = sorted(p.name for p in _detect(weights, images / "img0.*", tmp_path / "b").glob("*.jpg"))
    assert got == ["img0.jpg"]


def test_video_source(assets, tmp_path):
    weights, images = assets
    video = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    for _ in range(3):
        vw.write(cv2.imread(str(images / "img0.jpg")))
    vw.release()
    save_dir = _detect(weights, video, tmp_path / "r", save_txt=True)
    assert sorted(read_labels(save_dir)) == ["clip_1", "clip_2", "clip_3"]
    cap = cv2.VideoCapture(str(save_dir / "clip.avi"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    # written as mp4v (MPEG-4 part 2); FFmpeg reports that codec back as FMP4
    assert int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") in (b"mp4v", b"FMP4")
    cap.release()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "detect.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def test_missing_source_and_weights_are_clear_errors(assets, tmp_path):
    weights, _ = assets
    r = _cli("--weights", str(weights), "--source", str(tmp_path / "nope.jpg"), "--img", "64", "--device", "cpu",
             cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nope.jpg" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing created for a failed run
    r = _cli("--weights", str(tmp_path / "missing.pt"), "--source", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "missing.pt" in r.stderr and "download_weights.py" in r.stderr


def test_unopenable_webcam_is_a_clear_error(assets, tmp_path):
    from utils.general import UserError

    weights, _ = assets
    with pytest.raises(UserError, match="webcam 97"):
        _detect(weights, "97", tmp_path)  # no camera with this index: fails at once, no hang


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the no-display rule is Linux-specific")
def test_view_img_without_display_is_disabled(monkeypatch):
    import detect

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert detect.check_imshow() is False
