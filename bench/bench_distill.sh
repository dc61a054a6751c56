#!/usr/bin/env bash
# Distillation experiment on the embedded shapes dataset (bench/RESULTS.md, "Distillation experiment"):
#   1. a yolov5s teacher trained from scratch,
#   2. a yolov5n baseline and a yolov5n distilled from that teacher (the card's kl + AT, data/kd/card.yaml,
#      as recorded; train_kd.py's default is now kl + scorel2), same seed, epochs and flags,
#   3. the comparison picture with plot_curves.py.
# Usage: bash bench/bench_distill.sh [teacher_epochs] [student_epochs] [imgsz]
# Step 2 runs the two students side by side with one torch thread each (2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
TE="${1:-40}"; SE="${2:-30}"; IMG="${3:-192}"
COMMON=(--data data/shapes.yaml --weights '' --img "$IMG" --batch-size 16 --workers 2 --cache ram
        --hyp data/hyps/hyp.short.yaml --project runs/bench --exist-ok --seed 0)

if [ ! -f runs/bench/teacher-s/weights/best.pt ]; then
  python train.py "${COMMON[@]}" --cfg models/yolov5s.yaml --epochs "$TE" --name teacher-s
fi
OMP_NUM_THREADS=1 python train.py "${COMMON[@]}" --cfg models/yolov5n.yaml --epochs "$SE" --name baseline-n \
  > runs/bench/baseline-n.log 2>&1 &
OMP_NUM_THREADS=1 python train_kd.py "${COMMON[@]}" --cfg models/yolov5n.yaml --epochs "$SE" --name distilled-n \
  --teacher_weight runs/bench/teacher-s/weights/best.pt --kd_config card > runs/bench/distilled-n.log 2>&1 &
wait
python plot_curves.py runs/bench/baseline-n runs/bench/distilled-n --labels baseline-yolov5n distilled-yolov5n \
  --out bench/results/distill_shapes_n_from_s.png
