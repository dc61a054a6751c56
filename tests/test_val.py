"""val.py: metrics agree with pycocotools, end-to-end CLI runs, call from training, plots helpers."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import val
from utils.boxes import xywh2xyxy
from utils.general import yaml_load, yaml_save

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# mAP against pycocotools on hand-built predictions


def _make_case(seed: int = 0, n_images: int = 60, nc: int = 4, w: int = 200, h: int = 160):
    """Labels and predictions with good, offset, poorly placed, duplicated, wrong-class and spurious boxes.

    Like real val output at conf 0.001, objects that are hard (poor box, wrong class, "missed") still
    get a low-confidence second guess: v6.0's AP interpolates linearly from the last recall point to
    recall 1, so it only tracks COCO when the recall curve runs out at low precision, as it does in val.
    Returns [(labelsn (m,5) [cls, xyxy], predn (n,6) [xyxy, conf, cls] sorted by conf)] in pixels.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_images):
        m = rng.integers(1, 6)
        wh = rng.uniform(20, 60, (m, 2))
        xy = rng.uniform(0, 1, (m, 2)) * (np.array([w, h]) - wh) + wh / 2
        cls = rng.integers(0, nc, m)
        gt = xywh2xyxy(np.concatenate((xy, wh), 1))
        preds = []
        for j in range(m):
            u = rng.uniform()
            size = np.repeat(wh[j], 2)
            jitter = rng.normal(0, 0.08 if u < 0.75 else 0.35, 4) * size  # good or poorly placed
            wrong = rng.uniform() < 0.1
            c = (cls[j] + 1) % nc if wrong else cls[j]
            conf = rng.uniform(0.0, 0.1) if u < 0.1 else rng.uniform(0.2, 1.0)  # u < 0.1: found only late
            preds.append([*(gt[j] + jitter), conf, c])
            if wrong or u > 0.75:  # a low-confidence second guess
                preds.append([*(gt[j] + rng.normal(0, 0.08, 4) * size), rng.uniform(0.0, 0.1), cls[j]])
            if rng.uniform() < 0.05:  # an occasional duplicate with a lower score
                preds.append([*(gt[j] + rng.normal(0, 0.1, 4) * size), conf * 0.5, c])
        for _ in range(rng.integers(0, 11)):  # false positives anywhere, low scores
            fwh = rng.uniform(15, 60, 2)
            fxy = rng.uniform(0, 1, 2) * (np.array([w, h]) - fwh) + fwh / 2
            preds.append([*xywh2xyxy(np.concatenate((fxy, fwh))[None])[0], rng.uniform(0.0, 0.3), rng.integers(0, nc)])
        p = torch.tensor(preds, dtype=torch.float32).reshape(-1, 6)
        p = p[p[:, 4].argsort(descending=True)]
        p[:, [0, 2]] = p[:, [0, 2]].clamp(0, w)
        p[:, [1, 3]] = p[:, [1, 3]].clamp(0, h)
        lab = torch.cat((torch.tensor(cls, dtype=torch.float32)[:, None], torch.tensor(gt, dtype=torch.float32)), 1)
        out.append((lab, p))
    return out, (w, h), nc


