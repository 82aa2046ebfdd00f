"""Volume <-> SimpleITK / nibabel / Slicer (numpy form) conversions, and exact reorientation.

Each conversion is checked twice: the round trip keeps every voxel (world position and value),
and the converted object, interpreted by its own library, puts each voxel where Volume does.
"""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from test_io_support import (
    WORLD_ATOL_MM,
    assert_same_voxels,
    random_rotation,
    random_volume,
    voxel_indices,
    voxel_values,
)

from pantheon.errors import InputError
from pantheon.io import Volume

CASES = [(seed, lh) for seed in (0, 1, 2) for lh in (False, True)]
IDS = [f"seed{s}-{'left' if lh else 'right'}" for s, lh in CASES]


def _sitk_world(img) -> np.ndarray:
    """World (LPS) positions of all voxels, as SimpleITK itself computes them, in k, j, i order."""
    return np.array([img.TransformIndexToPhysicalPoint(tuple(int(x) for x in ijk))
                     for ijk in voxel_indices(img.GetSize()[::-1])])


# --------------------------------------------------------------------------- SimpleITK
@pytest.mark.parametrize("seed,left", CASES, ids=IDS)
def test_sitk_round_trip_and_sitk_geometry(seed, left):
    v = random_volume(seed, left_handed=left)
    img = v.to_sitk()
    assert img.GetSize() == v.size_ijk
    np.testing.assert_allclose(_sitk_world(img), v.ijk_to_world(voxel_indices(v.shape)), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(img), v.array)
    back = Volume.from_sitk(img)
    assert_same_voxels(v, back, atol_mm=1e-9)
    assert back.array.dtype == v.array.dtype


def test_sitk_vector_image_round_trip():
    v = random_volume(3, components=3, dtype=np.uint8)
    img = v.to_sitk()
    assert img.GetNumberOfComponentsPerPixel() == 3
    assert_same_voxels(v, Volume.from_sitk(img), atol_mm=1e-9)


def test_sitk_2d_image_becomes_one_slice():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.5, 0.25))
    img.SetOrigin((3.0, -2.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, s, c))
    v = Volume.from_sitk(img)
    assert v.shape == (1, 3, 4) and v.is_2d
    for j in range(3):
        for i in range(4):
            np.testing.assert_allclose(v.ijk_to_world([i, j, 0])[0][:2], img.TransformIndexToPhysicalPoint((i, j)),
                                       atol=1e-12)
            assert v.array[0, j, i] == a[j, i]


def test_sitk_bool_is_stored_as_uint8():
    v = Volume(np.array([[[True, False], [False, True]]]))
    back = Volume.from_sitk(v.to_sitk())
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, v.array.astype(np.uint8))


def test_sitk_4d_image_is_refused():
    img = sitk.Image([3, 3, 3, 2], sitk.sitkFloat32)
    with pytest.raises(InputError, match="4D"):
        Volume.from_sitk(img)


# --------------------------------------------------------------------------- nibabel
@pytest.mark.parametrize("seed,left", CASES, ids=IDS)
def test_nibabel_round_trip_and_nibabel_geometry(seed, left):
    v = random_volume(seed, left_handed=left, dtype=np.float32)
    img = v.to_nibabel()
    # nibabel's own view: data[i, j, k] sits at affine @ (i, j, k, 1) in RAS
    ijk = voxel_indices(v.shape)
    np.testing.assert_allclose(nib.affines.apply_affine(img.affine, ijk), v.ijk_to_world(ijk, ras=True), atol=1e-9)
    data = np.asanyarray(img.dataobj)
    np.testing.assert_array_equal(data[ijk[:, 0], ijk[:, 1], ijk[:, 2]], voxel_values(v)[:, 0])
    # both transforms set, scanner code, and in agreement (the qform is an orthonormal quaternion)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.header.get_qform(), img.header.get_sform(), atol=1e-5)
    assert_same_voxels(v, Volume.from_nibabel(img), atol_mm=1e-9)


def test_nibabel_vector_round_trip():
    v = random_volume(4, components=3, dtype=np.float32)
    img = v.to_nibabel()
    assert img.shape == v.size_ijk + (1, 3)
    assert img.header.get_intent()[0] == "vector"
    assert_same_voxels(v, Volume.from_nibabel(img), atol_mm=1e-9)


