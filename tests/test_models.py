"""Every model of the paper's Tables 2 and 5: parameter counts and input/output contract."""

import json

import pytest
import torch

from napari_dunet.cli import main
from napari_dunet.errors import DunetError
from napari_dunet.models import MODELS, build_model, count_parameters

PAPER_KERAS_PARAMS = {  # Tables 2 and 5 of the paper
    "dunet": 8_640_163, "unet2d-transform": 7_771_297, "unet2d-original": 31_030_593,
    "unet3d-transform": 22_597_826, "add-1": 7_802_210, "add-12": 7_970_019,
    "add-23": 8_635_043, "add-123": 8_636_260, "seadd-12": 7_971_299,
    "seadd-23": 8_640_163, "seadd-123": 8_647_012,
}


@pytest.mark.parametrize("name", sorted(PAPER_KERAS_PARAMS))
def test_parameter_count_matches_paper(name):
    _, keras = count_parameters(build_model(name))
    assert keras == PAPER_KERAS_PARAMS[name]


def test_dunet_pytorch_parameter_count():
    assert count_parameters(build_model("dunet"))[0] == 8_633_379


def test_registry_lists_every_paper_model():
    assert set(MODELS) == set(PAPER_KERAS_PARAMS)


@pytest.mark.parametrize("name", ["dunet", "unet2d-transform", "unet3d-transform", "add-123"])
def test_forward_maps_stacks_to_probabilities(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 4, 32, 32))
    assert out.shape == (2, 1, 32, 32)
    assert ((out >= 0) & (out <= 1)).all()


def test_single_channel_model_reads_only_the_centre_slice():
    torch.manual_seed(0)
    model = build_model("unet2d-transform").eval()
    x = torch.rand(1, 4, 32, 32)
    y = x.clone()
    y[:, [0, 1, 3]] = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(y))
        y[:, 2] += 1
        assert not torch.equal(model(x), model(y))


def test_dunet_uses_neighbouring_slices():
    torch.manual_seed(0)
    model = build_model("dunet").eval()
    x = torch.rand(1, 4, 32, 32)
    y = x.clone()
    y[:, 0] = 0
    with torch.no_grad():
        assert not torch.allclose(model(x), model(y))


def test_unknown_model_is_a_clear_error():
    with pytest.raises(DunetError, match="choose one of"):
        build_model("vnet")


def test_models_command_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(PAPER_KERAS_PARAMS)
    for name, row in by_name.items():
        assert set(row) >= {"name", "params", "keras_params", "paper_params"}
        assert row["keras_params"] == row["paper_params"] == PAPER_KERAS_PARAMS[name]
    assert by_name["dunet"]["params"] == 8_633_379


def test_models_command_table(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    dunet = next(line for line in lines if line.startswith("dunet "))
    assert "8,633,379" in dunet and "8,640,163" in dunet and dunet.rstrip().endswith("yes")
    assert not any(line.rstrip().endswith(" no") for line in lines)
