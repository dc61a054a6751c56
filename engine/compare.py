"""compare_kd.py: does distillation help on this data? Plain and distilled students side by side.

One comparison folder (runs/compare/exp, exp2, ...) holds an ordinary run folder per student and seed:
`plain-s0` (train.py), `<recipe>-s0` (train_kd.py; `default` = train_kd.py without --kd_config), all on the
same schedule and flags. Each run is a subprocess, so a comparison killed at any point continues when the
same command is given again: a finished run (its last.pt stripped, epoch -1) is kept, an interrupted one
resumes from its last.pt, one killed before its first checkpoint starts again. compare.yaml records the
options; a folder made with other options is never reused.

The answer, in summary.md (and summary.csv, one row per run): per recipe the paired difference to the plain
student on each seed, the mean difference with a 95% t-interval over the seeds, and a verdict on
mAP@0.5:0.95: `helps` when the interval lies above 0, `hurts` when it lies below, `no measurable effect`
otherwise. With one seed there is no interval: the verdict is the sign of the difference, `no measurable
effect` under 1 point, and the summary says to add seeds.
"""

from __future__ import annotations

import csv
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from utils.general import LOGGER, ROOT, UserError, yaml_load
from utils.loggers import read_results_csv

M50, M5095 = "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"
DETECTION_TERMS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "train/dfl_loss")
PLAIN = "plain"
KD_DIR = ROOT / "data" / "kd"
ONE_SEED_FLOOR = 0.01  # with one seed: a difference under 1 point mAP@0.5:0.95 is "no measurable effect"
# flags compare_kd.py sets for every run itself: refused among the pass-through flags
MANAGED = {"--project": "the comparison folder is --project/--name", "--name": "the runs are named RECIPE-sSEED",
           "--exist-ok": "give --exist-ok to compare_kd.py", "--seed": "use --seeds", "--resume": "run the same "
           "compare_kd.py command again: it resumes every unfinished run", "--kd_config": "use --recipes",
           "--kd-config": "use --recipes", "--local_rank": "use --nproc_per_node",
           "--t_weights": "give the teacher with --teacher_weight (train.py would distil the plain student)",
           "--t-weights": "give the teacher with --teacher_weight (train.py would distil the plain student)",
           "--dist_loss": "use train_kd.py's --kd_loss_selected (train.py would distil the plain student)",
           "--dist-loss": "use train_kd.py's --kd_loss_selected (train.py would distil the plain student)",
           "--distill_ratio": "use train_kd.py's --alpha (train.py would distil the plain student)",
           "--distill-ratio": "use train_kd.py's --alpha (train.py would distil the plain student)"}


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


# --------------------------------------------------------------------------------------------------
# the plan


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
class Plan:
    folder: Path
    options: dict  # what compare.yaml records
    runs: list[Run]
    common: list[str]  # flags of every run
    kd_only: list[str]  # flags only train_kd.py takes
    teacher: str
    nproc: int = 1
    jobs: int = 1
    timing: dict = field(default_factory=dict)


def known_recipes() -> list[str]:
    return ["default", *sorted(p.stem for p in KD_DIR.glob("*.yaml"))]


def resolve_recipe(name: str) -> tuple[str, str | None]:
    """--recipes entry -> (label, --kd_config value or None for train_kd.py's default)."""
    if name == "default":
        return name, None
    if (KD_DIR / f"{name}.yaml").is_file():
        return name, name
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        if p.stem in (PLAIN, "default") or (KD_DIR / f"{p.stem}.yaml").is_file():
            raise UserError(f"compare_kd.py: --recipes {name}: its name '{p.stem}' is taken by a built-in recipe; rename the file")
        return p.stem, str(p.resolve())
    raise UserError(f"compare_kd.py: --recipes {name}: not a recipe; known: {', '.join(known_recipes())}, or a path to a "
                    "kd config .yaml")


