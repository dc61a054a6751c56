"""The training loop shared by train.py and train_kd.py.

`train(opt, make_objective)` reads top to bottom in the order things happen: setup, data, model,
objective, optimizer, resume, epochs, final evaluation. What is minimised is an *objective*
(utils/objective.py); the loop never knows whether it distils.
"""

from __future__ import annotations

import math
import random
import time
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.general import LOGGER, UserError, check_img_size, colorstr, init_seeds
from utils.train_setup import (build_model, ddp_env, describe_start, freeze_layers,
                               labels_array, load_hyp, log_header, prepare_opt, write_run_files)

__all__ = ["prepare_opt", "train", "train_one_epoch"]


class NonFiniteLoss(UserError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


def train(opt, make_objective=None) -> Path:
    """Train a model as YOLOv5 v6.0's train.py does; returns the run directory.

    make_objective(ctx) -> nn.Module builds the objective from a context holding model, compute_loss,
    hyp, opt, device, data_dict, val_loader, imgsz (default: utils.objective.DetectionObjective).
    """
    import val as validate  # repository root module
    from utils.checkpoint import safe_torch_load
    from utils.dataset_config import check_dataset
    from utils.datasets import create_dataloader
    from utils.loggers import ResultsLogger
    from utils.loss import ComputeLoss, scale_loss_gains
    from utils.objective import DetectionObjective
    from utils.optim import build_optimizer, lr_lambda, warmup_iterations
    from utils.torch_utils import EarlyStopping, ModelEMA, select_device

    local_rank, rank, world_size = ddp_env()
    device = select_device(opt.device, batch_size=opt.batch_size)
    cuda = device.type == "cuda"
    save_dir = Path(opt.save_dir)
    wdir = save_dir / "weights"
    wdir.mkdir(parents=True, exist_ok=True)
    last, best = wdir / "last.pt", wdir / "best.pt"

    # Hyperparameters and run files
    hyp = load_hyp(opt.hyp)
    hyp["label_smoothing"] = opt.label_smoothing
    opt.hyp = dict(hyp)  # opt.yaml keeps the values, so --resume does not depend on the hyp file
    if not opt.resume:
        write_run_files(save_dir, hyp, opt)
    init_seeds(opt.seed + 1 + rank, deterministic=True)

    # Data
    data_dict = check_dataset(opt.data)
    nc = 1 if opt.single_cls else int(data_dict["nc"])
    names = ["item"] if opt.single_cls and len(data_dict["names"]) != 1 else list(data_dict["names"])

    # Model
    model, ckpt = build_model(opt, nc, hyp, device)
    freeze_layers(model, opt.freeze)
    gs = max(int(model.stride.max()), 32)
    imgsz = check_img_size(opt.imgsz, gs, floor=gs * 2)
    batch_size = opt.batch_size // world_size

    # Data loaders
    train_loader, dataset = create_dataloader(
        data_dict["train"], imgsz, batch_size, gs, opt.single_cls, hyp=hyp, augment=True, cache=opt.cache,
        rect=opt.rect, rank=local_rank, workers=opt.workers, image_weights=opt.image_weights, quad=opt.quad,
        prefix=colorstr("train: "), shuffle=True, seed=opt.seed, nc=nc, data_file=opt.data)
    nb = len(train_loader)
    val_loader = None
    if rank in (-1, 0):
        val_loader = create_dataloader(
            data_dict["val"], imgsz, batch_size * 2, gs, opt.single_cls, hyp=hyp,
            cache=None if opt.noval else opt.cache, rect=True, rank=-1, workers=opt.workers, pad=0.5,
            prefix=colorstr("val: "))[0]
        if not opt.resume:
            _plot_labels(dataset, names, save_dir)
            if not opt.noautoanchor:
                from utils.autoanchor import check_anchors

                check_anchors(dataset, model=model, thr=hyp["anchor_t"], imgsz=imgsz)
            model.half().float()  # pre-reduce anchor precision (v6.0)

    # Loss gains scaled to the model and image size, then the objective
    nl = model.model[-1].nl
    hyp = scale_loss_gains(hyp, nc, nl, imgsz)
    model.nc, model.hyp, model.names = nc, hyp, names
    model.class_weights = _class_weights(dataset.labels, nc).to(device)
    compute_loss = ComputeLoss.from_model(model, hyp)
    ctx = SimpleNamespace(model=model, compute_loss=compute_loss, hyp=hyp, opt=opt, device=device,
                          data_dict=data_dict, val_loader=val_loader, imgsz=imgsz, nc=nc, names=names)
    objective = (make_objective(ctx) if make_objective else DetectionObjective(compute_loss)).to(device)

    # Optimizer: nominal batch 64 (gradient accumulation), weight decay scaled to match.
    # hyp key nbs (ours, default 64 as v6.0) lowers it for short schedules on small data.
    nbs = int(hyp.get("nbs", 64))
    accumulate = max(round(nbs / opt.batch_size), 1)
    hyp["weight_decay"] *= opt.batch_size * accumulate / nbs
    optimizer = build_optimizer(model, hyp, adam=opt.adam, extra_params=[objective])
    lf = lr_lambda(opt.epochs, hyp["lrf"], linear=opt.linear_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(model) if rank in (-1, 0) else None

    # Resume
    start_epoch, best_fitness = 0, 0.0
    if ckpt is not None:
        start_epoch, best_fitness = _restore(ckpt, opt, optimizer, ema, objective, last)
        del ckpt
    scheduler.last_epoch = start_epoch - 1

    # DDP
    if cuda and local_rank != -1:
        if opt.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank], output_device=local_rank)

    # Train
    logger = ResultsLogger(save_dir) if rank in (-1, 0) else None
    if logger and opt.resume:
        logger.truncate_from(start_epoch)
    stopper = EarlyStopping(patience=opt.patience)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    # v6.0 warms up for at least 1000 iterations; hyp key warmup_min_iters (ours) lowers it for short runs
    nw = warmup_iterations(hyp["warmup_epochs"], nb, minimum=int(hyp.get("warmup_min_iters", 1000)))
    results = (0, 0, 0, 0, 0, 0, 0)
    describe_start(opt, save_dir)
    t0 = time.time()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, opt.epochs):
        model.train()
        state = SimpleNamespace(epoch=epoch, epochs=opt.epochs, nb=nb, nw=nw, lf=lf, hyp=hyp,
                                batch_size=opt.batch_size, nbs=nbs, imgsz=imgsz, gs=gs, cuda=cuda, rank=rank,
                                world_size=world_size, multi_scale=opt.multi_scale, quad=opt.quad,
                                plot_dir=None if opt.resume or epoch > start_epoch else save_dir,
                                last=last)
        mloss = train_one_epoch(model, objective, train_loader, optimizer, scaler, ema, state)
        lrs = [x["lr"] for x in optimizer.param_groups][:3]
        scheduler.step()
        if rank not in (-1, 0):
            continue
        ema.update_attr(model, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])
        final_epoch = epoch + 1 == opt.epochs or stopper.possible_stop
        if not opt.noval or final_epoch:
            results, _, _ = validate.run(data_dict, batch_size=batch_size * 2, imgsz=imgsz, model=ema.ema,
                                         single_cls=opt.single_cls, dataloader=val_loader, save_dir=save_dir,
                                         plots=False, compute_loss=compute_loss, half=cuda)
        fi = _fitness(results)
        best_fitness = max(best_fitness, fi)
        logger.log_epoch(epoch, mloss, results, lrs)
        if not opt.nosave or final_epoch:
            _save(epoch, best_fitness, fi, model, ema, optimizer, objective, opt, wdir)
        if stopper(epoch=epoch, fitness=fi):
            break

    if rank in (-1, 0):
        LOGGER.info(f"\n{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        logger.close()
        _finish(last, best, save_dir, data_dict, val_loader, batch_size, imgsz, opt, compute_loss, device, validate)
    torch.cuda.empty_cache()
    return save_dir


def train_one_epoch(model, objective, loader, optimizer, scaler, ema, s) -> dict[str, float]:
    """One pass over the training data. Returns the mean of every logged objective term."""
    from utils.optim import warmup

    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(s.epoch)
    pbar = enumerate(loader)
    if s.rank in (-1, 0):
        pbar = tqdm(pbar, total=s.nb, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}")
    mean: dict[str, float] = {}
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
            imgs = _rescale(imgs, s.imgsz, s.gs)
        with torch.autocast("cuda", enabled=s.cuda):
            out = objective(model, imgs, targets)
        loss = out["loss"]
        if s.world_size > 1:
            loss = loss * s.world_size  # gradients are averaged between DDP processes
        if s.quad:
            loss = loss * 4.0
        if not torch.isfinite(loss).all():
            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out.items() if k != "loss")
            raise NonFiniteLoss(f"non-finite loss at epoch {s.epoch}, batch {i} ({terms}); training stopped. "
                                f"The last good checkpoint is {s.last if s.last.exists() else 'none (first epoch)'}; "
                                "lower lr0 in the hyp file or check the labels, then --resume or restart")
        scaler.scale(loss).backward()
        if ni - last_opt_step >= accumulate:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            if ema:
                ema.update(model)
            last_opt_step = ni
        for k, v in out.items():
            if k != "loss":
                mean[k] = (mean.get(k, 0.0) * i + float(v)) / (i + 1)
        if s.rank in (-1, 0):
            mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
            pbar.set_description(("%10s" * 2 + "%10.4g" * (len(mean) + 2)) % (
                f"{s.epoch}/{s.epochs - 1}", mem, *mean.values(), targets.shape[0], imgs.shape[-1]))
            if s.plot_dir is not None and ni < 3:
                _plot_batch(imgs, targets, paths, s.plot_dir / f"train_batch{ni}.jpg")
    return mean


