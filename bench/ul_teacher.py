#!/usr/bin/env python
"""The ultralytics side of bench/kd_vs_ultralytics.sh, run with the ultralytics venv's python (issue 29 §4).

Subcommands (all offline; the shell script sets YOLO_OFFLINE and YOLO_CONFIG_DIR):
  convert  --state SD.pt --cfg yolov8s.yaml --out T.pt
           SD.pt: {'state_dict', 'names', 'nc'} exported from one of our checkpoints with this repository's python
           (models.checkpoint.safe_torch_load). Builds ultralytics' DetectionModel(cfg, nc), loads the state_dict
           strictly (our module attribute names are ultralytics', models/checkpoint.py) and writes it in the
           format of ultralytics' released checkpoints (FP16 `model`, `train_args`; what `distill_model=` loads).
  forward  --weights T.pt --input X.pt --out Y.pt   eval-mode output (B, 4 + nc, N) of the model for the tensor X
  val      --weights T.pt --data D.yaml --imgsz N --batch N --device D   ultralytics' own val; prints
           "UL_VAL <mAP@0.5> <mAP@0.5:0.95>"
  prep     --data D.yaml   builds the label caches of both splits once, before parallel runs (each run would
           otherwise write labels/*.cache at the same time)
  train    --model yolov8n.yaml --data D.yaml --project P --name N [--distill T.pt --dis 6.0] [--resume]
           [--set key=value ...]  model.train(...) with SGD; --set passes ultralytics arguments (the hyp values the
           shell script maps from our hyp file); on CPU each run keeps the thread count it was started with
           (ultralytics' select_device would reset torch to min(8, cores - 1) threads).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def _threads_as_started() -> None:
    """Keep torch's thread count (OMP_NUM_THREADS) on CPU: select_device calls set_num_threads(NUM_THREADS)."""
    import torch
    import ultralytics.utils.torch_utils as tu

    tu.NUM_THREADS = torch.get_num_threads()


def convert(a) -> None:
    from datetime import datetime

    import torch
    import ultralytics
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel

    sd = torch.load(a.state, map_location="cpu", weights_only=True)
    model = DetectionModel(a.cfg, nc=int(sd["nc"]), verbose=False)
    theirs = model.state_dict()
    missing = sorted(set(theirs) - set(sd["state_dict"]))
    extra = sorted(set(sd["state_dict"]) - set(theirs))
    shape = [k for k in theirs if k in sd["state_dict"] and theirs[k].shape != sd["state_dict"][k].shape]
    if missing or extra or shape:
        sys.exit(f"state_dict does not fit ultralytics' {a.cfg}: missing {missing[:5]}, unexpected {extra[:5]}, "
                 f"other shapes {shape[:5]}")
    model.load_state_dict({k: v.float() for k, v in sd["state_dict"].items()}, strict=True)
    model.names = dict(enumerate(sd["names"]))
    args = {**DEFAULT_CFG_DICT, "model": a.cfg, "task": "detect"}
    model.args = args
    model.eval()
    ckpt = {"date": datetime.now().isoformat(), "version": ultralytics.__version__,
            "license": "AGPL-3.0 License (https://ultralytics.com/license)", "docs": "https://docs.ultralytics.com",
            "epoch": -1, "best_fitness": None, "model": model.half(), "ema": None, "updates": None,
            "optimizer": None, "train_args": args, "train_metrics": {}, "train_results": None, "stopper": None,
            "scaler": None}
    torch.save(ckpt, a.out)
    print(f"converted: {len(theirs)} tensors into ultralytics {ultralytics.__version__} DetectionModel({a.cfg}, "
          f"nc={sd['nc']}) -> {a.out}")


def forward(a) -> None:
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    model = load_checkpoint(a.weights)[0].float().eval()
    x = torch.load(a.input, map_location="cpu", weights_only=True)
    with torch.no_grad():
        y = model(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    torch.save(y.float(), a.out)
    print(f"ultralytics eval output {tuple(y.shape)}")


def val(a) -> None:
    from ultralytics import YOLO

    if a.device == "cpu":
        _threads_as_started()
    m = YOLO(a.weights).val(data=a.data, imgsz=a.imgsz, batch=a.batch, device=a.device, plots=False, workers=0,
                            project=a.project, name="val", exist_ok=True, verbose=False)
    print(f"UL_VAL {m.box.map50:.4f} {m.box.map:.4f}")


def prep(a) -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(a.data)
    cfg = get_cfg(overrides={"imgsz": 64})
    for split in ("train", "val"):
        ds = build_yolo_dataset(cfg, data[split], 16, data, mode="val")
        print(f"ultralytics label cache for {split}: {len(ds)} images")


def _value(s: str):
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        return s


def train(a) -> None:
    from ultralytics import YOLO

    if a.device == "cpu":
        _threads_as_started()
    kw = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.distill:
        kw.update(distill_model=a.distill, dis=a.dis)
    if a.resume:  # ultralytics restores every argument from last.pt; distill_model may be given again
        last = Path(a.project) / a.name / "weights" / "last.pt"
        YOLO(str(last)).train(resume=True, **({"distill_model": a.distill} if a.distill else {}))
        return
    YOLO(a.model).train(data=a.data, project=a.project, name=a.name, exist_ok=True, device=a.device,
                        optimizer="SGD", **kw)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--state", required=True)
    c.add_argument("--cfg", required=True)
    c.add_argument("--out", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--weights", required=True)
    f.add_argument("--input", required=True)
    f.add_argument("--out", required=True)
    v = sub.add_parser("val")
    v.add_argument("--weights", required=True)
    v.add_argument("--data", required=True)
    v.add_argument("--imgsz", type=int, default=192)
    v.add_argument("--batch", type=int, default=32)
    v.add_argument("--device", default="cpu")
    v.add_argument("--project", default="runs/ul_val")
    r = sub.add_parser("prep")
    r.add_argument("--data", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--project", required=True)
    t.add_argument("--name", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--distill", default="")
    t.add_argument("--dis", type=float, default=6.0)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--set", nargs="*", default=[], help="key=value ultralytics arguments")
    a = p.parse_args(argv)
    {"convert": convert, "forward": forward, "val": val, "prep": prep, "train": train}[a.cmd](a)


if __name__ == "__main__":
    main()
