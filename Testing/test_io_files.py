"""read_volume / write_volume for every supported format.

Files written by independent writers (raw nibabel headers, pynrrd, Pillow, DICOM tags) are
checked against what the file itself says, computed without Pantheon code; files written by
Pantheon must read back with every voxel in place.
"""

import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from test_io_support import assert_matches_reference, assert_same_voxels, random_rotation, random_volume

from pantheon.errors import InputError
from pantheon.io import Volume, read_volume, write_volume

VOLUME_EXTS = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ext", VOLUME_EXTS)
@pytest.mark.parametrize("seed,left,dtype", [(0, False, np.int16), (1, True, np.float32), (2, True, np.uint8)])
def test_volume_file_round_trip(tmp_path, ext, seed, left, dtype):
    v = random_volume(seed, left_handed=left, dtype=dtype)
    path = write_volume(v, tmp_path / f"vol{ext}")
    back = read_volume(path)
    assert back.array.dtype == v.array.dtype
    assert_same_voxels(v, back)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_multicomponent_round_trip(tmp_path, ext):
    v = random_volume(3, components=3, dtype=np.float32, left_handed=True)
    back = read_volume(write_volume(v, tmp_path / f"vec{ext}"))
    assert back.components == 3
    assert_same_voxels(v, back)


def test_multicomponent_nifti_is_readable_by_itk(tmp_path):
    """Our vector NIfTI layout (I, J, K, 1, C) is the one ITK/Slicer expect."""
    v = random_volume(4, components=3, dtype=np.float32)
    path = write_volume(v, tmp_path / "vec.nii.gz")
    img = sitk.ReadImage(str(path))
    assert img.GetNumberOfComponentsPerPixel() == 3
    assert_same_voxels(v, Volume.from_sitk(img))


def test_overwrite_replaces_existing_file(tmp_path):
    path = tmp_path / "v.nrrd"
    write_volume(random_volume(0), path)
    v2 = random_volume(1)
    write_volume(v2, path)
    assert_same_voxels(v2, read_volume(path))


# --------------------------------------------------------------------------- NIfTI qform / sform
def _raw_affine(kind: str, seed: int) -> np.ndarray:
    """RAS affines as files carry them: LPS-flipped, RAS, or oblique, with anisotropic spacing."""
    rng = np.random.default_rng(seed)
    spacing = rng.uniform(0.4, 2.5, 3)
    rot = {"lps": np.diag([-1.0, -1.0, 1.0]), "ras": np.eye(3),
           "oblique": random_rotation(seed), "oblique-mirrored": random_rotation(seed, left_handed=True)}[kind]
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = rng.uniform(-40, 40, 3)
    return a


def _write_raw_nifti(path, data, qform=None, sform=None, qcode=1, scode=2):
    """A NIfTI with exactly these forms; pixdim is the voxel size of the qform (set_qform writes it),
    else of the sform, as writers do (ITK takes the spacing from pixdim)."""
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(qform if qform is not None else np.eye(4), code=qcode if qform is not None else 0)
    img.header.set_sform(sform if sform is not None else np.diag([7.0, 7.0, 7.0, 1.0]),
                         code=scode if sform is not None else 0)
    if qform is None and sform is not None:
        img.header.set_zooms(tuple(np.linalg.norm(sform[:3, :3], axis=0))[: data.ndim])
    nib.save(img, str(path))
    return path


KINDS = ["lps", "ras", "oblique", "oblique-mirrored"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["qform-only", "sform-only", "aligned-sform-disagrees", "scanner-sform-disagrees",
                                  "sform-code-0"])
def test_nifti_qform_sform_choice(tmp_path, kind, mode):
    """ITK's (so 3D Slicer's) choice: the qform unless the sform is the scanner's (code 1), or the
    only one; a disagreement beyond a quarter voxel is warned about."""
    data = np.random.default_rng(1).integers(-500, 500, (5, 4, 3)).astype(np.int16)  # (I, J, K)
    good, other = _raw_affine(kind, 11), _raw_affine("oblique", 99)
    path = tmp_path / "raw.nii.gz"
    disagree = "disagrees" in mode
    if mode == "qform-only":
        _write_raw_nifti(path, data, qform=good)
    elif mode == "sform-only":
        _write_raw_nifti(path, data, sform=good)
    elif mode == "aligned-sform-disagrees":  # the qform wins over an "aligned" (code 2) sform
        _write_raw_nifti(path, data, qform=good, sform=other, qcode=1, scode=2)
    elif mode == "scanner-sform-disagrees":  # a "scanner" (code 1) sform wins
        good = np.array(good)
        moved = good.copy()
        moved[:3, 3] += 10.0
        _write_raw_nifti(path, data, qform=moved, sform=good, qcode=1, scode=1)
    else:  # an sform with code 0 is ignored, the qform is used
        _write_raw_nifti(path, data, qform=good, sform=other, qcode=1, scode=0)
    if disagree:
        with pytest.warns(UserWarning, match="sform and a qform that place it up to"):
            vol = read_volume(path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            vol = read_volume(path)
    assert_matches_reference(vol, good, data)
    # and exactly where ITK puts it
    ref = sitk.ReadImage(str(path))
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction.ravel(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-5)


def test_nifti_without_any_orientation_warns(tmp_path):
    path = _write_raw_nifti(tmp_path / "bare.nii", np.zeros((3, 3, 3), np.float32))
    with pytest.warns(UserWarning, match="neither an sform nor a qform"):
        read_volume(path)


def test_nifti_singleton_time_axis_and_2d(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)
    aff = _raw_affine("oblique", 5)
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "t1.nii"))
    assert_matches_reference(read_volume(tmp_path / "t1.nii"), aff, data[..., 0])
    data2 = np.arange(6, dtype=np.uint8).reshape(2, 3)
    nib.save(nib.Nifti1Image(data2, aff), str(tmp_path / "flat.nii"))
    v = read_volume(tmp_path / "flat.nii")
    assert v.shape == (1, 3, 2)
    assert_matches_reference(v, aff, data2[:, :, None])


