"""The teacher's forward of the next batch on a second thread, while the student trains on this one.

A distillation step on a CPU is the student's forward and backward plus the teacher's forward (about as
long as the student's whole step for yolov5n <- yolov5s). Both read the same batch and neither depends on
the other until the KD loss, so with a core to spare the teacher can run one batch ahead: the step then
costs about the longer of the two instead of their sum. Torch releases the GIL inside its kernels, so a
Python thread is enough; the results are the same bits (the same kernels on the same inputs, and the
batches are drawn in the same order; tests/test_train_kd.py checks it).

`--teacher_overlap auto` (train_kd.py's default) turns it on for CPU training when the cores allow a second
thread of the same width (2 x torch threads x processes on this machine <= usable cores: the quick start's
two one-thread runs on 2 cores, a one-thread run anywhere). On a GPU the teacher and the student queue on
the same device, so there is nothing to overlap. A loss that calls the teacher's modules itself during the
student's step would race with the teacher's hooks; none of the registered losses does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from utils.general import LOGGER, UserError

CHOICES = ("auto", "on", "off")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_overlap(setting: str, device: torch.device, has_teacher: bool, local_processes: int = 1) -> bool:
    """Whether the training loop runs the teacher one batch ahead (see the module docstring).

    setting: --teacher_overlap (auto/on/off); device: the training device; has_teacher: the objective
    distils (plain training has nothing to overlap); local_processes: training processes on this machine."""
    if setting not in CHOICES:
        raise UserError(f"--teacher_overlap {setting}: use one of {', '.join(CHOICES)}")
    if setting == "off" or not has_teacher:
        return False
    if device.type != "cpu":
        if setting == "on":
            raise UserError(f"--teacher_overlap on is for CPU training: on {device.type} the teacher and the "
                            "student queue on the same device and there is nothing to overlap; drop the flag")
        return False
    threads, cores = torch.get_num_threads(), usable_cores()
    fits = 2 * threads * max(local_processes, 1) <= cores
    if setting == "on" and not fits:
        LOGGER.warning(f"WARNING: --teacher_overlap on: the teacher's thread shares {cores} core(s) with "
                       f"{local_processes} process(es) of {threads} torch thread(s); steps may be slower, not faster "
                       "(OMP_NUM_THREADS=N sets the threads per process)")
    return setting == "on" or fits


def teacher_ahead(batches: Iterable[tuple], forward: Callable) -> Iterator[tuple]:
    """Yield each batch of `batches` (tuples whose first item is the input) with forward(input) appended,
    forward of the next batch running on a second thread meanwhile. Ends (and joins the thread) when
    `batches` ends or the consumer stops early; an error in forward is raised where its result is taken."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher") as pool:
        it = iter(batches)
        nxt = next(it, None)
        pending = pool.submit(forward, nxt[0]) if nxt is not None else None
        while nxt is not None:
            cur, result = nxt, pending
            nxt = next(it, None)  # the loader's next batch, then its teacher forward on the thread
            pending = pool.submit(forward, nxt[0]) if nxt is not None else None
            yield (*cur, result.result())
