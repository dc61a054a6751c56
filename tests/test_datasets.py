"""Data pipeline: data yaml handling, label verification/cache, augmentations, dataloader, detect loaders,
and the synthetic shapes generator. Everything is generated in tmp_path at 64 px."""

import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT
from utils.data import label_cache
from utils.data.augmentations import letterbox, random_perspective
from utils.data.config import DOWNLOAD_ENV, check_dataset
from utils.data.dataloaders import create_dataloader
from utils.data.datasets import LoadImagesAndLabels, img2label_paths
from utils.data.image_loaders import LoadImages, LoadStreams
from utils.data.synthetic import build_synthetic_dataset
from utils.general import LOGGER, UserError, yaml_save

HYP = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0,
       "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0, "copy_paste": 0.0}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny synthetic dataset: 8 train / 4 val images of 64 px; returns the data yaml path."""
    return build_synthetic_dataset(tmp_path_factory.mktemp("shapes") / "ds", 8, 4, img_size=64, seed=1)


@pytest.fixture
def logs():
    """Collect LOGGER records (the project logger may not propagate to pytest's caplog)."""
    records = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    h = H(level=logging.DEBUG)
    old = LOGGER.level
    LOGGER.addHandler(h)
    LOGGER.setLevel(logging.INFO)
    yield records
    LOGGER.removeHandler(h)
    LOGGER.setLevel(old)


def _image(path, size=(48, 64), value=120):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))


def _pair(root, name, rows, split="train"):
    _image(root / "images" / split / f"{name}.jpg")
    lb = root / "labels" / split / f"{name}.txt"
    lb.parent.mkdir(parents=True, exist_ok=True)
    lb.write_text("".join(r + "\n" for r in rows))


# ------------------------------------------------------------------------------------------ data yaml
def test_check_dataset_dirs_txt_and_lists(tmp_path, monkeypatch):
    for i in range(2):
        _pair(tmp_path, f"a{i}", ["0 0.5 0.5 0.2 0.2"])
        _pair(tmp_path, f"b{i}", ["1 0.5 0.5 0.2 0.2"], split="val")
    (tmp_path / "train.txt").write_text("./images/train/a0.jpg\n./images/train/a1.jpg\n")
    f = tmp_path / "d.yaml"
    yaml_save(f, {"path": str(tmp_path), "train": ["train.txt", "images/val"], "val": "images/val", "nc": 2})
    d = check_dataset(f)
    assert d["train"] == [str(tmp_path / "train.txt"), str(tmp_path / "images" / "val")]
    assert d["val"] == str(tmp_path / "images" / "val") and d["test"] is None
    assert d["names"] == ["class0", "class1"] and d["nc"] == 2 and d["yaml_file"] == str(f.resolve())
    ds = LoadImagesAndLabels(d["train"], img_size=64, batch_size=2)
    assert len(ds) == 4  # 2 from the txt list + 2 from the directory
    monkeypatch.chdir(tmp_path)  # dict input, paths relative to the CWD
    d2 = check_dataset({"train": "train.txt", "val": "images/val", "nc": 1, "names": ["x"]})
    assert d2["train"] == str(tmp_path / "train.txt") and d2["yaml_file"] is None


def test_path_fallback_cwd_then_yaml_dir(tmp_path, monkeypatch):
    root = tmp_path / "cfg" / "ds"
    _pair(root, "a", ["0 0.5 0.5 0.2 0.2"])
    f = tmp_path / "cfg" / "d.yaml"
    yaml_save(f, {"path": "ds", "train": "images/train", "val": "images/train", "nc": 1})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert check_dataset(f)["path"] == str(root.resolve())  # not in CWD, found next to the yaml
    _pair(elsewhere / "ds", "b", ["0 0.5 0.5 0.2 0.2"])
    assert check_dataset(f)["path"] == str((elsewhere / "ds").resolve())  # CWD wins (v6.0)


