"""Reading and reporting a comparison folder of compare_kd.py (engine/compare.py runs it): each run's best
mAPs and term balance from its results.csv, whether it finished, the paired statistics and the verdicts,
summary.csv / summary.md and the pictures.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from utils.general import LOGGER
from utils.loggers import read_results_csv

M50, M5095 = "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"
DETECTION_TERMS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "train/dfl_loss")
PLAIN = "plain"
ONE_SEED_FLOOR = 0.01  # with one seed: a difference under 1 point mAP@0.5:0.95 is "no measurable effect"


# --------------------------------------------------------------------------------------------------
# statistics


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom: bisection on its CDF, the density
    integrated from 0 by Simpson's rule (exact to ~1e-6 for df >= 1 at p = 0.975)."""
    if not (0.5 < p < 1 and df >= 1):
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 4000) -> float:  # P(T <= x) for x >= 0
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Difference:
    """Paired differences recipe - plain over the seeds both finished (mAP fractions, not points)."""

    seeds: list[int]
    d50: list[float]
    d95: list[float]

    @property
    def n(self) -> int:
        return len(self.seeds)

    def interval(self, values: list[float]) -> tuple[float, float | None]:
        """(mean, half-width of the 95% t-interval; None with fewer than 2 seeds)."""
        mean = statistics.fmean(values)
        if len(values) < 2:
            return mean, None
        return mean, t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))

    def verdict(self) -> str:
        """One line starting with 'helps', 'no measurable effect' or 'hurts' (on mAP@0.5:0.95, in points)."""
        if not self.n:
            return "no measurable effect: no seed where both the plain and this student finished"
        mean, half = self.interval(self.d95)
        if half is None:
            word = ("helps" if mean >= ONE_SEED_FLOOR else "hurts" if mean <= -ONE_SEED_FLOOR
                    else "no measurable effect")
            return (f"{word}: {100 * mean:+.1f} mAP@0.5:0.95 on 1 seed (no interval with one seed: add seeds, "
                    f"e.g. --seeds 0 1 2, to measure the spread)")
        word = "helps" if mean - half > 0 else "hurts" if mean + half < 0 else "no measurable effect"
        sign = (lambda x: x < 0) if word == "hurts" else (lambda x: x > 0)
        agree = sum(sign(x) for x in self.d95)
        where = "below" if word == "hurts" else "above"
        hint = ""
        if word == "no measurable effect" and self.n == 2 and agree in (0, 2):
            hint = f" (two seeds agree, but with 2 the interval is {t_quantile(0.975, 1):.1f} standard errors wide: add a seed)"
        return (f"{word}: {100 * mean:+.1f} ± {100 * half:.1f} mAP@0.5:0.95, {agree} of {self.n} seeds "
                f"{where} plain{hint}")


def paired(plain: dict[int, tuple[float, float]], other: dict[int, tuple[float, float]]) -> Difference:
    """{seed: (mAP@0.5, mAP@0.5:0.95)} of the plain student and a recipe -> their paired differences."""
    seeds = sorted(set(plain) & set(other))
    return Difference(seeds, [other[s][0] - plain[s][0] for s in seeds], [other[s][1] - plain[s][1] for s in seeds])


# --------------------------------------------------------------------------------------------------
# reading runs


def best_row(csv_file: Path) -> tuple[float, float, int] | None:
    """(mAP@0.5, mAP@0.5:0.95, epochs done) of the best-fitness epoch (what best.pt holds: 0.1 mAP@0.5 +
    0.9 mAP@0.5:0.95), None without rows."""
    if not Path(csv_file).is_file():
        return None
    names, rows = read_results_csv(csv_file)
    if not rows or M50 not in names:
        return None
    i50, i95 = names.index(M50), names.index(M5095)
    best = max(rows, key=lambda r: 0.1 * r[i50] + 0.9 * r[i95])
    return best[i50], best[i95], len(rows)


def term_ratios(csv_file: Path) -> dict[str, tuple[float, float]]:
    """{KD term: (its logged value / the detection loss at the first epoch, the same at the last epoch)}:
    train/<name>_loss columns other than the detection ones (already weighted, as trained)."""
    names, rows = read_results_csv(csv_file)
    det = [names.index(k) for k in DETECTION_TERMS if k in names]
    if not rows or not det:
        return {}
    out = {}
    for k in names:
        if k.startswith("train/") and k.endswith("_loss") and k not in DETECTION_TERMS:
            i = names.index(k)
            first, last = ((r[i] / d if (d := sum(r[j] for j in det)) > 0 else float("nan")) for r in (rows[0], rows[-1]))
            out[k[len("train/"):-len("_loss")]] = (first, last)
    return out


