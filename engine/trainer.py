"""The training loop shared by train.py and train_kd.py.

`train(opt, make_objective)` reads top to bottom in the order things happen: setup, data, model,
objective, optimizer, resume, epochs, final evaluation. The run's state is one engine.state.TrainRun,
filled in that order. What is minimised is an *objective* (engine/objective.py); the loop never knows
whether it distils. One epoch is engine.epoch.train_one_epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch import nn

from engine.epoch import EpochSettings, NonFiniteLoss, train_one_epoch
from engine.objective import DetectionObjective, ObjectiveContext
from engine.optim import (
    build_optimizer,
    lr_lambda,
    nominal_accumulate,
    warmup_iterations,
)
from engine.prefetch import resolve_overlap, usable_cores
from engine.run_checkpoint import restore_run, save_run
from engine.setup import (
    build_model,
    describe_start,
    freeze_layers,
    load_hyp,
    prepare_opt,
    write_run_files,
)
from engine.state import TrainRun
from engine.train_utils import (
    class_weights,
    fitness_of,
    mosaic_closed,
    plot_label_stats,
    reweight_images,
)
from utils.distributed import (
    barrier,
    broadcast_module,
    broadcast_object,
    check_replicas,
    cleanup,
    ddp_env,
    rank_device,
    sync_detect_anchors,
    wrap_ddp,
)
from utils.general import LOGGER, check_img_size, colorstr, init_seeds

__all__ = ["NonFiniteLoss", "ObjectiveContext", "TrainRun", "prepare_opt", "train", "train_one_epoch"]


def train(opt, make_objective: Callable[[ObjectiveContext], nn.Module] | None = None) -> Path:
    """Train a model as YOLOv5 v6.0's train.py does; returns the run directory.

    make_objective(ctx) -> nn.Module builds the objective from an engine.objective.ObjectiveContext
    (default: engine.objective.DetectionObjective of the model's detection loss).
    """
    run = _setup(opt)
    model, ckpt = build_model(opt, run.nc, run.hyp, run.device)
    # NHWC convolutions: 1.8-2x the AMP step on an H200 (bench_cuda.py), 1.1x a float32 CPU step and
    # needed for the bf16 CPU kernels' speed (bench/RESULTS.md); checkpoints are written NCHW. Single
    # process only. NHWC kernels reduce a batch in another order than NCHW ones (same float32 accuracy,
    # ~3e-7 relative per conv), and a from-scratch run amplifies such rounding to ~1e-3 in weights within
    # a few steps; DDP keeps NCHW, whose 2-process run reproduces the 1-process run to 1e-6
    # (tests/test_ddp.py runs the reference with --no-channels-last).
    if run.local_rank == -1 and not getattr(opt, "no_channels_last", False):
        from utils.torch_utils import to_channels_last

        to_channels_last(model)
    run.start_epoch = int(ckpt["epoch"]) + 1 if opt.resume and ckpt else 0  # the loaders continue from here
    freeze_layers(model, opt.freeze)
    run.gs = max(int(model.stride.max()), 32)
    run.imgsz = check_img_size(opt.imgsz, run.gs, floor=run.gs * 2)
    run.unlabeled = _unlabeled(opt, run, distils=make_objective is not None)
    run.train_loader, run.dataset, run.val_loader = _loaders(opt, run, model)
    run.loss_hyp, run.compute_loss, run.objective = _objective(opt, run, model, make_objective)
    run.optimizer, run.scheduler, run.lf = _optimizer(opt, run, model, run.objective)
    if run.main:
        from utils.torch_utils import ModelEMA

        run.ema = ModelEMA(model)
    start_epoch, best_fitness = (restore_run(ckpt, opt, run.optimizer, run.ema, run.objective) if ckpt
                                 else (0, 0.0))
    del ckpt
    run.scheduler.last_epoch = start_epoch - 1
    if run.local_rank != -1:
        model = wrap_ddp(model, run.device, sync_bn=opt.sync_bn)  # broadcasts rank 0's student
        broadcast_module(run.objective)  # and rank 0's adapters / loss parameters, which DDP does not hold
    run.model = model
    run.nb = len(run.train_loader)
    # v6.0 warms up for at least 1000 iterations; hyp key warmup_min_iters (ours) lowers it for short runs
    run.nw = warmup_iterations(run.hyp["warmup_epochs"], run.nb, minimum=int(run.hyp.get("warmup_min_iters", 1000)))
    if run.main and not opt.resume:
        from engine.options import check_warmup

        check_warmup(run.nw, run.nb, opt.epochs, run.hyp)  # says so once when warmup covers more than half the run
    _fit(opt, run, start_epoch, best_fitness)
    if run.main:
        _finish(opt, run)
    barrier()  # the other ranks wait for rank 0's final validation, then all leave the process group
    cleanup()
    torch.cuda.empty_cache()
    return run.save_dir


def _setup(opt) -> TrainRun:
    """Device, run folders, hyperparameters (+ hyp.yaml/opt.yaml), seeds and the dataset dict."""
    from utils.data.config import check_dataset
    from utils.torch_utils import select_device, torch_distributed_zero_first

    local_rank, rank, world_size = ddp_env()
    device = rank_device() or select_device(opt.device, batch_size=opt.batch_size)
    save_dir = Path(opt.save_dir)
    if rank in (-1, 0):  # rank 0 alone writes files
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    if not opt.resume and rank in (-1, 0):  # --exist-ok into an old run: its best.pt, results.csv are not ours
        from utils.loggers import clear_previous_run

        clear_previous_run(save_dir)
    hyp = load_hyp(opt.hyp)
    hyp["label_smoothing"] = opt.label_smoothing
    opt.hyp = dict(hyp)  # opt.yaml keeps the values, so --resume does not depend on the hyp file
    if not opt.resume and rank in (-1, 0):
        write_run_files(save_dir, hyp, opt)
    init_seeds(opt.seed + max(rank, 0), deterministic=True)  # rank 0 starts as a single process does
    with torch_distributed_zero_first(local_rank):  # one process per machine builds/downloads a missing dataset
        data_dict = check_dataset(opt.data)
    nc = 1 if opt.single_cls else int(data_dict["nc"])
    names = ["item"] if opt.single_cls and len(data_dict["names"]) != 1 else list(data_dict["names"])
    # weight decay is tuned for a nominal batch of nbs images (hyp nbs, ours; default 64 as v6.0): scale it
    # to the images one optimizer step really sees, batch size x accumulated batches
    nbs = int(hyp.get("nbs", 64))
    weight_decay = hyp["weight_decay"] * (opt.batch_size * nominal_accumulate(opt.batch_size, nbs) / nbs)
    return TrainRun(local_rank=local_rank, rank=rank, world_size=world_size, device=device, save_dir=save_dir,
                    hyp=MappingProxyType(hyp), nbs=nbs, weight_decay=weight_decay, data_dict=data_dict, nc=nc,
                    names=names, batch_size=opt.batch_size // world_size)


def _unlabeled(opt, run: TrainRun, distils: bool):
    """The run's unlabeled images (utils.data.unlabeled), checked against the flags; None without them."""
    from utils.data.unlabeled import check_mixed_options, unlabeled_source

    src = unlabeled_source(opt, run.data_dict, distils)
    if src is not None:
        check_mixed_options(opt)
    return src


def _train_loader(opt, run: TrainRun, epoch: int):
    """The shuffled augmented train loader from `epoch` on (mosaic off once mosaic_closed); with unlabeled
    images, batches that mix them in (utils.data.unlabeled). Returns (loader, the labelled dataset)."""
    from utils.data.dataloaders import create_dataloader
    from utils.data.unlabeled import DEFAULT_RATIO, held_out_files

    closed = mosaic_closed(epoch, opt.epochs, run.hyp)
    # a plain dict: the dataset travels to DataLoader workers, pickled where they are spawned (macOS, Windows)
    hyp = {**run.hyp, "mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0} if closed else dict(run.hyp)
    ratio = getattr(opt, "unlabeled_ratio", None) or DEFAULT_RATIO
    loader, dataset = create_dataloader(
        run.data_dict["train"], run.imgsz, run.batch_size, run.gs, opt.single_cls, hyp=hyp, augment=True,
        cache=opt.cache, rect=opt.rect, rank=run.local_rank, workers=opt.workers, image_weights=opt.image_weights,
        quad=opt.quad, prefix=colorstr("train: "), shuffle=True, seed=opt.seed, nc=run.nc, data_file=opt.data,
        start_epoch=epoch, unlabeled=run.unlabeled, unlabeled_ratio=ratio,
        held_out=held_out_files(run.data_dict) if run.unlabeled else ())
    if run.unlabeled and run.main and epoch == run.start_epoch:
        s = loader.batch_sampler.sampler
        LOGGER.info(f"{colorstr('train: ')}{len(dataset):,} labelled + {len(loader.dataset.unlabeled):,} unlabelled "
                    f"images; batches of {s.k_labelled} labelled + {s.k_unlabeled} unlabelled (--unlabeled_ratio "
                    f"{ratio:g}), {s.nb} per epoch (one pass over the labelled images)")
    return loader, dataset


def _loaders(opt, run: TrainRun, model: nn.Module):
    """Shuffled augmented train loader; rect val loader, label plots and autoanchor on the main process.

    Returns (train_loader, its dataset, val_loader or None)."""
    from utils.data.dataloaders import create_dataloader

    train_loader, dataset = _train_loader(opt, run, run.start_epoch)
    val_loader = None
    if run.main:
        val_loader = create_dataloader(
            run.data_dict["val"], run.imgsz, run.batch_size * 2, run.gs, opt.single_cls, hyp=dict(run.hyp),
            cache=None if opt.noval else opt.cache, rect=True, rank=-1, workers=opt.workers, pad=0.5,
            prefix=colorstr("val: "))[0]
        if not opt.resume:
            plot_label_stats(dataset, run.names, run.save_dir)
            if not opt.noautoanchor and getattr(model, "has_anchors", True):  # anchor-free heads: nothing to fit
                from engine.autoanchor import check_anchors

                check_anchors(dataset, model=model, thr=run.hyp["anchor_t"], imgsz=run.imgsz)
    if not opt.resume:
        model.half().float()  # pre-reduce anchor precision (v6.0), on every rank alike
    sync_detect_anchors(model)  # autoanchor ran on rank 0: losses on the other ranks must see its anchors
    return train_loader, dataset, val_loader


def _objective(opt, run: TrainRun, model: nn.Module, make_objective):
    """Scale the loss gains to the model and image size, then build the loss and the objective.

    Returns (loss_hyp, compute_loss, objective): loss_hyp is a new dict, run.hyp stays as loaded."""
    from utils.losses.yolov5 import ComputeLoss, scale_loss_gains

    # the model's head decides its gains and loss (YOLOv5: scaled v6.0 gains, ComputeLoss; v8: as written)
    has_head = hasattr(model, "build_loss")
    loss_hyp = model.loss_gains(run.hyp, run.nc, run.imgsz) if has_head else scale_loss_gains(
        run.hyp, run.nc, model.model[-1].nl, run.imgsz)
    model.nc, model.hyp, model.names = run.nc, loss_hyp, run.names
    model.class_weights = class_weights(run.dataset.labels, run.nc).to(run.device)
    compute_loss = model.build_loss(loss_hyp) if has_head else ComputeLoss.from_model(model, loss_hyp)
    ctx = ObjectiveContext(model=model, compute_loss=compute_loss, hyp=loss_hyp, opt=opt, device=run.device,
                           data_dict=run.data_dict, val_loader=run.val_loader, imgsz=run.imgsz, nc=run.nc,
                           names=run.names)
    objective = make_objective(ctx) if make_objective else DetectionObjective(compute_loss)
    return loss_hyp, compute_loss, objective.to(run.device)


def _optimizer(opt, run: TrainRun, model: nn.Module, objective: nn.Module):
    """SGD/Adam over the model and the objective's own parameters (KD adapters), LR schedule.

    Gradients accumulate to the nominal batch run.nbs; group 1 decays by run.weight_decay, scaled to match.
    Returns (optimizer, LambdaLR scheduler, its LR multiplier per epoch)."""
    optimizer = build_optimizer(model, run.hyp, adam=opt.adam, extra_params=[objective], weight_decay=run.weight_decay)
    lf = lr_lambda(opt.epochs, run.hyp["lrf"], linear=opt.linear_lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf), lf


def _overlap(opt, run: TrainRun) -> bool:
    """--teacher_overlap resolved for this run (engine.prefetch), said once when on."""
    on = resolve_overlap(getattr(opt, "teacher_overlap", None) or "auto", run.device,
                         has_teacher=hasattr(run.objective, "teacher_forward"),
                         local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if on and run.main:
        LOGGER.info(f"Teacher forward overlapped with the student's step: one batch ahead on a second thread "
                    f"({torch.get_num_threads()} torch thread(s) each, {usable_cores()} usable cores; "
                    "--teacher_overlap off runs them one after the other)")
    return on


def _fit(opt, run: TrainRun, start_epoch: int, best_fitness: float) -> None:
    """The epochs: train, validate the EMA, log, checkpoint, early stop."""
    from engine import validate
    from utils.loggers import ResultsLogger
    from utils.torch_utils import EarlyStopping

    logger = ResultsLogger(run.save_dir) if run.main else None
    if logger and opt.resume:
        logger.truncate_from(start_epoch)
    stopper = EarlyStopping(patience=opt.patience)
    scaler = torch.amp.GradScaler("cuda", enabled=run.cuda)
    settings = EpochSettings(epochs=opt.epochs, nb=run.nb, nw=run.nw, lf=run.lf, hyp=run.hyp,
                             batch_size=opt.batch_size, nbs=run.nbs, imgsz=run.imgsz, gs=run.gs,
                             multi_scale=opt.multi_scale, quad=opt.quad, bf16=bool(getattr(opt, "bf16", False)),
                             world_size=run.world_size, main=run.main, last=run.last,
                             overlap_teacher=_overlap(opt, run))
    results, maps = (0, 0, 0, 0, 0, 0, 0), np.zeros(run.nc)
    describe_start(opt, run.save_dir)
    t0, epoch = time.time(), start_epoch - 1
    for epoch in range(start_epoch, opt.epochs):
        # main-process randomness (multi-scale sizes, image weights) drawn from (seed, epoch), like the
        # data (EpochSampler): a resumed epoch repeats what an uninterrupted run does in it
        init_seeds(opt.seed + 1 + max(run.rank, 0) + 1000 * (epoch + 1))
        run.model.train()
        loss_schedule = getattr(run.compute_loss, "set_epoch", None)  # YOLO26's E2ELoss: o2m/o2o weights decay
        if loss_schedule is not None:
            loss_schedule(epoch, opt.epochs)
        if (epoch > start_epoch and mosaic_closed(epoch, opt.epochs, run.hyp)
                and not mosaic_closed(epoch - 1, opt.epochs, run.hyp)):
            LOGGER.info(f"Closing mosaic: epochs {epoch}-{opt.epochs - 1} train on single images (hyp close_mosaic)")
            run.train_loader, run.dataset = _train_loader(opt, run, epoch)  # same order and seeds per epoch
        if opt.image_weights:
            reweight_images(run.dataset, run.model, maps, run.nc)
        plot_dir = None if opt.resume or epoch > start_epoch else run.save_dir  # the first batches of a new run
        if hasattr(run.objective, "start_epoch"):  # schedules of the objective (KD off for the last epochs)
            run.objective.start_epoch(epoch, opt.epochs)
        mloss = train_one_epoch(run.model, run.objective, run.train_loader, run.optimizer, scaler, run.ema, epoch,
                                settings, plot_dir=plot_dir)
        lrs = [x["lr"] for x in run.optimizer.param_groups][:3]
        run.scheduler.step()
        check_replicas(run.objective, "distillation adapters and loss parameters")  # no silent drift
        stop = False
        if run.main:  # rank 0 validates, logs, saves and decides on early stopping
            run.ema.update_attr(run.model, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])
            final_epoch = epoch + 1 == opt.epochs or stopper.possible_stop
            if not opt.noval or final_epoch:
                with _as_deployed(run.ema.ema):
                    results, maps, _ = validate.run(run.data_dict, batch_size=run.batch_size * 2, imgsz=run.imgsz,
                                                    model=run.ema.ema, single_cls=opt.single_cls,
                                                    dataloader=run.val_loader, save_dir=run.save_dir, plots=False,
                                                    compute_loss=run.compute_loss, half=run.cuda)
            fi = fitness_of(results)
            best_fitness = max(best_fitness, fi)
            logger.log_epoch(epoch, mloss, results, lrs)
            if not opt.nosave or final_epoch:
                save_run(epoch, best_fitness, fi, opt, run.wdir, model=run.model, ema=run.ema,
                         optimizer=run.optimizer, objective=run.objective)
            stop = stopper(epoch=epoch, fitness=fi)
        if broadcast_object(stop):  # all ranks leave together: a rank left in a collective would hang
            break
    if logger:
        LOGGER.info(f"\n{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        logger.close()


@contextmanager
def _as_deployed(model: nn.Module):
    """A YOLO26 model validated the way val.py, detect.py and ultralytics use it: NMS-free, its one-to-one head's
    top-k rows (best.pt is then the best one-to-one model); other models as they are. The checkpoints keep the
    one-to-many eval output (the flag is set back before they are written)."""
    e2e = bool(getattr(model, "supports_end2end", False))
    if e2e:
        model.set_end2end(True)
    try:
        yield model
    finally:
        if e2e:
            model.set_end2end(False)


def _finish(opt, run: TrainRun) -> None:
    """Strip optimizers, validate best.pt with plots, draw results.png."""
    from engine import validate
    from models.checkpoint import attempt_load, strip_optimizer
    from utils.plots import plot_results

    for f in (run.last, run.best):
        if f.exists():
            strip_optimizer(f)
    if run.best.exists():
        LOGGER.info(f"\nValidating {run.best}...")
        is_coco = str(opt.data).endswith("coco.yaml") and int(run.data_dict["nc"]) == 80
        model = attempt_load(run.best, run.device, end2end=True)  # YOLO26: NMS-free, as val.py
        validate.run(run.data_dict, batch_size=run.batch_size * 2, imgsz=run.imgsz, model=model,
                     iou_thres=0.65 if is_coco else 0.60, single_cls=opt.single_cls,
                     dataloader=run.val_loader, save_dir=run.save_dir, save_json=is_coco, verbose=True, plots=True,
                     compute_loss=run.compute_loss, half=run.cuda, workers=opt.workers)
    try:
        plot_results(file=run.save_dir / "results.csv")
    except Exception as e:  # noqa: BLE001  (a plot must never lose a finished run)
        LOGGER.warning(f"WARNING: results.png not written: {e}")
    LOGGER.info(f"Results saved to {colorstr('bold', str(run.save_dir))}")
