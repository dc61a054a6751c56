"""AutoAnchor: BPR by hand, kmean_anchors on generated boxes, check_anchors on a tiny real Model."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.autoanchor import anchor_metrics, check_anchors, kmean_anchors, label_wh
from utils.general import LOGGER

ANCHORS_PX = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def tiny_model(anchors=ANCHORS_PX):
    """A real v6.0-format Model with strides 8/16/32 and only a few convolutions."""
    yolo = pytest.importorskip("models.yolo")
    cfg = {"nc": 3, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": anchors,
           "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                        [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
           "head": [[[2, 3, 4], 1, "Detect", ["nc", "anchors"]]]}
    return yolo.Model(cfg)


def make_dataset(sizes_px, n_images=40, per_image=6, imgsz=640, jitter=0.15, seed=0):
    """Square imgsz images whose boxes are drawn around the given (w, h) pixel sizes."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes_px, dtype=np.float64).reshape(-1, 2)
    labels = []
    for _ in range(n_images):
        pick = sizes[rng.integers(0, len(sizes), per_image)]
        wh = pick * rng.uniform(1 - jitter, 1 + jitter, pick.shape) / imgsz
        xy = rng.uniform(0.3, 0.7, (per_image, 2))
        labels.append(np.concatenate([np.zeros((per_image, 1)), xy, wh.clip(max=1.0)], 1).astype(np.float32))
    return SimpleNamespace(shapes=np.full((n_images, 2), imgsz), labels=labels)


@pytest.fixture
def logs(caplog):
    """Capture the 'yolov5' logger even after a script called set_logging (propagate=False)."""
    caplog.set_level(logging.INFO, logger="yolov5")
    LOGGER.addHandler(caplog.handler)
    yield caplog
    LOGGER.removeHandler(caplog.handler)


def test_anchor_metrics_by_hand():
    anchors = np.array([[10, 10], [100, 100]])
    wh = np.array([[10, 10], [30, 30], [200, 10], [400, 400]])
    # [10,10] fits anchor 0 only; [30,30] fits both (1/3 and 0.3 > 1/4); [200,10] and [400,400]
    # fit nothing (0.1 and exactly 1/4, which is not > 1/4)
    bpr, aat = anchor_metrics(wh, anchors, thr=4.0)
    assert bpr == pytest.approx(0.5) and aat == pytest.approx(0.75)
    assert anchor_metrics(wh, anchors, thr=4.01)[0] == pytest.approx(0.75)


def test_label_wh_uses_long_side_and_scale():
    ds = SimpleNamespace(shapes=np.array([[640, 480], [100, 200]]),
                         labels=[np.array([[0, 0.5, 0.5, 0.5, 0.5]]), np.array([[1, 0.5, 0.5, 0.1, 0.2]])])
    assert label_wh(ds, 320) == pytest.approx(np.array([[160, 120], [16, 64]]))
    assert label_wh(ds, 320, np.array([[2.0], [1.0]]))[0] == pytest.approx([320, 240])


def test_kmean_anchors_fit_generated_boxes():
    centres = [[12, 16], [20, 40], [40, 28], [40, 80], [80, 60], [72, 150], [150, 110], [200, 260], [450, 380]]
    ds = make_dataset(centres, n_images=30)
    k = kmean_anchors(ds, n=9, img_size=640, thr=4.0, gen=200, verbose=False, seed=1)
    assert k.shape == (9, 2)
    area = k.prod(1)
    assert np.all(np.diff(area) >= 0)
    wh = label_wh(ds, 640)
    assert anchor_metrics(wh, k)[0] == 1.0
    # the fit is close, not merely within the 4x tolerance: each centre has an anchor within 1.6x
    for c in centres:
        assert (np.maximum(k / c, c / k).max(1)).min() < 1.6
    assert np.array_equal(k, kmean_anchors(ds, n=9, img_size=640, gen=200, verbose=False, seed=1))


def test_kmean_anchors_too_few_labels():
    ds = make_dataset([[50, 50]], n_images=1, per_image=4)
    with pytest.raises(ValueError, match="fewer than the 9 anchors"):
        kmean_anchors(ds, n=9, gen=10, verbose=False)


def test_check_anchors_keeps_good_anchors(logs):
    model = tiny_model()
    before = model.model[-1].anchors.clone()
    ds = make_dataset(np.array(ANCHORS_PX).reshape(-1, 2))
    assert check_anchors(ds, model, thr=4.0, imgsz=640, gen=50) is False
    assert torch.equal(model.model[-1].anchors, before)
    assert "anchors/target = " in logs.text and "Best Possible Recall (BPR) = 1.0000" in logs.text


def test_check_anchors_improves_bad_anchors(logs):
    bad = [[3, 3, 3, 4, 4, 3], [4, 4, 4, 5, 5, 4], [5, 5, 5, 6, 6, 5]]  # far too small for the data
    model = tiny_model(bad)
    det = model.model[-1]
    ds = make_dataset([[60, 80], [120, 90], [150, 200], [300, 260]])
    wh = label_wh(ds, 320)
    stride = det.stride.view(-1, 1, 1)
    old_bpr = anchor_metrics(wh, (det.anchors * stride).view(-1, 2).numpy())[0]
    assert old_bpr < 0.98
    assert check_anchors(ds, model, thr=4.0, imgsz=320, gen=100) is True
    new_px = (det.anchors * stride).view(-1, 2).numpy()  # buffer is in grid units
    assert anchor_metrics(wh, new_px)[0] > 0.98
    assert np.all(np.diff(new_px.prod(1)) >= 0)  # small anchors on the fine (stride 8) level
    assert "Attempting to improve anchors" in logs.text and "New anchors saved to model" in logs.text


def test_check_anchors_keeps_anchors_with_too_few_labels(logs):
    model = tiny_model([[3, 3, 3, 4, 4, 3], [4, 4, 4, 5, 5, 4], [5, 5, 5, 6, 6, 5]])
    before = model.model[-1].anchors.clone()
    ds = make_dataset([[200, 200]], n_images=1, per_image=3)
    assert check_anchors(ds, model, imgsz=320, gen=10) is False
    assert torch.equal(model.model[-1].anchors, before)
    assert "keeping the current anchors" in logs.text
    empty = SimpleNamespace(shapes=np.full((2, 2), 320), labels=[np.zeros((0, 5)), np.zeros((0, 5))])
    assert check_anchors(empty, model, imgsz=320) is False