def split_flags(tokens: list[str]) -> list[list[str]]:
    """['--a', '1', '--b', '--c', 'x', 'y'] -> [['--a', '1'], ['--b'], ['--c', 'x', 'y']] (a negative number
    is a value, not a flag)."""
    groups: list[list[str]] = []
    for tok in tokens:
        is_flag = tok.startswith("-") and len(tok) > 1 and not _is_number(tok)
        if is_flag:
            groups.append([tok])
        elif groups:
            groups[-1].append(tok)
        else:
            raise UserError(f"compare_kd.py: unexpected argument {tok!r}; flags start with --")
    return groups


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def route_flags(extra: list[str]) -> tuple[list[str], list[str]]:
    """Pass-through flags -> (every run's, train_kd.py-only). Unknown and managed flags are refused by name."""
    from engine.cli import kd_parser, train_parser

    train_opts = set(train_parser()._option_string_actions)
    parser = kd_parser()
    kd_opts = set(parser._option_string_actions)
    common, kd_only = [], []
    for group in split_flags(extra):
        flag = group[0].split("=", 1)[0]
        if flag in MANAGED:
            raise UserError(f"compare_kd.py: {flag} is set by compare_kd.py ({MANAGED[flag]})")
        if flag in ("-h", "--help"):
            continue
        if flag in train_opts:
            common += group
        elif flag in kd_opts:
            kd_only += group
        else:
            raise UserError(f"compare_kd.py: unknown flag {flag}; it takes its own flags and any train.py or "
                            "train_kd.py flag (python train_kd.py --help)")
        # validate the value now, not after the plain runs trained
        try:
            parser.parse_args(group)
        except SystemExit:
            raise UserError(f"compare_kd.py: {' '.join(group)}: invalid value for {flag} "
                            "(see python train_kd.py --help)") from None
    return common, kd_only


def check_inputs(opt) -> tuple[dict, list[str]]:
    """The data's class names and the teacher's; UserError naming the flag or file on bad input. Returns
    (data dict, warnings)."""
    from models.checkpoint import attempt_load
    from utils.data.config import check_dataset

    if not opt.cfg and not opt.weights:
        raise UserError("compare_kd.py: give the student with --cfg (e.g. models/yolov5n.yaml) and/or --weights")
    for flag, value in (("--data", opt.data), ("--cfg", opt.cfg), ("--weights", opt.weights)):
        if value and not Path(value).exists() and not (flag == "--cfg" and (ROOT / "models" / value).is_file()):
            raise UserError(f"compare_kd.py: {flag} {value} not found")
    if not opt.teacher_weight:
        raise UserError("compare_kd.py: --teacher_weight is required (the trained teacher checkpoint)")
    from engine.kd import check_teacher_path  # train_kd.py's check: a folder names its checkpoints

    try:
        check_teacher_path(opt.teacher_weight)
    except UserError as e:
        raise UserError(f"compare_kd.py: {e}") from None
    if len(set(opt.seeds)) != len(opt.seeds):
        raise UserError(f"compare_kd.py: --seeds {' '.join(map(str, opt.seeds))} repeats a seed; give each once")
    if len(set(opt.recipes)) != len(opt.recipes):
        raise UserError(f"compare_kd.py: --recipes {' '.join(opt.recipes)} repeats a recipe; give each once")
    if PLAIN in opt.recipes:
        raise UserError("compare_kd.py: --recipes: the plain student is always trained; list the distillation "
                        f"recipes only ({', '.join(known_recipes())})")
    if opt.epochs < 1:
        raise UserError(f"compare_kd.py: --epochs {opt.epochs}: train at least 1 epoch")
    data = check_dataset(opt.data)
    teacher = attempt_load(opt.teacher_weight, map_location="cpu", fuse=False)
    t_names = teacher.names.values() if isinstance(teacher.names, dict) else teacher.names
    t_names, d_names = [str(n) for n in t_names], [str(n) for n in data["names"]]
    if len(t_names) != len(d_names):
        raise UserError(f"compare_kd.py: --teacher_weight {opt.teacher_weight} predicts {len(t_names)} classes "
                        f"({', '.join(t_names[:8])}{', ...' if len(t_names) > 8 else ''}) but --data {opt.data} "
                        f"has {len(d_names)} ({', '.join(d_names[:8])}{', ...' if len(d_names) > 8 else ''}); "
                        "train or fine-tune the teacher on this data first")
    warnings = []
    differ = [i for i, (a, b) in enumerate(zip(t_names, d_names)) if a.strip().lower() != b.strip().lower()]
    if differ:
        i = differ[0]
        warnings.append(f"the teacher's class names differ from the data's at {len(differ)} of {len(d_names)} "
                        f"indices (first: {i}: teacher '{t_names[i]}', data '{d_names[i]}'): output distillation "
                        "pairs classes by index; check that the teacher was trained on this data")
    return data, warnings


