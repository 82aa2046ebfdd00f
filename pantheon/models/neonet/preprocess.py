"""NeoNet preprocessing: input checks, MRI intensity normalisation, resampling to the model grid.

Reconstructed (the NeoNet paper, arXiv 2603.29449, gives no preprocessing; spacing and crop follow
the group's sibling PNI works, the chain itself is an assumption):
``Orientation("RAS") -> Spacing(1.5625, 1.5625, 4.0 mm; bilinear images / nearest masks)
-> ScaleIntensityRangePercentiles(0.5, 99.5 -> [0, 1], clip) -> TLCR crop``. This module is that
chain without MONAI or torch (numpy + SimpleITK on :class:`~pantheon.io.volume.Volume`, LPS world):

- :func:`check_mri` rejects what cannot be a hepatobiliary-phase MRI (2D, NaN/inf, constant,
  a CT in Hounsfield units) with one-sentence :class:`~pantheon.errors.InputError` messages;
- :func:`normalize_mri` maps the 0.5th/99.5th percentiles to 0/1 and clips;
- :func:`resample_to_model` reorients *exactly* (axis permutation/flips only) to the closest RAS
  axes, then resamples to :data:`MODEL_SPACING` (:func:`pantheon.io.resample.resample`, SimpleITK),
  and returns ``back`` that maps a model-grid Volume onto the original grid.

**Model grid (assumption, demo scale).** The paper's sibling works use 1.5625 x 1.5625 x 4.0 mm
and a 96 x 96 x 48 TLCR box (SCINTILLA-SNN, MMA-Former; :data:`PAPER_SPACING`,
:data:`PAPER_PATCH_SHAPE`). The CPU demo models (trained on 2 shared CPU cores) use a much coarser grid,
:data:`MODEL_SPACING` = 4 x 4 x 4 mm, and a TLCR box :data:`PATCH_SHAPE` = (K, J, I) = (24, 32, 32) voxels, i.e.
128 x 128 x 96 mm (about 85% of the paper's in-plane field, half its cranio-caudal extent).
Every function takes the spacing/shape as arguments, so full-resolution models only change the
constants they are called with.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import numpy as np

from pantheon.errors import InputError
from pantheon.io.resample import resample
from pantheon.io.resample import resample_like as _resample_like
from pantheon.io.validate import AIR_HU, check_scan, sample_values
from pantheon.io.volume import Volume

__all__ = ["MODEL_SPACING", "PATCH_SHAPE", "NEOSEG_ROI", "PAPER_SPACING", "PAPER_PATCH_SHAPE",
           "check_mri", "normalize_mri", "resample_to_model", "resample_like", "tlcr_patch"]

#: Demo model voxel spacing (si, sj, sk) in mm, after reorientation to the closest RAS axes.
#: Assumption (CPU demo); the paper's sibling works use :data:`PAPER_SPACING`.
MODEL_SPACING: Tuple[float, float, float] = (4.0, 4.0, 4.0)
#: TLCR crop shape (K, J, I) in voxels at :data:`MODEL_SPACING` (128 x 128 x 96 mm). Divisible by 8
#: on every axis (NeoGen autoencoder factor x diffusion UNet factor of the demo models). Assumption.
PATCH_SHAPE: Tuple[int, int, int] = (24, 32, 32)
#: NeoSeg sliding-window ROI (K, J, I) at :data:`MODEL_SPACING` (divisible by 8). Assumption.
NEOSEG_ROI: Tuple[int, int, int] = (16, 48, 48)
#: Spacing and crop of the sibling PNI works (SCINTILLA-SNN, MMA-Former) in (si, sj, sk) mm and
#: (K, J, I) voxels.
PAPER_SPACING: Tuple[float, float, float] = (1.5625, 1.5625, 4.0)
PAPER_PATCH_SHAPE: Tuple[int, int, int] = (48, 96, 96)


def check_mri(volume: Volume, name: str = "input", max_voxels=None) -> None:
    """Raise InputError with one sentence when ``volume`` cannot be a 3D hepatobiliary-phase MRI
    (or has more than ``max_voxels`` voxels; None or 0 = no limit)."""
    a, lo, hi = check_scan(volume, name, "PNIPredict", "hepatobiliary-phase MRI", "MRI", ("MR", "OT"), max_voxels,
                           "fix or mask them first")
    sample = sample_values(a).astype(np.float32)
    frac_air = float(np.mean(sample < AIR_HU))
    if lo < AIR_HU and frac_air > 0.02:
        raise InputError(f"The {name} image values run from {lo:g} to {hi:g} with {100 * frac_air:.0f}% of voxels "
                         f"below {AIR_HU:g}; it looks like CT in Hounsfield units; PNIPredict needs a "
                         "hepatobiliary-phase MRI.")


def normalize_mri(array, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """float32 copy with the ``lower``/``upper`` percentiles mapped to 0/1, clipped to [0, 1].

    MONAI's ``ScaleIntensityRangePercentiles(lower, upper, b_min=0, b_max=1, clip=True)``. A constant
    array gives zeros.
    """
    a = np.asarray(array, dtype=np.float32)
    if a.size == 0:
        return a.copy()
    sample = sample_values(a)
    p_lo, p_hi = (float(v) for v in np.percentile(sample, [lower, upper]))
    if not p_hi > p_lo:
        return np.zeros_like(a, dtype=np.float32)
    out = (a - p_lo) / (p_hi - p_lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def resample_like(volume: Volume, reference: Volume, interpolation: str = "linear") -> Volume:
    """``volume`` resampled onto ``reference``'s grid (nearest-neighbour extrapolation at the edges)."""
    return _resample_like(volume, reference, interpolation, extrapolate=True)


