"""Option names live in one torch-free module; the torch-side registries agree with it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_dunet import options
from napari_dunet.errors import InputError


def test_building_and_checking_a_training_configuration_imports_no_torch():
    code = ("import sys\n"
            "from napari_dunet.training.config import TrainConfig\n"
            "TrainConfig(model='seadd-12', loss='focal', precision='mixed').check()\n"
            "try:\n"
            "    TrainConfig(loss='bce').check()\n"
            "except ValueError:\n"
            "    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_registries_list_the_same_names():
    from napari_dunet import inference, losses, models

    assert tuple(models.MODELS) == options.MODELS and models.DEFAULT_MODEL in options.MODELS
    assert tuple(losses.LOSSES) == options.LOSSES
    assert tuple(inference.PRECISIONS) == options.PRECISIONS
    with pytest.raises(RuntimeError, match="loss"):
        options.agree("loss", ("eml", "bce"), options.LOSSES)


def test_segment_options_are_checked_before_any_work():
    options.SegmentOptions(precision="mixed", threshold=0.3).check()
    for bad, words in [({"precision": "fp8"}, "unknown precision"),
                       ({"threshold": 1.0}, "between 0 and 1"), ({"batch_size": 0}, "batch size")]:
        with pytest.raises(InputError, match=words):
            options.SegmentOptions(**bad).check()
