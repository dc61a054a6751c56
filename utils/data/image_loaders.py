"""Inference sources for detect.py: image/video files, folders, globs, *.txt lists, streams, webcams.

Each iteration yields (path, img, img0, cap, info): img is the letterboxed CHW RGB uint8 numpy array
(batched (n,3,H,W) for streams), img0 the original BGR image (a list for streams), cap the
cv2.VideoCapture for videos (else None), info a short progress string.
Nothing is downloaded: remote files are refused with a clear message; a stream or webcam that
cannot be opened fails at once instead of hanging.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import cv2
import numpy as np

from utils.data.augmentations import letterbox
from utils.data.label_cache import IMG_FORMATS, VID_FORMATS
from utils.general import UserError

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")
OPEN_TIMEOUT_MS = 5000  # a stream that does not answer in 5 s is reported, not waited on


def is_stream(source: str) -> bool:
    """True for a webcam index ('0'), a *.streams list, or a stream URL without a file suffix."""
    s = str(source)
    suffix = s.rsplit(".", 1)[-1].lower() if "." in s else ""
    is_url = s.lower().startswith(STREAM_PREFIXES)
    return s.isnumeric() or s.endswith(".streams") or (is_url and suffix not in IMG_FORMATS + VID_FORMATS)


def _list_sources(path: str | Path | list) -> list[str]:
    files: list[str] = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = str(p)
        if p.lower().startswith(STREAM_PREFIXES):
            raise UserError(f"source {p} is a remote file; nothing is downloaded at run time. "
                            f"Download it first and pass the local path")
        if "*" in p:
            hits = sorted(glob.glob(p, recursive=True))
            if not hits:
                raise UserError(f"source glob {p} matches no files")
            files += hits
        elif os.path.isdir(p):
            files += sorted(glob.glob(os.path.join(p, "*.*")))
        elif os.path.isfile(p) and p.endswith(".txt"):
            parent = Path(p).parent
            for ln in Path(p).read_text(errors="ignore").splitlines():
                ln = ln.strip()
                if ln:
                    q = Path(ln.removeprefix("./"))
                    files.append(str(q if q.is_absolute() or q.exists() else parent / q))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise UserError(f"source {p} does not exist (give an image, video, folder, glob, *.txt list or stream)")
    return files


class LoadImages:
    """Iterate images and videos from files, folders, globs or *.txt lists (one path per line)."""

    def __init__(self, path: str | Path | list, img_size: int = 640, stride: int = 32, auto: bool = True) -> None:
        files = _list_sources(path)
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise UserError(f"source {path}: {len(missing)} listed file(s) do not exist, e.g. {missing[0]}")
        images = [x for x in files if x.rsplit(".", 1)[-1].lower() in IMG_FORMATS]
        videos = [x for x in files if x.rsplit(".", 1)[-1].lower() in VID_FORMATS]
        self.files = images + videos
        self.nf = len(self.files)
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.img_size, self.stride, self.auto = img_size, stride, auto
        self.mode = "image"
        self.cap = None
        self.frame = self.frames = 0
        if self.nf == 0:
            raise UserError(f"no images or videos found in {path}. Supported formats are:\n"
                            f"images: {IMG_FORMATS}\nvideos: {VID_FORMATS}")
        if videos:
            self._new_video(videos[0])

    def __iter__(self):
        self.count = 0
        return self

    def __next__(self):
        if self.count == self.nf:
            raise StopIteration
        path = self.files[self.count]
        if self.video_flag[self.count]:
            self.mode = "video"
            ok, img0 = self.cap.read()
            while not ok:  # end of this video: move to the next file
                self.count += 1
                self.cap.release()
                if self.count == self.nf:
                    raise StopIteration
                path = self.files[self.count]
                self._new_video(path)
                ok, img0 = self.cap.read()
            self.frame += 1
            info = f"video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: "
        else:
            self.count += 1
            img0 = cv2.imread(path)  # BGR
            if img0 is None:
                raise UserError(f"image {path} could not be read (corrupt or unsupported)")
            info = f"image {self.count}/{self.nf} {path}: "
        img = letterbox(img0, self.img_size, stride=self.stride, auto=self.auto)[0]
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return path, img, img0, self.cap, info

    def _new_video(self, path: str) -> None:
        self.frame = 0
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise UserError(f"video {path} could not be opened (corrupt file or missing codec)")
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))

    def __len__(self) -> int:
        return self.nf


def open_capture(source: str) -> cv2.VideoCapture:
    """Open a webcam index or stream URL with a timeout; UserError when it cannot be opened."""
    src = int(source) if str(source).isnumeric() else source
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, OPEN_TIMEOUT_MS]
    cap = cv2.VideoCapture(src, cv2.CAP_ANY, params)
    if not cap.isOpened():
        cap.release()
        what = "webcam" if isinstance(src, int) else "stream"
        raise UserError(f"{what} {source} could not be opened (check the device index/URL and that it is reachable)")
    return cap


class LoadStreams:
    """Read frames from one or more webcams/streams, synchronously (one frame per source per step)."""

    def __init__(self, sources: str = "streams.txt", img_size: int = 640, stride: int = 32, auto: bool = True) -> None:
        if os.path.isfile(sources):
            srcs = [x.strip() for x in Path(sources).read_text().splitlines() if x.strip()]
        else:
            srcs = [sources]
        self.sources, self.img_size, self.stride, self.auto = srcs, img_size, stride, auto
        self.caps = [open_capture(s) for s in srcs]
        self.frame = 0

    def __iter__(self):
        return self

    def __next__(self):
        frames = []
        for cap, s in zip(self.caps, self.sources):
            ok, im = cap.read()
            if not ok:
                raise StopIteration  # stream ended or dropped
            frames.append(im)
        self.frame += 1
        auto = self.auto and len(frames) == 1  # several sources must share one shape to be stacked
        img = np.stack([letterbox(x, self.img_size, stride=self.stride, auto=auto)[0] for x in frames])
        img = np.ascontiguousarray(img[..., ::-1].transpose((0, 3, 1, 2)))  # BHWC BGR -> BCHW RGB
        return self.sources, img, frames, None, f"frame {self.frame}: "

    def __len__(self) -> int:
        return len(self.sources)
