"""What other tools read back from what the real batch writes, on the inputs real life brings.

Inputs (built here with pydicom, no PHI):

- ``ct_deid``: a de-identified oblique CT series: no PatientID, PatientName, PatientBirthDate,
  PatientSex, AccessionNumber, StudyDate, StudyTime, StudyID, ReferringPhysicianName at all;
- ``ct_nofor``: the same CT without FrameOfReferenceUID: no valid SEG can reference it, the case's
  main outputs must survive that;
- ``mr_gdcm``: a liver MR whose SpacingBetweenSlices says 1 mm while its slices are 4.16 mm apart
  (as GDCM writes some series);
- ``opg``: a DX panoramic X-ray, one 2D image without ImagePositionPatient / Orientation.

Batches: NeoNet (``neonet-predict``) on the MR and MATHENA (``mathena-analyze``) on the X-ray run
for real (spawned worker, demo weights). No model labels CT, so the CT cases run the real batch
runner and worker with a test pipeline in this process that returns the phantom's 8 BTCV organs.

Checks on every file written: dciodvfy finds no error; dcmqi (Slicer's DICOM SEG reader), highdicom
and slicerio read the SEG / .seg.nrrd back voxel for voxel onto the label map of the main NIfTI
output, with the segment codes of Slicer's lists. Each check has a negative control showing that
it fails on the defect it is there for. Missing tools skip with the reason, or fail under CI=true.
"""

import json
import os
from pathlib import Path

import numpy as np
import peer_tools as pt
import pydicom
import pytest
from dicom_cases import write_dx, write_series
from test_terminology import SlicerLists

from pantheon import anatomy
from pantheon.batch import pipelines, run_batch, runner, worker
from pantheon.io import read_volume
from pantheon.results import LabelOutput, Result, Segment
from pantheon.slicerbridge import terms
from pantheon.synth import make_abdomen_phantom

# every test reads the outputs of one module-scoped batch run (about 40 s on 2 cores)
pytestmark = pytest.mark.slow

MR_SLICE_MM = 4.16
ORGAN_SEGMENTS = [Segment(idx, name, rgb, ("SCT", code, meaning))
                  for name, idx, rgb, code, meaning in anatomy.BTCV_ORGANS]


def _inline_executor(pipeline, options, tasks, workers, on_start):
    """The local executor's contract, in this process (a test pipeline is not registered in spawned workers)."""
    worker.init_worker(pipeline, options, 1)
    for task in tasks:
        task["attempt"] = on_start(task)
        yield worker.process_case(dict(task))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Run the three batches once; returns {case_id: {"dir", "input", "case", "doc"}}."""
    import torch

    from pantheon.synth.mri_phantom import make_liver_mri_phantom
    from pantheon.synth.opg import make_opg

    root = tmp_path_factory.mktemp("peer")
    inputs = {k: root / "in" / k for k in ("ct", "mr", "dx")}
    ct, truth = make_abdomen_phantom(1, shape=(18, 44, 40), oblique=True)
    organs = np.where(np.isin(truth.array, [s.value for s in ORGAN_SEGMENTS]), truth.array, 0).astype(np.uint8)
    write_series(inputs["ct"] / "ct_deid", ct, "CT", deidentified=True, seed=1)
    write_series(inputs["ct"] / "ct_nofor", ct, "CT", deidentified=True, frame_of_reference=False, seed=2)
    mri, _lab, _info = make_liver_mri_phantom(3, shape=(20, 72, 72), spacing=(2.0, 2.0, MR_SLICE_MM),
                                              orientation="LPS")
    write_series(inputs["mr"] / "mr_gdcm", mri, "MR", deidentified=True, spacing_between_slices=1.0,
                 slice_thickness=3.5, seed=3)
    opg = make_opg(2, size=(256, 512)).image.array[0]
    write_dx(inputs["dx"] / "opg", opg.astype(np.uint16) * 16, pixel_spacing=(0.12, 0.12), seed=4)

    def run(volume, context, options, progress=None):
        assert volume.shape == organs.shape  # the test pipeline only serves these two CT cases
        return Result(labels={"organs": LabelOutput(volume.with_array(organs.copy()), list(ORGAN_SEGMENTS))})

    threads, env = torch.get_num_threads(), dict(os.environ)
    mp = pytest.MonkeyPatch()
    try:
        mp.setitem(pipelines.PIPELINES, "test-organs", pipelines.BatchPipeline("test-organs", lambda o: None, run))
        mp.setitem(runner.EXECUTORS, "inline", _inline_executor)
        summaries = {"ct": run_batch("test-organs", inputs["ct"], root / "out-ct", engine="inline", quiet=True)}
    finally:
        mp.undo()
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)
    summaries["mr"] = run_batch("neonet-predict", inputs["mr"], root / "out-mr", workers=1, quiet=True)
    summaries["dx"] = run_batch("mathena-analyze", inputs["dx"], root / "out-dx", workers=1, quiet=True)
    cases = {}
    for kind, summary in summaries.items():
        assert summary["failed"] == 0, summary["failed_cases"]
        out = Path(summary["output"])
        for c in json.loads((out / "manifest.json").read_text())["cases"]:
            cases[c["case_id"]] = {"dir": out / c["case_id"], "input": Path(c["input"]), "case": c,
                                   "doc": json.loads((out / c["case_id"] / "case.json").read_text()),
                                   "log": (out / c["log"]).read_text()}
    assert set(cases) == {"ct_deid", "ct_nofor", "mr_gdcm", "opg"}
    return cases


def _segs(batch):
    """(case_id, label name, SEG path) of every DICOM SEG the batches wrote."""
    out = []
    for cid, c in sorted(batch.items()):
        for name in sorted(o[: -len(".seg.dcm")] for o in c["doc"]["outputs"] if o.endswith(".seg.dcm")):
            out.append((cid, name, c["dir"] / f"{name}.seg.dcm"))
    return out


def _labels(c, name):
    """The main output's label map (NIfTI) and its segments from result.json."""
    vol = read_volume(c["dir"] / f"{name}.nii.gz")
    doc = json.loads((c["dir"] / "result.json").read_text())["outputs"][name]
    return vol, [Segment(s["value"], s["name"], tuple(s["color"]), tuple(s["code"]) if s["code"] else None)
                 for s in doc["segments"]]


