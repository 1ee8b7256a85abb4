"""Figures of docs/architecture.md and docs/synthesis.md: what preprocessing makes of three
different scans, a grid of random label-map draws as the network sees them, and a real chronic
infarct beside label-map draws and carved real T1 scans at the same scale.

    python scripts/make_preprocessing_figures.py [--data ../shared/data] [--out docs/images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from napari_dunet import labelsynth  # noqa: E402
from napari_dunet.io import Volume, load_mask, load_volume  # noqa: E402
from napari_dunet.preprocessing import preprocess  # noqa: E402


def thick(volume: Volume, mask: Volume, thickness: int) -> tuple[Volume, Volume]:
    """Every ``thickness``-th axial slice of a 1 mm RAS-like volume, after a slice-profile blur."""
    sigma = (0, 0, thickness / 2.355)
    affine = volume.affine.copy()
    affine[:3, 2] *= thickness
    cut = lambda a: ndi.gaussian_filter(a.astype(np.float32), sigma)[:, :, ::thickness]  # noqa: E731
    return Volume(cut(volume.data), affine), Volume((cut(mask.data) >= 0.5).astype(np.uint8), affine)


def scans(data: Path) -> list[tuple[str, Volume, Volume | None]]:
    t2 = data / "real" / "stroke_t2"
    ms = load_volume(data / "real" / "ms_t1" / "patient26" / "T1w.nii.gz")
    lesion = load_mask(data / "lesions" / "Subject_090.nii.gz")
    from napari_dunet.synth import resample_mask

    placed = Volume(resample_mask(lesion, ms.data.shape, ms.affine).astype(np.uint8), ms.affine)
    thick_ms, thick_mask = thick(ms, placed, 6)
    return [("ch2: whole head, 181x217x181, 1 mm", load_volume(data / "ch2.nii.gz"), None),
            ("real stroke T2: native, skull on, 1 mm", load_volume(t2 / "T2.nii.gz"),
             load_mask(t2 / "lesionT2.nii.gz")),
            ("MS T1 made thick: 1x1x6 mm, lesion shape 90", thick_ms, thick_mask)]


def preprocessing_figure(data: Path, out: Path) -> None:
    rows = scans(data)
    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 4 * len(rows)))
    for (title, volume, mask), (native_ax, net_ax) in zip(rows, axes):
        geometry, normalized = preprocess(volume.data, volume.affine)
        slices = geometry.forward(normalized)
        ras = geometry.to_canonical(volume.data)
        if mask is not None:
            z = int(np.argmax(geometry.to_canonical(mask.data).sum(axis=(0, 1))))
        else:
            z = ras.shape[2] // 2
        zoom = np.sqrt((volume.affine[:3, :3] ** 2).sum(0))
        extent = (0, ras.shape[0] * zoom[0], 0, ras.shape[1] * zoom[1])
        native_ax.imshow(ras[:, :, z].T, cmap="gray", origin="lower", extent=extent)
        native_ax.set_title(f"{title}\nnative slice {z} (mm)", fontsize=9)
        net = slices[z * geometry.z_factor + geometry.z_factor // 2].numpy()
        net_ax.imshow(net, cmap="gray", origin="lower", vmin=0, vmax=1)
        if mask is not None:
            seen = geometry.forward(mask.data.astype(np.float32))
            net_ax.contour(seen[z * geometry.z_factor + geometry.z_factor // 2].numpy(), [0.5],
                           colors="r", linewidths=0.8)
        net_ax.set_title(f"network input 192x192 at {180 / 192:.4f} mm, window centred on the "
                         f"head\n(x{geometry.z_factor} slices)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def draws_figure(data: Path, out: Path, n: int = 18) -> None:
    anatomies = [labelsynth.load_label_anatomy(a) for a in
                 ("mni", data / "ch2.nii.gz", data / "real" / "ms_t1" / "patient19" / "T1w.nii.gz")]
    lesions = [load_mask(data / "lesions" / f"Subject_{k:03d}.nii.gz") for k in (4, 17, 33, 52, 66, 78)]
    fig, axes = plt.subplots(3, n // 3, figsize=(2.6 * n // 3, 8))
    for i, ax in enumerate(axes.flat):
        rng = np.random.default_rng([2026, i])
        anatomy = anatomies[i % len(anatomies)]
        lesion = labelsynth.lesion_on(anatomy, lesions[i % len(lesions)], mirror=bool(i % 2))
        image, mask = labelsynth.draw_scan(anatomy, lesion, rng)
        geometry, normalized = preprocess(image.data, image.affine)
        seen = geometry.forward(mask.data.astype(np.float32)) >= 0.5
        network_input = geometry.forward(normalized)
        # a lesion-free draw (``SynthRanges.lesion_free``) shows its fullest head slice
        has_lesion = bool(seen.any())
        shown = seen if has_lesion else network_input > 0
        z = int(np.argmax(shown.sum(dim=(1, 2))))
        ax.imshow(network_input[z].numpy(), cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.contour(seen[z].numpy(), [0.5], colors="r", linewidths=0.6)
        lesion_note = "" if has_lesion else ", no lesion"
        ax.set_title(f"{anatomy.name}, {image.voxel_size[2]:.0f} mm slices{lesion_note}",
                     fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=70)


def _crop(data: np.ndarray, mask: np.ndarray, z: int, half: int = 60):
    """An axial slice (voxels of 1 mm) cut to 2 x ``half`` mm around the lesion's centre in it."""
    cx, cy = (int(c) for c in np.argwhere(mask[:, :, z]).mean(0))
    pad = lambda a: np.pad(a[:, :, z], half)  # noqa: E731
    window = (slice(cx, cx + 2 * half), slice(cy, cy + 2 * half))
    return pad(data)[window].T, pad(mask)[window].T