def test_yaml_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _pair(tmp_path, "a", ["0 0.5 0.5 0.2 0.2"])
    f = tmp_path / "bad.yaml"
    yaml_save(f, {"train": "images/train", "val": "images/train", "names": ["a", "b"], "nc": 3})
    with pytest.raises(UserError, match=r"bad\.yaml.*nc=3 but 2 names"):
        check_dataset(f)
    yaml_save(f, {"train": "images/train", "val": "images/train"})
    with pytest.raises(UserError, match=r"bad\.yaml.*'nc'.*missing"):
        check_dataset(f)
    yaml_save(f, {"val": "images/train", "nc": 1})
    with pytest.raises(UserError, match=r"'train' is missing"):
        check_dataset(f)
    yaml_save(f, {"path": "nowhere", "train": "images/train", "val": "images/val", "nc": 1})
    with pytest.raises(UserError) as e:
        check_dataset(f)
    msg = str(e.value)
    assert "bad.yaml" in msg and str(tmp_path / "nowhere") in msg and "no 'download:'" in msg


def test_download_python_source_and_offline_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)
    f = tmp_path / "gen.yaml"
    src = ("from utils.data.synthetic import build_synthetic_dataset\n"
           "build_synthetic_dataset(yaml['path'], 2, 2, img_size=64, nc=2, names=yaml['names'])\n")
    yaml_save(f, {"path": "gen", "train": "images/train", "val": "images/val", "nc": 2, "names": ["a", "b"],
                  "download": src})
    with pytest.raises(UserError, match="autodownload is off"):
        check_dataset(f, autodownload=False)
    d = check_dataset(f)
    assert len(os.listdir(d["val"])) == 2 and d["path"] == str(tmp_path / "gen")
    url = "https://example.com/data.zip"
    yaml_save(f, {"path": "net", "train": "images/train", "val": "images/val", "nc": 1, "download": url})
    with pytest.raises(UserError, match=rf"gen\.yaml.*{url}.*{DOWNLOAD_ENV}=1"):
        check_dataset(f)
    assert not (tmp_path / "data.zip").exists()


def test_shapes_yaml_is_valid():
    import yaml

    from utils.general import ROOT

    d = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())
    assert d["nc"] == len(d["names"]) == 6 and "build_synthetic_dataset" in d["download"]
    for name in ("coco128", "coco", "VOC"):
        d = yaml.safe_load((ROOT / "data" / f"{name}.yaml").read_text())
        assert d["nc"] == len(d["names"]) and d["download"]


# ---------------------------------------------------------------------------------- labels and cache
def test_img2label_paths_replaces_last_images_dir():
    p = os.sep.join(["", "a", "images", "x", "images", "b", "c.d.jpg"])
    assert img2label_paths([p]) == [os.sep.join(["", "a", "images", "x", "labels", "b", "c.d.txt"])]


def test_label_cache_is_reused_and_invalidated(shapes, monkeypatch):
    train = check_dataset(shapes)["train"]
    ds = LoadImagesAndLabels(train, img_size=64)
    cache = label_cache.cache_path_for(train, ds.label_files)
    assert cache.exists() and cache.suffix == ".cache"

    def boom(*a, **k):
        raise AssertionError("cache should have been reused")

    monkeypatch.setattr("utils.data.datasets.build_cache", boom)
    ds2 = LoadImagesAndLabels(train, img_size=64)
    assert all((a == b).all() for a, b in zip(ds.labels, ds2.labels))
    monkeypatch.undo()
    lb = ds.label_files[0]
    old = open(lb).read()
    try:
        with open(lb, "a") as f:
            f.write("0 0.5 0.5 0.1 0.1\n")  # size change -> new hash -> rebuild
        ds3 = LoadImagesAndLabels(train, img_size=64)
        assert len(ds3.labels[0]) == len(ds.labels[0]) + 1
    finally:
        open(lb, "w").write(old)