# --------------------------------------------------------------------------------------------------
# small steps of train()


def _fitness(results) -> float:
    from utils.metrics import fitness

    return float(fitness(np.array(results).reshape(1, -1))[0])


def _class_weights(labels, nc: int) -> torch.Tensor:
    """Inverse class frequency weights (v6.0 labels_to_class_weights)."""
    if not len(labels) or not sum(len(x) for x in labels):
        return torch.ones(nc) / nc
    classes = np.concatenate(labels, 0)[:, 0].astype(int)
    weights = np.bincount(classes, minlength=nc).astype(float)
    weights[weights == 0] = 1
    weights = 1 / weights
    return torch.from_numpy(weights / weights.sum()).float()


def _rescale(imgs: torch.Tensor, imgsz: int, gs: int) -> torch.Tensor:
    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    return nn.functional.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


def _restore(ckpt: dict, opt, optimizer, ema, objective, last: Path) -> tuple[int, float]:
    """--resume: restore optimizer, EMA, objective state, epoch and best fitness from last.pt.

    Starting from a checkpoint without --resume (fine-tuning) restores only the weights.
    """
    if not opt.resume:
        return 0, 0.0
    best_fitness = 0.0
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        best_fitness = float(np.asarray(ckpt["best_fitness"]).reshape(-1)[0])
    if ema and ckpt.get("ema") is not None:
        ema.ema.load_state_dict(ckpt["ema"].float().state_dict())
        ema.updates = ckpt["updates"]
    if ckpt.get("kd_state") is not None:
        objective.load_state_dict(ckpt["kd_state"])
    start_epoch = int(ckpt["epoch"]) + 1
    if start_epoch <= 0:
        raise UserError(f"{opt.weights} was stripped at the end of training (epoch -1): nothing to resume; "
                        "start a new run with --weights instead")
    if start_epoch >= opt.epochs:
        raise UserError(f"{opt.weights} already finished all {opt.epochs} epochs: nothing to resume")
    LOGGER.info(f"Resuming training from epoch {start_epoch} to {opt.epochs} total epochs")
    return start_epoch, best_fitness


