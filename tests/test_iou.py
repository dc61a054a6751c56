import torch

from utils.metrics import bbox_iou, box_iou


def test_box_iou_matches_reference(reference):
    b1, b2 = reference["iou/boxes"]
    torch.testing.assert_close(box_iou(b1, b2), reference["iou/box_iou"], atol=1e-6, rtol=0)


def test_bbox_iou_variants_match_reference(reference):
    a, b = reference["iou/xywh_pairs"]
    for name, kw in [("iou", {}), ("giou", {"GIoU": True}), ("diou", {"DIoU": True}), ("ciou", {"CIoU": True})]:
        torch.testing.assert_close(bbox_iou(a, b, **kw), reference[f"iou/{name}_xywh"], atol=1e-6, rtol=0)


def test_bbox_iou_hand_computed():
    # two unit squares overlapping by half: IoU = 0.5 / 1.5
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.5, 0.0, 1.5, 1.0]])
    assert abs(float(bbox_iou(a, b, xywh=False)) - 1 / 3) < 1e-5
    assert float(box_iou(a, torch.tensor([[2.0, 2.0, 3.0, 3.0]]))) == 0.0
