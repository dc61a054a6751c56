#!/usr/bin/env python
"""Table of a folder of runs named METHOD-sSEED (bench/compare_kd_methods.sh): per method, mAP@0.5 and
mAP@0.5:0.95 of each seed's best epoch (the epoch best.pt holds: highest fitness 0.1 mAP@0.5 + 0.9
mAP@0.5:0.95), their mean ± half the range over seeds, and the epochs done.

Usage:
    python bench/summarize_runs.py runs/compare
    python bench/summarize_runs.py bench/results/compare_kd_methods   # the recorded CSVs (METHOD-sSEED.csv)
    python bench/summarize_runs.py runs/compare runs/compare_b         # several folders: one table
    python bench/summarize_runs.py runs/compare --order baseline kl_only card imitation cwd mse pkd scorel2
    python bench/summarize_runs.py runs/compare --balance      # + each KD term / the detection loss

--balance adds a second table: each distillation term's logged value (train/<name>_loss, already weighted)
divided by the detection loss (the sum of train/box_loss, obj_loss, cls_loss, dfl_loss) of the same epoch,
at the first and the last epoch, mean over seeds. A term many times the detection loss is what the
student's gradient is mostly spent on.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from engine.compare_report import best_row, term_ratios


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, nargs="+", help="folders of METHOD-sSEED/results.csv or METHOD-sSEED.csv")
    p.add_argument("--order", nargs="*", default=["baseline", "kl_only", "card", "imitation", "cwd", "mse", "pkd",
                                                  "scorel2"])
    p.add_argument("--balance", action="store_true", help="also tabulate each KD term / the detection loss")
    opt = p.parse_args(argv)
    runs = defaultdict(dict)
    ratios = defaultdict(list)
    csvs = [c for f in opt.folder for c in sorted(f.glob("*/results.csv")) + sorted(f.glob("*-s*.csv"))]
    for csv in csvs:
        m = re.fullmatch(r"(.+)-s(\d+)", csv.parent.name if csv.name == "results.csv" else csv.stem)
        r = best_row(csv)
        if m and r:
            runs[m.group(1)][int(m.group(2))] = r
            ratios[m.group(1)].append(term_ratios(csv))
    if not runs:
        sys.exit(f"no METHOD-sSEED/results.csv or METHOD-sSEED.csv under {' '.join(map(str, opt.folder))}")
    order = [k for k in opt.order if k in runs] + sorted(k for k in runs if k not in opt.order)
    print("| method | seeds | epochs | mAP@0.5 per seed | mAP@0.5 mean ± spread | mAP@0.5:0.95 per seed | "
          "mAP@0.5:0.95 mean ± spread |\n|---|---|---|---|---|---|---|")
    for k in order:
        seeds = sorted(runs[k])
        a = [runs[k][s][0] for s in seeds]
        b = [runs[k][s][1] for s in seeds]
        ep = sorted({runs[k][s][2] for s in seeds})
        print(f"| {k} | {','.join(map(str, seeds))} | {'/'.join(map(str, ep))} | {' '.join(f'{x:.3f}' for x in a)} | "
              f"{statistics.mean(a):.3f} ± {(max(a) - min(a)) / 2:.3f} | {' '.join(f'{x:.3f}' for x in b)} | "
              f"{statistics.mean(b):.3f} ± {(max(b) - min(b)) / 2:.3f} |")
    print("(± is half the range over seeds)")
    if opt.balance:
        print("\n| method | term | term / detection loss, first epoch | last epoch |\n|---|---|---|---|")
        for k in order:
            for term in dict.fromkeys(t for r in ratios[k] for t in r):
                vals = [r[term] for r in ratios[k] if term in r]
                print(f"| {k} | {term} | {statistics.mean(v[0] for v in vals):.3g} | "
                      f"{statistics.mean(v[1] for v in vals):.3g} |")


if __name__ == "__main__":
    main()
