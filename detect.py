#!/usr/bin/env python
"""Run YOLOv5 inference on images, videos, folders, globs, *.txt lists, webcams and streams.

Usage:
    python detect.py --weights yolov5s.pt --source data/images          # folder
    python detect.py --weights best.onnx --source 'imgs/*.jpg' --save-txt --save-conf
    python detect.py --weights yolov5s.torchscript.pt --source video.mp4
    python detect.py --weights yolov5s.pt --source 0                     # webcam (streams: *.streams, rtsp://)

Outputs in runs/detect/exp{N}/: annotated images under their original names, videos re-encoded with
mp4v; --save-txt writes labels/<stem>.txt (videos: <stem>_<frame>.txt) with rows `cls x y w h [conf]`
(box centre and size normalised by the original image width/height, %g); --save-crop writes
crops/<class name>/<stem>.jpg.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # scripts import models.* and utils.* from the repository root

from engine.options import check_classes_in_model, check_detect_args
from models.backend import DetectBackend
from utils.boxes import scale_coords, xyxy2xywh
from utils.data.datasets import LoadImages, LoadStreams
from utils.data.image_loaders import is_stream
from utils.general import (
    LOGGER,
    check_img_size,
    colorstr,
    increment_path,
    print_args,
    run_cli,
)
from utils.nms import nms_for
from utils.plots import Annotator, colors, save_one_box
from utils.torch_utils import select_device, time_sync


def check_imshow() -> bool:
    """True when cv2.imshow can open a window here (a display exists and OpenCV has a GUI backend)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False  # without a display some GUI backends abort the process instead of raising
    try:
        cv2.imshow("test", np.zeros((8, 8, 3), dtype=np.uint8))
        cv2.waitKey(1)
        cv2.destroyAllWindows()
        cv2.waitKey(1)
        return True
    except Exception:  # noqa: BLE001 (headless OpenCV builds raise cv2.error; any failure means no window)
        return False


def label_row(xyxy: torch.Tensor, cls: float, conf: float, gn: torch.Tensor, save_conf: bool) -> str:
    """One label line 'cls x y w h [conf]': xyxy pixels of the original image -> normalised xywh, %g."""
    xywh = (xyxy2xywh(xyxy.view(1, 4)) / gn).view(-1).tolist()
    line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
    return ("%g " * len(line)).rstrip() % line + "\n"


