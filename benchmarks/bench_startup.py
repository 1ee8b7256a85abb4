"""Start-up cost of the plugin: what napari pays at launch because napari-dunet is installed.

    python benchmarks/bench_startup.py [--json] [--runs N]

Each measurement runs in a fresh interpreter (best of ``--runs``):

* ``import napari`` alone (the baseline);
* napari's plugin initialisation (npe2 discovery, menus, as at launch), with napari-dunet
  installed and with it hidden from discovery: the difference is what the plugin adds (within
  the noise of the rest), and the part that is the plugin's own: npe2 reading its manifest;
* ``import napari_dunet`` and the widget module napari imports when "Segment lesion" opens;
* ``import torch``: the cost moved to the first click of "Segment lesion".

It also reports whether any of the launch steps imported torch (they must not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

PLUGIN = "napari-dunet"

_HIDE_PLUGIN = f"""
import importlib.metadata as _md
_all = _md.distributions
_md.distributions = lambda **kw: (d for d in _all(**kw) if d.metadata["Name"] != {PLUGIN!r})
"""

SNIPPETS = {
    "napari_import": "import napari",
    "plugins_with": "import napari\nfrom napari.plugins import _initialize_plugins\n"
                    "t0 = time.perf_counter()\n_initialize_plugins()",
    "plugins_without": _HIDE_PLUGIN + "import napari\nfrom napari.plugins import _initialize_plugins\n"
                       "t0 = time.perf_counter()\n_initialize_plugins()",
    "manifest": "import npe2\nt0 = time.perf_counter()\n"
                f"npe2.PluginManifest.from_distribution({PLUGIN!r})",
    "package_import": "import napari_dunet",
    "widget_import": "import napari, napari.qt\nt0 = time.perf_counter()\n"
                     "import napari_dunet._widgets.segment",
    "torch_import": "import torch",
}


def measure(name: str) -> tuple[float, bool, bool]:
    """(seconds, torch imported?, plugin registered?) for one snippet in a fresh interpreter;
    the clock starts at ``t0`` (reset by the snippet when it measures only its last step)."""
    code = "import time, sys\nt0 = time.perf_counter()\n" + SNIPPETS[name] + textwrap.dedent("""
        dt = time.perf_counter() - t0
        registered = False
        if "npe2" in sys.modules:
            from npe2 import PluginManager
            registered = any(m.name == %r for m in PluginManager.instance().iter_manifests())
        print(dt, "torch" in sys.modules, registered)
    """ % PLUGIN)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, torch_loaded, registered = out.stdout.split()[-3:]
    return float(seconds), torch_loaded == "True", registered == "True"


def run(runs: int) -> dict:
    best: dict[str, float] = {}
    torch_loaded: dict[str, bool] = {}
    registered: dict[str, bool] = {}
    for _ in range(runs):  # interleaved, so a busy moment hits every row alike
        for name in SNIPPETS:
            seconds, loaded, reg = measure(name)
            best[name] = min(best.get(name, seconds), seconds)
            torch_loaded[name] = torch_loaded.get(name, False) or loaded
            registered[name] = registered.get(name, False) or reg
    return {
        "runs": runs,
        "napari_import_seconds": best["napari_import"],
        "plugin_init_seconds_with": best["plugins_with"],
        "plugin_init_seconds_without": best["plugins_without"],
        "plugin_added_seconds": best["plugins_with"] - best["plugins_without"],
        "plugin_registered": registered["plugins_with"] and not registered["plugins_without"],
        "manifest_seconds": best["manifest"],
        "package_import_seconds": best["package_import"],
        "widget_import_seconds": best["widget_import"],
        "torch_import_seconds": best["torch_import"],
        "torch_imported_by_package": torch_loaded["package_import"],
        "torch_imported_by_discovery": torch_loaded["plugins_with"],
        "torch_imported_by_widget_module": torch_loaded["widget_import"],
    }


def table(r: dict) -> str:
    def no(flag: bool) -> str:
        return "imports torch!" if flag else "no torch"

    rows = [
        ("import napari", r["napari_import_seconds"], ""),
        ("napari plugin start-up, without napari-dunet", r["plugin_init_seconds_without"], ""),
        ("napari plugin start-up, with napari-dunet", r["plugin_init_seconds_with"],
         no(r["torch_imported_by_discovery"])),
        ("  added by napari-dunet (difference)", r["plugin_added_seconds"], ""),
        ("  reading napari-dunet's manifest (npe2)", r["manifest_seconds"], ""),
        ("import napari_dunet", r["package_import_seconds"], no(r["torch_imported_by_package"])),
        ("open 'Segment lesion' (widget module)", r["widget_import_seconds"],
         no(r["torch_imported_by_widget_module"])),
        ("import torch (at the first run)", r["torch_import_seconds"], ""),
    ]
    lines = [f"best of {r['runs']} fresh interpreters; plugin found by napari: "
             f"{r['plugin_registered']}", "", f"{'step':<48}{'seconds':>9}  torch"]
    lines += [f"{name:<48}{seconds:>9.3f}  {note}" for name, seconds, note in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument("--runs", type=int, default=5, help="interpreters per step (default 5)")
    args = parser.parse_args(argv)
    results = run(args.runs)
    print(json.dumps(results, indent=1) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