def _segment_numbers(arr):
    """Label values -> DICOM SEG segment numbers (1..N in increasing value), as the writer numbers them."""
    values = [int(v) for v in np.unique(arr) if v != 0]
    lut = np.zeros(int(arr.max()) + 1, np.int64)
    lut[values] = np.arange(1, len(values) + 1)
    return lut[arr], values


def _code(attrs: dict, kw: str):
    """(scheme, value, meaning) of a code in dcmqi's meta.json segment attributes, or None."""
    x = attrs.get(kw)
    return (x["CodingSchemeDesignator"], x["CodeValue"], x["CodeMeaning"]) if x else None


def _expected_term_codes(seg: Segment):
    t = anatomy.term_for(seg.code)
    return {"category": t.category, "type": t.type, "modifier": t.modifier, "region": t.region,
            "region_modifier": t.region_modifier}


# --------------------------------------------------------------------------- the batch itself
def test_every_case_is_done_with_its_main_outputs_and_a_seg_where_the_standard_allows(batch):
    assert {(cid, name) for cid, name, _p in _segs(batch)} >= {
        ("ct_deid", "organs"), ("mr_gdcm", "tumour"), ("opg", "teeth")}
    for cid, c in batch.items():
        assert c["case"]["state"] == "done" and c["case"]["error"] is None, cid
        labels = json.loads((c["dir"] / "result.json").read_text())["outputs"]
        for name, out in labels.items():
            if out["kind"] != "labels":
                continue
            assert (c["dir"] / f"{name}.nii.gz").is_file() and (c["dir"] / f"{name}.seg.nrrd").is_file(), (cid, name)
            written = (c["dir"] / f"{name}.seg.dcm").is_file()
            notes = [n for n in c["doc"]["notes"] if n.startswith(f"{name}.seg.dcm skipped: ")]
            assert written != bool(notes), (cid, name, c["doc"]["notes"])  # a SEG, or one note saying why not
    ct = batch["ct_nofor"]
    assert ct["doc"]["notes"] == [n for n in ct["doc"]["notes"] if "FrameOfReferenceUID" in n] != []
    for c in batch.values():
        for note in c["doc"]["notes"]:  # one sentence each, no exception text
            assert "\n" not in note and note.endswith(".") and note.count(". ") == 0, note
            assert "Error" not in note and "Traceback" not in note and "'" not in note.split(": ", 1)[1], note
            assert f"note: {note}" in c["log"]


def test_seg_geometry_attributes_are_the_measured_ones(batch):
    mr = pydicom.dcmread(batch["mr_gdcm"]["dir"] / "tumour.seg.dcm")
    measures = mr.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(MR_SLICE_MM, abs=1e-4)  # not the source's 1 mm
    assert float(measures.SliceThickness) == 3.5  # the source's own
    assert [float(x) for x in measures.PixelSpacing] == [2.0, 2.0]
    src = pydicom.dcmread(next((batch["mr_gdcm"]["input"]).iterdir()), stop_before_pixels=True)
    assert float(src.SpacingBetweenSlices) == 1.0  # the input really says 1 mm
    ct = pydicom.dcmread(batch["ct_deid"]["dir"] / "organs.seg.dcm", stop_before_pixels=True)
    for kw in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate",
               "ContentCreatorName"):
        assert kw in ct and not str(ct[kw].value or ""), kw  # present and empty: type 2
    dx = pydicom.dcmread(batch["opg"]["dir"] / "teeth.seg.dcm", stop_before_pixels=True)
    assert "PlanePositionSequence" not in dx.PerFrameFunctionalGroupsSequence[0]
    assert list(dx.PatientOrientation) == ["L", "F"]
    assert (int(dx.Rows), int(dx.Columns)) == (256, 512)


