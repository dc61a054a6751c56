#!/usr/bin/env bash
# yolov5-kd quick start: the smallest "does distillation help?" comparison (compare_kd.py), on the embedded,
# offline shapes dataset (built on first use): a plain yolov5n and a yolov5n distilled from the committed
# yolov5s teacher (train_kd.py's default recipe), same schedule and seed, then the verdict, their curves and
# their detections side by side. The same report you get on your data with compare_kd.py. CPU only, minutes.
# Overrides: QS_EPOCHS, QS_IMG (short schedules for the tests), QS_SEED (default 0), QS_PROJECT (default
# runs/quickstart), QS_JOBS (auto: both students at once, one share of the cores each, where there are 2+
# cores), QS_BF16 (auto: bf16 autocast where the CPU multiplies bf16 natively, avx512_bf16 or AMX, a step 1.7x faster
# there; 1 or 0 to force it on or off).
set -euo pipefail
cd "$(dirname "$0")"

EPOCHS="${QS_EPOCHS:-20}"
IMG="${QS_IMG:-160}"  # 20 epochs at 160 px: under 15 min with the install on a 2-core AVX2 CPU (README)
SEED="${QS_SEED:-0}"
PROJECT="${QS_PROJECT:-runs/quickstart}"
TEACHER="weights/teacher-shapes-yolov5s-120e.pt"
BF16="${QS_BF16:-auto}"
JOBS="${QS_JOBS:-auto}"
case "$BF16" in auto|0|1) ;; *) echo "ERROR: QS_BF16=$BF16: use auto, 0 or 1" >&2; exit 2;; esac
case "$JOBS" in auto|1|2) ;; *) echo "ERROR: QS_JOBS=$JOBS: use auto, 1 or 2" >&2; exit 2;; esac
if [ "$BF16" = auto ]; then
  BF16=$(python -c "from utils.torch_utils import native_bf16_cpu; print(int(native_bf16_cpu()))")
fi
if [ "$JOBS" = auto ]; then
  JOBS=$(python -c "import os; print(2 if (os.cpu_count() or 1) >= 2 else 1)")
fi
NAME="seed${SEED}-${EPOCHS}x${IMG}$([ "$BF16" = 1 ] && echo -bf16 || true)"
FOLDER="$PROJECT/$NAME"
EXTRA=()
if [ "$BF16" = 1 ]; then EXTRA+=(--bf16); fi

python compare_kd.py --data data/shapes.yaml --cfg models/yolov5n.yaml --weights '' --teacher_weight "$TEACHER" \
  --img "$IMG" --epochs "$EPOCHS" --seeds "$SEED" --recipes default --jobs "$JOBS" \
  --project "$PROJECT" --name "$NAME" --exist-ok \
  --batch-size 16 --workers "$((3 - JOBS))" --cache ram --hyp data/hyps/hyp.short.yaml "${EXTRA[@]}"

PLAIN="$FOLDER/plain-s$SEED"
KD="$FOLDER/default-s$SEED"
python compare_detections.py --weights "$PLAIN/weights/best.pt" "$KD/weights/best.pt" --labels plain distilled \
  --source datasets/shapes/images/val --n 4 --img "$IMG" --out "$FOLDER/detections.jpg"
cat <<EOF

Quick start done ($FOLDER): the verdict and the table in $FOLDER/summary.md, the curves of both students in
$FOLDER/curves.png, their detections on 4 val images (labels on top) in $FOLDER/detections.jpg.
Distilled student: $KD/weights/best.pt; plain student: $PLAIN/weights/best.pt.
Next:
  your data:   python compare_kd.py --data your.yaml --cfg models/yolov5n.yaml --weights '' \\
                   --teacher_weight your_teacher.pt --img 640 --epochs 100 --seeds 0 1 2 --probe   # a minute
               (then the same without --probe: plain and distilled students, 3 seeds, and the verdict)
  distil:      python train_kd.py --data your.yaml --cfg models/yolov5n.yaml --weights '' \\
                   --teacher_weight your_teacher.pt --img 640 --epochs 100
  the card:    python train_kd.py --data your.yaml --teacher_weight weights/yolov5m.pt --isL False --kd_loss_selected kl
  a recipe:    python train_kd.py ... --kd_config data/kd/card.yaml      (README: Distillation)
  try it:      python detect.py --weights $KD/weights/best.pt --source data/images --img $IMG
EOF
