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
def sitk_parts(img, name: str = "the image") -> tuple:
    """Volume parts (array, spacing, origin, direction, components) of a 2D or 3D SimpleITK image
    (scalar or vector pixels); :meth:`Volume.from_sitk` builds the Volume."""
    import SimpleITK as sitk


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
    return arr, sp, tuple(origin), direction, comps


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
_XFORM_NAMES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "Talairach", 4: "MNI 152", 5: "template"}
#: qform and sform further apart than this fraction of the smallest voxel size are reported.
QFORM_SFORM_TOLERANCE_VOXELS = 0.25


def _sform_itk_usable(s: np.ndarray, pixdim: np.ndarray, ndim: int) -> Tuple[bool, bool]:
    """(decomposable without skew, scales match pixdim) as ITK's NiftiImageIO judges an sform."""
    m = np.asarray(s[:3, :3], dtype=np.float64)
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms <= 0) or not np.all(np.isfinite(m)):
        return False, False
    scales_ok = bool(np.all(np.abs(norms[:ndim] - pixdim[:ndim]) <= 1e-3))
    r = m / norms
    return bool(np.all(np.abs(r @ r.T - np.eye(3)) <= 1e-4)), scales_ok


def _very_similar(s: np.ndarray, q: np.ndarray) -> bool:
    """ITK's "sform and qform are very similar" (singular values, axes, offsets within 1e-4)."""
    sv_s = np.linalg.svd(s[:3, :3], compute_uv=False)
    sv_q = np.linalg.svd(q[:3, :3], compute_uv=False)
    return bool(np.all(np.abs(sv_s - sv_q) <= 1e-4) and np.all(np.abs(s[:3, :3] - q[:3, :3]) <= 1e-4)
                and np.all(np.abs(s[:3, 3] - q[:3, 3]) <= 1e-4))


def nifti_itk_affine(header, shape, name: str = "the image"):
    """The RAS voxel-to-world matrix ITK (so 3D Slicer) reads from a NIfTI header, and what it decided.

    Returns ``(affine 4x4, spacing (3,), messages)``. ITK's ``NiftiImageIO`` (5.x) rule:

    - neither code set: origin 0, LPS-identity axes, spacing from pixdim;
    - the sform when it is orthonormal (no skew) and either the qform code is 0, or the sform
      code is 1 (scanner), or it is very similar to the qform; otherwise the qform (a sheared sform
      with no qform is refused);
    - the spacing is always pixdim (a chosen sform only gives the axes and the origin).

    ``messages`` are sentences for warnings: the sform and qform disagree by more than
    :data:`QFORM_SFORM_TOLERANCE_VOXELS` voxel, or the sform's voxel size differs from pixdim.
    """
    qcode = int(header["qform_code"])
    scode = int(header["sform_code"])
    ndim = max(1, min(3, len(shape)))
    raw = np.abs(np.asarray(header["pixdim"][1:4], dtype=np.float64))
    pixdim = np.where(raw > 0, raw, 1.0)
    messages = []
    if qcode == 0 and scode == 0:
        messages.append(f"{name} has neither an sform nor a qform, so its orientation is unknown; reading it "
                        "with ITK's default (origin 0, axes along L, P and S), which may be wrong.")
        affine = np.diag([-pixdim[0], -pixdim[1], pixdim[2], 1.0])
        return affine, pixdim, messages
    s = np.asarray(header.get_sform(), dtype=np.float64)
    q = np.asarray(header.get_qform(), dtype=np.float64)
    similar = bool(np.all(np.abs(s[:3, :3] - q[:3, :3]) <= 1e-5) and np.abs(s[:3, 3] - q[:3, 3]).sum() <= 1e-7
                   and scode != 0)
    prefer_sform = similar
    scales_ok = True
    if not similar or scode != 0:
        decomposable, scales_ok = (_sform_itk_usable(s, pixdim, ndim) if scode != 0 else (False, True))
        if decomposable:
            if qcode == 0 and scode != 0:
                prefer_sform = True
            elif scode == 1:
                prefer_sform = True
            elif qcode != 0 and scode != 0:
                prefer_sform = _very_similar(s, q)
    if prefer_sform:
        affine, chosen, code = s, "sform", scode
    elif qcode != 0:
        affine, chosen, code = q, "qform", qcode
    else:
        raise InputError(f"{name} has no qform and its sform is sheared (its voxel axes are not perpendicular), "
                         "which ITK, 3D Slicer and Pantheon cannot represent; resample it onto an orthogonal "
                         "grid first.")
    spacing = pixdim.copy()
    if ndim < 3:  # ITK ignores the third axis of a 2D image; keep the matrix's own slice thickness
        spacing[2] = float(np.linalg.norm(affine[:3, 2])) or 1.0
    if chosen == "sform" and not scales_ok:
        norms = np.linalg.norm(s[:3, :3], axis=0)
        messages.append(f"{name} has an sform whose voxel size ({' x '.join(f'{v:.4g}' for v in norms[:ndim])} mm) "
                        f"differs from its pixdim ({' x '.join(f'{v:.4g}' for v in pixdim[:ndim])} mm); using the "
                        "pixdim, as ITK and 3D Slicer do.")
    if qcode != 0 and scode != 0:
        corners = np.array([[i, j, k, 1.0] for i in (0, max(shape[0] - 1, 0))
                            for j in (0, max(shape[1] - 1, 0) if len(shape) > 1 else 0)
                            for k in (0, max(shape[2] - 1, 0) if len(shape) > 2 else 0)])
        gap = float(np.max(np.linalg.norm(corners @ s.T - corners @ q.T, axis=1)[:, None]))
        voxel = float(np.min(pixdim[:ndim]))
        if gap > QFORM_SFORM_TOLERANCE_VOXELS * voxel:
            other = "qform" if chosen == "sform" else "sform"
            messages.append(
                f"{name} has an sform and a qform that place it up to {gap:.1f} mm ({gap / voxel:.1f} voxels) apart; "
                f"Pantheon reads the {chosen} (code {code}, {_XFORM_NAMES.get(code, 'other')}) as ITK and 3D Slicer "
                f"do, so results line up in Slicer, but tools that follow the {other} (e.g. nibabel, FSL) place "
                "the image elsewhere.")
    return affine, spacing, messages