def checkpoint_epoch(path: Path) -> int | None:
    """The 'epoch' a training checkpoint holds (-1 once training finished and it was stripped), None if it
    cannot be read (a file cut short by a kill)."""
    from models.checkpoint import safe_torch_load

    try:
        return int(safe_torch_load(path).get("epoch", -1))
    except Exception:  # a damaged last.pt: the run starts again (its results are not trusted)
        return None




@dataclass
class Run:
    recipe: str  # 'plain', 'default', a data/kd name or a recipe file's stem
    seed: int
    kd_config: str | None  # --kd_config value; None for plain and default

    @property
    def name(self) -> str:
        return f"{self.recipe}-s{self.seed}"

    @property
    def script(self) -> str:
        return "train.py" if self.recipe == PLAIN else "train_kd.py"


@dataclass
class Comparison:
    """What a comparison folder holds: its options (compare.yaml), its runs and their wall times (timing.yaml)."""

    folder: Path
    options: dict
    runs: list[Run]
    timing: dict = field(default_factory=dict)


def run_state(folder: Path) -> str:
    """'finished', 'interrupted' (a last.pt to resume from) or 'new'."""
    last = folder / "weights" / "last.pt"
    if not last.is_file():
        return "new"
    epoch = checkpoint_epoch(last)
    return "finished" if epoch == -1 else "interrupted" if epoch is not None else "new"



# --------------------------------------------------------------------------------------------------
# the report


def collect(plan: Comparison) -> dict[str, dict[int, dict]]:
    """{recipe: {seed: {'m50', 'm95', 'epochs', 'spe', 'finished', 'terms'}}} of the runs with results."""
    out: dict[str, dict[int, dict]] = {}
    for run in plan.runs:
        d = plan.folder / run.name
        best = best_row(d / "results.csv")
        if best is None:
            continue
        t = plan.timing.get(run.name, {})
        spe = t["seconds"] / t["epochs"] if t.get("epochs") else float("nan")
        out.setdefault(run.recipe, {})[run.seed] = {
            "m50": best[0], "m95": best[1], "epochs": best[2], "spe": spe,
            "finished": run_state(d) == "finished", "terms": term_ratios(d / "results.csv")}
    return out


