#!/usr/bin/env python
"""Choose the kd_loss weight of each method of examples/distill_digits.py on a validation split.

Trains on the example's training images and scores on the rest of the non-test 70% (the test set is
never read), seeds 100-102 (the example reports seeds 0...), grid {0.1, 0.3, 1, 3, 10}; prints the
validation accuracy of every weight and the best per method, to copy into distill_digits.WEIGHTS.

    OMP_NUM_THREADS=1 python bench/bench_digits.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

import distill_digits as D

GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


def main(argv=None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--train-size", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    opt = p.parse_args(argv)
    t0 = time.perf_counter()
    base = D.run(opt.epochs, opt.seeds, opt.train_size, methods=(), out=lambda *a: None, validation=True)
    alone = statistics.mean(a for a, _ in base["student alone"])
    print(f"validation accuracy, student alone {100 * alone:.2f} %, teacher "
          f"{100 * statistics.mean(a for a, _ in base['teacher']):.2f} %")
    best = {}
    for method in D.METHODS:
        scores = {}
        for w in GRID:
            rows = D.run(opt.epochs, opt.seeds, opt.train_size, methods=(method,), out=lambda *a: None,
                         validation=True, weights={method: w})
            scores[w] = statistics.mean(a for a, _ in rows[method])
        best[method] = max(scores, key=scores.get)
        print(f"{method:>10}: " + "  ".join(f"w={w:g} {100 * s:.2f}" for w, s in scores.items()) +
              f"  -> {best[method]:g}", flush=True)
    print(f"WEIGHTS = {best}  ({time.perf_counter() - t0:.0f} s)")
    return best


if __name__ == "__main__":
    main()
