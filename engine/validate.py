"""Validation of a detector on a dataset: P, R, mAP@.5, mAP@.5:.95, speed and plots (v6.0's val.run).

`run(data_dict, model=ema.ema, dataloader=val_loader, ...)` is what the trainer calls after every epoch;
val.py parses the flags and calls it for a checkpoint (`val.run` is the same function).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.options import check_val_args
from utils.boxes import scale_coords, xywh2xyxy, xyxy2xywh
from utils.general import (
    LOGGER,
    ROOT,
    UserError,
    check_img_size,
    colorstr,
    increment_path,
)
from utils.metrics import ConfusionMatrix, ap_per_class, process_batch
from utils.nms import nms_for
from utils.plots import (
    output_to_target,
    plot_confusion_matrix,
    plot_images,
    plot_mc_curve,
    plot_pr_curve,
)
from utils.torch_utils import select_device, time_sync, to_channels_last

IOUV = torch.linspace(0.5, 0.95, 10)  # IoU thresholds of mAP@.5:.95
TABLE_HEADER = ("%20s" + "%11s" * 6) % ("Class", "Images", "Labels", "P", "R", "mAP@.5", "mAP@.5:.95")
ROW_FORMAT = "%20s" + "%11i" * 2 + "%11.3g" * 4


def coco80_to_coco91_class() -> list[int]:
    """COCO's 80 detection classes -> the ids of the 91-id paper numbering used in instances_*.json."""
    gaps = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # ids never used for boxes
    return [i for i in range(1, 91) if i not in gaps]


def save_one_txt(predn: torch.Tensor, save_conf: bool, shape: tuple[int, int], file: Path) -> None:
    """Append rows 'cls x y w h [conf]' (xywh normalised by the original image (h, w)) to file."""
    gn = torch.tensor(shape, dtype=torch.float32)[[1, 0, 1, 0]]
    xywh = (xyxy2xywh(predn[:, :4].float().cpu()) / gn).tolist()
    with open(file, "a") as f:
        for (conf, cls), b in zip(predn[:, 4:6].tolist(), xywh):
            line = (cls, *b, conf) if save_conf else (cls, *b)
            f.write(("%g " * len(line)).rstrip() % line + "\n")


def save_one_json(predn: torch.Tensor, jdict: list, path: Path, class_map: list[int]) -> None:
    """Append COCO results {image_id, category_id, bbox [x_min, y_min, w, h] original pixels, score}."""
    image_id = int(path.stem) if path.stem.isnumeric() else path.stem
    box = xyxy2xywh(predn[:, :4].float().cpu())
    box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
    for p, b in zip(predn.tolist(), box.tolist()):
        jdict.append({"image_id": image_id, "category_id": class_map[int(p[5])],
                      "bbox": [round(x, 3) for x in b], "score": round(p[4], 5)})


def image_stats(predn: torch.Tensor, labelsn: torch.Tensor, iouv: torch.Tensor = IOUV) -> tuple:
    """Statistics of one image: (correct (n, k) bool, conf (n,), pred_cls (n,), target_cls (m,)).

    predn (n, 6) [x1, y1, x2, y2, conf, cls] and labelsn (m, 5) [cls, x1, y1, x2, y2] in the same pixels.
    """
    iouv = iouv.to(predn.device)
    if len(labelsn) and len(predn):
        correct = process_batch(predn, labelsn, iouv)
    else:
        correct = torch.zeros(len(predn), len(iouv), dtype=torch.bool, device=predn.device)
    return correct.cpu(), predn[:, 4].cpu(), predn[:, 5].cpu(), labelsn[:, 0].cpu()


def summarize(stats: list[tuple], nc: int) -> dict:
    """Dataset metrics from per-image stats: mp, mr, map50, map (floats), nt (nc,) label counts,
    per-class p, r, ap50, ap (mAP@.5:.95) over `classes`, and the ap_per_class result for plots (or None).
    """
    cols = [torch.cat([torch.as_tensor(s[k]).float() for s in stats]).numpy() for k in range(4)] if stats else []
    out = {"mp": 0.0, "mr": 0.0, "map50": 0.0, "map": 0.0, "classes": np.zeros(0, dtype=int), "ap_stats": None,
           "nt": np.zeros(nc, dtype=int)}
    if not cols or not len(cols[3]):
        return out
    tp = cols[0].astype(bool)
    out["nt"] = np.bincount(cols[3].astype(np.int64), minlength=nc)
    res = ap_per_class(tp, cols[1], cols[2], cols[3])
    out["ap_stats"] = res
    if tp.any():  # v6.0 reports zeros unless something was found
        p, r, ap, _, classes = res[:5]
        out.update(p=p, r=r, ap50=ap[:, 0], ap=ap.mean(1), classes=classes, mp=float(p.mean()),
                   mr=float(r.mean()), map50=float(ap[:, 0].mean()), map=float(ap.mean()))
    return out


