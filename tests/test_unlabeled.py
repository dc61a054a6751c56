"""Distillation on unlabeled images (issue 30): the detection loss masked per image, the mixed batches, the
unlabelled image set's checks, and train_kd.py / train.py / resume / torchrun with such data."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml

from utils.general import LOGGER, UserError
from utils.loggers import read_results_csv

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "weights/teacher-shapes-yolov5s.pt"
V5_HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0}
V8_HYP = {"box": 7.5, "cls": 0.5, "dfl": 1.5}


# --------------------------------------------------------------------------------------------------
# the detection loss: unlabelled images leave no trace in it


def _targets_on(images: list[int], seed: int = 0, per_image: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in images:
        for _ in range(per_image):
            xy = torch.rand(2, generator=g) * 0.6 + 0.2
            wh = torch.rand(2, generator=g) * 0.3 + 0.05
            rows.append(torch.cat((torch.tensor([float(i), float(torch.randint(0, 3, (1,), generator=g))]), xy, wh)))
    return torch.stack(rows)


def _remap(targets: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """The targets of the kept images, renumbered as in a batch of those images alone."""
    out = targets[torch.isin(targets[:, 0].long(), torch.tensor(keep))].clone()
    out[:, 0] = torch.tensor([keep.index(int(i)) for i in out[:, 0]], dtype=out.dtype)
    return out


def _v5_loss():
    from utils.losses.yolov5 import ComputeLoss

    anchors = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                           dtype=torch.float32).view(3, 3, 2) / torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1)
    return ComputeLoss(V5_HYP, anchors, nc=3)


def _v5_preds(bs: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(bs, 3, s, s, 8, generator=g, requires_grad=True) for s in (8, 4, 2)]  # 64 px, nc 3


def _v8_preds(bs: int, no: int = 3 + 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(bs, no, s, s, generator=g, requires_grad=True) for s in (8, 4, 2)]


@pytest.mark.parametrize("family", ["v5", "v8"])
def test_masked_loss_equals_the_labelled_images_alone(family):
    """A batch of 4 whose images 1 and 3 are unlabelled gives the loss and items of images 0 and 2 alone (objectness
    / class targets included), and no gradient reaches the unlabelled images' predictions.
    Tolerance: the masked form sums the same per-cell terms in another order (per image, then over images,
    instead of one reduction over the subset): float32 reordering of a few hundred positive terms, ~1e-7 relative
    each, 1e-5 relative is far above it and far below the difference the unmasked loss makes (~30%: the
    objectness of 2 more images).
    Mutation seen failing: the objectness mean divided by all the batch's cells (loss 2x smaller)."""
    from utils.losses.yolov8 import V8DetectionLoss

    loss_fn = _v5_loss() if family == "v5" else V8DetectionLoss(V8_HYP, nc=3, stride=[8, 16, 32])
    preds = _v5_preds(4) if family == "v5" else _v8_preds(4)
    targets = _targets_on([0, 2])
    labelled = torch.tensor([True, False, True, False])
    loss, items = loss_fn(preds, targets, labelled=labelled)
    sub = [p.detach()[[0, 2]] for p in preds]
    ref, ref_items = loss_fn(sub, _remap(targets, [0, 2]))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(items, ref_items, rtol=1e-5, atol=0)
    plain, _ = loss_fn([p.detach() for p in preds], targets)  # the same batch with every image called labelled
    assert abs(plain.item() - loss.item()) > 0.05 * loss.item()
    loss.backward()
    for p in preds:
        assert p.grad[[1, 3]].abs().max() == 0 and p.grad[[0, 2]].abs().max() > 0


