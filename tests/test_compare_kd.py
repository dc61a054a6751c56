"""compare_kd.py: its statistics against hand-computed values, bad input, and a comparison killed in the middle
that finishes when run again without redoing a finished run."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from engine.compare import first_difference, split_flags
from engine.compare_report import Difference, paired, t_quantile
from utils.general import UserError

TEACHER = str(ROOT / "weights" / "teacher-shapes-yolov5s.pt")


# --------------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)  # tables give 4 decimals


def test_interval_and_verdicts_by_hand():
    # 3 seeds: differences 0.04, 0.05, 0.03 -> mean 0.04, sd 0.01, half-width 4.3027 * 0.01 / sqrt(3)
    d = Difference([0, 1, 2], [0.1, 0.1, 0.1], [0.04, 0.05, 0.03])
    mean, half = d.interval(d.d95)
    assert mean == pytest.approx(0.04) and half == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert d.verdict() == "helps: +4.0 ± 2.5 mAP@0.5:0.95, 3 of 3 seeds above plain"
    # 2 seeds: -0.02, -0.03 -> mean -0.025, sd 0.00707, half 12.7062 * 0.00707 / sqrt(2) = 0.0635: contains 0
    d = Difference([0, 1], [0, 0], [-0.02, -0.03])
    assert d.verdict() == ("no measurable effect: -2.5 ± 6.4 mAP@0.5:0.95, 0 of 2 seeds above plain (two seeds "
                           "agree, but with 2 the interval is 12.7 standard errors wide: add a seed)")
    # 2 seeds that agree closely: -0.030, -0.031 -> half 12.7062 * 0.000707 / sqrt(2) = 0.00635 < 0.0305
    assert Difference([0, 1], [0, 0], [-0.030, -0.031]).verdict().startswith("hurts: -3.0 ± 0.6 mAP@0.5:0.95, 2 of 2 seeds below")
    # 1 seed: the sign, no interval, said; under 1 point: no measurable effect
    one = Difference([0], [0.2], [0.38])
    assert one.interval(one.d95) == (0.38, None)
    assert one.verdict().startswith("helps: +38.0 mAP@0.5:0.95 on 1 seed (no interval with one seed")
    assert Difference([0], [0], [-0.005]).verdict().startswith("no measurable effect: -0.5 mAP@0.5:0.95 on 1 seed")
    assert Difference([0], [0], [-0.02]).verdict().startswith("hurts: -2.0")


def test_paired_uses_the_seeds_both_finished():
    plain = {0: (0.5, 0.30), 1: (0.6, 0.35), 2: (0.55, 0.32)}
    kd = {0: (0.7, 0.40), 2: (0.65, 0.37)}
    d = paired(plain, kd)
    assert d.seeds == [0, 2] and d.d50 == pytest.approx([0.2, 0.1]) and d.d95 == pytest.approx([0.10, 0.05])


def test_split_flags_and_option_differences():
    assert split_flags(["--a", "1", "--b", "--c", "x", "-0.5"]) == [["--a", "1"], ["--b"], ["--c", "x", "-0.5"]]
    a = {"data": "d.yaml", "seeds": [0, 1], "epochs": 30}
    assert first_difference(a, {**a}) is None
    assert first_difference(a, {**a, "seeds": [0, 1, 2]}).startswith("--seeds: the folder was made with '0 1', now '0 1 2'")


# --------------------------------------------------------------------------------------------------
# bad input: one line naming the flag or file


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from utils.data.synthetic import build_synthetic_dataset

    names = ["circle", "square", "triangle", "star", "cross", "ring"]  # the committed teacher's classes
    return str(build_synthetic_dataset(tmp_path_factory.mktemp("cmp_data"), n_train=8, n_val=4, img_size=64,
                                       nc=6, seed=4, names=names))


def _opt(data_yaml, tmp_path, **kw):
    import compare_kd

    argv = ["--data", data_yaml, "--cfg", "models/yolov5n.yaml", "--teacher_weight", TEACHER, "--img", "64",
            "--epochs", "2", "--project", str(tmp_path / "cmp")]
    for k, v in kw.items():
        argv += [f"--{k}", *([str(x) for x in v] if isinstance(v, list) else [str(v)])]
    return compare_kd.get_args_parser().parse_known_args(argv)


@pytest.mark.parametrize("kw,extra,message", [
    ({"recipes": ["nope"]}, [], "--recipes nope: not a recipe; known: default, "),
    ({"seeds": [0, 0]}, [], "--seeds 0 0 repeats a seed"),
    ({"teacher_weight": "missing.pt"}, [], "--teacher_weight 'missing.pt' not found"),
    ({"data": "missing.yaml"}, [], "--data missing.yaml not found"),
    ({}, ["--name", "x"], "--name is set by compare_kd.py"),
    ({}, ["--t_weights", "t.pt"], "--t_weights is set by compare_kd.py"),
    ({}, ["--bogus", "1"], "unknown flag --bogus"),
    ({}, ["--batch-size", "many"], "--batch-size many: invalid value for --batch-size"),
])
def test_bad_input_names_the_flag(tiny_data, tmp_path, kw, extra, message):
    from engine.compare import compare

    opt, rest = _opt(tiny_data, tmp_path, **kw)
    with pytest.raises(UserError, match="compare_kd.py: " + _re(message)):
        compare(opt, rest + extra)
    assert not (tmp_path / "cmp").exists() or not any((tmp_path / "cmp").rglob("results.csv"))


def _re(s: str) -> str:
    import re
    return re.escape(s)


def test_teacher_classes_are_matched_as_train_kd_matches_them(tmp_path):
    """A 6-class teacher for 3 classes of its own (by name) is accepted with a note; for 3 classes it does not
    know it is refused before any training unless --teacher_classes names the pairs (train_kd.py's rules, issue 29)."""
    from engine.compare import check_inputs, compare
    from utils.data.synthetic import build_synthetic_dataset

    data = str(build_synthetic_dataset(tmp_path / "three", n_train=4, n_val=2, img_size=64, nc=3, seed=1,
                                       names=["apple", "pear", "plum"]))
    opt, rest = _opt(data, tmp_path)
    with pytest.raises(UserError, match=r"compare_kd.py: --teacher_weight .* and --data .*: .*apple"):
        compare(opt, rest)
    assert not (tmp_path / "cmp").exists()
    _, notes = check_inputs(opt, "apple:square,pear:star,plum:ring")
    assert notes and "3 of 3 data classes have a teacher class" in notes[0]
    subset = str(build_synthetic_dataset(tmp_path / "sub", n_train=4, n_val=2, img_size=64, nc=3, seed=1,
                                         names=["square", "star", "ring"]))
    opt, _ = _opt(subset, tmp_path)
    _, notes = check_inputs(opt)
    assert "matched with the data's 3 by name" in notes[0]


# --------------------------------------------------------------------------------------------------
# a whole comparison, killed in the middle and run again


def _argv(data, project):
    return [sys.executable, str(ROOT / "compare_kd.py"), "--data", data, "--cfg", "models/yolov5n.yaml",
            "--teacher_weight", TEACHER, "--img", "64", "--epochs", "2", "--seeds", "0", "1",
            "--recipes", "default", "kl_only", "--project", str(project), "--batch-size", "4", "--workers", "0",
            "--hyp", "data/hyps/hyp.short.yaml", "--device", "cpu"]


@pytest.mark.slow
def test_killed_comparison_finishes_without_redoing_finished_runs(tiny_data, tmp_path):
    project = tmp_path / "cmp"
    folder = project / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the first run is finished, the second killed after its first epoch (its last.pt written)
    proc = subprocess.Popen(_argv(tiny_data, project), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker, t0 = folder / "plain-s1" / "weights" / "last.pt", time.time()
    while not marker.exists() and proc.poll() is None and time.time() - t0 < 600:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # compare_kd.py and the training it started
    proc.wait()
    first = folder / "plain-s0" / "results.csv"
    assert first.is_file() and marker.exists(), "the comparison did not get as far as the second run"
    stamp, text = first.stat().st_mtime_ns, first.read_text()

    r = subprocess.run(_argv(tiny_data, project), cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert f"continuing {folder}" in log and "6 runs in" in log and "1 finished, 5 to train" in log
    assert "plain-s1: resuming" in log  # from its last.pt, not from scratch
    assert first.stat().st_mtime_ns == stamp and first.read_text() == text  # the finished run untouched
    assert not (project / "exp2").exists()

    rows = (folder / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("recipe,seed,mAP_0.5") and len(rows) == 1 + 6
    assert all(row.endswith(",True") for row in rows[1:])  # every run finished
    md = (folder / "summary.md").read_text()
    for recipe in ("default", "kl_only"):
        verdict = next(line for line in md.splitlines() if line.startswith(f"- {recipe}: "))
        assert verdict.split(": ", 1)[1].startswith(("helps", "no measurable effect", "hurts")), verdict
    assert "| default | scorel2 |" in md and (folder / "curves.png").stat().st_size > 10_000
    assert (folder / "differences.png").is_file()

    # once more: nothing to train; other options with --exist-ok: refused, naming the option
    r = subprocess.run(_argv(tiny_data, project), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "6 finished, 0 to train" in r.stdout + r.stderr
    argv = _argv(tiny_data, project)
    argv[argv.index("--epochs") + 1] = "3"
    r = subprocess.run(argv + ["--exist-ok"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--epochs: the folder was made with '2', now '3'" in r.stderr


@pytest.mark.slow
def test_torchrun_trains_each_run_distributed(tiny_data, tmp_path):
    """--nproc_per_node 2: every run is launched by torchrun (two CPU processes, gloo), one after another."""
    argv = _argv(tiny_data, tmp_path / "cmp")
    argv[argv.index("--seeds") + 1: argv.index("--recipes")] = ["0"]
    argv[argv.index("--recipes") + 1: argv.index("--project")] = ["kl_only"]
    argv[argv.index("--epochs") + 1] = "1"
    r = subprocess.run([*argv, "--nproc_per_node", "2"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=900, check=False)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert log.count("-m torch.distributed.run --standalone --nproc_per_node=2") == 2  # plain-s0, kl_only-s0
    rows = (tmp_path / "cmp" / "exp" / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(row.endswith(",True") for row in rows[1:])