def _setup_standalone(data, weights, batch_size, imgsz, task, device, workers, single_cls, half, project, name,
                      exist_ok, save_txt, trust, cfg=None, nms=False):
    """Device, run folder, model and dataloader for a val.py run (not called from training)."""
    from models.experimental import attempt_load
    from utils.data.dataloaders import create_dataloader

    device = select_device(device, batch_size=batch_size)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    model = attempt_load(weights, map_location=device, trust=trust, cfg=cfg, end2end=not nms)  # YOLO26: NMS-free
    gs = max(int(model.stride.max()), 32)
    imgsz = check_img_size(imgsz, s=gs)
    half &= device.type != "cpu"
    model.half() if half else model.float()
    model.eval()
    to_channels_last(model)  # NHWC convolutions: 1.7x a fused yolov5s forward on CPU (bench/RESULTS.md)
    # one warm-up pass, so that the first batch's timing does not include CUDA / oneDNN start-up
    model(torch.zeros(1, 3, imgsz, imgsz, device=device).type_as(next(model.parameters())))
    split = task if task in ("train", "val", "test") else "val"
    if not data.get(split):
        raise UserError(f"val.py --task {task}: the data yaml {data.get('yaml_file') or ''} has no '{split}' split")
    pad = 0.0 if task == "speed" else 0.5
    dataloader = create_dataloader(data[split], imgsz, batch_size, gs, single_cls, pad=pad, rect=True,
                                   workers=workers, prefix=colorstr(f"{split}: "))[0]
    return device, save_dir, model, imgsz, half, dataloader


def _class_names(model, data: dict, nc: int, training: bool) -> list[str]:
    """Model names (v6.0), extended with data names / numbers so every index up to nc has one."""
    m = model.module if hasattr(model, "module") else model
    names = getattr(m, "names", None) or data.get("names") or []
    names = list(names.values()) if isinstance(names, dict) else list(names)
    model_nc = len(names)
    if not training and model_nc and model_nc != nc and nc > 1:  # single-cls folds every class into one
        LOGGER.warning(f"WARNING: the model predicts {model_nc} classes but the data has nc={nc}; "
                       f"predictions of classes the data lacks count as false positives")
    names += [str(i) for i in range(len(names), nc)]
    return names


