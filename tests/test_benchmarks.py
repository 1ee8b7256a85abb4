"""The benchmark scripts run and report what docs/performance.md quotes (no timing asserts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_dunet.fast import cpu_has_native_bf16

pytestmark = pytest.mark.slow  # each runs a script end to end
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_inference_benchmark_quick_json(tmp_path):
    plot = tmp_path / "perf.png"
    r = run_script("bench_inference.py", "--quick", "--json", "--plot", str(plot))
    for key in ("volume_seconds", "model_seconds", "naive_seconds", "naive_model_seconds",
                "flops_per_volume", "flops_actually_computed", "matmul_flops_per_second",
                "peak_memory_mb", "segment_peak_memory_mb", "slice_seconds", "floor_seconds",
                "floor_ratio", "peer_seconds", "peer_ratio", "peer_flops"):
        assert positive(r[key]), (key, r[key])
    assert r["device"] == "cpu" and r["quick"] is True
    assert r["flops_per_volume"] == r["flops_per_stack"] * r["stacks_total"]
    # the quick volume ends above the head: its empty stacks are run once, as one zero stack
    assert r["stacks_run"] < r["stacks_total"]
    assert r["flops_actually_computed"] < r["flops_per_volume"]
    assert r["dsc_vs_naive"] >= 0.999 and r["max_abs_diff_vs_naive"] < 1e-3
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_viewer_benchmark_clicks_the_real_panel():
    r = run_script("bench_viewer.py", "--json")
    for key in ("current_slice_first_click_seconds", "current_slice_click_seconds",
                "whole_volume_click_seconds", "cli_seconds"):
        assert positive(r[key]), (key, r[key])
    assert r["cpu"] and r["shape"] == [121, 120, 113]  # the bundled sample


def test_adaptation_benchmark_fine_tunes_and_scores(tmp_path, shared_data):
    out = tmp_path / "adapt.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "adaptation.py"), "--shots", "1",
                    "--minutes", "0.02", "--eval", "1", "--rehearsal-per-case", "1",
                    "--batch-size", "2", "--json", str(out),
                    "--plot", str(tmp_path / "adapt.png")], check=True, timeout=900,
                   capture_output=True)
    r = json.loads(out.read_text())
    assert r["eval_cases"] == ["clinical_082"]  # the case after the one fine-tuned on
    assert 0 <= r["before"]["target_dsc"] <= 1 and r["runs"][0]["shots"] == 1
    assert r["runs"][0]["epochs"] >= 1 and r["runs"][0]["stop"] == "out-of-time"
    assert r["runs"][0]["rehearsal_cases"] == 1  # one synthetic case per corrected case
    assert r["options"]["batch_size"] == 2
    assert 0 <= r["runs"][0]["target_dsc"] <= 1
    assert (tmp_path / "adapt.png").read_bytes().startswith(b"\x89PNG")


def test_adaptation_benchmark_takes_a_folder_of_real_cases(tmp_path, shared_data):
    out = tmp_path / "adapt.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "adaptation.py"), "--domain",
                    str(shared_data / "real" / "ms_t1"), "--shots", "1", "--eval", "1",
                    "--minutes", "0.02", "--rehearsal-per-case", "0", "--json", str(out)],
                   check=True, timeout=900, capture_output=True)
    r = json.loads(out.read_text())
    # fine-tuned on the first patient's corrected scan, scored on the other one
    assert r["domain"].endswith("ms_t1") and r["eval_cases"] == ["patient26/T1w"]
    assert r["runs"][0]["stop"] == "out-of-time" and 0 <= r["runs"][0]["target_dsc"] <= 1
    too_many = subprocess.run([sys.executable, str(BENCHMARKS / "adaptation.py"), "--domain",
                               str(shared_data / "real" / "ms_t1"), "--shots", "3"],
                              capture_output=True, text=True, timeout=300)
    assert too_many.returncode == 2 and "the target domain has 2 cases" in too_many.stderr


def test_startup_benchmark_json():
    r = run_script("bench_startup.py", "--json", "--runs", "1")
    assert r["plugin_registered"] is True
    assert not r["torch_imported_by_package"]
    assert not r["torch_imported_by_discovery"]
    assert not r["torch_imported_by_widget_module"]
    for key in ("napari_import_seconds", "plugin_init_seconds_with", "manifest_seconds",
                "widget_import_seconds", "torch_import_seconds"):
        assert positive(r[key]), (key, r[key])
    assert math.isfinite(r["plugin_added_seconds"])  # a difference: noise can make it negative


def test_model_comparison_runs_the_papers_three_models(tmp_path):
    """Tiny budget (one step each): every model trains, segments the held-out case and is scored."""
    import nibabel as nib
    import numpy as np

    from conftest import make_head
    from napari_dunet.models import build_model, count_parameters

    for folder, seeds in (("train", (0, 1)), ("heldout", (2,))):
        for seed in seeds:
            anat = tmp_path / folder / f"sub-r001s00{seed}" / "ses-1" / "anat"
            anat.mkdir(parents=True)
            image, mask = make_head(seed=seed)
            stem = anat / f"sub-r001s00{seed}_ses-1"
            nib.save(nib.Nifti1Image(image, np.eye(4)), f"{stem}_T1w.nii.gz")
            nib.save(nib.Nifti1Image(mask, np.eye(4)), f"{stem}_label-L_desc-T1lesion_mask.nii.gz")
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "compare_models.py"), "--train", str(tmp_path / "train"),
         "--heldout", str(tmp_path / "heldout"), "--work", str(tmp_path / "work"), "--epochs", "1",
         "--steps-per-epoch", "1", "--batch-size", "2", "--crop-size", "32", "--val-fraction", "0",
         "--precision", "fp32", "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout)
    assert [r["model"] for r in rows] == ["dunet", "unet2d-transform", "unet3d-transform"]
    for row in rows:
        assert row["n_cases"] == 1 and positive(row["train_seconds"])
        assert 0 <= row["dsc_mean"] <= 1 and 0 <= row["recall"] <= 1
        assert row["parameters"] == count_parameters(build_model(row["model"]))[1]
        mask = tmp_path / "work" / row["model"] / "heldout" / "sub-r001s002_ses-1_mask.nii.gz"
        assert nib.load(mask).shape == (40, 48, 12)


@pytest.mark.slow  # ~35 s on a busy 2-core machine: four scans through the network
def test_real_checks_rows(tmp_path, shared_data, tiny_model):
    """A tiny random D-UNet on the MS scans, the healthy head and one clinical case, in this
    process (the tiny model is registered here only): the JSON has a row per case and a
    verdict per check."""
    import importlib.util

    import torch

    from napari_dunet.checkpoint import default_metadata, save_checkpoint
    from napari_dunet.models import build_model

    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "tiny.safetensors", build_model(tiny_model),
                              default_metadata(tiny_model))
    spec = importlib.util.spec_from_file_location("real_checks", BENCHMARKS / "real_checks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "checks.json"
    assert script.main(["--weights", str(weights), "--checks", "ms-t1", "healthy-head",
                        "clinical", "--clinical-cases", "1", "--device", "cpu",
                        "--data", str(shared_data), "--json", str(out),
                        "--save-dir", str(tmp_path / "clinical")]) == 0
    r = json.loads(out.read_text())
    assert [(row["check"], row["case"]) for row in r["rows"]] == [
        ("ms-t1", "patient19"), ("ms-t1", "patient26"), ("healthy-head", "ch2"),
        ("clinical", "clinical_081")]
    assert set(r["summary"]) == {"ms-t1", "healthy-head", "clinical"}
    clinical = r["rows"][3]
    assert clinical["thickness_mm"] in (4.0, 5.0, 6.0) and clinical["true_ml"] > 0
    for key in ("dsc", "precision", "recall"):
        assert 0 <= clinical[key] <= 1
    assert all(positive(row["seconds"]) and row["pred_ml"] >= 0 for row in r["rows"])
    from napari_dunet.io import find_cases

    [case] = find_cases(tmp_path / "clinical")  # a folder dunet evaluate reads: image and mask
    assert case.image.name == "sub-clinical081_T1w.nii.gz"
    assert [m.name for m in case.masks] == ["sub-clinical081_mask.nii.gz"]


def test_clinical_domain_t2_like_reverses_the_tissue_order(shared_data):
    """The T2-like clinical case is the T1 one with a bright lesion and a dark white matter,
    same lesion, same grid."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_checks", BENCHMARKS / "real_checks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (_, t1, mask1, _, _), = script.clinical_cases(shared_data, 1, 0, None)
    (name, t2, mask2, _, _), = script.clinical_cases(shared_data, 1, 0, None, contrast="t2")
    assert name == "clinical_t2_081" and np.array_equal(mask1.data, mask2.data)
    lesion = mask1.data > 0
    brightest_tissue = t1.data > np.percentile(t1.data[t1.data > 0], 90)  # white matter
    for image, lesion_brighter in ((t1, False), (t2, True)):
        data = image.data.astype(np.float32)
        assert (data[lesion].mean() > data[brightest_tissue & ~lesion].mean()) == lesion_brighter
    assert t2.data[:10, :10].mean() <= 100 < t2.data[lesion].mean()  # the air stays dark


