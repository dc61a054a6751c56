"""FGFI imitation mask: the vectorised mask equals a slow, literal reference on random boxes."""

import random

import pytest
import torch

from distill.imitation import imitation_mask, model_imitation_masks
from utils.general import UserError

STRIDES = [8.0, 16.0, 32.0]
ANCHORS_PX = torch.tensor([[[10, 13], [16, 30], [33, 23]],
                           [[30, 61], [62, 45], [59, 119]],
                           [[116, 90], [156, 198], [373, 326]]], dtype=torch.float32)  # yolov5 P3-P5

# Cells whose decision is within this IoU distance of a threshold are not compared: the vectorised
# mask decides "IoU > t" through I > t (A_b + A_a) / (1 + t) and the interval ox > c / oy, which
# rounds differently from inter / union (a few float32 ulps of values <= 1, i.e. ~1e-6 at most).
# 1e-5 leaves a 10x margin; random boxes put fewer than 1 % of the cells that close (checked below).
AMBIGUOUS = 1e-5


def reference_mask(targets, anchors_px, strides, shapes, batch_size, psi=0.5):
    """The paper's definition written literally with Python floats (float64) and loops.

    Returns (masks, margins): margins[l][b][i][j] = max over boxes k of image b and anchors a of
    IoU(k, a at (i, j)) - psi * maxIoU_k over the boxes that overlap some anchor (None when none):
    the cell is positive iff > 0.
    """
    masks, margins = [], []
    rows = targets.tolist()
    for level, (h, w) in enumerate(shapes):
        s = strides[level]
        anchors = [(aw / s, ah / s) for aw, ah in anchors_px[level].tolist()]
        mask = [[[False] * w for _ in range(h)] for _ in range(batch_size)]
        margin = [[[None] * w for _ in range(h)] for _ in range(batch_size)]
        for b in range(batch_size):
            for row in rows:
                if int(row[0]) != b:
                    continue
                cx, cy, bw, bh = row[2] * w, row[3] * h, row[4] * w, row[5] * h
                box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
                ious = {}
                for i in range(h):
                    for j in range(w):
                        for a, (aw, ah) in enumerate(anchors):
                            anchor = (j + 0.5 - aw / 2, i + 0.5 - ah / 2, j + 0.5 + aw / 2, i + 0.5 + ah / 2)
                            ious[i, j, a] = _iou(box, anchor)
                threshold = psi * max(ious.values())
                if threshold == 0:  # the box overlaps no anchor of this level (tiny box): no positive
                    continue
                for (i, j, _a), iou in ious.items():
                    if iou > threshold:
                        mask[b][i][j] = True
                    d = iou - threshold
                    margin[b][i][j] = d if margin[b][i][j] is None else max(margin[b][i][j], d)
        masks.append(torch.tensor(mask, dtype=torch.bool))
        margins.append(margin)
    return masks, margins


def _iou(b1, b2):
    iw = max(0.0, min(b1[2], b2[2]) - max(b1[0], b2[0]))
    ih = max(0.0, min(b1[3], b2[3]) - max(b1[1], b2[1]))
    inter = iw * ih
    union = (b1[2] - b1[0]) * (b1[3] - b1[1]) + (b2[2] - b2[0]) * (b2[3] - b2[1]) - inter
    return inter / union


def random_targets(seed, batch_size, max_boxes, empty_images=()):
    """Random boxes inside the image; about a third touch a border; some tiny, some image-sized."""
    rng = random.Random(seed)
    rows = []
    for b in range(batch_size):
        if b in empty_images:
            continue
        for _ in range(rng.randint(1, max_boxes)):
            w = rng.choice([rng.uniform(0.01, 0.1), rng.uniform(0.05, 0.6), rng.uniform(0.6, 1.0)])
            h = rng.choice([rng.uniform(0.01, 0.1), rng.uniform(0.05, 0.6), rng.uniform(0.6, 1.0)])
            x = rng.choice([w / 2, 1 - w / 2, rng.uniform(w / 2, 1 - w / 2)])  # left/right border or inside
            y = rng.choice([h / 2, 1 - h / 2, rng.uniform(h / 2, 1 - h / 2)])
            rows.append([b, rng.randrange(3), x, y, w, h])
    return torch.tensor(rows, dtype=torch.float32).view(-1, 6)


