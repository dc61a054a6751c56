"""compare_kd.py's runs: each a subprocess (train.py or train_kd.py, under torchrun with --nproc_per_node),
`jobs` at once with one share of the cores each, a killed comparison resumed run by run (engine.compare plans
them, engine.compare_report reads what they wrote)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.compare_report import M50, PLAIN, Comparison, Run, run_state
from utils.general import LOGGER, ROOT
from utils.loggers import read_results_csv


@dataclass
class Plan(Comparison):
    """A comparison and how to train its runs."""

    common: list[str] = field(default_factory=list)  # flags of every run
    kd_only: list[str] = field(default_factory=list)  # flags only train_kd.py takes
    teacher: str = ""
    nproc: int = 1
    jobs: int = 1



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