def infarct_figure(data: Path, out: Path) -> None:
    """Real chronic infarct (the stroke T2) against T1-order label-map draws and the carved real
    T1 check, at one scale: 120 mm windows of 1 mm voxels around the lesion."""
    import sys

    from napari_dunet import synth
    from napari_dunet.geometry import to_ras

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from carve import carve

    rows = []
    t2, traced = load_volume(data / "real" / "stroke_t2" / "T2.nii.gz"), load_mask(
        data / "real" / "stroke_t2" / "lesionT2.nii.gz")
    image, mask = to_ras(t2.data, t2.affine), to_ras(traced.data, t2.affine) > 0
    span = np.flatnonzero(mask.any((0, 1)))
    rows.append([("real stroke T2", image, mask, int(z))
                 for z in np.linspace(span[0] + 8, span[-1] - 8, 4)])
    t1_order = labelsynth.SynthRanges(t1_like=1.0, painted=0.0, lesion_free=0.0, thick_slices=0.0,
                                      strip_skull=0.0)
    anatomies = [labelsynth.load_label_anatomy(a) for a in
                 (data / "ch2.nii.gz", data / "real" / "ms_t1" / "patient19" / "T1w.nii.gz")]
    row = []
    for i, k in enumerate((12, 33, 52, 66)):
        anatomy = anatomies[i % 2]
        lesion = labelsynth.lesion_on(anatomy, load_mask(data / "lesions" / f"Subject_{k:03d}.nii.gz"))
        drawn, drawn_mask = labelsynth.draw_scan(anatomy, lesion, np.random.default_rng([38, i]),
                                                 t1_order)
        z = int(np.argmax(drawn_mask.data.sum((0, 1))))
        row.append((f"label-map draw, T1 order ({anatomy.name})", drawn.data, drawn_mask.data > 0, z))
    rows.append(row)
    row = []
    for i, (path, k) in enumerate((("real/ms_t1/patient26/T1w.nii.gz", 81), ("ch2.nii.gz", 82),
                                   ("real/ms_t1/patient26/T1w.nii.gz", 84), ("ch2.nii.gz", 85))):
        t1 = load_volume(data / path)
        t1.data = np.clip(t1.data.astype(np.float32), 0, None)
        carved, carved_mask, _ = carve(synth.anatomy_from_t1(t1),
                                       load_volume(data / "lesions" / f"Subject_{k:03d}.nii.gz"),
                                       np.random.default_rng([0, i]))
        ras, ras_mask = to_ras(carved.data, t1.affine), to_ras(carved_mask.data, t1.affine) > 0
        name = "ch2" if "ch2" in path else "MS patient 26"
        row.append((f"carved real T1 ({name})", ras, ras_mask,
                    int(np.argmax(ras_mask.sum((0, 1))))))
    rows.append(row)
    fig, axes = plt.subplots(3, 4, figsize=(11, 8.6))
    for ax_row, row in zip(axes, rows):
        for ax, (title, image, mask, z) in zip(ax_row, row):
            shown, outline = _crop(image, mask, z)
            ax.imshow(shown, cmap="gray", origin="lower",
                      vmax=np.percentile(image[image > 0], 99.5))
            ax.contour(outline, [0.5], colors="r", linewidths=0.6)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle("120 mm windows of 1 mm voxels, lesion outlined in red; the patient's right on "
                 "the right", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=70)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    preprocessing_figure(args.data, args.out / "preprocessing_scans.png")
    draws_figure(args.data, args.out / "labelsynth_draws.png")
    infarct_figure(args.data, args.out / "infarct_real_vs_synthetic.png")


if __name__ == "__main__":
    main()
