"""Training on a CPU: 3D convolutions as depth-tap 2D ones, bf16 steps stay finite, and the
dtype ``auto`` trains in is measured once per machine."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_head
from napari_dunet import cpu_dtype
from napari_dunet.checkpoint import load_checkpoint
from napari_dunet.fast import DepthTapConv3d, use_depth_tap_convolutions
from napari_dunet.models import build_model
from napari_dunet.training.config import TrainConfig
from napari_dunet.training.data import prepare_case
from napari_dunet.training.engine import StepProgress, training_events


@pytest.mark.parametrize("channels, kernel, padding, depth",
                         [((1, 8), 3, 1, 4), ((8, 16), 3, 1, 2), ((16, 8), 3, 1, 1),
                          ((16, 1), 1, 0, 2)])
def test_depth_tap_convolution_is_the_3d_convolution(channels, kernel, padding, depth):
    torch.manual_seed(0)
    conv = nn.Conv3d(*channels, kernel, padding=padding)
    taps = nn.Sequential(copy.deepcopy(conv))
    assert use_depth_tap_convolutions(taps) == 1 and isinstance(taps[0], DepthTapConv3d)
    x = torch.randn(3, channels[0], depth, 12, 10, requires_grad=True)
    x_taps = x.detach().clone().requires_grad_()
    expected, got = conv(x), taps(x_taps)
    expected.square().sum().backward()
    got.square().sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(taps[0].weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_taps.grad, x.grad, rtol=1e-4, atol=1e-4)
    assert taps[0].state_dict().keys() == conv.state_dict().keys()


def test_bf16_dunet_gradients_are_finite():
    """Batch 2 of 96 x 96 stacks: where oneDNN's bf16 Conv3d weight gradient is NaN."""
    torch.manual_seed(0)
    model = build_model("dunet")
    assert cpu_dtype.training_precision(model, "bf16") == "bf16"
    stacks = torch.rand(2, 4, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = model(stacks)
    probs.float().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(isinstance(m, DepthTapConv3d) for m in model.modules())


def test_bf16_training_steps_keep_finite_loss_and_weights(tmp_path):
    image, mask = make_head((100, 100, 4), seed=1)
    case = prepare_case(image, mask, np.eye(4), "c", input_size=96)
    config = TrainConfig(model="dunet", epochs=1, batch_size=2, input_size=96, steps_per_epoch=2,
                         lr=1e-3, patience=0, device="cpu", precision="bf16")
    out = tmp_path / "m.safetensors"
    losses = [e.loss for e in training_events([case], [], config, out)
              if isinstance(e, StepProgress)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    model, _ = load_checkpoint(out, model_name="dunet")
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_auto_trains_in_the_dtype_measured_faster(monkeypatch):
    monkeypatch.setattr(cpu_dtype, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(cpu_dtype, "machine_key", lambda m: "a CPU")
    monkeypatch.setattr(cpu_dtype, "time_training_dtypes", lambda m, size: (1.0, 0.5))
    model = build_model("dunet")
    assert cpu_dtype.training_precision(model, "auto") == "mixed"
    assert any(isinstance(m, DepthTapConv3d) for m in model.modules())
    assert model.encoder[0].layers[0].weight.is_contiguous(memory_format=torch.channels_last)
    cached = json.loads(cpu_dtype.cache_file().read_text())["a CPU | training"]
    assert cached["dtype"] == "mixed" and cached["bf16_seconds"] == 0.5

    def no_second_measurement(m, size):
        raise AssertionError("measured again")

    monkeypatch.setattr(cpu_dtype, "time_training_dtypes", no_second_measurement)
    assert cpu_dtype.training_precision(build_model("dunet"), "auto") == "mixed"
    monkeypatch.setattr(cpu_dtype, "machine_key", lambda m: "a slow-bf16 CPU")
    monkeypatch.setattr(cpu_dtype, "time_training_dtypes", lambda m, size: (1.0, 0.9))
    model = build_model("dunet")
    assert cpu_dtype.training_precision(model, "auto") == "fp32"
    assert not any(isinstance(m, DepthTapConv3d) for m in model.modules())


def test_training_measurement_leaves_the_model_and_rng_alone(tiny_model):
    torch.manual_seed(0)
    model = build_model(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    fp32, bf16 = cpu_dtype.time_training_dtypes(model, 32)
    assert fp32 > 0 and bf16 > 0
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, DepthTapConv3d) for m in model.modules())
