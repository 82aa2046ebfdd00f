"""A PNG a person can look at: mid-slices of the input with the result maps overlaid.

Slices are shown in the radiological convention (patient right on the left of the picture,
anterior at the top of axial views, superior at the top of coronal views), with true aspect.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from .io.volume import Volume
from .results import Result


def _display_slices(volume: Volume, centre_lps=None) -> Tuple[List[np.ndarray], List[float]]:
    """Axial and coronal slices through ``centre_lps`` (default: the middle), and their aspect ratios."""
    canon, _ = volume.to_canonical("LPS")  # i -> patient left (picture right), j -> posterior (down)
    a = canon.array
    K, J, I = canon.shape
    if centre_lps is None:
        k, j = K // 2, J // 2
    else:
        i_, j_, k_ = np.rint(canon.world_to_ijk(np.asarray(centre_lps).reshape(1, 3))[0]).astype(int)
        k, j = int(np.clip(k_, 0, K - 1)), int(np.clip(j_, 0, J - 1))
    si, sj, sk = canon.spacing
    axial = a[k]  # rows j (anterior at top), columns i
    coronal = a[::-1, j]  # rows k flipped so superior is at the top
    return [axial, coronal], [sj / si, sk / si]


def save_preview(source: Volume, result: Result, path, window=(-175, 250), max_maps: int = 8) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = [(name, h.volume, h.colormap, h.value_range) for name, h in result.heatmaps.items()][:max_maps]
    rgb = [(name, v) for name, v in result.volumes.items() if v.components == 3]
    panels = [("input", None, None, None)] + maps + [(n, v, "rgb", None) for n, v in rgb]
    base, aspects = _display_slices(source)
    fig, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.4), squeeze=False)
    for col, (name, vol, cmap, vrange) in enumerate(panels):
        over = _display_slices(vol)[0] if vol is not None else [None, None]
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(base[row], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[row],
                      interpolation="nearest")
            if over[row] is not None:
                if cmap == "rgb":
                    ax.imshow(np.clip(over[row], 0, 1), alpha=0.7, aspect=aspects[row])
                else:
                    ax.imshow(over[row], cmap=cmap, vmin=vrange[0], vmax=vrange[1], alpha=0.55,
                              aspect=aspects[row], interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("_", " "), fontsize=9)
        axes[0, 0].set_ylabel("axial", fontsize=9)
        axes[1, 0].set_ylabel("coronal", fontsize=9)
    note = result.notes.get("warning", "")
    fig.suptitle(f"Pantheon NEMESIS — {result.notes.get('weights', '')}  {note}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
