#!/usr/bin/env bash
# Distillation here against ultralytics' built-in one, side by side (issue 29 §4). ultralytics 8.4 distils
# with `model.train(distill_model=TEACHER.pt, dis=6.0)` (ultralytics/nn/distill_model.py: a 1x1-conv projector
# per level, then the score-weighted L2 on the maps entering the head, weight dis, same family only); ours is
# train_kd.py with no distillation flag (a v8/YOLO11 pair: v8_output_kd on the heads + mse on the maps
# entering them, data/kd/v8_both.yaml). For one pair (v8: yolov8n <- yolov8s; v11: yolo11n <- yolo11s):
#  1. the teacher: the committed weights/teacher-shapes-yolov8s.pt (v8) or weights/teacher-shapes-yolo11s.pt
#     (v11), both trained with train.py on all 1000 shapes images (60 epochs, 192 px, hyp.v8-short, seed 0), or
#     with --teacher train one trained here first on the run's data copy (--teacher-epochs). Its state_dict is
#     written into ultralytics' checkpoint format
#     (bench/ul_teacher.py convert: ultralytics' DetectionModel from yolov8s.yaml / yolo11s.yaml, nc 6, strict
#     load). Checked: both tools' eval outputs on the first val image (max |difference|) and each tool's own
#     val mAP of it (ours val.py at --iou-thres 0.7, ultralytics' val default); written to teacher/check.txt.
#  2. per seed, 4 runs: ultralytics plain, ultralytics distill_model, ours train.py, ours train_kd.py, with
#     the same data copy (the first NTRAIN/NVAL images of data/shapes.yaml, one copy per tool: neither reads
#     the other's label cache), epochs, image size, batch, seed, SGD, device, cache, and the hyp file's
#     values (default data/hyps/hyp.v8-short.yaml, mapped onto ultralytics' arguments where they differ from
#     its defaults: printed; warmup as the same number of iterations, ours being max(warmup_epochs x batches,
#     warmup_min_iters)). One torch thread per run (OMP_NUM_THREADS=1; ultralytics' reset to min(8, cores-1)
#     threads is undone), JOBS runs at once. On CPU ultralytics forces 0 dataloader workers, so ours gets 0
#     there too; on a GPU both get --workers. AMP: each tool's default (off on CPU, fp16 on CUDA for both).
#     A finished run (results.csv with all epochs and best.pt) is skipped, an interrupted one resumes.
#  3. a markdown table (also WORK/summary.md): per tool plain and distilled mAP@0.5 / mAP@0.5:0.95 of each
#     seed's best epoch (highest 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95 in that run's results.csv, as
#     bench/summarize_runs.py) and the mean, the gain of each tool's KD over its own plain student (mean of the
#     per-seed differences) and seconds per epoch: the epoch loop's time (training + the per-epoch val +
#     checkpoint) / epochs, read for ultralytics from results.csv's `time` column (seconds since its epoch
#     loop began; a resumed process starts again from 0 at the epoch its log names, so each process's last
#     value is summed) and for ours from each process's "N epochs completed in H hours." log line (3600 x the
#     sum of H / the sum of N; H has 3 decimals, 3.6 s on a run's total: "-" when a run shows 0.000).
#
# Usage (from any directory):
#   bash bench/kd_vs_ultralytics.sh --setup            # once: the ultralytics venv (bench_vs_ultralytics.sh --setup)
#   bash bench/kd_vs_ultralytics.sh                    # v8 pair, 30 epochs, 192 px, batch 16, seeds "0 1", cpu
#   bash bench/kd_vs_ultralytics.sh --device 0 --jobs 8            # on one GPU, 8 runs at a time
#   bash bench/kd_vs_ultralytics.sh --pair v11 --device 0 --jobs 8
#   bash bench/kd_vs_ultralytics.sh --pair v11 --teacher train --teacher-epochs 60 --ntrain 300
#   bash bench/kd_vs_ultralytics.sh --epochs 1 --img 64 --ntrain 16 --nval 8 --seeds 0 --workdir /tmp/kdul  # smoke
#   bash bench/kd_vs_ultralytics.sh --seeds ""         # only the teacher conversion and check
#   bash bench/kd_vs_ultralytics.sh --summary [same options or --workdir]   # only the table of what WORK holds
# Options: --pair v8|v11 [v8] --epochs N [30] --img N [192] --batch-size N [16] --seeds "S ..." ["0 1"]
#   --jobs N [1] --device cpu|0|1.. [cpu] --hyp FILE [data/hyps/hyp.v8-short.yaml] --ntrain N [0 = all 1000]
#   --nval N [0 = all 200] --workers N [2; 0 on cpu] --cache ram|none [ram] --dis F [6.0, ultralytics' default]
#   --teacher FILE|train [weights/teacher-shapes-yolov8s.pt, v11: weights/teacher-shapes-yolo11s.pt; train:
#   train.py trains one on the data copy first] --teacher-epochs N [60, with --teacher train]
#   --teacher-overlap auto|on|off [off on cpu, where each run has one thread; auto on a GPU] (ours, train_kd.py)
#   --venv DIR [/work/ulvenv] --python EXE [python] --workdir DIR [/work/ulkd/PAIR-eEPOCHS-iIMG-bBATCH-nNTRAIN]
# The work dir keeps the data copies, the teacher, runs/NAME/ and runs/NAME.log (NAME = ul-plain-s0, ul-kd-s0,
# ours-plain-s0, ours-kd-s0, ...) and settings.txt: a rerun with other settings is refused (use another --workdir).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PAIR=v8; EPOCHS=30; IMG=192; BATCH=16; SEEDS="0 1"; JOBS=1; DEVICE=cpu; HYP=data/hyps/hyp.v8-short.yaml
NTRAIN=0; NVAL=0; WORKERS=2; CACHE=ram; DIS=6.0; TEACHER=""; TEACHER_EPOCHS=60; VENV=/work/ulvenv; PY=python
OVERLAP=""
WORK=""; SETUP=0; SUMMARY_ONLY=0
need() { [ $# -ge 2 ] || { echo "option $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --setup) SETUP=1; shift ;;
    --summary) SUMMARY_ONLY=1; shift ;;
    --pair) need "$@"; PAIR=$2; shift 2 ;;
    --epochs) need "$@"; EPOCHS=$2; shift 2 ;;
    --img) need "$@"; IMG=$2; shift 2 ;;
    --batch-size) need "$@"; BATCH=$2; shift 2 ;;
    --seeds) need "$@"; SEEDS=$2; shift 2 ;;
    --jobs) need "$@"; JOBS=$2; shift 2 ;;
    --device) need "$@"; DEVICE=$2; shift 2 ;;
    --hyp) need "$@"; HYP=$2; shift 2 ;;
    --ntrain) need "$@"; NTRAIN=$2; shift 2 ;;
    --nval) need "$@"; NVAL=$2; shift 2 ;;
    --workers) need "$@"; WORKERS=$2; shift 2 ;;
    --cache) need "$@"; CACHE=$2; shift 2 ;;
    --dis) need "$@"; DIS=$2; shift 2 ;;
    --teacher-overlap) need "$@"; OVERLAP=$2; shift 2 ;;
    --teacher) need "$@"; TEACHER=$2; shift 2 ;;
    --teacher-epochs) need "$@"; TEACHER_EPOCHS=$2; shift 2 ;;
    --venv) need "$@"; VENV=$2; shift 2 ;;
    --python) need "$@"; PY=$2; shift 2 ;;
    --workdir) need "$@"; WORK=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
