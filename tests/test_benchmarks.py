"""The benchmark scripts run and report what docs/performance.md quotes (no timing asserts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

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
                "peak_memory_mb", "slice_seconds", "floor_seconds", "floor_ratio",
                "peer_seconds", "peer_ratio", "peer_flops"):
        assert positive(r[key]), (key, r[key])
    assert r["device"] == "cpu" and r["quick"] is True
    assert r["flops_per_volume"] == r["flops_per_stack"] * r["stacks_total"]
    # the quick volume ends above the head: its empty stacks are run once, as one zero stack
    assert r["stacks_run"] < r["stacks_total"]
    assert r["flops_actually_computed"] < r["flops_per_volume"]
    assert r["dsc_vs_naive"] >= 0.999 and r["max_abs_diff_vs_naive"] < 1e-3
    assert plot.read_bytes().startswith(b"\x89PNG")


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
