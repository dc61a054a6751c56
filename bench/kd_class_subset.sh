#!/usr/bin/env bash
# Output KD from a teacher of more classes than the data, its classes matched by name (train_kd.py
# --teacher_classes, distill.recipe.match_classes): a yolov5n student from scratch on a 3-class subset of the
# embedded shapes data (square, star, ring of the 6), taught by the committed 6-class
# weights/teacher-shapes-yolov5s.pt, against the same student trained on the labels alone. Recorded schedule of
# the distillation experiment: 30 epochs, 192 px, batch 16, hyp.short, one run per method and seed.
#
# The subset is what a user with such data has: the same images, where the other classes are simply not
# labelled. Built once into datasets/shapes_sub3 from datasets/shapes (images hard-linked, or copied): every
# label of circle, triangle and cross is dropped, square/star/ring renumbered 0/1/2; no image is removed, so
# circles, triangles and crosses stay in the pictures as unlabelled background. The teacher still sees them:
# output KD leaves them out of the class term and folds them into background in the objectness (option B,
# distill/yolo_output.py), which is what this comparison measures.
#
# Usage: bash bench/kd_class_subset.sh [epochs] [imgsz] [seeds] [jobs] [device] [project]
#   bash bench/kd_class_subset.sh                     # 30 192 "0 1" 1 cpu runs/class_subset (hours on a CPU)
#   bash bench/kd_class_subset.sh 1 64 0              # a check that every run starts and ends
# Each run is one process with one torch thread (OMP_NUM_THREADS=1); `jobs` run at once. A run whose
# results.csv has all epochs is skipped and an interrupted one resumes. Then:
#   python bench/summarize_runs.py runs/class_subset
# METHODS="baseline default kl_only" sets the list: baseline (train.py), default (train_kd.py's default recipe,
# kl output KD + scorel2) or a recipe of data/kd/. EXTRA="..." adds flags to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${1:-30}"; IMG="${2:-192}"; SEEDS="${3:-0 1}"; JOBS="${4:-1}"; DEVICE="${5:-cpu}"; PROJECT="${6:-runs/class_subset}"
read -r -a METHODS <<< "${METHODS:-baseline default}"
STUDENT=models/yolov5n.yaml; TEACHER=weights/teacher-shapes-yolov5s.pt; HYP=data/hyps/hyp.short.yaml
SUBSET=datasets/shapes_sub3
for f in "$STUDENT" "$TEACHER" "$HYP"; do [ -f "$f" ] || { echo "ERROR: $f not found" >&2; exit 2; }; done
PY="${PYTHON:-python}"

"$PY" - "$SUBSET" <<'EOF'
import os, shutil, sys
from pathlib import Path

import yaml

from utils.data.config import check_dataset

KEEP = {1: 0, 3: 1, 5: 2}  # shapes class -> subset class: square, star, ring
out = Path(sys.argv[1])
if (out / "data.yaml").is_file():
    sys.exit(0)
src = Path(check_dataset("data/shapes.yaml")["path"])  # builds datasets/shapes on first use
names = yaml.safe_load(Path("data/shapes.yaml").read_text())["names"]
tmp = out.with_name(out.name + ".partial")
shutil.rmtree(tmp, ignore_errors=True)
for split in ("train", "val"):
    (tmp / "images" / split).mkdir(parents=True)
    (tmp / "labels" / split).mkdir(parents=True)
    for img in sorted((src / "images" / split).iterdir()):
        try:
            os.link(img, tmp / "images" / split / img.name)
        except OSError:
            shutil.copy2(img, tmp / "images" / split / img.name)
        label = src / "labels" / split / f"{img.stem}.txt"
        rows = [r.split() for r in label.read_text().splitlines() if r.strip()] if label.is_file() else []
        kept = [" ".join([str(KEEP[int(r[0])]), *r[1:]]) for r in rows if int(r[0]) in KEEP]
        (tmp / "labels" / split / f"{img.stem}.txt").write_text("".join(f"{r}\n" for r in kept))
data = {"path": str(out.resolve()), "train": "images/train", "val": "images/val", "test": None,
        "nc": len(KEEP), "names": [names[k] for k in sorted(KEEP)]}
(tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
tmp.replace(out)
print(f"{out}: {data['names']} of {names}; the other classes' labels dropped, images kept")
EOF

COMMON=(--data "$SUBSET/data.yaml" --cfg "$STUDENT" --weights '' --img "$IMG" --epochs "$EPOCHS"
        --batch-size 16 --workers 2 --cache ram --hyp "$HYP" --device "$DEVICE" --project "$PROJECT" --exist-ok)
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
COMMON+=("${EXTRA_FLAGS[@]}")
mkdir -p "$PROJECT"

run() {  # method seed
  local name="$1-s$2" n script=train_kd.py
  local -a kd=(--teacher_weight "$TEACHER")
  [ "$1" = baseline ] && { script=train.py; kd=(); }
  [ "$1" != baseline ] && [ "$1" != default ] && kd+=(--kd_config "$1")
  n=$( (tail -n +2 "$PROJECT/$name/results.csv" 2>/dev/null || true) | wc -l)
  if [ "$n" -ge "$EPOCHS" ] && [ -f "$PROJECT/$name/weights/best.pt" ]; then return; fi
  if [ -f "$PROJECT/$name/weights/last.pt" ]; then  # an interrupted run continues where it stopped
    OMP_NUM_THREADS=1 "$PY" "$script" --resume "$PROJECT/$name/weights/last.pt" >> "$PROJECT/$name.log" 2>&1
    return
  fi
  OMP_NUM_THREADS=1 "$PY" "$script" "${COMMON[@]}" --seed "$2" --name "$name" "${kd[@]}" > "$PROJECT/$name.log" 2>&1
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
