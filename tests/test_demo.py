"""``dunet demo`` end to end on a tiny budget, and the overlay figure it writes."""

from __future__ import annotations

import contextlib
import io
import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from napari_dunet.cli import main
from napari_dunet.commands import demo
from napari_dunet.figures import axial_slices, save_overlay_png
from napari_dunet.geometry import to_ras
from napari_dunet.io import Volume, load_mask, load_volume


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, random_checkpoint):
    """One quick demo run with random weights: (exit code, output folder, stdout)."""
    pytest.importorskip("nilearn")
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--out", str(out), "--weights", str(random_checkpoint), "--quick",
                     "--no-viewer", "--device", "cpu"])
    return code, out, stdout.getvalue()


def test_demo_writes_mask_overlay_and_metrics(demo_run):
    code, out, stdout = demo_run
    assert code == 0
    paths = demo.output_paths(out)
    assert all(p.is_file() for p in paths.values()), sorted(p.name for p in out.iterdir())
    image, truth, mask = load_volume(paths["image"]), load_mask(paths["truth"]), load_volume(paths["mask"])
    assert image.data.shape == truth.data.shape == mask.data.shape == (197, 233, 189)
    np.testing.assert_allclose(mask.affine, image.affine)
    assert mask.data.dtype == np.uint8 and set(np.unique(mask.data)) <= {0, 1}
    # --quick segments only QUICK_SLICES axial slices through the known lesion
    predicted_slices = np.nonzero(mask.data.any(axis=(0, 1)))[0]
    assert predicted_slices.size <= demo.QUICK_SLICES
    assert set(predicted_slices) <= set(np.nonzero(truth.data.any(axis=(0, 1)))[0])

    report = json.loads(paths["metrics"].read_text())
    row = report["cases"][0]
    pred, known = mask.data > 0, truth.data > 0
    start, stop = report["slices"]
    known[..., :start] = known[..., stop:] = False  # --quick scores the slices it segmented
    tp = int((pred & known).sum())
    assert (row["tp"], row["fp"], row["fn"]) == (tp, int(pred.sum()) - tp, int(known.sum()) - tp)
    assert row["dsc"] == pytest.approx(2 * tp / (pred.sum() + known.sum()))
    assert row["truth_ml"] == pytest.approx(known.sum() / 1000.0)
    assert row["pred_ml"] == pytest.approx(pred.sum() / 1000.0)
    assert report["quick"] is True and report["weights"].endswith(".safetensors")
    assert f"DSC {row['dsc']:.3f}" in stdout

    png = mpimg.imread(paths["overlay"])
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 4 * png.shape[0] / 2


def test_demo_keeps_existing_outputs_unless_overwrite(demo_run, random_checkpoint, capsys):
    _, out, _ = demo_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["demo", "--out", str(out), "--weights", str(random_checkpoint), "--quick", "--no-viewer"])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_demo_without_weights_writes_the_case_and_says_so(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nilearn")
    monkeypatch.setattr("napari_dunet.weights.default_checkpoint", lambda: None)
    assert main(["demo", "--out", str(tmp_path), "--no-viewer"]) == 2
    err = capsys.readouterr().err
    assert "no default weights" in err and "--weights" in err
    paths = demo.output_paths(tmp_path)
    assert paths["image"].is_file() and paths["truth"].is_file() and paths["overlay"].is_file()
    assert not paths["mask"].exists()


def test_demo_falls_back_to_the_bundled_sample_without_nilearn(monkeypatch):
    from napari_dunet._sample_data import SAMPLE_IMAGE

    real_find_spec = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: None if name == "nilearn" else real_find_spec(name, *a))
    image, truth, description = demo.make_case(None, None, 0)
    assert image.path == SAMPLE_IMAGE and truth.data.any()
    assert "nilearn is not installed" in description


def test_demo_viewer_shows_scan_known_lesion_and_prediction(monkeypatch, qtbot):
    napari = pytest.importorskip("napari")
    shown = []
    monkeypatch.setattr(napari, "run", lambda *a, **k: shown.append(napari.current_viewer()))
    image = Volume(np.random.default_rng(0).random((12, 14, 10)).astype(np.float32), np.eye(4))
    truth = Volume(np.zeros((12, 14, 10), np.uint8), np.eye(4))
    truth.data[4:7, 5:8, 3:6] = 1
    demo.show_in_napari(image, truth, truth.data.copy())
    viewer = shown[0]
    try:
        assert [layer.name for layer in viewer.layers] == ["sample T1", "known lesion", "D-UNet lesion"]
        assert int(viewer.layers["D-UNet lesion"].data.sum()) == 27
    finally:
        viewer.close()


def test_overlay_slices_go_through_the_lesion_and_png_is_written(tmp_path):
    data = np.zeros((30, 32, 40), np.float32)
    data[5:25, 5:27, 5:35] = 100
    mask = np.zeros(data.shape, np.uint8)
    mask[10:15, 10:16, 20:26] = 1
    picks = axial_slices([mask], data, 4)
    assert picks and all(20 <= z < 26 for z in picks)
    # a volume stored left-right flipped (x axis pointing left) is shown in RAS+ order
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(to_ras(mask, flipped), mask[::-1])
    path = save_overlay_png(tmp_path / "o.png", Volume(data, flipped), {"lesion": mask}, n_slices=3)
    assert mpimg.imread(path).shape[2] in (3, 4)
    with pytest.raises(Exception, match="exists"):
        save_overlay_png(path, Volume(data, flipped), {"lesion": mask})
