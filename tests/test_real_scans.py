"""The bundled weights on the only real patient scans here (../shared/data/real/), segmented as
``dunet segment`` does: what a user sees on a scan that was never synthesised."""

import numpy as np
import pytest

from napari_dunet import weights
from napari_dunet.checkpoint import load_checkpoint
from napari_dunet.io import load_mask, load_volume
from napari_dunet.metrics import confusion, dice
from napari_dunet.segmentation import segment

pytestmark = pytest.mark.slow  # whole scans with the full network


@pytest.fixture(scope="module")
def bundled():
    return load_checkpoint(weights.default_checkpoint())


def test_real_stroke_t2_lesion_is_found(shared_data, bundled):
    """A chronic stroke on T2 (skull on, native space): the weights never saw a T2 or this
    patient, so finding the lesion shows they learned lesions, not one contrast."""
    folder = shared_data / "real" / "stroke_t2"
    result = segment(load_volume(folder / "T2.nii.gz"), *bundled)
    truth = load_mask(folder / "lesionT2.nii.gz").data > 0
    counts = confusion(result.mask > 0, truth)
    assert dice(counts) >= 0.4
    assert result.lesion_ml < 3 * np.count_nonzero(truth) * result.volume.voxel_volume_ml


@pytest.mark.parametrize("patient", ["patient19", "patient26"])
def test_real_ms_t1_scans_report_little_lesion(shared_data, bundled, patient):
    """MS lesions are mostly invisible on T1: a stroke model should report little."""
    volume = load_volume(shared_data / "real" / "ms_t1" / patient / "T1w.nii.gz")
    assert segment(volume, *bundled).lesion_ml < 5.0


def test_a_healthy_whole_head_reports_little_lesion(shared_data, bundled):
    """The lesion-free ch2 T1 with skull, eyes and neck, as a user's whole-head scan has them:
    little lesion anywhere, none in the orbits (ch2 is a training anatomy: a floor)."""
    result = segment(load_volume(shared_data / "ch2.nii.gz"), *bundled)
    assert result.lesion_ml < 5.0
    in_front_of_the_brain = result.mask[:, 175:, :40]  # both orbits (RAS voxels, 1 mm)
    assert np.count_nonzero(in_front_of_the_brain) < 500