def test_choose_threshold_sweeps_one_map_per_case(tmp_path, tiny_model):
    """Two traced cases in two folders: a row per threshold with DSC, precision and recall in
    [0, 1], recall never rising with the threshold, and the best threshold one of those asked
    for."""
    import importlib.util

    import nibabel as nib
    import torch

    from conftest import make_head
    from napari_dunet.checkpoint import default_metadata, save_checkpoint
    from napari_dunet.models import build_model

    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "tiny.safetensors", build_model(tiny_model),
                              default_metadata(tiny_model))
    for seed in (0, 1):
        image, mask = make_head(seed=seed)
        folder = tmp_path / f"kind{seed}" / f"sub-{seed}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"sub-{seed}_T1w.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), folder / f"sub-{seed}_label-L_mask.nii.gz")
    spec = importlib.util.spec_from_file_location("choose_threshold",
                                                  BENCHMARKS / "choose_threshold.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "t.json"
    assert script.main(["--weights", str(weights), "--cases", str(tmp_path / "kind0"),
                        str(tmp_path / "kind1"), "--device", "cpu",
                        "--thresholds", "0.2", "0.5", "0.8", "--seed-thresholds", "0", "0.6",
                        "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["cases"] == 2 and [c["case"] for c in r["per_case"]] == ["sub-0", "sub-1"]
    # each threshold alone, then paired with each seed above it
    assert [(row["threshold"], row["seed_threshold"]) for row in r["summary"]] == [
        (0.2, 0.0), (0.5, 0.0), (0.8, 0.0), (0.2, 0.6), (0.5, 0.6)]
    best = max(r["summary"], key=lambda row: row["dsc"])
    assert (r["best_threshold"], r["best_seed_threshold"]) == (best["threshold"],
                                                               best["seed_threshold"])
    for case in r["per_case"]:
        recalls = [row["recall"] for row in case["rows"]]
        assert recalls[:3] == sorted(recalls[:3], reverse=True)
        assert all(a >= b for a, b in zip(recalls[:2], recalls[3:]))  # a seed only removes
        assert all(0 <= row[k] <= 1 for row in case["rows"] for k in ("dsc", "precision"))
    for bad in (["--thresholds", "1.5"], ["--seed-thresholds", "1"]):
        with pytest.raises(SystemExit):
            script.main(["--weights", str(weights), "--cases", str(tmp_path / "kind0"), *bad])


def test_training_benchmark_rows_per_configuration():
    out = run_script("bench_training.py", "--sizes", "32", "--crop-sizes", "0", "16",
                     "--batch-size", "2", "--steps", "1", "--threads", "1", "--json",
                     "--configs", "bf16-conv3d-fp32", "bf16-taps-cl", "fp32")
    rows = out["rows"]
    assert [(r["config"], r["crop"]) for r in rows] == [
        (c, crop) for crop in (0, 16) for c in ("bf16-conv3d-fp32", "bf16-taps-cl", "fp32")]
    native_bf16 = cpu_has_native_bf16()  # else the bf16 product, emulated, is not timed
    for r in rows:
        assert r["precision"] == ("fp32" if r["config"] == "fp32" else "bf16")
        for key in ("seconds_per_step", "cpu_seconds_per_step", "stacks_per_second", "gflops",
                    "matmul_fp32_gflops"):
            assert positive(r[key]), key
        assert ("matmul_bf16_gflops" in r) == native_bf16
        if native_bf16 or r["precision"] == "fp32":
            assert positive(r["share_of_matmul"])
        assert math.isclose(r["stacks_per_second"] * r["seconds_per_step"], 2)
        assert math.isclose(r["gflops"] * r["seconds_per_step"], r["gflop_per_step"])
    whole, crops = rows[1], rows[4]  # the FLOPs follow the pixels trained on: 4x per step
    assert math.isclose(whole["gflop_per_step"], 4 * crops["gflop_per_step"], rel_tol=0.05)
    assert rows[0]["speedup_vs_bf16_conv3d_fp32"] == 1.0
