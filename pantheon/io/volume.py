"""The one image type of Pantheon: a numpy array plus its exact geometry.

Convention (the ITK / SimpleITK / DICOM one, stated once and used everywhere):

- ``array`` is indexed ``array[k, j, i]`` (slowest axis first, as ``sitk.GetArrayFromImage``
  and ``slicer.util.arrayFromVolume`` return it). A multi-component image (RGB, PCA map) has
  one more trailing axis: ``array[k, j, i, c]``. A 2D image is a volume with one slice (K = 1).
- ``spacing`` = (si, sj, sk) in millimetres, in **i, j, k** order (x, y, z of ITK).
- ``origin`` = world position of the centre of voxel (i, j, k) = (0, 0, 0), in **LPS** millimetres.
- ``direction`` = 3x3 matrix whose **columns** are the unit world (LPS) directions of the
  i, j and k index axes.

So the world (LPS) position of voxel centre (i, j, k) is ``origin + direction @ diag(spacing) @ [i, j, k]``.
Slicer's RAS world differs by flipping the first two world axes.

``metadata`` (a dict, not part of the geometry) says what the file said about the image when a
reader made the volume: ``format``, DICOM ``modality``, label ``segments`` ({value: name}, from a
.seg.nrrd or a Slicer colour table). Derived volumes (``with_array``, reorientation) start empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Tuple

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _as_direction(direction) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    if d.size == 9:
        d = d.reshape(3, 3)
    if d.shape != (3, 3):
        raise ValueError(f"direction must be a 3x3 matrix, got shape {d.shape}")
    return d


@dataclass
class Volume:
    """A 3D (or single-slice 2D) image with its geometry; see the module docstring for the convention."""

    array: np.ndarray
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    components: int = 1
    metadata: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        a = np.asarray(self.array)
        if a.ndim == 2:  # a plain 2D image becomes one slice
            a = a[np.newaxis]
        if self.components > 1:
            if a.ndim != 4 or a.shape[-1] != self.components:
                raise ValueError(f"a {self.components}-component volume needs shape (K, J, I, {self.components}), "
                                 f"got {a.shape}")
        elif a.ndim == 4 and a.shape[-1] > 1:
            self.components = int(a.shape[-1])
        elif a.ndim != 3:
            raise ValueError(f"a volume array must be (K, J, I) or (K, J, I, C), got shape {a.shape}")
        self.array = a
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError("spacing and origin need three values (i, j, k order)")
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")
        self.direction = _as_direction(self.direction)
        self.metadata = dict(self.metadata or {})

    # ----------------------------------------------------------------- shape helpers
    @property
    def shape(self) -> Tuple[int, int, int]:
        """Spatial shape (K, J, I), as in the array."""
        return tuple(int(s) for s in self.array.shape[:3])

    @property
    def size_ijk(self) -> Tuple[int, int, int]:
        """Spatial size in (I, J, K) order, as SimpleITK's GetSize()."""
        k, j, i = self.shape
        return (i, j, k)

    @property
    def is_2d(self) -> bool:
        return self.shape[0] == 1

    # ----------------------------------------------------------------- geometry
    def index_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def index_to_ras(self) -> np.ndarray:
        """4x4 IJKToRAS matrix, as Slicer's vtkMRMLVolumeNode.GetIJKToRASMatrix()."""
        m = self.index_to_lps()
        m[:3] = np.diag([-1.0, -1.0, 1.0, 1.0])[:3] @ m
        return m

    def ijk_to_world(self, ijk, ras: bool = False) -> np.ndarray:
        """World positions (N, 3) of continuous indices (N, 3) given in (i, j, k) order."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        m = self.index_to_ras() if ras else self.index_to_lps()
        return ijk @ m[:3, :3].T + m[:3, 3]

    def world_to_ijk(self, points, ras: bool = False) -> np.ndarray:
        """Continuous (i, j, k) indices (N, 3) of world points (N, 3), LPS unless ``ras``."""
        p = np.atleast_2d(np.asarray(points, dtype=np.float64))
        m = self.index_to_ras() if ras else self.index_to_lps()
        return (p - m[:3, 3]) @ np.linalg.inv(m[:3, :3]).T

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume with the same geometry and another array of the same spatial shape."""
        a = np.asarray(array)
        if a.ndim == 2 and self.is_2d:
            a = a[np.newaxis]
        if tuple(a.shape[:3]) != self.shape:
            raise ValueError(f"array shape {a.shape[:3]} does not match the volume's {self.shape}")
        comps = int(a.shape[3]) if a.ndim == 4 else 1
        return Volume(a, self.spacing, self.origin, self.direction.copy(), comps)

    def same_geometry(self, other: "Volume", atol: float = 1e-5) -> bool:
        return (self.shape == other.shape
                and np.allclose(self.index_to_lps(), other.index_to_lps(), atol=atol))

    # ----------------------------------------------------------------- reorientation (exact)
    def axis_permutation_to_canonical(self, code: str = "RAS"):
        """Permutation and flips that bring the voxel axes closest to ``code`` without resampling.

        Returns ``(perm, flip)``: new axis n (in i, j, k order) is old axis ``perm[n]``, flipped
        when ``flip[n]``. Only permutes and flips, so every voxel keeps its exact world position.
        """
        letters = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
        target = [letters[c] for c in code.upper()]
        if sorted(t[0] for t in target) != [0, 1, 2]:
            raise ValueError(f"orientation code {code!r} must name each of R/L, A/P, S/I once")
        ras_dirs = LPS_TO_RAS @ self.direction  # columns: RAS directions of i, j, k
        perm, flip, used = [0, 0, 0], [False] * 3, set()
        # Greedy on the largest |cosine| first: stable for oblique volumes.
        pairs = sorted(((abs(ras_dirs[t[0], a]), n, a) for n, t in enumerate(target) for a in range(3)), reverse=True)
        assigned = set()
        for _, n, a in pairs:
            if n in assigned or a in used:
                continue
            world_axis, sign = target[n]
            perm[n] = a
            flip[n] = bool(np.sign(ras_dirs[world_axis, a]) != sign and ras_dirs[world_axis, a] != 0)
            assigned.add(n)
            used.add(a)
        return tuple(perm), tuple(flip)

    def reoriented(self, perm: Sequence[int], flip: Sequence[bool]) -> "Volume":
        """The same image with voxel axes permuted/flipped (see axis_permutation_to_canonical)."""
        arr = self.array
        # array axes are (k, j, i): index-axis a lives at array axis 2 - a
        arr_perm = [2 - perm[2], 2 - perm[1], 2 - perm[0]] + ([3] if arr.ndim == 4 else [])
        arr = np.transpose(arr, arr_perm)
        for n in range(3):
            if flip[n]:
                arr = np.flip(arr, axis=2 - n)
        size_old = np.array(self.size_ijk, dtype=np.float64)
        cols = self.direction @ np.diag(self.spacing)
        new_cols = np.zeros((3, 3))
        origin = np.array(self.origin, dtype=np.float64)
        for n in range(3):
            col = cols[:, perm[n]]
            if flip[n]:
                origin = origin + col * (size_old[perm[n]] - 1)
                col = -col
            new_cols[:, n] = col
        spacing = np.linalg.norm(new_cols, axis=0)
        direction = new_cols / spacing
        return Volume(np.ascontiguousarray(arr), tuple(spacing), tuple(origin), direction, self.components)

    def to_canonical(self, code: str = "RAS"):
        """(canonical volume, undo) where ``undo(v)`` maps a volume in the canonical grid back onto this grid."""
        perm, flip = self.axis_permutation_to_canonical(code)
        canon = self.reoriented(perm, flip)
        inv_perm = [0, 0, 0]
        for n, a in enumerate(perm):
            inv_perm[a] = n

        def undo(v: "Volume") -> "Volume":
            # first undo the flips (in canonical axes), then the permutation
            unflipped = v.reoriented((0, 1, 2), flip)
            back = unflipped.reoriented(inv_perm, (False, False, False))
            return back

        return canon, undo

    # ----------------------------------------------------------------- conversions (lossless; see convert.py)
    @classmethod
    def from_sitk(cls, img, name: str = "the image") -> "Volume":
        """From a 2D or 3D SimpleITK image (already LPS); vector pixels become components."""
        from .convert import sitk_parts
        return cls(*sitk_parts(img, name))

    def to_sitk(self):
        """A 3D SimpleITK image with the same geometry (bool -> uint8, float16 -> float32)."""
        from .convert import to_sitk
        return to_sitk(self)

    @classmethod
    def from_nibabel(cls, img, name: str = "the image") -> "Volume":
        """From a nibabel NIfTI image, its qform/sform read as ITK does (see convert.nifti_itk_affine), RAS -> LPS."""
        from .convert import nibabel_parts
        return cls(*nibabel_parts(img, name))

    def to_nibabel(self):
        """A nibabel Nifti1Image with sform and qform both set (code 1), RAS affine."""
        from .convert import to_nibabel
        return to_nibabel(self)

    @classmethod
    def from_slicer(cls, array_kji, ijk_to_ras, name: str = "the image") -> "Volume":
        """From ``slicer.util.arrayFromVolume(node)`` and the node's IJKToRAS matrix (4x4, RAS)."""
        from .convert import slicer_parts
        return cls(*slicer_parts(array_kji, ijk_to_ras, name))

    def to_slicer(self):
        """``(array_kji, ijk_to_ras_4x4)``, for updateVolumeFromArray and SetIJKToRASMatrix."""
        from .convert import to_slicer
        return to_slicer(self)
