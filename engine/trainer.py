"""The training loop shared by train.py and train_kd.py.

`train(opt, make_objective)` reads top to bottom in the order things happen: setup, data, model,
objective, optimizer, resume, epochs, final evaluation. What is minimised is an *objective*
(engine/objective.py); the loop never knows whether it distils.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from engine.run_checkpoint import restore_run, save_run
from engine.setup import (
    build_model,
    describe_start,
    freeze_layers,
    load_hyp,
    log_header,
    prepare_opt,
    write_run_files,
)
from engine.train_utils import (
    RunningMeans,
    class_weights,
    fitness_of,
    multi_scale,
    plot_label_stats,
    plot_train_batch,
    reweight_images,
    train_autocast,
)
from utils.distributed import (
    allreduce_grads,
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
from utils.general import LOGGER, UserError, check_img_size, colorstr, init_seeds

__all__ = ["prepare_opt", "train", "train_one_epoch"]


class NonFiniteLoss(UserError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


def train(opt, make_objective=None) -> Path:
    """Train a model as YOLOv5 v6.0's train.py does; returns the run directory.

    make_objective(ctx) -> nn.Module builds the objective from a context holding model, compute_loss,
    hyp, opt, device, data_dict, val_loader, imgsz, nc, names (default: engine.objective.DetectionObjective).
    """
    from engine.optim import warmup_iterations

    r = _setup(opt)
    model, ckpt = build_model(opt, r.nc, r.hyp, r.device)
    # NHWC convolutions: 1.8-2x the AMP step on an H200 (bench_cuda.py), 1.1x a float32 CPU step and
    # needed for the bf16 CPU kernels' speed (bench/RESULTS.md); checkpoints are written NCHW. Single
    # process only. NHWC kernels reduce a batch in another order than NCHW ones (same float32 accuracy,
    # ~3e-7 relative per conv), and a from-scratch run amplifies such rounding to ~1e-3 in weights within
    # a few steps; DDP keeps NCHW, whose 2-process run reproduces the 1-process run to 1e-6
    # (tests/test_ddp.py runs the reference with --no-channels-last).
    if r.local_rank == -1 and not getattr(opt, "no_channels_last", False):
        from utils.torch_utils import to_channels_last

        to_channels_last(model)
    r.start_epoch = int(ckpt["epoch"]) + 1 if opt.resume and ckpt else 0  # the loaders continue from here
    freeze_layers(model, opt.freeze)
    r.gs = max(int(model.stride.max()), 32)
    r.imgsz = check_img_size(opt.imgsz, r.gs, floor=r.gs * 2)
    r.batch_size = opt.batch_size // r.world_size
    train_loader, dataset, val_loader = _loaders(opt, r, model)
    objective, compute_loss = _objective(opt, r, model, dataset, val_loader, make_objective)
    optimizer, scheduler, lf = _optimizer(opt, r, model, objective)
    ema = None
    if r.rank in (-1, 0):
        from utils.torch_utils import ModelEMA

        ema = ModelEMA(model)
    start_epoch, best_fitness = restore_run(ckpt, opt, optimizer, ema, objective) if ckpt else (0, 0.0)
    del ckpt
    scheduler.last_epoch = start_epoch - 1
    if r.local_rank != -1:
        model = wrap_ddp(model, r.device, sync_bn=opt.sync_bn)  # broadcasts rank 0's student
        broadcast_module(objective)  # and rank 0's adapters / loss parameters, which DDP does not hold

    r.lf, r.nb = lf, len(train_loader)
    # v6.0 warms up for at least 1000 iterations; hyp key warmup_min_iters (ours) lowers it for short runs
    r.nw = warmup_iterations(r.hyp["warmup_epochs"], r.nb, minimum=int(r.hyp.get("warmup_min_iters", 1000)))
    if r.rank in (-1, 0) and not opt.resume:
        from engine.options import check_warmup

        check_warmup(r.nw, r.nb, opt.epochs, r.hyp)  # says so once when warmup covers more than half the run
    loop = SimpleNamespace(model=model, objective=objective, optimizer=optimizer, scheduler=scheduler, ema=ema,
                           train_loader=train_loader, dataset=dataset, val_loader=val_loader,
                           compute_loss=compute_loss)
    _fit(opt, r, loop, start_epoch, best_fitness)
    if r.rank in (-1, 0):
        _finish(r, opt, val_loader, compute_loss)
    barrier()  # the other ranks wait for rank 0's final validation, then all leave the process group
    cleanup()
    torch.cuda.empty_cache()
    return r.save_dir


def _setup(opt) -> SimpleNamespace:
    """Device, run folders, hyperparameters (+ hyp.yaml/opt.yaml), seeds and the dataset dict."""
    from utils.data.config import check_dataset
    from utils.torch_utils import select_device, torch_distributed_zero_first

    local_rank, rank, world_size = ddp_env()
    device = rank_device() or select_device(opt.device, batch_size=opt.batch_size)
    save_dir = Path(opt.save_dir)
    wdir = save_dir / "weights"
    if rank in (-1, 0):  # rank 0 alone writes files
        wdir.mkdir(parents=True, exist_ok=True)
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
    return SimpleNamespace(local_rank=local_rank, rank=rank, world_size=world_size, device=device,
                           cuda=device.type == "cuda", save_dir=save_dir, wdir=wdir, last=wdir / "last.pt",
                           best=wdir / "best.pt", hyp=hyp, data_dict=data_dict, nc=nc, names=names)


def _mosaic_closed(opt, r, epoch: int) -> bool:
    """hyp close_mosaic (v8 hyps: 10): the last that many epochs train without mosaic/mixup/copy-paste."""
    return epoch >= opt.epochs - int(r.hyp.get("close_mosaic", 0))


def _train_loader(opt, r, epoch: int):
    """The shuffled augmented train loader from `epoch` on (mosaic off once _mosaic_closed)."""
    from utils.data.dataloaders import create_dataloader

    hyp = {**r.hyp, "mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0} if _mosaic_closed(opt, r, epoch) else r.hyp
    return create_dataloader(
        r.data_dict["train"], r.imgsz, r.batch_size, r.gs, opt.single_cls, hyp=hyp, augment=True,
        cache=opt.cache, rect=opt.rect, rank=r.local_rank, workers=opt.workers, image_weights=opt.image_weights,
        quad=opt.quad, prefix=colorstr("train: "), shuffle=True, seed=opt.seed, nc=r.nc, data_file=opt.data,
        start_epoch=epoch)


def _loaders(opt, r, model):
    """Shuffled augmented train loader; rect val loader, label plots and autoanchor on the main process."""
    from utils.data.dataloaders import create_dataloader

    train_loader, dataset = _train_loader(opt, r, r.start_epoch)
    val_loader = None
    if r.rank in (-1, 0):
        val_loader = create_dataloader(
            r.data_dict["val"], r.imgsz, r.batch_size * 2, r.gs, opt.single_cls, hyp=r.hyp,
            cache=None if opt.noval else opt.cache, rect=True, rank=-1, workers=opt.workers, pad=0.5,
            prefix=colorstr("val: "))[0]
        if not opt.resume:
            plot_label_stats(dataset, r.names, r.save_dir)
            if not opt.noautoanchor and getattr(model, "has_anchors", True):  # anchor-free heads: nothing to fit
                from engine.autoanchor import check_anchors

                check_anchors(dataset, model=model, thr=r.hyp["anchor_t"], imgsz=r.imgsz)
    if not opt.resume:
        model.half().float()  # pre-reduce anchor precision (v6.0), on every rank alike
    sync_detect_anchors(model)  # autoanchor ran on rank 0: losses on the other ranks must see its anchors
    return train_loader, dataset, val_loader


def _objective(opt, r, model, dataset, val_loader, make_objective):
    """Scale the loss gains to the model and image size, then build the loss and the objective."""
    from engine.objective import DetectionObjective
    from utils.losses.yolov5 import ComputeLoss, scale_loss_gains

    # the model's head decides its gains and loss (YOLOv5: scaled v6.0 gains, ComputeLoss; v8: as written)
    has_head = hasattr(model, "build_loss")
    r.hyp = model.loss_gains(r.hyp, r.nc, r.imgsz) if has_head else scale_loss_gains(
        r.hyp, r.nc, model.model[-1].nl, r.imgsz)
    model.nc, model.hyp, model.names = r.nc, r.hyp, r.names
    model.class_weights = class_weights(dataset.labels, r.nc).to(r.device)
    compute_loss = model.build_loss(r.hyp) if has_head else ComputeLoss.from_model(model, r.hyp)
    ctx = SimpleNamespace(model=model, compute_loss=compute_loss, hyp=r.hyp, opt=opt, device=r.device,
                          data_dict=r.data_dict, val_loader=val_loader, imgsz=r.imgsz, nc=r.nc, names=r.names)
    objective = make_objective(ctx) if make_objective else DetectionObjective(compute_loss)
    return objective.to(r.device), compute_loss


def _optimizer(opt, r, model, objective):
    """SGD/Adam over the model and the objective's own parameters (KD adapters), LR schedule.

    Nominal batch 64 (gradient accumulation) with weight decay scaled to match; the hyp key nbs (ours,
    default 64 as v6.0) lowers it for short schedules on small data.
    """
    from engine.optim import build_optimizer, lr_lambda

    r.nbs = int(r.hyp.get("nbs", 64))
    accumulate = max(round(r.nbs / opt.batch_size), 1)
    r.hyp["weight_decay"] *= opt.batch_size * accumulate / r.nbs
    optimizer = build_optimizer(model, r.hyp, adam=opt.adam, extra_params=[objective])
    lf = lr_lambda(opt.epochs, r.hyp["lrf"], linear=opt.linear_lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf), lf


def _fit(opt, r, loop, start_epoch: int, best_fitness: float) -> None:
    """The epochs: train, validate the EMA, log, checkpoint, early stop."""
    from engine import validate
    from utils.loggers import ResultsLogger
    from utils.torch_utils import EarlyStopping

    logger = ResultsLogger(r.save_dir) if r.rank in (-1, 0) else None
    if logger and opt.resume:
        logger.truncate_from(start_epoch)
    stopper = EarlyStopping(patience=opt.patience)
    scaler = torch.amp.GradScaler("cuda", enabled=r.cuda)
    results, maps = (0, 0, 0, 0, 0, 0, 0), np.zeros(r.nc)
    describe_start(opt, r.save_dir)
    t0, epoch = time.time(), start_epoch - 1
    for epoch in range(start_epoch, opt.epochs):
        # main-process randomness (multi-scale sizes, image weights) drawn from (seed, epoch), like the
        # data (EpochSampler): a resumed epoch repeats what an uninterrupted run does in it
        init_seeds(opt.seed + 1 + max(r.rank, 0) + 1000 * (epoch + 1))
        loop.model.train()
        if epoch > start_epoch and _mosaic_closed(opt, r, epoch) and not _mosaic_closed(opt, r, epoch - 1):
            LOGGER.info(f"Closing mosaic: epochs {epoch}-{opt.epochs - 1} train on single images (hyp close_mosaic)")
            loop.train_loader, loop.dataset = _train_loader(opt, r, epoch)  # same order and seeds per epoch
        if opt.image_weights:
            reweight_images(loop.dataset, loop.model, maps, r.nc)
        state = SimpleNamespace(**{**vars(r), "batch_size": opt.batch_size}, epoch=epoch, epochs=opt.epochs,
                                multi_scale=opt.multi_scale, quad=opt.quad, bf16=bool(getattr(opt, "bf16", False)),
                                plot_dir=None if opt.resume or epoch > start_epoch else r.save_dir)
        mloss = train_one_epoch(loop.model, loop.objective, loop.train_loader, loop.optimizer, scaler, loop.ema,
                                state)
        lrs = [x["lr"] for x in loop.optimizer.param_groups][:3]
        loop.scheduler.step()
        check_replicas(loop.objective, "distillation adapters and loss parameters")  # no silent drift
        stop = False
        if r.rank in (-1, 0):  # rank 0 validates, logs, saves and decides on early stopping
            loop.ema.update_attr(loop.model, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])
            final_epoch = epoch + 1 == opt.epochs or stopper.possible_stop
            if not opt.noval or final_epoch:
                results, maps, _ = validate.run(r.data_dict, batch_size=r.batch_size * 2, imgsz=r.imgsz,
                                                model=loop.ema.ema, single_cls=opt.single_cls,
                                                dataloader=loop.val_loader, save_dir=r.save_dir, plots=False,
                                                compute_loss=loop.compute_loss, half=r.cuda)
            fi = fitness_of(results)
            best_fitness = max(best_fitness, fi)
            logger.log_epoch(epoch, mloss, results, lrs)
            if not opt.nosave or final_epoch:
                save_run(epoch, best_fitness, fi, loop, opt, r.wdir)
            stop = stopper(epoch=epoch, fitness=fi)
        if broadcast_object(stop):  # all ranks leave together: a rank left in a collective would hang
            break
    if logger:
        LOGGER.info(f"\n{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        logger.close()


def train_one_epoch(model, objective, loader, optimizer, scaler, ema, s) -> dict[str, float]:
    """One pass over the training data. Returns the mean of every logged objective term."""
    from engine.optim import warmup

    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(s.epoch)
    pbar = enumerate(loader)
    if s.rank in (-1, 0):
        pbar = tqdm(pbar, total=s.nb, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}")
    log = RunningMeans(sync_every_step=not s.cuda)
    accumulate = max(round(s.nbs / s.batch_size), 1)
    optimizer.zero_grad()
    last_opt_step = -1
    for i, (imgs, targets, paths, _) in pbar:
        ni = i + s.nb * s.epoch
        imgs = imgs.to(next(model.parameters()).device, non_blocking=True).float() / 255  # uint8 -> [0, 1]
        targets = targets.to(imgs.device)
        if ni <= s.nw:
            accumulate = warmup(optimizer, ni, s.nw, s.epoch, s.lf, s.hyp, s.batch_size, nbs=s.nbs)
        if s.multi_scale:
            imgs = multi_scale(imgs, s.imgsz, s.gs)
        with train_autocast(s):
            out = objective(model, imgs, targets)
        loss = out["loss"]
        if s.world_size > 1:
            loss = loss * s.world_size  # gradients are averaged between DDP processes
        if s.quad:
            loss = loss * 4.0
        log.add(out, loss)
        if log.synced and not log.finite:  # on CPU: every step, before the step can change the weights
            _raise_non_finite(s, i, log)
        scaler.scale(loss).backward()
        if s.world_size > 1:
            allreduce_grads(objective)  # adapters/loss parameters sit outside the DDP-wrapped student
        if ni - last_opt_step >= accumulate:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            if ema:
                ema.update(model)
            last_opt_step = ni
        last = i == s.nb - 1
        if s.rank in (-1, 0):
            if i == 0:  # v6.0 column header, with the objective's extra terms (kd, at, ...)
                pbar.write(log_header([], log.names))  # the logged terms, in the order they are printed
            if log.due(last):  # CUDA: one host sync per second of training, not one per step
                mean = log.means()
                mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
                pbar.set_description(("%10s" * 2 + "%10.4g" * (len(mean) + 2)) % (
                    f"{s.epoch}/{s.epochs - 1}", mem, *mean.values(), targets.shape[0], imgs.shape[-1]))
            if s.plot_dir is not None and ni < 3:
                plot_train_batch(imgs, targets, paths, s.plot_dir / f"train_batch{ni}.jpg")
        elif log.due(last):
            log.means()
        if log.synced and not log.finite:  # CUDA: AMP's GradScaler skipped the non-finite steps
            _raise_non_finite(s, i, log)
    return log.means()


def _raise_non_finite(s, i: int, log: RunningMeans) -> None:
    terms = ", ".join(f"{k}={v:.4g}" for k, v in log.means().items())
    raise NonFiniteLoss(f"non-finite loss at epoch {s.epoch}, batch {i} (epoch means so far: {terms}); training "
                        f"stopped. The last good checkpoint is {s.last if s.last.exists() else 'none (first epoch)'}; "
                        "lower lr0 in the hyp file or check the labels, then --resume or restart")


# --------------------------------------------------------------------------------------------------
# small steps of train()


def _finish(r, opt, val_loader, compute_loss) -> None:
    """Strip optimizers, validate best.pt with plots, draw results.png."""
    from engine import validate
    from models.checkpoint import attempt_load, strip_optimizer
    from utils.plots import plot_results

    for f in (r.last, r.best):
        if f.exists():
            strip_optimizer(f)
    if r.best.exists():
        LOGGER.info(f"\nValidating {r.best}...")
        is_coco = str(opt.data).endswith("coco.yaml") and int(r.data_dict["nc"]) == 80
        model = attempt_load(r.best, r.device)
        validate.run(r.data_dict, batch_size=r.batch_size * 2, imgsz=r.imgsz, model=model,
                     iou_thres=0.65 if is_coco else 0.60, single_cls=opt.single_cls,
                     dataloader=val_loader, save_dir=r.save_dir, save_json=is_coco, verbose=True, plots=True,
                     compute_loss=compute_loss, half=r.cuda, workers=opt.workers)
    try:
        plot_results(file=r.save_dir / "results.csv")
    except Exception as e:  # noqa: BLE001  (a plot must never lose a finished run)
        LOGGER.warning(f"WARNING: results.png not written: {e}")
    LOGGER.info(f"Results saved to {colorstr('bold', str(r.save_dir))}")
