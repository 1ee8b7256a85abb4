"""Training scans drawn from label maps: labels, reproducible draws, the stream the engine reads."""

import numpy as np
import pytest
import torch

from napari_dunet import labelsynth
from napari_dunet.errors import InputError
from napari_dunet.io import load_mask
from napari_dunet.preprocessing import preprocess


@pytest.fixture(scope="module")
def ch2_labels(shared_data):
    return labelsynth.load_label_anatomy(shared_data / "ch2.nii.gz")


@pytest.fixture(scope="module")
def lesion(shared_data, ch2_labels):
    return labelsynth.lesion_on(ch2_labels, load_mask(shared_data / "lesions" / "Subject_005.nii.gz"))


def test_label_maps_hold_every_tissue_and_the_skull_when_scanned_with_it(ch2_labels):
    counts = np.bincount(ch2_labels.labels.ravel(), minlength=labelsynth.N_LABELS)
    for values in labelsynth.TISSUE_LEVELS.values():
        assert counts[list(values)].min() > 10_000
    assert ch2_labels.has_skull
    assert counts[[labelsynth.CORE, labelsynth.RIM]].sum() == 0  # lesions come with a draw


def test_skull_on_label_maps_have_bone_and_fluid_around_the_brain_that_no_lesion_enters(
        ch2_labels, monkeypatch):
    labels = ch2_labels.labels
    other = labels == labelsynth.OTHER
    assert other.sum() > 100_000  # bone and air spaces, drawn in every contrast
    brain = np.isin(labels, labelsynth.BRAIN)
    assert not (other & brain).any()
    # a lesion mask that reaches past the brain is clipped to it
    from napari_dunet.io import Volume

    everywhere = Volume(np.ones(labels.shape, np.float32), ch2_labels.affine)
    assert np.array_equal(labelsynth.lesion_on(ch2_labels, everywhere), brain)
    # a brain-extracted draw drops them with the scalp
    drawn, deform = {}, labelsynth._deform

    def spy(labels, *args):
        drawn["labels"] = labels.copy()  # the label map as the draw deforms and paints it
        return deform(labels, *args)

    monkeypatch.setattr(labelsynth, "_deform", spy)
    stripped = labelsynth.SynthRanges(strip_skull=1.0, lesion_free=1.0)
    labelsynth.draw_scan(ch2_labels, brain, np.random.default_rng(0), stripped)
    assert not np.isin(drawn["labels"], labelsynth.HEAD + (labelsynth.OTHER,)).any()
    assert np.isin(drawn["labels"], labelsynth.WM).any()


def test_mni_template_is_brain_extracted():
    mni = labelsynth.load_label_anatomy("mni")
    assert not mni.has_skull and mni.labels.shape == (197, 233, 189)


def test_lesion_becomes_core_and_rim_inside_the_brain(ch2_labels, lesion):
    labels = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(0))
    assert set(np.unique(labels[lesion])) <= {labelsynth.CORE, labelsynth.RIM}
    assert (labels == labelsynth.CORE).any() and (labels == labelsynth.RIM).any()
    assert not np.isin(labels[~lesion], [labelsynth.CORE, labelsynth.RIM]).any()


def test_draws_repeat_with_a_seed_and_differ_without(ch2_labels, lesion):
    first = labelsynth.draw_scan(ch2_labels, lesion, np.random.default_rng(7))
    again = labelsynth.draw_scan(ch2_labels, lesion, np.random.default_rng(7))
    other = labelsynth.draw_scan(ch2_labels, lesion, np.random.default_rng())
    assert np.array_equal(first[0].data, again[0].data) and np.array_equal(first[1].data, again[1].data)
    assert first[0].data.shape != other[0].data.shape or not np.array_equal(first[0].data, other[0].data)


