"""Detection losses: YOLOv5 v6.0 (ComputeLoss) and YOLOv8 (v8DetectionLoss with the task-aligned assigner)."""


def detection_loss(compute_loss, pred, targets, labelled=None):
    """compute_loss(pred, targets), told which images carry labels when some do not (distillation on
    unlabeled images: `labelled` a (bs,) bool tensor; None when every image is labelled, the plain call)."""
    return compute_loss(pred, targets) if labelled is None else compute_loss(pred, targets, labelled=labelled)
