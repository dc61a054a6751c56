"""YOLO26 validated during training the way it is deployed (issue 29 §3): NMS-free, on the one-to-one head."""

from __future__ import annotations

import pytest
import torch

from engine.trainer import _as_deployed
from models.yolo import Model
from utils.nms import nms_for


def test_training_validation_of_yolo26_is_nms_free():
    """Inside the context a YOLO26 model answers with its one-to-one top-k rows (B, max_det, 6), which its nms
    only filters; after it (and after an error inside) it is back to the one-to-many output that checkpoints
    keep. Other models pass through unchanged.
    Mutation seen failing: _as_deployed yielding without set_end2end(True) (the output stays (B, 4 + nc, N))."""
    torch.manual_seed(0)
    m = Model("models/yolo26n.yaml", nc=6).eval()
    x = torch.rand(1, 3, 64, 64)
    with _as_deployed(m):
        rows = m(x)[0]
        assert rows.shape == (1, 84, 6)  # top-k rows: k = min(max_det 300, 84 anchor points at 64 px)
        assert nms_for(m)(rows, 0.0, 0.7)[0].shape == (84, 6)  # conf 0: nothing filtered, nothing suppressed
        assert m.model[-1].end2end
    assert not m.model[-1].end2end and m(x)[0].shape[:2] == (1, 4 + 6)
    with pytest.raises(RuntimeError), _as_deployed(m):
        raise RuntimeError("validation failed")
    assert not m.model[-1].end2end
    v8 = Model("models/yolov8n.yaml", nc=6).eval()
    with _as_deployed(v8):
        assert v8(x)[0].shape == (1, 4 + 6, 84) and nms_for(v8) == v8.nms