def test_nifti_4d_time_series_is_refused_naming_file(tmp_path):
    path = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 6), np.int16), np.eye(4)), str(path))
    with pytest.raises(InputError, match="4D time series") as e:
        read_volume(path)
    assert str(path) in str(e.value)


def test_nifti_scaling_is_applied(tmp_path):
    data = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    v = read_volume(tmp_path / "scaled.nii")
    np.testing.assert_allclose(v.array, np.transpose(data * 0.5 - 3.0, (2, 1, 0)))


# --------------------------------------------------------------------------- NRRD written by pynrrd
@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
def test_nrrd_from_pynrrd(tmp_path, space):
    nrrd = pytest.importorskip("nrrd")
    data = np.random.default_rng(2).integers(0, 1000, (5, 4, 3)).astype(np.uint16)  # (I, J, K)
    ras = _raw_affine("oblique-mirrored", 3)
    m = ras if space.startswith("right") else np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    header = {"space": space, "space directions": m[:3, :3].T, "space origin": m[:3, 3],
              "kinds": ["domain"] * 3, "encoding": "gzip"}
    path = tmp_path / "py.nrrd"
    nrrd.write(str(path), data, header, index_order="F")
    assert_matches_reference(read_volume(path), ras, data)


def test_nrrd_written_header_is_standard(tmp_path):
    """pynrrd (not ITK) reads our NRRD with the same geometry."""
    nrrd = pytest.importorskip("nrrd")
    v = random_volume(6)
    path = write_volume(v, tmp_path / "ours.nrrd")
    data, header = nrrd.read(str(path), index_order="F")
    assert header["space"] == "left-posterior-superior"
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    lps[:3, 3] = header["space origin"]
    assert_matches_reference(v, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, data)


# --------------------------------------------------------------------------- 2D images
def test_png_gray_8bit(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (7, 9), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "g.png")
    v = read_volume(tmp_path / "g.png")
    assert v.shape == (1, 7, 9) and v.components == 1 and v.array.dtype == np.uint8
    np.testing.assert_array_equal(v.array[0], a)  # row j = image row from the top, i = column
    assert v.spacing == (1.0, 1.0, 1.0) and v.origin == (0.0, 0.0, 0.0)


def test_png_16bit_is_preserved(tmp_path):
    a = np.random.default_rng(1).integers(0, 65536, (6, 5), dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    v = read_volume(tmp_path / "g16.png")
    assert v.array.dtype == np.uint16
    np.testing.assert_array_equal(v.array[0], a)
    back = read_volume(write_volume(v, tmp_path / "again.png"))
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, v.array)