# --------------------------------------------------------------------------- dciodvfy
def test_dciodvfy_finds_no_error_in_any_seg(batch):
    verdicts = {f"{cid}/{name}": pt.run_dciodvfy(path) for cid, name, path in _segs(batch)}
    assert {k: e for k, (e, _w) in verdicts.items() if e} == {}
    for k, (_e, w) in verdicts.items():  # de-identified inputs: only the empty type-2 identifiers are noted
        assert all("needed to build DICOMDIR" in line for line in w), (k, w)


def test_dciodvfy_catches_a_missing_type2_attribute(batch, tmp_path):
    """Negative control: the check above can fail, on what a de-identified source lacks."""
    ds = pydicom.dcmread(batch["ct_deid"]["dir"] / "organs.seg.dcm")
    del ds.PatientSex
    ds.save_as(tmp_path / "bad.dcm")
    errors, _ = pt.run_dciodvfy(tmp_path / "bad.dcm")
    assert any("Type 2" in e and "PatientSex" in e for e in errors), errors


# --------------------------------------------------------------------------- dcmqi
@pytest.mark.parametrize("cid,name", [("ct_deid", "organs"), ("mr_gdcm", "tumour")])
def test_dcmqi_round_trip_is_voxel_exact(batch, tmp_path, cid, name):
    c = batch[cid]
    rc, output, image, meta = pt.dcmqi_read(c["dir"] / f"{name}.seg.dcm", tmp_path / "dcmqi")
    assert rc == 0 and image is not None, output
    import SimpleITK as sitk
    vol, segments = _labels(c, name)
    expected, values = _segment_numbers(np.asarray(vol.array))
    got = sitk.GetArrayFromImage(image)
    assert pt.world_problems(expected, pt.pantheon_affine(vol), got, pt.sitk_affine(image)) == []
    by_value = {s.value: s for s in segments}
    attrs = {a["labelID"]: a for group in meta["segmentAttributes"] for a in group}
    assert sorted(attrs) == list(range(1, len(values) + 1))
    for number, value in enumerate(values, start=1):
        a, seg = attrs[number], by_value[value]
        assert a["SegmentLabel"] == seg.name
        want = _expected_term_codes(seg)
        assert _code(a, "SegmentedPropertyCategoryCodeSequence") == want["category"]
        assert _code(a, "SegmentedPropertyTypeCodeSequence") == want["type"]
        assert _code(a, "SegmentedPropertyTypeModifierCodeSequence") == want["modifier"], seg.name
        assert _code(a, "AnatomicRegionSequence") == want["region"]


def test_dcmqi_rebuilds_a_striped_volume_from_the_sources_spacing(batch, tmp_path):
    """Negative control: with the source's SpacingBetweenSlices (what the writer used to copy),
    dcmqi's volume no longer matches, so the round trip above does test the spacing."""
    c = batch["mr_gdcm"]
    ds = pydicom.dcmread(c["dir"] / "tumour.seg.dcm")
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = "1"
    ds.save_as(tmp_path / "copied-spacing.dcm")
    rc, output, image, _meta = pt.dcmqi_read(tmp_path / "copied-spacing.dcm", tmp_path / "dcmqi")
    assert rc == 0 and image is not None, output
    import SimpleITK as sitk
    vol, _ = _labels(c, "tumour")
    expected, _ = _segment_numbers(np.asarray(vol.array))
    assert image.GetSpacing()[2] == pytest.approx(1.0) and image.GetSize()[2] > 3 * vol.shape[0]
    assert pt.world_problems(expected, pt.pantheon_affine(vol), sitk.GetArrayFromImage(image),
                             pt.sitk_affine(image)) != []


def test_dcmqi_cannot_read_a_projection_seg(batch, tmp_path):
    """dcmqi rebuilds ITK volumes and needs Plane Orientation (Patient), which a SEG on a projection
    X-ray must not have (no patient coordinates): a dcmqi limitation, pinned here. Slicer users get
    the X-ray's .seg.nrrd (checked below with slicerio); PACS tools read the SEG (dciodvfy and
    highdicom above/below). If dcmqi learns 2D SEGs, turn this into a round trip."""
    rc, output, _image, _meta = pt.dcmqi_read(batch["opg"]["dir"] / "teeth.seg.dcm", tmp_path / "dcmqi")
    assert rc != 0 and "Plane Orientation (Patient) is missing" in output