@pytest.mark.parametrize("family", ["v5", "v8", "e2e"])
def test_only_unlabelled_images_give_a_detection_loss_of_zero(family):
    from utils.losses.e2e import E2ELoss
    from utils.losses.yolov8 import V8DetectionLoss

    if family == "v5":
        loss_fn, preds = _v5_loss(), _v5_preds(2)
    elif family == "v8":
        loss_fn, preds = V8DetectionLoss(V8_HYP, nc=3, stride=[8, 16, 32]), _v8_preds(2)
    else:
        loss_fn = E2ELoss(V8_HYP, nc=3, stride=[8, 16, 32])
        preds = {"one2many": _v8_preds(2, 3 + 4), "one2one": _v8_preds(2, 3 + 4)}
    loss, items = loss_fn(preds, torch.zeros(0, 6), labelled=torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0 and items.abs().sum().item() == 0.0
    unmasked, _ = loss_fn(preds, torch.zeros(0, 6))  # without the mask: "no object anywhere" is learnt
    assert unmasked.item() > 0


def test_distill_objective_on_unlabelled_images_is_kd_alone():
    """The training objective given a batch of unlabelled images only: detection terms exactly 0, a non-zero
    KD loss that trains the student (every KD term sees every image)."""
    from distill.objective import build_kd_objective, load_teacher
    from engine.kd_flags import objective_options
    from models.yolo import Model
    from utils.losses.yolov5 import ComputeLoss

    torch.manual_seed(0)
    student = Model(str(ROOT / "models/yolov5n.yaml"), nc=6)
    teacher = load_teacher(TEACHER, "cpu", 6)
    hyp = {**V5_HYP, "kd": 1.0}
    names = ["circle", "square", "triangle", "star", "cross", "ring"]
    objective = build_kd_objective(student, teacher, ComputeLoss.from_model(student, hyp), hyp, data_names=names,
                                   **objective_options(SimpleNamespace()))
    objective.train()
    student.train()
    imgs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    out = objective(student, imgs, torch.zeros(0, 6), labelled=torch.zeros(2, dtype=torch.bool))
    assert out["box"].item() == out["obj"].item() == out["cls"].item() == 0.0
    kd = sum(out[n] for n in objective.distiller.names)
    assert kd.item() > 0 and out["loss"].item() == pytest.approx(kd.item() * 2, rel=1e-6)
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in student.parameters())


# --------------------------------------------------------------------------------------------------
# the mixed batches


def _epoch(sampler):
    return [list(b) for b in sampler]


def test_batches_mix_by_the_ratio_and_cover_the_labelled_images_once():
    from utils.data.dataloaders import MixedBatchSampler

    s = MixedBatchSampler(n_labelled=10, n_unlabeled=7, batch_size=4, ratio=0.5, seed=3)
    batches = _epoch(s)
    assert len(batches) == len(s) == 5  # 10 labelled, 2 per batch
    lab = [i for b in batches for i, _ in b if i < 10]
    unl = [i - 10 for b in batches for i, _ in b if i >= 10]
    assert sorted(lab) == list(range(10))  # one pass over the labelled images
    assert all(sum(i < 10 for i, _ in b) == 2 and sum(i >= 10 for i, _ in b) == 2 for b in batches)
    assert sorted(unl[:7]) == list(range(7))  # the stream is reshuffled passes over the unlabelled images
    assert len({seed for b in batches for _, seed in b}) == 20  # every sample augmented with its own draw
    nxt = _epoch(s)
    assert [i for b in nxt for i, _ in b if i < 10] != lab  # reshuffled every epoch
    # at least one image of each kind, whatever the ratio
    assert (MixedBatchSampler(10, 7, 4, 0.01).k_unlabeled, MixedBatchSampler(10, 7, 4, 0.99).k_labelled) == (1, 1)
    with pytest.raises(UserError, match="unlabeled_ratio"):
        MixedBatchSampler(10, 7, 4, ratio=1.0)
    with pytest.raises(UserError, match="batch-size"):
        MixedBatchSampler(10, 7, 1)


def test_batches_depend_only_on_seed_and_epoch():
    """A sampler started at epoch 2 (a resumed run) gives what a sampler that ran epochs 0 and 1 gives at 2,
    the unlabelled stream included."""
    from utils.data.dataloaders import MixedBatchSampler

    a = MixedBatchSampler(10, 7, 4, 0.5, seed=1)
    _epoch(a), _epoch(a)
    assert _epoch(a) == _epoch(MixedBatchSampler(10, 7, 4, 0.5, seed=1, start_epoch=2))
    assert _epoch(MixedBatchSampler(10, 7, 4, 0.5, seed=2)) != _epoch(MixedBatchSampler(10, 7, 4, 0.5, seed=1))


def test_ranks_split_the_labelled_images_and_the_stream():
    from utils.data.dataloaders import MixedBatchSampler

    ranks = [MixedBatchSampler(10, 50, 4, 0.5, seed=1, rank=r, world_size=2) for r in (0, 1)]
    b0, b1 = _epoch(ranks[0]), _epoch(ranks[1])
    assert len(b0) == len(b1) == 3  # 5 labelled images per rank, 2 per batch
    lab = [i for b in b0 + b1 for i, _ in b if i < 10]
    assert sorted(lab) == list(range(10))
    unl = [i for b in b0 + b1 for i, _ in b if i >= 10]
    assert len(unl) == len(set(unl)) == 12  # no stream position used twice (50 images: no reshuffle yet)