class ResultWriter:
    """Writes what detect.py saves for one image or frame: labels, crops, annotated images and videos."""

    def __init__(self, save_dir: Path, names: list[str], save_img: bool, save_txt: bool, save_conf: bool,
                 save_crop: bool, view_img: bool, line_thickness: int, hide_labels: bool, hide_conf: bool) -> None:
        self.save_dir, self.names = save_dir, names
        self.save_img, self.save_txt, self.save_conf, self.save_crop = save_img, save_txt, save_conf, save_crop
        self.view_img, self.lw, self.hide_labels, self.hide_conf = view_img, line_thickness, hide_labels, hide_conf
        self.vid_path: dict[int, str] = {}
        self.vid_writer: dict[int, cv2.VideoWriter] = {}

    def name(self, c: int) -> str:
        return self.names[c] if c < len(self.names) else str(c)

    def handle(self, det: torch.Tensor, im0: np.ndarray, p: Path, txt_stem: str, vid_key: int | None,
               vid_cap) -> str:
        """det (n, 6) [x1, y1, x2, y2, conf, cls] in im0 pixels; returns the class-count text.

        vid_key is None for still images, else the writer slot (0 for video files, i for stream i)."""
        s = ""
        gn = torch.tensor(im0.shape)[[1, 0, 1, 0]].float()  # (w, h, w, h) normalisation gain
        imc = im0.copy() if self.save_crop else im0
        annotator = Annotator(im0, line_width=self.lw)
        if len(det):
            for c in det[:, -1].unique():
                n = int((det[:, -1] == c).sum())
                s += f"{n} {self.name(int(c))}{'s' * (n > 1)}, "
            if self.save_txt:
                (self.save_dir / "labels").mkdir(parents=True, exist_ok=True)
            for *xyxy, conf, cls in reversed(det.tolist()):
                c = int(cls)
                if self.save_txt:
                    row = label_row(torch.tensor(xyxy), c, conf, gn, self.save_conf)
                    with open(self.save_dir / "labels" / f"{txt_stem}.txt", "a") as f:
                        f.write(row)
                if self.save_img or self.view_img or self.save_crop:
                    name = self.name(c)
                    label = None if self.hide_labels else (name if self.hide_conf else f"{name} {conf:.2f}")
                    if self.save_img or self.view_img:
                        annotator.box_label(xyxy, label or "", color=colors(c, True))
                    if self.save_crop:
                        save_one_box(xyxy, imc, file=self.save_dir / "crops" / name / f"{p.stem}.jpg", BGR=True)
        im0 = annotator.result()
        if self.view_img:
            cv2.imshow(str(p), im0)
            cv2.waitKey(1)  # 1 millisecond
        if self.save_img:
            self._save(im0, p, vid_key, vid_cap)
        return s

    def _save(self, im0: np.ndarray, p: Path, i: int | None, vid_cap) -> None:
        save_path = str(self.save_dir / p.name)
        if i is None:  # a still image keeps its file name
            cv2.imwrite(save_path, im0)
            return
        if self.vid_path.get(i) != save_path:  # a new video (or the first frame of a stream)
            self.vid_path[i] = save_path
            if i in self.vid_writer:
                self.vid_writer[i].release()
            if vid_cap is not None:
                fps = vid_cap.get(cv2.CAP_PROP_FPS) or 30
                w, h = int(vid_cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(vid_cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            else:  # stream: no container to copy settings from
                fps, w, h = 30, im0.shape[1], im0.shape[0]
                save_path += ".mp4"
            self.vid_writer[i] = cv2.VideoWriter(save_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        self.vid_writer[i].write(im0)

    def close(self) -> None:
        for w in self.vid_writer.values():
            w.release()


def _open_source(source: str, imgsz: list[int], stride: int, auto: bool):
    """(dataset, is_streams): LoadStreams for webcams/stream URLs/*.streams lists, else LoadImages.
    Both raise UserError for a missing source or a stream/webcam that cannot be opened."""
    if is_stream(source):
        return LoadStreams(source, img_size=imgsz, stride=stride, auto=auto), True
    return LoadImages(source, img_size=imgsz, stride=stride, auto=auto), False


@torch.no_grad()
def run(weights: str | Path | list = ROOT / "yolov5s.pt", source: str | Path = ROOT / "data/images",
        imgsz: int | list[int] = 640, conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 1000,
        device: str = "", view_img: bool = False, save_txt: bool = False, save_conf: bool = False,
        save_crop: bool = False, nosave: bool = False, classes: list[int] | None = None,
        agnostic_nms: bool = False, augment: bool = False, project: str | Path = ROOT / "runs/detect",
        name: str = "exp", exist_ok: bool = False, line_thickness: int = 3, hide_labels: bool = False,
        hide_conf: bool = False, half: bool = False, trust_checkpoint: bool = False, cfg: str | None = None,
        nms: bool = False) -> Path:
    """Detect objects in source with weights (.pt / *.torchscript.pt / .onnx); returns the run directory.

    Every option is checked before the model or the source is opened; cfg (a model yaml) builds the model
    of a state_dict-only .pt file. YOLO26 .pt models predict NMS-free (one-to-one top rows above conf_thres);
    nms=True uses their one-to-many head with NMS instead."""
    check_detect_args(weights, source, imgsz, conf_thres, iou_thres, max_det, classes, line_thickness, cfg,
                      device, project)
    source = str(source)
    device = select_device(device)
    if half and device.type != "cuda":
        LOGGER.warning("WARNING: --half is only supported on CUDA; running in FP32 on CPU")
        half = False
    model = DetectBackend(weights, device=device, half=half, trust=trust_checkpoint, cfg=cfg)
    if not nms and getattr(getattr(model, "model", None), "supports_end2end", False):
        model.model.set_end2end(True)  # YOLO26 .pt: NMS-free one-to-one rows; model.nms then only filters them
    if augment and model.fmt != "pt":
        LOGGER.warning(f"WARNING: --augment needs .pt weights; ignored for {model.fmt}")
        augment = False
    imgsz = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    imgsz = model.check_imgsz(check_img_size(imgsz * (2 if len(imgsz) == 1 else 1), s=model.stride))
    # exports with a fixed input shape need the full letterbox; others pad only to a stride multiple
    dataset, streams = _open_source(source, imgsz, model.stride, auto=model.fixed_shape is None)
    if view_img or streams:
        shown = check_imshow()
        if view_img and not shown:
            LOGGER.warning("WARNING: --view-img needs a display and an OpenCV build with GUI support; not showing")
        view_img = shown
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    model.warmup(imgsz)  # also fills class0.. names for exports without metadata
    check_classes_in_model(classes, model.names)
    writer = ResultWriter(save_dir, model.names, not nosave, save_txt, save_conf, save_crop, view_img,
                          line_thickness, hide_labels, hide_conf)
    dt, seen = [0.0, 0.0, 0.0], 0
    try:
        for path, img, im0s, vid_cap, s in dataset:
            t1 = time_sync()
            im = torch.from_numpy(img).to(device).float() / 255  # uint8 0-255 -> float 0-1
            im = im[None] if im.ndim == 3 else im  # (3, H, W) -> (1, 3, H, W)
            t2 = time_sync()
            dt[0] += t2 - t1
            pred = model(im, augment=augment)
            t3 = time_sync()
            dt[1] += t3 - t2
            pred = nms_for(model)(pred, conf_thres, iou_thres, classes, agnostic_nms, max_det=max_det)
            dt[2] += time_sync() - t3
            for i, det in enumerate(pred):  # one image (or one stream's frame) at a time
                seen += 1
                if streams:
                    p, im0, line, key = Path(path[i]), im0s[i].copy(), f"{s}{i}: ", i
                    stem = f"{p.stem}_{dataset.frame}"
                else:
                    p, im0, line, key = Path(path), im0s.copy(), s, None if dataset.mode == "image" else 0
                    stem = p.stem if key is None else f"{p.stem}_{dataset.frame}"
                line += f"{im.shape[2]}x{im.shape[3]} "
                det[:, :4] = scale_coords(im.shape[2:], det[:, :4], im0.shape).round()
                line += writer.handle(det.cpu(), im0, p, stem, key, vid_cap)
                LOGGER.info(f"{line}Done. ({t3 - t2:.3f}s)")
    finally:
        writer.close()
    t = tuple(x / max(seen, 1) * 1e3 for x in dt)  # ms per image
    LOGGER.info(f"Speed: {t[0]:.1f}ms pre-process, {t[1]:.1f}ms inference, {t[2]:.1f}ms NMS per image "
                f"at shape {(1, 3, *imgsz)}")
    if save_txt or not nosave:
        n = len(list(save_dir.glob("labels/*.txt")))
        extra = f"\n{n} labels saved to {save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{extra}")
    return save_dir


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="YOLOv5 inference on images, videos, folders and streams")
    parser.add_argument("--weights", nargs="+", type=str, default=ROOT / "yolov5s.pt",
                        help="model path(s): .pt, *.torchscript.pt or .onnx")
    parser.add_argument("--source", type=str, default=ROOT / "data/images",
                        help="file/dir/glob/*.txt list/video, 0 for webcam, *.streams or rtsp:// for streams")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--view-img", action="store_true", help="show results")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    parser.add_argument("--nosave", action="store_true", help="do not save images/videos")
    parser.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    parser.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--augment", action="store_true", help="augmented inference (.pt weights)")
    parser.add_argument("--project", default=ROOT / "runs/detect", help="save results to project/name")
    parser.add_argument("--name", default="exp", help="save results to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    parser.add_argument("--hide-labels", default=False, action="store_true", help="hide labels")
    parser.add_argument("--hide-conf", default=False, action="store_true", help="hide confidences")
    parser.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full (unsafe) unpickling of a .pt checkpoint you trust")
    parser.add_argument("--cfg", type=str, default=None, help="model.yaml for a state_dict-only --weights file")
    parser.add_argument("--nms", action="store_true",
                        help="YOLO26 (end2end) models: one-to-many head + NMS instead of the NMS-free one-to-one rows")
    opt = parser.parse_args(argv)
    if isinstance(opt.weights, list) and len(opt.weights) == 1:
        opt.weights = opt.weights[0]  # one path, not an ensemble
    print_args(FILE.stem, vars(opt))
    return opt


def main(opt: argparse.Namespace) -> Path:
    return run(**vars(opt))


if __name__ == "__main__":
    run_cli(lambda: main(parse_opt()))
