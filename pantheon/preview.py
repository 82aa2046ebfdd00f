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
}


def _display_slices(volume: Volume, centre_lps=None) -> Tuple[List[np.ndarray], List[float]]:
    """Axial and coronal slices through ``centre_lps`` (default: the middle), and their aspect ratios."""
    canon, _ = volume.to_canonical("LPS")  # i -> patient left (picture right), j -> posterior (down)
    a = canon.array
    K, J, I = canon.shape[:3]
    if centre_lps is None:
        k, j = K // 2, J // 2
    else:
        i_, j_, k_ = np.rint(canon.world_to_ijk(np.asarray(centre_lps).reshape(1, 3))[0]).astype(int)
        k, j = int(np.clip(k_, 0, K - 1)), int(np.clip(j_, 0, J - 1))
    si, sj, sk = canon.spacing
    axial = a[k]  # rows j (anterior at top), columns i
    coronal = a[::-1, j]  # rows k flipped so superior is at the top
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
    point = result.notes.get("point_lps")
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
    {"window", "window_kind", "centre", "centre_from", "panels", "colorbars", "title"}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors

    maps = [(name, h.volume, h.colormap, h.value_range, h.description) for name, h in result.heatmaps.items()][:max_maps]
    rgb = [(name, v) for name, v in result.volumes.items() if v.components == 3]
    panels = [("input", None, None, None, None)] + maps + [(n, v, "rgb", None, None) for n, v in rgb]
    win, win_kind = (tuple(window), "given") if window is not None else display_window(source)
    centre, centre_from = _centre(source, result)
    base, aspects = _display_slices(source, centre)
    labels = [(name, lab.volume, lab.segments) for name, lab in result.labels.items()]

    panel_w = 3.2
    fig = plt.figure(figsize=(panel_w * len(panels) + 0.6, 8.0))
    width_chars = max(40, int(panel_w * len(panels) * 12))
    title = _title(result, width_chars)
    title_lines = title.count("\n") + 1
    top = 1.0 - 0.04 * title_lines - 0.03
    grid = fig.add_gridspec(3, len(panels), height_ratios=[1.0, 1.0, 0.06], top=top, bottom=0.1, left=0.05,
                            right=0.98, hspace=0.12, wspace=0.12)
    axes = np.array([[fig.add_subplot(grid[row, col]) for col in range(len(panels))] for row in range(2)])
    colorbars = 0
    for col, (name, vol, cmap, vrange, description) in enumerate(panels):
        over = _display_slices(vol, centre)[0] if vol is not None else [None, None]
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
                    lab = _display_slices(lvol, centre)[0][row]
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
            bar.set_label(textwrap.fill(description or name, 40), fontsize=8)
            bar.set_ticks(np.linspace(vrange[0], vrange[1], 3))  # ends and middle: no crowding beside the next bar
            bar.ax.tick_params(labelsize=8)
            colorbars += 1
    axes[0, 0].set_ylabel("axial", fontsize=10)
    axes[1, 0].set_ylabel("coronal", fontsize=10)
    caption = [f"grey window: {win_kind} [{win[0]:.0f}, {win[1]:.0f}]"]
    if labels:
        caption.append("outlined: " + ", ".join(s.name for _n, _v, segs in labels for s in segs))
    if centre_from == "point":
        caption.append("cross: the chosen point")
    fig.text(0.05, 0.015, textwrap.fill("; ".join(caption), width_chars), fontsize=8, va="bottom")
    fig.suptitle(title, fontsize=11, y=0.995, va="top")
    info = {"window": tuple(float(v) for v in win), "window_kind": win_kind, "centre": centre,
            "centre_from": centre_from, "panels": [p[0] for p in panels], "colorbars": colorbars, "title": title}
    return fig, info


def _mark_point(ax, source: Volume, centre, row: int) -> None:
    """A cross where the chosen point is, in the slice's pixel coordinates."""
    canon, _ = source.to_canonical("LPS")
    i, j, k = canon.world_to_ijk(np.asarray(centre).reshape(1, 3))[0]
    x, y = (i, j) if row == 0 else (i, canon.shape[0] - 1 - k)
    ax.plot([x], [y], marker="+", color="cyan", markersize=16, markeredgewidth=2.2)


def save_preview(source: Volume, result: Result, path, window=None, max_maps: int = 8) -> Path:
    """Write the preview PNG (see :func:`build_preview`)."""
    import matplotlib.pyplot as plt
    fig, _info = build_preview(source, result, max_maps=max_maps, window=window)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
