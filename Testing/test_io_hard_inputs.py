"""Hard inputs for the readers: NIfTI with disagreeing qform/sform (read as ITK reads it, warned),
enhanced multi-frame DICOM (the 3D volume it is), duplicate DICOM instances (said as such), images
that would not fit in memory (refused from the header, before decoding), label names carried by
files (.seg.nrrd, Slicer colour tables), and no ITK / GDCM chatter on stderr.

Every input is built here: nibabel headers, pydicom enhanced CT / MR objects, a PNG header that
claims 40000 x 20000 pixels with almost no data behind it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import time
import warnings
import zlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from test_io_support import assert_same_voxels, random_rotation

from pantheon.errors import InputError
from pantheon.io import Volume, read_volume, write_volume
from pantheon.io.readers import quiet_native_output


# =========================================================================== NIfTI qform / sform
def _affine(rot, spacing, origin):
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _nifti(path, data, q, s, qcode, scode, zooms):
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(q, code=qcode)
    img.header.set_sform(s, code=scode)
    img.header.set_zooms(tuple(zooms))
    nib.save(img, str(path))
    return path


DISAGREEMENTS = ["rotated", "shifted-10mm", "same", "sheared-sform"]


@pytest.mark.parametrize("kind", DISAGREEMENTS)
def test_nifti_forms_are_read_as_itk_reads_them(tmp_path, kind):
    """Every qform/sform code combination lands where SimpleITK (ITK, hence 3D Slicer) puts it."""
    rng = np.random.default_rng(DISAGREEMENTS.index(kind))
    data = rng.integers(0, 1000, (6, 5, 4)).astype(np.int16)
    spacing = rng.uniform(0.5, 3.0, 3)
    q = _affine(random_rotation(1), spacing, rng.uniform(-50, 50, 3))
    s = {"rotated": _affine(random_rotation(2), spacing, rng.uniform(-50, 50, 3)),
         "shifted-10mm": q + np.pad(np.array([[10.0], [0.0], [0.0]]), ((0, 1), (3, 0))),
         "same": q.copy(),
         "sheared-sform": q + np.pad(np.array([[0.0, 0.3, 0.0]]), ((0, 3), (0, 1)))}[kind]
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        for qcode, scode in itertools.product([0, 1, 2], [0, 1, 2, 4]):
            if qcode == scode == 0:
                continue
            path = _nifti(tmp_path / f"q{qcode}s{scode}.nii.gz", data, q, s, qcode, scode, spacing)
            try:
                ref = sitk.ReadImage(str(path))
            except RuntimeError:  # ITK refuses a sheared sform without a qform: so do we
                with pytest.raises(InputError, match="sheared"):
                    read_volume(path)
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                vol = read_volume(path)
            where = f"{kind} qform_code={qcode} sform_code={scode}"
            np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-4, err_msg=where)
            np.testing.assert_allclose(vol.direction.ravel(), ref.GetDirection(), atol=1e-5, err_msg=where)
            np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-5, err_msg=where)
            np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref), err_msg=where)
            disagree = qcode and scode and kind != "same"
            said = [str(w.message) for w in caught if "sform and a qform" in str(w.message)]
            assert bool(said) == bool(disagree), (where, said)
            for msg in said:
                assert "\n" not in msg and str(path) in msg and "as ITK and 3D Slicer do" in msg
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)


def test_nifti_aligned_sform_10mm_off_follows_the_qform_like_slicer(tmp_path):
    """The reported case: an "aligned" sform 10 mm from the scanner qform. Pantheon used the sform,
    Slicer the qform: results sat 10 mm off in Slicer. Now both use the qform, and it is said."""
    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    q = _affine(np.eye(3), (1.0, 1.0, 2.0), (10.0, 0.0, 0.0))
    s = _affine(np.eye(3), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    path = _nifti(tmp_path / "aligned.nii.gz", data, q, s, 1, 2, (1.0, 1.0, 2.0))
    with pytest.warns(UserWarning, match=r"up to 10\.0 mm \(10\.0 voxels\) apart; Pantheon reads the qform"):
        vol = read_volume(path)
    assert vol.ijk_to_world([0, 0, 0], ras=True)[0] == pytest.approx([10.0, 0.0, 0.0])


def test_nifti_pixdim_wins_over_sform_scale_like_itk(tmp_path):
    data = np.zeros((4, 4, 4), np.uint8)
    s = _affine(np.eye(3), (1.5, 1.0, 2.0), (0.0, 0.0, 0.0))
    path = _nifti(tmp_path / "scales.nii", data, s, s, 0, 1, (1.0, 1.0, 2.0))
    with pytest.warns(UserWarning, match="differs from its pixdim"):
        vol = read_volume(path)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        assert vol.spacing == pytest.approx(sitk.ReadImage(str(path)).GetSpacing())
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)


# =========================================================================== enhanced multi-frame DICOM
ENHANCED = {"CT": "1.2.840.10008.5.1.4.1.1.2.1", "MR": "1.2.840.10008.5.1.4.1.1.4.1"}


def write_enhanced(path, vol: Volume, modality="CT", frame_order=None, positions=None, per_frame_positions=True,
                   intercept=-1024.0):
    """One enhanced CT/MR file (many frames, geometry in the functional groups), as scanners write them:
    PixelMeasures / PlaneOrientation / PixelValueTransformation shared, PlanePosition per frame."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    K, J, I = vol.shape
    order = list(frame_order) if frame_order is not None else list(range(K))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED[modality], meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = modality, "Test^Enhanced", "1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.InstanceNumber, ds.ImageType = 1, ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = J, I, len(order)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    d = vol.direction
    ds_str = lambda xs: [f"{x:.12g}" for x in xs]  # noqa: E731 (DS strings)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = ds_str([vol.spacing[1], vol.spacing[0]])
    pm.SliceThickness = f"{vol.spacing[2]:.12g}"
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = ds_str(list(d[:, 0]) + list(d[:, 1]))
    shared.PlaneOrientationSequence = Sequence([po])
    pvt = Dataset()
    pvt.RescaleIntercept, pvt.RescaleSlope, pvt.RescaleType = f"{intercept:g}", "1", "HU" if modality == "CT" else "US"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for n, k in enumerate(order):
        f = Dataset()
        if per_frame_positions:
            pp = Dataset()
            pos = positions[n] if positions is not None else vol.ijk_to_world([0, 0, k])[0]
            pp.ImagePositionPatient = ds_str(pos)
            f.PlanePositionSequence = Sequence([pp])
        fc = Dataset()
        fc.DimensionIndexValues = [1, n + 1]
        f.FrameContentSequence = Sequence([fc])
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stored = (vol.array[order].astype(np.float64) - intercept).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _ct(seed, shape=(7, 10, 12)):
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1500, shape).astype(np.int16)
    return Volume(arr, tuple(rng.uniform(0.5, 1.0, 2)) + (2.5,), tuple(rng.uniform(-80, 80, 3)), random_rotation(seed))


