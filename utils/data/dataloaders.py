"""Training and validation loaders: the sampler that makes each epoch depend only on (seed, epoch), the
persistent-worker loader of v6.0, and `create_dataloader` (dataset + sampler + loader)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from utils.data.datasets import LoadImagesAndLabels
from utils.general import LOGGER


def _sample_seed(*keys: int) -> int:
    """A 64-bit seed from integer keys (seed, epoch, position): well mixed, the same on every platform."""
    return int.from_bytes(hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest(), "little")


class EpochSampler(Sampler):
    """Training indices as (index, sample_seed) pairs that depend only on (seed, epoch): the order and every
    augmentation of epoch e are the same whether the run got there in one go or was resumed at e, and
    whatever the number of workers or threads.

    Each __iter__ is one epoch and advances the counter itself: persistent workers prefetch the next
    epoch's indices before the training loop could announce it (a set_epoch() would arrive too late).
    With world_size > 1 each rank takes every world_size-th item of one shuffled order, padded by
    repetition to a multiple of world_size (as torch's DistributedSampler).
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, start_epoch: int = 0, rank: int = -1,
                 world_size: int = 1) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, start_epoch
        self.rank, self.world_size = max(rank, 0), max(world_size, 1)
        self.num_samples = -(-n // self.world_size)  # per rank

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(_sample_seed(self.seed, epoch) % 2**63)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.num_samples * self.world_size
        order += order[: total - len(order)]  # pad (DDP only; a no-op for one process)
        for pos in range(self.rank, total, self.world_size):
            yield order[pos], _sample_seed(self.seed, epoch, pos)

    def __len__(self) -> int:
        return self.num_samples


class _RepeatSampler:
    """Iterate a batch sampler forever, so one DataLoader iterator (and its workers) lives all run."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def __iter__(self):
        while True:
            yield from iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class InfiniteDataLoader(DataLoader):
    """DataLoader whose workers are started once and reused every epoch (v6.0 pattern)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "batch_sampler", _RepeatSampler(self.batch_sampler))
        self.iterator = super().__iter__()

    def __len__(self) -> int:
        return len(self.batch_sampler.sampler)

    def __iter__(self):
        for _ in range(len(self)):
            yield next(self.iterator)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed; keep cv2 single-threaded."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)  # workers are the parallelism; cv2 threads would oversubscribe the cores


def create_dataloader(path, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: dict | None = None, augment: bool = False, cache: bool | str | None = None,
                      pad: float = 0.0, rect: bool = False, rank: int = -1, workers: int = 8,
                      image_weights: bool = False, quad: bool = False, prefix: str = "",
                      shuffle: bool = False, seed: int = 0, nc: int | None = None,
                      data_file: str | Path = "", start_epoch: int = 0) -> tuple[DataLoader, LoadImagesAndLabels]:
    """Build (loader, dataset). With nc given, labels are checked: a class >= nc is a UserError.

    shuffle=True shuffles every epoch (ignored with rect, whose batches depend on the order). Training
    loaders (augment, shuffle or DDP) draw from an EpochSampler: epoch e's batches depend only on
    (seed, e), so a run resumed at start_epoch sees the data an uninterrupted run would.
    Workers persist across epochs (InfiniteDataLoader) except with image_weights, whose index
    changes per epoch must reach fresh workers.
    """
    if rect and shuffle:
        LOGGER.warning("WARNING: --rect is incompatible with DataLoader shuffle, setting shuffle=False")
        shuffle = False

    def build() -> LoadImagesAndLabels:
        return LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                   cache_images=cache, single_cls=single_cls, stride=int(stride), pad=pad,
                                   image_weights=image_weights, prefix=prefix)

    if rank == -1:
        dataset = build()
    else:
        from utils.torch_utils import torch_distributed_zero_first

        with torch_distributed_zero_first(rank):
            dataset = build()
    if nc is not None:
        dataset.check_classes(nc, data_file)
    batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min(os.cpu_count() // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None
    if augment or shuffle or rank != -1:
        # `rank` is the LOCAL_RANK (per machine, for the cache barrier); the split over processes needs the
        # global RANK, or two machines would train on the same half of the data
        world_size = int(os.getenv("WORLD_SIZE", "1")) if rank != -1 else 1
        global_rank = int(os.getenv("RANK", str(rank))) if rank != -1 else -1
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, start_epoch=start_epoch,
                               rank=global_rank, world_size=world_size)
    loader = DataLoader if image_weights else InfiniteDataLoader
    g = torch.Generator()
    g.manual_seed(seed + max(rank, 0))
    return loader(dataset, batch_size=batch_size, shuffle=False, num_workers=nw,
                  sampler=sampler, pin_memory=torch.cuda.is_available(), worker_init_fn=seed_worker, generator=g,
                  collate_fn=LoadImagesAndLabels.collate_fn4 if quad else LoadImagesAndLabels.collate_fn), dataset