def nibabel_parts(img, name: str = "the image") -> tuple:
    """Volume from a nibabel NIfTI-1/2 image, with the geometry ITK and 3D Slicer give it.

    Geometry: :func:`nifti_itk_affine` (ITK's choice between sform and qform, spacing from pixdim);
    its messages are issued as warnings. An in-memory image whose ``affine`` differs from its
    header (set in Python, not yet written) uses that affine, as nibabel would write it.
    Vector images (5D with one time point, or a vector intent) become components; any other 4D
    image is a time series and is refused.
    """

    header = img.header
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

    aff = None if img.affine is None else np.asarray(img.affine, dtype=np.float64)
    if aff is not None and ("qform_code" not in header or not np.allclose(aff, header.get_best_affine(), atol=1e-4)):
        # an affine set in Python and not yet in the header: nibabel would write this one
        lps = _FLIP_XY @ aff
        spacing, direction = factor_matrix(lps[:3, :3], name)
    else:
        affine, itk_spacing, messages = nifti_itk_affine(header, shape[:3], name)
        for msg in messages:
            warnings.warn(msg, stacklevel=3)
        if (aff is not None and np.allclose(aff, affine, atol=1e-4)
                and np.allclose(np.linalg.norm(aff[:3, :3], axis=0), itk_spacing, rtol=1e-5, atol=1e-6)):
            lps = _FLIP_XY @ aff  # the same matrix, in nibabel's float64 (an in-memory image stays exact)
            spacing, direction = factor_matrix(lps[:3, :3], name)
        else:
            lps = _FLIP_XY @ affine
            direction = lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)
            check_direction(direction, name)
            spacing = tuple(float(v) for v in itk_spacing)

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
    return arr, spacing, tuple(lps[:3, 3]), direction, comps


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
def slicer_parts(array_kji, ijk_to_ras, name: str = "the image") -> tuple:
    """Volume parts from ``slicer.util.arrayFromVolume(node)`` and the node's IJKToRAS 4x4 matrix
    (:meth:`Volume.from_slicer` builds the Volume)."""

    m = np.asarray(ijk_to_ras, dtype=np.float64)
    if m.shape != (4, 4) or not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"{name} has an IJKToRAS matrix that is not a 4x4 affine transform.")
    lps = _FLIP_XY @ m
    spacing, direction = factor_matrix(lps[:3, :3], name)
    arr = np.asarray(array_kji)
    comps = int(arr.shape[3]) if arr.ndim == 4 else 1
    if arr.ndim == 4 and comps == 1:
        arr = arr[..., 0]
    return arr, spacing, tuple(lps[:3, 3]), direction, comps


def to_slicer(volume):
    """``(array_kji, ijk_to_ras_4x4)`` for slicer.util.updateVolumeFromArray and SetIJKToRASMatrix."""
    return np.ascontiguousarray(volume.array), volume.index_to_ras()
