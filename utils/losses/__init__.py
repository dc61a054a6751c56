"""Detection losses: YOLOv5 v6.0 (ComputeLoss) and YOLOv8 (v8DetectionLoss with the task-aligned assigner)."""
