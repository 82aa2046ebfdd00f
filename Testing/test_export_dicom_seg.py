"""DICOM SEG export of label maps computed on a DICOM series (pantheon.export.dicom_seg).

The series is a small oblique CT written in shuffled file order by the DICOM test writer of
test_io_files; what the SEG says is checked with pydicom on the raw attributes (frame by frame,
via the referenced SOP Instance UIDs) as well as through the highdicom-based reader helper.
Real-world sources (de-identified, wrong SpacingBetweenSlices, a projection X-ray) come from
Testing/dicom_cases; what peer tools (dciodvfy, dcmqi, highdicom, slicerio) make of the files
the batch writes is in test_peer_tools.
"""

import warnings

import numpy as np
import pydicom
import pytest
from test_io_files import _write_dicom_series
from test_io_support import random_rotation

from pantheon.anatomy import BTCV_ORGANS
from pantheon.errors import InputError
from pantheon.export import read_dicom_seg_as_label, write_dicom_seg
from pantheon.io import Volume, read_volume
from pantheon.results import LabelOutput, Segment

SERIES_UID = "1.2.826.0.1.3680043.2.1125.4242.1"
FOR_UID = "1.2.826.0.1.3680043.2.1125.4242.9"
SHAPE = (12, 20, 24)  # K slices of J=20 rows x I=24 columns
ORGANS = {name: (value, color, code, meaning) for name, value, color, code, meaning in BTCV_ORGANS}


def _segment(name):
    value, color, code, meaning = ORGANS[name]
    return Segment(value, name, color, ("SCT", code, meaning))


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """(folder, Volume): 12 oblique anisotropic slices, files written in shuffled order, one frame of reference."""
    folder = tmp_path_factory.mktemp("dcm") / "ct"
    rng = np.random.default_rng(7)
    vol = Volume(rng.integers(-1000, 1500, SHAPE).astype(np.int16), (0.7, 0.9, 2.5), (-31.5, 12.25, -80.0),
                 random_rotation(3))
    order = list(rng.permutation(SHAPE[0]))
    assert order != sorted(order)
    _write_dicom_series(folder, vol, SERIES_UID, order=order)
    for f in folder.iterdir():  # a scanner always writes a FrameOfReferenceUID; the test writer does not
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = FOR_UID
        ds.save_as(f)
    return folder, read_volume(folder)


def _label_map(geometry: Volume) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    lab = np.zeros(SHAPE, np.uint8)
    lab[(k >= 2) & (k <= 7) & (j < 9) & (i < 10)] = 6  # liver
    lab[(k >= 5) & (k <= 10) & (j > 11) & (i > 13) & ((i + j + k) % 3 != 0)] = 1  # spleen, irregular
    return lab


def _label(geometry: Volume, lab=None, segments=None) -> LabelOutput:
    lab = _label_map(geometry) if lab is None else lab
    segs = segments if segments is not None else [_segment(name) for name, *_ in BTCV_ORGANS]
    return LabelOutput(geometry.with_array(lab), segs)


def _raw_frames(ds, uid_to_k):
    """{segment number: array (K, J, I)} decoded from the raw per-frame attributes with pydicom only."""
    n_seg = len(ds.SegmentSequence)
    out = {n: np.zeros(SHAPE, np.uint8) for n in range(1, n_seg + 1)}
    pix = ds.pixel_array
    pix = pix[np.newaxis] if pix.ndim == 2 else pix
    assert pix.shape[0] == int(ds.NumberOfFrames) == len(ds.PerFrameFunctionalGroupsSequence)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = item.DerivationImageSequence[0].SourceImageSequence
        assert len(src) == 1
        k = uid_to_k[str(src[0].ReferencedSOPInstanceUID)]
        assert not out[number][k].any(), "two frames for one segment and one slice"
        out[number][k] = pix[f]
        assert pix[f].any(), "empty frames must be omitted"
    return out


def _uid_to_k(folder, geometry):
    """Map SOP Instance UID -> slice k from each file's own ImagePositionPatient (independent of Pantheon)."""
    m = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        k = geometry.world_to_ijk([float(x) for x in ds.ImagePositionPatient])[0, 2]
        assert abs(k - round(k)) < 1e-4
        m[str(ds.SOPInstanceUID)] = int(round(k))
    assert sorted(m.values()) == list(range(SHAPE[0]))
    return m