def _solid(path: Path, bgr: tuple[int, int, int], size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), bgr, np.uint8))


def test_no_training_image_mixes_labelled_and_unlabelled_content(tmp_path):
    """Labelled images pure red, unlabelled ones pure blue; with mosaic and mixup always on, every training
    image holds red or blue (and the grey fill), never both, and the labelled mask says which."""
    from utils.data.dataloaders import MixedBatchSampler
    from utils.data.datasets import LoadImagesAndLabels
    from utils.data.unlabeled import MixedImages, UnlabeledImages

    for i in range(6):
        _solid(tmp_path / f"images/train/l{i}.png", (0, 0, 255))
        (tmp_path / "labels/train").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"labels/train/l{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
        _solid(tmp_path / f"unlabeled/u{i}.png", (255, 0, 0))
    hyp = {"mosaic": 1.0, "mixup": 1.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
    lab = LoadImagesAndLabels(str(tmp_path / "images/train"), 64, 4, augment=True, hyp=hyp)
    unl = UnlabeledImages(str(tmp_path / "unlabeled"), 64, 4, hyp=hyp)
    data = MixedImages(lab, unl)
    seen = set()
    for batch in MixedBatchSampler(len(lab), len(unl), 4, 0.5, seed=0):
        imgs, targets, _, _, labelled = MixedImages.collate_fn([data[i] for i in batch])
        for img, is_lab in zip(imgs, labelled):
            red, blue = (img[0] > 200).any().item(), (img[2] > 200).any().item()  # RGB
            assert (red, blue) == ((True, False) if is_lab else (False, True))
            seen.add(bool(is_lab))
        assert set(targets[:, 0].long().tolist()) <= set(torch.nonzero(labelled).flatten().tolist())
    assert seen == {True, False}


# --------------------------------------------------------------------------------------------------
# the unlabelled image set


@pytest.fixture
def caplog_warnings(caplog):
    LOGGER.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    yield caplog
    LOGGER.removeHandler(caplog.handler)


def test_unlabeled_images_checked(tmp_path, caplog_warnings):
    """Corrupt images skipped and counted, label files beside them ignored with a warning, val images removed,
    train images among them named."""
    from utils.data.unlabeled import UnlabeledImages

    for i in range(4):
        _solid(tmp_path / f"raw/images/u{i}.png", (0, 255, 0))
    (tmp_path / "raw/images/broken.jpg").write_bytes(b"not an image")
    (tmp_path / "raw/labels").mkdir()
    (tmp_path / "raw/labels/u0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    val, train = str(tmp_path / "raw/images/u1.png"), str(tmp_path / "raw/images/u2.png")
    ds = UnlabeledImages(str(tmp_path / "raw/images"), 64, 4, held_out=[val], labelled=[train])
    assert sorted(Path(f).name for f in ds.im_files) == ["u0.png", "u2.png", "u3.png"]
    assert all(len(lb) == 0 for lb in ds.labels)  # u0's label file is not read
    text = caplog_warnings.text
    assert "3 unlabeled images" in text and "1 corrupt skipped" in text
    assert "1 of the unlabeled images" in text and "val/test images" in text
    assert "also train images" in text and "label file" in text and "u0.txt" in text
    with pytest.raises(UserError, match="every image in .* is a val/test image"):
        every = [str(p) for p in (tmp_path / "raw/images").glob("*")]
        UnlabeledImages(str(tmp_path / "raw/images"), 64, 4, held_out=every)


def test_missing_or_empty_unlabeled_source(tmp_path):
    from utils.data.unlabeled import (
        UnlabeledImages,
        check_mixed_options,
        unlabeled_source,
    )

    opt = SimpleNamespace(unlabeled=[str(tmp_path / "nope")])
    with pytest.raises(UserError, match="--unlabeled.*nope.*does not exist"):
        unlabeled_source(opt, {}, distils=True)
    with pytest.raises(UserError, match="'unlabeled:' of d.yaml.*does not exist"):
        unlabeled_source(SimpleNamespace(), {"unlabeled": str(tmp_path / "nope"), "yaml_file": "d.yaml"}, True)
    assert unlabeled_source(SimpleNamespace(), {"unlabeled": str(tmp_path)}, distils=False) is None
    assert unlabeled_source(SimpleNamespace(), {"unlabeled": None}, distils=True) is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        UnlabeledImages(str(tmp_path / "empty"), 64, 4)
    with pytest.raises(UserError, match="--rect cannot be combined with unlabeled"):
        check_mixed_options(SimpleNamespace(rect=True, image_weights=False, quad=False))


# --------------------------------------------------------------------------------------------------
# the scripts


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory) -> Path:
    """Generated shapes: 8 labelled train images, 8 unlabelled ones (images only), 4 val; 'unlabeled:' in the yaml."""
    from utils.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("unlabeled_data")
    f = build_synthetic_dataset(root / "d", n_train=16, n_val=4, img_size=64, nc=6, seed=7)
    base = f.parent
    (base / "unlabeled").mkdir()
    for img in sorted((base / "images/train").glob("*"))[8:]:
        shutil.move(img, base / "unlabeled" / img.name)
        (base / "labels/train" / f"{img.stem}.txt").unlink()
    d = yaml.safe_load(f.read_text())
    d.pop("download", None)
    d["unlabeled"] = "unlabeled"
    f.write_text(yaml.safe_dump(d))
    return f


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cmd(script, data, project, *extra, epochs=1):
    return [sys.executable, str(ROOT / script), "--data", str(data), "--cfg", str(ROOT / "models/yolov5n.yaml"),
            "--weights", "", "--img", "64", "--epochs", str(epochs), "--batch-size", "4", "--workers", "0",
            "--project", str(project), "--name", "exp", "--noautoanchor", *extra]


def _run(cmd, cwd):
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900, check=False, env=ONE_THREAD)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def test_train_kd_uses_the_unlabeled_images_and_train_py_says_it_cannot(mixed_data, tmp_path):
    out = _run(_cmd("train_kd.py", mixed_data, tmp_path / "kd", "--teacher_weight", str(TEACHER)), tmp_path)
    assert "8 labelled + 8 unlabelled images; batches of 2 labelled + 2 unlabelled" in out
    assert "4 per epoch" in out
    names, rows = read_results_csv(tmp_path / "kd/exp/results.csv")
    assert rows[0][names.index("train/kd_loss")] > 0
    out = _run(_cmd("train.py", mixed_data, tmp_path / "plain"), tmp_path)
    assert out.count("unlabeled images train a student only through a teacher") == 1
    assert "unlabelled images;" not in out