VPY="$VENV/bin/python"
export OMP_NUM_THREADS=1

if [ "$SETUP" = 1 ]; then
  bash "$REPO/bench/bench_vs_ultralytics.sh" --setup --venv "$VENV" --python "$PY"
  env -u PYTHONPATH "$VPY" -c "import psutil" 2>/dev/null || env -u PYTHONPATH "$VPY" -m pip install --no-deps psutil
  exit 0
fi
case "$PAIR" in
  v8) S_OURS=models/yolov8n.yaml; T_OURS=models/yolov8s.yaml; S_UL=yolov8n.yaml; T_UL=yolov8s.yaml
      [ -n "$TEACHER" ] || TEACHER=weights/teacher-shapes-yolov8s.pt ;;
  v11) S_OURS=models/yolo11n.yaml; T_OURS=models/yolo11s.yaml; S_UL=yolo11n.yaml; T_UL=yolo11s.yaml
      [ -n "$TEACHER" ] || TEACHER=weights/teacher-shapes-yolo11s.pt ;;
  *) echo "--pair is v8 or v11" >&2; exit 2 ;;
esac
case "$CACHE" in ram|none) ;; *) echo "--cache is ram or none" >&2; exit 2 ;; esac
# one thread per run on cpu: our teacher's forward one batch ahead on a second thread is off there by default
[ -n "$OVERLAP" ] || { [ "$DEVICE" = cpu ] && OVERLAP=off || OVERLAP=auto; }
cd "$REPO"
[ "$TEACHER" != train ] || TEACHER=""  # --teacher train: train one here (TEACHER_EPOCHS epochs on the copy)
for f in "$S_OURS" "$T_OURS" "$HYP" ${TEACHER:+"$TEACHER"}; do
  [ -f "$f" ] || { echo "ERROR: $f not found" >&2; exit 2; }
