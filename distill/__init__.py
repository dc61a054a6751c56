"""Knowledge distillation for YOLOv5: hooks (feature capture), losses (registry), adapters (1x1 convs),
pairing (which layers), objective (KDObjective used by train_kd.py)."""
