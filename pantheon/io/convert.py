"""Lossless conversions between :class:`Volume` and SimpleITK, nibabel and Slicer's representation.

Each library stores the same geometry differently:

- SimpleITK: LPS, separate spacing / origin / direction (unit columns) -- exactly Volume's fields.
- nibabel: one 4x4 *RAS* affine = direction * spacing mixed, array indexed ``[i, j, k]``.
- Slicer: one 4x4 *RAS* IJKToRAS matrix (also mixed), array indexed ``[k, j, i]`` (arrayFromVolume).

Mixed matrices are factored with column norms = spacing. Sheared (non-orthogonal) voxel grids are
refused with :class:`InputError` beyond a small tolerance (float32 header rounding, DICOM decimal
strings); below it the normalised columns are kept *as they are*, not re-orthogonalised, so every
voxel keeps its exact world position.

SimpleITK and nibabel are imported lazily so that ``pantheon.io.volume`` stays cheap to import;
nothing here imports slicer or vtk (the Slicer form is plain numpy).
"""

from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np

from ..errors import InputError

# Largest |D^T D - I| entry accepted as "orthogonal" (about 0.06 degrees between axes).
SHEAR_TOLERANCE = 1e-3

_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS, for 4x4 homogeneous matrices
_NIFTI_VECTOR_INTENTS = {1007, 2003, 2004}  # NIFTI_INTENT_VECTOR, _RGB_VECTOR, _RGBA_VECTOR


def factor_matrix(m, name: str = "the image") -> Tuple[Tuple[float, float, float], np.ndarray]:
    """Split a 3x3 ``direction @ diag(spacing)`` matrix into (spacing, direction).

    Raises InputError for degenerate axes or a shear larger than SHEAR_TOLERANCE; a resampled
    image would be needed there, and doing that silently would move voxels.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise InputError(f"{name} has an invalid (non-finite) voxel-to-world matrix.")
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 1e-12):
        raise InputError(f"{name} has a degenerate voxel-to-world matrix (a voxel axis has zero length).")
    direction = m / spacing
    check_direction(direction, name)
    return tuple(float(s) for s in spacing), direction


def check_direction(direction, name: str = "the image") -> None:
    """Refuse sheared or degenerate direction matrices (see SHEAR_TOLERANCE)."""
    d = np.asarray(direction, dtype=np.float64)
    err = float(np.max(np.abs(d.T @ d - np.eye(3))))
    if not np.isfinite(err) or abs(np.linalg.det(d)) < 1e-6:
        raise InputError(f"{name} has a degenerate orientation (its voxel axes are not independent).")
    if err > SHEAR_TOLERANCE:
        angle = float(np.degrees(np.arcsin(min(1.0, err))))
        raise InputError(
            f"{name} has a sheared voxel grid (axes up to {angle:.2f} degrees from perpendicular), "
            "which Pantheon does not support; resample it onto an orthogonal grid first.")


def _storable(array: np.ndarray) -> np.ndarray:
    """Widen dtypes that neither SimpleITK nor NIfTI can store (bool, float16)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


# --------------------------------------------------------------------------- SimpleITK
def from_sitk(img, name: str = "the image"):
    """Volume from a 2D or 3D SimpleITK image (scalar or vector pixels)."""
    import SimpleITK as sitk

    from .volume import Volume

    dim = img.GetDimension()
    if dim not in (2, 3):
        raise InputError(f"{name} is {dim}D; Pantheon needs a single 2D or 3D image.")
    comps = int(img.GetNumberOfComponentsPerPixel())
    arr = sitk.GetArrayFromImage(img)  # (K, J, I[, C]) or (J, I[, C])
    if comps == 1 and arr.ndim == dim + 1:  # a one-component vector image
        arr = arr[..., 0]
    spacing = list(img.GetSpacing())
    origin = list(img.GetOrigin())
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if dim == 2:  # embed the 2D plane as slice k = 0 of a 3D grid
        arr = arr[np.newaxis]
        spacing.append(1.0)
        origin.append(0.0)
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction = d3
    # ITK directions are unit already, but float rounding/other writers may not be exact.
    sp, direction = factor_matrix(direction @ np.diag(spacing), name)
    return Volume(arr, sp, tuple(origin), direction, comps)


def to_sitk(volume):
    """3D SimpleITK image (vector pixels when multi-component); a 2D volume gives size (I, J, 1)."""
    import SimpleITK as sitk

    arr = _storable(np.ascontiguousarray(volume.array))
    img = sitk.GetImageFromArray(arr, isVector=volume.components > 1)
    img.SetSpacing(tuple(float(s) for s in volume.spacing))
    img.SetOrigin(tuple(float(o) for o in volume.origin))
    img.SetDirection(tuple(float(x) for x in np.asarray(volume.direction).ravel()))
    return img