done
[ -n "$WORK" ] || WORK=/work/ulkd/$PAIR-e$EPOCHS-i$IMG-b$BATCH-n$NTRAIN
mkdir -p "$WORK/runs" "$WORK/teacher" "$WORK/ulcfg" "$WORK/ul_cwd"
WORK=$(cd "$WORK" && pwd); RUNS="$WORK/runs"
[ -z "$TEACHER" ] || TEACHER=$(cd "$(dirname "$TEACHER")" && pwd)/$(basename "$TEACHER")

summary() {
  "$PY" - "$WORK" "$EPOCHS" "$SEEDS" "$PAIR" <<'PYEOF'
import csv, re, statistics, sys
from pathlib import Path
work, epochs, seeds, pair = Path(sys.argv[1]), int(sys.argv[2]), [int(s) for s in sys.argv[3].split()], sys.argv[4]
COLS = {"ul": ("metrics/mAP50(B)", "metrics/mAP50-95(B)"), "ours": ("metrics/mAP_0.5", "metrics/mAP_0.5:0.95")}

def read(f):
    with open(f, newline="") as fh:
        rows = list(csv.reader(fh))
    names = [c.strip() for c in rows[0]]
    return names, [[float(x) for x in r] for r in rows[1:] if r]

def run(tool, kind, seed):
    d = work / "runs" / f"{tool}-{kind}-s{seed}"
    if not (d / "results.csv").is_file():
        return None
    names, rows = read(d / "results.csv")
    if not rows:
        return None
    i50, i95 = (names.index(c) for c in COLS[tool])
    best = max(rows, key=lambda r: 0.1 * r[i50] + 0.9 * r[i95])
    n = len({r[0] for r in rows})
    sec = None
    if tool == "ul":  # seconds since the process's epoch loop began: a resumed process starts again from 0
        log = work / "runs" / f"{d.name}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        resumed = {int(k) for k in re.findall(r"Resuming training .* from epoch (\d+) to", text)}
        e, t = [int(r[0]) for r in rows], [r[names.index("time")] for r in rows]
        # a process's rows: from its first (a resume epoch's last row, or an epoch not above the previous) on
        starts = [i for i in range(len(e)) if i == 0 or e[i] <= e[i - 1] or (e[i] in resumed and e[i] not in e[i + 1:])]
        ends = [j - 1 for j in starts[1:]] + [len(e) - 1]
        sec = sum(t[j] for j in ends) / len(e)
    else:
        log = work / "runs" / f"{d.name}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        done = [(int(a), float(b)) for a, b in re.findall(r"(\d+) epochs completed in ([\d.]+) hours", text)]
        if done and sum(h for _, h in done) > 0:  # 0.000 hours (under 1.8 s in all): too short to tell
            sec = 3600 * sum(h for _, h in done) / sum(k for k, _ in done)
    return best[i50], best[i95], n, sec

def fmt(xs, f="{:.3f}"):
    return " / ".join("-" if x is None else f.format(x) for x in xs)

def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None

label = {("ul", "plain"): "ultralytics plain", ("ul", "kd"): "ultralytics distill_model (sl2, dis)",
         ("ours", "plain"): "ours train.py", ("ours", "kd"): "ours train_kd.py (default recipe)"}
R = {(t, k, s): run(t, k, s) for t in ("ul", "ours") for k in ("plain", "kd") for s in seeds}
sd = " / ".join(f"s{s}" for s in seeds)
out = [f"pair {pair}, {epochs} epochs; seeds {sd}", "",
       f"| tool / run | mAP@0.5 ({sd}) | mean | mAP@0.5:0.95 ({sd}) | mean | s/epoch ({sd}) | mean | epochs |",
       "|---|---|---|---|---|---|---|---|"]
for (t, k), name in label.items():
    rs = [R[t, k, s] for s in seeds]
    col = lambda j: [None if r is None else r[j] for r in rs]
    m50, m95, sec = col(0), col(1), col(3)
    ep = "/".join("-" if r is None else str(r[2]) for r in rs)
    out.append(f"| {name} | {fmt(m50)} | {fmt([mean(m50)])} | {fmt(m95)} | {fmt([mean(m95)])} | "
               f"{fmt(sec, '{:.1f}')} | {fmt([mean(sec)], '{:.1f}')} | {ep} |")
out += ["", f"| tool | KD gain mAP@0.5 ({sd}) | mean | KD gain mAP@0.5:0.95 ({sd}) | mean | "
        "KD s/epoch / plain s/epoch |", "|---|---|---|---|---|---|"]
gain = {}
for t in ("ul", "ours"):
    g = [[None if (a := R[t, "kd", s]) is None or (b := R[t, "plain", s]) is None else a[j] - b[j] for s in seeds]
         for j in (0, 1)]
    tk, tp = mean([r[3] for s in seeds if (r := R[t, "kd", s])]), mean([r[3] for s in seeds if (r := R[t, "plain", s])])
    gain[t] = (mean(g[0]), mean(g[1]), tk)
    out.append(f"| {'ultralytics' if t == 'ul' else 'ours'} | {fmt(g[0], '{:+.3f}')} | {fmt([gain[t][0]], '{:+.3f}')} | "
               f"{fmt(g[1], '{:+.3f}')} | {fmt([gain[t][1]], '{:+.3f}')} | "
               f"{fmt([tk / tp if tk and tp else None], '{:.2f}')} |")
gu, go = gain["ul"], gain["ours"]
tr = go[2] / gu[2] if go[2] and gu[2] else None
if go[1] is None or gu[1] is None:
    gain_txt, gain_ok = "not both measured", None
elif gu[1] > 0:  # a ratio only means something over a positive gain
    gain_txt, gain_ok = f"ratio {go[1] / gu[1]:.2f}", go[1] >= 2 * gu[1]
else:  # their distillation did not help: any positive gain of ours is more than twice theirs
    gain_txt, gain_ok = f"theirs {gu[1]:+.3f} is not positive, ours {go[1]:+.3f}", go[1] > 0
time_ok = None if tr is None else tr <= 1
verdict = ("met" if gain_ok and time_ok else "not met" if gain_ok is False or time_ok is False else "undecided")
out += ["", f"Goal (issue 29 §4): our KD gain in mAP@0.5:0.95 at least twice ultralytics' ({gain_txt}) at no more "
        f"time per epoch (our KD s/epoch / theirs {fmt([tr], '{:.2f}')}): {verdict}."]
check = work / "teacher" / "check.txt"
if check.is_file():
    out += ["", "Teacher: " + check.read_text().strip().replace("\n", "; ")]
print("\n".join(out))
(work / "summary.md").write_text("\n".join(out) + "\n")
PYEOF
}
if [ "$SUMMARY_ONLY" = 1 ]; then summary; exit 0; fi