def test_a_draw_is_a_scan_the_preprocessing_takes(ch2_labels, lesion):
    with_lesion = labelsynth.SynthRanges(lesion_free=0.0)
    for seed in range(4):
        image, mask = labelsynth.draw_scan(ch2_labels, lesion, np.random.default_rng(seed), with_lesion)
        assert image.data.dtype == np.float32 and np.isfinite(image.data).all()
        assert image.data.shape == mask.data.shape and mask.data.sum() > 500
        spacing = image.voxel_size[2]
        geometry, normalized = preprocess(image.data, image.affine)
        slices = geometry.forward(normalized)
        assert slices.shape[0] == image.data.shape[2] * geometry.z_factor
        assert (geometry.z_factor > 1) == (spacing > 1.5)
        seen = geometry.forward(mask.data.astype(np.float32)) >= 0.5
        assert seen.sum() > 0.5 * mask.data.sum() * spacing  # the lesion is in the window


def test_lesion_free_draws_show_a_whole_healthy_head(ch2_labels, lesion):
    healthy = labelsynth.SynthRanges(lesion_free=1.0)
    image, mask = labelsynth.draw_scan(ch2_labels, lesion, np.random.default_rng(3), healthy)
    assert not mask.data.any() and (image.data > 0.1).sum() > 500_000
    shares = [labelsynth.draw_scan(ch2_labels, lesion, np.random.default_rng(s))[1].data.any()
              for s in range(20)]
    assert 12 <= sum(shares) <= 20  # the default ranges keep a lesion in most draws


def test_lesion_core_is_visible_and_near_csf_in_most_draws():
    """Every draw's core stands out from grey and white matter (a mask over a lesion that
    cannot be seen teaches the network to mark lesions where they usually lie); in most draws
    it is fluid-like, near the CSF level."""
    contrast = labelsynth.SynthRanges().lesion_contrast
    near = 0
    for seed in range(300):
        means, _ = labelsynth.label_intensities(np.random.default_rng(seed))
        csf, gm, wm = (means[list(v)].mean() for v in (labelsynth.CSF, labelsynth.GM, labelsynth.WM))
        tissue = means[list(labelsynth.GM) + list(labelsynth.WM)].mean()
        assert min(abs(means[labelsynth.CORE] - gm), abs(means[labelsynth.CORE] - wm)) >= (
            contrast - 1e-6), seed
        near += abs(means[labelsynth.CORE] - csf) <= 0.1 * abs(tissue - csf) + 1e-6
    assert 0.6 <= near / 300 <= 0.9


@pytest.mark.slow
def test_stream_feeds_fresh_cases_from_worker_processes_in_draw_order(shared_data):
    """Two workers feed the draws one worker would, in the same order (worker 1 draws 1, 3, ...)."""
    from napari_dunet.training.synthetic import CaseDrawer, SynthSource, SynthStream

    source = SynthSource((str(shared_data / "ch2.nii.gz"),),
                         (shared_data / "lesions" / "Subject_001.nii.gz",
                          shared_data / "lesions" / "Subject_002.nii.gz"), input_size=64)
    stream = SynthStream(source, seed=3, pool_size=3, workers=2)
    try:
        pool = stream.refresh(minimum=2)
        assert len(pool) >= 2 and all(case.slices.shape[1:] == (64, 64) for case in pool)
        later = stream.refresh(minimum=3)
        assert len(later) == 3 and len({case.name for case in later}) == 3
        taken = pool + later

        def numbers(cases):
            return [int(case.name.rsplit("-", 1)[1]) for case in cases]

        first, newest = numbers(pool), numbers(later)  # no draw lost or reordered:
        assert first == list(range(len(first)))
        assert newest == list(range(newest[0], newest[0] + 3)) and newest[-1] >= first[-1] + 1
        assert any(case.lesion.any() for case in taken)  # some draws are lesion-free
        second = next(case for case in taken if case.name.endswith("-3-0-1"))
        alone = CaseDrawer(source).draw((3, 0, 1))
        assert second.name == alone.name and torch.equal(second.slices, alone.slices)
        stream._processes[1].kill()  # a worker that died must not leave training on a stale pool
        stream._processes[1].join()
        with pytest.raises(InputError, match="synthesis worker stopped"):
            stream.refresh(minimum=3)  # the pool is full: reads on until the dead worker's turn
    finally:
        stream.close()
    assert not any(process.is_alive() for process in stream._processes)