# --------------------------------------------------------------------------- nibabel
def from_nibabel(img, name: str = "the image"):
    """Volume from a nibabel NIfTI-1/2 image.

    Geometry is ``img.affine``, which nibabel takes from the sform when sform_code > 0, else the
    qform when qform_code > 0, else a pixdim-only fallback (warned about here: no orientation).
    Vector images (5D with one time point, or a vector intent) become components; any other 4D
    image is a time series and is refused.
    """
    from .volume import Volume

    header = img.header
    if ("sform_code" in header and "qform_code" in header
            and int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0):
        warnings.warn(f"{name} has neither an sform nor a qform; using nibabel's default "
                      "orientation, which may be wrong.", stacklevel=3)
    shape = tuple(int(s) for s in img.shape)
    try:
        vector_intent = int(header["intent_code"]) in _NIFTI_VECTOR_INTENTS
    except (KeyError, ValueError, TypeError):
        vector_intent = False
    ndim = len(shape)
    if ndim == 4 and shape[3] > 1 and not vector_intent:
        raise InputError(f"{name} is a 4D time series with {shape[3]} volumes (shape {shape}); "
                         "Pantheon needs a single 3D volume, so extract one time point first.")
    if ndim == 5 and shape[3] > 1:
        raise InputError(f"{name} is a time series of {shape[3]} vector volumes (shape {shape}); "
                         "Pantheon needs a single 3D volume.")
    if ndim > 5 or ndim < 2:
        raise InputError(f"{name} has {ndim} dimensions (shape {shape}); Pantheon needs a 2D or 3D image.")

    data = np.asanyarray(img.dataobj)
    if ndim == 2:
        data = data[:, :, np.newaxis]
    elif ndim == 4 and shape[3] == 1:
        data = data[:, :, :, 0]
    elif ndim == 5:
        data = data[:, :, :, 0, :]
    if data.dtype.names:  # NIfTI RGB24 / RGBA32: one structured field per component
        data = np.stack([data[f] for f in data.dtype.names], axis=-1)
    # now (I, J, K) or (I, J, K, C)
    comps = int(data.shape[3]) if data.ndim == 4 else 1
    if data.ndim == 4 and comps == 1:
        data = data[..., 0]
    axes = (2, 1, 0, 3) if data.ndim == 4 else (2, 1, 0)
    arr = np.ascontiguousarray(np.transpose(data, axes))

    affine = img.affine if img.affine is not None else header.get_best_affine()  # None: made in memory
    lps = _FLIP_XY @ np.asarray(affine, dtype=np.float64)
    spacing, direction = factor_matrix(lps[:3, :3], name)
    return Volume(arr, spacing, tuple(lps[:3, 3]), direction, comps)


def to_nibabel(volume):
    """Nifti1Image with the geometry in both sform and qform (codes 1 = scanner, as Slicer writes).

    The qform is a quaternion, so it is orthonormal by construction; the sform is exact (float32).
    Multi-component volumes are stored as NIfTI vectors: shape (I, J, K, 1, C), intent "vector".
    """
    import nibabel as nib

    arr = _storable(np.asarray(volume.array))
    axes = (2, 1, 0, 3) if arr.ndim == 4 else (2, 1, 0)
    data = np.transpose(arr, axes)
    if volume.components > 1:
        data = data[:, :, :, np.newaxis, :]
    affine = _FLIP_XY @ volume.index_to_lps()
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine, dtype=data.dtype)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if volume.components > 1:
        img.header.set_intent("vector")
    return img


# --------------------------------------------------------------------------- Slicer
def from_slicer(array_kji, ijk_to_ras, name: str = "the image"):
    """Volume from ``slicer.util.arrayFromVolume(node)`` and the node's IJKToRAS 4x4 matrix."""
    from .volume import Volume

    m = np.asarray(ijk_to_ras, dtype=np.float64)
    if m.shape != (4, 4) or not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"{name} has an IJKToRAS matrix that is not a 4x4 affine transform.")
    lps = _FLIP_XY @ m
    spacing, direction = factor_matrix(lps[:3, :3], name)
    arr = np.asarray(array_kji)
    comps = int(arr.shape[3]) if arr.ndim == 4 else 1
    if arr.ndim == 4 and comps == 1:
        arr = arr[..., 0]
    return Volume(arr, spacing, tuple(lps[:3, 3]), direction, comps)


def to_slicer(volume):
    """``(array_kji, ijk_to_ras_4x4)`` for slicer.util.updateVolumeFromArray and SetIJKToRASMatrix."""
    return np.ascontiguousarray(volume.array), volume.index_to_ras()
