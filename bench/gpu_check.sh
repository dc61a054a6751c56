#!/usr/bin/env bash
# The CUDA checks of issue 15 §3 in one call on a GPU machine (bench/RESULTS.md, "CUDA path"):
#   1. the CUDA tests (tests/test_cuda.py, the CUDA loss test),
#   2. bench/bench_cuda.py: AMP step images/s at 640, plain and KD (n<-s, s<-m), teacher fp32/fp16,
#      channels_last, host syncs per step, KD-loss change of a fp16 teacher,
#   3. whole-process train.py and train_kd.py at 640 on the shapes data (2 epochs each, timed),
#   4. the public YOLOv5 (pip 7.0.14) against this repository at 640 (bench/bench_vs_yolov5.sh), when its
#      wheels are carried in .whl (bash bench/fetch_yolov5_wheels.sh here first; run's carry: [".whl"]).
# Usage: bash bench/gpu_check.sh [out_dir]      (logs go to out_dir, default runs/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-runs/gpu_check}"; mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,temperature.gpu --format=csv | tee "$OUT_DIR/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT_DIR/gpu.txt"
$PY -c "from utils.data.config import check_dataset; check_dataset('data/shapes.yaml')" > /dev/null

echo "== tests"
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py "tests/test_loss.py::test_cuda_matches_cpu" 2>&1 | tail -15 | tee "$OUT_DIR/pytest_cuda.txt"

echo "== bench_cuda"
$PY bench/bench_cuda.py --img 640 --batch 64 2>&1 | tee "$OUT_DIR/bench_cuda.txt"

echo "== whole process, 640 px, batch 64, 2 epochs of 1000 images"
COMMON=(--data data/shapes.yaml --cfg models/yolov5n.yaml --weights '' --img 640 --epochs 2 --batch-size 64
        --workers 8 --cache ram --device 0 --project "$OUT_DIR/runs" --exist-ok --seed 0)
s=$(date +%s.%N)
$PY train.py "${COMMON[@]}" --name plain > "$OUT_DIR/train_plain.log" 2>&1; echo "train.py rc=$?"
m=$(date +%s.%N)
$PY train_kd.py "${COMMON[@]}" --name kd --teacher_weight weights/teacher-shapes-yolov5s.pt > "$OUT_DIR/train_kd.log" 2>&1
echo "train_kd.py rc=$?"
e=$(date +%s.%N)
$PY -c "print(f'wall: train.py {$m - $s:.1f} s, train_kd.py {$e - $m:.1f} s')" | tee "$OUT_DIR/wall.txt"
for f in "$OUT_DIR"/train_plain.log "$OUT_DIR"/train_kd.log; do  # the last progress line of each epoch
  echo "-- $f"; tr '\r' '\n' < "$f" | grep -E "^ +[0-9]+/[0-9]+ .*100%" | tail -2
  grep -E "epochs completed|^ +all " "$f" | tail -3
done | tee -a "$OUT_DIR/wall.txt"

# 4. the public YOLOv5 side by side on the GPU, when its wheels were carried (the machine has no network):
#    here `bash bench/fetch_yolov5_wheels.sh .whl`, then run this script with carry [".whl"]
if ls .whl/yolov5-*.whl > /dev/null 2>&1; then
  echo "== public YOLOv5 7.0.14 against this repository, GPU 0, 640 px, batch 64, one epoch of 800 images"
  bash bench/bench_vs_yolov5.sh --setup --site /tmp/yv5site --wheels .whl 2>&1 | tail -n 3
  bash bench/bench_vs_yolov5.sh --site /tmp/yv5site --device 0 --img 640 --batch-size 64 --val-batch-size 64 \
    --workers 8 --workdir /tmp/bench_vs_yolov5 2>&1 | tee "$OUT_DIR/vs_yolov5.txt" | tail -n 12
else
  echo "== public YOLOv5: skipped (no .whl/yolov5-*.whl: run bash bench/fetch_yolov5_wheels.sh here and carry .whl)"
fi
