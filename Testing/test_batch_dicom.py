"""A batch case whose input is a DICOM series and whose result has labels gets a DICOM SEG
(for PACS tools) and a .seg.nrrd (for Slicer) in its case folder; a SEG that cannot be written is
skipped with a one-sentence note and costs the case nothing else."""

import json

import numpy as np
import pydicom
import pytest
from test_export_dicom_seg import _label_map, ct_series  # noqa: F401  (module fixture)

from pantheon.anatomy import BTCV_ORGANS
from pantheon.batch import pipelines, worker
from pantheon.results import LabelOutput, Result, Segment


@pytest.fixture
def label_pipeline(monkeypatch):
    def run(volume, context, options, progress=None):
        segs = [Segment(v, n, c, ("SCT", code, meaning)) for n, v, c, code, meaning in BTCV_ORGANS]
        return Result(labels={"organs": LabelOutput(volume.with_array(_label_map(volume)), segs)})
    pipe = pipelines.BatchPipeline(name="test-labels", load=lambda options: None, run=run)
    monkeypatch.setitem(pipelines.PIPELINES, "test-labels", pipe)
    import torch
    threads = torch.get_num_threads()
    worker.init_worker("test-labels", {}, threads)
    yield pipe
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_dicom_input_with_labels_writes_dicom_seg_and_seg_nrrd(ct_series, label_pipeline, tmp_path):  # noqa: F811
    folder, geometry = ct_series
    res = worker.process_case({"output": str(tmp_path), "case_id": "ct", "attempt": 1, "input": str(folder),
                               "format": "nii.gz"})
    assert res["state"] == "done", res.get("error")
    stage = tmp_path / res["stage"]
    assert {"organs.nii.gz", "organs.seg.nrrd", "organs.seg.dcm", "case.json"} <= set(res["outputs"])
    ds = pydicom.dcmread(stage / "organs.seg.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert {str(s.SegmentLabel) for s in ds.SegmentSequence} == {"liver", "spleen"}
    from pantheon.export import read_dicom_seg_as_label
    seg, segments = read_dicom_seg_as_label(stage / "organs.seg.dcm", folder)
    names = {n: label for n, (label, _code) in segments.items()}
    expected = _label_map(geometry)
    for number, name in names.items():
        value = {"liver": 6, "spleen": 1}[name]
        np.testing.assert_array_equal(seg == number, expected == value)
    assert json.loads((stage / "case.json").read_text())["outputs"] == res["outputs"]


def test_file_input_gets_no_dicom_seg(label_pipeline, tmp_path):
    from pantheon.io import Volume, write_volume
    path = write_volume(Volume(np.zeros((12, 20, 24), np.int16)), tmp_path / "ct.nii.gz")
    res = worker.process_case({"output": str(tmp_path / "out"), "case_id": "ct", "attempt": 1, "input": str(path)})
    assert res["state"] == "done", res.get("error")
    assert "organs.seg.nrrd" in res["outputs"] and not any(o.endswith(".dcm") for o in res["outputs"])


def test_a_seg_that_cannot_be_written_costs_the_case_nothing_else(label_pipeline, tmp_path):
    """No FrameOfReferenceUID (mandatory for CT): no valid SEG can reference the series. The case is
    done with its NIfTI and .seg.nrrd, and a one-sentence note (case.json, log) says why no SEG."""
    from test_io_files import _write_dicom_series
    from test_io_support import random_rotation

    from pantheon.io import Volume, read_volume
    vol = Volume(np.zeros((12, 20, 24), np.int16), (0.7, 0.9, 2.5), (1, 2, 3), random_rotation(2))
    _write_dicom_series(tmp_path / "ct", vol, "1.2.826.0.1.3680043.2.1125.4244.1")  # this writer sets no FoR
    res = worker.process_case({"output": str(tmp_path / "out"), "case_id": "ct", "attempt": 1,
                               "input": str(tmp_path / "ct"), "format": "nii.gz"})
    assert res["state"] == "done" and res["error"] is None
    stage = tmp_path / "out" / res["stage"]
    assert {"organs.nii.gz", "organs.seg.nrrd", "result.json", "case.json"} <= set(res["outputs"])
    assert not any(o.endswith(".dcm") for o in res["outputs"]) and not list(stage.glob("*.dcm*"))
    read_volume(stage / "organs.nii.gz")  # complete and readable
    doc = json.loads((stage / "case.json").read_text())
    assert doc["notes"] == res["notes"] and len(doc["notes"]) == 1
    note = doc["notes"][0]
    assert note.startswith("organs.seg.dcm skipped: ") and "FrameOfReferenceUID" in note and note.endswith(".")
    assert "\n" not in note and "Traceback" not in note
    log = (tmp_path / "out" / "logs" / "ct.log").read_text()
    assert f"note: {note}" in log and "Traceback" not in log


def test_an_empty_label_output_is_noted_not_failed(ct_series, monkeypatch, tmp_path):  # noqa: F811
    """A label output with nothing in it (no caries found, say) has no SEG to write: a note, not a failure."""
    folder, _ = ct_series

    def run(volume, context, options, progress=None):
        empty = volume.with_array(np.zeros(volume.shape, np.uint8))
        return Result(labels={"caries": LabelOutput(empty, [Segment(1, "caries", (1, 0, 0),
                                                                    ("SCT", "80967001", "Dental caries"))])})
    monkeypatch.setitem(pipelines.PIPELINES, "test-empty",
                        pipelines.BatchPipeline(name="test-empty", load=lambda options: None, run=run))
    import torch
    threads = torch.get_num_threads()
    try:
        worker.init_worker("test-empty", {}, threads)
        res = worker.process_case({"output": str(tmp_path), "case_id": "ct", "attempt": 1, "input": str(folder)})
    finally:
        torch.set_num_threads(threads)
    assert res["state"] == "done", res.get("error")
    assert "caries.seg.nrrd" in res["outputs"] and "caries.seg.dcm" not in res["outputs"]
    assert res["notes"] == ["caries.seg.dcm skipped: the label map is empty (no labelled voxel), nothing to save."]