# --------------------------------------------------------------------------- highdicom
def test_highdicom_round_trip_is_voxel_exact(batch):
    import highdicom as hd

    for cid, name, path in _segs(batch):
        c = batch[cid]
        vol, segments = _labels(c, name)
        expected, values = _segment_numbers(np.asarray(vol.array))
        if cid == "opg":  # no patient coordinates: frames by the source image they were derived from
            seg = hd.seg.segread(str(path))
            src = pydicom.dcmread(next(c["input"].iterdir()), stop_before_pixels=True)
            got = seg.get_pixels_by_source_instance([str(src.SOPInstanceUID)], combine_segments=True, relabel=False)
            np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"{cid}/{name}")
        else:  # rebuilt from the SEG alone: plane positions, orientation, spacing
            got, affine = pt.highdicom_volume(path)
            assert pt.world_problems(expected, pt.pantheon_affine(vol), got, affine) == [], f"{cid}/{name}"
            seg = hd.seg.segread(str(path))
        by_value = {s.value: s for s in segments}
        for number, value in enumerate(values, start=1):
            d, s = seg.get_segment_description(number), by_value[value]
            want = _expected_term_codes(s)
            assert d.segment_label == s.name
            assert (d.segmented_property_category.scheme_designator, d.segmented_property_category.value) == \
                want["category"][:2]
            assert (d.segmented_property_type.scheme_designator, d.segmented_property_type.value) == want["type"][:2]
            regions = [(r.scheme_designator, r.value) for r in d.anatomic_regions]
            assert regions == ([want["region"][:2]] if want["region"] else []), s.name


def test_highdicom_refuses_the_sources_spacing(batch, tmp_path):
    """Negative control: highdicom rejects a SEG whose SpacingBetweenSlices contradicts its positions."""
    ds = pydicom.dcmread(batch["mr_gdcm"]["dir"] / "tumour.seg.dcm")
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = "1"
    ds.save_as(tmp_path / "copied-spacing.dcm")
    with pytest.raises(RuntimeError, match="regularly-spaced"):
        pt.highdicom_volume(tmp_path / "copied-spacing.dcm")


# --------------------------------------------------------------------------- slicerio (.seg.nrrd)
def test_slicerio_reads_every_seg_nrrd_voxel_exact_with_slicers_terms(batch):
    lists = SlicerLists()
    n = 0
    for cid, c in sorted(batch.items()):
        for out in c["doc"]["outputs"]:
            if not out.endswith(".seg.nrrd"):
                continue
            name = out[: -len(".seg.nrrd")]
            seg = pt.slicerio_read(c["dir"] / out)
            vol, segments = _labels(c, name)
            listed = np.where(np.isin(vol.array, [s.value for s in segments]), vol.array, 0)
            assert pt.world_problems(listed, pt.pantheon_affine(vol), np.asarray(seg["voxels"]),
                                     np.asarray(seg["ijkToLPS"])) == [], f"{cid}/{name}"
            assert [(s["name"], s["labelValue"]) for s in seg["segments"]] == [(s.name, s.value) for s in segments]
            for got, s in zip(seg["segments"], segments):
                t = got["terminology"]
                parts = {"context": t["contextName"], "category": tuple(t["category"]), "type": tuple(t["type"]),
                         "modifier": tuple(t["typeModifier"]) if "typeModifier" in t else None,
                         "region_context": t.get("anatomicContextName"),
                         "region": tuple(t["anatomicRegion"]) if "anatomicRegion" in t else None,
                         "region_modifier": tuple(t["anatomicRegionModifier"]) if "anatomicRegionModifier" in t
                         else None}
                assert parts == terms.parse_terminology(terms.terminology_string(s.code)), (cid, s.name)
                assert lists.problems(parts) == [], (cid, s.name)
            n += 1
    assert n >= 6  # organs x2, tumour, teeth, caries, anomaly


def test_slicerio_comparison_catches_a_shifted_grid(batch, tmp_path):
    """Negative control: the same .seg.nrrd with its origin moved by one voxel fails the comparison."""
    import nrrd

    c = batch["ct_deid"]
    data, header = nrrd.read(str(c["dir"] / "organs.seg.nrrd"))
    header["space origin"] = np.asarray(header["space origin"]) + np.asarray(header["space directions"])[0]
    nrrd.write(str(tmp_path / "shifted.seg.nrrd"), data, header)
    seg = pt.slicerio_read(tmp_path / "shifted.seg.nrrd")
    vol, segments = _labels(c, "organs")
    listed = np.where(np.isin(vol.array, [s.value for s in segments]), vol.array, 0)
    assert pt.world_problems(listed, pt.pantheon_affine(vol), np.asarray(seg["voxels"]),
                             np.asarray(seg["ijkToLPS"])) != []
