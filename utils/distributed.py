"""Multi-process training under torchrun: process group, device per rank, and the few collectives the loop needs.

torchrun (or `python -m torch.distributed.run`) starts one process per device and sets LOCAL_RANK, RANK and
WORLD_SIZE, which YOLOv5 v6.0's train.py also reads. Rank and world size are read at call time
(`engine.setup.ddp_env`), never cached at import. On CUDA each process takes the GPU of its LOCAL_RANK
and talks NCCL; on CPU (`--device cpu`, also how the tests run two processes) it talks gloo.

Rank 0 alone validates, logs, plots and writes files; every decision it takes that changes what the other
ranks do next (the run folder, the anchors after autoanchor, early stopping) reaches them through
`broadcast_object` or `broadcast_tensor`, so no rank waits on a collective the others skip.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from utils.general import LOGGER, UserError


def ddp_env() -> tuple[int, int, int]:
    """(LOCAL_RANK, RANK, WORLD_SIZE) read from the environment at call time."""
    return int(os.getenv("LOCAL_RANK", "-1")), int(os.getenv("RANK", "-1")), int(os.getenv("WORLD_SIZE", "1"))


def ddp_active() -> bool:
    """True inside a torchrun process whose process group is up."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_flag: str, batch_size: int) -> torch.device | None:
    """Start the process group when launched by torchrun (LOCAL_RANK set); returns this rank's device.

    Returns None for a plain single-process run. The CUDA device comes from LOCAL_RANK (one GPU per
    process), the backend from the device: nccl on CUDA, gloo on CPU.
    """
    local_rank = int(os.getenv("LOCAL_RANK", "-1"))
    if local_rank == -1:
        return None
    world_size = int(os.getenv("WORLD_SIZE", "1"))
    if batch_size % world_size:
        raise UserError(f"--batch-size {batch_size} is the total over all processes and must be a multiple of "
                        f"the number of processes (torchrun --nproc_per_node x --nnodes = {world_size})")
    use_cuda = str(device_flag).strip().lower() != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: "
                            "start torchrun with --nproc_per_node <= the GPU count")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not ddp_active():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=60))
    LOGGER.info(f"DDP: rank {dist.get_rank()}/{dist.get_world_size()} on {device} ({dist.get_backend()})")
    return device


def barrier() -> None:
    if ddp_active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank src's picklable `obj` on every rank (identity without a process group). Used only for small
    values rank 0 decides: a run folder name, a stop flag."""
    if not ddp_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensor(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In place: every rank's `t` becomes rank src's (a no-op without a process group)."""
    if ddp_active():
        dist.broadcast(t.data, src=src)
    return t


def sync_detect_anchors(model: nn.Module) -> None:
    """Autoanchor runs on rank 0 only: give every rank its anchors before losses are built from them."""
    head = getattr(model, "model", [None])[-1]
    if ddp_active() and head is not None and hasattr(head, "anchors"):
        broadcast_tensor(head.anchors)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Every rank's parameters and buffers of `module` become rank src's: for what DDP does not wrap (the
    objective's adapters are initialised from each rank's own seed, or restored on resume)."""
    if ddp_active():
        for t in module.state_dict().values():
            if torch.is_tensor(t):
                dist.broadcast(t, src=src)


def check_replicas(module: nn.Module, what: str) -> None:
    """UserError if `module`'s parameters differ between ranks: they must take identical steps (DDP or
    allreduce_grads). One small all-gather per call (a float64 checksum per rank), so it runs every epoch."""
    if not ddp_active():
        return
    params = [p.detach().double().reshape(-1) for p in module.parameters()]
    if not params:
        return
    flat = torch.cat(params)
    local = torch.stack([flat.sum(), flat.abs().sum(), (flat * torch.arange(1, flat.numel() + 1,
                         dtype=flat.dtype, device=flat.device)).sum()])
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    ref = gathered[0]
    for rank, other in enumerate(gathered[1:], 1):
        if not torch.allclose(other, ref, rtol=1e-9, atol=1e-9):  # same steps in float32: identical values
            raise UserError(f"DDP: the {what} on rank {rank} differ from rank 0's (checksums {other.tolist()} vs "
                            f"{ref.tolist()}): their gradients were not averaged over the processes")


def wrap_ddp(module: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around `module` (the student, or the student with its distillation
    adapters), so every parameter with a gradient is all-reduced. SyncBatchNorm needs CUDA."""
    if sync_bn:
        if device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module).to(device)
        else:
            LOGGER.warning("WARNING: --sync-bn needs CUDA (NCCL); ignored for CPU processes")
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None)


def cleanup() -> None:
    if ddp_active():
        dist.destroy_process_group()


def rank_device() -> torch.device | None:
    """This process's device under torchrun (None for a single-process run)."""
    if not ddp_active():
        return None
    return torch.device("cuda", int(os.getenv("LOCAL_RANK", "0"))) if dist.get_backend() == "nccl" else torch.device("cpu")


def allreduce_grads(module: nn.Module) -> None:
    """Average the gradients of `module`'s parameters over the ranks: for the objective's own parameters
    (distillation adapters, loss parameters), which live outside the DDP-wrapped student. Called after
    each backward, like DDP's own reduction, so every rank's copy takes the same optimizer step."""
    if not ddp_active():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
