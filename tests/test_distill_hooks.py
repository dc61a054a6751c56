"""FeatureHooks: captured outputs equal direct calls, hooks always removed, bad names rejected."""

import pytest
import torch
from torch import nn

from distill.hooks import FeatureHooks, resolve_layer_names, valid_layer_names


class TinyLayered(nn.Module):
    """A YOLOv5-like container: layers in an nn.Sequential called `model`."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.SiLU(),
                                   nn.Conv2d(4, 8, 3, 2, 1), nn.SiLU())

    def forward(self, x):
        return self.model(x)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 6, 1))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def _no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_hooked_output_equals_direct_call():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with FeatureHooks(model, ["stem", "body.1"]) as feats:
        model(x)
    stem, body = feats.outputs
    torch.testing.assert_close(stem, model.stem(x), rtol=0, atol=0)
    torch.testing.assert_close(body, model.body(model.stem(x)), rtol=0, atol=0)
    assert _no_hooks(model)


def test_order_follows_request_and_integer_indices():
    torch.manual_seed(0)
    model = TinyLayered().eval()
    x = torch.randn(1, 3, 16, 16)
    with FeatureHooks(model, [3, "model.0", "1"]) as feats:
        model(x)
    out3, out0, out1 = feats.outputs
    assert out3.shape == (1, 8, 4, 4) and out0.shape == (1, 4, 8, 8)
    torch.testing.assert_close(out1, model.model[1](model.model[0](x)), rtol=0, atol=0)
    assert _no_hooks(model)


def test_gradients_flow_through_captured_features():
    torch.manual_seed(0)
    model = TinyNet()
    with FeatureHooks(model, ["stem"]) as feats:
        model(torch.randn(2, 3, 8, 8))
    feats.outputs[0].pow(2).mean().backward()
    assert model.stem.weight.grad is not None and model.stem.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # only the captured branch was differentiated


def test_teacher_under_no_grad_has_no_graph():
    model = TinyNet()
    with torch.no_grad(), FeatureHooks(model, ["body.1"]) as feats:
        model(torch.randn(1, 3, 8, 8))
    assert not feats.outputs[0].requires_grad


def test_hooks_removed_after_exception():
    model = TinyNet()
    with pytest.raises(RuntimeError, match="boom"), FeatureHooks(model, ["stem", "head"]):
        assert not _no_hooks(model)  # really registered inside the block
        raise RuntimeError("boom")
    assert _no_hooks(model)


def test_bad_names_raise_with_valid_names():
    with pytest.raises(ValueError) as e:
        FeatureHooks(TinyNet(), ["stem", "bdy.1"])
    assert "bdy.1" in str(e.value) and "body.1" in str(e.value) and "head" in str(e.value)
    with pytest.raises(ValueError) as e:
        FeatureHooks(TinyLayered(), ["model.9"])
    assert "model.0" in str(e.value) and "model.4" in str(e.value)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layer_names(TinyLayered(), [5])
    with pytest.raises(ValueError, match="YOLOv5 Model"):
        resolve_layer_names(TinyNet(), [0])
    assert _no_hooks(TinyNet())


def test_layer_that_did_not_run_is_reported():
    model = TinyNet()
    with FeatureHooks(model, ["head", "stem"]) as feats:
        model.stem(torch.randn(1, 3, 4, 4))  # head never runs
    with pytest.raises(RuntimeError, match="head"):
        _ = feats.outputs


def test_wrapped_model_and_valid_names():
    model = TinyLayered()
    wrapped = nn.DataParallel(model)  # CPU-only DataParallel just forwards to the module
    assert valid_layer_names(wrapped) == [f"model.{i}" for i in range(5)]
    with FeatureHooks(wrapped, [0]) as feats:
        wrapped(torch.randn(1, 3, 8, 8))
    assert feats.outputs[0].shape == (1, 4, 4, 4)
    assert _no_hooks(model)


def test_nested_use_is_refused():
    model = TinyNet()
    hooks = FeatureHooks(model, ["stem"])
    with hooks, pytest.raises(RuntimeError, match="already active"):
        hooks.__enter__()
    assert _no_hooks(model)