@torch.no_grad()
def run(data, weights=None, batch_size: int = 32, imgsz: int = 640, conf_thres: float = 0.001,
        iou_thres: float = 0.6, task: str = "val", device="", workers: int = 8, single_cls: bool = False,
        augment: bool = False, verbose: bool = False, save_txt: bool = False, save_hybrid: bool = False,
        save_conf: bool = False, save_json: bool = False, project=ROOT / "runs/val", name: str = "exp",
        exist_ok: bool = False, half: bool = True, model=None, dataloader=None, save_dir=Path(""),
        plots: bool = True, compute_loss=None, trust: bool = False, cfg=None, nms: bool = False):
    """Validate; returns ((mp, mr, map50, map, box_loss, obj_loss, cls_loss), maps (nc,), t (3,) ms/image).

    From training pass model= (it is not modified: FP16 runs on a copy) and dataloader=; otherwise
    weights are loaded with attempt_load (trust=True allows a full unpickle of trusted checkpoints; cfg,
    a model yaml, builds the model of a state_dict-only file). Standalone, every option is checked first.
    A YOLO26 model (end2end head) is validated NMS-free on its one-to-one top-300 rows, as ultralytics does;
    nms=True uses its one-to-many head with NMS instead (no effect on other models, which always use NMS).
    maps[c] is the mAP@.5:.95 of class c; classes without labels get the overall map.
    """
    training = model is not None
    if not training:
        paths = check_val_args(data, weights, batch_size, imgsz, conf_thres, iou_thres, task, workers, cfg,
                               device, project)
        weights = [str(p) for p in paths] if isinstance(weights, (list, tuple)) and len(paths) > 1 else str(paths[0])
    if isinstance(data, (str, Path)):
        from utils.data.config import check_dataset

        data = check_dataset(data)
    if training:
        device = next(model.parameters()).device
        half &= device.type != "cpu"
        if half:  # v6.0 half()-then-float() rounds the EMA weights each epoch; a copy leaves them exact
            model = copy.deepcopy(model).half()
        model.eval()
    else:
        save_txt |= save_hybrid
        device, save_dir, model, imgsz, half, dataloader = _setup_standalone(
            data, weights, batch_size, imgsz, task, device, workers, single_cls, half, project, name, exist_ok,
            save_txt, trust, cfg, nms)
        if task == "speed":
            conf_thres, iou_thres, plots = 0.25, 0.45, False
    save_dir = Path(save_dir)
    nc = 1 if single_cls else int(data["nc"])
    is_coco = isinstance(data.get("val"), str) and data["val"].endswith("coco/val2017.txt")
    names = _class_names(model, data, nc, training)
    confusion_matrix = ConfusionMatrix(nc=nc if single_cls else max(nc, len(names)))
    class_map = coco80_to_coco91_class() if is_coco else list(range(1000))
    opts = {"conf_thres": conf_thres, "iou_thres": iou_thres, "single_cls": single_cls, "augment": augment,
            "half": half, "save_txt": save_txt, "save_hybrid": save_hybrid, "save_conf": save_conf,
            "save_json": save_json, "plots": plots, "class_map": class_map}

    seen, dt, loss, jdict, stats = _loop(model, dataloader, device, names, save_dir, confusion_matrix,
                                         compute_loss, opts)
    res = summarize(stats, nc)
    t = tuple(x / max(seen, 1) * 1e3 for x in dt)
    _report(res, seen, names, nc, t, training, verbose, batch_size, imgsz)
    if plots:
        _plot_metrics(res, confusion_matrix, names, save_dir)
    if save_json and jdict:
        res["map50"], res["map"] = _coco_eval(jdict, data, weights, save_dir, dataloader, is_coco,
                                              res["map50"], res["map"])
    if not training:
        n_txt = len(list(save_dir.glob("labels/*.txt")))
        s = f"\n{n_txt} labels saved to {save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{s}")
    maps = np.zeros(nc) + res["map"]
    for i, c in enumerate(res["classes"]):
        maps[c] = res["ap"][i]
    losses = (loss.cpu() / max(len(dataloader), 1)).tolist()
    return (res["mp"], res["mr"], res["map50"], res["map"], *losses), maps, t


