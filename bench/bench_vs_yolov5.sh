#!/usr/bin/env bash
# Public YOLOv5 (the pip package yolov5==7.0.14) side by side with this repository, on the same machine
# with the same settings, one run after the other, each whole process timed by /usr/bin/time -f "%e s %M KB":
#   a) train: yolov5n from scratch (--weights '' and the yolov5n yaml), EPOCHS epoch(s) on the first NTRAIN
#      shapes training images, validated on the first NVAL val images; prints wall time, peak RSS and the
#      final mAP@0.5 / mAP@0.5:0.95 each one printed (its last "all" row: best.pt after training);
#   b) val: a yolov5s checkpoint (default weights/teacher-shapes-yolov5s.pt) on the same NVAL images.
# and the ratio public/ours of the wall times.  Do the timed runs on an otherwise idle machine: the script
# prints the load average and warns when it is above 0.5.
#
# Usage (from any directory):
#   bash bench/bench_vs_yolov5.sh --setup      # once per machine: build the venv for the public package
#   bash bench/bench_vs_yolov5.sh              # the benchmark with the defaults below
#   bash bench/bench_vs_yolov5.sh --bf16       # the same, this repository's training with --bf16
#   bash bench/bench_vs_yolov5.sh --ntrain 16 --nval 8 --img 64 --batch-size 8   # smoke test (minutes)
# On a machine without network (the GPU machine): fetch the public package's wheels here first, carry them:
#   bash bench/fetch_yolov5_wheels.sh .whl                             # here, with the package index
#   bash bench/bench_vs_yolov5.sh --setup --site /tmp/yv5site --wheels .whl      # there, offline
#   bash bench/bench_vs_yolov5.sh --site /tmp/yv5site --device 0 --img 640 --batch-size 64 --workers 8
#
# Options (default in brackets):
#   --setup             create/complete the venv (below) and exit
#   --venv DIR          venv holding the public package [/work/yv5venv]
#   --site DIR          instead of a venv: the public package installed in DIR (pip --target), run by the
#                       same interpreter as this repository with PYTHONPATH=DIR. For a machine whose python
#                       is itself a venv (a venv made from it would not see its torch)
#   --wheels DIR        with --setup: install the public package from the wheels in DIR, offline (made by
#                       bench/fetch_yolov5_wheels.sh); torchvision is then the machine's own
#   --device D          cpu, or a CUDA device (0) for both sides [cpu]
#   --python EXE        interpreter for this repository (and for --setup's venv) [python3]
#   --ntrain N          first N training images, by file name [800]
#   --nval N            first N val images, by file name [200]
#   --img N             image size, training and val [320]
#   --batch-size N      training batch size [16]
#   --val-batch-size N  batch size of part b [32] (each training validates at 2x its batch size itself)
#   --workers N         dataloader workers [2]
#   --epochs N          training epochs [1]
#   --seed N            training seed [0]
#   --hyp FILE          hyperparameters of both trainings [data/hyps/hyp.scratch.yaml]: the v6.0 file this
#                       repository defaults to; the public default hyp.scratch-low.yaml differs only in lrf
#   --weights PT        yolov5s checkpoint of part b [weights/teacher-shapes-yolov5s.pt]
#   --bf16              add --bf16 (bf16 autocast on CPU) to this repository's training
#   --only train|val    run one part only [both]
#   --repeats N         run each pair N times, alternating which side goes first [1]
#   --ours-first        let this repository go first in the first pair [public first]
#   --workdir DIR       scratch directory, emptied at start [/tmp/bench_vs_yolov5]
#
# Same settings: both get the same image subset (copied into two separate folders so that neither reads
# the other's label cache; every *.cache is deleted before each run, so each run builds its own), the
# same hyp file, image size, batch size, workers, epochs, seed and --device, and both keep their
# default plots, TensorBoard log and final validation of best.pt.  "peak RSS" is GNU time's %M: the
# largest resident set of any single process of the run (the main process or one dataloader worker),
# not their sum.  Per-image pre-process / inference / NMS times are each val's own "Speed:" line.
#
# SETUP (--setup does exactly this; nothing outside the venv is changed):
#   $PYTHON -m venv --system-site-packages $VENV   (reuses the system torch 2.13.0+cpu, numpy, opencv, ...)
#   pip install --no-deps (so pip can never pull a CUDA torch) of, nothing else:
#     yolov5==7.0.14 torchvision==0.28.0 ultralytics==8.3.28 roboflow==1.1.49 huggingface-hub==0.24.7
#     psutil==7.2.2 thop==0.1.1.post2209072238 requests-toolbelt==1.0.0 filetype==1.2.0 fire==0.7.1
#     termcolor==3.3.0
#   yolov5 7.0.14 imports at module level: ultralytics (check_requirements only), roboflow (which needs
#   requests-toolbelt and filetype), psutil, huggingface_hub (attempt_download_from_hub is called even
#   for --weights ''; the package pins <0.25), torchvision; thop gives the GFLOPs line as in any public
#   install; fire + termcolor make the `yolov5` console command work (this script uses python -m).
#   The venv's own setuptools 65.5 (from venv) provides pkg_resources, which yolov5 imports and the
#   system setuptools 84 no longer has.
#   bench/yv5venv_sitecustomize.py is copied to the venv's site-packages as sitecustomize.py.  It
#   (1) replaces torchvision.ops.nms by an exact pure-torch greedy NMS, only when torchvision's compiled
#   ops cannot load: the PyPI torchvision 0.28.0 wheel is linked against CUDA torch (libtorch_cuda.so,
#   libc10_cuda.so), which the CPU torch does not have, so without the shim `import torchvision` fails;
#   (2) restores numpy.trapz (= numpy.trapezoid; removed in numpy 2.4, used by yolov5's compute_ap) and
#   Pillow's FreeTypeFont.getsize (removed in Pillow 10, used by yolov5's plot labels) when yolov5 is
#   imported.  Read its docstring before quoting NMS times: the public "NMS" column runs that shim.
#
# Offline operation of the public runs (environment set for them only):
#   YOLOV5_CONFIG_DIR=<workdir>/yv5cfg holding Arial.ttf: check_dataset() downloads Arial.ttf there
#     otherwise (fatal without network); the file placed is matplotlib's DejaVuSans.ttf under that name,
#     used only to draw labels in plots;
#   YOLO_CONFIG_DIR=<workdir>/yv5cfg: ultralytics writes its settings.json there, not in ~/.config;
#   YOLO_OFFLINE=true: ultralytics' import-time connectivity probe (2 s socket timeouts) is skipped;
#   YOLO_AUTOINSTALL=false: check_requirements never runs pip; HF_HUB_OFFLINE=1: no Hugging Face calls;
#   TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: yolov5 7.0.14 calls torch.load without weights_only, and torch
#     >= 2.6 defaults to weights_only=True, which cannot load its own checkpoints (strip_optimizer and
#     the final validation of best.pt fail at the end of training without it);
#   WANDB_MODE=disabled COMET_MODE=disabled: belt and braces, wandb/comet_ml/clearml/neptune are not
#     installed, so those loggers are off; the run's cwd is an empty folder, so the public code's
#     top-level `models`/`utils` imports cannot pick up this repository's packages.
#
# Part b checkpoint: the public loader does unpickle this repository's checkpoint (its module paths
# models.yolo / models.common resolve to the public package's copies), but then silently skips
# Conv+BN fusion (its fuse() tests isinstance against yolov5.models.common.Conv, a different class
# object), so it would validate an unfused model.  The script therefore exports the checkpoint's
# yaml, class names and state_dict with this repository's python, builds the public DetectionModel
# from that yaml, loads the state_dict strictly, checks the outputs match on a random input, and
# saves a public-format checkpoint (same dtype); that one is what the public val loads (and fuses).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=/work/yv5venv
PY=python3
NTRAIN=800; NVAL=200; IMG=320; BATCH=16; VBATCH=32; WORKERS=2; EPOCHS=1; SEED=0
HYP="$REPO/data/hyps/hyp.scratch.yaml"
WEIGHTS="$REPO/weights/teacher-shapes-yolov5s.pt"
SITE=""; WHEELS=""; DEVICE=cpu
BF16=0; ONLY=both; REPEATS=1; OURS_FIRST=0; SETUP=0
WORK=/tmp/bench_vs_yolov5

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
need() { [ $# -ge 2 ] || { echo "option $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --setup) SETUP=1; shift ;;
    --venv) need "$@"; VENV=$2; shift 2 ;;
    --site) need "$@"; SITE=$(realpath -m "$2"); shift 2 ;;
    --wheels) need "$@"; WHEELS=$(realpath "$2"); shift 2 ;;
    --device) need "$@"; DEVICE=$2; shift 2 ;;
    --python) need "$@"; PY=$2; shift 2 ;;
    --ntrain) need "$@"; NTRAIN=$2; shift 2 ;;
    --nval) need "$@"; NVAL=$2; shift 2 ;;
    --img) need "$@"; IMG=$2; shift 2 ;;
    --batch-size) need "$@"; BATCH=$2; shift 2 ;;
    --val-batch-size) need "$@"; VBATCH=$2; shift 2 ;;
    --workers) need "$@"; WORKERS=$2; shift 2 ;;
    --epochs) need "$@"; EPOCHS=$2; shift 2 ;;
    --seed) need "$@"; SEED=$2; shift 2 ;;
    --hyp) need "$@"; HYP=$(realpath "$2"); shift 2 ;;
    --weights) need "$@"; WEIGHTS=$(realpath "$2"); shift 2 ;;
    --bf16) BF16=1; shift ;;
    --only) need "$@"; ONLY=$2; shift 2 ;;
    --repeats) need "$@"; REPEATS=$2; shift 2 ;;
    --ours-first) OURS_FIRST=1; shift ;;
    --workdir) need "$@"; WORK=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$ONLY" in both|train|val) ;; *) echo "--only takes train or val" >&2; exit 2 ;; esac
