"""Metrics against hand-worked small cases and independent implementations on real masks."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_dunet.errors import InputError
from napari_dunet.metrics import (Confusion, binarize, compare_masks, confusion, dice,
                                  global_dice, hausdorff95, label_components, lesion_counts,
                                  precision, recall)


def grid(shape=(6, 6, 6), voxels=()):
    mask = np.zeros(shape, dtype=np.uint8)
    for v in voxels:
        mask[v] = 1
    return mask


# ---- hand-worked cases ---------------------------------------------------------------------

def test_overlap_metrics_by_hand():
    # prediction 4 voxels, reference 3 voxels, 2 shared: TP 2, FP 2, FN 1
    pred = grid(voxels=[(0, 0, 0), (0, 0, 1), (0, 0, 2), (5, 5, 5)])
    truth = grid(voxels=[(0, 0, 1), (0, 0, 2), (0, 0, 3)])
    c = confusion(pred, truth)
    assert c == Confusion(tp=2, fp=2, fn=1)
    assert dice(c) == pytest.approx(4 / 7)
    assert precision(c) == pytest.approx(0.5)
    assert recall(c) == pytest.approx(2 / 3)


def test_empty_mask_conventions():
    empty, lesion = grid(), grid(voxels=[(1, 1, 1), (1, 1, 2)])
    both = compare_masks(empty, empty)
    assert (both.dsc, both.precision, both.recall, both.lesion_f1) == (1.0, 1.0, 1.0, 1.0)
    assert (both.hd95_mm, both.volume_diff_voxels, both.lesion_count_diff) == (0.0, 0, 0)
    missed = compare_masks(empty, lesion)  # nothing predicted where a lesion is
    assert (missed.dsc, missed.precision, missed.recall, missed.lesion_f1) == (0.0, 0.0, 0.0, 0.0)
    assert math.isinf(missed.hd95_mm)
    assert (missed.volume_diff_voxels, missed.lesion_count_diff) == (2, 1)
    spurious = compare_masks(lesion, empty)  # a lesion predicted where none is
    assert (spurious.dsc, spurious.precision, spurious.recall, spurious.lesion_f1) == (0.0,) * 4
    assert math.isinf(spurious.hd95_mm)


def test_global_dice_pools_voxels_not_case_scores():
    a, b = Confusion(tp=2, fp=2, fn=1), Confusion(tp=0, fp=0, fn=3)
    assert global_dice([a, b]) == pytest.approx(2 * 2 / (2 * 2 + 2 + 4))  # 0.4
    assert (dice(a) + dice(b)) / 2 == pytest.approx(2 / 7)  # the per-case mean differs
    assert global_dice([Confusion(), Confusion()]) == 1.0


@pytest.mark.parametrize("second, n6, n26", [
    ((2, 1, 1), 1, 1),  # face neighbour
    ((2, 2, 1), 2, 1),  # edge neighbour
    ((2, 2, 2), 2, 1),  # corner neighbour
    ((4, 4, 4), 2, 2),  # apart
])
def test_component_connectivity(second, n6, n26):
    mask = grid(voxels=[(1, 1, 1), second])
    assert label_components(mask, 6)[1] == n6
    assert label_components(mask, 26)[1] == n26


def test_lesion_f1_and_count_by_hand():
    # reference: A (found) and B (missed); prediction: A' on A, and C, D touching nothing
    truth = grid((10, 10, 10), [(1, 1, 1), (1, 1, 2), (7, 7, 7)])
    pred = grid((10, 10, 10), [(1, 1, 2), (1, 1, 3), (4, 4, 4), (9, 0, 9)])
    counts = lesion_counts(pred, truth)
    assert (counts.n_pred, counts.n_truth, counts.tp, counts.fp, counts.fn) == (3, 2, 1, 2, 1)
    assert counts.f1 == pytest.approx(1 / (1 + (2 + 1) / 2))  # 0.4
    assert counts.count_difference == 1


def test_lesion_f1_depends_on_connectivity():
    # two reference voxels touching at a corner; the prediction covers only one of them
    truth = grid(voxels=[(1, 1, 1), (2, 2, 2)])
    pred = grid(voxels=[(1, 1, 1)])
    assert lesion_counts(pred, truth, 6).f1 == pytest.approx(1 / (1 + 0.5))  # one missed
    assert lesion_counts(pred, truth, 26).f1 == 1.0  # one lesion, found
    assert compare_masks(pred, truth, connectivity=6).lesion_count_diff == 1
    assert compare_masks(pred, truth, connectivity=26).lesion_count_diff == 0


def test_one_prediction_covering_two_lesions_finds_both():
    truth = grid(voxels=[(1, 1, 1), (1, 1, 3)])
    pred = grid(voxels=[(1, 1, 1), (1, 1, 2), (1, 1, 3)])
    counts = lesion_counts(pred, truth)
    assert (counts.tp, counts.fp, counts.fn, counts.f1, counts.count_difference) == (2, 0, 0, 1.0, 1)


def test_hausdorff95_by_hand():
    a, b = grid((8, 8, 8), [(0, 0, 0)]), grid((8, 8, 8), [(3, 4, 0)])
    assert hausdorff95(a, b) == pytest.approx(5.0)
    assert hausdorff95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(math.hypot(6, 4))
    # two parallel 1-voxel-thick planes three voxels apart along axis 0
    p, t = np.zeros((8, 5, 5), np.uint8), np.zeros((8, 5, 5), np.uint8)
    t[2], p[5] = 1, 1
    assert hausdorff95(p, t, spacing=(2.0, 0.5, 0.5)) == pytest.approx(6.0)
    assert hausdorff95(t, t) == 0.0


def brute_force_hd95(pred, truth, spacing):
    """All-pairs surface distances (independent of distance transforms)."""
    def surface_points(mask):
        inner = ndimage.binary_erosion(mask, border_value=0)
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    sp, st = surface_points(pred), surface_points(truth)
    d = np.sqrt(((sp[:, None, :] - st[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hausdorff95_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(1)
    for _ in range(3):
        pred = ndimage.binary_dilation(rng.random((12, 14, 10)) > 0.97)
        truth = ndimage.binary_dilation(rng.random((12, 14, 10)) > 0.97)
        spacing = tuple(rng.uniform(0.5, 3.0, 3))
        assert hausdorff95(pred, truth, spacing) == pytest.approx(brute_force_hd95(pred, truth, spacing))


def test_volumes_use_voxel_size():
    pred = grid(voxels=[(0, 0, 0), (0, 0, 1), (0, 0, 2)])
    truth = grid(voxels=[(0, 0, 0)])
    m = compare_masks(pred, truth, spacing=(1.0, 1.0, 3.0))
    assert (m.pred_voxels, m.truth_voxels, m.volume_diff_voxels) == (3, 1, 2)
    assert m.volume_diff_mm3 == pytest.approx(6.0)
    assert (m.pred_ml, m.truth_ml) == (pytest.approx(0.009), pytest.approx(0.003))
    assert compare_masks(pred, truth, spacing=(1, 1, 3), voxel_volume_mm3=2.5).volume_diff_mm3 == 5.0


def test_non_binary_values_are_thresholded_at_half():
    probs = np.zeros((4, 4, 4), np.float32)
    probs[0, 0, 0], probs[0, 0, 1], probs[0, 0, 2] = 0.49, 0.5, 0.9
    assert np.argwhere(binarize(probs)).tolist() == [[0, 0, 1], [0, 0, 2]]
    assert confusion(probs, probs > 0.5).tp == 1  # 0.5 counts as lesion, 0.49 does not


def test_bad_input_is_a_clear_error():
    with pytest.raises(InputError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        compare_masks(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(InputError, match="6 or 26"):
        compare_masks(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), connectivity=8)
    with pytest.raises(InputError, match="spacing"):
        compare_masks(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), spacing=(1, 0, 1))


# ---- independent implementations on real lesion masks --------------------------------------

def load_lesion(shared_data, number):
    return np.asanyarray(nib.load(shared_data / "lesions" / f"Subject_{number:03d}.nii.gz").dataobj) > 0.5


@pytest.fixture(scope="module")
def real_pairs(request):
    shared_data = request.getfixturevalue("shared_data")
    t1, t2 = load_lesion(shared_data, 1), load_lesion(shared_data, 4)
    # keep the metrics' inputs real but small: crop to the lesions' box plus a 6-voxel margin
    box = tuple(slice(max(s.start - 6, 0), s.stop + 6)
                for s in ndimage.find_objects((t1 | t2).astype(np.uint8))[0])
    t1, t2 = t1[box], t2[box]
    return [
        ("dilated+shifted", ndimage.binary_dilation(np.roll(t1, 3, axis=0), iterations=2), t1),
        ("other subject", t2, t1),
        ("eroded", ndimage.binary_erosion(t2, iterations=2), t2),
        ("empty prediction", np.zeros_like(t1), t1),
        ("empty reference", t2, np.zeros_like(t2)),
        ("both empty", np.zeros_like(t1), np.zeros_like(t1)),
    ]


def scorer_lesion_counts(pred, truth, connectivity):
    """The ATLAS/ISLES scorer's loop over components, with scikit-image's labelling."""
    from skimage.measure import label

    conn = {6: 1, 26: 3}[connectivity]
    truth_labels, n_truth = label(truth, connectivity=conn, return_num=True)
    pred_labels, n_pred = label(pred, connectivity=conn, return_num=True)
    tp = fn = fp = 0
    for k in range(1, n_truth + 1):
        if (pred & (truth_labels == k)).any():
            tp += 1
        else:
            fn += 1
    for k in range(1, n_pred + 1):
        if not (truth & (pred_labels == k)).any():
            fp += 1
    f1 = 1.0 if tp + fp + fn == 0 else tp / (tp + (fp + fn) / 2)
    return n_pred, n_truth, tp, fp, fn, f1


@pytest.mark.parametrize("connectivity", [6, 26])
def test_lesion_metrics_match_the_scorer_loop(real_pairs, connectivity):
    for name, pred, truth in real_pairs:
        n_pred, n_truth, tp, fp, fn, f1 = scorer_lesion_counts(pred, truth, connectivity)
        counts = lesion_counts(pred, truth, connectivity)
        assert (counts.n_pred, counts.n_truth, counts.tp, counts.fp, counts.fn) == \
            (n_pred, n_truth, tp, fp, fn), name
        assert counts.f1 == pytest.approx(f1), name
        assert counts.count_difference == abs(n_pred - n_truth), name


def test_real_masks_have_diagonal_only_contacts(shared_data):
    """Subject_001 splits into more 6-connected than 26-connected components, so the option matters."""
    t1 = load_lesion(shared_data, 1)
    assert label_components(t1, 6)[1] > label_components(t1, 26)[1]


def test_overlap_metrics_match_monai(real_pairs):
    import torch
    from monai.metrics import compute_dice, get_confusion_matrix

    for name, pred, truth in real_pairs:
        c = confusion(pred, truth)
        p = torch.from_numpy(pred)[None, None].float()
        t = torch.from_numpy(truth)[None, None].float()
        tp, fp, _, fn = get_confusion_matrix(p, t).flatten().tolist()
        assert (c.tp, c.fp, c.fn) == (tp, fp, fn), name
        if truth.any():
            assert dice(c) == pytest.approx(compute_dice(p, t).item(), abs=1e-6), name
        if tp + fp:
            assert precision(c) == pytest.approx(tp / (tp + fp)), name
        if tp + fn:
            assert recall(c) == pytest.approx(tp / (tp + fn)), name
    pooled = [confusion(p, t) for _, p, t in real_pairs]
    tp = sum(int((p & t).sum()) for _, p, t in real_pairs)
    total = sum(int(p.sum() + t.sum()) for _, p, t in real_pairs)
    assert global_dice(pooled) == pytest.approx(2 * tp / total)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 1.2, 3.0)])
def test_hausdorff95_matches_monai(real_pairs, spacing):
    import torch
    from monai.metrics import compute_hausdorff_distance

    for name, pred, truth in real_pairs:
        if not (pred.any() and truth.any()):
            continue  # MONAI gives NaN there; our convention is tested by hand above
        expected = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None].float(), torch.from_numpy(truth)[None, None].float(),
            include_background=True, percentile=95, spacing=list(spacing)).item()
        assert hausdorff95(pred, truth, spacing) == pytest.approx(expected, rel=1e-5), name


def test_volume_difference_on_real_masks(real_pairs):
    for name, pred, truth in real_pairs:
        m = compare_masks(pred, truth, spacing=(1.0, 1.0, 2.0))
        assert m.volume_diff_voxels == abs(int(pred.sum()) - int(truth.sum())), name
        assert m.volume_diff_mm3 == pytest.approx(2.0 * m.volume_diff_voxels), name
        assert m.truth_ml == pytest.approx(truth.sum() * 2.0 / 1000), name