def _loop(model, dataloader, device, names, save_dir, confusion_matrix, compute_loss, o):
    """Inference, NMS and per-image statistics over the whole loader."""
    dt, seen = [0.0, 0.0, 0.0], 0
    loss = torch.zeros(3, device=device)
    jdict, stats = [], []
    for batch_i, (img, targets, paths, shapes) in enumerate(tqdm(dataloader, desc=TABLE_HEADER, file=sys.stdout,
                                                                 bar_format="{l_bar}{bar:10}{r_bar}")):
        t1 = time_sync()
        img = img.to(device, non_blocking=True)
        img = (img.half() if o["half"] else img.float()) / 255  # uint8 0-255 -> 0.0-1.0
        targets = targets.to(device)
        nb, _, height, width = img.shape
        t2 = time_sync()
        dt[0] += t2 - t1

        out, train_out = model(img, augment=o["augment"])
        dt[1] += time_sync() - t2
        if compute_loss is not None and train_out is not None:
            items = compute_loss([x.float() for x in train_out], targets)[1]
            names = getattr(compute_loss, "names", ("box", "obj", "cls"))  # v8 loss: box, cls, dfl
            loss += torch.stack([items[names.index(k)] if k in names else items.new_zeros(()) for k in
                                 ("box", "obj", "cls")])  # the val/box, val/obj, val/cls columns

        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # normalised -> pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if o["save_hybrid"] else []
        t3 = time_sync()
        out = nms_for(model)(out.float(), o["conf_thres"], o["iou_thres"], labels=lb, multi_label=True,
                                  agnostic=o["single_cls"])
        dt[2] += time_sync() - t3

        for si, pred in enumerate(out):
            labels = targets[targets[:, 0] == si, 1:]
            path, shape = Path(paths[si]), shapes[si][0]
            seen += 1
            if o["single_cls"]:
                pred[:, 5] = 0
            predn = pred.clone()
            scale_coords(img[si].shape[1:], predn[:, :4], shape, shapes[si][1])  # original-image pixels
            tbox = xywh2xyxy(labels[:, 1:5])
            scale_coords(img[si].shape[1:], tbox, shape, shapes[si][1])
            labelsn = torch.cat((labels[:, 0:1], tbox), 1)
            if len(pred) or len(labels):
                stats.append(image_stats(predn, labelsn))
            if o["plots"]:
                confusion_matrix.process_batch(predn, labelsn)
            if o["save_txt"] and len(predn):
                save_one_txt(predn, o["save_conf"], shape, file=save_dir / "labels" / f"{path.stem}.txt")
            if o["save_json"]:
                save_one_json(predn, jdict, path, o["class_map"])

        if o["plots"] and batch_i < 3:
            plot_images(img, targets, paths, save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(img, output_to_target(out), paths, save_dir / f"val_batch{batch_i}_pred.jpg", names)
    return seen, dt, loss, jdict, stats


def _report(res, seen, names, nc, t, training, verbose, batch_size, imgsz) -> None:
    """The v6.0 table: 'all' row, per-class rows (few classes or verbose), and the speed line."""
    nt = res["nt"]
    LOGGER.info(ROW_FORMAT % ("all", seen, nt.sum(), res["mp"], res["mr"], res["map50"], res["map"]))
    if nt.sum() == 0:
        LOGGER.warning("WARNING: no labels found in the validation set, so no metrics can be computed")
    if (verbose or (nc < 50 and not training)) and nc > 1:
        for i, c in enumerate(res["classes"]):
            LOGGER.info(ROW_FORMAT % (names[c], seen, nt[c], res["p"][i], res["r"][i], res["ap50"][i], res["ap"][i]))
    if not training:
        shape = (batch_size, 3, imgsz, imgsz)
        LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % t)


def _plot_metrics(res, confusion_matrix, names, save_dir: Path) -> None:
    """PR/F1/P/R curves (over the classes with labels) and the confusion matrix."""
    plot_confusion_matrix(confusion_matrix.matrix, save_dir, names)
    s = res["ap_stats"]
    if s is None:
        return
    cn = [names[c] if c < len(names) else str(c) for c in s.classes]
    cv = s.curves
    plot_pr_curve(cv["px"], cv["py"], s.ap, save_dir / "PR_curve.png", cn)
    plot_mc_curve(cv["px"], cv["f1"], save_dir / "F1_curve.png", cn, ylabel="F1")
    plot_mc_curve(cv["px"], cv["p"], save_dir / "P_curve.png", cn, ylabel="Precision")
    plot_mc_curve(cv["px"], cv["r"], save_dir / "R_curve.png", cn, ylabel="Recall")


def _coco_eval(jdict, data, weights, save_dir: Path, dataloader, is_coco, map50, map_):
    """Write <weights stem>_predictions.json; evaluate with pycocotools when possible (else say why)."""
    w = Path(weights[0] if isinstance(weights, (list, tuple)) else weights).stem if weights else ""
    pred_json = save_dir / f"{w}_predictions.json"
    anno_json = Path(data.get("path") or "../coco") / "annotations/instances_val2017.json"
    LOGGER.info(f"\nSaving {pred_json}...")
    with open(pred_json, "w") as f:
        json.dump(jdict, f)
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        LOGGER.info("pycocotools evaluation skipped: pycocotools is not installed (pip install pycocotools)")
        return map50, map_
    if not anno_json.is_file():
        LOGGER.info(f"pycocotools evaluation skipped: annotations file {anno_json} not found")
        return map50, map_
    try:
        anno = COCO(str(anno_json))
        pred = anno.loadRes(str(pred_json))
        ev = COCOeval(anno, pred, "bbox")
        if is_coco:
            ev.params.imgIds = [int(Path(x).stem) for x in dataloader.dataset.im_files]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return float(ev.stats[1]), float(ev.stats[0])
    except Exception as e:  # noqa: BLE001  a foreign annotation file must not lose the computed metrics
        LOGGER.warning(f"WARNING: pycocotools evaluation failed: {e}")
        return map50, map_
