"""Knowledge distillation for any pair of PyTorch models, and YOLOv5's train_kd.py built on it.

    from distill import Distiller     # Distiller(config): the seed's config keys (distill/distiller.py)

Parts: hooks (feature capture), losses (the registry: vanilla_kd, vid, irg, at, fitnet, YoloKDLoss and
the detection feature losses), adapters (1x1 convs), pairing (which YOLOv5 layers), context (what a
loss may read besides the features), yolo_config (train_kd.py's recipes and flags), objective
(DistillObjective: detection loss + kd_loss, used by train_kd.py).
"""

from distill.distiller import Distiller

__all__ = ["Distiller"]
