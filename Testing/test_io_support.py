"""Shared helpers for the pantheon.io tests (imported by the other test_io_* files), plus their self-tests.

The central check, :func:`assert_same_voxels`, is deliberately independent of how either volume
indexes its voxels: every voxel centre of ``a`` must be a voxel centre of ``b`` at the same world
position (within ``atol_mm``) holding the same value, one-to-one. So it also accepts exact
reorientations (permuted / flipped axes), and it catches any half-voxel or axis-order mistake.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pantheon.io import Volume

WORLD_ATOL_MM = 1e-5


def random_rotation(seed: int, left_handed: bool = False) -> np.ndarray:
    r = Rotation.random(random_state=seed).as_matrix()
    if left_handed:  # a mirrored grid (determinant -1), as LPS/RAS-flipped files have
        r = r @ np.diag([1.0, 1.0, -1.0])
    return r


def random_volume(seed: int, shape=(4, 5, 6), dtype=np.int16, components: int = 1,
                  left_handed: bool = False, oblique: bool = True) -> Volume:
    """A small volume with anisotropic spacing, an off-centre origin and (by default) oblique axes."""
    rng = np.random.default_rng(seed)
    full = tuple(shape) + ((components,) if components > 1 else ())
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -3000), min(info.max, 3000), full, endpoint=True).astype(dtype)
    else:
        arr = (rng.standard_normal(full) * 100).astype(dtype)
    spacing = tuple(rng.uniform(0.3, 3.0, 3))
    origin = tuple(rng.uniform(-60.0, 60.0, 3))
    direction = random_rotation(seed, left_handed) if oblique else np.eye(3)
    return Volume(arr, spacing, origin, direction, components)


def voxel_indices(shape_kji) -> np.ndarray:
    """All voxel indices (N, 3) in (i, j, k) order, listed in array (k, j, i) C order."""
    k, j, i = np.indices(shape_kji).reshape(3, -1)
    return np.stack([i, j, k], axis=1)


def voxel_values(vol: Volume) -> np.ndarray:
    """Values (N, C) in the same order as voxel_indices."""
    return vol.array.reshape(int(np.prod(vol.shape)), -1)


def assert_same_voxels(a: Volume, b: Volume, atol_mm: float = WORLD_ATOL_MM, value_atol: float = 0.0):
    """Every voxel centre of ``a`` is one of ``b`` at the same LPS position with the same value (bijection)."""
    assert a.components == b.components, f"components {a.components} != {b.components}"
    n = int(np.prod(a.shape))
    assert n == int(np.prod(b.shape)), f"voxel counts differ: {a.shape} vs {b.shape}"
    ijk = voxel_indices(a.shape)
    world = a.ijk_to_world(ijk)
    idx_b = np.rint(b.world_to_ijk(world))
    size_b = np.array(b.size_ijk)
    assert np.all(idx_b >= 0) and np.all(idx_b < size_b), "some voxel centres of a fall outside b"
    err = np.abs(b.ijk_to_world(idx_b) - world).max()
    assert err <= atol_mm, f"voxel centres moved by up to {err:.3g} mm"
    idx_b = idx_b.astype(int)
    flat_b = np.ravel_multi_index((idx_b[:, 2], idx_b[:, 1], idx_b[:, 0]), b.shape)
    assert np.unique(flat_b).size == n, "voxel correspondence is not one-to-one"
    va = voxel_values(a)
    vb = voxel_values(b)[flat_b]
    if value_atol:
        np.testing.assert_allclose(vb.astype(np.float64), va.astype(np.float64), atol=value_atol, rtol=0)
    else:
        np.testing.assert_array_equal(vb, va)


def assert_matches_reference(vol: Volume, ijk_to_ras: np.ndarray, data_ijk: np.ndarray,
                             atol_mm: float = WORLD_ATOL_MM):
    """``vol`` shows voxel (i, j, k) of a reference ``data_ijk`` at ``ijk_to_ras @ (i, j, k, 1)``.

    The reference is what a raw file says (nibabel affine, NRRD header, DICOM tags), computed
    without any Pantheon code.
    """
    shape_ijk = data_ijk.shape[:3]
    i, j, k = np.indices(shape_ijk).reshape(3, -1)
    ijk = np.stack([i, j, k], axis=1).astype(np.float64)
    expected_ras = ijk @ np.asarray(ijk_to_ras)[:3, :3].T + np.asarray(ijk_to_ras)[:3, 3]
    got_ras = vol.ijk_to_world(ijk, ras=True)
    err = np.abs(got_ras - expected_ras).max()
    assert err <= atol_mm, f"world positions off by up to {err:.3g} mm"
    assert vol.size_ijk == tuple(shape_ijk)
    np.testing.assert_array_equal(vol.array[k, j, i], data_ijk[i, j, k])


# --------------------------------------------------------------------------- self-tests
def test_helper_accepts_identity_and_exact_reorientation():
    v = random_volume(1)
    assert_same_voxels(v, v)
    canon, _ = v.to_canonical()
    assert_same_voxels(v, canon)


def test_helper_catches_shift_flip_and_value_change():
    v = random_volume(2)
    shifted = Volume(v.array, v.spacing, np.add(v.origin, v.direction[:, 0] * v.spacing[0]), v.direction)
    with pytest.raises(AssertionError):
        assert_same_voxels(v, shifted)
    half = Volume(v.array, v.spacing, np.add(v.origin, v.direction[:, 1] * v.spacing[1] / 2), v.direction)
    with pytest.raises(AssertionError):
        assert_same_voxels(v, half)
    flipped_array = v.with_array(v.array[:, :, ::-1])  # array flipped, geometry not
    with pytest.raises(AssertionError):
        assert_same_voxels(v, flipped_array)
    changed = v.array.copy()
    changed[1, 2, 3] += 1
    with pytest.raises(AssertionError):
        assert_same_voxels(v, v.with_array(changed))
    tiny = Volume(v.array, v.spacing, np.add(v.origin, [2e-5, 0, 0]), v.direction)
    with pytest.raises(AssertionError):
        assert_same_voxels(v, tiny)
