"""engine/prefetch.py: when the teacher runs a batch ahead on a second thread, and that each batch gets its own
teacher output (the end-to-end equality is tests/test_train_kd.py::test_teacher_overlap_gives_the_same_run)."""

import threading

import pytest
import torch

from engine import prefetch
from engine.prefetch import resolve_overlap, teacher_ahead
from utils.general import UserError

CPU = torch.device("cpu")


@pytest.mark.parametrize("threads, cores, processes, expected", [
    (1, 2, 1, True),  # the quick start: one-thread runs on 2 cores
    (1, 2, 2, False),  # two processes (torchrun) of one thread fill 2 cores
    (2, 2, 1, False),  # a default run: torch already uses every core
    (4, 16, 2, True),
])
def test_auto_needs_a_spare_share_of_the_cores(monkeypatch, threads, cores, processes, expected):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(prefetch, "usable_cores", lambda: cores)
    assert resolve_overlap("auto", CPU, has_teacher=True, local_processes=processes) is expected
    assert resolve_overlap("on", CPU, has_teacher=True, local_processes=processes) is True
    assert resolve_overlap("off", CPU, has_teacher=True) is False
    assert resolve_overlap("on", CPU, has_teacher=False) is False  # plain training: nothing to overlap


def test_gpu_and_bad_values():
    assert resolve_overlap("auto", torch.device("cuda"), has_teacher=True) is False
    with pytest.raises(UserError, match="--teacher_overlap on is for CPU"):
        resolve_overlap("on", torch.device("cuda"), has_teacher=True)
    with pytest.raises(UserError, match="--teacher_overlap sometimes"):
        resolve_overlap("sometimes", CPU, has_teacher=True)


def test_each_batch_gets_its_own_result_computed_on_another_thread():
    main = threading.get_ident()
    seen = []

    def forward(x):
        seen.append(threading.get_ident())
        return x * 10

    batches = [(torch.tensor(float(i)), f"targets{i}") for i in range(5)]
    out = list(teacher_ahead(iter(batches), forward))
    assert [(float(x), t, float(r)) for x, t, r in out] == [(i, f"targets{i}", 10 * i) for i in range(5)]
    assert len(seen) == 5 and main not in seen
    assert list(teacher_ahead(iter([]), forward)) == []


def test_the_next_forward_runs_while_the_step_runs():
    """While the consumer holds batch i, forward(i + 1) runs: the consumer waits for it to start."""
    started = {i: threading.Event() for i in range(3)}

    def forward(x):
        started[int(x)].set()
        return x

    for x, r in teacher_ahead(((torch.tensor(i),) for i in range(3)), forward):
        if int(x) < 2:
            assert started[int(x) + 1].wait(timeout=30), "the next batch's forward did not start during the step"


def test_an_error_in_the_forward_reaches_the_loop():
    def forward(x):
        if int(x) == 1:
            raise RuntimeError("teacher broke on batch 1")
        return x

    gen = teacher_ahead(((torch.tensor(i),) for i in range(3)), forward)
    next(gen)
    with pytest.raises(RuntimeError, match="batch 1"):
        next(gen)
