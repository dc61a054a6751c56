#!/usr/bin/env bash
# YOLOv8n training speed here against the ultralytics package (issue 14 §6), on the same machine with the
# same settings, one run after the other, each whole process timed (wall seconds, peak RSS of the largest
# process): yolov8n from scratch (models/yolov8n.yaml here, yolov8n.yaml there), EPOCHS epoch(s) on the
# first NTRAIN shapes training images, then each side's own final validation on the first NVAL val images.
# Prints both, the ratio ultralytics / ours, and each side's train-loop img/s (images / training seconds
# read from its progress bars is not comparable across the two loggers, so only whole-process time is).
#
# Usage (from any directory):
#   bash bench/bench_vs_ultralytics.sh --setup     # once per machine: the venv below (package index)
#   bash bench/bench_vs_ultralytics.sh             # 1 epoch, 800 images, 320 px, batch 16, 2 workers
#   bash bench/bench_vs_ultralytics.sh --ntrain 16 --nval 8 --img 64 --batch-size 8 --workers 1  # smoke
# Options: --venv DIR [/work/ulvenv] --python EXE [python3] --ntrain N [800] --nval N [200] --img N [320]
#   --batch-size N [16] --workers N [2] --epochs N [1] --seed N [0] --device D [cpu] --repeats N [1]
#   --workdir DIR [/tmp/bench_vs_ultralytics] (emptied at start; only if made by this script or empty)
#
# SETUP: $PYTHON -m venv --system-site-packages $VENV, then pip install --no-deps (pip never pulls a CUDA
# torch) of ultralytics==8.4.190 (the 8.4 line the fixtures come from) and what it imports that the system
# lacks: ultralytics-thop, polars + polars-runtime-32, nvidia-ml-py, ultralytics-platform, torchvision
# 0.28.0; bench/yv5venv_sitecustomize.py becomes the venv's sitecustomize.py (torchvision's PyPI wheel is
# a CUDA build whose ops do not load against the CPU torch: pure-torch NMS, see that file).
# Same settings on both sides: hyperparameters are each side's v8 defaults (ours: data/hyps/hyp.v8.yaml,
# which restates ultralytics' defaults: lr0 0.01, lrf 0.01, momentum 0.937, warmup 3 epochs, box 7.5, cls
# 0.5, dfl 1.5, mosaic 1.0, close_mosaic 10), SGD on both (ultralytics' optimizer=auto would pick AdamW
# for a short run), AMP off on CPU either way, no plots on the ultralytics side beyond its defaults.
# Offline: YOLO_OFFLINE=true (no connectivity probes), its settings under the work dir, and the font it
# would download for plot labels placed there first (matplotlib's DejaVuSans.ttf as Arial.ttf).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=/work/ulvenv; PY=python3
NTRAIN=800; NVAL=200; IMG=320; BATCH=16; WORKERS=2; EPOCHS=1; SEED=0; DEVICE=cpu; REPEATS=1; SETUP=0
WORK=/tmp/bench_vs_ultralytics
need() { [ $# -ge 2 ] || { echo "option $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --setup) SETUP=1; shift ;;
    --venv) need "$@"; VENV=$2; shift 2 ;;
    --python) need "$@"; PY=$2; shift 2 ;;
    --ntrain) need "$@"; NTRAIN=$2; shift 2 ;;
    --nval) need "$@"; NVAL=$2; shift 2 ;;
    --img) need "$@"; IMG=$2; shift 2 ;;
    --batch-size) need "$@"; BATCH=$2; shift 2 ;;
    --workers) need "$@"; WORKERS=$2; shift 2 ;;
    --epochs) need "$@"; EPOCHS=$2; shift 2 ;;
    --seed) need "$@"; SEED=$2; shift 2 ;;
    --device) need "$@"; DEVICE=$2; shift 2 ;;
    --repeats) need "$@"; REPEATS=$2; shift 2 ;;
    --workdir) need "$@"; WORK=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
VPY="$VENV/bin/python"

