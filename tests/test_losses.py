"""Losses against hand-computed tiny cases; finite at p = 0 and 1; batch and single maps."""

import math

import pytest
import torch

from napari_dunet.losses import (dice_loss, enhanced_mixing_loss, focal_loss, get_loss,
                                 soft_dice)

P = torch.tensor([[0.9, 0.2], [0.6, 0.0]])
G = torch.tensor([[1.0, 0.0], [1.0, 0.0]])


def test_soft_dice_by_hand():
    # 2*(0.9+0.6)+1 = 4 ; 0.81+0.04+0.36+0 + 2 + 1 = 4.21
    assert soft_dice(P, G).item() == pytest.approx(4 / 4.21)
    assert dice_loss(P, G).item() == pytest.approx(1 - 4 / 4.21)


def test_soft_dice_both_empty_is_one():
    z = torch.zeros(3, 3)
    assert soft_dice(z, z).item() == 1.0


def test_focal_by_hand():
    a, gm, eps = 0.48, 1.1, 1e-7
    p0 = max(0.0, eps)  # the 0.0 pixel is clipped
    fg = a * (0.1 ** gm) * math.log(0.9) + a * (0.4 ** gm) * math.log(0.6)
    bg = (1 - a) * (0.2 ** gm) * math.log(0.8) + (1 - a) * (p0 ** gm) * math.log(1 - p0)
    expected = -fg / 4 - bg / 4
    assert focal_loss(P, G).item() == pytest.approx(expected, rel=1e-5)


def test_eml_is_focal_minus_log_dice():
    expected = focal_loss(P, G) - torch.log(soft_dice(P, G))
    assert enhanced_mixing_loss(P, G).item() == pytest.approx(expected.item())


def test_parameters_are_settable():
    assert focal_loss(P, G, alpha=0.25, gamma=2.0).item() != pytest.approx(focal_loss(P, G).item())
    assert soft_dice(P, G, delta=0.0).item() == pytest.approx(3 / 3.21)


@pytest.mark.parametrize("name", ["eml", "focal", "dice"])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_finite_value_and_gradient_at_saturation(name, value):
    p = torch.full((2, 1, 4, 4), value, requires_grad=True)
    g = torch.zeros(2, 1, 4, 4)
    g[:, :, :2] = 1
    loss = get_loss(name)(p, g)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


def test_batch_equals_concatenated_maps():
    torch.manual_seed(0)
    p, g = torch.rand(3, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.7).float()
    as_one_map = enhanced_mixing_loss(p.reshape(24, 8), g.reshape(24, 8))
    assert enhanced_mixing_loss(p, g).item() == pytest.approx(as_one_map.item(), rel=1e-6)


def test_perfect_prediction_has_lowest_loss():
    g = torch.zeros(8, 8)
    g[2:5, 2:5] = 1
    perfect = enhanced_mixing_loss(g.clone(), g)
    worse = enhanced_mixing_loss((1 - g) * 0.5 + g * 0.5, g)
    assert perfect < worse
    assert perfect.item() == pytest.approx(0.0, abs=1e-4)


def test_unknown_loss():
    with pytest.raises(ValueError, match="eml"):
        get_loss("bce")
