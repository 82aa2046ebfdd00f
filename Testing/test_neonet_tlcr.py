"""Tests of pantheon.models.neonet.tlcr: NeoNet's tumour-localised ROI crop (TLCR).

Checks what the classifier and the Slicer module depend on: the box is a fixed physical box
(96 x 96 x 48 at 1.5625 x 1.5625 x 4 mm by default) centred on the largest tumour component,
image and masks are cropped onto the same exact grid (geometry to 1e-3 mm), padding uses the
fill value, and crop-space results map back onto the original grid.
"""

import numpy as np
import pytest

from pantheon.errors import InputError
from pantheon.io.volume import LPS_TO_RAS, Volume
from pantheon.models.neonet.tlcr import CropBox, apply_crop, box_as_roi, invert_crop, tlcr_box
from pantheon.synth.ct_phantom import _rotation, orientation_matrix

GEOMETRIES = {
    "identity": dict(spacing=(1.0, 1.0, 2.0), direction=np.eye(3)),
    "flipped_ras": dict(spacing=(1.2, 1.2, 3.0), direction=orientation_matrix("RAI")),
    "oblique_permuted": dict(spacing=(1.4, 2.5, 1.1),
                             direction=_rotation((1, 2, 0.5), np.radians(17)) @ orientation_matrix("ASR")),
}


def _volume(shape_kji, spacing, direction, centre=(10.0, -20.0, 30.0), dtype=np.float32):
    """A zero volume of that shape whose centre sits at ``centre`` (LPS)."""
    d = np.asarray(direction, dtype=np.float64)
    size_ijk = np.array(shape_kji[::-1], dtype=np.float64)
    origin = np.asarray(centre) - d @ np.diag(spacing) @ ((size_ijk - 1) / 2)
    return Volume(np.zeros(shape_kji, dtype=dtype), spacing, tuple(origin), d)


def _world_grid(vol):
    k, j, i = np.indices(vol.shape, dtype=np.float64)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return vol.ijk_to_world(ijk).reshape(vol.shape + (3,))


def _ellipsoid(vol, centre, radii):
    w = _world_grid(vol) - np.asarray(centre)
    return (((w / np.asarray(radii)) ** 2).sum(axis=-1) <= 1.0).astype(np.uint8)


def _dice(a, b):
    a, b = a != 0, b != 0
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_box_on_largest_component_fixed_size():
    vol = _volume((40, 90, 90), (1.0, 1.0, 2.0), np.eye(3))
    big_c, small_c = np.array([0.0, -20.0, 30.0]), np.array([25.0, 0.0, 30.0])
    mask = _ellipsoid(vol, big_c, (12, 10, 14)) | _ellipsoid(vol, small_c, (6, 6, 8))
    box = tlcr_box(vol.with_array(mask))
    assert isinstance(box, CropBox)
    assert box.shape == (48, 96, 96) and box.spacing == (1.5625, 1.5625, 4.0)
    assert np.allclose(box.size_mm, (150.0, 150.0, 192.0))
    assert np.linalg.norm(np.asarray(box.centre_lps) - big_c) < 0.2
    m = box.index_to_lps()
    mid = m[:3, :3] @ ((np.array(box.size_ijk) - 1) / 2) + m[:3, 3]
    assert np.allclose(mid, box.centre_lps, atol=1e-6)
    # axes: i -> patient Right, j -> Anterior, k -> Superior (RAS) for an LPS image
    assert np.allclose(box.direction, LPS_TO_RAS)
    crop = apply_crop(vol.with_array(mask), box, "nearest")
    assert crop.shape == (48, 96, 96) and crop.array.dtype == np.uint8
    assert crop.array.sum() > 0


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_fixed_physical_box_any_input_spacing(name):
    g = GEOMETRIES[name]
    vol = _volume((50, 70, 70), g["spacing"], g["direction"])
    c = np.array([12.0, -18.0, 27.0])
    box = tlcr_box(vol.with_array(_ellipsoid(vol, c, (15, 12, 18))), vol)
    assert box.shape == (48, 96, 96) and np.allclose(box.size_mm, (150.0, 150.0, 192.0))
    d = np.asarray(box.direction)
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-9) and np.linalg.det(d) > 0
    ras = LPS_TO_RAS @ d  # columns closest to R, A, S
    assert np.all(np.argmax(np.abs(ras), axis=0) == [0, 1, 2]) and np.all(np.diag(ras) > 0)
    assert np.linalg.norm(np.asarray(box.centre_lps) - c) < 0.5
    roi = box_as_roi(box)
    assert np.allclose(roi["centre_ras"], LPS_TO_RAS @ np.asarray(box.centre_lps))
    assert np.allclose(roi["size_mm"], (150.0, 150.0, 192.0))
    assert np.allclose(roi["orientation_ras"], ras)
    assert np.allclose(roi["object_to_world_ras"][:3, 3], roi["centre_ras"])
    world = tlcr_box(vol.with_array(_ellipsoid(vol, c, (15, 12, 18))), axes="world")
    assert np.allclose(world.direction, LPS_TO_RAS)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_crop_geometry_exact(name):
    """A linear function of world position is reproduced exactly by the linear crop."""
    g = GEOMETRIES[name]
    vol = _volume((60, 80, 80), g["spacing"], g["direction"], dtype=np.float64)
    w = _world_grid(vol)
    coef = np.array([1.0, -2.0, 0.5])
    img = vol.with_array(w @ coef + 500.0)
    mask = vol.with_array(_ellipsoid(vol, (20.0, -10.0, 35.0), (10, 10, 10)))
    box = tlcr_box(mask, img)
    crop = apply_crop(img, box)
    cw = _world_grid(crop)
    expected = cw @ coef + 500.0
    src = vol.world_to_ijk(cw.reshape(-1, 3)).reshape(cw.shape)
    n = np.array(vol.size_ijk)
    inside = np.all((src >= 0) & (src <= n - 1), axis=-1)
    assert inside.sum() > 10000
    assert np.max(np.abs(crop.array[inside] - expected[inside])) < 1e-3
    # and outside the image it is the fill value (the image minimum)
    outside = np.any((src < -0.5 - 1e-6) | (src > n - 0.5 + 1e-6), axis=-1)
    assert outside.sum() > 0 and np.all(crop.array[outside] == img.array.min())
    # the crop grid is the box grid
    assert np.allclose(crop.index_to_lps(), box.index_to_lps())