def test_stream_needs_a_worker(shared_data):
    from napari_dunet.training.synthetic import SynthSource, SynthStream

    source = SynthSource((str(shared_data / "ch2.nii.gz"),),
                         (shared_data / "lesions" / "Subject_001.nii.gz",))
    with pytest.raises(InputError, match="at least one worker"):
        SynthStream(source, workers=0)


def test_t2_order_draws_put_fluid_above_grey_above_white_matter():
    t2 = labelsynth.SynthRanges(t1_like=0.0, t2_like=1.0)
    for seed in range(50):
        means, _ = labelsynth.label_intensities(np.random.default_rng(seed), t2)
        csf, gm, wm = (means[list(v)].mean() for v in (labelsynth.CSF, labelsynth.GM, labelsynth.WM))
        assert csf > gm > wm
    orders = {"t1": 0, "t2": 0}
    for seed in range(400):  # the default mix has both orders in the shares it names
        means, _ = labelsynth.label_intensities(np.random.default_rng(seed))
        csf, gm, wm = (means[list(v)].mean() for v in (labelsynth.CSF, labelsynth.GM, labelsynth.WM))
        orders["t1"] += csf < gm < wm
        orders["t2"] += csf > gm > wm
    ranges = labelsynth.SynthRanges()
    by_chance = (1 - ranges.t1_like - ranges.t2_like) / 6  # any order: one of six is each
    for order, share in (("t1", ranges.t1_like), ("t2", ranges.t2_like)):
        assert abs(orders[order] / 400 - share - by_chance) < 0.07, orders


def test_painted_draws_keep_the_anatomy_s_own_scan_with_the_lesion_where_it_was(ch2_labels, lesion):
    still = labelsynth.SynthRanges(painted=1.0, lesion_free=0.0, strip_skull=0.0, rotation_deg=0.0,
                                   scale=0.0, shift_mm=0.0, elastic_mm=0.0, crop_mm=0.0,
                                   thick_slices=0.0)
    image, mask = labelsynth.draw_scan(ch2_labels, lesion, np.random.default_rng(1), still)
    t1 = ch2_labels.source.t1.data
    assert image.data.shape == t1.shape and image.data.dtype == np.float32
    assert np.array_equal(mask.data > 0, lesion & ch2_labels.source.brain)
    healthy = ch2_labels.source.brain & ~lesion  # real texture: the scan, not label means
    assert np.corrcoef(image.data[healthy], t1[healthy])[0, 1] > 0.9
    assert image.data[lesion].mean() < 0.8 * image.data[healthy].mean()  # a dark T1 lesion


def test_gliotic_lesions_are_mostly_rim(ch2_labels, lesion):
    def rim_share(ranges):
        labels = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(2), ranges)
        return (labels[lesion] == labelsynth.RIM).mean()

    cavity = rim_share(labelsynth.SynthRanges(gliotic=0.0))
    gliotic = rim_share(labelsynth.SynthRanges(gliotic=1.0))
    assert cavity < 0.5 < gliotic


def test_mottle_pulls_lesion_voxels_part_of_the_way_to_the_tissue_and_leaves_the_rest(
        ch2_labels, lesion):
    labels = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(0))
    image = np.where(np.isin(labels, [labelsynth.CORE, labelsynth.RIM]), 0.1, 0.6).astype(np.float32)
    before = image.copy()
    labelsynth._mottle(image, labels, 0.6, 0.5, np.random.default_rng(0))
    assert np.array_equal(image[~lesion], before[~lesion])
    moved = image[lesion] - 0.1
    assert moved.min() >= 0 and moved.max() <= 0.25 + 1e-6  # at most half-way, still darker
    assert moved.std() > 0.02  # a field, not one level