def test_seg_round_trip_is_voxel_exact(ct_series, tmp_path):
    folder, geometry = ct_series
    lab = _label_map(geometry)
    out = write_dicom_seg(_label(geometry, lab), folder, tmp_path / "seg.dcm", content_creator="Doe^Jane")
    assert out == tmp_path / "seg.dcm" and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]

    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == FOR_UID
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != SERIES_UID
    assert ds.SeriesDescription == "Pantheon segmentation" and str(ds.ContentCreatorName) == "Doe^Jane"
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(geometry.spacing[2], abs=1e-6)
    assert [str(r.SeriesInstanceUID) for r in ds.ReferencedSeriesSequence] == [SERIES_UID]
    assert (int(ds.Rows), int(ds.Columns)) == SHAPE[1:]

    # Segments: only those present, in increasing label value (spleen 1, liver 6), SNOMED CT codes.
    segs = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert [segs[n].SegmentLabel for n in (1, 2)] == ["spleen", "liver"]
    for n, (code, meaning) in {1: ("78961009", "Spleen"), 2: ("10200004", "Liver")}.items():
        t = segs[n].SegmentedPropertyTypeCodeSequence[0]
        assert (t.CodingSchemeDesignator, t.CodeValue, t.CodeMeaning) == ("SCT", code, meaning)
        c = segs[n].SegmentedPropertyCategoryCodeSequence[0]
        assert (c.CodingSchemeDesignator, c.CodeValue) == ("SCT", "123037004")
        assert segs[n].SegmentAlgorithmType == "AUTOMATIC"
        assert segs[n].SegmentAlgorithmName == "Pantheon"
        assert len(segs[n].RecommendedDisplayCIELabValue) == 3

    # Every voxel of every segment, at the source instance named by its SOP Instance UID.
    raw = _raw_frames(ds, _uid_to_k(folder, geometry))
    np.testing.assert_array_equal(raw[1], (lab == 1).astype(np.uint8))
    np.testing.assert_array_equal(raw[2], (lab == 6).astype(np.uint8))
    n_nonempty = sum(int((lab[k] == v).any()) for k in range(SHAPE[0]) for v in (1, 6))
    assert int(ds.NumberOfFrames) == n_nonempty < 2 * SHAPE[0]

    # The highdicom-based reader helper agrees.
    back, info = read_dicom_seg_as_label(out, folder)
    assert info == {1: ("spleen", ("SCT", "78961009", "Spleen")), 2: ("liver", ("SCT", "10200004", "Liver"))}
    np.testing.assert_array_equal(back, np.select([lab == 1, lab == 6], [1, 2], 0))


def test_unlisted_value_and_uncoded_segment(ct_series, tmp_path):
    folder, geometry = ct_series
    lab = _label_map(geometry)
    lab[0, :3, :3] = 42  # in no segment list
    segments = [_segment("liver"), Segment(1, "blob", (0.1, 0.2, 0.3))]  # no code
    with pytest.warns(UserWarning, match="42"):
        out = write_dicom_seg(_label(geometry, lab, segments), folder, tmp_path / "seg.dcm",
                              algorithm_name="NEMESIS", algorithm_version="9.9")
    back, info = read_dicom_seg_as_label(out, folder)
    assert info == {1: ("blob", ("SCT", "85756007", "Tissue")), 2: ("liver", ("SCT", "10200004", "Liver")),
                    3: ("Label 42", ("SCT", "85756007", "Tissue"))}
    np.testing.assert_array_equal(back, np.select([lab == 1, lab == 6, lab == 42], [1, 2, 3], 0))
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert {s.SegmentAlgorithmName for s in ds.SegmentSequence} == {"NEMESIS"}
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "9.9"


@pytest.mark.parametrize("change,what", [
    ("origin", "origin"), ("spacing", "spacing"), ("direction", "direction"), ("shape", "shape")])
