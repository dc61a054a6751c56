"""torchrun: two CPU processes (gloo) train exactly like one process with the same total batch.

The data is 8 copies of one image with augmentation off, so every rank's half-batch is the same as the whole
batch: the per-rank losses then equal the one-process loss term for term, and the DDP arithmetic (batch
split, gradient averaging, loss x WORLD_SIZE, anchors and stop flag from rank 0) is checked without the
YOLO loss's per-batch target normalisation getting in the way. On identical images an EpochSampler split
giving both ranks the same half would pass too, so test_each_rank_trains_on_its_own_half repeats the
comparison on 8 images that keep the pixels and boxes but each have their own classes.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.checkpoint import safe_torch_load
from utils.loggers import read_results_csv

ROOT = Path(__file__).resolve().parents[1]
NO_AUG = {k: 0.0 for k in ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective",
                            "flipud", "fliplr", "mosaic", "mixup", "copy_paste")} | {"warmup_min_iters": 2, "nbs": 8}


@pytest.fixture(scope="module")
def same_images(tmp_path_factory) -> tuple[Path, Path]:
    """(data yaml of 8 identical train images and 2 val images, hyp yaml without augmentation)."""
    from utils.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("ddp")
    data = build_synthetic_dataset(root / "src", n_train=1, n_val=2, img_size=64, nc=6, seed=4)  # the teacher's 6
    src = data.parent
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True)
        shutil.copytree(src / sub / "val", root / sub / "val")
    img = next((src / "images/train").glob("*.jpg"))
    lab = src / "labels/train" / f"{img.stem}.txt"
    for i in range(8):
        shutil.copy(img, root / f"images/train/im{i}.jpg")
        shutil.copy(lab, root / f"labels/train/im{i}.txt")
    cfg = yaml.safe_load(data.read_text())
    cfg.update(path=str(root), train="images/train", val="images/val")
    cfg.pop("download", None)
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch.yaml").read_text())
    hyp.update(NO_AUG)
    (root / "hyp.yaml").write_text(yaml.safe_dump(hyp))
    return root / "data.yaml", root / "hyp.yaml"


@pytest.fixture(scope="module")
def same_pixels(tmp_path_factory) -> Path:
    """Data yaml of 8 train images with one image's pixels and boxes, each image labelled with other classes.

    Same pixels: every rank's half-batch has the BatchNorm statistics of the whole batch (images with other
    pixels would give each rank its own statistics, and 2 processes without SyncBatchNorm, CUDA only, then
    really train differently from one). Same boxes: every image adds as many matched targets to the loss's
    per-batch means. Other classes: each image has its own class gradient, so the weights depend on which
    images each rank read."""
    from utils.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("ddp_classes")
    data = build_synthetic_dataset(root / "src", n_train=4, n_val=2, img_size=64, nc=6, seed=4)
    src = data.parent
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True)
        shutil.copytree(src / sub / "val", root / sub / "val")
    img, rows = next((im, r) for im in sorted((src / "images/train").glob("*.jpg"))
                     if len(r := np.loadtxt(src / "labels/train" / f"{im.stem}.txt", ndmin=2)) >= 2)
    combos = list(itertools.product(range(6), repeat=len(rows)))  # >= 36 class assignments of the boxes
    for i, classes in enumerate(combos[:: len(combos) // 8][:8]):  # 8 different ones
        shutil.copy(img, root / f"images/train/im{i}.jpg")
        rows[:, 0] = classes
        np.savetxt(root / f"labels/train/im{i}.txt", rows, fmt=["%d"] + ["%.6f"] * 4)
    cfg = yaml.safe_load(data.read_text())
    cfg.update(path=str(root), train="images/train", val="images/val")
    cfg.pop("download", None)
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root / "data.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(script: str, data: Path, hyp: Path, project: Path, nproc: int, epochs: int = 2, extra=()) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
                     "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    return [*launcher, str(ROOT / script), "--data", str(data), "--hyp", str(hyp), "--cfg",
            str(ROOT / "models/yolov5n.yaml"), "--weights", "", "--img", "64", "--epochs", str(epochs),
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--noautoanchor", "--save-period", "1",
            "--project", str(project), "--name", "exp", "--no-channels-last", *extra]  # NCHW as DDP uses


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600, env=env, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _weights(f: Path) -> dict[str, torch.Tensor]:
    """Parameters and BatchNorm running means. Running variances are left out: each rank updates them from
    its own half-batch with Bessel's n/(n-1), n = local images x H x W, which at stride 32 on 64 px images
    (n = 16 vs 32) is a true 3% difference, not an error (SyncBatchNorm, CUDA only, would remove it)."""
    sd = safe_torch_load(f)["model"].state_dict()
    return {k: v.float() for k, v in sd.items() if v.is_floating_point() and not k.endswith("running_var")}


@pytest.fixture(scope="module")
def one_and_two(same_images, tmp_path_factory):
    data, hyp = same_images
    out = tmp_path_factory.mktemp("runs")
    one = _run(_cmd("train.py", data, hyp, out / "one", 1, epochs=3), out)
    two = _run(_cmd("train.py", data, hyp, out / "two", 2, epochs=3), out)
    return out, one, two


def test_two_processes_train_like_one(one_and_two):
    """Same total batch, same steps: the weights after 2 epochs agree to float32 rounding. 1 vs 2 processes
    sum the batch-norm statistics and gradients of 8 identical images in another order (relative error
    ~1e-7 per step, measured 4.5e-8 absolute); a DDP mistake (gradients not averaged, the loss not
    x WORLD_SIZE, another initial seed on rank 0) changes weights by 1e-4 or more (measured: 1.4e-3)."""
    out, _, _ = one_and_two
    a, b = _weights(out / "one/exp/weights/epoch1.pt"), _weights(out / "two/exp/weights/epoch1.pt")
    start = _weights(out / "one/exp/weights/epoch0.pt") if (out / "one/exp/weights/epoch0.pt").exists() else None
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"2-process weights differ from 1-process by {worst:.3g}"  # measured 4.5e-8
    assert start is None or max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # training moved them
    (_, ra), (_, rb) = (read_results_csv(out / f"{x}/exp/results.csv") for x in ("one", "two"))
    loss_a, loss_b = torch.tensor(ra)[:, 1:4], torch.tensor(rb)[:, 1:4]  # train box, obj, cls per epoch
    assert torch.allclose(loss_a, loss_b, rtol=1e-4, atol=1e-6), (loss_a, loss_b)


def test_each_rank_trains_on_its_own_half(same_pixels, same_images, tmp_path):
    """The comparison above on images with other classes (fixture same_pixels): EpochSampler must give each
    image to exactly one rank. Tolerance 1e-3, between float32 rounding and a mistake: the 2-process gradient
    sums per-image terms that BatchNorm's backward makes cancel, so rounding is relative to the terms, not to
    the small sum. Every regrouping of this batch (one batch of 8, two of 4 in either split, four of 2) gives
    gradients up to 7e-6 of each tensor's largest apart in float32 and 5e-11 in float64, where a 5-ulp change
    of the input alone moves them 1.4e-11: rounding, not another computation. After the 2 steps the weights
    were 1.9e-5 apart. Mutations seen failing: both ranks reading the same half (`range(0, total, ...)` for
    `range(self.rank, total, ...)` in EpochSampler.__iter__): 8.0e-2 apart (on identical images that split
    passes); every gradient halved, as with the loss not x WORLD_SIZE (simulated by halving box, obj and cls
    on both ranks): 2.1e-1. 1e-3 is about their geometric middle: either may move 50x before the test errs."""
    _, hyp = same_images  # no augmentation
    for name, n in (("one", 1), ("two", 2)):
        _run(_cmd("train.py", same_pixels, hyp, tmp_path / name, n), tmp_path)
    a, b = (_weights(tmp_path / f"{x}/exp/weights/epoch1.pt") for x in ("one", "two"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-3, f"2-process weights differ from 1-process by {worst:.3g}"  # measured 1.9e-5
    (_, ra), (_, rb) = (read_results_csv(tmp_path / f"{x}/exp/results.csv") for x in ("one", "two"))
    # train box and obj, the same on every image, so rank 0's mean is the whole batch's (the class loss each
    # rank logs is its own half's, as in v6.0). Epoch 1's loss comes from the weights after one step, which
    # differ by rounding alone (equal to results.csv's 5 significant digits, measured); rtol 1e-4 is one
    # step of the 5th digit at worst.
    loss_a, loss_b = torch.tensor(ra)[:, 1:3], torch.tensor(rb)[:, 1:3]
    assert torch.allclose(loss_a, loss_b, rtol=1e-4, atol=1e-6), (loss_a, loss_b)


def test_rank0_alone_writes_one_run_folder(one_and_two):
    out, _, two = one_and_two
    assert sorted(p.name for p in (out / "two").iterdir()) == ["exp"]  # no exp2 from the second rank
    assert two.stdout.count("Results saved to") + two.stderr.count("Results saved to") == 1
    assert (two.stdout + two.stderr).count("DDP: rank 0/2 on cpu (gloo)") == 1  # other ranks log warnings only


def test_resume_under_torchrun(one_and_two, tmp_path):
    """The 2-process run of 3 epochs, cut back to its state after epoch 1 (its epoch1.pt is exactly what
    last.pt held then) and resumed under torchrun, ends with the uninterrupted run's epoch-2 weights."""
    out, _, _ = one_and_two
    run = shutil.copytree(out / "two/exp", tmp_path / "exp")
    last = run / "weights/last.pt"
    shutil.copy(run / "weights/epoch1.pt", last)
    (run / "weights/epoch2.pt").unlink()
    r = _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(ROOT / "train.py"),
              "--resume", str(last), "--workers", "0", "--device", "cpu"], tmp_path)
    assert "Resuming training from epoch 2" in r.stdout + r.stderr
    _, rows = read_results_csv(run / "results.csv")
    assert [int(x[0]) for x in rows] == [0, 1, 2]
    a, b = _weights(out / "two/exp/weights/epoch2.pt"), _weights(run / "weights/epoch2.pt")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed under torchrun, the weights differ by {worst:.3g}"  # same kernels: exact


