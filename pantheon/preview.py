"""A PNG a person can read at a glance: slices of the input with the result maps overlaid.

Slices are shown in the radiological convention (patient right on the left of the picture,
anterior at the top of axial views, superior at the top of coronal views), with true aspect and
orientation letters. The grey window fits the modality (a soft-tissue window for CT in HU, the 1st
to 99th percentile of the body for anything else, e.g. MRI). Every heatmap has a colour bar with
its meaning; label maps (e.g. the tumour) are drawn as outlines on the input; the chosen point of
a similarity or reconstruction run is marked. The slices go through that point, else through the
labelled structure, else through the strongest map, else the middle. Titles wrap to the figure's
width, so the model, the weights, key numbers (e.g. the PNI probability) and the "not for clinical
use" warning are never cut off.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .io.volume import Volume
from .results import Result

CT_WINDOW = (-175.0, 250.0)  # abdominal soft tissue, HU

# key numbers worth a place in the title: scalar name -> label and format
KEY_SCALARS = {
    "pni_probability": ("PNI probability", "{:.2f}"),
    "tumour_volume_ml": ("tumour volume", "{:.1f} ml"),
    "psnr_db": ("PSNR", "{:.1f} dB"),
    "ssim": ("SSIM", "{:.3f}"),
    "n_teeth": ("teeth", "{:.0f}"),
    "best_similarity": ("best match: cosine similarity", "{:.2f}"),
    "segmented_volume_ml": ("segmented", "{:.1f} ml"),
}


def resize_nearest(img: np.ndarray, aspect: float, width: int = 192) -> np.ndarray:
    """Nearest-neighbour resize of (H, W[, C]) to ``width`` columns, rows scaled by ``aspect``."""
    h, w = img.shape[:2]
    scale = width / max(w, 1)
    rows = max(1, int(round(h * aspect * scale)))
    ri = np.minimum((np.arange(rows) / (aspect * scale)).astype(int), h - 1)
    ci = np.minimum((np.arange(width) / scale).astype(int), w - 1)
    return img[ri][:, ci]


def _canonical_view(volume: Volume, code: str = "LPS"):
    """``volume``'s array in the canonical orientation ``code`` as a view (transposes and flips, as
    :meth:`Volume.reoriented` makes them, without its copy of the whole volume: a preview reads two
    slices of each map), its spacing (i, j, k), and world (N, 3) -> canonical (i, j, k) indices."""
    perm, flip = volume.axis_permutation_to_canonical(code)
    a = np.asarray(volume.array)
    a = np.transpose(a, [2 - perm[2], 2 - perm[1], 2 - perm[0]] + ([3] if a.ndim == 4 else []))
    for n in range(3):
        if flip[n]:
            a = np.flip(a, axis=2 - n)
    size = volume.size_ijk
    spacing = [float(volume.spacing[perm[n]]) for n in range(3)]

    def to_index(points):
        old = volume.world_to_ijk(np.asarray(points, dtype=np.float64).reshape(-1, 3))
        new = old[:, list(perm)]
        for n in range(3):
            if flip[n]:
                new[:, n] = size[perm[n]] - 1 - new[:, n]
        return new

    return a, spacing, to_index


def display_slices(volume: Volume, centre_lps=None) -> Tuple[List[np.ndarray], List[float]]:
    """Axial and coronal slices through ``centre_lps`` (default: the middle), and their aspect ratios."""
    a, (si, sj, sk), to_index = _canonical_view(volume)  # i -> patient left (picture right), j -> posterior
    K, J, I = a.shape[:3]
    if centre_lps is None:
        k, j = K // 2, J // 2
    else:
        i_, j_, k_ = np.rint(to_index(centre_lps)[0]).astype(int)
        k, j = int(np.clip(k_, 0, K - 1)), int(np.clip(j_, 0, J - 1))
    axial = np.array(a[k])  # rows j (anterior at top), columns i
    coronal = np.array(a[::-1, j])  # rows k flipped so superior is at the top
    return [axial, coronal], [sj / si, sk / si]


def display_window(volume: Volume) -> Tuple[Tuple[float, float], str]:
    """The grey window for ``volume`` and what it is: a CT soft-tissue window for data in HU, else
    the 1st-99th percentile of the voxels above the background (MRI and other images)."""
    a = np.asarray(volume.array, dtype=np.float32)
    if a.size == 0:
        return (0.0, 1.0), "empty"
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo <= -500.0 and hi >= 300.0:  # air and bone/contrast: Hounsfield units
        return CT_WINDOW, "CT soft tissue"
    body = a[a > lo + 0.05 * (hi - lo)] if hi > lo else a.ravel()
    if body.size < 100:
        body = a.ravel()
    p1, p99 = (float(v) for v in np.nanpercentile(body, [1, 99]))
    if p99 <= p1:
        p1, p99 = lo, hi if hi > lo else lo + 1.0
    return (p1, p99), "1st-99th percentile"


def _centre(source: Volume, result: Result) -> Tuple[Optional[np.ndarray], str]:
    """Where the slices go, and why (the point, the labelled structure, the strongest map, the middle)."""
    point = result.notes.get("mark_lps") or result.notes.get("point_lps")  # mark_lps: a point that is not the input's
    if point:
        try:
            return np.asarray(json.loads(point) if isinstance(point, str) else point, float).reshape(3), "point"
        except (TypeError, ValueError):
            pass
    for lab in result.labels.values():
        vol = lab.volume
        kji = np.argwhere(np.asarray(vol.array) > 0)
        if len(kji):
            return vol.ijk_to_world(kji.mean(axis=0)[::-1].reshape(1, 3))[0], "label"
    for h in result.heatmaps.values():
        vol = h.volume
        a = np.asarray(vol.array, dtype=np.float32)
        if a.size and np.isfinite(a).any() and np.nanmax(a) > np.nanmin(a):
            kji = np.array(np.unravel_index(int(np.nanargmax(a)), a.shape[:3]), float)
            return vol.ijk_to_world(kji[::-1].reshape(1, 3))[0], "map maximum"
    return None, "middle"


def _title(result: Result, width_chars: int) -> str:
    model = str(result.notes.get("model") or "Pantheon").split(" (")[0]
    weights = str(result.notes.get("weights") or "")
    numbers = []
    for key, (label, fmt) in KEY_SCALARS.items():
        value = result.scalars.get(key)
        if isinstance(value, (int, float)) and np.isfinite(value):
            numbers.append(f"{label} {fmt.format(value)}")
    lines = [f"{model}" + (f" ({weights})" if weights else "")]
    if numbers:
        lines.append(", ".join(numbers))
    if result.notes.get("warning"):
        lines.append(str(result.notes["warning"]))
    return "\n".join(textwrap.fill(line, width_chars) for line in lines)


def _orientation_letters(ax, row: int) -> None:
    top, bottom = ("A", "P") if row == 0 else ("S", "I")
    style = dict(color="yellow", fontsize=9, fontweight="bold", ha="center", va="center",
                 transform=ax.transAxes)
    ax.text(0.5, 0.96, top, **style)
    ax.text(0.5, 0.04, bottom, **style)
    ax.text(0.03, 0.5, "R", **style)
    ax.text(0.97, 0.5, "L", **style)


def build_preview(source: Volume, result: Result, max_maps: int = 8, window: Optional[Sequence[float]] = None):
    """The preview as a matplotlib figure, and what it shows: ``(figure, info)`` with ``info`` =
    {"window", "window_kind", "centre", "centre_from", "panels", "colorbars", "colorbar_labels", "title"};
    a colour bar is labelled with its map's ``label`` (else its description)."""
    # the object API, not pyplot: no global figure list and no backend switch, so a preview can be
    # drawn in a thread while the maps are written (pantheon.outputs.write_result)
    from matplotlib import colors as mcolors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    maps = [(name, h.volume, h.colormap, h.value_range, h.label or h.description)
            for name, h in result.heatmaps.items()][:max_maps]
    rgb = [(name, v) for name, v in result.volumes.items() if v.components == 3]
    panels = [("input", None, None, None, None)] + maps + [(n, v, "rgb", None, None) for n, v in rgb]
    win, win_kind = (tuple(window), "given") if window is not None else display_window(source)
    centre, centre_from = _centre(source, result)
    base, aspects = display_slices(source, centre)
    labels = [(name, lab.volume, lab.segments) for name, lab in result.labels.items()]

    panel_w = 3.2
    fig = Figure(figsize=(panel_w * len(panels) + 0.6, 8.0))
    FigureCanvasAgg(fig)
    width_chars = max(40, int(panel_w * len(panels) * 12))
    title = _title(result, width_chars)
    title_lines = title.count("\n") + 1
    top = 1.0 - 0.04 * title_lines - 0.03
    grid = fig.add_gridspec(3, len(panels), height_ratios=[1.0, 1.0, 0.06], top=top, bottom=0.1, left=0.05,
                            right=0.98, hspace=0.12, wspace=0.12)
    axes = np.array([[fig.add_subplot(grid[row, col]) for col in range(len(panels))] for row in range(2)])
    colorbars, bar_labels = 0, []
    for col, (name, vol, cmap, vrange, description) in enumerate(panels):
        over = display_slices(vol, centre)[0] if vol is not None else [None, None]
        image = None
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(base[row], cmap="gray", vmin=win[0], vmax=win[1], aspect=aspects[row], interpolation="nearest")
            if over[row] is not None:
                if cmap == "rgb":
                    ax.imshow(np.clip(over[row], 0, 1), alpha=0.7, aspect=aspects[row])
                else:
                    image = ax.imshow(over[row], cmap=cmap, vmin=vrange[0], vmax=vrange[1], alpha=0.55,
                                      aspect=aspects[row], interpolation="bilinear")
            if col == 0:  # label maps as outlines on the input
                for _lname, lvol, segments in labels:
                    lab = display_slices(lvol, centre)[0][row]
                    for seg in segments:
                        mask = np.asarray(lab) == seg.value
                        if mask.any():
                            ax.contour(mask.astype(float), levels=[0.5], colors=[mcolors.to_hex(seg.color)],
                                       linewidths=1.4)
            if centre is not None and centre_from == "point":
                _mark_point(ax, source, centre, row)
            _orientation_letters(ax, row)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("_", " "), fontsize=11)
        if image is not None:
            bar = fig.colorbar(image, cax=fig.add_subplot(grid[2, col]), orientation="horizontal")
            bar_labels.append(description or name.replace("_", " "))  # what a value means
            bar.set_label(textwrap.fill(bar_labels[-1], 40), fontsize=8)
            bar.set_ticks(np.linspace(vrange[0], vrange[1], 3))  # ends and middle: no crowding beside the next bar
            bar.ax.tick_params(labelsize=8)
            colorbars += 1
    axes[0, 0].set_ylabel("axial", fontsize=10)
    axes[1, 0].set_ylabel("coronal", fontsize=10)
    caption = [f"grey window: {win_kind} [{win[0]:.0f}, {win[1]:.0f}]"]
    if labels:
        caption.append("outlined: " + ", ".join(s.name for _n, _v, segs in labels for s in segs))
    if centre_from == "point":
        caption.append("cross: " + str(result.notes.get("point_caption") or "the chosen point"))
    fig.text(0.05, 0.015, textwrap.fill("; ".join(caption), width_chars), fontsize=8, va="bottom")
    fig.suptitle(title, fontsize=11, y=0.995, va="top")
    info = {"window": tuple(float(v) for v in win), "window_kind": win_kind, "centre": centre,
            "centre_from": centre_from, "panels": [p[0] for p in panels], "colorbars": colorbars,
            "colorbar_labels": bar_labels, "title": title}
    return fig, info


