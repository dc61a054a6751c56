"""Training and validation loaders: the sampler that makes each epoch depend only on (seed, epoch), the
persistent-worker loader of v6.0, and `create_dataloader` (dataset + sampler + loader)."""

from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from utils.data.datasets import LoadImagesAndLabels
from utils.general import LOGGER, UserError


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


class MixedBatchSampler(Sampler):
    """Batches of (index, sample_seed) into a MixedImages: one epoch = one pass over the labelled images,
    `ratio` of each batch unlabelled (rounded, at least one of each kind).

    Labelled images follow EpochSampler's order and sample seeds (a shuffled pass per (seed, epoch), every
    world_size-th for each rank, padded by repetition). Unlabelled ones are read from an endless stream:
    position p is image perm_c[p mod nu] of the reshuffled pass c = p // nu, and batch b of epoch e on rank
    r takes the positions of slot group (e * nb + b) * world_size + r, so no position is used twice and a
    resumed run continues the stream where it stopped."""

    def __init__(self, n_labelled: int, n_unlabeled: int, batch_size: int, ratio: float = 0.5,
                 seed: int = 0, start_epoch: int = 0, rank: int = -1, world_size: int = 1) -> None:
        if not 0 < ratio < 1:
            raise UserError(f"--unlabeled_ratio {ratio}: the fraction of each batch that is unlabelled must be "
                            "between 0 and 1 (exclusive), e.g. 0.5")
        if batch_size < 2:
            raise UserError(f"--batch-size {batch_size} per process: a batch with unlabeled images needs room for one "
                            "labelled and one unlabelled image (at least 2)")
        self.nl, self.nu, self.seed, self.epoch = n_labelled, n_unlabeled, seed, start_epoch
        self.rank, self.world_size = max(rank, 0), max(world_size, 1)
        self.k_unlabeled = min(max(round(batch_size * ratio), 1), batch_size - 1)
        self.k_labelled = batch_size - self.k_unlabeled
        self.per_rank = -(-n_labelled // self.world_size)
        self.nb = math.ceil(self.per_rank / self.k_labelled)
        self._perms: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.nb

    def _unlabeled_at(self, pos: int) -> int:
        c, j = divmod(pos, self.nu)
        if c not in self._perms:
            g = torch.Generator()
            g.manual_seed(_sample_seed(self.seed, -2, c) % 2**63)
            self._perms = {c: torch.randperm(self.nu, generator=g).tolist()}  # the stream reads one pass at a time
        return self._perms[c][j]

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        g = torch.Generator()
        g.manual_seed(_sample_seed(self.seed, epoch) % 2**63)
        order = torch.randperm(self.nl, generator=g).tolist()
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]  # pad (DDP only; a no-op for one process)
        ws, r, kl, ku = self.world_size, self.rank, self.k_labelled, self.k_unlabeled
        mine = [(order[pos], _sample_seed(self.seed, epoch, pos)) for pos in range(r, total, ws)]
        for b in range(self.nb):
            group = (epoch * self.nb + b) * ws + r
            stream = range(group * ku, (group + 1) * ku)
            yield mine[b * kl:(b + 1) * kl] + [(self.nl + self._unlabeled_at(p), _sample_seed(self.seed, -1, p))
                                               for p in stream]


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
                      data_file: str | Path = "", start_epoch: int = 0, unlabeled=None, unlabeled_ratio: float = 0.5,
                      held_out: list[str] | tuple = ()) -> tuple[DataLoader, LoadImagesAndLabels]:
    """Build (loader, dataset). With nc given, labels are checked: a class >= nc is a UserError.

    unlabeled: images without labels (a folder, a *.txt list or a list of those) mixed into every batch,
    `unlabeled_ratio` of it (MixedBatchSampler; utils.data.unlabeled has the why), held_out (val/test files) left
    out of them; batches then carry a fifth item, the labelled mask. The returned dataset is the labelled one;
    the unlabelled set is loader.dataset.unlabeled.

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
    if unlabeled is not None:
        from utils.data.unlabeled import MixedImages, UnlabeledImages

        def build_unlabeled() -> UnlabeledImages:
            return UnlabeledImages(unlabeled, imgsz, batch_size, hyp=hyp, cache_images=cache, stride=int(stride),
                                   prefix=prefix, held_out=held_out, labelled=dataset.im_files)

        if rank == -1:
            unlabeled_set = build_unlabeled()
        else:
            from utils.torch_utils import torch_distributed_zero_first

            with torch_distributed_zero_first(rank):
                unlabeled_set = build_unlabeled()
    else:
        batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min(os.cpu_count() // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    # `rank` is the LOCAL_RANK (per machine, for the cache barrier); the split over processes needs the
    # global RANK, or two machines would train on the same half of the data
    world_size = int(os.getenv("WORLD_SIZE", "1")) if rank != -1 else 1
    global_rank = int(os.getenv("RANK", str(rank))) if rank != -1 else -1
    g = torch.Generator()
    g.manual_seed(seed + max(rank, 0))
    common = {"num_workers": nw, "pin_memory": torch.cuda.is_available(), "worker_init_fn": seed_worker,
              "generator": g}
    if unlabeled is not None:
        batches = MixedBatchSampler(len(dataset), len(unlabeled_set), batch_size, unlabeled_ratio, seed=seed,
                                    start_epoch=start_epoch, rank=global_rank, world_size=world_size)
        return InfiniteDataLoader(MixedImages(dataset, unlabeled_set), batch_sampler=batches,
                                  collate_fn=MixedImages.collate_fn, **common), dataset
    sampler = None
    if augment or shuffle or rank != -1:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, start_epoch=start_epoch,
                               rank=global_rank, world_size=world_size)
    loader = DataLoader if image_weights else InfiniteDataLoader
    return loader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                  collate_fn=LoadImagesAndLabels.collate_fn4 if quad else LoadImagesAndLabels.collate_fn,
                  **common), dataset
