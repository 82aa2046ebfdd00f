"""Resampling a :class:`~pantheon.io.volume.Volume` onto another voxel grid (SimpleITK, LPS world).

One function for every pipeline that moves an image or a mask between grids (NeoNet's model grid,
its TLCR crop box and the way back), so they all interpolate, extrapolate and type the result the
same way:

- ``interpolation`` "linear" (images, probabilities: float32 result, float64 kept) or "nearest"
  (label maps: the input dtype, bool becomes uint8);
- a target voxel centre maps to the source through both grids' world geometry (origin, spacing,
  direction), so world positions are kept whatever the axes, spacing or tilt of either grid;
- outside the source's voxel centres: ``fill``, or with ``extrapolate`` the nearest source value
  (no artificial border where the target grid reaches half a voxel past the image).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .volume import Volume

INTERPOLATIONS = ("linear", "nearest")


def _to_sitk(volume: Volume, interpolation: str):
    import SimpleITK as sitk

    src = volume.array
    if interpolation == "linear":
        src = src.astype(np.float64 if src.dtype == np.float64 else np.float32, copy=False)
    elif src.dtype == bool:
        src = src.astype(np.uint8)  # SimpleITK has no bool pixels
    img = sitk.GetImageFromArray(np.ascontiguousarray(src))
    img.SetSpacing(tuple(float(s) for s in volume.spacing))
    img.SetOrigin(tuple(float(o) for o in volume.origin))
    img.SetDirection(tuple(float(x) for x in np.asarray(volume.direction, dtype=np.float64).ravel()))
    return img


def resample(volume: Volume, shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
             direction, interpolation: str = "linear", fill: float = 0.0, extrapolate: bool = False) -> Volume:
    """``volume`` on the grid of ``shape`` (K, J, I) voxels, ``spacing`` (si, sj, sk) mm, ``origin`` (LPS
    mm, centre of voxel 0) and ``direction`` (3x3, columns = i, j, k axes in LPS).

    ``interpolation``: "linear" or "nearest" (see the module docstring for the result's dtype).
    Target voxels whose centre falls outside the source get ``fill``, or with ``extrapolate`` the
    nearest source voxel's value.
    """
    import SimpleITK as sitk

    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}.get(interpolation)
    if interp is None:
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    img = _to_sitk(volume, interpolation)
    direction = np.asarray(direction, dtype=np.float64)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in tuple(shape)[::-1]])
    f.SetOutputSpacing([float(s) for s in spacing])
    f.SetOutputOrigin([float(o) for o in origin])
    f.SetOutputDirection([float(x) for x in direction.ravel()])
    f.SetInterpolator(interp)
    f.SetDefaultPixelValue(float(fill))
    f.SetUseNearestNeighborExtrapolator(bool(extrapolate))
    f.SetOutputPixelType(img.GetPixelID())
    out = sitk.GetArrayFromImage(f.Execute(img))
    if interpolation == "nearest" and volume.array.dtype != bool:
        out = out.astype(volume.array.dtype, copy=False)
    return Volume(out, tuple(float(s) for s in spacing), tuple(float(o) for o in origin), direction.copy())


def resample_like(volume: Volume, reference: Volume, interpolation: str = "linear", fill: float = 0.0,
                  extrapolate: bool = False) -> Volume:
    """``volume`` on ``reference``'s grid (its shape, spacing, origin and direction; not its values)."""
    return resample(volume, reference.shape, reference.spacing, reference.origin, reference.direction,
                    interpolation, fill, extrapolate)