def write_summary(plan: Comparison, warnings: list[str] = ()) -> tuple[Path, Path, str]:
    """summary.csv, summary.md and the pictures; returns (csv, md, the verdict lines)."""
    res = collect(plan)
    recipes = [PLAIN] + [r for r in dict.fromkeys(run.recipe for run in plan.runs) if r != PLAIN]
    f_csv = plan.folder / "summary.csv"
    with open(f_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recipe", "seed", "mAP_0.5", "mAP_0.5:0.95", "epochs", "seconds_per_epoch", "finished"])
        for r in recipes:
            for s, v in sorted(res.get(r, {}).items()):
                w.writerow([r, s, f"{v['m50']:.5f}", f"{v['m95']:.5f}", v["epochs"], f"{v['spe']:.1f}", v["finished"]])
    plain = {s: (v["m50"], v["m95"]) for s, v in res.get(PLAIN, {}).items() if v["finished"]}
    spe_plain = _mean([v["spe"] for v in res.get(PLAIN, {}).values()])
    o = plan.options
    lines = [f"# Does distillation help? {plan.folder}", "",
             f"Student {o['cfg'] or o['weights']} (weights: {o['weights'] or 'none, from scratch'}), teacher "
             f"{o['teacher_weight']}, data {o['data']}, {o['epochs']} epochs at {o['img']} px, seeds "
             f"{' '.join(map(str, o['seeds']))}" + (f", flags: {' '.join(o['flags'] + o['kd_flags'])}"
                                                    if o['flags'] or o['kd_flags'] else "") + ".", ""]
    lines += [f"Warning: {w}" for w in warnings] + ([""] if warnings else [])
    verdicts = []
    lines += ["| student | seeds done | mAP@0.5 mean | mAP@0.5:0.95 mean | difference to plain per seed "
              "(mAP@0.5:0.95, points) | mean difference, 95% interval | verdict | time per epoch vs plain |",
              "|---|---|---|---|---|---|---|---|"]
    diffs = {}
    for r in recipes:
        done = {s: v for s, v in res.get(r, {}).items() if v["finished"]}
        m50 = _mean([v["m50"] for v in done.values()])
        m95 = _mean([v["m95"] for v in done.values()])
        if r == PLAIN:
            lines.append(f"| plain (train.py) | {len(done)}/{len(o['seeds'])} | {m50:.3f} | {m95:.3f} | | | | 1.00 |")
            continue
        d = paired(plain, {s: (v["m50"], v["m95"]) for s, v in done.items()})
        diffs[r] = d
        per_seed = " ".join(f"s{s}: {100 * x:+.1f}" for s, x in zip(d.seeds, d.d95))
        if d.n:
            mean, half = d.interval(d.d95)
            ci = f"{100 * mean:+.1f} ± {100 * half:.1f}" if half is not None else f"{100 * mean:+.1f} (1 seed)"
        else:
            ci = "-"
        verdict = d.verdict()
        verdicts.append(f"{r}: {verdict}")
        rel = _mean([v["spe"] for v in res.get(r, {}).values()]) / spe_plain
        lines.append(f"| {r} | {len(done)}/{len(o['seeds'])} | {m50:.3f} | {m95:.3f} | {per_seed} | {ci} | "
                     f"{verdict} | {rel:.2f} |")
    lines += ["", "Verdicts: `helps` / `hurts` when the 95% t-interval of the paired difference (recipe - plain, "
              "same seed) over the seeds lies above / below 0, `no measurable effect` otherwise; with one seed "
              "the sign, under 1 point `no measurable effect`. Best epoch of each run (v6.0 fitness: 0.1 mAP@0.5 "
              "+ 0.9 mAP@0.5:0.95). Time per epoch: wall time of the runs (start and validation included) "
              "over their epochs.", ""]
    lines += ["## Verdicts", "", *[f"- {v}" for v in verdicts], ""]
    term_lines = []
    for r in recipes[1:]:
        per = [v["terms"] for v in res.get(r, {}).values() if v["terms"]]
        for term in dict.fromkeys(t for p in per for t in p):
            vals = [p[term] for p in per if term in p]
            term_lines.append(f"| {r} | {term} | {_mean([v[0] for v in vals]):.3g} | {_mean([v[1] for v in vals]):.3g} |")
    if term_lines:
        lines += ["## Each distillation term against the detection loss", "",
                  "The logged term (weighted, as trained) over the detection loss of the same epoch, mean over "
                  "the seeds; a term many times the detection loss is what the student's gradient is mostly "
                  "spent on.", "", "| recipe | term | first epoch | last epoch |", "|---|---|---|---|", *term_lines, ""]
    pictures = _pictures(plan, res, diffs)
    if pictures:
        lines += ["## Pictures", "", *[f"- `{p.name}`" for p in pictures], ""]
    unfinished = [run.name for run in plan.runs if not res.get(run.recipe, {}).get(run.seed, {}).get("finished")]
    if unfinished:
        lines += [f"Unfinished runs (left out of the means): {', '.join(unfinished)}; run the same command again "
                  "to finish them.", ""]
    f_md = plan.folder / "summary.md"
    f_md.write_text("\n".join(lines))
    return f_csv, f_md, "\n".join(verdicts)


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


def _pictures(plan: Comparison, res: dict, diffs: dict[str, Difference]) -> list[Path]:
    """curves.png (every run, plot_curves.py's panels: utils/plots.py) and differences.png (per recipe: each seed's
    difference to plain and the mean with its 95% interval)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pictures are optional; the tables are the answer
        LOGGER.info("matplotlib is not installed: no pictures")
        return []
    from utils.run_curves import load_runs, plot_runs

    out = []
    csvs = [plan.folder / run.name / "results.csv" for run in plan.runs]
    names = [run.name for run, c in zip(plan.runs, csvs) if c.is_file()]
    if names:
        out.append(plot_runs(load_runs([str(plan.folder / n) for n in names], names), plan.folder / "curves.png"))
    if any(d.n for d in diffs.values()):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.6 * len(diffs) + 2.5, 3.8))
        for i, (r, d) in enumerate(diffs.items()):
            if not d.n:
                continue
            mean, half = d.interval(d.d95)
            ax.bar(i, 100 * mean, color="C0" if mean >= 0 else "C3", alpha=0.6)
            if half is not None:
                ax.errorbar(i, 100 * mean, yerr=100 * half, color="k", capsize=6)
            ax.plot([i] * d.n, [100 * x for x in d.d95], "k.", markersize=7)
        ax.axhline(0, color="k", linewidth=0.8)
        ax.set_xticks(range(len(diffs)), list(diffs), rotation=20)
        ax.set_ylabel("mAP@0.5:0.95 - plain (points)")
        ax.set_title("distilled - plain, per seed (dots), mean and 95% interval")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(plan.folder / "differences.png", dpi=120)
        plt.close(fig)
        out.append(plan.folder / "differences.png")
    return out