def test_bad_files_are_reported_and_skipped(tmp_path, logs):
    good = ["0 0.5 0.5 0.2 0.2", "1 0.3 0.3 0.1 0.1"]
    _pair(tmp_path, "good", good)
    _pair(tmp_path, "dup", [good[0], good[0], good[1]])
    _pair(tmp_path, "poly", ["1 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6"])
    _pair(tmp_path, "cols", ["0 0.5 0.5 0.2"])
    _pair(tmp_path, "neg", ["0 -0.5 0.5 0.2 0.2"])
    _pair(tmp_path, "big", ["0 1.5 0.5 0.2 0.2"])
    _pair(tmp_path, "cls", ["0 0.5 0.5 0.2 0.2", "7 0.5 0.5 0.1 0.1"])
    _image(tmp_path / "images" / "train" / "nolabel.jpg")
    (tmp_path / "images" / "train" / "broken.jpg").write_bytes(b"not a jpeg at all")
    ds = LoadImagesAndLabels(str(tmp_path / "images" / "train"), img_size=64, batch_size=2)
    names = sorted(os.path.basename(f) for f in ds.im_files)
    assert names == ["cls.jpg", "dup.jpg", "good.jpg", "nolabel.jpg", "poly.jpg"]
    labels = dict(zip(names, [ds.labels[ds.im_files.index(f)] for f in sorted(ds.im_files)]))
    assert len(labels["dup.jpg"]) == 2  # the duplicate row is dropped, the image kept
    np.testing.assert_allclose(labels["poly.jpg"], [[1, 0.3, 0.35, 0.4, 0.5]], atol=1e-6)
    assert len(labels["nolabel.jpg"]) == 0
    summary = [m for m in logs if "found," in m]
    assert len(summary) == 1
    assert "7 found, 1 missing, 0 empty, 4 corrupt, 1 duplicate label rows removed" in summary[0]
    warning = next(m for m in logs if "problem(s)" in m)
    assert "cols.txt line 1: 4 values" in warning and "neg.txt line 1: negative" in warning
    assert "5 image/label problem(s)" in warning and "... and" not in warning
    for i in range(len(ds)):  # nothing crashes for the good ones
        img, lb, _, _ = ds[i]
        assert img.shape == (3, 64, 64) and lb.shape[1] == 6
    with pytest.raises(UserError, match=r"cls\.txt line 2: class 7 exceeds nc=2 of d\.yaml"):
        ds.check_classes(2, "d.yaml")
    ds.check_classes(8)
    with pytest.raises(UserError, match=r"cls\.txt line 2"):
        create_dataloader(str(tmp_path / "images" / "train"), 64, 2, 32, workers=0, nc=3)


def test_all_corrupt_and_missing_paths_fail_clearly(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        LoadImagesAndLabels(str(tmp_path / "images"), img_size=64)
    with pytest.raises(UserError, match="does not exist"):
        LoadImagesAndLabels(str(tmp_path / "missing"), img_size=64)


# ------------------------------------------------------------------------------------ augmentations
@pytest.mark.parametrize("shape,new,auto,expect", [((48, 64), 64, False, (64, 64)), ((48, 64), 64, True, (64, 64)),
                                                  ((30, 64), 64, True, (32, 64)), ((100, 50), (64, 96), False, (64, 96))])
def test_letterbox_shapes(shape, new, auto, expect):
    im = np.zeros((*shape, 3), np.uint8)
    out, ratio, (dw, dh) = letterbox(im, new, auto=auto, stride=32)
    assert out.shape[:2] == expect
    assert round(shape[1] * ratio[0] + 2 * dw) == expect[1] and round(shape[0] * ratio[1] + 2 * dh) == expect[0]
    small, r, _ = letterbox(np.zeros((10, 20, 3), np.uint8), 64, auto=False, scaleup=False)
    assert r == (1.0, 1.0) and small.shape[:2] == (64, 64) and small[0, 0, 0] == 114


def test_random_perspective_identity_and_filter():
    im = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    t = np.array([[1, 10, 10, 30, 40], [0, 5, 5, 6, 6]], dtype=np.float64)
    out, lab = random_perspective(im, t.copy(), degrees=0, translate=0, scale=0, shear=0)
    assert (out == im).all()
    np.testing.assert_allclose(lab, t[:1])  # the 1-px box fails box_candidates (w, h > 2 px)


# -------------------------------------------------------------------------------------- dataloader
def test_mosaic_batches_collate_and_shuffle(shapes):
    train = check_dataset(shapes)["train"]
    loader, ds = create_dataloader(train, 64, 4, 32, hyp=HYP, augment=True, workers=0, shuffle=True, seed=3)
    assert ds.mosaic and len(loader) == 2
    epochs = []
    for _ in range(2):
        paths = []
        for imgs, targets, p, s in loader:
            assert imgs.shape == (4, 3, 64, 64) and imgs.dtype == torch.uint8
            assert targets.shape[1] == 6 and set(targets[:, 0].long().tolist()) <= {0, 1, 2, 3}
            assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1).all()
            assert (targets[:, 1] < 6).all() and s == (None,) * 4
            paths += p
        epochs.append(paths)
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(ds.im_files)
    assert epochs[0] != epochs[1] or epochs[0] != sorted(ds.im_files)  # shuffled