def _compare(fast, ref, margins):
    """Assert equal masks except on ambiguous cells; returns the number of cells compared."""
    compared = ambiguous = 0
    for level, (m, r) in enumerate(zip(fast, ref)):
        assert m.shape == r.shape and m.dtype == torch.bool
        for b, i, j in torch.nonzero(torch.ones_like(r)).tolist():
            d = margins[level][b][i][j]
            if d is not None and abs(d) < AMBIGUOUS:
                ambiguous += 1
                continue
            compared += 1
            assert bool(m[b, i, j]) == bool(r[b, i, j]), f"level {level} image {b} cell ({i}, {j}), margin {d}"
    assert ambiguous <= 0.01 * (compared + ambiguous)
    return compared


@pytest.mark.parametrize("seed, shapes, anchor_scale, max_boxes", [
    (0, [(8, 6), (4, 3), (2, 2)], 0.25, 5),  # 64 x 48 px, anchors scaled like the image (P5 rounds up)
    (1, [(8, 6), (4, 3), (2, 2)], 0.25, 5),
    (2, [(8, 6), (4, 3), (2, 2)], 0.25, 5),
    (3, [(12, 16), (6, 8), (3, 4)], 0.5, 9),  # 96 x 128 px, more boxes, overlapping unions
    (4, [(16, 16), (8, 8), (4, 4)], 1.0, 6),  # 128 px with the real anchors: P5 anchors exceed the image
])
def test_mask_matches_reference(seed, shapes, anchor_scale, max_boxes):
    batch_size = 4
    targets = random_targets(seed, batch_size, max_boxes=max_boxes, empty_images=(2,))
    fast = imitation_mask(targets, ANCHORS_PX * anchor_scale, STRIDES, shapes, batch_size)
    ref, margins = reference_mask(targets, ANCHORS_PX * anchor_scale, STRIDES, shapes, batch_size)
    assert _compare(fast, ref, margins) > 200
    assert not any(m[2].any() for m in fast), "an image without boxes has an empty mask"
    assert all(m.any() for m in fast), "every level has positives (else the comparison is vacuous)"


def test_psi_and_wrong_anchors_are_detected():
    """The comparison is sharp enough to see a wrong psi or another level's anchors."""
    shapes, batch_size = [(8, 8), (4, 4), (2, 2)], 3
    targets = random_targets(5, batch_size, max_boxes=4)
    ref, _ = reference_mask(targets, ANCHORS_PX / 4, STRIDES, shapes, batch_size)
    wrong_psi = imitation_mask(targets, ANCHORS_PX / 4, STRIDES, shapes, batch_size, psi=0.8)
    swapped = imitation_mask(targets, ANCHORS_PX.flip(0) / 4, STRIDES, shapes, batch_size)
    assert any(not torch.equal(m, r) for m, r in zip(wrong_psi, ref))
    assert any(not torch.equal(m, r) for m, r in zip(swapped, ref))


def test_single_box_hand_case():
    """A 16 x 16 px box centred in a 32 x 32 px image, stride 8, one 16 x 16 px anchor. Anchor centres
    sit at 4, 12, 20, 28 px, so the 1-D overlaps per column are 4, 12, 12, 4 px. Inner cells: 144 /
    (512 - 144) = 0.391 = max IoU, threshold 0.196; edge cells: 48 / 464 = 0.103; corners: 16 / 496."""
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.5]])
    (mask,) = imitation_mask(targets, torch.tensor([[[16.0, 16.0]]]), [8.0], [(4, 4)], 1)
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 1:3, 1:3] = True
    assert torch.equal(mask, expected)
    # psi 0.25 lowers the threshold to 0.098: the edge cells (0.103) join, the corners (0.032) do not
    (mask,) = imitation_mask(targets, torch.tensor([[[16.0, 16.0]]]), [8.0], [(4, 4)], 1, psi=0.25)
    expected[0, 1:3, :] = expected[0, :, 1:3] = True
    assert torch.equal(mask, expected)


def test_no_boxes_gives_empty_masks():
    masks = imitation_mask(torch.zeros(0, 6), ANCHORS_PX, STRIDES, [(8, 8), (4, 4), (2, 2)], 2)
    assert [tuple(m.shape) for m in masks] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert not any(m.any() for m in masks)


