"""OpenVINO runs the network as PyTorch does: the same maps in fp32, bf16 under bf16 autocast,
the converted model cached on disk by its weights; ``auto`` takes it for whole volumes on a CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("openvino")

from napari_dunet import openvino_network  # noqa: E402
from napari_dunet.errors import DunetError, InputError  # noqa: E402
from napari_dunet.fast import cpu_has_native_bf16, prepare_model  # noqa: E402
from napari_dunet.inference import (precision_context, predict_volume, prepare_network,  # noqa: E402
                                    resolve_runtime)
from napari_dunet.models import build_model  # noqa: E402
from napari_dunet.openvino_network import OpenVinoNetwork  # noqa: E402
from napari_dunet.options import SegmentOptions  # noqa: E402

from test_inference_fast import head_volume  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(1)
    model = build_model("dunet")
    with torch.no_grad():  # BatchNorm statistics as after training, so folding matters
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 1, 3, padding=1), nn.Sigmoid()).eval()


def test_fp32_maps_are_pytorch_maps_at_every_size(model):
    network = prepare_model(model, CPU, "openvino")
    assert isinstance(network, OpenVinoNetwork) and network.runtime.startswith("openvino")
    with torch.inference_mode():
        for x in (torch.rand(3, 4, 64, 64), torch.rand(1, 4, 96, 80)):
            expected = prepare_model(model, CPU)(x)
            got = network(x.contiguous(memory_format=torch.channels_last))
            assert got.shape == expected.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert prepare_model(model, CPU, "openvino") is network  # kept while the weights stay


def test_bf16_autocast_runs_the_network_in_bf16(model):
    network = prepare_model(model, CPU, "openvino")
    x = torch.rand(2, 4, 64, 64)
    with torch.inference_mode():
        fp32 = network(x)
        with precision_context(CPU, "bf16"):
            bf16 = network(x)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0)
    if cpu_has_native_bf16():  # elsewhere OpenVINO computes in fp32 whatever it is asked
        assert not torch.equal(bf16, fp32)


def test_converted_network_is_kept_on_disk_by_its_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    import openvino

    torch.manual_seed(0)
    folded, x = tiny(), torch.rand(2, 4, 32, 32)
    with torch.inference_mode():
        expected = folded(x)
        first = openvino_network.convert(folded)(x)
    (xml,) = openvino_network.cache_dir().glob("*.xml")
    assert xml.with_suffix(".bin").is_file()
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=0)

    real_convert = openvino.convert_model
    monkeypatch.setattr(openvino, "convert_model", lambda *a, **k: pytest.fail("converted again"))
    with torch.inference_mode():
        torch.testing.assert_close(openvino_network.convert(folded)(x), first, atol=0, rtol=0)

    monkeypatch.setattr(openvino, "convert_model", real_convert)
    xml.write_text("<not a model")  # a damaged cache file is converted again and replaced
    with torch.inference_mode():
        torch.testing.assert_close(openvino_network.convert(folded)(x), first, atol=0, rtol=0)
    assert xml.read_text().startswith("<?xml")

    monkeypatch.setattr(openvino_network, "MAX_CACHED", 2)
    for _ in range(3):  # new weights, new entries; the oldest go
        other = copy.deepcopy(folded)
        with torch.no_grad():
            other[0].bias += 1.0
        openvino_network.convert(other)
        folded = other
    assert len(list(openvino_network.cache_dir().glob("*.xml"))) == 2
    assert len(list(openvino_network.cache_dir().glob("*.bin"))) == 2
    assert not list(openvino_network.cache_dir().glob(".partial-*"))


def test_auto_takes_openvino_for_whole_volumes_on_a_cpu(monkeypatch):
    assert resolve_runtime("auto", CPU, 189) == "openvino"
    assert resolve_runtime("auto", CPU, 1) == "torch"  # the current slice: a conversion costs more
    assert resolve_runtime("torch", CPU, 189) == "torch"
    assert resolve_runtime("auto", torch.device("cuda"), 189) == "torch"
    with pytest.raises(InputError, match="CPU only"):
        resolve_runtime("openvino", torch.device("cuda"), 189)
    with pytest.raises(InputError, match="(?i)unknown runtime 'onnx'"):
        resolve_runtime("onnx", CPU, 189)
    with pytest.raises(InputError, match="(?i)unknown runtime"):
        SegmentOptions(runtime="onnx").check()
    monkeypatch.setattr(openvino_network, "available", lambda: False)
    assert resolve_runtime("auto", CPU, 189) == "torch"
    with pytest.raises(DunetError, match="pip install 'napari-dunet\\[openvino\\]'"):
        resolve_runtime("openvino", CPU, 189)


def test_a_network_openvino_cannot_convert_runs_in_pytorch(monkeypatch):
    def fail(_model):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(openvino_network, "convert", fail)
    network = tiny()
    with pytest.warns(RuntimeWarning, match="could not convert the network"):
        assert not isinstance(prepare_network(network, CPU, "auto", 189), OpenVinoNetwork)
    with pytest.raises(RuntimeError, match="unsupported operation"):  # asked for: no fallback
        prepare_network(network, CPU, "openvino", 189)


@pytest.mark.parametrize("precision", ["fp32", "mixed"])
def test_whole_volume_masks_equal_pytorch_fp32(model, precision):
    volume = head_volume("RAS", shape=(40, 48, 24), head=(2, 22))
    reference = predict_volume(volume, model, SegmentOptions(device="cpu", precision="fp32",
                                                             runtime="torch"))
    threshold = float(np.median(reference[reference > 0]))  # many voxels near it
    maps = predict_volume(volume, model, SegmentOptions(device="cpu", precision=precision,
                                                        threshold=threshold, runtime="openvino"))
    np.testing.assert_array_equal(maps >= threshold, reference >= threshold)
    if precision == "fp32":
        np.testing.assert_allclose(maps, reference, atol=1e-4)