def resample_to_model(volume: Volume, spacing: Sequence[float] = MODEL_SPACING,
                      interpolation: str = "linear") -> Tuple[Volume, Callable[..., Volume]]:
    """(model-grid Volume, back): closest-RAS axes at ``spacing`` mm, and the exact way back.

    The voxel axes are first permuted/flipped to the closest RAS order (exact, no resampling; an
    oblique tilt is kept), then the image is resampled (``interpolation`` "linear" for images,
    "nearest" for label maps) onto a grid with the same origin and direction, ``spacing``
    (si, sj, sk) and enough voxels to cover every original voxel centre. Voxels past the original
    extent continue the image linearly from its last two voxels ("linear") or take the nearest
    original value ("nearest"); there is no artificial border.

    ``back(v, interpolation="linear")`` resamples a Volume on the model grid (image, probability,
    heat map, label map with "nearest") onto the *original* grid: same shape, spacing, origin and
    direction as ``volume``. Because the model grid covers all original voxel centres, a field
    that is linear in space comes back exactly (up to float rounding).
    """
    if not isinstance(volume, Volume):
        raise InputError(f"expected a pantheon Volume, got {type(volume).__name__}")
    sp = np.array([float(s) for s in spacing], dtype=np.float64)
    if sp.shape != (3,) or np.any(~np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing needs three positive values (si, sj, sk), got {spacing!r}")
    canon, _undo = volume.to_canonical("RAS")
    n_old = np.array(canon.size_ijk, dtype=np.float64)
    ext = (n_old - 1) * np.array(canon.spacing)  # centre-to-centre extent, mm
    n_new = np.maximum(1, np.ceil(ext / sp - 1e-6).astype(int) + 1)
    shape = tuple(int(v) for v in n_new[::-1])
    src = canon
    if interpolation == "linear":
        # one extra voxel at the far end of every axis, linearly extrapolated (2 a[-1] - a[-2]), so
        # model voxels just past the last original centre continue the local gradient: a linear
        # field then survives the round trip exactly, right up to the border.
        a = canon.array.astype(np.float64 if canon.array.dtype == np.float64 else np.float32)
        pad = [(0, 1 if a.shape[d] > 1 else 0) for d in range(3)]
        a = np.pad(a, pad, mode="reflect", reflect_type="odd")
        src = Volume(a, canon.spacing, canon.origin, canon.direction)
    model = resample(src, shape, tuple(sp), canon.origin, canon.direction, interpolation, extrapolate=True)
    reference = Volume(np.zeros((1, 1, 1), np.uint8), volume.spacing, volume.origin, volume.direction)
    ref_shape = volume.shape

    def back(v: Volume, interpolation: str = "linear") -> Volume:
        if not isinstance(v, Volume):
            raise InputError(f"expected a pantheon Volume, got {type(v).__name__}")
        return resample(v, ref_shape, reference.spacing, reference.origin, reference.direction, interpolation,
                        extrapolate=True)

    return model, back


def tlcr_patch(image: Volume, labels: Volume, patch_shape: Sequence[int] = PATCH_SHAPE,
               spacing: Sequence[float] = MODEL_SPACING, tumour_label: int = 2):
    """(image patch, label patch, box): the TLCR crop used for NeoGen and PattenNet, training and inference.

    ``image``: the *normalised* model-grid image (:func:`normalize_mri` of :func:`resample_to_model`);
    ``labels``: a label map on the same grid (ground truth, or NeoSeg's argmax: 1 liver, 2 tumour).
    The box (``patch_shape`` (K, J, I) at ``spacing``) is centred on the largest tumour component
    (:func:`~pantheon.models.neonet.tlcr.tlcr_box`); outside the image the image patch is 0 and the
    label patch is 0. Arrays are ``patch.array`` (K, J, I) = the (D, H, W) torch layout.
    """
    from .tlcr import apply_crop, tlcr_box

    box = tlcr_box(labels, size=tuple(int(s) for s in patch_shape)[::-1], spacing=tuple(spacing),
                   label=tumour_label)
    img = apply_crop(image, box, "linear", fill=0.0)
    lab = apply_crop(labels, box, "nearest", fill=0)
    img = img.with_array(img.array.astype(np.float32, copy=False))
    return img, lab, box
