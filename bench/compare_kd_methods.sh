#!/usr/bin/env bash
# Distillation methods side by side (bench/RESULTS.md, "Distillation methods compared"): a yolov5n student
# from scratch on the embedded shapes data, taught by the committed weights/teacher-shapes-yolov5s.pt, on the
# recorded schedule of the distillation experiment (30 epochs, 192 px, batch 16, hyp.short), one run per
# method and seed: baseline (train.py), output KD alone (kl_only), + AT (card), + imitation, + CWD,
# + MSE, + PKD, + scorel2 (data/kd/*.yaml).
#
# Usage: bash bench/compare_kd_methods.sh [epochs] [imgsz] [seeds] [jobs] [device] [project]
#   bash bench/compare_kd_methods.sh                      # 30 192 "0 1" 1 cpu runs/compare (hours on a CPU)
#   bash bench/compare_kd_methods.sh 30 192 "0 1" 8 0     # on one GPU, 8 runs at a time
# Each run is one process with one torch thread (OMP_NUM_THREADS=1); `jobs` run at once. A run whose
# results.csv already has all epochs is skipped and an interrupted one resumes, so the script can be
# stopped and restarted. Then:
#   python bench/summarize_runs.py runs/compare
# METHODS="kl_only scorel2" overrides the method list; a method is baseline, a recipe of data/kd/ or one of
# bench/kd_configs/ (the output-KD defaults sweep of issue 11: kl_t1 kl_t2 kl_t4 l2_only l2_bceobj bce_centred;
# issue 27's KD stop: scorel2_stop5, kl_only_stop5; issue 31's "default + X": default_bckd default_mgd
# default_crosskd, beside data/kd's "kl + X": bckd mgd crosskd).
# STUDENT=models/yolov8n.yaml TEACHER=path/to/v8s.pt HYP=data/hyps/hyp.v8.yaml METHODS="baseline v8_ver1 v8_ver2
# v8_both" runs the same comparison for another pair (defaults: models/yolov5n.yaml, the committed
# weights/teacher-shapes-yolov5s.pt, data/hyps/hyp.short.yaml). EXTRA="--bf16" adds flags to every run (the
# YOLOv8 table: bf16 autocast, a step 1.7x faster on a CPU with avx512_bf16); KD_EXTRA="--teacher_overlap off" adds
# flags to the train_kd.py runs only (train.py, the baseline, refuses distillation flags).
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${1:-30}"; IMG="${2:-192}"; SEEDS="${3:-0 1}"; JOBS="${4:-1}"; DEVICE="${5:-cpu}"; PROJECT="${6:-runs/compare}"
read -r -a METHODS <<< "${METHODS:-baseline kl_only card imitation cwd mse pkd scorel2}"
STUDENT="${STUDENT:-models/yolov5n.yaml}"; TEACHER="${TEACHER:-weights/teacher-shapes-yolov5s.pt}"
HYP="${HYP:-data/hyps/hyp.short.yaml}"
for f in "$STUDENT" "$TEACHER" "$HYP"; do [ -f "$f" ] || { echo "ERROR: $f not found (STUDENT/TEACHER/HYP)" >&2; exit 2; }; done
COMMON=(--data data/shapes.yaml --cfg "$STUDENT" --weights '' --img "$IMG" --epochs "$EPOCHS"
        --batch-size 16 --workers 2 --cache ram --hyp "$HYP" --device "$DEVICE"
        --project "$PROJECT" --exist-ok)
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
COMMON+=("${EXTRA_FLAGS[@]}")
read -r -a KD_EXTRA_FLAGS <<< "${KD_EXTRA:-}"
mkdir -p "$PROJECT"
"${PYTHON:-python}" -c "from utils.data.config import check_dataset; check_dataset('data/shapes.yaml')" >/dev/null  # build data once

run() {  # method seed
  local name="$1-s$2" n
  n=$( (tail -n +2 "$PROJECT/$name/results.csv" 2>/dev/null || true) | wc -l)
  if [ "$n" -ge "$EPOCHS" ] && [ -f "$PROJECT/$name/weights/best.pt" ]; then return; fi
  if [ -f "$PROJECT/$name/weights/last.pt" ]; then  # an interrupted run continues where it stopped
    OMP_NUM_THREADS=1 "${PYTHON:-python}" "$([ "$1" = baseline ] && echo train.py || echo train_kd.py)" \
      --resume "$PROJECT/$name/weights/last.pt" >> "$PROJECT/$name.log" 2>&1
    return
  fi
  if [ "$1" = baseline ]; then
    OMP_NUM_THREADS=1 "${PYTHON:-python}" train.py "${COMMON[@]}" --seed "$2" --name "$name" > "$PROJECT/$name.log" 2>&1
  else
    local recipe="$1"
    [ -f "data/kd/$1.yaml" ] || recipe="bench/kd_configs/$1.yaml"
    OMP_NUM_THREADS=1 "${PYTHON:-python}" train_kd.py "${COMMON[@]}" --seed "$2" --name "$name" \
      --teacher_weight "$TEACHER" --kd_config "$recipe" "${KD_EXTRA_FLAGS[@]}" > "$PROJECT/$name.log" 2>&1
  fi
}

for seed in $SEEDS; do
  for m in "${METHODS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    run "$m" "$seed" &
  done
done
wait
echo "done: $PROJECT"