def test_collate_fn_writes_image_index():
    batch = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.tensor([[0, 1, 0.5, 0.5, 0.1, 0.1]] * n).reshape(-1, 6), f"p{n}", None)
             for n in (2, 0, 1)]
    imgs, targets, paths, shapes = LoadImagesAndLabels.collate_fn(batch)
    assert imgs.shape == (3, 3, 8, 8) and paths == ("p2", "p0", "p1")
    assert targets[:, 0].tolist() == [0, 0, 2]
    imgs4, t4, p4, _ = LoadImagesAndLabels.collate_fn4(batch + [batch[0]])
    assert imgs4.shape == (1, 3, 16, 16) and p4 == ("p2",) and (t4[:, 0] == 0).all()


def test_rect_val_batches(tmp_path):
    for i, (h, w) in enumerate([(40, 64), (64, 40), (32, 64), (64, 64)]):
        _image(tmp_path / "images" / f"{i}.jpg", size=(h, w))
    loader, ds = create_dataloader(str(tmp_path / "images"), 64, 2, 32, rect=True, pad=0.5, workers=0)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by h/w
    assert ds.batch_shapes.tolist() == [[64, 96], [96, 96]]  # ceil(shape * 64 / 32 + 0.5) * 32
    for (imgs, _, _, shapes), bs in zip(loader, ds.batch_shapes):
        assert tuple(imgs.shape[2:]) == tuple(bs)
        (h0, w0), ((rh, rw), pad) = shapes[0]
        assert rh == rw == 1.0  # no upscaling without augmentation


def test_ram_cache_matches_disk_read(shapes):
    val = check_dataset(shapes)["val"]
    a = LoadImagesAndLabels(val, img_size=64, cache_images="ram")
    b = LoadImagesAndLabels(val, img_size=64)
    assert all(x is not None for x in a.ims)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))


# ------------------------------------------------------------------------------------ synthetic data
def test_synthetic_is_deterministic(tmp_path):
    # (its speed is bench/bench_dataloader.py's business: a wall-clock assert fails on a busy machine)
    y1 = build_synthetic_dataset(tmp_path / "a", 6, 2, img_size=64, seed=5)
    y2 = build_synthetic_dataset(tmp_path / "b", 6, 2, img_size=64, seed=5)
    y3 = build_synthetic_dataset(tmp_path / "c", 6, 2, img_size=64, seed=6)
    files = sorted(p.relative_to(y1.parent) for p in y1.parent.rglob("*.*") if p.suffix in (".jpg", ".txt")
                   and p.name != "data.yaml")
    assert len(files) == 16
    same = [(y1.parent / f).read_bytes() == (y2.parent / f).read_bytes() for f in files]
    diff = [(y1.parent / f).read_bytes() == (y3.parent / f).read_bytes() for f in files]
    assert all(same) and not all(diff)
    d = check_dataset(y1)
    assert d["nc"] == 6 and d["names"][0] == "circle"
    labels = np.concatenate(LoadImagesAndLabels(d["train"], img_size=64).labels)
    assert len(labels) and labels[:, 0].max() < 6 and (labels[:, 1:] <= 1).all() and (labels[:, 1:] > 0).all()
    with pytest.raises(UserError, match="not made by build_synthetic_dataset"):
        build_synthetic_dataset(tmp_path, 1, 1, img_size=64)  # refuses to overwrite foreign files
    assert build_synthetic_dataset(tmp_path / "a", 1, 1, img_size=64) == y1  # own output may be rebuilt
    assert len(os.listdir(tmp_path / "a" / "images" / "train")) == 1