def _coco_map(case, size, nc):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    w, h = size
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": str(c)} for c in range(nc)]}
    dets = []
    for i, (lab, pred) in enumerate(case):
        gt["images"].append({"id": i, "width": w, "height": h})
        for c, x1, y1, x2, y2 in lab.tolist():
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(c) + 1,
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                      "iscrowd": 0})
        for x1, y1, x2, y2, conf, c in pred.tolist():
            dets.append({"image_id": i, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": conf})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1], ev.stats[0]  # mAP@.5, mAP@.5:.95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_agrees_with_pycocotools(seed):
    pytest.importorskip("pycocotools", reason="pycocotools not installed (CI installs it from requirements.txt)")
    case, size, nc = _make_case(seed)
    stats = [val.image_stats(pred, lab) for lab, pred in case]
    res = val.summarize(stats, nc)
    coco50, coco = _coco_map(case, size, nc)
    assert 0.3 < res["map50"] < 0.95 and 0.1 < res["map"] < res["map50"]  # a non-trivial case
    assert res["map50"] == pytest.approx(coco50, abs=0.02)
    assert res["map"] == pytest.approx(coco, abs=0.02)
    assert res["nt"].sum() == sum(len(lab) for lab, _ in case)


def test_summarize_without_predictions():
    lab = torch.tensor([[0, 10, 10, 20, 20.]])
    res = val.summarize([val.image_stats(torch.zeros(0, 6), lab)], nc=2)
    assert res["map"] == 0 and res["mp"] == 0 and res["nt"].tolist() == [1, 0]


def test_coco80_to_coco91():
    m = val.coco80_to_coco91_class()
    assert len(m) == 80 and m[:12] == [*range(1, 12), 13] and m[-1] == 90 and 12 not in m and 83 not in m


def test_save_one_txt_and_json(tmp_path):
    predn = torch.tensor([[10, 20, 30, 60, 0.5, 2], [0, 0, 100, 50, 0.25, 0]])
    val.save_one_txt(predn, True, (50, 100), tmp_path / "a.txt")  # shape (h, w)
    rows = [list(map(float, r.split())) for r in (tmp_path / "a.txt").read_text().splitlines()]
    assert rows[0] == pytest.approx([2, 0.2, 0.8, 0.2, 0.8, 0.5])
    assert rows[1] == pytest.approx([0, 0.5, 0.5, 1, 1, 0.25])
    jdict = []
    val.save_one_json(predn, jdict, Path("images/000000000042.jpg"), val.coco80_to_coco91_class())
    assert jdict[0] == {"image_id": 42, "category_id": 3, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.5}


# ------------------------------------------------------------------------------------------------
# End to end and from training


@pytest.fixture(scope="module")
def data80(tmp_path_factory):
    """A few tiny synthetic images (6 shape classes) under a data yaml that declares nc=80 (COCO-sized)."""
    from utils.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("val_data")
    y = build_synthetic_dataset(root / "ds", n_train=1, n_val=4, img_size=96, nc=6)
    d = yaml_load(y)
    d.update(nc=80, names=[f"class{i}" for i in range(80)])
    yaml_save(root / "coco80.yaml", d)
    return root / "coco80.yaml"


def _run_val(args, cwd=ROOT):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "val.py", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env, check=False)


@pytest.mark.slow
def test_val_cli_end_to_end(fixtures_dir, data80, tmp_path):
    # random-weight fixtures score obj*cls ~1e-4, so a low --conf-thres gives real predictions to check
    common = ["--weights", str(fixtures_dir / "yolov5s_v6.0.pt"), "--data", str(data80), "--img", "64",
              "--batch-size", "2", "--workers", "0", "--conf-thres", "0.0001", "--project", str(tmp_path / "runs")]
    r = _run_val([*common, "--save-txt", "--save-conf", "--save-json", "--verbose"])
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Class     Images     Labels          P          R     mAP@.5 mAP@.5:.95" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("all "))
    assert row.split()[1] == "4"  # images seen
    assert "Speed:" in out and "pycocotools evaluation skipped" in out
    exp = tmp_path / "runs" / "exp"
    for f in ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png",
              "val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch1_labels.jpg", "val_batch1_pred.jpg"):
        assert (exp / f).stat().st_size > 1000, f
    txt = sorted((exp / "labels").glob("*.txt"))
    assert txt, "--save-txt wrote no label files"
    fields = [line.split() for line in txt[0].read_text().splitlines()]
    assert all(len(f) == 6 for f in fields)  # cls x y w h conf
    assert all(0 <= float(v) <= 1 for f in fields for v in f[1:5])
    preds = json.loads((exp / "yolov5s_v6.0_predictions.json").read_text())
    assert preds and set(preds[0]) == {"image_id", "category_id", "bbox", "score"}

    common[1] = str(fixtures_dir / "yolov5n_v6.0.pt")
    r = _run_val([*common, "--task", "speed"])  # second run: exp2, timing only, no plots
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "runs" / "exp2").is_dir() and not list((tmp_path / "runs" / "exp2").glob("*.png"))


def test_val_cli_errors(data80, tmp_path):
    r = _run_val(["--weights", str(tmp_path / "missing.pt"), "--data", str(data80), "--project", str(tmp_path)])
    assert r.returncode == 2 and "missing.pt" in r.stderr and "Traceback" not in r.stderr
    r = _run_val(["--weights", "x.pt", "--data", str(data80), "--task", "bogus", "--project", str(tmp_path)])
    assert r.returncode == 2 and "--task bogus" in r.stderr