[ -x "$VPY" ] || bash "$REPO/bench/bench_vs_ultralytics.sh" --setup --venv "$VENV" --python "$PY"
# cache=ram makes ultralytics check free memory with psutil, which that setup does not install
env -u PYTHONPATH "$VPY" -c "import psutil" 2>/dev/null || env -u PYTHONPATH "$VPY" -m pip install --no-deps psutil
SETTINGS="pair=$PAIR epochs=$EPOCHS img=$IMG batch=$BATCH hyp=$HYP ntrain=$NTRAIN nval=$NVAL cache=$CACHE dis=$DIS teacher=${TEACHER:-trained:$TEACHER_EPOCHS}"
if [ -f "$WORK/settings.txt" ] && [ "$(cat "$WORK/settings.txt")" != "$SETTINGS" ]; then
  echo "ERROR: $WORK was made with other settings:" >&2; echo "  $(cat "$WORK/settings.txt")" >&2
  echo "now: $SETTINGS (use another --workdir)" >&2; exit 2
fi
echo "$SETTINGS" > "$WORK/settings.txt"
UL_ENV=(env -u PYTHONPATH YOLO_OFFLINE=true "YOLO_CONFIG_DIR=$WORK/ulcfg" WANDB_MODE=disabled OMP_NUM_THREADS=1)
UL_HELPER=("${UL_ENV[@]}" "$VPY" "$REPO/bench/ul_teacher.py")
[ -f "$WORK/ulcfg/Arial.ttf" ] || "$PY" -c "
import matplotlib, os, shutil, sys
shutil.copy(os.path.join(matplotlib.get_data_path(), 'fonts/ttf/DejaVuSans.ttf'), sys.argv[1])" "$WORK/ulcfg/Arial.ttf"
UL_VERSION=$(cd "$WORK/ul_cwd" && "${UL_ENV[@]}" "$VPY" -c 'import ultralytics; print(ultralytics.__version__)' | tail -n 1)
echo "== $(date -Is): pair $PAIR, $EPOCHS epochs, img $IMG, batch $BATCH, seeds $SEEDS, $JOBS at once, device $DEVICE," \
     "hyp $HYP, ultralytics $UL_VERSION, this repository $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), work $WORK"

