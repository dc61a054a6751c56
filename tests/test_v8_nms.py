"""v8 NMS (no objectness, conf = class score) vs the ultralytics outputs in reference_v8.pt.

NMS is discrete: the kept boxes, their order, coordinates, scores and classes must be equal. Equal
float32 scores are ordered as the reference orders them (torch's default sort); the kept *set* does
not depend on that order, which the second check states on its own.
"""

import pytest
import torch

from utils.nms import non_max_suppression, non_max_suppression_v8

CASES = {
    "val": {"conf_thres": 0.001, "iou_thres": 0.7, "multi_label": True, "max_det": 300},
    "predict": {"conf_thres": 0.25, "iou_thres": 0.7, "max_det": 300},
    "agnostic": {"conf_thres": 0.25, "iou_thres": 0.7, "agnostic": True, "max_det": 300},
}


@pytest.fixture(scope="module")
def ref_v8(fixtures_dir):
    return torch.load(fixtures_dir / "reference_v8.pt", weights_only=True, map_location="cpu")


@pytest.mark.parametrize("case", list(CASES))
def test_equals_reference(ref_v8, case):
    pred = ref_v8["nms/pred"]
    before = pred.clone()
    out = non_max_suppression_v8(pred, backend="torch", **CASES[case])
    assert torch.equal(pred, before)  # the caller's tensor is not modified
    for o, ref in zip(out, ref_v8[f"nms/{case}"], strict=True):
        assert sorted(map(tuple, o.tolist())) == sorted(map(tuple, ref.tolist()))  # the same kept set
        assert torch.equal(o, ref)  # and the same order


def test_v5_nms_on_v8_layout_differs(ref_v8):
    """The v5 NMS (objectness column) on this layout is a different computation: the head must choose."""
    pred = ref_v8["nms/pred"].transpose(1, 2).contiguous()  # (B, N, 84): column 4 is read as objectness
    out = non_max_suppression(pred, 0.25, 0.7, max_det=300, backend="torch")
    assert not all(o.shape == r.shape and torch.equal(o, r) for o, r in zip(out, ref_v8["nms/predict"]))


def test_classes_labels_and_tuple_input():
    pred = torch.zeros(1, 4 + 3, 3)
    pred[0, :4] = torch.tensor([[10.0, 50.0, 90.0], [10.0, 50.0, 90.0], [8.0, 8.0, 8.0], [8.0, 8.0, 8.0]])
    pred[0, 4:, 0] = torch.tensor([0.9, 0.1, 0.0])
    pred[0, 4:, 1] = torch.tensor([0.0, 0.8, 0.7])
    pred[0, 4:, 2] = torch.tensor([0.0, 0.0, 0.3])
    out = non_max_suppression_v8((pred, None), 0.25, 0.7)[0]  # (pred, raw) as the model returns it
    assert out[:, 5].tolist() == [0.0, 1.0, 2.0] and out[0, :4].tolist() == [6.0, 6.0, 14.0, 14.0]
    multi = non_max_suppression_v8(pred, 0.25, 0.7, multi_label=True)[0]
    assert sorted(multi[:, 5].tolist()) == [0.0, 1.0, 2.0, 2.0]  # box 1 kept for classes 1 and 2
    only = non_max_suppression_v8(pred, 0.25, 0.7, classes=[2])[0]
    assert only[:, 5].tolist() == [2.0] and only[0, 4] == pytest.approx(0.3)
    lb = [torch.tensor([[1.0, 30.0, 30.0, 4.0, 4.0]])]  # cls, xywh pixels: added with conf 1
    with_lb = non_max_suppression_v8(pred, 0.25, 0.7, labels=lb)[0]
    assert with_lb[0].tolist() == [28.0, 28.0, 32.0, 32.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression_v8(pred, 1.5)


def test_nms_for_asks_the_model():
    from models.yolo import Model
    from utils.nms import nms_for

    class Holder:  # a backend or DDP-style wrapper holding the model
        def __init__(self, m):
            self.model = m

    v8, v5 = Model("yolov8n.yaml", nc=3), Model("yolov5n.yaml", nc=3)
    pred = torch.zeros(1, 7, 4)
    pred[0, :4] = 10.0
    pred[0, 4, 0] = 0.9
    for m in (v8, Holder(v8)):
        assert nms_for(m)(pred, 0.25, 0.7)[0][:, 4].tolist() == pytest.approx([0.9])
    assert nms_for(v5).__self__ is v5 and nms_for(object()) is non_max_suppression