def test_cavity_is_plain_csf_in_a_share_of_t1_draws_and_never_hidden_in_the_tissue():
    """A chronic cavity on a T1 is fluid: in about ``cavity_like_csf`` of the T1-order draws
    whose CSF stands clear of the tissues it takes a CSF class's exact level, told from CSF only
    by shape. Draws in T2 or any order keep their own core level."""
    for seed in range(100):
        means, fluid = labelsynth.label_intensities(
            np.random.default_rng(seed), labelsynth.SynthRanges(t1_like=0.0, t2_like=0.5))
        assert fluid is None
    ranges = labelsynth.SynthRanges(t1_like=1.0, t2_like=0.0)
    plain, clear = 0, 0
    for seed in range(300):
        means, fluid = labelsynth.label_intensities(np.random.default_rng(seed), ranges)
        tissues = [means[list(v)].mean() for v in (labelsynth.GM, labelsynth.WM)]
        if min(abs(means[c] - t) for c in labelsynth.CSF for t in tissues) >= ranges.lesion_contrast:
            clear += 1
        if fluid is not None:
            plain += 1
            assert fluid in labelsynth.CSF and means[labelsynth.CORE] == means[fluid]
            core, tissue = means[labelsynth.CORE], np.mean(tissues)
            assert min(abs(core - t) for t in tissues) >= ranges.lesion_contrast
            assert abs(means[labelsynth.RIM] - core) < abs(tissue - core)  # the rim lies between
    assert abs(plain / clear - ranges.cavity_like_csf) <= 0.12


def test_a_plain_csf_cavity_is_drawn_with_the_csf_texture_and_no_mottle(ch2_labels, lesion):
    labels = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(0),
                                    labelsynth.SynthRanges(strands=0.0))
    box = tuple(slice(a, b + 1) for a, b in zip(*(lambda i: (i.min(0), i.max(0)))(np.argwhere(lesion))))
    sub = labels[box]
    fluid = labelsynth.SynthRanges(cavity_like_csf=1.0, blur_mm=(0.0, 0.0), mottle=(0.5, 0.5))
    for seed in range(40):  # the first draw in T1 order whose CSF is clear of the tissues
        rng = np.random.default_rng(seed)
        means, cls = labelsynth.label_intensities(np.random.default_rng(seed), fluid)
        if cls is not None:
            break
    image = labelsynth._paint(sub, rng, fluid)
    core, csf = image[sub == labelsynth.CORE], image[sub == cls]
    assert abs(core.mean() - csf.mean()) < 0.01 and abs(core.std() - csf.std()) < 0.01


def test_strands_cross_the_cavity_within_the_stated_share(ch2_labels, lesion):
    without = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(5),
                                     labelsynth.SynthRanges(strands=0.0, gliotic=0.0))
    ranges = labelsynth.SynthRanges(strands=1.0, gliotic=0.0)
    strands = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(5), ranges)
    cavity = without == labelsynth.CORE
    share = (strands[cavity] == labelsynth.RIM).mean()
    low, high = ranges.strand_share
    assert low - 0.02 <= share <= high + 0.02
    assert np.isin(strands[lesion], [labelsynth.CORE, labelsynth.RIM]).all()  # still lesion
    assert np.array_equal(strands[~lesion], without[~lesion])  # nothing outside it changes
    # sheets, not speckle: a strand voxel shares half as many faces again with other strand
    # voxels as a voxel of random speckle taking the same share of the same cavity does (for
    # speckle the count is 6 x share; ~1.8x measured here at a share of 0.19)
    from scipy import ndimage as ndi

    def neighbours(part: np.ndarray) -> float:
        faces = ndi.generate_binary_structure(3, 1).astype(np.uint8)
        count = ndi.convolve(part.astype(np.uint8), faces, mode="constant")
        return float(count[part].mean()) - 1.0

    sheet = (strands == labelsynth.RIM) & cavity
    touching = ndi.convolve(sheet.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant")
    assert (touching[sheet] >= 3).mean() > 0.8  # most strand voxels touch two others
    speckle = cavity & (np.random.default_rng(0).random(cavity.shape) < share)
    assert neighbours(sheet) >= 1.5 * neighbours(speckle)


def test_ex_vacuo_widening_stays_near_the_lesion(ch2_labels, lesion):
    from scipy import ndimage as ndi

    ranges = labelsynth.SynthRanges(ex_vacuo_mm=(5.0, 5.0), sulci_mm=(2.0, 2.0), cortical_loss=0.0,
                                    strands=0.0)
    labels = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(1), ranges)
    csf_before = np.isin(ch2_labels.labels, labelsynth.CSF)
    grown = np.isin(labels, labelsynth.CSF) & ~csf_before
    distance = ndi.distance_transform_edt(~lesion)
    assert grown.sum() > 2000  # the ventricle and sulci near the infarct widen
    assert distance[grown].max() < ranges.ex_vacuo_reach_mm
    assert ndi.distance_transform_edt(~csf_before)[grown].max() <= 5.0 + 1e-6


