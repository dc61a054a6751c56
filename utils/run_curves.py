"""Training runs side by side (plot_curves.py, compare_kd.py): each run's results.csv read, one picture with
their metric and loss curves, and a text summary of their best epochs. Matplotlib through utils.plots.mpl
(lazy, Agg backend).
"""

from __future__ import annotations

import math
from pathlib import Path

from utils.general import UserError
from utils.plots import mpl

METRICS = [("metrics/mAP_0.5", "mAP@0.5"), ("metrics/mAP_0.5:0.95", "mAP@0.5:0.95"),
           ("metrics/precision", "precision"), ("metrics/recall", "recall")]


def resolve_csv(run: str | Path) -> Path:
    """A run folder or a results.csv path -> the results.csv path (clear error if absent)."""
    p = Path(run)
    f = p / "results.csv" if p.is_dir() else p
    if not f.is_file():
        where = f"folder {p} has no results.csv" if p.is_dir() else f"file {p} does not exist"
        raise UserError(f"plot_curves: {where}; pass run folders (runs/train/exp) or results.csv files")
    return f


def run_label(csv_file: Path) -> str:
    return csv_file.parent.name if csv_file.name == "results.csv" else csv_file.stem


def load_runs(runs: list[str], labels: list[str] | None = None) -> list[tuple[str, dict[str, list[float]]]]:
    """[(label, {column: values})] with padded column names stripped."""
    from utils.loggers import read_results_csv

    if labels and len(labels) != len(runs):
        raise UserError(f"plot_curves: {len(labels)} --labels for {len(runs)} runs; give one label per run")
    out = []
    for k, run in enumerate(runs):
        f = resolve_csv(run)
        names, rows = read_results_csv(f)
        if "epoch" not in names:
            raise UserError(f"plot_curves: {f} is not a YOLOv5 results.csv (no 'epoch' column)")
        cols = {n: [r[j] for r in rows] for j, n in enumerate(names)}
        out.append((labels[k] if labels else run_label(f), cols))
    return out


def loss_columns(runs: list[tuple[str, dict]]) -> list[str]:
    """Every loss column found in any run, v6.0 ones first, in first-seen order."""
    seen: list[str] = []
    for _, cols in runs:
        for n in cols:
            if n.endswith("_loss") and n not in seen:
                seen.append(n)
    return seen


def plot_runs(runs: list[tuple[str, dict]], out: Path) -> Path:
    """One PNG: mAP, precision, recall and every loss column, one line per run."""
    plt = mpl()
    panels = METRICS + [(c, c) for c in loss_columns(runs)]
    ncol = 4
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.4 * nrow), squeeze=False)
    for ax, (col, title) in zip(axes.flat, panels):
        for k, (label, cols) in enumerate(runs):
            if col in cols and len(cols[col]):  # fixed colour per run, also in panels some runs lack
                ax.plot(cols["epoch"], cols[col], marker=".", linewidth=1.5, markersize=4, label=label,
                        color=f"C{k % 10}")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(len(runs), 6), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def summary(runs: list[tuple[str, dict]]) -> str:
    """Best mAP of each run (the epoch with the highest v6.0 fitness)."""
    lines = [f"{'run':>20s} {'epochs':>7s} {'best mAP@.5':>12s} {'best mAP@.5:.95':>16s}"]
    for label, cols in runs:
        m50, m = cols.get("metrics/mAP_0.5", []), cols.get("metrics/mAP_0.5:0.95", [])
        if not m:
            lines.append(f"{label:>20s} {0:7d} {'-':>12s} {'-':>16s}")
            continue
        j = max(range(len(m)), key=lambda i: 0.1 * m50[i] + 0.9 * m[i])
        lines.append(f"{label:>20s} {len(m):7d} {m50[j]:12.4f} {m[j]:16.4f}")
    return "\n".join(lines)
