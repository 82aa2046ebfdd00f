"""Lesion edits on a 3D-LLDM label map before synthesis: add, remove, grow or shrink an HCC.

A dataset builder asks "the same liver with one more tumour" or "this tumour 5 mm larger"; the
edited label map is what the synthesis is conditioned on and what is written beside the
synthetic volume, so the pair stays consistent. Edits act in millimetres on the map's own grid
(any spacing and orientation) and keep an HCC inside the liver: a tumour only ever takes liver
parenchyma (label 1) and gives it back when removed or shrunk; vessels stay as they are.
Distances: ``scipy.ndimage.distance_transform_edt`` with the voxel spacing (not voxel counts).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ...errors import InputError
from ...io.volume import Volume

LIVER, HCC = 1, 4


def hcc_components(labels: np.ndarray) -> np.ndarray:
    """Connected HCC components (26-connectivity) numbered 1.. by decreasing size (largest first)."""
    from scipy import ndimage
    comp, n = ndimage.label(labels == HCC, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return comp
    sizes = np.bincount(comp.ravel())[1:]
    order = np.argsort(-sizes, kind="stable") + 1
    renumber = np.zeros(n + 1, comp.dtype)
    renumber[order] = np.arange(1, n + 1)
    return renumber[comp]


def _which(comp: np.ndarray, which: Optional[Sequence[int]], action: str) -> List[int]:
    n = int(comp.max())
    if n == 0:
        raise InputError(f"The label map has no HCC (label 4) to {action}.")
    if not which:
        return list(range(1, n + 1))
    bad = [w for w in which if not 1 <= int(w) <= n]
    if bad:
        raise InputError(f"HCC {bad[0]} does not exist: the label map has {n} HCC{'s' if n > 1 else ''}, numbered 1 to "
                         f"{n} from the largest.")
    return [int(w) for w in which]


def add_hcc(volume: Volume, labels: np.ndarray, centre_lps: Sequence[float], diameter_mm: float) -> np.ndarray:
    """A ball of ``diameter_mm`` around ``centre_lps`` (LPS mm) made HCC where it covers liver
    parenchyma; the centre must lie in the liver."""
    if not 2.0 <= float(diameter_mm) <= 200.0:
        raise InputError(f"An HCC diameter must be between 2 and 200 mm, got {diameter_mm:g}.")
    centre = np.asarray(centre_lps, dtype=np.float64).reshape(3)
    ijk = np.rint(volume.world_to_ijk(centre)[0]).astype(int)
    inside = all(0 <= v < n for v, n in zip(ijk, volume.size_ijk))
    if not inside or labels[ijk[2], ijk[1], ijk[0]] not in (LIVER, HCC):
        ras = ", ".join(f"{v:.1f}" for v in centre * [-1, -1, 1])
        raise InputError(f"The new HCC's centre (RAS {ras} mm) is not in the liver; place it inside the liver.")
    k, j, i = np.indices(labels.shape, dtype=np.float32)
    pts = np.stack([i.ravel(), j.ravel(), k.ravel()], 1)
    dist = np.linalg.norm(volume.ijk_to_world(pts) - centre, axis=1).reshape(labels.shape)
    out = labels.copy()
    out[(dist <= float(diameter_mm) / 2.0) & (labels == LIVER)] = HCC
    return out


def remove_hcc(labels: np.ndarray, which: Optional[Sequence[int]] = None) -> np.ndarray:
    """The HCCs ``which`` (numbers from :func:`hcc_components`; None: all) turned back into liver."""
    comp = hcc_components(labels)
    out = labels.copy()
    out[np.isin(comp, _which(comp, which, "remove"))] = LIVER
    return out


def grow_hcc(volume: Volume, labels: np.ndarray, mm: float, which: Optional[Sequence[int]] = None) -> np.ndarray:
    """The HCCs ``which`` grown by ``mm`` into the liver parenchyma (negative: shrunk by ``-mm``,
    the freed voxels becoming liver; a tumour shrunk away is removed)."""
    comp = hcc_components(labels)
    chosen = np.isin(comp, _which(comp, which, "grow" if float(mm) > 0 else "shrink"))
    return _grow(volume, labels, chosen, mm)


def _grow(volume: Volume, labels: np.ndarray, chosen: np.ndarray, mm: float) -> np.ndarray:
    from scipy import ndimage
    mm = float(mm)
    if not -100.0 <= mm <= 100.0 or mm == 0:
        raise InputError(f"Grow an HCC by a nonzero distance of at most 100 mm, got {mm:g} mm.")
    sampling = tuple(float(s) for s in volume.spacing[::-1])  # (k, j, i) axes of the array
    out = labels.copy()
    if not chosen.any():
        return out
    if mm > 0:
        near = ndimage.distance_transform_edt(~chosen, sampling=sampling) <= mm
        out[near & (labels == LIVER)] = HCC
    else:
        deep = ndimage.distance_transform_edt(chosen, sampling=sampling) > -mm
        out[chosen & ~deep] = LIVER
    return out


def apply_edits(volume: Volume, labels: np.ndarray, remove: Sequence[int] = (), grow_mm: float = 0.0,
                grow_which: Sequence[int] = (), add: Sequence[tuple] = ()) -> np.ndarray:
    """Several edits at once; HCC numbers refer to the *given* map (1 = its largest HCC): ``remove``
    those, grow (or shrink) ``grow_which`` (default: every HCC not removed) by ``grow_mm``, then
    ``add`` new ones, each ``(centre_lps, diameter_mm)``."""
    out = labels
    if remove or grow_mm:
        comp = hcc_components(labels)
        gone = _which(comp, remove, "remove") if remove else []
        out = labels.copy()
        out[np.isin(comp, gone)] = LIVER
        if grow_mm:
            keep = [c for c in (_which(comp, grow_which, "grow" if grow_mm > 0 else "shrink")) if c not in gone]
            out = _grow(volume, out, np.isin(comp, keep) & (out == HCC), grow_mm)
    for centre, diameter in add:
        out = add_hcc(volume, out, centre, diameter)
    return out