def test_main_passes_trust_and_half(monkeypatch, data80, caplog):
    seen = {}
    monkeypatch.setattr(val, "run", lambda **kw: seen.update(kw))
    val.main(val.parse_opt(["--data", str(data80), "--weights", "a.pt", "b.pt", "--trust-checkpoint", "--half",
                            "--device", "cpu", "--save-hybrid"]))
    assert seen["trust"] is True and "trust_checkpoint" not in seen
    assert seen["weights"] == ["a.pt", "b.pt"] and seen["save_txt"] is True
    assert seen["imgsz"] == 640 and seen["conf_thres"] == 0.001 and seen["iou_thres"] == 0.6


def test_run_from_training(data80, tmp_path):
    from models.yolo import Model
    from utils.data.config import check_dataset
    from utils.data.dataloaders import create_dataloader
    from utils.losses.yolov5 import ComputeLoss

    torch.manual_seed(0)
    data = check_dataset(data80)
    data.update(nc=6, names=data["names"][:6])
    model = Model(ROOT / "models" / "yolov5n.yaml", nc=6)
    model.names = data["names"]
    hyp = yaml_load(ROOT / "data" / "hyps" / "hyp.scratch.yaml")
    compute_loss = ComputeLoss.from_model(model, hyp)
    loader = create_dataloader(data["val"], 64, 2, 32, rect=True, pad=0.5, workers=0)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (mp, mr, map50, map_, *losses), maps, t = val.run(data, batch_size=2, imgsz=64, model=model, dataloader=loader,
                                                      save_dir=tmp_path, plots=True, compute_loss=compute_loss,
                                                      conf_thres=0.0001)
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[1] > 0  # objectness loss is never 0
    assert maps.shape == (6,) and len(t) == 3 and 0 <= map_ <= map50 <= 1 and 0 <= mp <= 1 and 0 <= mr <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "val_batch0_pred.jpg").is_file() and (tmp_path / "confusion_matrix.png").is_file()


# ------------------------------------------------------------------------------------------------
# Plot helpers


def test_plot_results_with_padded_header_and_extra_column(tmp_path):
    from utils.plots import plot_results

    names = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
             "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
             "x/lr0", "x/lr1", "x/lr2", "train/kd_loss"]
    rows = [",".join(f"{n:>20s}" for n in names)]  # v6.0 pads names and values to width 20
    rows += [",".join(f"{v:20.5g}" for v in [e, *np.random.default_rng(e).random(14)]) for e in range(3)]
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    out = plot_results(tmp_path / "results.csv")
    assert out == tmp_path / "results.png" and out.stat().st_size > 10000
    with pytest.raises(FileNotFoundError):
        plot_results(tmp_path / "nope.csv")


def test_plot_images_and_crops(tmp_path):
    import cv2

    from utils.plots import Annotator, plot_images, save_one_box

    imgs = torch.zeros(20, 3, 64, 48)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5], [19, 0, 0.5, 0.5, 0.2, 0.2]])
    mosaic = plot_images(imgs, targets, fname=tmp_path / "b.jpg", names=["a", "b"])
    assert mosaic.shape == (4 * 64, 4 * 48, 3)  # 16 images at most, in a 4 x 4 grid
    assert cv2.imread(str(tmp_path / "b.jpg")) is not None
    coloured = mosaic.max(2) != mosaic.min(2)  # box colours; images and cell borders are grey
    assert coloured[:64, :48].any() and not coloured[64:, :].any()  # image 0's box; image 19 is not shown
    big = plot_images(torch.zeros(4, 3, 1280, 1280), torch.zeros(0, 6), fname=tmp_path / "big.jpg")
    assert max(big.shape[:2]) <= 1920

    im = np.zeros((100, 200, 3), np.uint8)
    ann = Annotator(im.copy())
    ann.box_label([20, 30, 80, 90], "cat 0.9", color=(0, 255, 0))
    assert ann.result()[30:91, 20].any() and not ann.result()[95:, 150:].any()
    crop = save_one_box([20, 30, 80, 90], im, file=tmp_path / "crops" / "x.jpg", BGR=True)
    save_one_box([20, 30, 80, 90], im, file=tmp_path / "crops" / "x.jpg", BGR=True)
    assert crop.shape == (round(60 * 1.02 + 10), round(60 * 1.02 + 10), 3)
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == ["x.jpg", "x2.jpg"]


def test_plot_labels(tmp_path):
    from utils.plots import plot_labels

    rng = np.random.default_rng(0)
    labels = np.concatenate((rng.integers(0, 3, (200, 1)), rng.random((200, 4))), 1)
    plot_labels(labels, names=["a", "b", "c"], save_dir=tmp_path)
    assert (tmp_path / "labels.jpg").stat().st_size > 10000
    assert (tmp_path / "labels_correlogram.jpg").stat().st_size > 10000
