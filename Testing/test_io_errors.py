"""Bad input gives one InputError naming the file; a failed write never damages an existing file."""

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from test_io_support import random_volume

import pantheon.io.readers as readers
from pantheon.errors import InputError
from pantheon.io import read_volume, write_volume


def _read_error(path, match=None) -> str:
    with pytest.raises(InputError, match=match) as e:
        read_volume(path)
    msg = str(e.value)
    assert str(path) in msg, f"error does not name the file: {msg}"
    assert "\n" not in msg
    return msg


def test_nonexistent_path(tmp_path):
    _read_error(tmp_path / "missing.nii.gz", match="no such file")


@pytest.mark.parametrize("name", ["notes.txt", "scan.xyz", "noextension", "scan.nii.bz2"])
def test_unsupported_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"something")
    _read_error(tmp_path / name, match="unsupported file type")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".bmp", ".tif",
                                 ".dcm"])
def test_empty_file(tmp_path, ext):
    (tmp_path / f"empty{ext}").write_bytes(b"")
    _read_error(tmp_path / f"empty{ext}", match="empty")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".bmp", ".tif",
                                 ".dcm"])
def test_garbage_file(tmp_path, ext):
    (tmp_path / f"junk{ext}").write_bytes(b"this is not an image at all\n" * 20)
    _read_error(tmp_path / f"junk{ext}")


def _good_file(tmp_path, ext):
    if ext in (".png", ".jpg", ".bmp", ".tif"):
        y, x = np.mgrid[0:64, 0:64]
        Image.fromarray(((x * 3 + y) % 256).astype(np.uint8)).save(tmp_path / f"good{ext}")
        return tmp_path / f"good{ext}"
    return write_volume(random_volume(0, shape=(8, 9, 10), dtype=np.float32), tmp_path / f"good{ext}")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".mha", ".png", ".jpg", ".bmp", ".tif"])
@pytest.mark.parametrize("keep", [0.1, 0.6])
def test_truncated_file(tmp_path, ext, keep):
    good = _good_file(tmp_path, ext)
    data = good.read_bytes()
    bad = tmp_path / f"cut{ext}"
    bad.write_bytes(data[: int(len(data) * keep)])
    _read_error(bad)


def test_nhdr_with_missing_data_file(tmp_path):
    path = write_volume(random_volume(1), tmp_path / "detached.nhdr")
    for f in tmp_path.iterdir():
        if f != path:
            f.unlink()
    _read_error(path)


def test_corrupted_gzip_payload(tmp_path):
    path = write_volume(random_volume(2, shape=(10, 10, 10), dtype=np.float32), tmp_path / "v.nii.gz")
    data = bytearray(path.read_bytes())
    for pos in range(len(data) // 2, len(data) - 10, 7):
        data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    _read_error(path)


def test_truncated_dicom_slice_names_folder(tmp_path):
    from test_io_files import _dicom_volume, _write_dicom_series

    folder = tmp_path / "ct"
    _write_dicom_series(folder, _dicom_volume(0, shape=(3, 16, 16)), "1.2.826.0.1.3680043.2.1125.99.1")
    victim = folder / "slice001.dcm"
    victim.write_bytes(victim.read_bytes()[:-300])
    with pytest.raises(InputError, match="slice001.dcm is truncated") as e:
        read_volume(folder)
    assert str(folder) in str(e.value)


def test_dicom_series_with_missing_slice_is_refused(tmp_path):
    """ITK would read the remaining slices on a wrong, regular grid."""
    from test_io_files import _dicom_volume, _write_dicom_series

    folder = tmp_path / "gap"
    _write_dicom_series(folder, _dicom_volume(1, shape=(5, 8, 8)), "1.2.826.0.1.3680043.2.1125.98.1")
    (folder / "slice003.dcm").unlink()
    with pytest.raises(InputError, match="not evenly spaced") as e:
        read_volume(folder)
    assert str(folder) in str(e.value)


def test_4d_nifti_says_4d(tmp_path):
    path = tmp_path / "dwi.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 4), np.float32), np.eye(4)), str(path))
    msg = _read_error(path, match="4D")
    assert "4 volumes" in msg


def test_4d_mha_is_refused(tmp_path):
    path = tmp_path / "t.mha"
    sitk.WriteImage(sitk.Image([3, 3, 3, 2], sitk.sitkUInt8), str(path))
    _read_error(path, match="4D")


# --------------------------------------------------------------------------- atomic writes
def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".nhdr", ".mha"])
def test_failed_write_leaves_existing_file_untouched(tmp_path, ext, monkeypatch):
    path = write_volume(random_volume(0), tmp_path / f"keep{ext}")
    before = _snapshot(tmp_path)

    def half_write_then_fail(target):
        target = str(target)
        with open(target, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    if ext == ".nii.gz":
        class Broken:
            def to_filename(self, target):
                half_write_then_fail(target)
        monkeypatch.setattr(readers.convert, "to_nibabel", lambda v: Broken())
    else:
        monkeypatch.setattr(readers, "_write_sitk", lambda v, target, *a: half_write_then_fail(target))
    with pytest.raises(OSError, match="disk full") as e:
        write_volume(random_volume(1), path)
    assert str(path) in str(e.value)
    assert _snapshot(tmp_path) == before  # same files, same bytes, no temporary left behind


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_volume(random_volume(0), tmp_path / "nope" / "v.nii.gz")


def test_refused_write_leaves_existing_file_untouched(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(path)
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match="one slice"):
        write_volume(random_volume(0, dtype=np.uint8), path)
    assert _snapshot(tmp_path) == before


def test_written_file_has_normal_permissions(tmp_path):
    path = write_volume(random_volume(0), tmp_path / "perm.nii.gz")
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