def test_two_processes_building_the_same_missing_dataset(tmp_path):
    """Two trainings (or two test workers) started at once on a data yaml whose synthetic dataset is missing:
    each builds in a folder of its own and one result is kept, so both succeed and nothing half-built or
    left over remains. Seen failing before the per-process folder: the second build's clean-up of the shared
    'ds.partial' deleted the first one's files mid-write (FileNotFoundError)."""
    code = ("import sys; sys.path.insert(0, {root!r}); from utils.data.synthetic import build_synthetic_dataset; "
            "build_synthetic_dataset({ds!r}, n_train=60, n_val=4, img_size=64, seed=2)").format(
        root=str(ROOT), ds=str(tmp_path / "ds"))
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sorted(q.name for q in tmp_path.iterdir()) == ["ds"]  # no ds.partial-<pid> left behind
    assert len(os.listdir(tmp_path / "ds" / "images" / "train")) == 60
    assert len(os.listdir(tmp_path / "ds" / "labels" / "train")) == 60

# ----------------------------------------------------------------------------------- detect loaders
def test_load_images_dir_glob_txt_video_and_errors(tmp_path):
    for i in range(3):
        _image(tmp_path / "im" / f"{i}.png", size=(40, 60))
    (tmp_path / "im" / "notes.md").write_text("ignored")
    (tmp_path / "list.txt").write_text("im/0.png\n./im/2.png\n")
    assert len(LoadImages(tmp_path / "im", img_size=64)) == 3
    assert len(LoadImages(str(tmp_path / "im" / "*.png"), img_size=64)) == 3
    items = list(LoadImages(tmp_path / "list.txt", img_size=64, stride=32, auto=True))
    assert [os.path.basename(p) for p, *_ in items] == ["0.png", "2.png"]
    path, img, img0, cap, info = items[0]
    assert img.shape == (3, 64, 64) and img0.shape == (40, 60, 3) and cap is None and "image 1/2" in info
    vid = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(3):
        w.write(np.full((48, 64, 3), 40 * i, np.uint8))
    w.release()
    frames = list(LoadImages(vid, img_size=64))
    assert len(frames) == 3 and frames[0][3] is not None and "video 1/1" in frames[0][4]
    with pytest.raises(UserError, match="does not exist"):
        LoadImages(tmp_path / "nope.jpg")
    with pytest.raises(UserError, match="matches no files"):
        LoadImages(str(tmp_path / "*.jpeg"))
    with pytest.raises(UserError, match="no images or videos"):
        LoadImages(tmp_path / "empty.txt" if (tmp_path / "empty.txt").write_text("") is not None else None)
    (tmp_path / "bad.avi").write_bytes(b"not a video")
    with pytest.raises(UserError, match=r"bad\.avi could not be opened"):
        LoadImages(tmp_path / "bad.avi")
    with pytest.raises(UserError, match="nothing is downloaded"):
        LoadImages("https://example.com/x.jpg")
    with pytest.raises(UserError, match="webcam 97 could not be opened"):
        LoadStreams("97")  # fails at once instead of waiting for frames (a hang would stop the suite)


def test_infinite_loader_keeps_workers_across_epochs(shapes):
    val = check_dataset(shapes)["val"]
    loader, ds = create_dataloader(val, 64, 2, 32, workers=2, shuffle=True)
    it = loader.iterator
    seen = [sorted(p for _, _, paths, _ in loader for p in paths) for _ in range(2)]
    assert loader.iterator is it and loader.num_workers == 2  # same worker processes both epochs
    assert seen[0] == seen[1] == sorted(ds.im_files)


def test_listed_image_that_is_gone_is_called_missing_not_corrupt(tmp_path):
    from utils.data.label_cache import verify_image_label

    out = verify_image_label((str(tmp_path / "gone.jpg"), str(tmp_path / "gone.txt"), ""))
    assert out[0] is None and "does not exist" in out[-1] and "corrupt" not in out[-1]
