"""Knowledge distillation for any pair of PyTorch models, and YOLOv5's train_kd.py built on it.

    from distill import Distiller     # Distiller(config): the seed's config keys (distill/distiller.py)

Parts: hooks (feature capture), registry + losses (every loss type, one module each under distill/losses/,
registered with its default weight and layers), adapters (1x1 convs), pairing (which YOLOv5 layers), context
(what a loss may read besides the features), recipe (a distillation recipe as typed data), yolo_config
(train_kd.py's recipe files, overrides and their resolution), families (YOLOv5/YOLOv8 heads), objective
(DistillObjective: detection loss + kd_loss, used by train_kd.py).
"""

from distill.distiller import Distiller

__all__ = ["Distiller"]