VPY="$VENV/bin/python"
if [ -n "$SITE" ]; then VPY=$(command -v "$PY"); fi   # --site: the same interpreter, the package on PYTHONPATH
if [ -n "$WHEELS" ] && [ -z "$(ls "$WHEELS"/*.whl 2>/dev/null)" ]; then
  echo "ERROR: --wheels $WHEELS holds no .whl files: make them with bash bench/fetch_yolov5_wheels.sh" >&2; exit 2
fi

# ---------------------------------------------------------------------------------------------- setup
if [ "$SETUP" = 1 ]; then
  if [ -n "$SITE" ]; then
    [ -n "$WHEELS" ] || { echo "ERROR: --setup --site needs --wheels DIR (bench/fetch_yolov5_wheels.sh)" >&2; exit 2; }
    mkdir -p "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" --upgrade "$WHEELS"/*.whl
    SP="$SITE"
  else
    [ -x "$VPY" ] || "$PY" -m venv --system-site-packages "$VENV"
    if [ -n "$WHEELS" ]; then
      "$VPY" -m pip install --no-index --no-deps "$WHEELS"/*.whl
    else
      "$VPY" -m pip install --no-deps yolov5==7.0.14 torchvision==0.28.0 ultralytics==8.3.28 roboflow==1.1.49 \
        huggingface-hub==0.24.7 psutil==7.2.2 thop==0.1.1.post2209072238 requests-toolbelt==1.0.0 \
        filetype==1.2.0 fire==0.7.1 termcolor==3.3.0
    fi
    SP=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  fi
  cp "$REPO/bench/yv5venv_sitecustomize.py" "$SP/sitecustomize.py"
  echo "copied bench/yv5venv_sitecustomize.py to $SP/sitecustomize.py"
  sys_torch=$("$PY" -c "import torch; print(torch.__version__)")
  venv_torch=$(PYTHONPATH="$SITE" "$VPY" -c "import torch; print(torch.__version__)")
  echo "torch: system $sys_torch, venv $venv_torch"
  [ "$sys_torch" = "$venv_torch" ] || { echo "ERROR: the venv sees another torch than the system" >&2; exit 1; }
  CFG=$(mktemp -d)
  trap 'rm -rf "$CFG"' EXIT
  cd "$CFG" && PYTHONPATH="$SITE" YOLOV5_CONFIG_DIR="$CFG" YOLO_CONFIG_DIR="$CFG" YOLO_OFFLINE=true HF_HUB_OFFLINE=1 \
    "$VPY" - <<'EOF' | tail -n 1
import torch, torchvision, sitecustomize
import yolov5.train, yolov5.val  # every module-level import of the two entry points
b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.]])
keep = torchvision.ops.nms(b, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
assert keep == [0, 2], keep
print(f"ok: yolov5 {yolov5.__version__}, torchvision {torchvision.__version__}, "
      f"NMS shim {'active' if sitecustomize._ACTIVE else 'not needed (torchvision ops load)'}")
EOF
  exit 0
fi

# ------------------------------------------------------------------------------------- preconditions
if [ -n "$SITE" ]; then
  [ -d "$SITE/yolov5" ] || { echo "ERROR: no public package in --site $SITE: run  bash bench/bench_vs_yolov5.sh" \
    "--setup --site $SITE --wheels DIR" >&2; exit 1; }
else
  [ -x "$VPY" ] || { echo "ERROR: no venv at $VENV: run  bash bench/bench_vs_yolov5.sh --setup" >&2; exit 1; }
fi
[ -f "$HYP" ] || { echo "ERROR: no hyp file $HYP" >&2; exit 1; }
if [ "$ONLY" != train ] && [ ! -f "$WEIGHTS" ]; then echo "ERROR: no checkpoint $WEIGHTS" >&2; exit 1; fi
# the work dir is emptied: only when it is new, empty, or was made by this script (marker file)
if [ -e "$WORK" ] && [ ! -e "$WORK/.bench_vs_yolov5" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
  echo "ERROR: --workdir $WORK exists, is not empty and was not made by this script: not emptying it" >&2
  exit 1
fi
rm -rf "$WORK"
mkdir -p "$WORK/runs" "$WORK/yv5cfg" "$WORK/pub_cwd"
touch "$WORK/.bench_vs_yolov5"
WORK=$(cd "$WORK" && pwd)
RES="$WORK/results.tsv"
: > "$RES"

PUB_PATH=(-u PYTHONPATH); [ -n "$SITE" ] && PUB_PATH=("PYTHONPATH=$SITE")
PUB_ENV=(env "${PUB_PATH[@]}" "YOLOV5_CONFIG_DIR=$WORK/yv5cfg" "YOLO_CONFIG_DIR=$WORK/yv5cfg" YOLO_OFFLINE=true
         YOLO_AUTOINSTALL=false HF_HUB_OFFLINE=1 TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 WANDB_MODE=disabled
         COMET_MODE=disabled)
OURS_ENV=(env -u PYTHONPATH)

# the font the public check_font() would download (any TrueType font; used for plot labels only)
"$PY" -c "
import matplotlib, os, shutil, sys
shutil.copy(os.path.join(matplotlib.get_data_path(), 'fonts/ttf/DejaVuSans.ttf'), sys.argv[1])" "$WORK/yv5cfg/Arial.ttf"

echo "== machine"
echo "date: $(date -Is)   cores: $(nproc)   load average: $(cut -d' ' -f1-3 /proc/loadavg)"
read -r LOAD1 _ < /proc/loadavg
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "WARNING: the machine is not idle (1-minute load $LOAD1): the timings below are not trustworthy"
fi
echo "this repository: $REPO at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
     "($(git -C "$REPO" status --porcelain 2>/dev/null | wc -l) uncommitted paths)"
echo "ours:   $("${OURS_ENV[@]}" "$PY" -c "
import sys, torch
print(f'python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads')")"
echo "public: $(cd "$WORK/pub_cwd" && "${PUB_ENV[@]}" "$VPY" -c "
import sys, torch, yolov5.train, torchvision, sitecustomize
print(f'python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads, '
      f'yolov5 {yolov5.__version__}, torchvision {torchvision.__version__}, '
      f\"NMS {'pure-torch shim' if sitecustomize._ACTIVE else 'torchvision C++'}\")" 2>/dev/null | tail -n 1)"

# ------------------------------------------------------------------------------------------------ data
# the shapes data of this repository (built on first use, as train.py would), then the subsets
read -r SRC_TRAIN SRC_VAL < <(cd "$REPO" && "${OURS_ENV[@]}" "$PY" -c "
from utils.data.config import check_dataset
d = check_dataset('data/shapes.yaml')
print(d['train'], d['val'])" | tail -n 1)
[ -d "${SRC_TRAIN:-/nonexistent}" ] && [ -d "${SRC_VAL:-/nonexistent}" ] || {
  echo "ERROR: could not locate or build the shapes data (data/shapes.yaml)" >&2; exit 1; }
copy_first() {  # src_images_dir n dst_root split
  local src=$1 n=$2 dst=$3 split=$4 lab f k=0
  lab="${src%/images/*}/labels/${src##*/images/}"
  mkdir -p "$dst/images/$split" "$dst/labels/$split"
  while IFS= read -r f; do
    cp "$src/$f" "$dst/images/$split/"
    if [ -f "$lab/${f%.*}.txt" ]; then cp "$lab/${f%.*}.txt" "$dst/labels/$split/"; fi
    k=$((k + 1))
  done < <(ls -1 "$src" | grep -Ei '\.(jpg|jpeg|png|bmp)$' | LC_ALL=C sort | sed -n "1,${n}p")
  [ "$k" -eq "$n" ] || { echo "ERROR: $src has only $k images, $n asked" >&2; exit 1; }
}
NAMES=$(cd "$REPO" && "$PY" -c "import yaml; print(yaml.safe_load(open('data/shapes.yaml'))['names'])")
NC=$(cd "$REPO" && "$PY" -c "import yaml; print(yaml.safe_load(open('data/shapes.yaml'))['nc'])")
for side in pub ours; do
  copy_first "$SRC_TRAIN" "$NTRAIN" "$WORK/data_$side" train
  copy_first "$SRC_VAL" "$NVAL" "$WORK/data_$side" val
  printf 'path: %s\ntrain: images/train\nval: images/val\nnc: %s\nnames: %s\n' \
    "$WORK/data_$side" "$NC" "$NAMES" > "$WORK/data_$side.yaml"