def test_png_rgb_components_and_grayscale(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "rgb.png")
    v = read_volume(tmp_path / "rgb.png")
    assert v.components == 3 and v.shape == (1, 4, 6)
    np.testing.assert_array_equal(v.array[0], a)
    g = read_volume(tmp_path / "rgb.png", grayscale=True)
    assert g.components == 1 and g.array.dtype == np.float32
    np.testing.assert_allclose(g.array[0], a @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
    back = read_volume(write_volume(v, tmp_path / "rgb2.png"))
    np.testing.assert_array_equal(back.array, v.array)


def test_jpeg_values_are_approximately_kept(tmp_path):
    y, x = np.mgrid[0:32, 0:40]
    a = (x * 4 + y * 2).astype(np.uint8)  # smooth: JPEG keeps it well
    Image.fromarray(a).save(tmp_path / "g.jpg", quality=95)
    v = read_volume(tmp_path / "g.jpg")
    assert v.shape == (1, 32, 40) and v.array.dtype == np.uint8
    assert np.abs(v.array[0].astype(int) - a).max() <= 6
    rgb = np.stack([a, a // 2, 255 - a], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.jpeg", quality=95)
    c = read_volume(tmp_path / "c.jpeg")
    assert c.components == 3
    assert np.abs(c.array[0].astype(int) - rgb).mean() < 3


def test_bmp_and_tiff(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "c.bmp")
    np.testing.assert_array_equal(read_volume(tmp_path / "c.bmp").array[0], a)
    t = np.random.default_rng(4).integers(0, 65536, (6, 7), dtype=np.uint16)
    Image.fromarray(t).save(tmp_path / "g.tif")
    v = read_volume(tmp_path / "g.tif")
    assert v.array.dtype == np.uint16
    np.testing.assert_array_equal(v.array[0], t)
    np.testing.assert_array_equal(read_volume(write_volume(v, tmp_path / "g2.tiff")).array, v.array)


def test_2d_formats_refuse_what_they_cannot_hold(tmp_path):
    with pytest.raises(InputError, match="one slice"):
        write_volume(random_volume(0, dtype=np.uint8), tmp_path / "x.png")
    with pytest.raises(InputError, match="float32"):
        write_volume(Volume(np.zeros((4, 4), np.float32)), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- DICOM
def _write_dicom_series(folder, vol: Volume, series_uid: str, order=None):
    """One file per slice with the geometry in the standard tags (as a scanner would write them)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = vol.direction
    fmt = lambda xs: "\\".join(f"{x:.12g}" for x in xs)  # noqa: E731 (DS strings)
    for k in order if order is not None else range(vol.shape[0]):
        sl = sitk.GetImageFromArray(vol.array[k])
        sl.SetSpacing(vol.spacing[:2])
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": "CT", "0010|0010": "Test^Phantom", "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|000e": series_uid, "0020|0013": str(k + 1),
            "0020|0032": fmt(vol.ijk_to_world([0, 0, k])[0]),  # ImagePositionPatient (LPS)
            "0020|0037": fmt(list(d[:, 0]) + list(d[:, 1])),  # ImageOrientationPatient: row, column cosines
            "0028|0030": fmt([vol.spacing[1], vol.spacing[0]]),  # PixelSpacing: between rows, columns
            "0018|0050": fmt([vol.spacing[2]]),  # SliceThickness
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        w.Execute(sl)


def _dicom_volume(seed, shape=(5, 6, 7)):
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 2000, shape).astype(np.int16)
    return Volume(arr, tuple(rng.uniform(0.4, 1.2, 2)) + (2.5,), tuple(rng.uniform(-80, 80, 3)), random_rotation(seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_dicom_series_oblique(tmp_path, seed):
    v = _dicom_volume(seed)
    _write_dicom_series(tmp_path / "ct", v, f"1.2.826.0.1.3680043.2.1125.{seed}.1", order=[3, 0, 4, 1, 2])
    back = read_volume(tmp_path / "ct")
    assert_same_voxels(v, back)
    assert back.array.dtype == np.int16
    one = read_volume(tmp_path / "ct" / "slice002.dcm")  # a file of the series stands for the series
    assert_same_voxels(v, one)


def test_dicom_folder_with_two_series_takes_the_larger(tmp_path):
    big, small = _dicom_volume(2), _dicom_volume(3, shape=(2, 6, 7))
    _write_dicom_series(tmp_path / "mixed", big, "1.2.826.0.1.3680043.2.1125.20.1")
    sub = tmp_path / "mixed"
    small_dir = tmp_path / "tmp_small"
    _write_dicom_series(small_dir, small, "1.2.826.0.1.3680043.2.1125.30.1")
    for f in small_dir.iterdir():
        f.rename(sub / ("other_" + f.name))
    with pytest.warns(UserWarning, match="2 DICOM series"):
        back = read_volume(sub)
    assert_same_voxels(big, back)


def test_dicom_empty_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="no readable DICOM series") as e:
        read_volume(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_writing_dicom_is_refused(tmp_path):
    with pytest.raises(InputError, match="unsupported"):
        write_volume(random_volume(0), tmp_path / "x.dcm")


def test_no_warnings_on_clean_round_trip(tmp_path):
    v = random_volume(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for ext in (".nii.gz", ".nrrd"):
            read_volume(write_volume(v, tmp_path / f"w{ext}"))


def test_oblique_single_slice_writes_to_png(tmp_path):
    """Orientation is dropped for 2D formats; an oblique 1-slice volume must still write."""
    v = Volume(np.arange(20, dtype=np.uint8).reshape(1, 4, 5), (0.5, 0.5, 1.0), (1.0, 2.0, 3.0), random_rotation(9))
    back = read_volume(write_volume(v, tmp_path / "oblique.png"))
    np.testing.assert_array_equal(back.array, v.array)
