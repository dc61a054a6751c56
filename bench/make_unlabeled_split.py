"""Split the embedded shapes data into a few labelled training images and unlabelled ones (issue 30's
measurement, bench/kd_unlabeled.sh): `n` train images chosen with a seeded shuffle keep their labels, the
other train images go to unlabeled/ without any label file, val is shared.

    python bench/make_unlabeled_split.py datasets/shapes_l100 --labelled 100

Writes OUT/images/train + OUT/labels/train (labelled), OUT/unlabeled (images only), OUT/images/val +
OUT/labels/val, OUT/data.yaml with train, val and unlabeled, and OUT/labelled.yaml without unlabeled (the
same data for the runs that use the labelled images alone). Images are hard-linked where the file
system allows it (else copied). Does nothing when OUT/data.yaml exists.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.config import check_dataset


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--labelled", type=int, default=100, help="train images that keep their labels")
    ap.add_argument("--data", default="data/shapes.yaml", help="source data yaml (train/val folders)")
    ap.add_argument("--seed", type=int, default=0, help="which images keep their labels")
    a = ap.parse_args()
    if (a.out / "data.yaml").is_file():
        return
    d = check_dataset(a.data)  # builds datasets/shapes on first use
    root = Path(d["path"])
    train = sorted((root / "images" / "train").iterdir())
    if not 0 < a.labelled < len(train):
        sys.exit(f"--labelled {a.labelled}: choose 1..{len(train) - 1} of the {len(train)} train images")
    random.Random(a.seed).shuffle(train)
    tmp = a.out.with_name(a.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for i, img in enumerate(train):
        if i < a.labelled:
            _link(img, tmp / "images" / "train" / img.name)
            _link(root / "labels" / "train" / f"{img.stem}.txt", tmp / "labels" / "train" / f"{img.stem}.txt")
        else:
            _link(img, tmp / "unlabeled" / img.name)
    for img in sorted((root / "images" / "val").iterdir()):
        _link(img, tmp / "images" / "val" / img.name)
        _link(root / "labels" / "val" / f"{img.stem}.txt", tmp / "labels" / "val" / f"{img.stem}.txt")
    out = {"path": str(a.out.resolve()), "train": "images/train", "val": "images/val", "unlabeled": "unlabeled",
           "nc": d["nc"], "names": list(d["names"])}
    (tmp / "data.yaml").write_text(yaml.safe_dump(out, sort_keys=False))
    (tmp / "labelled.yaml").write_text(yaml.safe_dump({k: v for k, v in out.items() if k != "unlabeled"},
                                                       sort_keys=False))
    tmp.rename(a.out)
    print(f"{a.out}: {a.labelled} labelled + {len(train) - a.labelled} unlabelled train images, "
          f"{len(list((root / 'images' / 'val').iterdir()))} val")


if __name__ == "__main__":
    main()