def test_zero_area_box_gives_no_positive():
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.0, 0.3]])
    masks = imitation_mask(targets, ANCHORS_PX, STRIDES, [(8, 8), (4, 4), (2, 2)], 1)
    assert not any(m.any() for m in masks)


def test_bad_inputs_raise_user_error():
    shapes = [(8, 8), (4, 4), (2, 2)]
    with pytest.raises(UserError, match=r"\(n, 6\)"):
        imitation_mask(torch.zeros(3, 5), ANCHORS_PX, STRIDES, shapes, 2)
    with pytest.raises(UserError, match="anchors"):
        imitation_mask(torch.zeros(0, 6), ANCHORS_PX[:2], STRIDES, shapes, 2)
    with pytest.raises(UserError, match="batch has 2 images"):
        imitation_mask(torch.tensor([[5, 0, 0.5, 0.5, 0.1, 0.1]]), ANCHORS_PX, STRIDES, shapes, 2)


def test_model_masks_and_picture(tmp_path):
    from models.yolo import Model
    from utils.plots import plot_imitation_masks

    model = Model("models/yolov5n.yaml", nc=2)
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.3, 0.5], [1, 1, 0.7, 0.6, 0.5, 0.4]])
    masks, strides = model_imitation_masks(model, targets, (64, 96), 2)
    assert strides.tolist() == [8.0, 16.0, 32.0]
    assert [tuple(m.shape) for m in masks] == [(2, 8, 12), (2, 4, 6), (2, 2, 3)]
    direct = imitation_mask(targets, model.model[-1].anchors * strides.view(-1, 1, 1), strides,
                            [(8, 12), (4, 6), (2, 3)], 2)
    assert all(torch.equal(a, b) for a, b in zip(masks, direct))

    images = torch.full((2, 3, 64, 96), 0.5)
    mosaic = plot_imitation_masks(images, targets, masks, tmp_path / "masks.jpg", strides=strides)
    assert (tmp_path / "masks.jpg").stat().st_size > 0 and mosaic.shape == (2 * 64, 3 * 96, 3)
    b, i, j = torch.nonzero(masks[0])[0].tolist()  # a positive P3 cell: tinted red (R > B)
    b2, i2, j2 = torch.nonzero(~masks[0])[-1].tolist()  # a negative one keeps the grey
    px, px2 = mosaic[b * 64 + i * 8 + 4, j * 8 + 4], mosaic[b2 * 64 + i2 * 8 + 4, j2 * 8 + 4]
    assert px[0] > px[2] + 50 and abs(int(px2[0]) - int(px2[2])) < 5


def test_large_batch_indices_stay_exact():
    """Batch x H x (W + 1) above 2**24 (float32's exact integers): the flat indices switch to float64.
    Boxes in the last image must land there, exactly as the same boxes in a batch of one."""
    shapes, batch_size = [(64, 64)], 4100  # 4100 * 64 * 65 = 17.06 M > 16.78 M
    targets = random_targets(7, 1, max_boxes=4)
    (alone,) = imitation_mask(targets, ANCHORS_PX[:1] * 2, STRIDES[:1], shapes, 1)
    targets[:, 0] = batch_size - 1
    (mask,) = imitation_mask(targets, ANCHORS_PX[:1] * 2, STRIDES[:1], shapes, batch_size)
    assert alone.any() and torch.equal(mask[-1], alone[0]) and not mask[:-1].any()


def test_boxes_reaching_outside_the_image():
    """Unclipped labels (centre outside the image, or beyond a rounded-up grid) still match the reference."""
    shapes, batch_size = [(8, 6), (4, 3), (2, 2)], 2
    targets = torch.tensor([[0, 0, 1.05, 0.5, 0.4, 0.3], [0, 1, -0.1, 1.1, 0.5, 0.5], [1, 2, 0.5, 0.98, 0.9, 0.3],
                            [1, 0, 1.3, 0.5, 0.2, 0.2]])  # last: wholly outside (edge anchors may reach it)
    fast = imitation_mask(targets, ANCHORS_PX / 4, STRIDES, shapes, batch_size)
    ref, margins = reference_mask(targets, ANCHORS_PX / 4, STRIDES, shapes, batch_size)
    assert _compare(fast, ref, margins) > 50
    assert all(m[0].any() for m in fast)
