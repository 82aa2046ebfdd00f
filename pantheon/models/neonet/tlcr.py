"""TLCR: the Tumor-Localized ROI Crop of NeoNet's NeoSeg module.

NeoNet (Han et al., "NeoNet: An End-to-End 3D MRI-Based Deep Learning Framework for
Non-Invasive Prediction of Perineural Invasion via Generation-Driven Classification",
arXiv:2603.29449) states only that NeoSeg "utilises" a Tumor-Localized ROI Crop (TLCR). Its
parameters are not published (only the abstract is available). What this module implements, and
how sure each part is:

- crop centred on the tumour: stated by the name ("tumor-localized") [PAPER];
- a **fixed physical box** of 96 x 96 x 48 voxels at 1.5625 x 1.5625 x 4.0 mm (i, j, k), i.e.
  150 x 150 x 192 mm: taken from the group's sibling PNI works (SCINTILLA-SNN, MMA-Former)
  [SIBLING] — an **assumption**, hence arguments ``size`` and ``spacing``;
- centre = centroid (world mm) of the **largest connected component** (26-connectivity) of the
  tumour mask, so a stray false-positive island of a predicted mask cannot move the box
  [INFER, assumption; ``centre="bbox"`` uses the component's bounding-box centre instead];
- box axes = the image's voxel axes permuted/flipped to the closest **RAS** order
  (:meth:`Volume.axis_permutation_to_canonical`), as MONAI's ``Orientationd("RAS")`` +
  ``Spacingd`` would give: i -> patient Right, j -> Anterior, k -> Superior (closest), keeping an
  oblique acquisition's tilt [INFER]. ``axes="world"`` gives exact RAS world axes instead;
- resampling with SimpleITK (:func:`pantheon.io.resample.resample`): linear for images, nearest
  for masks; outside the image the crop is padded with ``fill`` (default: the image minimum for
  images, 0 for masks) [INFER: zero- or reflect-padding would do as well; a constant at the
  minimum intensity is used].

Everything here is geometry on :class:`~pantheon.io.volume.Volume` (LPS world), pure numpy,
scipy and SimpleITK (imported lazily); no torch.

Public API
----------
- :class:`CropBox` — the box as a target voxel grid (shape (K, J, I), spacing, origin, direction).
- :func:`tlcr_box` — the box for a tumour mask.
- :func:`apply_crop` — resample an image or mask onto the box grid.
- :func:`invert_crop` — map a crop-space result (heat map, mask) back onto the full image grid.
- :func:`box_as_roi` — centre/size/orientation in RAS, what a Slicer markups ROI needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from pantheon.errors import InputError
from pantheon.io.resample import resample, resample_like
from pantheon.io.volume import LPS_TO_RAS, Volume

__all__ = [
    "DEFAULT_CROP_SIZE",
    "DEFAULT_CROP_SPACING",
    "CropBox",
    "tlcr_box",
    "apply_crop",
    "invert_crop",
    "box_as_roi",
    "largest_component",
]

#: Crop size in voxels, (i, j, k) order [SIBLING assumption: 96 x 96 x 48].
DEFAULT_CROP_SIZE = (96, 96, 48)
#: Crop voxel spacing in mm, (i, j, k) order [SIBLING assumption: 1.5625 x 1.5625 x 4.0].
DEFAULT_CROP_SPACING = (1.5625, 1.5625, 4.0)


@dataclass
class CropBox:
    """A crop box as a voxel grid in the Volume convention.

    ``shape`` (K, J, I), ``spacing`` (si, sj, sk) mm, ``origin`` = LPS position of the centre of
    box voxel (0, 0, 0), ``direction`` = 3x3, columns = LPS directions of the box i, j, k axes.
    ``centre_lps`` is the tumour centre the box is built around (the centre of the voxel
    lattice). The physical extent of the box (voxel edges to voxel edges) is
    ``size_mm = (I, J, K) * spacing``.
    """

    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    centre_lps: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def size_ijk(self) -> Tuple[int, int, int]:
        return tuple(int(s) for s in self.shape[::-1])

    @property
    def size_mm(self) -> Tuple[float, float, float]:
        """Physical size along the box i, j, k axes (whole voxels), mm."""
        return tuple(float(n * s) for n, s in zip(self.size_ijk, self.spacing))

    def empty_volume(self, dtype=np.float32) -> Volume:
        """A zero volume on the box grid."""
        return Volume(np.zeros(self.shape, dtype=dtype), self.spacing, self.origin, self.direction.copy())

    def index_to_lps(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction) @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def corners_lps(self) -> np.ndarray:
        """(8, 3) LPS positions of the outer corners of the box (voxel edges)."""
        n = np.array(self.size_ijk, dtype=np.float64)
        c = np.array([[a, b, d] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5) for d in (-0.5, n[2] - 0.5)])
        m = self.index_to_lps()
        return c @ m[:3, :3].T + m[:3, 3]


# ------------------------------------------------------------------------------- helpers
def _check_volume(v, name: str) -> Volume:
    if not isinstance(v, Volume):
        raise InputError(f"{name} must be a pantheon Volume, got {type(v).__name__}")
    if v.components != 1:
        raise InputError(f"{name} must be a single-component image, it has {v.components} components")
    return v


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 26-connected component of ``mask`` (all False if empty)."""
    m = np.asarray(mask) != 0
    lab, n = ndimage.label(m, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return np.zeros(m.shape, dtype=bool)
    if n == 1:
        return lab == 1
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def _box_direction(reference: Volume, axes: str) -> np.ndarray:
    if axes == "image":
        perm, flip = reference.axis_permutation_to_canonical("RAS")
        d = np.asarray(reference.direction, dtype=np.float64)
        cols = [d[:, perm[n]] * (-1.0 if flip[n] else 1.0) for n in range(3)]
        d = np.stack(cols, axis=1)
        # re-orthonormalise (header rounding) keeping the k axis, then j, then i
        q, r = np.linalg.qr(d[:, ::-1])
        q = q * np.sign(np.diag(r))[None, :]
        return q[:, ::-1]
    if axes == "world":
        return LPS_TO_RAS.copy()  # columns: R, A, S in LPS
    raise ValueError(f"axes must be 'image' or 'world', got {axes!r}")


# ------------------------------------------------------------------------------- API
def tlcr_box(tumour_mask: Volume, image: Optional[Volume] = None, *,
             size: Sequence[int] = DEFAULT_CROP_SIZE, spacing: Sequence[float] = DEFAULT_CROP_SPACING,
             axes: str = "image", centre: str = "centroid", label: Optional[int] = None) -> CropBox:
    """The TLCR box for a tumour mask: a fixed physical box centred on its largest component.

    ``tumour_mask``: a Volume whose nonzero voxels (or voxels equal to ``label``) are tumour.
    ``image``: optional; when given, the mask must share its geometry (else InputError).
    ``size`` (voxels) and ``spacing`` (mm) are in (i, j, k) order, default 96 x 96 x 48 at
    1.5625 x 1.5625 x 4 mm (assumption, see the module docstring), whatever the input spacing.
    ``axes``: "image" (the image axes reordered to the closest RAS) or "world" (exact RAS).
    ``centre``: "centroid" (centre of mass of the largest component) or "bbox".
    """
    _check_volume(tumour_mask, "the tumour mask")
    if image is not None:
        _check_volume(image, "the image")
        if not tumour_mask.same_geometry(image, atol=1e-3):
            raise InputError("the tumour mask does not have the image's geometry (shape, spacing, origin "
                             "or direction differ); resample the mask onto the image first")
    arr = tumour_mask.array
    m = (arr == label) if label is not None else (arr != 0)
    if not np.any(m):
        raise InputError("no tumour found in the tumour mask (it is empty); supply a tumour mask "
                         "or a segmentation that contains the tumour")
    comp = largest_component(m)
    if centre == "centroid":
        kji = np.array(ndimage.center_of_mass(comp))
    elif centre == "bbox":
        idx = np.nonzero(comp)
        kji = np.array([(ix.min() + ix.max()) / 2.0 for ix in idx])
    else:
        raise ValueError(f"centre must be 'centroid' or 'bbox', got {centre!r}")
    c = tumour_mask.ijk_to_world(kji[::-1])[0]
    size_ijk = np.array([int(s) for s in size])
    sp = np.array([float(s) for s in spacing])
    if size_ijk.shape != (3,) or sp.shape != (3,) or np.any(size_ijk < 1) or np.any(sp <= 0):
        raise ValueError("size and spacing need three positive values (i, j, k)")
    direction = _box_direction(tumour_mask, axes)
    origin = c - direction @ np.diag(sp) @ ((size_ijk - 1) / 2.0)
    return CropBox(tuple(int(v) for v in size_ijk[::-1]), tuple(float(v) for v in sp),
                   tuple(float(v) for v in origin), direction, tuple(float(v) for v in c))


def apply_crop(volume: Volume, box: CropBox, interpolation: str = "linear",
               fill: Optional[float] = None) -> Volume:
    """Resample ``volume`` onto the box grid (same box for the image and all its masks).

    ``interpolation`` "linear" (images; float32 result, float64 kept) or "nearest" (masks; the
    input dtype is kept, bool becomes uint8). ``fill`` is written where the box leaves the image;
    default: the image minimum for "linear", 0 for "nearest".
    """
    _check_volume(volume, "the volume to crop")
    if fill is None:
        fill = float(np.min(volume.array)) if interpolation == "linear" else 0.0
    return resample(volume, box.shape, box.spacing, box.origin, box.direction, interpolation, fill)


def invert_crop(crop_volume: Volume, reference: Volume, interpolation: str = "linear",
                fill: float = 0.0) -> Volume:
    """Map a crop-space volume (heat map, mask) back onto ``reference``'s grid; outside the box = ``fill`` (0).

    Uses the crop volume's own geometry, so it works for any box made by :func:`tlcr_box`.
    """
    _check_volume(crop_volume, "the crop-space volume")
    _check_volume(reference, "the reference image")
    return resample_like(crop_volume, reference, interpolation, fill)


def box_as_roi(box: CropBox) -> dict:
    """What a Slicer markups ROI needs, in RAS.

    Returns ``centre_ras`` (centre of the box, mm), ``size_mm`` (edge to edge along the box i, j,
    k axes), ``orientation_ras`` (3x3 rotation, columns = RAS directions of the box axes) and
    ``object_to_world_ras`` (4x4: that rotation plus the centre as translation), e.g.
    ``roi.SetSize(*size_mm)``, ``roi.SetObjectToNodeMatrix(...)`` with the 4x4, or
    ``roi.SetCenterWorld(*centre_ras)`` after setting the 3x3 orientation.
    """
    m = box.index_to_lps()
    centre_lps = m[:3, :3] @ ((np.array(box.size_ijk, dtype=np.float64) - 1) / 2.0) + m[:3, 3]
    centre_ras = LPS_TO_RAS @ centre_lps
    orient = LPS_TO_RAS @ np.asarray(box.direction, dtype=np.float64)
    obj = np.eye(4)
    obj[:3, :3] = orient
    obj[:3, 3] = centre_ras
    return {"centre_ras": [float(v) for v in centre_ras], "size_mm": [float(v) for v in box.size_mm],
            "orientation_ras": orient, "object_to_world_ras": obj}
