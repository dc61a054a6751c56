#!/usr/bin/env bash
# yolov5-kd quick start: on the embedded, offline shapes dataset (built on first use), train a plain yolov5n
# and a yolov5n distilled from the committed yolov5s teacher on the same schedule and seed, then compare
# them in one picture. CPU only, minutes. Overrides: QS_EPOCHS, QS_IMG (short schedules for the tests),
# QS_SEED (default 0), QS_PROJECT (default runs/train; bench/bench_quickstart.sh runs seeds side by side),
# QS_BF16 (auto: bf16 autocast where the CPU multiplies bf16 natively, avx512_bf16 or AMX, 2x faster there;
# 1 or 0 to force it on or off).
set -euo pipefail
cd "$(dirname "$0")"

EPOCHS="${QS_EPOCHS:-20}"
IMG="${QS_IMG:-192}"
SEED="${QS_SEED:-0}"
PROJECT="${QS_PROJECT:-runs/train}"
TEACHER="weights/teacher-shapes-yolov5s-120e.pt"
BF16="${QS_BF16:-auto}"
case "$BF16" in auto|0|1) ;; *) echo "ERROR: QS_BF16=$BF16: use auto, 0 or 1" >&2; exit 2;; esac
if [ "$BF16" = auto ]; then
  BF16=$(python -c "from utils.torch_utils import native_bf16_cpu; print(int(native_bf16_cpu()))")
fi
COMMON=(--data data/shapes.yaml --cfg models/yolov5n.yaml --weights '' --img "$IMG" --epochs "$EPOCHS"
        --batch-size 16 --workers 2 --cache ram --hyp data/hyps/hyp.short.yaml --seed "$SEED" --project "$PROJECT")
if [ "$BF16" = 1 ]; then COMMON+=(--bf16); fi

latest() { ls -td "$PROJECT/$1"* | head -n 1; }   # name, name2, ...: earlier runs are kept

python train.py "${COMMON[@]}" --name quickstart-baseline
BASE="$(latest quickstart-baseline)"
python train_kd.py "${COMMON[@]}" --name quickstart-kd --teacher_weight "$TEACHER" --kd_loss_selected kl
KD="$(latest quickstart-kd)"

python plot_curves.py "$BASE" "$KD" --labels baseline-yolov5n distilled-yolov5n --out "$(dirname "$PROJECT")/quickstart_compare.png"
python compare_detections.py --weights "$BASE/weights/best.pt" "$KD/weights/best.pt" --labels plain distilled \
  --source datasets/shapes/images/val --n 4 --img "$IMG" --out "$(dirname "$PROJECT")/quickstart_detections.jpg"
cat <<EOF

Quick start done: distilled student $KD/weights/best.pt, plain student $BASE/weights/best.pt,
curves of both in $(dirname "$PROJECT")/quickstart_compare.png, their detections on 4 val images (labels on
top) in $(dirname "$PROJECT")/quickstart_detections.jpg.
Next:
  your data:   python train_kd.py --data your.yaml --cfg models/yolov5n.yaml --weights '' \\
                   --teacher_weight your_teacher.pt --kd_loss_selected kl --img 640 --epochs 100
  the card:    python train_kd.py --data your.yaml --teacher_weight weights/yolov5m.pt --isL False --kd_loss_selected kl
  a recipe:    python train_kd.py ... --kd_config data/kd/card.yaml      (README: Distillation)
  try it:      python detect.py --weights $KD/weights/best.pt --source data/images --img $IMG
EOF
