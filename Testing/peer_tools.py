"""The tools other people read Pantheon's files with, run for real, and comparisons with what we meant.

- ``dciodvfy`` (David Clunie's dicom3tools; Debian package ``dicom3tools``): IOD conformance.
- dcmqi's ``segimage2itkimage`` (PyPI ``dcmqi``): the DICOM SEG reader behind 3D Slicer's DICOM SEG
  import; it rebuilds a volume from the SEG alone (plane positions, SpacingBetweenSlices).
- highdicom's reader: ``segread`` + ``get_volume`` (also from the SEG alone) or frames by source
  instance.
- ``slicerio`` (PyPI): reads ``.seg.nrrd`` the way Slicer's storage node lays it out.

:func:`require` skips a test whose tool is missing, with the reason, unless the environment
variable ``CI`` is set (``.ci/run`` installs them all): then it fails. :func:`world_problems` is
the voxel-exact comparison used for every round trip: an array with an index -> LPS affine against
the label map Pantheon wrote, voxel by voxel in world space, whatever the axis order, flips or
cropping of the array read back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(available: bool, reason: str) -> None:
    if available:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI must run this check; .ci/run installs it)")
    pytest.skip(reason)


# --------------------------------------------------------------------------- dciodvfy
def dciodvfy() -> str:
    exe = shutil.which("dciodvfy")
    require(exe is not None, "dciodvfy is not installed (Debian/Ubuntu: apt-get install dicom3tools)")
    return exe


def run_dciodvfy(path) -> Tuple[List[str], List[str]]:
    """(error lines, warning lines) of dciodvfy on ``path``."""
    proc = subprocess.run([dciodvfy(), str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


# --------------------------------------------------------------------------- dcmqi
def dcmqi_binary(name: str) -> str:
    try:
        import dcmqi
    except ImportError:
        dcmqi = None
    exe = Path(dcmqi.__file__).parent / "bin" / name if dcmqi is not None else None
    require(exe is not None and exe.is_file(), f"dcmqi's {name} is not installed (pip install dcmqi)")
    return str(exe)


def dcmqi_read(seg_path, workdir) -> Tuple[int, str, Optional[object], Optional[dict]]:
    """segimage2itkimage --mergeSegments: (return code, its output, SimpleITK image or None, meta.json or None)."""
    import SimpleITK as sitk

    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([dcmqi_binary("segimage2itkimage"), "--inputDICOM", str(seg_path), "--outputDirectory",
                           str(out), "--mergeSegments", "-t", "nrrd"], capture_output=True, text=True, timeout=300)
    images = sorted(out.glob("*.nrrd"))
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").is_file() else None
    image = sitk.ReadImage(str(images[0])) if proc.returncode == 0 and len(images) == 1 else None
    return proc.returncode, proc.stdout + proc.stderr, image, meta


def sitk_affine(image) -> np.ndarray:
    """4x4 affine from the index of ``sitk.GetArrayFromImage(image)`` (k, j, i) to LPS."""
    d = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    a = np.eye(4)
    a[:3, :3] = d[:, ::-1]
    a[:3, 3] = image.GetOrigin()
    return a


def pantheon_affine(vol) -> np.ndarray:
    """4x4 affine from the index of ``vol.array`` (k, j, i) to LPS."""
    d = np.asarray(vol.direction) * np.asarray(vol.spacing)
    a = np.eye(4)
    a[:3, :3] = d[:, ::-1]
    a[:3, 3] = vol.origin
    return a


# --------------------------------------------------------------------------- the comparison
def world_problems(expected: np.ndarray, expected_affine: np.ndarray, got: np.ndarray, got_affine: np.ndarray,
                   atol_mm: float = 1e-2) -> List[str]:
    """[] when ``got`` puts every voxel value of ``expected`` at the same world position.

    Both affines map array indices to LPS mm. ``got`` may have another axis order, flipped axes or
    a smaller extent (readers crop to the frames present); every voxel of ``got`` must land on a
    voxel of ``expected`` within ``atol_mm`` at the far corner and hold its value, and no non-zero
    voxel of ``expected`` may lie outside ``got``.
    """
    got = np.asarray(got)
    if got.ndim != 3:
        return [f"the array read back has {got.ndim} dimensions"]
    m = np.linalg.inv(expected_affine) @ got_affine  # got index -> expected index
    lin = np.round(m[:3, :3])
    if not np.all(np.isin(lin, (-1.0, 0.0, 1.0))) or sorted(np.abs(lin).sum(0)) != [1, 1, 1] or \
            sorted(np.abs(lin).sum(1)) != [1, 1, 1]:
        return [f"the voxel grids differ (index mapping {np.round(m[:3, :3], 4).tolist()})"]
    shift = np.round(m[:3, 3])
    corners = np.array([[a, b, c, 1] for a in (0, got.shape[0] - 1) for b in (0, got.shape[1] - 1)
                        for c in (0, got.shape[2] - 1)], dtype=float).T
    exact = np.vstack([lin @ corners[:3] + shift[:, None], np.ones(8)])
    off = np.abs(expected_affine @ (m @ corners) - expected_affine @ exact)[:3].max()
    if off > atol_mm:
        return [f"voxels read back lie {off:.3g} mm from the written ones"]
    idx = np.indices(got.shape).reshape(3, -1)
    e_idx = (lin @ idx + shift[:, None]).astype(int)
    inside = np.all((e_idx >= 0) & (e_idx < np.array(expected.shape)[:, None]), axis=0)
    if not inside.all():
        return [f"{int((~inside).sum())} voxels read back lie outside the written volume"]
    values = expected[tuple(e_idx)]
    problems = []
    wrong = int(np.count_nonzero(values != got.reshape(-1)))
    if wrong:
        problems.append(f"{wrong} voxels read back differ from the written ones")
    missing = int(np.count_nonzero(expected)) - int(np.count_nonzero(values))
    if missing:
        problems.append(f"{missing} labelled voxels are outside the volume read back")
    return problems


# --------------------------------------------------------------------------- highdicom, slicerio
def highdicom_volume(seg_path) -> Tuple[np.ndarray, np.ndarray]:
    """(segment-number array, index -> LPS affine) as highdicom rebuilds it from the SEG alone."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    vol = seg.get_volume(combine_segments=True, relabel=False)
    return np.asarray(vol.array), np.asarray(vol.affine)


def slicerio_read(path) -> dict:
    try:
        import slicerio
    except ImportError:
        slicerio = None
    require(slicerio is not None, "slicerio is not installed (pip install slicerio)")
    return slicerio.read_segmentation(str(path))
