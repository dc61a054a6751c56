#!/usr/bin/env bash
# Distillation on unlabeled images (train_kd.py --unlabeled / the data yaml's 'unlabeled:'): the embedded shapes
# data with 100 of its 1000 train images labelled and the other 900 given as unlabelled images
# (bench/make_unlabeled_split.py), a student from scratch, one run per method and seed:
#   plain       train.py on the 100 labelled images
#   kd          train_kd.py (default recipe) on the 100 labelled images
#   kdu         train_kd.py on the 100 labelled + 900 unlabelled images (--unlabeled_ratio default)
#   kdu0.75     the same with --unlabeled_ratio 0.75 (any kduR sets the ratio R)
# Teachers (TEACHER=):
#   weights/teacher-shapes-yolov5s.pt   the committed one, trained on all 1000 labelled images: pure distillation
#   own                                 a yolov5s trained here on the 100 labelled images only (train.py,
#                                       TEACHER_EPOCHS epochs, seed 0): the honest semi-supervised case
# Schedules recorded (bench/RESULTS.md): the issue's 30 epochs at 192 px, batch 16, hyp.short (an epoch is one
# pass over the 100 labelled images: 7 batches, or 13 with unlabelled ones, too few steps for a student from
# scratch to learn anything), and 100 epochs with EXTRA="--noval" (the final epoch validated): teacher (a) and
# (b) (TEACHER=own TEACHER_EPOCHS=200), the v8 pair, and kdu0.25 / kdu0.75 (also 0.75 at 52 epochs: 0.5's steps).
#
# Usage: bash bench/kd_unlabeled.sh [epochs] [imgsz] [seeds] [jobs] [device] [project]
#   bash bench/kd_unlabeled.sh                    # 30 192 "0 1" 1 cpu runs/unlabeled (hours on a CPU)
#   bash bench/kd_unlabeled.sh 1 64 0             # a check that every run starts and ends
#   EXTRA="--noval" bash bench/kd_unlabeled.sh 100 192 "0 1" 1 cpu runs/unlabeled_e100
#   TEACHER=own TEACHER_EPOCHS=200 METHODS="kd kdu" EXTRA="--noval" bash bench/kd_unlabeled.sh 100 192 "0 1" 1 cpu \
#     runs/unlabeled_own                          # EXTRA reaches the teacher's training too
#   STUDENT=models/yolov8n.yaml TEACHER=weights/teacher-shapes-yolov8s.pt HYP=data/hyps/hyp.v8-short.yaml \
#     bash bench/kd_unlabeled.sh 30 192 "0 1" 1 cpu runs/unlabeled_v8
# Each run is one process with one torch thread (OMP_NUM_THREADS=1, --teacher_overlap off, so that `jobs`
# runs share the cores evenly); a finished run is skipped and an interrupted one resumes. Then:
#   python bench/summarize_runs.py runs/unlabeled
# METHODS="plain kd kdu" sets the list; EXTRA="..." adds flags to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${1:-30}"; IMG="${2:-192}"; SEEDS="${3:-0 1}"; JOBS="${4:-1}"; DEVICE="${5:-cpu}"; PROJECT="${6:-runs/unlabeled}"
read -r -a METHODS <<< "${METHODS:-plain kd kdu}"
STUDENT="${STUDENT:-models/yolov5n.yaml}"; TEACHER="${TEACHER:-weights/teacher-shapes-yolov5s.pt}"
HYP="${HYP:-data/hyps/hyp.short.yaml}"; TEACHER_EPOCHS="${TEACHER_EPOCHS:-100}"
SPLIT=datasets/shapes_l100
PY="${PYTHON:-python}"
"$PY" bench/make_unlabeled_split.py "$SPLIT" --labelled 100
mkdir -p "$PROJECT"

COMMON=(--cfg "$STUDENT" --weights '' --img "$IMG" --epochs "$EPOCHS" --batch-size 16 --workers 2 --cache ram
        --hyp "$HYP" --device "$DEVICE" --project "$PROJECT" --exist-ok)
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
COMMON+=("${EXTRA_FLAGS[@]}")

finished() {  # run folder, epochs
  local n
  n=$( (tail -n +2 "$1/results.csv" 2>/dev/null || true) | wc -l)
  [ "$n" -ge "$2" ] && [ -f "$1/weights/best.pt" ]
}

if [ "$TEACHER" = own ]; then  # a yolov5s taught by the 100 labelled images alone
  T="$PROJECT/teacher-l100"
  if ! finished "$T" "$TEACHER_EPOCHS"; then
    if [ -f "$T/weights/last.pt" ]; then
      OMP_NUM_THREADS=1 "$PY" train.py --resume "$T/weights/last.pt" >> "$T.log" 2>&1
    else
      OMP_NUM_THREADS=1 "$PY" train.py --data "$SPLIT/labelled.yaml" --cfg models/yolov5s.yaml --weights '' \
        --img "$IMG" --epochs "$TEACHER_EPOCHS" --batch-size 16 --workers 2 --cache ram --hyp "$HYP" \
        --device "$DEVICE" --project "$PROJECT" --name teacher-l100 --exist-ok --seed 0 "${EXTRA_FLAGS[@]}" \
        > "$T.log" 2>&1
    fi
  fi
  TEACHER="$T/weights/best.pt"
fi
[ -f "$TEACHER" ] || { echo "ERROR: teacher $TEACHER not found" >&2; exit 2; }

run() {  # method seed
  local name="$1-s$2" script=train_kd.py data="$SPLIT/labelled.yaml"
  local -a kd=(--teacher_weight "$TEACHER" --teacher_overlap off)
  case "$1" in
    plain) script=train.py; kd=() ;;
    kd) ;;
    kdu) data="$SPLIT/data.yaml" ;;
    kdu*) data="$SPLIT/data.yaml"; kd+=(--unlabeled_ratio "${1#kdu}") ;;
    *) echo "ERROR: unknown method $1 (plain, kd, kdu, kduR)" >&2; return 2 ;;
  esac
  if finished "$PROJECT/$name" "$EPOCHS"; then return; fi
  if [ -f "$PROJECT/$name/weights/last.pt" ]; then  # an interrupted run continues where it stopped
    OMP_NUM_THREADS=1 "$PY" "$script" --resume "$PROJECT/$name/weights/last.pt" >> "$PROJECT/$name.log" 2>&1
    return
  fi
  OMP_NUM_THREADS=1 "$PY" "$script" --data "$data" "${COMMON[@]}" --seed "$2" --name "$name" "${kd[@]}" \
    > "$PROJECT/$name.log" 2>&1
}

for seed in $SEEDS; do
  for m in "${METHODS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    run "$m" "$seed" &
  done
done
wait
for f in "$PROJECT"/*.log; do if grep -q Traceback "$f"; then echo "WARNING: a run failed, see $f" >&2; fi; done
echo "done: $PROJECT"