@pytest.mark.parametrize("order", ["stored-ascending", "stored-descending", "stored-shuffled"])
def test_enhanced_ct_reads_as_its_3d_volume(tmp_path, order):
    truth = _ct(3)
    K = truth.shape[0]
    frame_order = {"stored-ascending": range(K), "stored-descending": range(K - 1, -1, -1),
                   "stored-shuffled": [3, 0, 6, 1, 5, 2, 4]}[order]
    folder = tmp_path / "enhanced"
    folder.mkdir()
    path = write_enhanced(folder / "ct.dcm", truth, frame_order=frame_order)
    for source in (path, folder):  # the file, or the folder holding it
        vol = read_volume(source)
        assert_same_voxels(truth, vol.with_array(vol.array.astype(np.int16)), atol_mm=1e-4)
        assert vol.metadata["modality"] == "CT" and vol.metadata["format"] == "DICOM"


def test_enhanced_mr_reads_as_its_3d_volume(tmp_path):
    truth = _ct(4)
    truth = truth.with_array((truth.array + 1000).astype(np.int16))
    vol = read_volume(write_enhanced(tmp_path / "mr.dcm", truth, modality="MR", intercept=0.0))
    assert_same_voxels(truth, vol.with_array(vol.array.astype(np.int16)), atol_mm=1e-4)
    assert vol.metadata["modality"] == "MR"


