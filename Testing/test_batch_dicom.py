"""A batch case whose input is a DICOM series and whose result has labels gets a DICOM SEG
(for PACS tools) and a .seg.nrrd (for Slicer) in its case folder."""

import json

import numpy as np
import pydicom
import pytest

from pantheon.anatomy import BTCV_ORGANS
from pantheon.batch import pipelines, worker
from pantheon.results import LabelOutput, Result, Segment
from test_export_dicom_seg import ct_series, _label_map  # noqa: F401  (module fixture)


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
