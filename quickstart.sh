#!/usr/bin/env bash
# yolov5-kd quick start: distil a yolov5n student from the committed yolov5s teacher on the embedded,
# offline shapes dataset (built on first use), then compare it with a plain yolov5n trained on the same
# schedule. CPU only, a few minutes. Short-schedule overrides (used by the tests): QS_EPOCHS, QS_IMG.
set -euo pipefail
cd "$(dirname "$0")"

EPOCHS="${QS_EPOCHS:-12}"
IMG="${QS_IMG:-160}"
NAME="quickstart-kd"
TEACHER="weights/teacher-shapes-yolov5s.pt"
BASELINE="bench/results/quickstart-baseline-yolov5n.csv"   # plain train.py, same flags (bench/RESULTS.md)

python train_kd.py --data data/shapes.yaml --cfg models/yolov5n.yaml --weights '' \
    --teacher_weight "$TEACHER" --kd_loss_selected kl \
    --img "$IMG" --epochs "$EPOCHS" --batch-size 16 --workers 2 --cache ram \
    --hyp data/hyps/hyp.short.yaml --project runs/train --name "$NAME"
RUN="$(ls -td runs/train/"$NAME"* | head -n 1)"   # quickstart-kd, quickstart-kd2, ... (earlier runs are kept)

python plot_curves.py "$BASELINE" "$RUN" --labels baseline-yolov5n distilled-yolov5n \
    --out runs/quickstart_compare.png
echo "Quick start done: student weights $RUN/weights/best.pt, comparison runs/quickstart_compare.png"