def test_enhanced_with_two_stacks_is_4d_and_said_so(tmp_path):
    truth = _ct(5, shape=(6, 8, 8))
    positions = [truth.ijk_to_world([0, 0, k % 3])[0] for k in range(6)]  # 2 time points x 3 slices
    path = write_enhanced(tmp_path / "cine.dcm", truth, positions=positions)
    with pytest.raises(InputError, match=r"6 frames lie at only 3 distinct positions .*4D") as e:
        read_volume(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_multiframe_without_frame_positions_is_refused(tmp_path):
    path = write_enhanced(tmp_path / "loop.dcm", _ct(6, shape=(4, 8, 8)), per_frame_positions=False)
    with pytest.raises(InputError, match="no position per frame"):
        read_volume(path)


def test_enhanced_with_uneven_frames_is_refused(tmp_path):
    truth = _ct(7, shape=(5, 8, 8))
    positions = [truth.ijk_to_world([0, 0, k + (1.5 if k == 4 else 0)])[0] for k in range(5)]
    with pytest.raises(InputError, match="not evenly spaced"):
        read_volume(write_enhanced(tmp_path / "gap.dcm", truth, positions=positions))


# =========================================================================== duplicate instances
def _series(folder, seed=1, shape=(5, 8, 8)):
    from test_io_files import _dicom_volume, _write_dicom_series
    _write_dicom_series(folder, _dicom_volume(seed, shape=shape), f"1.2.826.0.1.3680043.2.1125.{60 + seed}.1")
    return folder


def test_series_with_a_copied_file_says_duplicate_instances(tmp_path):
    folder = _series(tmp_path / "dup")
    shutil.copy(folder / "slice002.dcm", folder / "copy of slice002.dcm")
    with pytest.raises(InputError, match="duplicate instances") as e:
        read_volume(folder)
    msg = str(e.value)
    assert "slice002.dcm" in msg and "evenly spaced" not in msg


def test_series_with_two_images_at_one_position_says_so(tmp_path):
    import pydicom
    folder = _series(tmp_path / "echo")
    ds = pydicom.dcmread(folder / "slice002.dcm")
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"  # another image (second echo) at the same place
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 99
    ds.save_as(folder / "echo2.dcm")
    with pytest.raises(InputError, match=r"6 images lie at only 5 distinct positions .*duplicate slices"):
        read_volume(folder)


# =========================================================================== size limit before decoding
def _png_bomb(path, width=40000, height=20000):
    """A few hundred bytes of PNG whose header claims width x height 8-bit grey pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)  # 4 rows of data; the rest is missing
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_png_claiming_40000_by_20000_is_refused_from_its_header(tmp_path, monkeypatch):
    path = _png_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 2000

    def never(*a, **k):
        raise AssertionError("the pixels were decoded")
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", never)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"40000 x 20000 pixels \(800 million pixels\), more than the limit") as e:
        read_volume(path)
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    assert str(path) in msg and "--max-pixels" in msg and "\n" not in msg
    # a stated limit refuses smaller images too, and 0 lifts it (then decoding starts: the stub says so)
    with pytest.raises(InputError, match="more than the limit of 1 million pixels"):
        read_volume(_png_bomb(tmp_path / "small.png", 2000, 1000), max_pixels=1_000_000)
    with pytest.raises(AssertionError, match="decoded"):
        read_volume(path, max_pixels=0)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_volume_limit_is_checked_before_decoding(tmp_path, ext):
    path = write_volume(Volume(np.zeros((10, 20, 30), np.int16)), tmp_path / f"v{ext}")
    with pytest.raises(InputError, match=r"30 x 20 x 10 voxels \(6000 voxels\), more than the limit of 5000"):
        read_volume(path, max_pixels=5000)
    assert read_volume(path, max_pixels=6000).shape == (10, 20, 30)


def test_nifti_header_claiming_a_huge_volume_is_refused(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    img.header.set_data_shape((4000, 4000, 4000))
    path = tmp_path / "huge.nii"
    with open(path, "wb") as f:  # the header and a few bytes: the rest is absent
        img.header.write_to(f)
        f.write(b"\0" * 64)
    with pytest.raises(InputError, match=r"64 billion voxels\), more than the limit of 1 billion"):
        read_volume(path)


def test_dicom_series_limit(tmp_path):
    folder = _series(tmp_path / "ct")
    with pytest.raises(InputError, match="more than the limit of 100 voxels"):
        read_volume(folder, max_pixels=100)


# =========================================================================== label names in files
def test_seg_nrrd_segment_names_and_codes_reach_the_volume():
    from pathlib import Path
    data = Path(__file__).resolve().parents[1] / "pantheon" / "sampledata" / "data"
    vol = read_volume(data / "PantheonAbdominalCTPhantom_Organs.seg.nrrd")
    assert vol.metadata["segments"][6] == "liver" and vol.metadata["segments"][1] == "spleen"
    assert ("SCT", "10200004") in vol.metadata["segment_codes"][6]


def test_slicer_colour_table_next_to_a_label_map(tmp_path):
    path = write_volume(Volume(np.zeros((3, 4, 5), np.uint8)), tmp_path / "Segmentation-label.nii.gz")
    (tmp_path / "Segmentation-label_ColorTable.ctbl").write_text(
        "# Color table file\n# 3 values\n0 Background 0 0 0 0\n5 Liver 216 101 79 255\n7 bile_duct 0 145 30 255\n")
    assert read_volume(path).metadata["segments"] == {5: "Liver", 7: "bile duct"}


# =========================================================================== library chatter
def test_itk_and_gdcm_messages_stay_off_stderr(tmp_path, capfd):
    """ITK's "Non uniform sampling" warning and GDCM's libjpeg messages used to reach the terminal."""
    from pydicom.data import get_testdata_file
    folder = _series(tmp_path / "gap", seed=2)
    (folder / "slice003.dcm").unlink()
    with pytest.raises(InputError, match="not evenly spaced"):
        read_volume(folder)
    lossy = get_testdata_file("JPEG-lossy.dcm")  # 12-bit JPEG: GDCM's 8-bit codec complains first
    if lossy:
        jpeg_dir = tmp_path / "jpeg"
        jpeg_dir.mkdir()
        shutil.copy(lossy, jpeg_dir / "x.dcm")
        read_volume(jpeg_dir / "x.dcm")
    err = capfd.readouterr().err
    for noise in ("WARNING: In", "Non uniform sampling", "ImageSeriesReader", "JPEG data precision", "SOS"):
        assert noise not in err, err


def test_quiet_native_output_keeps_other_stderr_text(capfd):
    with quiet_native_output():
        os.write(2, b"WARNING: In /x/itkFoo.cxx, line 1\nGDCMImageIO (0x1): noise\n")
        os.write(2, b"a message of someone else\n")
    err = capfd.readouterr().err
    assert "someone else" in err and "noise" not in err and "WARNING" not in err


def test_overlapping_segmentation_layers_are_refused(tmp_path):
    import nrrd
    data = np.zeros((2, 5, 4, 3), np.uint8)  # (layer, i, j, k): two overlapping segments
    data[0, 1:4, 1:3, :] = 1
    data[1, 2:5, 0:2, :] = 1
    header = {"kinds": ["list", "domain", "domain", "domain"], "space": "left-posterior-superior",
              "space directions": [[np.nan] * 3, [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]],
              "space origin": [0.0, 0.0, 0.0],
              "Segment0_ID": "a", "Segment0_Name": "liver", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
              "Segment1_ID": "b", "Segment1_Name": "tumour", "Segment1_LabelValue": "1", "Segment1_Layer": "1"}
    path = tmp_path / "overlap.seg.nrrd"
    nrrd.write(str(path), data, header)
    with pytest.raises(InputError, match="segments overlap, stored as 2 layers"):
        read_volume(path)
