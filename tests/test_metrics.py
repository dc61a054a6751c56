"""ap_per_class / compute_ap / process_batch / ConfusionMatrix / fitness (v6.0 semantics)."""

import numpy as np
import pytest
import torch

from utils.metrics import (
    ConfusionMatrix,
    ap_per_class,
    compute_ap,
    fitness,
    process_batch,
)

IOUV = torch.linspace(0.5, 0.95, 10)


def test_ap_per_class_matches_reference(reference):
    inp, out = reference["ap/inputs"], reference["ap/outputs"]
    stats = ap_per_class(inp["tp"].numpy(), inp["conf"].numpy(), inp["pred_cls"].numpy(), inp["target_cls"].numpy())
    p, r, ap, f1, classes = stats[:5]
    for name, got in zip(("p", "r", "ap", "f1"), (p, r, ap, f1)):
        np.testing.assert_allclose(got, out[name].numpy(), rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(classes, out["classes"].numpy())
    assert classes.dtype == np.int32
    curves = stats.curves
    assert curves["px"].shape == (1000,) and curves["py"].shape == curves["f1"].shape == (6, 1000)
    i = curves["f1"].mean(0).argmax()  # the reported values are the curves at the max mean-F1 point
    np.testing.assert_allclose(curves["p"][:, i], p)


def test_ap_per_class_ignores_classes_without_labels():
    tp = np.array([[True], [False], [True], [True]])
    conf = np.array([0.9, 0.8, 0.7, 0.95])
    pred_cls = np.array([0, 0, 0, 3])  # class 3 has no labels: ignored
    target_cls = np.array([0, 0, 2])  # class 2 has labels but no predictions: zeros
    p, r, ap, _f1, classes = ap_per_class(tp, conf, pred_cls, target_cls)[:5]
    assert classes.tolist() == [0, 2]
    assert ap.shape == (2, 1)
    assert ap[1, 0] == 0 and p[1] == 0 and r[1] == 0
    assert ap[0, 0] > 0.5
    assert r[0] == pytest.approx(1.0, abs=1e-6)  # at the best-F1 confidence both labels are found


def test_compute_ap_hand_cases():
    # perfect detector: v6.0 gives 0.995, because the last of the 101 samples hits the 0 sentinel
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]))[0] == pytest.approx(0.995)
    # half the labels found at precision 1: 1 on [0, .5] then a ramp to 0 at recall 1 -> 0.75
    assert compute_ap(np.array([0.5]), np.array([1.0]))[0] == pytest.approx(0.75)
    # the envelope lifts precision 0.5 at recall 0.4 to the 1.0 reached later: 0.8 + 0.2 / 2
    ap, mpre, mrec = compute_ap(np.array([0.4, 0.8]), np.array([0.5, 1.0]))
    assert ap == pytest.approx(0.9)
    np.testing.assert_allclose(mpre, [1, 1, 1, 0])
    np.testing.assert_allclose(mrec, [0, 0.4, 0.8, 1])


def test_process_batch_hand_case():
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30.]])
    det = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],  # IoU 1 with label 0
        [0, 0, 10, 8, 0.8, 0],  # IoU 0.8 with label 0, already taken by the better match
        [20, 20, 30, 30, 0.7, 0],  # right place, wrong class
        [20, 20, 30, 27.2, 0.6, 1],  # IoU 0.72 with label 1: correct at 0.5 ... 0.70 only
        [50, 50, 60, 60, 0.5, 1],  # nothing there
    ])
    correct = process_batch(det, labels, IOUV)
    assert correct.dtype == torch.bool and correct.shape == (5, 10)
    assert correct[0].all()
    assert not correct[1].any() and not correct[2].any() and not correct[4].any()
    assert correct[3].tolist() == [True] * 5 + [False] * 5


def test_process_batch_v6_quirk_first_detection_wins():
    # one label, two detections: d0 IoU 0.62, d1 IoU 0.9. v6.0 keeps the match with the lower
    # detection index (its second IoU sort is commented out), so d0 is the true positive.
    labels = torch.tensor([[0, 0, 0, 10, 10.]])
    det = torch.tensor([[0, 0, 10, 6.2, 0.5, 0], [0, 0, 10, 9, 0.9, 0]])
    correct = process_batch(det, labels, IOUV)
    assert correct[0].tolist() == [True] * 3 + [False] * 7
    assert not correct[1].any()


def test_process_batch_empty():
    assert process_batch(torch.zeros(0, 6), torch.tensor([[0, 0, 0, 5, 5.]]), IOUV).shape == (0, 10)
    assert not process_batch(torch.tensor([[0, 0, 5, 5, 0.9, 0]]), torch.zeros(0, 5), IOUV).any()


def test_confusion_matrix_hand_case():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 40, 40, 50, 50.]])
    det = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],  # matches label 0, right class
        [20, 20, 30, 30, 0.8, 0],  # matches label 1 but predicts class 0
        [40, 40, 50, 50, 0.1, 1],  # below conf: ignored, so label 2 is missed
        [70, 70, 80, 80, 0.7, 1],  # no label: background false positive
    ])
    cm.process_batch(det, labels)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 0, 1], [0, 1, 0]])
    cm.process_batch(None, torch.tensor([[0, 0, 0, 5, 5.]]))  # image without detections: a missed label
    cm.process_batch(torch.tensor([[0, 0, 5, 5, 0.9, 1]]), torch.zeros(0, 5))  # no labels: a false positive
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 0, 2], [1, 1, 0]])
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 2]


def test_fitness():
    x = np.array([[0.5, 0.6, 0.7, 0.4], [0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_allclose(fitness(x), [0.1 * 0.7 + 0.9 * 0.4, 1.0])