def test_yolo11_student_distils_on_unlabeled_images(mixed_data, tmp_path):
    """The v8 family end to end: a yolo11n student, a yolov8n teacher (train_kd.py's v8 default: output KD on the
    heads + mse on the maps entering them), 8 labelled + 8 unlabelled images; every loss column is live."""
    from models.checkpoint import save_checkpoint
    from models.yolo import Model

    torch.manual_seed(1)
    teacher = save_checkpoint({"epoch": -1, "best_fitness": None, "model": Model("yolov8n.yaml", nc=6), "ema": None,
                               "updates": None, "optimizer": None, "wandb_id": None}, tmp_path / "teacher-v8n.pt")
    cmd = _cmd("train_kd.py", mixed_data, tmp_path / "kd", "--teacher_weight", str(teacher), "--noval")
    cmd[cmd.index("--cfg") + 1] = str(ROOT / "models/yolo11n.yaml")
    out = _run(cmd, tmp_path)
    assert "8 labelled + 8 unlabelled images; batches of 2 labelled + 2 unlabelled" in out
    names, rows = read_results_csv(tmp_path / "kd/exp/results.csv")
    row = dict(zip(names, rows[0]))
    assert all(row[k] > 0 for k in ("train/kd_loss", "train/mse_loss", "train/box_loss", "train/dfl_loss")), row