TEACHER = ROOT / "weights/teacher-shapes-yolov5s.pt"


def _kd_state(f: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in safe_torch_load(f)["kd_state"].items() if v.is_floating_point()}


def test_train_kd_two_processes_like_one(same_images, tmp_path):
    """train_kd.py under torchrun: a non-zero KD loss in results.csv, and the student and the FitNet adapters
    after 2 epochs equal a one-process run (to float32 rounding, 1e-6). On identical images this shows the
    adapters start from rank 0's values on every rank (each rank seeds its own: measured 2.4e-3 apart
    without the broadcast) and take the one-process step."""
    data, hyp = same_images
    # the card's per-cell output KD: with it the two runs agree to float32 rounding. With the default weight-mass
    # form (issue 27) the adapters still agree to 1.5e-8 but the student's BatchNorm biases drift 9e-4 apart
    # over the 2 epochs although every image is the same, not explained yet (noted on issue 27)
    extra = ("--teacher_weight", str(TEACHER), "--feature_loss", "fitnet", "--kd_loss_selected", "kl",
             "--kd_normalize", "cells")
    for name, n in (("one", 1), ("two", 2)):
        _run(_cmd("train_kd.py", data, hyp, tmp_path / name, n, epochs=2, extra=extra), tmp_path)
    a, b = (tmp_path / f"{x}/exp/weights/epoch1.pt" for x in ("one", "two"))
    ka, kb = _kd_state(a), _kd_state(b)
    assert any("adapters" in k for k in ka) and ka.keys() == kb.keys()
    worst = max((ka[k] - kb[k]).abs().max().item() for k in ka)
    assert worst <= 1e-6, f"adapters differ between 2 processes and 1 by {worst:.3g}"
    wa, wb = _weights(a), _weights(b)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    names, rows = read_results_csv(tmp_path / "two/exp/results.csv")
    kd = names.index("train/kd_loss")
    assert all(r[kd] > 0 for r in rows) and sorted(p.name for p in (tmp_path / "two").iterdir()) == ["exp"]