def test_geometry_mismatch_is_refused(ct_series, tmp_path, change, what):
    folder, g = ct_series
    lab = _label_map(g)
    if change == "origin":
        v = Volume(lab, g.spacing, np.add(g.origin, [0, 0.01, 0]), g.direction)
    elif change == "spacing":
        v = Volume(lab, (g.spacing[0], g.spacing[1] + 0.01, g.spacing[2]), g.origin, g.direction)
    elif change == "direction":
        v = Volume(lab, g.spacing, g.origin, random_rotation(4))
    else:
        v = Volume(lab[:-1], g.spacing, g.origin, g.direction)
    with pytest.raises(InputError, match=what):
        write_dicom_seg(LabelOutput(v, [_segment("liver"), _segment("spleen")]), folder, tmp_path / "seg.dcm")
    assert not list(tmp_path.iterdir())


def test_tiny_float_noise_in_geometry_is_accepted(ct_series, tmp_path):
    folder, g = ct_series
    v = Volume(_label_map(g), np.add(g.spacing, 1e-7), np.add(g.origin, 1e-5), g.direction + 1e-8)
    assert write_dicom_seg(LabelOutput(v, [_segment("liver"), _segment("spleen")]), folder,
                           tmp_path / "seg.dcm").is_file()


def test_empty_label_map_is_refused(ct_series, tmp_path):
    folder, g = ct_series
    with pytest.raises(InputError, match="nothing to save"):
        write_dicom_seg(_label(g, np.zeros(SHAPE, np.uint8)), folder, tmp_path / "seg.dcm")
    assert not list(tmp_path.iterdir())