def test_resume_with_unlabeled_images_is_exact(mixed_data, tmp_path):
    """Killed after epoch 0 and resumed, a run with unlabeled images ends where the uninterrupted one does: the
    mixed batches of epoch 1 (labelled order, unlabelled stream, augmentation) depend only on (seed, epoch).
    Same bound and reasoning as tests/test_kd_resume.py (1e-6: same kernels, a miss moves weights ~1e-2)."""
    from conftest import kill_when_written

    from models.checkpoint import safe_torch_load

    extra = ("--teacher_weight", str(TEACHER), "--unlabeled_ratio", "0.75", "--seed", "3", "--save-period", "1")
    _run(_cmd("train_kd.py", mixed_data, tmp_path / "a", *extra, epochs=2), tmp_path)
    last = tmp_path / "b/exp/weights/last.pt"
    kill_when_written(_cmd("train_kd.py", mixed_data, tmp_path / "b", *extra, epochs=2), tmp_path, last,
                      env=ONE_THREAD)
    assert safe_torch_load(last)["epoch"] == 0
    _run([sys.executable, str(ROOT / "train_kd.py"), "--resume", str(last), "--workers", "0"], tmp_path)
    a, b = (safe_torch_load(tmp_path / f"{x}/exp/weights/epoch1.pt")["model"].state_dict() for x in "ab")
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= 1e-6, f"weights differ after resume by {worst:.3g}"


def test_two_processes_with_unlabeled_images_train_like_one(tmp_path):
    """torchrun with unlabeled images: 8 identical labelled images and 8 unlabelled copies of the same pixels,
    augmentation off, one optimizer step. One process takes 8 + 8 in its batch, each of two processes 4 + 4:
    every rank's batch is the whole batch in miniature only if each rank gets its share of both kinds and
    its detection loss is scaled by its own labelled images (x WORLD_SIZE).
    Tolerance: unlike tests/test_ddp.py's labelled-only case (1e-6), the per-image gradients now differ between
    the two kinds (KD alone on the unlabelled ones), and BatchNorm's backward subtracts their batch mean: in
    float32 the first step's gradient of 16 images vs 2 x 8 differs by ~3e-4 relative (measured 1.2e-3 on a
    largest entry of 4.6; in float64 the same two batches agree to 1e-10, so it is rounding), i.e. ~6e-5 in the
    weights after the step. 1e-3 is above that; a rank that ignores the split (world size not given to the
    sampler: two batches per epoch per rank instead of one) moved them by 0.33.
    Mutation seen failing: create_dataloader passing world_size=1 to MixedBatchSampler."""
    import test_ddp

    data, hyp = _same_images(tmp_path)
    root = data.parent
    (root / "unlabeled").mkdir()
    for img in (root / "images/train").glob("*.jpg"):
        shutil.copy(img, root / "unlabeled" / f"u_{img.name}")
    d = yaml.safe_load(data.read_text())
    d["unlabeled"] = str(root / "unlabeled")
    data.write_text(yaml.safe_dump(d))
    extra = ("--teacher_weight", str(TEACHER), "--kd_normalize", "cells", "--batch-size", "16")
    for name, n in (("one", 1), ("two", 2)):
        test_ddp._run(test_ddp._cmd("train_kd.py", data, hyp, tmp_path / name, n, epochs=1, extra=extra), tmp_path)
    a, b = (test_ddp._weights(tmp_path / f"{x}/exp/weights/last.pt") for x in ("one", "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-3
    names, rows = read_results_csv(tmp_path / "two/exp/results.csv")
    assert rows[0][names.index("train/kd_loss")] > 0 and rows[0][names.index("train/obj_loss")] > 0


def _same_images(tmp_path: Path) -> tuple[Path, Path]:
    """test_ddp's data: 8 copies of one generated image and 2 val images, a hyp without augmentation."""
    from test_ddp import NO_AUG

    from utils.data.synthetic import build_synthetic_dataset

    root = tmp_path / "same"
    data = build_synthetic_dataset(root / "src", n_train=1, n_val=2, img_size=64, nc=6, seed=4)
    src = data.parent
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True)
        shutil.copytree(src / sub / "val", root / sub / "val")
    img = next((src / "images/train").glob("*.jpg"))
    for i in range(8):
        shutil.copy(img, root / f"images/train/im{i}.jpg")
        shutil.copy(src / "labels/train" / f"{img.stem}.txt", root / f"labels/train/im{i}.txt")
    cfg = yaml.safe_load(data.read_text())
    cfg.update(path=str(root), train="images/train", val="images/val")
    cfg.pop("download", None)
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch.yaml").read_text()) | NO_AUG
    (root / "hyp.yaml").write_text(yaml.safe_dump(hyp))
    return root / "data.yaml", root / "hyp.yaml"