def test_train_kd_adapters_stay_identical_across_ranks(tmp_path):
    """Different images on each rank (augmented, shuffled): the adapters' gradients differ per rank, so only
    their all-reduce keeps the copies equal. The engine checks that every epoch (utils.distributed.
    check_replicas) and stops with a UserError naming the rank otherwise: this run must finish.
    Mutation checked: without allreduce_grads in train_one_epoch the run stops at the end of epoch 0
    ("... on rank 1 differ from rank 0's")."""
    from utils.data.synthetic import build_synthetic_dataset

    data = build_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, img_size=64, nc=6, seed=2)
    hyp = ROOT / "data/hyps/hyp.short.yaml"
    extra = ("--teacher_weight", str(TEACHER), "--feature_loss", "fitnet")
    r = _run(_cmd("train_kd.py", data, hyp, tmp_path / "runs", 2, epochs=1, extra=extra), tmp_path)
    assert "differ from rank 0" not in r.stdout + r.stderr


def test_missing_dataset_is_built_once_under_torchrun(tmp_path):
    """A data yaml whose dataset does not exist yet (the embedded shapes.yaml in a fresh clone): local rank 0
    runs the 'download:' entry while the other ranks wait, then all find the data. The entry logs each call
    and holds for 2 s, so two ranks entering together would both be logged.
    Mutation seen failing: check_dataset outside torch_distributed_zero_first in engine/trainer._setup (both
    ranks built datasets/shapes.partial at once; one failed with FileNotFoundError in a fresh clone)."""
    calls = tmp_path / "calls.txt"
    script = (f"import os, time\n"
              f"with open({str(calls)!r}, 'a') as f: f.write(os.environ.get('RANK', '-1') + '\\n')\n"
              f"time.sleep(2)\n"
              f"from utils.data.synthetic import build_synthetic_dataset\n"
              f"build_synthetic_dataset(yaml['path'], n_train=4, n_val=2, img_size=64, nc=6, seed=3)\n")
    data = tmp_path / "later.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path / "later"), "train": "images/train", "val": "images/val",
                                    "nc": 6, "names": [f"c{i}" for i in range(6)], "download": script}))
    hyp = ROOT / "data/hyps/hyp.short.yaml"
    _run(_cmd("train.py", data, hyp, tmp_path / "runs", 2, epochs=1), tmp_path)
    assert calls.read_text().split() == ["0"]
    assert (tmp_path / "runs/exp/weights/last.pt").exists()


