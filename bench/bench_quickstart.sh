#!/usr/bin/env bash
# The quick start's time and numbers with their spread (bench/RESULTS.md, "Quick start"): runs quickstart.sh
# once per seed as a user would (default threads, QS_* overrides passed through), each into
# runs/bench_quickstart/seedS-..., timing each run, then prints per seed the wall time and the best
# mAP@0.5 / mAP@0.5:0.95 of the plain and the distilled student, their mean and range.
# Usage: bash bench/bench_quickstart.sh [seeds]                # default "0 1 2"
#        QS_EPOCHS=1 QS_IMG=64 bash bench/bench_quickstart.sh "0 1"    # a quick check of the script
#        BENCH_INSTALL=1 bash bench/bench_quickstart.sh        # also time the README's install in a new venv
#        DNNL_MAX_CPU_ISA=AVX2 QS_BF16=0 bash bench/bench_quickstart.sh   # an AVX2-only CPU on an AVX-512 one
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${1:-0 1 2}"
OUT=runs/bench_quickstart
mkdir -p "$OUT"
lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
if [ "${BENCH_INSTALL:-0}" = 1 ]; then
  venv=$(mktemp -d)
  start=$(date +%s)
  python -m venv "$venv" && "$venv/bin/pip" install -q torch==2.13.0 -r requirements.txt
  echo "install (python -m venv + pip install torch==2.13.0 -r requirements.txt): $(( $(date +%s) - start )) s"
  rm -rf "$venv"
fi
for s in $SEEDS; do
  rm -rf "$OUT/p$s"
  start=$(date +%s)
  QS_SEED="$s" QS_PROJECT="$OUT/p$s" bash quickstart.sh > "$OUT/seed$s.log" 2>&1 || {
    echo "quickstart.sh failed for seed $s, see $OUT/seed$s.log"; exit 1; }
  echo "seed $s: quickstart.sh $(( $(date +%s) - start )) s"
done
python - "$OUT" $SEEDS <<'PY'
import statistics, sys
from pathlib import Path
sys.path.insert(0, ".")
from engine.compare_report import best_row

out, seeds = Path(sys.argv[1]), sys.argv[2:]
print("| student | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range |\n|---|" + "---|" * (len(seeds) + 2))
for name, run in (("plain yolov5n", "plain"), ("distilled yolov5n", "default")):
    vals = [best_row(next((out / f"p{s}").glob(f"*/{run}-s{s}/results.csv")))[:2] for s in seeds]
    cells = [f"{a:.3f} / {b:.3f}" for a, b in vals]
    a, b = [v[0] for v in vals], [v[1] for v in vals]
    print(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(a):.3f} / {statistics.mean(b):.3f} | "
          f"{min(a):.3f}-{max(a):.3f} / {min(b):.3f}-{max(b):.3f} |")
print("(best epoch of each run, mAP@0.5 / mAP@0.5:0.95)")
PY