done
echo "== data: first $NTRAIN of $SRC_TRAIN, first $NVAL of $SRC_VAL (a copy per side under $WORK)"

# ------------------------------------------------------------------------------------------- helpers
metrics() {  # log -> "mAP50 mAP50-95" of its last 'all' row
  tr '\r' '\n' < "$1" |
    awk '$1 == "all" && NF == 7 { a = $6; b = $7 } END { if (a == "") print "n/a n/a"; else print a, b }'
}
speed() {  # log -> its last "Speed: ..." line, shortened
  tr '\r' '\n' < "$1" | grep '^Speed:' | tail -n 1 | sed 's/^Speed: //; s/ per image.*//' || true
}
timed() {  # file command...: "<wall> s <peak RSS> KB" into file (GNU time, else bench/timed_run.py)
  if [ -x /usr/bin/time ] && [ -z "${NO_GNU_TIME:-}" ]; then /usr/bin/time -f "%e s %M KB" -o "$@"
  else "$PY" "$REPO/bench/timed_run.py" "$@"; fi
}
run_one() {  # part side rep cwd command...
  local part=$1 side=$2 rep=$3 dir=$4; shift 4
  local name="${part}_${side}_r${rep}" rc=0 t m n s
  rm -rf "$WORK/runs/$name"
  rm -f "$WORK/data_$side"/labels/*.cache
  echo "-- $name: $*" | cut -c1-400
  (cd "$dir" && timed "$WORK/$name.time" "$@") > "$WORK/$name.log" 2>&1 || rc=$?
  t=$(tail -n 1 "$WORK/$name.time" 2>/dev/null || echo "n/a s n/a KB")
  m=$(metrics "$WORK/$name.log")
  n=$(tr '\r' '\n' < "$WORK/$name.log" | grep -c 'NMS time limit' || true)
  s=$(speed "$WORK/$name.log")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$part" "$side" "$rep" "$(echo "$t" | awk '{print $1}')" \
    "$(echo "$t" | awk '{print $3}')" "$m" "$rc" "$n" "$s" | sed 's/ /\t/' >> "$RES"
  printf '   wall %s, peak RSS %s KB, mAP@0.5 %s, mAP@0.5:0.95 %s, exit %s' "$(echo "$t" | awk '{print $1}') s" \
    "$(echo "$t" | awk '{print $3}')" "${m% *}" "${m#* }" "$rc"
  [ "$n" = 0 ] || printf ', "NMS time limit exceeded" x%s (that val stopped NMS early)' "$n"
  [ -z "$s" ] || printf ', speed %s' "$s"
  printf '   log: %s\n' "$WORK/$name.log"
  if [ "$rc" != 0 ]; then tail -n 15 "$WORK/$name.log" | sed 's/^/   | /'; fi
}
pair() {  # part rep: both sides, alternating the order by repeat
  local part=$1 rep=$2
  if [ $(((rep + OURS_FIRST) % 2)) = 1 ]; then "${part}_pub" "$rep"; "${part}_ours" "$rep"
  else "${part}_ours" "$rep"; "${part}_pub" "$rep"; fi
}

# ----------------------------------------------------------------------------------------- a) train
BF16_ARG=(); [ "$BF16" = 1 ] && BF16_ARG=(--bf16)
TRAIN_COMMON=(--weights '' --hyp "$HYP" --img "$IMG" --batch-size "$BATCH" --workers "$WORKERS"
              --epochs "$EPOCHS" --device "$DEVICE" --seed "$SEED" --project "$WORK/runs" --exist-ok)
train_pub() {
  run_one train pub "$1" "$WORK/pub_cwd" "${PUB_ENV[@]}" "$VPY" -m yolov5.train --cfg yolov5n.yaml \
    --data "$WORK/data_pub.yaml" "${TRAIN_COMMON[@]}" --name "train_pub_r$1"
}
train_ours() {
  run_one train ours "$1" "$REPO" "${OURS_ENV[@]}" "$PY" train.py --cfg models/yolov5n.yaml \
    --data "$WORK/data_ours.yaml" "${TRAIN_COMMON[@]}" "${BF16_ARG[@]}" --name "train_ours_r$1"
}
if [ "$ONLY" != val ]; then
  echo "== a) train yolov5n from scratch: $EPOCHS epoch(s), $NTRAIN images, img $IMG, batch $BATCH," \
       "workers $WORKERS, seed $SEED, hyp $HYP$([ "$BF16" = 1 ] && echo ', ours with --bf16')"
  for rep in $(seq 1 "$REPEATS"); do pair train "$rep"; done
fi

# ------------------------------------------------------------------------------------------- b) val
val_pub() {
  run_one val pub "$1" "$WORK/pub_cwd" "${PUB_ENV[@]}" "$VPY" -m yolov5.val --weights "$WORK/ckpt_public.pt" \
    --data "$WORK/data_pub.yaml" --img "$IMG" --batch-size "$VBATCH" --workers "$WORKERS" --device "$DEVICE" \
    --project "$WORK/runs" --name "val_pub_r$1" --exist-ok
}
val_ours() {
  run_one val ours "$1" "$REPO" "${OURS_ENV[@]}" "$PY" val.py --weights "$WEIGHTS" \
    --data "$WORK/data_ours.yaml" --img "$IMG" --batch-size "$VBATCH" --workers "$WORKERS" --device "$DEVICE" \
    --project "$WORK/runs" --name "val_ours_r$1" --exist-ok
}
if [ "$ONLY" != train ]; then
  echo "== b) val of $WEIGHTS: $NVAL images, img $IMG, batch $VBATCH, workers $WORKERS"
  # untimed: the checkpoint as the public package's own DetectionModel (see the header)
  (cd "$REPO" && "${OURS_ENV[@]}" "$PY" - "$WEIGHTS" "$WORK/ckpt_export.pt" "$IMG" <<'EOF'
import sys
import torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
m = ck.get("ema") or ck["model"] if isinstance(ck, dict) else None
if not isinstance(m, torch.nn.Module) or not isinstance(getattr(m, "yaml", None), dict):
    sys.exit(f"{sys.argv[1]}: not a full-model YOLOv5 checkpoint (dict with 'model'/'ema' and a .yaml)")
names = list(m.names.values()) if isinstance(m.names, dict) else list(m.names)
sd = {k: v.clone() for k, v in m.state_dict().items()}  # as stored (dtype kept)
x = torch.rand(1, 3, int(sys.argv[3]), int(sys.argv[3]), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    y = m.float().eval()(x)[0]
torch.save({"yaml": m.yaml, "names": names, "state_dict": sd, "x": x, "y": y}, sys.argv[2])
EOF
  ) || { echo "ERROR: could not export $WEIGHTS" >&2; exit 1; }
  (cd "$WORK/pub_cwd" && "${PUB_ENV[@]}" "$VPY" - "$WEIGHTS" "$WORK/ckpt_export.pt" "$WORK/ckpt_public.pt" <<'EOF'
import sys
import torch
from yolov5.models.yolo import DetectionModel
d = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
dtype = next(iter(d["state_dict"].values())).dtype
model = DetectionModel(d["yaml"], ch=3, nc=d["yaml"]["nc"])
model.load_state_dict({k: v.float() for k, v in d["state_dict"].items()}, strict=True)
model.nc, model.names = d["yaml"]["nc"], dict(enumerate(d["names"]))
with torch.no_grad():
    err = (model.eval()(d["x"])[0] - d["y"]).abs().max().item()
print(f"checkpoint as public DetectionModel: strict state_dict load, max |output difference| {err:.2e}")
if err > 1e-3:
    sys.exit("ERROR: the public model does not reproduce this repository's output")
for p in model.parameters():
    p.requires_grad = False
torch.save({"model": model.to(dtype), "epoch": -1, "optimizer": None, "ema": None, "updates": None},
           sys.argv[3])
EOF
  ) > "$WORK/ckpt_convert.log" 2>&1 || { tail -n 20 "$WORK/ckpt_convert.log" >&2; exit 1; }
  grep '^checkpoint as public' "$WORK/ckpt_convert.log"
  for rep in $(seq 1 "$REPEATS"); do pair val "$rep"; done
fi

# ------------------------------------------------------------------------------------------- summary
echo
echo "== summary (wall s: fastest of $REPEATS; peak RSS: largest; mAP: last run; ratio = public / ours)"
awk -F'\t' -v bf16="$BF16" '
  { k = $1 SUBSEP $2
    if ($8 != 0) bad[k] = 1
    if (!(k in t) || $4 + 0 < t[k]) t[k] = $4 + 0
    if ($5 + 0 > r[k]) r[k] = $5 + 0
    m50[k] = $6; m95[k] = $7; seen[$1] = 1; lim[k] += $9 }
  END {
    printf "%-6s %-13s %9s %12s %9s %13s %s\n", "part", "side", "wall s", "peak RSS MB", "mAP@0.5",
           "mAP@0.5:0.95", "notes"
    split("train val", parts, " ")
    for (i = 1; i <= 2; i++) { p = parts[i]; if (!(p in seen)) continue
      for (j = 1; j <= 2; j++) { s = (j == 1) ? "pub" : "ours"; k = p SUBSEP s
        label = (s == "pub") ? "public 7.0.14" : ((p == "train" && bf16 == 1) ? "ours --bf16" : "ours")
        note = (k in bad) ? "FAILED run(s), see log" : ""
        if (lim[k] > 0) note = note " NMS time limit hit " lim[k] "x"
        printf "%-6s %-13s %9.2f %12.0f %9s %13s %s\n", p, label, t[k], r[k] / 1024, m50[k], m95[k], note }
      kp = p SUBSEP "pub"; ko = p SUBSEP "ours"
      if (t[ko] > 0) printf "%-6s %-13s %9.2f\n", p, "ratio pub/ours", t[kp] / t[ko] }
  }' "$RES"
echo "logs, per-run files and results.tsv: $WORK"