def test_edge_tumour_padded_with_fill():
    vol = _volume((30, 60, 60), (1.5, 1.5, 3.0), orientation_matrix("RAS"))
    rng = np.random.default_rng(0)
    img = vol.with_array(rng.uniform(10.0, 20.0, vol.shape).astype(np.float32))
    corner = vol.ijk_to_world([[3, 3, 2]])[0]
    mask = vol.with_array(_ellipsoid(vol, corner, (5, 5, 6)))
    box = tlcr_box(mask, img)
    crop_img, crop_mask = apply_crop(img, box), apply_crop(mask, box, "nearest")
    src = vol.world_to_ijk(_world_grid(crop_img).reshape(-1, 3)).reshape(crop_img.shape + (3,))
    n = np.array(vol.size_ijk)
    outside = np.any((src < -0.5 - 1e-6) | (src > n - 0.5 + 1e-6), axis=-1)
    assert 0.3 < outside.mean() < 0.99  # a corner tumour: much of the box lies outside the image
    assert np.all(crop_img.array[outside] == img.array.min())
    assert np.all(crop_img.array[~outside] >= 10.0)
    assert np.all(crop_mask.array[outside] == 0) and crop_mask.array.sum() > 0
    custom = apply_crop(img, box, fill=-7.0)
    assert np.all(custom.array[outside] == -7.0)
    # the same box for image and mask
    assert crop_img.same_geometry(crop_mask)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_reproduces_mask(name):
    g = GEOMETRIES[name]
    vol = _volume((50, 90, 90), g["spacing"], g["direction"])
    mask = vol.with_array(_ellipsoid(vol, (8.0, -25.0, 30.0), (26, 22, 30)))
    box = tlcr_box(mask)
    back = invert_crop(apply_crop(mask, box, "nearest"), vol, "nearest")
    assert back.same_geometry(vol) and back.array.dtype == np.uint8
    assert _dice(back.array, mask.array) >= 0.95
    heat = invert_crop(apply_crop(mask.with_array(mask.array.astype(np.float32)), box, "linear"), vol, "linear")
    assert heat.array.dtype == np.float32
    assert _dice(heat.array >= 0.5, mask.array) >= 0.95


def test_invert_crop_outside_box_is_zero():
    vol = _volume((50, 120, 120), (1.5, 1.5, 2.5), np.eye(3))
    mask = vol.with_array(_ellipsoid(vol, (10.0, -20.0, 30.0), (8, 8, 8)))
    box = tlcr_box(mask)
    ones = box.empty_volume()
    ones.array[:] = 1.0
    back = invert_crop(ones, vol, "nearest")
    src = _world_grid(vol).reshape(-1, 3)
    bi = Volume(np.zeros(box.shape), box.spacing, box.origin, box.direction).world_to_ijk(src)
    n = np.array(box.size_ijk)
    inside = np.all((bi > 0) & (bi < n - 1), axis=-1).reshape(vol.shape)
    outside = np.any((bi < -0.6) | (bi > n - 0.4), axis=-1).reshape(vol.shape)
    assert outside.any() and inside.any()
    assert np.all(back.array[outside] == 0) and np.all(back.array[inside] == 1)


def test_errors():
    vol = _volume((10, 20, 20), (1.0, 1.0, 2.0), np.eye(3))
    with pytest.raises(InputError, match="no tumour"):
        tlcr_box(vol)
    mask = vol.with_array(_ellipsoid(vol, (10.0, -20.0, 30.0), (4, 4, 4)))
    other = Volume(np.zeros((10, 20, 20), np.float32), (1.0, 1.0, 2.5), vol.origin, vol.direction)
    with pytest.raises(InputError, match="geometry"):
        tlcr_box(mask, other)
    with pytest.raises(InputError, match="no tumour"):
        tlcr_box(mask, label=7)


def test_on_mri_phantom():
    """End to end on the synthetic HBP phantom: the crop is centred on the tumour, masks align."""
    from pantheon.synth.mri_phantom import make_liver_mri_phantom

    mri, lab, info = make_liver_mri_phantom(3, oblique=True, pni=True)
    tumour = lab.with_array((lab.array == 2).astype(np.uint8))
    box = tlcr_box(tumour, mri)
    crop, crop_lab = apply_crop(mri, box), apply_crop(lab, box, "nearest")
    assert crop.same_geometry(crop_lab) and crop.array.min() >= 0
    centre = np.array(box.shape) // 2
    near = crop_lab.array[tuple(slice(c - 2, c + 3) for c in centre)]
    assert np.mean(near == 2) > 0.5
    assert np.count_nonzero(crop_lab.array == 2) * np.prod(box.spacing) / 1000 > 0.7 * info["tumour_volume_ml"]
