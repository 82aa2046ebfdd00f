"""pantheon.io.resample: the one grid-to-grid resampler (NeoNet's model grid, TLCR crop and back).

Checked on hand-computed numbers (a 2x downsample), on world geometry (a value stays at its world
position whatever the target grid's axes, spacing or tilt) and on the dtype / border rules."""

import numpy as np
import pytest

from pantheon.io.resample import resample, resample_like
from pantheon.io.volume import Volume


def _separable():
    """a[k, j, i] = v[i] + 10 w[j] + 100 u[k] on a 4 x 4 x 4 grid of 1 mm voxels at the origin."""
    v, w, u = np.array([0.0, 2, 4, 8]), np.array([0.0, 1, 3, 3]), np.array([0.0, 0, 1, 5])
    a = v[None, None, :] + 10 * w[None, :, None] + 100 * u[:, None, None]
    return Volume(a.astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def test_2x_downsample_by_hand():
    # Target voxel centres at 0.5 and 2.5 mm on each axis: halfway between source voxels 0|1 and
    # 2|3, so linear interpolation of a sum of per-axis profiles averages each pair:
    # v -> (0+2)/2, (4+8)/2 = 1, 6;  w -> 0.5, 3;  u -> 0, 3.
    out = resample(_separable(), (2, 2, 2), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5), np.eye(3), "linear")
    want = np.array([[[1 + 5, 6 + 5], [1 + 30, 6 + 30]],
                     [[1 + 5 + 300, 6 + 5 + 300], [1 + 30 + 300, 6 + 30 + 300]]], np.float32)
    np.testing.assert_allclose(out.array, want, atol=1e-5)
    assert out.array.dtype == np.float32
    assert out.spacing == (2.0, 2.0, 2.0) and out.origin == (0.5, 0.5, 0.5)
    np.testing.assert_array_equal(out.direction, np.eye(3))


def test_nearest_downsample_picks_source_voxels_and_keeps_the_dtype():
    labels = Volume(np.arange(64, dtype=np.uint16).reshape(4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    # target centres exactly on source voxels 1 and 3 of each axis (no tie to break)
    out = resample(labels, (2, 2, 2), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), np.eye(3), "nearest")
    np.testing.assert_array_equal(out.array, labels.array[1::2, 1::2, 1::2])
    assert out.array.dtype == np.uint16
    mask = labels.with_array(labels.array % 2 == 0)
    assert resample(mask, (2, 2, 2), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), np.eye(3), "nearest").array.dtype == np.uint8


def _rotation(axis, angle):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def test_values_stay_at_their_world_position_on_a_tilted_grid():
    # A field linear in world space, sampled on an oblique source grid, resampled onto another
    # oblique grid with other spacing and flipped axes: each target voxel holds the field at its
    # own world centre (linear interpolation of a linear field is exact).
    c, d = np.array([0.7, -1.3, 2.1]), 5.0
    src_dir = _rotation((1, 2, 3), 0.4)
    src = Volume(np.zeros((20, 24, 28), np.float64), (1.5, 1.2, 2.0), (-10.0, 4.0, 30.0), src_dir)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in src.size_ijk), indexing="ij")
    world = src.ijk_to_world(np.stack([ii, jj, kk], -1).reshape(-1, 3))
    src = src.with_array((world @ c + d).reshape(src.size_ijk).transpose(2, 1, 0))

    tgt_dir = _rotation((-1, 0, 2), 0.3) @ np.diag([1.0, -1.0, -1.0])
    centre = src.ijk_to_world((np.array(src.size_ijk) - 1) / 2.0)[0]
    shape, spacing = (6, 7, 8), (2.0, 1.7, 2.5)
    origin = centre - tgt_dir @ np.diag(spacing) @ ((np.array(shape[::-1]) - 1) / 2.0)
    out = resample(src, shape, spacing, origin, tgt_dir, "linear")
    assert out.array.dtype == np.float64 and out.shape == shape
    np.testing.assert_allclose(out.direction, tgt_dir)
    ti, tj, tk = np.meshgrid(*(np.arange(n) for n in out.size_ijk), indexing="ij")
    tworld = out.ijk_to_world(np.stack([ti, tj, tk], -1).reshape(-1, 3))
    want = (tworld @ c + d).reshape(out.size_ijk).transpose(2, 1, 0)
    np.testing.assert_allclose(out.array, want, atol=1e-9)


def test_flipped_and_permuted_grid_moves_voxels_not_values():
    labels = Volume(np.random.default_rng(0).integers(0, 5, (3, 4, 5)).astype(np.uint8), (1.0, 2.0, 3.0),
                    (1.0, 2.0, 3.0), _rotation((0, 0, 1), 0.2))
    ras, _ = labels.to_canonical("RAS")  # the same voxel centres, axes permuted and flipped
    out = resample_like(labels, ras, "nearest")
    np.testing.assert_array_equal(out.array, ras.array)
    back = resample_like(out, labels, "nearest")
    np.testing.assert_array_equal(back.array, labels.array)


def test_outside_the_source_fill_or_nearest_extrapolation():
    img = _separable()
    # one voxel before the first source centre and one after the last, along i
    kw = dict(shape=(1, 1, 6), spacing=(1.0, 1.0, 1.0), origin=(-1.0, 0.0, 0.0), direction=np.eye(3))
    filled = resample(img, interpolation="linear", fill=-7.0, **kw).array[0, 0]
    np.testing.assert_allclose(filled, [-7, 0, 2, 4, 8, -7])
    edge = resample(img, interpolation="linear", extrapolate=True, **kw).array[0, 0]
    np.testing.assert_allclose(edge, [0, 0, 2, 4, 8, 8])


def test_unknown_interpolation_is_refused():
    with pytest.raises(ValueError, match="'linear' or 'nearest'"):
        resample_like(_separable(), _separable(), "cubic")