def test_nibabel_int64_and_float16_are_storable():
    v64 = Volume(np.arange(8, dtype=np.int64).reshape(2, 2, 2))
    assert Volume.from_nibabel(v64.to_nibabel()).array.dtype == np.int64
    v16 = Volume(np.ones((2, 2, 2), dtype=np.float16))
    assert Volume.from_nibabel(v16.to_nibabel()).array.dtype == np.float32


def test_nibabel_4d_time_series_is_refused():
    img = nib.Nifti1Image(np.zeros((3, 3, 3, 5), np.float32), np.eye(4))
    with pytest.raises(InputError, match="4D time series"):
        Volume.from_nibabel(img)


# --------------------------------------------------------------------------- Slicer (numpy form)
@pytest.mark.parametrize("seed,left", CASES, ids=IDS)
def test_slicer_round_trip_and_ras_matrix(seed, left):
    v = random_volume(seed, left_handed=left)
    arr, m = v.to_slicer()
    np.testing.assert_array_equal(arr, v.array)
    ijk = voxel_indices(v.shape)
    ras = ijk @ m[:3, :3].T + m[:3, 3]
    lps = ras * [-1, -1, 1]
    np.testing.assert_allclose(lps, v.ijk_to_world(ijk), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(m[:3, :3], axis=0), v.spacing)
    assert_same_voxels(v, Volume.from_slicer(arr, m), atol_mm=1e-9)


def test_slicer_vector_round_trip():
    v = random_volume(5, components=4, dtype=np.uint8)
    arr, m = v.to_slicer()
    assert arr.shape == v.shape + (4,)
    assert_same_voxels(v, Volume.from_slicer(arr, m), atol_mm=1e-9)


def test_slicer_matrix_must_be_affine():
    with pytest.raises(InputError, match="4x4"):
        Volume.from_slicer(np.zeros((2, 2, 2)), np.ones((4, 4)))


# --------------------------------------------------------------------------- shear / degenerate
def test_sheared_matrix_is_refused():
    m = np.eye(4)
    m[0, 1] = 0.2  # j axis leans towards i: a sheared grid
    with pytest.raises(InputError, match="sheared"):
        Volume.from_slicer(np.zeros((2, 3, 4)), m)
    with pytest.raises(InputError, match="sheared"):
        Volume.from_nibabel(nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), m))


def test_degenerate_matrix_is_refused():
    m = np.eye(4)
    m[2, 2] = 0.0
    with pytest.raises(InputError, match="degenerate"):
        Volume.from_slicer(np.zeros((2, 3, 4)), m)


def test_rounding_level_non_orthogonality_is_kept_exactly():
    """float32 headers / DICOM strings are never exactly orthogonal; such grids keep every voxel."""
    m = np.eye(4)
    m[:3, :3] = random_rotation(7) @ np.diag([0.8, 1.1, 2.4])
    m[0, 1] += 3e-7
    m[:3, 3] = [10.0, -20.0, 30.0]
    v = Volume.from_slicer(np.arange(24.0).reshape(2, 3, 4), m)
    np.testing.assert_allclose(v.index_to_ras(), m, atol=1e-12)


# --------------------------------------------------------------------------- to_canonical
@pytest.mark.parametrize("seed,left", CASES, ids=IDS)
@pytest.mark.parametrize("code", ["RAS", "LPS"])
def test_to_canonical_round_trip_on_oblique_volumes(seed, left, code):
    v = random_volume(seed, left_handed=left, components=2 if seed == 2 else 1)
    canon, undo = v.to_canonical(code)
    assert_same_voxels(v, canon)  # only a permutation / flip: every voxel stays put
    # the canonical axes point closest to the requested directions
    ras = np.diag([-1.0, -1.0, 1.0]) @ canon.direction
    want = {"RAS": [1, 1, 1], "LPS": [-1, -1, 1]}[code]
    assert np.all(np.diag(ras) * want > 0)
    back = undo(canon)
    np.testing.assert_array_equal(back.array, v.array)
    np.testing.assert_allclose(back.index_to_lps(), v.index_to_lps(), atol=WORLD_ATOL_MM)