def _save(epoch, best_fitness, fi, model, ema, optimizer, objective, opt, wdir: Path) -> None:
    """Write last.pt (and best.pt, epoch{N}.pt) atomically in the v6.0 format (+ date, kd_state)."""
    from utils.checkpoint import save_checkpoint
    from utils.torch_utils import de_parallel

    extra = objective.state_dict()
    ckpt = {"epoch": epoch, "best_fitness": np.array([best_fitness]),
            "model": deepcopy(de_parallel(model)).half(), "ema": deepcopy(ema.ema).half(),
            "updates": ema.updates, "optimizer": optimizer.state_dict(), "wandb_id": None,
            "date": datetime.now().isoformat()}
    if len(extra):
        ckpt["kd_state"] = extra  # adapters etc.: needed to resume, absent from the student model
    save_checkpoint(ckpt, wdir / "last.pt")
    if best_fitness == fi:
        save_checkpoint(ckpt, wdir / "best.pt")
    if opt.save_period > 0 and epoch > 0 and epoch % opt.save_period == 0:
        save_checkpoint(ckpt, wdir / f"epoch{epoch}.pt")


def _finish(last, best, save_dir, data_dict, val_loader, batch_size, imgsz, opt, compute_loss, device, validate) -> None:
    """Strip optimizers, validate best.pt with plots, draw results.png."""
    from utils.checkpoint import attempt_load, strip_optimizer
    from utils.plots import plot_results

    for f in (last, best):
        if f.exists():
            strip_optimizer(f)
    if best.exists():
        LOGGER.info(f"\nValidating {best}...")
        is_coco = str(opt.data).endswith("coco.yaml") and int(data_dict["nc"]) == 80
        model = attempt_load(best, device)
        validate.run(data_dict, batch_size=batch_size * 2, imgsz=imgsz, model=model,
                     iou_thres=0.65 if is_coco else 0.60, single_cls=opt.single_cls,
                     dataloader=val_loader, save_dir=save_dir, save_json=is_coco, verbose=True, plots=True,
                     compute_loss=compute_loss, half=device.type == "cuda", workers=opt.workers)
    try:
        plot_results(file=save_dir / "results.csv")
    except Exception as e:  # a plot must never lose a finished run
        LOGGER.warning(f"WARNING: results.png not written: {e}")
    LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}")


def _plot_labels(dataset, names, save_dir: Path) -> None:
    from utils.plots import plot_labels

    try:
        plot_labels(labels_array(dataset), names, save_dir)
    except Exception as e:
        LOGGER.warning(f"WARNING: labels.jpg not written: {e}")


def _plot_batch(imgs, targets, paths, fname: Path) -> None:
    from utils.plots import plot_images

    try:
        plot_images(imgs, targets, paths, fname)
    except Exception as e:
        LOGGER.warning(f"WARNING: {fname.name} not written: {e}")
