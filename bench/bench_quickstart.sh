#!/usr/bin/env bash
# The quick start's numbers with their spread (bench/RESULTS.md, "Quick start"): runs quickstart.sh once
# per seed, as a user would (default threads), each into runs/bench_quickstart/seedS/, then prints the
# best mAP@0.5 / mAP@0.5:0.95 of the plain and the distilled student per seed, their mean and range.
# Usage: bash bench/bench_quickstart.sh [seeds]          # default "0 1 2"
#        QS_EPOCHS=1 QS_IMG=64 bash bench/bench_quickstart.sh "0 1"    # a quick check of the script
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${1:-0 1 2}"
OUT=runs/bench_quickstart
mkdir -p "$OUT"
for s in $SEEDS; do
  rm -rf "$OUT/seed$s"
  start=$(date +%s)
  QS_SEED="$s" QS_PROJECT="$OUT/seed$s/train" bash quickstart.sh > "$OUT/seed$s.log" 2>&1 || {
    echo "quickstart.sh failed for seed $s, see $OUT/seed$s.log"; exit 1; }
  echo "seed $s: $(( $(date +%s) - start )) s"
done
python - "$OUT" $SEEDS <<'PY'
import statistics, sys
from pathlib import Path
sys.path.insert(0, ".")
from bench.summarize_runs import best_row

out, seeds = Path(sys.argv[1]), sys.argv[2:]
print("| student | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range |\n|---|" + "---|" * (len(seeds) + 2))
for name, run in (("plain yolov5n", "quickstart-baseline"), ("distilled yolov5n", "quickstart-kd")):
    vals = [best_row(out / f"seed{s}/train/{run}/results.csv")[:2] for s in seeds]
    cells = [f"{a:.3f} / {b:.3f}" for a, b in vals]
    a, b = [v[0] for v in vals], [v[1] for v in vals]
    print(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(a):.3f} / {statistics.mean(b):.3f} | "
          f"{min(a):.3f}-{max(a):.3f} / {min(b):.3f}-{max(b):.3f} |")
print("(best epoch of each run, mAP@0.5 / mAP@0.5:0.95)")
PY