def options_of(opt, common: list[str], kd_only: list[str]) -> dict:
    """What identifies a comparison (compare.yaml): a folder made with other values is not reused."""
    return {"data": str(opt.data), "cfg": str(opt.cfg), "weights": str(opt.weights),
            "teacher_weight": str(opt.teacher_weight), "img": int(opt.img), "epochs": int(opt.epochs),
            "seeds": [int(s) for s in opt.seeds], "recipes": list(opt.recipes), "flags": list(common),
            "kd_flags": list(kd_only), "nproc_per_node": int(opt.nproc_per_node)}


OPTION_FLAGS = {"data": "--data", "cfg": "--cfg", "weights": "--weights", "teacher_weight": "--teacher_weight",
                "img": "--img", "epochs": "--epochs", "seeds": "--seeds", "recipes": "--recipes",
                "flags": "the train.py flags", "kd_flags": "the train_kd.py flags",
                "nproc_per_node": "--nproc_per_node"}


def first_difference(a: dict, b: dict) -> str | None:
    for k in OPTION_FLAGS:
        if a.get(k) != b.get(k):
            return f"{OPTION_FLAGS[k]}: the folder was made with '{_show(a.get(k))}', now '{_show(b.get(k))}'"
    return None


def _show(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


def comparison_folder(project: str, name: str, exist_ok: bool, options: dict) -> tuple[Path, bool]:
    """(folder, reused): the first of project/name, name2, ... made with these options (continued), else the
    first free one; with exist_ok project/name itself, refused if it was made with other options."""
    base = Path(project) / name

    def recorded(folder: Path) -> dict | None:
        f = folder / "compare.yaml"
        return yaml_load(f) if f.is_file() else None

    if exist_ok:
        if base.exists():
            old = recorded(base)
            if old is None and any(base.iterdir()):
                raise UserError(f"compare_kd.py: {base} exists and is not a comparison folder (no compare.yaml); "
                                "choose another --project/--name")
            if old is not None and (diff := first_difference(old, options)):
                raise UserError(f"compare_kd.py: {base} is a comparison made with other options ({diff}); give "
                                "the same options to continue it, or another --name")
            return base, old is not None
        return base, False
    k = 1
    while True:
        folder = base if k == 1 else base.parent / f"{base.name}{k}"
        if not folder.exists():
            return folder, False
        old = recorded(folder)
        if old is not None and first_difference(old, options) is None:
            return folder, True
        k += 1


def make_plan(opt, extra: list[str]) -> tuple[Plan, list[str]]:
    common, kd_only = route_flags(extra)
    recipes = [resolve_recipe(r) for r in opt.recipes]
    if opt.nproc_per_node > 1 and opt.jobs > 1:
        raise UserError("compare_kd.py: --jobs runs several students at once on a CPU; with --nproc_per_node "
                        "each run is distributed over the GPUs, one run after another: drop --jobs")
    _, warnings = check_inputs(opt)
    options = options_of(opt, common, kd_only)
    folder, reused = comparison_folder(opt.project, opt.name, opt.exist_ok, options)
    folder.mkdir(parents=True, exist_ok=True)
    if not reused:
        (folder / "compare.yaml").write_text(
            "# compare_kd.py options of this comparison: the same command continues it\n"
            + yaml.safe_dump(options, sort_keys=False))
    runs = [Run(PLAIN, s, None) for s in opt.seeds]
    runs += [Run(label, s, cfg) for s in opt.seeds for label, cfg in recipes]
    flags = ["--data", str(opt.data), "--img", str(opt.img), "--epochs", str(opt.epochs)]
    flags += ["--cfg", str(opt.cfg)] if opt.cfg else []
    flags += ["--weights", str(opt.weights)]
    timing = yaml_load(folder / "timing.yaml") if (folder / "timing.yaml").is_file() else {}
    plan = Plan(folder, options, runs, flags + common, kd_only, str(opt.teacher_weight), opt.nproc_per_node,
                opt.jobs, timing or {})
    if reused:
        LOGGER.info(f"compare_kd.py: continuing {folder} (made with the same options)")
    return plan, warnings


# --------------------------------------------------------------------------------------------------
# running


def run_state(folder: Path) -> str:
    """'finished', 'interrupted' (a last.pt to resume from) or 'new'."""
    last = folder / "weights" / "last.pt"
    if not last.is_file():
        return "new"
    epoch = checkpoint_epoch(last)
    return "finished" if epoch == -1 else "interrupted" if epoch is not None else "new"


def command(plan: Plan, run: Run, state: str) -> list[str]:
    launcher = [sys.executable]
    if plan.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={plan.nproc}"]
    script = str(ROOT / run.script)
    if state == "interrupted":
        cmd = [*launcher, script, "--resume", str(plan.folder / run.name / "weights" / "last.pt")]
        return cmd + (["--teacher_weight", plan.teacher] if run.recipe != PLAIN else [])
    cmd = [*launcher, script, *plan.common, "--seed", str(run.seed), "--project", str(plan.folder),
           "--name", run.name, "--exist-ok"]
    if run.recipe != PLAIN:
        cmd += ["--teacher_weight", plan.teacher, *plan.kd_only]
        cmd += ["--kd_config", run.kd_config] if run.kd_config else []
    return cmd


def _env(jobs: int) -> dict:
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # one share of the cores each
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def execute(plan: Plan) -> list[str]:
    """Train every unfinished run (plan.jobs at once); returns the names of runs that failed."""
    todo = []
    for run in plan.runs:
        state = run_state(plan.folder / run.name)
        if state == "finished":
            continue
        if state == "new" and (plan.folder / run.name).exists():
            LOGGER.info(f"{run.name}: no checkpoint to resume from, starting it again")
        todo.append((run, state))
    done = len(plan.runs) - len(todo)
    LOGGER.info(f"compare_kd.py: {len(plan.runs)} runs in {plan.folder}: {done} finished, {len(todo)} to train"
                + (f", {plan.jobs} at once" if plan.jobs > 1 and todo else ""))
    failed: list[str] = []
    active: list[tuple[Run, subprocess.Popen, float, int, object]] = []
    shown, last_shown = "", 0.0
    try:
        while todo or active:
            if plan.jobs > 1 and active and time.time() - last_shown > PROGRESS_EVERY:
                line = progress(plan, [a[0] for a in active])
                if line != shown:
                    LOGGER.info(line)
                shown, last_shown = line, time.time()
            while todo and len(active) < plan.jobs:
                run, state = todo.pop(0)
                cmd = command(plan, run, state)
                rows = _rows(plan.folder / run.name)
                LOGGER.info(f"\n{run.name}: {'resuming' if state == 'interrupted' else 'training'}: {shlex.join(cmd)}")
                log = None
                if plan.jobs > 1:  # progress bars of several runs would interleave: each to its log
                    log = open(plan.folder / f"{run.name}.log", "a")
                proc = subprocess.Popen(cmd, env=_env(plan.jobs), stdout=log, stderr=subprocess.STDOUT if log else None)
                active.append((run, proc, time.time(), rows, log))
            time.sleep(0.2)
            for item in list(active):
                run, proc, t0, rows, log = item
                if proc.poll() is None:
                    continue
                active.remove(item)
                if log:
                    log.close()
                seconds, trained = time.time() - t0, _rows(plan.folder / run.name) - rows
                t = plan.timing.setdefault(run.name, {"seconds": 0.0, "epochs": 0})
                t["seconds"], t["epochs"] = round(t["seconds"] + seconds, 1), t["epochs"] + max(trained, 0)
                _save_yaml(plan.folder / "timing.yaml", plan.timing)
                if proc.returncode != 0:
                    failed.append(run.name)
                    where = f"; its output: {plan.folder / (run.name + '.log')}" if log else ""
                    LOGGER.warning(f"{run.name} failed (exit status {proc.returncode}){where}")
                else:
                    LOGGER.info(f"{run.name} done in {seconds / 60:.1f} min")
    except KeyboardInterrupt:
        for _, proc, *_ in active:
            proc.send_signal(signal.SIGINT)
        for _, proc, *_ in active:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    return failed


PROGRESS_EVERY = 20  # seconds between the progress lines of runs trained at once (their bars go to logs)


def progress(plan: Plan, runs: list[Run]) -> str:
    """'plain-s0: epoch 6/20, mAP@0.5 0.081 | default-s0: epoch 4/20, mAP@0.5 0.214' from the runs' results.csv."""
    parts = []
    for run in runs:
        f = plan.folder / run.name / "results.csv"
        names, rows = read_results_csv(f) if f.is_file() else ([], [])
        m = f", mAP@0.5 {rows[-1][names.index(M50)]:.3f}" if rows and M50 in names else ""
        parts.append(f"{run.name}: epoch {len(rows)}/{plan.options['epochs']}{m}")
    return " | ".join(parts)


def _rows(run_dir: Path) -> int:
    f = run_dir / "results.csv"
    return len(read_results_csv(f)[1]) if f.is_file() else 0


def _save_yaml(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# the report


def collect(plan: Plan) -> dict[str, dict[int, dict]]:
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


def write_summary(plan: Plan, warnings: list[str] = ()) -> tuple[Path, Path, str]:
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


def _pictures(plan: Plan, res: dict, diffs: dict[str, Difference]) -> list[Path]:
    """curves.png (every run, plot_curves.py's panels: utils/plots.py) and differences.png (per recipe: each seed's
    difference to plain and the mean with its 95% interval)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pictures are optional; the tables are the answer
        LOGGER.info("matplotlib is not installed: no pictures")
        return []
    from utils.plots import load_runs, plot_runs

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


# --------------------------------------------------------------------------------------------------


def compare(opt, extra: list[str]) -> Path:
    """The whole command: checks, optional probe, the runs, the summary. Returns the comparison folder."""
    plan, warnings = make_plan(opt, extra)
    for w in warnings:
        LOGGER.warning(f"WARNING: {w}")
    if opt.probe:
        from engine.probe import probe

        plain = collect(plan).get(PLAIN, {})
        plain_map = max((v["m95"] for v in plain.values() if v["finished"]), default=None)
        report, probe_warnings = probe(opt.data, opt.cfg, opt.weights, opt.teacher_weight, opt.img,
                                       _flag_value(plan.common, "--hyp"),
                                       {label: cfg for label, cfg in (resolve_recipe(r) for r in opt.recipes)},
                                       device=_flag_value(plan.common, "--device") or "", plain_map=plain_map,
                                       seed=opt.seeds[0])
        (plan.folder / "probe.md").write_text(report)
        LOGGER.info(report)
        for w in probe_warnings:
            LOGGER.warning(f"WARNING: {w}")
        LOGGER.info(f"\nProbe written to {plan.folder / 'probe.md'}; run the same command without --probe to train")
        return plan.folder
    failed = execute(plan)
    f_csv, f_md, verdicts = write_summary(plan, warnings)
    table = [line for line in f_md.read_text().splitlines() if line.startswith("|")][:2 + len(plan.options["recipes"]) + 1]
    LOGGER.info("\n" + "\n".join(table) + f"\n\n{verdicts}\n\nSummary: {f_md} (table: {f_csv})")
    if failed:
        raise UserError(f"compare_kd.py: {len(failed)} run(s) failed: {', '.join(failed)}; their output is above"
                        + (f" and in {plan.folder}/<run>.log" if plan.jobs > 1 else "")
                        + "; fix the cause and run the same command again (finished runs are kept)")
    return plan.folder


def _flag_value(flags: list[str], name: str) -> str | None:
    for group in split_flags(flags):
        if group[0] == name and len(group) > 1:
            return group[1]
        if group[0].startswith(name + "="):
            return group[0].split("=", 1)[1]
    return None
