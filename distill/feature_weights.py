"""Default weights of the detection feature losses (distill/detection_losses.py), per student family:
what train_kd.py uses when a recipe entry or flag sets none (distill/yolo_config.default_weight)."""

# The published weights (spec kd_methods.md). They weight batch-mean losses against a batch-mean task loss
# (mmdet/mmrazor); the engine multiplies sum_i w_i * loss_i by the batch size exactly like YOLOv5's ComputeLoss
# total, so the same balance would hold if the task losses were of the same size. A YOLOv5 student's detection
# loss is ~0.2 at the start, far smaller than mmdet's, so with these the term starts 16x (imitation, once its
# adapter has learned) to 150x (pkd) the detection loss. The default for YOLOv8 students (yolo_config
# FAMILY_WEIGHTS), whose detection loss is ~75x a YOLOv5 one's.
PAPER_WEIGHTS = {
    "imitation": 0.01,  # spec 3.4: lambda = 0.01 (FGFI paper and official code)
    "cwd": 10.0,  # spec 3.5: mmrazor FPN configs, tau = 1, weight 10 per level (also PaddleYOLO's cwd 10.0)
    "pkd": 10.0,  # spec 3.8: 6 for Faster R-CNN, 10 for RetinaNet; YOLOv5 is one-stage dense like RetinaNet
}

# Default weight of each loss for YOLOv5 students: about a third of the detection loss at the start (the
# rule train_kd's output KD and AT/FitNet defaults follow), which measured better than the papers' weights at
# the recorded schedule (30 epochs at 192 px, 2 seeds, mAP@0.5:0.95; bench/RESULTS.md "Distillation methods
# compared"): imitation 0.212 -> 0.255, cwd 0.177 -> 0.222, pkd 0.119 -> 0.219, output KD alone 0.253.
DEFAULT_WEIGHTS = {
    "imitation": 2e-4,
    "cwd": 0.03,
    # no published number (the ver1 seed leaves it to the user). 1 made the term ~18x the detection loss and
    # the student fell below the plain baseline (20 epochs at 160 px, seed 0: 0.027 / 0.008 mAP); 0.002
    # (a third of the detection loss at the start) gave 0.164 / 0.088, output KD alone 0.167 / 0.092
    "mse": 2e-3,
    "pkd": 0.02,
    # no number in the spec; 1 = ultralytics' loss as is (~4x the detection loss at the start, falling below
    # it within 10 epochs); the best recipe measured (kl + scorel2, train_kd.py's default) uses it
    "scorel2": 1.0,
}

# Where the balance comes from (bench/bench_feature_losses.py, "values at the start of training"): yolov5n
# from scratch <- weights/teacher-shapes-yolov5s.pt, 16 shapes images at 320 px, the maps entering Detect. The
# detection loss items sum to 0.20 there, the raw losses are imitation 331, cwd 2.45, mse 34.1, pkd 3.01,
# scorel2 1.25. These weights put each at about a third of it (0.07); DEFAULT_WEIGHTS takes them except for
# scorel2, measured at 1.
BALANCED_WEIGHTS = {"imitation": 2e-4, "cwd": 0.03, "mse": 2e-3, "pkd": 0.02, "scorel2": 0.05}