def test_non_dicom_source_is_refused(ct_series, tmp_path):
    _, g = ct_series
    (tmp_path / "notdicom").mkdir()
    (tmp_path / "notdicom" / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="DICOM"):
        write_dicom_seg(_label(g), tmp_path / "notdicom", tmp_path / "seg.dcm")
    (tmp_path / "img.nii").write_bytes(b"\0" * 400)
    with pytest.raises(InputError, match="not a DICOM"):
        write_dicom_seg(_label(g), tmp_path / "img.nii", tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_missing_frame_of_reference_is_refused(tmp_path):
    vol = Volume(np.zeros((3, 4, 5), np.int16), (0.5, 0.6, 2.0), (1, 2, 3), random_rotation(5))
    _write_dicom_series(tmp_path / "ct", vol, "1.2.826.0.1.3680043.2.1125.4243.1")
    lab = np.zeros((3, 4, 5), np.uint8)
    lab[1, 1, 1] = 6
    with pytest.raises(InputError, match="FrameOfReferenceUID"):
        write_dicom_seg(LabelOutput(read_volume(tmp_path / "ct").with_array(lab), [_segment("liver")]),
                        tmp_path / "ct", tmp_path / "seg.dcm")


def test_failed_write_leaves_no_file(ct_series, tmp_path, monkeypatch):
    folder, g = ct_series
    out = tmp_path / "seg.dcm"

    def broken(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pydicom, "dcmwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_seg(_label(g), folder, out)
    assert not list(tmp_path.iterdir())
    out.write_bytes(b"previous")  # an existing file is left as it was
    with pytest.raises(OSError):
        write_dicom_seg(_label(g), folder, out)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"] and out.read_bytes() == b"previous"


def test_match_is_by_position_not_file_name(ct_series, tmp_path):
    """Renaming files so that name order contradicts slice order changes nothing."""
    folder, g = ct_series
    shuffled = tmp_path / "renamed"
    shuffled.mkdir()
    files = sorted(folder.iterdir())
    for n, f in enumerate(files):
        (shuffled / f"x{(7 * n) % len(files):03d}.dcm").write_bytes(f.read_bytes())
    lab = _label_map(g)
    out = write_dicom_seg(_label(g, lab), shuffled, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out)
    raw = _raw_frames(ds, _uid_to_k(folder, g))
    np.testing.assert_array_equal(raw[2], (lab == 6).astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back, _ = read_dicom_seg_as_label(out, shuffled)
    np.testing.assert_array_equal(back, np.select([lab == 1, lab == 6], [1, 2], 0))


# --------------------------------------------------------------------------- real-world sources
def _small_series(tmp_path, name, modality="CT", **kw):
    """A 6-slice oblique series written by Testing/dicom_cases (pydicom), and its label map."""
    from dicom_cases import write_series
    vol = Volume(np.random.default_rng(3).integers(0, 1000, (6, 10, 12)).astype(np.int16), (0.8, 0.9, 3.0),
                 (10.0, -20.0, 30.0), random_rotation(6))
    folder = write_series(tmp_path / name, vol, modality, **kw)
    geometry = read_volume(folder)
    lab = np.zeros(geometry.shape, np.uint8)
    lab[1:5, 2:7, 3:9] = 6
    lab[2:4, 5:9, 1:4] = 2
    return folder, geometry, lab


def test_deidentified_series_gets_empty_type2_attributes(tmp_path):
    """A source without PatientID, PatientBirthDate, PatientSex, AccessionNumber, StudyDate... (absent,
    not empty) gets a SEG with them present and empty, as the standard allows; the source is untouched."""
    folder, g, lab = _small_series(tmp_path, "deid", deidentified=True)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert "PatientID" not in src and "PatientBirthDate" not in src and "StudyDate" not in src
    out = write_dicom_seg(_label(g, lab), folder, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    for kw in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
               "StudyDate", "StudyTime", "ReferringPhysicianName", "ContentCreatorName"):
        assert kw in ds and not str(ds[kw].value or ""), kw
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    back, _ = read_dicom_seg_as_label(out, folder)
    np.testing.assert_array_equal(back, np.select([lab == 2, lab == 6], [1, 2], 0))


def test_deidentification_flag_keeps_its_method(tmp_path):
    folder, g, lab = _small_series(tmp_path, "flagged", deidentified="flagged")
    ds = pydicom.dcmread(write_dicom_seg(_label(g, lab), folder, tmp_path / "a.dcm"), stop_before_pixels=True)
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod == "PS3.15 E.1 Basic Profile"
    # a source that says YES but not how: the SEG says so too (1C), rather than dropping the flag
    for f in folder.iterdir():
        s = pydicom.dcmread(f)
        del s.DeidentificationMethod, s.DeidentificationMethodCodeSequence
        s.save_as(f)
    ds = pydicom.dcmread(write_dicom_seg(_label(g, lab), folder, tmp_path / "b.dcm"), stop_before_pixels=True)
    assert ds.PatientIdentityRemoved == "YES" and "not stated" in ds.DeidentificationMethod


def test_spacing_between_slices_is_the_measured_one(tmp_path):
    """A GDCM-style MR saying SpacingBetweenSlices 1 mm for slices 3 mm apart: the SEG says 3."""
    folder, g, lab = _small_series(tmp_path, "mr", "MR", spacing_between_slices=1.0, slice_thickness=2.5)
    assert float(pydicom.dcmread(next(folder.iterdir())).SpacingBetweenSlices) == 1.0
    ds = pydicom.dcmread(write_dicom_seg(_label(g, lab), folder, tmp_path / "seg.dcm"))
    m = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(m.SpacingBetweenSlices) == pytest.approx(g.spacing[2], abs=1e-6) == pytest.approx(3.0, abs=1e-6)
    assert float(m.SliceThickness) == 2.5 and [float(x) for x in m.PixelSpacing] == [0.9, 0.8]
    # the frames' own positions agree with it
    z = sorted(np.dot([float(x) for x in f.PlanePositionSequence[0].ImagePositionPatient], g.direction[:, 2])
               for f in ds.PerFrameFunctionalGroupsSequence)
    assert np.allclose(np.diff(np.unique(np.round(z, 4))), 3.0)


def test_projection_xray_gets_a_2d_seg(tmp_path):
    """A DX image (no ImagePositionPatient, normal for projections): one frame per segment on its pixels."""
    from dicom_cases import write_dx
    rng = np.random.default_rng(4)
    folder = write_dx(tmp_path / "dx", rng.integers(0, 4000, (40, 64)))
    g = read_volume(folder)
    assert g.shape == (1, 40, 64)
    lab = np.zeros(g.shape, np.uint8)
    lab[0, 5:20, 10:30], lab[0, 25:35, 40:60] = 1, 2
    segs = [Segment(1, "caries", (1, 0, 0), ("SCT", "80967001", "Dental caries")),
            Segment(2, "anomaly", (1, 0.6, 0), ("SCT", "263654008", "Abnormal"))]
    out = write_dicom_seg(LabelOutput(g.with_array(lab), segs), folder, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(folder / "OPG.dcm", stop_before_pixels=True)
    assert "FrameOfReferenceUID" not in ds and int(ds.NumberOfFrames) == 2
    assert list(ds.PatientOrientation) == ["L", "F"]
    for item in ds.PerFrameFunctionalGroupsSequence:
        assert "PlanePositionSequence" not in item
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    back, info = read_dicom_seg_as_label(out, folder)
    np.testing.assert_array_equal(back, lab)
    assert info[1] == ("caries", ("DCM", "112084", "Lucency"))


def test_several_projection_images_are_refused(tmp_path):
    from dicom_cases import write_dx
    folder = write_dx(tmp_path / "dx", np.ones((40, 64)))
    second = pydicom.dcmread(folder / "OPG.dcm")
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID + ".2"
    second.InstanceNumber = 2
    second.save_as(folder / "OPG2.dcm")
    with pytest.raises(InputError) as e:
        write_dicom_seg(LabelOutput(Volume(np.ones((2, 40, 64), np.uint8)), [_segment("liver")]), folder,
                        tmp_path / "seg.dcm")
    assert "have no ImagePositionPatient" in str(e.value) and _one_sentence(str(e.value))
    assert not (tmp_path / "seg.dcm").exists()


def _one_sentence(msg: str) -> bool:
    body = msg.split(": ", 1)[-1]
    return "\n" not in msg and msg.endswith(".") and ". " not in body.rstrip(".")


def test_messages_are_one_sentence_without_exception_text(ct_series, tmp_path, monkeypatch):
    folder, g = ct_series
    (tmp_path / "img.nii").write_bytes(b"\0" * 400)
    with pytest.raises(InputError) as e:
        write_dicom_seg(_label(g), tmp_path / "img.nii", tmp_path / "seg.dcm")
    assert _one_sentence(str(e.value)) and "FileDataset" not in str(e.value) and "Errno" not in str(e.value)

    import highdicom as hd

    def broken(*args, **kwargs):
        raise ValueError("internal detail: 'FileDataset' object has no attribute 'PatientID'")

    monkeypatch.setattr(hd.seg, "Segmentation", broken)
    with pytest.raises(InputError) as e:
        write_dicom_seg(_label(g), folder, tmp_path / "seg.dcm")
    assert _one_sentence(str(e.value)) and "internal detail" not in str(e.value)
    assert isinstance(e.value.__cause__, ValueError)  # kept for programs, not shown to people
    assert not list(tmp_path.glob("*.dcm"))


def test_side_output_returns_a_note_instead_of_raising(ct_series, tmp_path, monkeypatch):
    from pantheon.export import write_dicom_seg_side_output
    folder, g = ct_series
    assert write_dicom_seg_side_output(_label(g), folder, tmp_path / "ok.seg.dcm") is None
    assert (tmp_path / "ok.seg.dcm").is_file()

    note = write_dicom_seg_side_output(_label(g, np.zeros(SHAPE, np.uint8)), folder, tmp_path / "empty.seg.dcm")
    assert note.startswith("empty.seg.dcm skipped: ") and "nothing to save" in note and _one_sentence(note)
    assert not (tmp_path / "empty.seg.dcm").exists()

    logged = []
    monkeypatch.setattr(pydicom, "dcmwrite", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    note = write_dicom_seg_side_output(_label(g), folder, tmp_path / "x.seg.dcm", log=logged.append)
    assert note == "x.seg.dcm skipped: an unexpected error occurred while writing it (details in the log)."
    assert logged == ["x.seg.dcm: RuntimeError: boom"]  # the detail goes to the log only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.seg.dcm"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pydicom, "dcmwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dicom_seg_side_output(_label(g), folder, tmp_path / "y.seg.dcm")