def _mark_point(ax, source: Volume, centre, row: int) -> None:
    """A cross where the chosen point is, in the slice's pixel coordinates."""
    a, _spacing, to_index = _canonical_view(source)
    i, j, k = to_index(centre)[0]
    x, y = (i, j) if row == 0 else (i, a.shape[0] - 1 - k)
    ax.plot([x], [y], marker="+", color="cyan", markersize=16, markeredgewidth=2.2)


def save_preview(source: Volume, result: Result, path, window=None, max_maps: int = 8) -> Path:
    """Write the preview PNG: :func:`reconstruction_panel` for a masked reconstruction, else
    :func:`build_preview`."""
    if is_reconstruction(result):
        fig, _info = reconstruction_panel(source, result, window=window)
    else:
        fig, _info = build_preview(source, result, max_maps=max_maps, window=window)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def is_reconstruction(result: Result) -> bool:
    """A result of :func:`pantheon.pipelines.nemesis.reconstruct`."""
    return {"masked_input", "reconstruction"} <= set(result.volumes) and "error" in result.heatmaps


def reconstruction_panel(source: Volume, result: Result, path=None, window: Optional[Sequence[float]] = None):
    """The preview of a NEMESIS masked reconstruction: ``(figure, info)``, also saved as a PNG when
    ``path`` is given.

    Left, the full axial and coronal slices of the input with the superpatch outlined (cyan box)
    and the chosen point marked; then, through the same point, the superpatch as input, masked input
    (hidden patches in blue), reconstruction and absolute error. The first three share one grey
    window (the model's HU window) and one grey bar; the error has its own labelled colour bar.
    ``result`` is what :func:`pantheon.pipelines.nemesis.reconstruct` returns: volumes
    ``masked_input`` and ``reconstruction`` and heatmap ``error`` on a sub-lattice of ``source``.
    ``info`` = {"panels", "window", "box_axial", "box_coronal", "error_range", "title"}; boxes are
    (x0, y0, x1, y1) in the pixel coordinates of the context slices.
    """
    from matplotlib import colors as mcolors
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    recon = result.volumes["reconstruction"]
    masked = result.volumes["masked_input"]
    err = result.heatmaps["error"]
    notes = result.notes
    if window is None:
        try:  # the window the model saw, so grey levels are what it was given
            window = json.loads(notes.get("window_hu", "null")) or CT_WINDOW
        except (TypeError, ValueError):
            window = CT_WINDOW
    lo, hi = (float(v) for v in window)
    # the input over the superpatch: the source's voxels at the sub-lattice's voxel centres
    K, J, I = recon.shape[:3]
    ijk = np.stack(np.meshgrid(np.arange(I), np.arange(J), np.arange(K), indexing="ij"), -1).reshape(-1, 3)
    src = np.rint(source.world_to_ijk(recon.ijk_to_world(ijk))).astype(int)
    inside = np.all((src >= 0) & (src < np.array(source.size_ijk)), axis=1)
    crop = np.full((K, J, I), lo, np.float32)  # outside the image the model got the window floor
    crop[ijk[inside, 2], ijk[inside, 1], ijk[inside, 0]] = source.array[src[inside, 2], src[inside, 1], src[inside, 0]]
    crop_vol = recon.with_array(crop)

    centre, _why = _centre(source, result)
    if centre is None:  # no point: the superpatch's centre
        centre = recon.ijk_to_world(np.array([[(I - 1) / 2, (J - 1) / 2, (K - 1) / 2]]))[0]
    context, aspects = display_slices(source, centre)
    ctx_win, ctx_kind = display_window(source)
    sub = {name: display_slices(vol, centre)[0] for name, vol in
           (("input", crop_vol), ("masked input", masked), ("reconstruction", recon), ("error", err.volume))}

    # where the superpatch lies in the context slices (voxel edges, canonical LPS pixel coordinates)
    canon, _ = source.to_canonical("LPS")
    edges = np.array([[a, b, c] for a in (-0.5, I - 0.5) for b in (-0.5, J - 0.5) for c in (-0.5, K - 0.5)])
    cijk = canon.world_to_ijk(recon.ijk_to_world(edges))
    (i0, j0, k0), (i1, j1, k1) = cijk.min(0), cijk.max(0)
    Kc = canon.shape[0]
    box_axial = (float(i0), float(j0), float(i1), float(j1))
    box_coronal = (float(i0), float(Kc - 1 - k1), float(i1), float(Kc - 1 - k0))

    panels = ["input", "masked input", "reconstruction", "error"]
    fig = Figure(figsize=(16.5, 8.6))  # not pyplot's: a worker or batch would keep every figure
    scalars = result.scalars

    def num(key, fmt):
        v = scalars.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) and np.isfinite(v) else "n/a"
    model = str(notes.get("model") or "NEMESIS").split(" (")[0]
    weights = str(notes.get("weights") or "")
    lines = [f"{model} masked reconstruction" + (f" ({weights})" if weights else "")
             + f", {num('masked_fraction', '{:.0%}')} of patches hidden (mask ratio {notes.get('mask_ratio', '?')}, "
               f"noise {notes.get('noise_std', '0')})",
             f"whole superpatch: PSNR {num('psnr_db', '{:.1f}')} dB, SSIM {num('ssim', '{:.3f}')};   "
             f"hidden patches only: PSNR {num('psnr_masked_db', '{:.1f}')} dB, SSIM {num('ssim_masked', '{:.3f}')}"
             "   (on the [0, 1] window scale)"]
    if notes.get("warning"):
        lines.append(str(notes["warning"]))
    title = "\n".join(textwrap.fill(line, 170) for line in lines)
    fig.suptitle(title, fontsize=11, y=0.995, va="top")
    top = 1.0 - 0.035 * title.count("\n") - 0.07
    grid = fig.add_gridspec(3, 5, height_ratios=[1.0, 1.0, 0.05], width_ratios=[1.25, 1, 1, 1, 1], top=top,
                            bottom=0.09, left=0.04, right=0.99, hspace=0.16, wspace=0.06)
    grey_image = err_image = None
    hidden_rgba = np.array(mcolors.to_rgba("#2f6fdf"), np.float32)
    for row in range(2):
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(context[row], cmap="gray", vmin=ctx_win[0], vmax=ctx_win[1], aspect=aspects[row],
                  interpolation="nearest")
        x0, y0, x1, y1 = box_axial if row == 0 else box_coronal
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", linewidth=1.8,
                               label="superpatch"))
        _mark_point(ax, source, centre, row)
        _orientation_letters(ax, row)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel("axial" if row == 0 else "coronal", fontsize=10)
        if row == 0:
            ax.set_title("whole slice (box: superpatch)", fontsize=11)
        for col, name in enumerate(panels, start=1):
            ax = fig.add_subplot(grid[row, col])
            img = np.asarray(sub[name][row], np.float32)
            if name == "error":
                err_image = ax.imshow(img, cmap=err.colormap, vmin=err.value_range[0], vmax=err.value_range[1],
                                      aspect=aspects[row], interpolation="nearest")
            else:
                grey_image = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspects[row],
                                       interpolation="nearest")
                if name == "masked input":  # hidden voxels carry a value below the window floor
                    overlay = np.zeros(img.shape + (4,), np.float32)
                    overlay[img < lo - 0.5] = hidden_rgba
                    ax.imshow(overlay, aspect=aspects[row], interpolation="nearest")
            _orientation_letters(ax, row)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=11)
    grey_bar = fig.colorbar(grey_image, cax=fig.add_subplot(grid[2, 1:4]), orientation="horizontal")
    grey_bar.set_label(f"HU, one grey window [{lo:g}, {hi:g}] for input, masked input and reconstruction",
                       fontsize=9)
    grey_bar.ax.tick_params(labelsize=8)
    err_bar = fig.colorbar(err_image, cax=fig.add_subplot(grid[2, 4]), orientation="horizontal")
    err_label = err.label or "absolute error (HU)"
    err_bar.set_label(err_label + (", clipped at the top" if err.value_range[1] < np.inf else ""), fontsize=9)
    err_bar.set_ticks(np.linspace(err.value_range[0], err.value_range[1], 3))
    err_bar.ax.tick_params(labelsize=8)
    caption = (f"left: grey window {ctx_kind} [{ctx_win[0]:.0f}, {ctx_win[1]:.0f}], cross: the chosen point, "
               "cyan box: the superpatch; blue in the masked input: patches hidden from the model; the "
               "reconstruction shows the model's prediction on hidden patches and the input on visible ones "
               "(as in MAE papers), so its error is 0 there without noise")
    fig.text(0.04, 0.012, textwrap.fill(caption, 190), fontsize=8, va="bottom")
    info = {"panels": panels, "window": (lo, hi), "box_axial": box_axial, "box_coronal": box_coronal,
            "error_range": tuple(float(v) for v in err.value_range), "error_label": err_label, "title": title}
    if path is not None:
        fig.savefig(Path(path), dpi=100)
    return fig, info
