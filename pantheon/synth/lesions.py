"""Focal lesions inserted into a CT phantom, to measure whether a map finds what is not normal.

Each lesion is an ellipsoid (radii drawn in mm, so the same on any grid) placed wholly inside one
organ, its intensity shifted by a drawn contrast (hypodense like a cyst or metastasis, or hyperdense
like a haemangioma's arterial phase) with a soft one-voxel rim; the phantom's own noise stays on top.
Drawn in world coordinates, so it lands correctly on oblique and permuted grids.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from ..anatomy import BTCV_ORGANS
from ..errors import InputError
from ..io.volume import Volume

_VALUE = {name: value for name, value, *_ in BTCV_ORGANS}
DEFAULT_ORGANS = ("liver", "spleen", "left kidney", "right kidney")


def insert_lesions(ct: Volume, labels: Volume, n: int = 3, seed: int = 0, organs: Sequence[str] = DEFAULT_ORGANS,
                   radius_mm: Tuple[float, float] = (6.0, 14.0),
                   contrast_hu: Tuple[float, float] = (40.0, 80.0)) -> Tuple[Volume, Volume]:
    """(CT with ``n`` lesions, uint8 lesion mask) on the CT's grid; each lesion in a random organ of
    ``organs`` present in ``labels``, radii in ``radius_mm``, |contrast| in ``contrast_hu`` (sign
    drawn: two thirds hypodense). Deterministic by ``seed``."""
    from scipy import ndimage
    if not ct.same_geometry(labels, atol=1e-3):
        raise InputError("The label map is not on the CT's grid.")
    rng = np.random.default_rng([int(seed), 77])
    lab = np.asarray(labels.array)
    present = [o for o in organs if (lab == _VALUE[o]).any()]
    if not present:
        raise InputError("None of the organs to place lesions in is in the label map.")
    out = np.asarray(ct.array, np.float32).copy()
    lesion = np.zeros(ct.shape, bool)
    k, j, i = np.meshgrid(*[np.arange(s) for s in ct.shape], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(np.float64)
    world = ct.ijk_to_world(ijk).reshape(ct.shape + (3,))
    del k, j, i, ijk
    for _ in range(int(n)):
        for _attempt in range(20):
            organ = present[int(rng.integers(len(present)))]
            radii = rng.uniform(*radius_mm, size=3)
            # inside the organ by at least the largest radius (in voxels of the finest spacing)
            depth = ndimage.distance_transform_edt(lab == _VALUE[organ], sampling=ct.spacing[::-1])
            room = np.argwhere(depth > radii.max())
            if len(room):
                break
        else:
            continue
        centre = world[tuple(room[int(rng.integers(len(room)))])]
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        local = (world - centre) @ rot / radii
        r = np.sqrt((local ** 2).sum(-1))
        inside = r < 1.0
        rim = np.clip((1.15 - r) / 0.15, 0, 1)  # soft edge over the outer 15 % of the radius
        sign = -1.0 if rng.random() < 2 / 3 else 1.0
        out += sign * float(rng.uniform(*contrast_hu)) * rim.astype(np.float32)
        lesion |= inside
    if not lesion.any():
        raise InputError("No organ has room for a lesion of that size.")
    dtype = ct.array.dtype if np.issubdtype(ct.array.dtype, np.floating) else np.int16
    return ct.with_array(np.rint(out).astype(dtype) if dtype == np.int16 else out.astype(dtype)), \
        ct.with_array(lesion.astype(np.uint8))