# the data: the first NTRAIN / NVAL images of the shapes splits, one copy per tool
if [ ! -f "$WORK/.data_ok" ]; then
  read -r SRC_TRAIN SRC_VAL < <("$PY" -c "
from utils.data.config import check_dataset
d = check_dataset('data/shapes.yaml')
print(d['train'], d['val'])" | tail -n 1)
  NAMES=$("$PY" -c "import yaml; print(yaml.safe_load(open('data/shapes.yaml'))['names'])")
  copy_first() {  # src_images n(0 = all) dst split
    local lab="${1%/images/*}/labels/${1##*/images/}" f n=$2
    [ "$n" -gt 0 ] || n=1000000
    rm -rf "$3/images/$4" "$3/labels/$4"; mkdir -p "$3/images/$4" "$3/labels/$4"
    ls -1 "$1" | grep -Ei '\.(jpg|jpeg|png|bmp)$' | LC_ALL=C sort | sed -n "1,${n}p" | while IFS= read -r f; do
      cp "$1/$f" "$3/images/$4/"; [ ! -f "$lab/${f%.*}.txt" ] || cp "$lab/${f%.*}.txt" "$3/labels/$4/"
    done
  }
  for side in ul ours; do
    copy_first "$SRC_TRAIN" "$NTRAIN" "$WORK/data_$side" train
    copy_first "$SRC_VAL" "$NVAL" "$WORK/data_$side" val
    printf 'path: %s\ntrain: images/train\nval: images/val\nnc: 6\nnames: %s\n' "$WORK/data_$side" "$NAMES" > "$WORK/data_$side.yaml"
  done
  (cd "$WORK/ul_cwd" && "${UL_HELPER[@]}" prep --data "$WORK/data_ul.yaml" 2>&1 | grep "label cache") || true
  touch "$WORK/.data_ok"
fi
NT=$(ls "$WORK/data_ours/images/train" | wc -l); NV=$(ls "$WORK/data_ours/images/val" | wc -l)
NB=$(( (NT + BATCH - 1) / BATCH ))
echo "data: $NT train, $NV val images ($NB batches per epoch)"

# our hyp file's values as ultralytics arguments, where they differ from its defaults
UL_DEFAULTS="$("${UL_ENV[@]}" "$VPY" -c 'import ultralytics, os; print(os.path.join(os.path.dirname(ultralytics.__file__), "cfg/default.yaml"))' | tail -n 1)"
read -r -a UL_HYP < <("$PY" - "$HYP" "$UL_DEFAULTS" "$NB" <<'PYEOF'
import sys, yaml
ours, theirs, nb = yaml.safe_load(open(sys.argv[1])), yaml.safe_load(open(sys.argv[2])), int(sys.argv[3])
keys = ("lr0 lrf momentum weight_decay warmup_epochs warmup_momentum warmup_bias_lr box cls dfl hsv_h hsv_s hsv_v "
        "degrees translate scale shear perspective flipud fliplr mosaic mixup copy_paste close_mosaic nbs").split()
v = {k: ours[k] for k in keys if k in ours}
# ours warms up max(round(warmup_epochs * nb), warmup_min_iters [1000]) iterations, ultralytics round(warmup_epochs * nb)
if "warmup_epochs" in v:
    v["warmup_epochs"] = round(max(round(v["warmup_epochs"] * nb), int(ours.get("warmup_min_iters", 1000))) / nb, 4)
print(" ".join(f"{k}={x}" for k, x in v.items() if theirs.get(k) != x))
PYEOF
)
echo "hyp: ultralytics defaults except ${UL_HYP[*]:-nothing} (from $HYP; warmup in the same number of iterations)"
if [ "$DEVICE" = cpu ]; then OW=0; else OW=$WORKERS; fi  # ultralytics forces 0 dataloader workers on cpu
CACHE_OURS=(); CACHE_UL=False
[ "$CACHE" = none ] || { CACHE_OURS=(--cache ram); CACHE_UL=ram; }
COMMON=(--data "$WORK/data_ours.yaml" --weights '' --img "$IMG" --batch-size "$BATCH" --epochs "$EPOCHS"
        --workers "$OW" --hyp "$HYP" --device "$DEVICE" --project "$RUNS" --exist-ok "${CACHE_OURS[@]}")
UL_SET=(epochs="$EPOCHS" imgsz="$IMG" batch="$BATCH" workers="$OW" cache="$CACHE_UL" "${UL_HYP[@]}")
[ "$DEVICE" != cpu ] || UL_SET+=(amp=False)

rows() { if [ -f "$1" ]; then echo $(( $(wc -l < "$1") - 1 )); else echo 0; fi; }
finished() { [ "$(rows "$1/results.csv")" -ge "$2" ] && [ -f "$1/weights/best.pt" ]; }

# 1. the teacher, in both formats
TDIR="$WORK/teacher"
if [ -z "$TEACHER" ]; then  # --teacher train: train one here
  TRUN="$TDIR/ours-$(basename "$T_OURS" .yaml)"
  if ! finished "$TRUN" "$TEACHER_EPOCHS"; then
    echo "-- training the teacher: train.py --cfg $T_OURS, $TEACHER_EPOCHS epochs (log $TRUN.log)"
    if [ -f "$TRUN/weights/last.pt" ]; then
      env -u PYTHONPATH "$PY" train.py --resume "$TRUN/weights/last.pt" >> "$TRUN.log" 2>&1
    else
      env -u PYTHONPATH "$PY" train.py --cfg "$T_OURS" "${COMMON[@]}" --epochs "$TEACHER_EPOCHS" --project "$TDIR" \
        --name "$(basename "$TRUN")" --seed 0 > "$TRUN.log" 2>&1
    fi
  fi
  grep -E "epochs completed" "$TRUN.log" | tail -n 1 || true
  TEACHER="$TRUN/weights/best.pt"
fi
TUL="$TDIR/teacher_ul.pt"
if [ ! -f "$TUL" ] || [ "$TEACHER" -nt "$TUL" ] || [ ! -f "$TDIR/check.txt" ]; then
  echo "-- teacher $TEACHER -> ultralytics format ($T_UL)"
  "$PY" - "$TEACHER" "$TDIR" "$IMG" "$WORK/data_ours/images/val" <<'PYEOF'
import sys, glob, cv2, numpy as np, torch
from models.checkpoint import attempt_load, safe_torch_load
w, d, img, val = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ck = safe_torch_load(w)
m = ck.get("ema") or ck["model"]
torch.save({"state_dict": m.state_dict(), "names": list(m.names.values()) if isinstance(m.names, dict) else list(m.names),
            "nc": int(m.yaml["nc"])}, f"{d}/teacher_sd.pt")
f = sorted(glob.glob(f"{val}/*.jpg"))[0]  # one val image resized to img x img, RGB, [0, 1]
im = cv2.resize(cv2.imread(f)[:, :, ::-1], (img, img), interpolation=cv2.INTER_LINEAR)
x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float()[None] / 255
torch.save(x, f"{d}/x.pt")
with torch.no_grad():
    y = attempt_load(w, fuse=False)(x)
torch.save((y[0] if isinstance(y, (list, tuple)) else y).float(), f"{d}/y_ours.pt")
PYEOF
  (cd "$WORK/ul_cwd" && "${UL_HELPER[@]}" convert --state "$TDIR/teacher_sd.pt" --cfg "$T_UL" --out "$TUL" 2>&1 | tail -n 1)
  (cd "$WORK/ul_cwd" && "${UL_HELPER[@]}" forward --weights "$TUL" --input "$TDIR/x.pt" --out "$TDIR/y_ul.pt" 2>&1 | tail -n 1)
  DIFF=$("$PY" -c "
import sys, torch
a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
print(f'{(a - b).abs().max().item():.3g} (output {tuple(a.shape)}, class scores up to {a[:, 4:].max().item():.3f})')" \
    "$TDIR/y_ours.pt" "$TDIR/y_ul.pt")
  OV=$("$PY" val.py --weights "$TEACHER" --data "$WORK/data_ours.yaml" --img "$IMG" --batch-size 32 --iou-thres 0.7 \
       --device "$DEVICE" --workers 0 --project "$TDIR" --name val_ours --exist-ok 2>&1 | tee "$TDIR/val_ours.log" \
       | tr '\r' '\n' | awk '$1 == "all" && NF >= 7 { a = $(NF-1); b = $NF } END { print (a == "" ? "n/a n/a" : a " " b) }')
  UV=$(cd "$WORK/ul_cwd" && "${UL_HELPER[@]}" val --weights "$TUL" --data "$WORK/data_ul.yaml" --imgsz "$IMG" \
       --batch 32 --device "$DEVICE" --project "$TDIR" 2>&1 | tee "$TDIR/val_ul.log" | awk '$1 == "UL_VAL" { print $2, $3 }')
  {
    echo "$(basename "$TEACHER") as $T_UL: eval outputs on one $IMG px val image differ by at most $DIFF"
    echo "val mAP@0.5 / mAP@0.5:0.95 on $NV val images at $IMG px: ours val.py ${OV/ / \/ }, ultralytics val ${UV/ / \/ }"
  } > "$TDIR/check.txt"
fi
sed 's/^/teacher: /' "$TDIR/check.txt"

# 2. the students
run() {  # tool kind seed
  local name="$1-$2-s$3" dir="$RUNS/$1-$2-s$3" log="$RUNS/$1-$2-s$3.log" resume=""
  if finished "$dir" "$EPOCHS"; then return 0; fi
  if [ -f "$dir/weights/last.pt" ]; then resume=1; else rm -rf "$dir"; : > "$log"; fi
  echo "-- $(date +%T) $name${resume:+ (resuming)}"
  if [ "$1" = ul ]; then
    local kd=(); [ "$2" = plain ] || kd=(--distill "$TUL" --dis "$DIS")
    (cd "$WORK/ul_cwd" && "${UL_HELPER[@]}" train --model "$S_UL" --data "$WORK/data_ul.yaml" --project "$RUNS" \
      --name "$name" --device "$DEVICE" "${kd[@]}" ${resume:+--resume} --set seed="$3" "${UL_SET[@]}") >> "$log" 2>&1
  else
    local script=train.py kd=(); [ "$2" = plain ] || { script=train_kd.py; kd=(--teacher_weight "$TEACHER" --teacher_overlap "$OVERLAP"); }
    if [ -n "$resume" ]; then
      env -u PYTHONPATH "$PY" "$script" --resume "$dir/weights/last.pt" >> "$log" 2>&1
    else
      env -u PYTHONPATH "$PY" "$script" --cfg "$S_OURS" "${COMMON[@]}" --seed "$3" --name "$name" "${kd[@]}" >> "$log" 2>&1
    fi
  fi || echo "   $name failed (exit $?): see $log"
  echo "-- $(date +%T) $name done"
}
for seed in $SEEDS; do
  for r in "ul plain" "ul kd" "ours plain" "ours kd"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    run $r "$seed" &
  done
done
wait
echo
summary