if [ "$SETUP" = 1 ]; then
  [ -x "$VPY" ] || "$PY" -m venv --system-site-packages "$VENV"
  "$VPY" -m pip install --no-deps ultralytics==8.4.190 ultralytics-thop polars polars-runtime-32 nvidia-ml-py \
    ultralytics-platform torchvision==0.28.0
  SP=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cp "$REPO/bench/yv5venv_sitecustomize.py" "$SP/sitecustomize.py"
  (cd "$(mktemp -d)" && YOLO_OFFLINE=true YOLO_CONFIG_DIR="$PWD" "$VPY" -c "
import ultralytics, torchvision
from ultralytics import YOLO
print(f'ok: ultralytics {ultralytics.__version__}, torchvision {torchvision.__version__}')" | tail -n 1)
  exit 0
fi

[ -x "$VPY" ] || { echo "ERROR: no venv at $VENV: run  bash bench/bench_vs_ultralytics.sh --setup" >&2; exit 1; }
if [ -e "$WORK" ] && [ ! -e "$WORK/.bench_vs_ultralytics" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
  echo "ERROR: --workdir $WORK exists, is not empty and was not made by this script: not emptying it" >&2; exit 1
fi
rm -rf "$WORK"; mkdir -p "$WORK/ulcfg" "$WORK/ul_cwd" "$WORK/runs"; touch "$WORK/.bench_vs_ultralytics"
WORK=$(cd "$WORK" && pwd)
"$PY" -c "
import matplotlib, os, shutil, sys
shutil.copy(os.path.join(matplotlib.get_data_path(), 'fonts/ttf/DejaVuSans.ttf'), sys.argv[1])" "$WORK/ulcfg/Arial.ttf"
UL_ENV=(env -u PYTHONPATH YOLO_OFFLINE=true "YOLO_CONFIG_DIR=$WORK/ulcfg" WANDB_MODE=disabled)

echo "== machine: $(date -Is), $(nproc --all) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
read -r LOAD1 _ < /proc/loadavg
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "WARNING: the machine is not idle (1-minute load $LOAD1): the timings below are not trustworthy"
fi
echo "this repository: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'); ultralytics:" \
     "$(cd "$WORK/ul_cwd" && "${UL_ENV[@]}" "$VPY" -c 'import ultralytics; print(ultralytics.__version__)' | tail -n 1)"

# the shapes data (built on first use), the first N images of each split copied per side: neither reads the
# other's label cache (both would write labels/train.cache)
read -r SRC_TRAIN SRC_VAL < <(cd "$REPO" && "$PY" -c "
from utils.data.config import check_dataset
d = check_dataset('data/shapes.yaml')
print(d['train'], d['val'])" | tail -n 1)
NAMES=$(cd "$REPO" && "$PY" -c "import yaml; print(yaml.safe_load(open('data/shapes.yaml'))['names'])")
copy_first() {  # src_images n dst split
  local lab="${1%/images/*}/labels/${1##*/images/}" f
  mkdir -p "$3/images/$4" "$3/labels/$4"
  ls -1 "$1" | grep -Ei '\.(jpg|jpeg|png|bmp)$' | LC_ALL=C sort | sed -n "1,${2}p" | while IFS= read -r f; do
    cp "$1/$f" "$3/images/$4/"; [ ! -f "$lab/${f%.*}.txt" ] || cp "$lab/${f%.*}.txt" "$3/labels/$4/"
  done
}
for side in ul ours; do
  copy_first "$SRC_TRAIN" "$NTRAIN" "$WORK/data_$side" train
  copy_first "$SRC_VAL" "$NVAL" "$WORK/data_$side" val
  printf 'path: %s\ntrain: images/train\nval: images/val\nnames: %s\n' "$WORK/data_$side" "$NAMES" > "$WORK/data_$side.yaml"
done
n=$(ls "$WORK/data_ours/images/train" | wc -l)
[ "$n" -eq "$NTRAIN" ] || { echo "ERROR: only $n training images, $NTRAIN asked" >&2; exit 1; }

RES="$WORK/results.tsv"; : > "$RES"
run() {  # side rep dir command...
  local side=$1 rep=$2 dir=$3 rc=0 t kb m; shift 3
  rm -f "$WORK/data_$side"/labels/*.cache
  (cd "$dir" && "$PY" "$REPO/bench/timed_run.py" "$WORK/$side-$rep.time" "$@") > "$WORK/$side-$rep.log" 2>&1 || rc=$?
  read -r t _ kb _ < "$WORK/$side-$rep.time" || { t=nan; kb=0; }
  m=$(tr '\r' '\n' < "$WORK/$side-$rep.log" | awk '$1 == "all" && NF >= 7 { a = $(NF-1); b = $NF } END { print (a == "" ? "n/a n/a" : a " " b) }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$side" "$rep" "$t" "$kb" "$m" "$rc" >> "$RES"
  echo "-- $side r$rep: wall $t s, peak RSS $((kb / 1024)) MB, mAP@0.5 / mAP@0.5:0.95 $m, exit $rc (log $WORK/$side-$rep.log)"
  [ "$rc" = 0 ] || tail -n 15 "$WORK/$side-$rep.log" | sed 's/^/   | /'
}
ul() {
  run ul "$1" "$WORK/ul_cwd" "${UL_ENV[@]}" "$VPY" -c "
from ultralytics import YOLO
YOLO('yolov8n.yaml').train(data='$WORK/data_ul.yaml', epochs=$EPOCHS, imgsz=$IMG, batch=$BATCH, workers=$WORKERS,
    device='$DEVICE', seed=$SEED, optimizer='SGD', lr0=0.01, amp=False, project='$WORK/runs', name='ul_r$1',
    exist_ok=True, verbose=True)"
}
ours() {
  run ours "$1" "$REPO" env -u PYTHONPATH "$PY" train.py --cfg models/yolov8n.yaml --weights '' \
    --data "$WORK/data_ours.yaml" --hyp data/hyps/hyp.v8.yaml --img "$IMG" --batch-size "$BATCH" --workers "$WORKERS" \
    --epochs "$EPOCHS" --device "$DEVICE" --seed "$SEED" --project "$WORK/runs" --name "ours_r$1" --exist-ok
}
echo "== yolov8n from scratch: $EPOCHS epoch(s), $NTRAIN images, img $IMG, batch $BATCH, workers $WORKERS, seed $SEED"
for rep in $(seq 1 "$REPEATS"); do  # alternate which side goes first
  if [ $((rep % 2)) = 1 ]; then ul "$rep"; ours "$rep"; else ours "$rep"; ul "$rep"; fi
done
echo
awk -F'\t' '{ if (!($1 in t) || $3 + 0 < t[$1]) t[$1] = $3 + 0; if ($4 + 0 > r[$1]) r[$1] = $4 + 0; m[$1] = $5 }
  END { for (s in t) printf "%-12s fastest wall %8.2f s  peak RSS %6.0f MB  mAP %s\n", (s == "ul" ? "ultralytics" : "ours"), t[s], r[s] / 1024, m[s]
        if (t["ours"] > 0) printf "ratio ultralytics / ours: %.2fx\n", t["ul"] / t["ours"] }' "$RES"
echo "logs and results.tsv: $WORK"