_EXIT_PROBE = """
import atexit, sys
sys.path.insert(0, {root!r})
from utils.general import UserError, run_cli
atexit.register(lambda: print("finalized"))
def main():
    print("done")
    if sys.argv[1] == "error":
        raise UserError("bad flag")
run_cli(main)
"""


@pytest.mark.parametrize("world, outcome, rc, finalized", [
    ("1", "ok", 0, True),     # a plain process ends as Python does
    ("2", "ok", 0, False),    # a torchrun rank that finished skips the interpreter's shutdown
    ("2", "error", 2, True),  # a refused input keeps its exit status 2 and the normal exit path
])
def test_torchrun_ranks_leave_without_interpreter_shutdown(world, outcome, rc, finalized):
    """utils.general.leave_torchrun_rank: after a rank's work is done, the process group's threads must not
    run into Python's shutdown (a CI run aborted there once). The probe's atexit handler shows whether the
    interpreter's shutdown ran; its output before the exit must still arrive (streams are flushed).
    Mutation checked: without the call in run_cli the WORLD_SIZE=2 case prints 'finalized'."""
    env = {**os.environ, "WORLD_SIZE": world}
    r = subprocess.run([sys.executable, "-c", _EXIT_PROBE.format(root=str(ROOT)), outcome], capture_output=True,
                       text=True, timeout=120, env=env, check=False)
    assert r.returncode == rc, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "done"
    assert ("finalized" in r.stdout) is finalized, r.stdout
