"""NMS against the v6.0 reference outputs, for both backends, plus hand-made cases."""

import logging

import pytest
import torch

from utils.nms import nms, non_max_suppression, torchvision_available

SETTINGS = {  # reference key -> the non_max_suppression arguments used to make it
    "val": {"conf_thres": 0.001, "iou_thres": 0.6, "multi_label": True, "max_det": 300},
    "detect": {"conf_thres": 0.25, "iou_thres": 0.45, "max_det": 1000},
    "agnostic": {"conf_thres": 0.25, "iou_thres": 0.45, "agnostic": True, "max_det": 1000},
    "classes": {"conf_thres": 0.25, "iou_thres": 0.45, "classes": [0, 5, 17]},
}
BACKENDS = [
    "torch",
    pytest.param("torchvision", marks=pytest.mark.skipif(
        not torchvision_available(), reason="torchvision is not installed or its ops.nms does not run here")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_reference(reference, setting, backend, monkeypatch):
    import utils.nms as nms_module

    monkeypatch.setattr(nms_module, "TIME_LIMIT", 1e9)  # a busy CI machine must not truncate the output
    pred = reference["nms/pred"]
    before = pred.clone()
    out = non_max_suppression(pred, backend=backend, **SETTINGS[setting])
    assert torch.equal(pred, before), "NMS must not modify its input"
    expected = reference[f"nms/{setting}"]
    assert len(out) == len(expected) == 2
    for got, ref in zip(out, expected):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def _greedy_reference(boxes, scores, thr):
    """Textbook one-box-at-a-time greedy NMS (stable descending order)."""
    order = sorted(range(len(scores)), key=lambda k: -float(scores[k]))  # sorted() is stable
    keep, dead = [], set()
    for a, i in enumerate(order):
        if i in dead:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            bi, bj = boxes[i], boxes[j]
            w = max(0.0, float(min(bi[2], bj[2]) - max(bi[0], bj[0])))
            h = max(0.0, float(min(bi[3], bj[3]) - max(bi[1], bj[1])))
            inter = w * h
            union = float((bi[2] - bi[0]) * (bi[3] - bi[1]) + (bj[2] - bj[0]) * (bj[3] - bj[1])) - inter
            if union > 0 and inter / union > thr:
                dead.add(j)
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_backend_equals_textbook_greedy(seed, monkeypatch):
    import utils.nms as nms_module

    monkeypatch.setattr(nms_module, "_CHUNK", 16)  # force several chunks and groups
    g = torch.Generator().manual_seed(seed)
    n = 150
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    boxes = torch.cat((xy, xy + wh), 1)
    scores = (torch.rand(n, generator=g) * 10).round() / 10  # many ties: order must be stable
    got = nms(boxes, scores, 0.3, backend="torch").tolist()
    assert got == _greedy_reference(boxes, scores, 0.3)


def test_hand_made_case():
    # two overlapping boxes of class 0 (IoU 0.81), one of class 1 on top of them, one far away
    pred = torch.zeros(1, 4, 5 + 2)
    pred[0, :, :4] = torch.tensor([[50, 50, 20, 20], [51, 51, 20, 20], [50, 50, 20, 20], [200, 200, 10, 10.]])
    pred[0, :, 4] = torch.tensor([0.9, 0.8, 0.7, 0.6])
    pred[0, :, 5:] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    out = non_max_suppression(pred, 0.25, 0.45, backend="torch")[0]
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.6])  # second box suppressed, class 1 survives
    assert out[:, 5].tolist() == [0, 1, 0]
    assert out[0, :4].tolist() == [40, 40, 60, 60]  # xywh -> xyxy
    agn = non_max_suppression(pred, 0.25, 0.45, agnostic=True, backend="torch")[0]
    assert agn[:, 4].tolist() == pytest.approx([0.9, 0.6])
    few = non_max_suppression(pred, 0.25, 0.45, max_det=1, backend="torch")[0]
    assert len(few) == 1
    none = non_max_suppression(pred, 0.95, 0.45, backend="torch")[0]
    assert none.shape == (0, 6)


def test_objectness_filter_comes_first():
    # obj 0.2 is below conf 0.25 even though obj*cls would also be; obj 0.5 * cls 0.4 = 0.2 fails after
    pred = torch.zeros(1, 2, 6)
    pred[0, :, :4] = torch.tensor([[10, 10, 4, 4], [30, 30, 4, 4.]])
    pred[0, :, 4] = torch.tensor([0.2, 0.5])
    pred[0, :, 5] = torch.tensor([1.0, 0.4])
    assert len(non_max_suppression(pred, 0.25, 0.45, backend="torch")[0]) == 0
    assert len(non_max_suppression(pred, 0.15, 0.45, backend="torch")[0]) == 2


def test_time_limit_warns_but_keeps_every_image(monkeypatch, caplog):
    """A slow machine gets a warning, never fewer detections (v6.0 dropped the rest of the batch, so
    mAP depended on the machine's speed)."""
    import utils.nms as nms_module

    monkeypatch.setattr(nms_module, "TIME_LIMIT", -1.0)  # exceeded after the first image
    pred = torch.zeros(2, 1, 6)
    pred[:, 0] = torch.tensor([10, 10, 4, 4, 0.9, 1.0])
    logger = logging.getLogger("yolov5")
    logger.addHandler(caplog.handler)  # works even when set_logging() turned propagation off
    try:
        out = non_max_suppression(pred, backend="torch")
    finally:
        logger.removeHandler(caplog.handler)
    assert len(out[0]) == 1 and len(out[1]) == 1
    assert "NMS took over" in caplog.text
    warned = []
    monkeypatch.setattr(nms_module.LOGGER, "warning", warned.append)
    non_max_suppression(pred, backend="torch")
    assert len(warned) == 1  # once per batch, not once per image


def test_bad_arguments():
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.zeros(1, 1, 7), conf_thres=1.5)
    with pytest.raises(ValueError, match="backend"):
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5, backend="cuda")
    if not torchvision_available():
        with pytest.raises(RuntimeError, match="torchvision"):
            nms(torch.zeros(1, 4), torch.zeros(1), 0.5, backend="torchvision")


def test_top_k_shortcut_is_exact():
    """_per_class_nms first runs NMS on the 8 x max_det best boxes and stops there when it keeps max_det of
    them: the result must be the first max_det boxes of the full greedy NMS, both when the shortcut holds
    (spread-out boxes) and when it must widen (heavily overlapping boxes keep few)."""
    from utils.nms import MAX_WH, TOP_K_PER_DET, _per_class_nms, nms

    g = torch.Generator().manual_seed(0)
    for spread, n in ((600.0, 400), (30.0, 2000)):
        xy = torch.rand(n, 2, generator=g) * spread
        wh = torch.rand(n, 2, generator=g) * 40 + 5
        x = torch.cat((xy, xy + wh, torch.rand(n, 1, generator=g), torch.randint(0, 3, (n, 1), generator=g).float()), 1)
        max_det = 5
        assert n > TOP_K_PER_DET * max_det
        full = nms(x[:, :4] + x[:, 5:6] * MAX_WH, x[:, 4], 0.45)[:max_det]
        assert torch.equal(_per_class_nms(x, 0.45, MAX_WH, max_det, None), x[full])