def test_tissue_loss_is_drawn_in_t1_order_draws_only(ch2_labels, lesion, monkeypatch):
    """Strands, ex-vacuo widening and cortical loss come with T1-order draws only; without them
    nothing outside the lesion changes and the cavity is whole. T2-order draws take the larger
    share of mostly gliotic lesions."""
    every = labelsynth.SynthRanges(ex_vacuo_mm=(5.0, 5.0), sulci_mm=(2.0, 2.0), cortical_loss=1.0,
                                   strands=1.0, gliotic=0.0)
    kept = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(4), every,
                                  tissue_loss=False)
    assert np.array_equal(kept[~lesion], ch2_labels.labels[~lesion])
    plain = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(4),
                                   labelsynth.SynthRanges(strands=0.0, gliotic=0.0))
    assert np.array_equal(kept[lesion], plain[lesion])  # no strands in the cavity
    lost = labelsynth.with_lesion(ch2_labels.labels, lesion, np.random.default_rng(4), every)
    assert (lost[~lesion] != ch2_labels.labels[~lesion]).sum() > 2000

    asked = []
    orders = []
    real_with_lesion, real_order = labelsynth.with_lesion, labelsynth.tissue_order
    monkeypatch.setattr(labelsynth, "with_lesion",
                        lambda *a, **k: asked.append((k["tissue_loss"], k["gliotic"]))
                        or real_with_lesion(*a, **k))
    monkeypatch.setattr(labelsynth, "tissue_order",
                        lambda *a: orders.append(real_order(*a)) or orders[-1])
    drawn = labelsynth.SynthRanges(painted=0.0, thick_slices=0.0)
    for seed in range(12):
        labelsynth.draw_scan(ch2_labels, lesion, np.random.default_rng(seed), drawn)
    gliotic = {labelsynth.T2_ORDER: drawn.gliotic_t2}
    assert asked == [(order == labelsynth.T1_ORDER, gliotic.get(order, drawn.gliotic))
                     for order in orders]
    assert drawn.gliotic_t2 > drawn.gliotic
    assert set(orders) == {labelsynth.T1_ORDER, labelsynth.T2_ORDER, labelsynth.ANY_ORDER}


def test_rehearsal_cases_draw_the_shipped_real_lesion_shapes_where_they_were_traced(shared_data):
    from napari_dunet._sample_data import LESION_SHAPES
    from napari_dunet.training.synthetic import rehearsal_cases

    mni = labelsynth.load_label_anatomy("mni")
    shapes = sorted(LESION_SHAPES.glob("*.nii.gz"))
    assert len(shapes) == 16
    for shape in shapes[:3]:  # cut to their boxes, still in place in MNI space
        shipped = labelsynth.lesion_on(mni, load_mask(shape))
        traced = labelsynth.lesion_on(mni, load_mask(shared_data / "lesions" / shape.name))
        assert shipped.sum() > 1000 and np.array_equal(shipped, traced)
    first, second = rehearsal_cases(2, seed=3, input_size=64)
    assert first.name.startswith("rehearsal-0-Subject_") and second.name.startswith("rehearsal-1-")
    again = rehearsal_cases(1, seed=3, input_size=64)[0]
    assert again.name == first.name and torch.equal(again.slices, first.slices)
