"""ToothAnalysis module below the Qt layer.

No Slicer application runs here. ToothAnalysis.py is loaded in-process with the stand-ins of
slicer_standins.py for what PyPI ``slicer-core`` lacks (``qt``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``); everything else is real: the
MRML scene, segmentations, tables, slice and crosshair nodes, ``slicer.util``, the worker
subprocess with the bundled demo weights and the scene bridge. What stays untested here is the Qt
widget itself (signals, layouts, the table widget and the chart pixmap).

The demo weights are retrained from time to time: nothing here depends on how many teeth they find.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from slicer_standins import (
    archetype_load_volume,
    bound_parameters,
    custom_widgets_declared,
    has_section,
    ijk_to_ras,
    module_lib,
    needs_worker,
    parameter_node_fields,
    slicer_module,
    ui_widgets,
    used_ui_names,
    worker_logic,
)

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "ToothAnalysis"
MODULE_FILE = MODULE_DIR / "ToothAnalysis.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ToothAnalysis.ui"

lib = module_lib(MODULE_DIR, "ToothAnalysisLib")  # pure Python

ROW = {"tooth": 36, "score": 0.91, "caries_area_mm2": None, "caries_pixels": 12, "anomaly_probability": 0.2,
       "anomaly_pixels": 0, "stage": "H", "stage_probability": 0.87, "box_x0": 10.0, "box_y0": 20.0,
       "box_x1": 30.0, "box_y1": 60.0, "centre_lps_x": -12.5, "centre_lps_y": 40.25, "centre_lps_z": 3.0,
       "box_width_mm": 6.0, "box_height_mm": 12.0}


# ============================================================================ pure helpers


def test_weights_choice_mapping(tmp_path):
    assert lib.weights_params("demo") == {"detector": "mathena-demo-detector", "hena": "mathena-demo-hena"}
    assert lib.weights_params(None) == lib.weights_params("demo")
    det, hena = tmp_path / "det.safetensors", tmp_path / "hena.safetensors"
    det.write_bytes(b"x")
    hena.write_bytes(b"y")
    assert lib.weights_params("file", str(det), str(hena)) == {"detector": str(det.resolve()),
                                                                "hena": str(hena.resolve())}
    with pytest.raises(ValueError, match="HENA checkpoint file .* does not exist"):
        lib.weights_params("file", str(det), str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="Choose the tooth detector"):
        lib.weights_params("file", "", str(hena))
    with pytest.raises(ValueError, match="Unknown weights choice"):
        lib.weights_params("official")


def test_build_params():
    p = lib.build_params(score_thresh=0.4, device="cpu")
    assert p == {"detector": "mathena-demo-detector", "hena": "mathena-demo-hena", "score_thresh": 0.4, "device": "cpu"}
    assert lib.build_params(weights={"detector": "/d", "hena": "/h"})["detector"] == "/d"
    with pytest.raises(ValueError, match="between 0 and 1"):
        lib.build_params(score_thresh=1.5)
    with pytest.raises(ValueError, match="device"):
        lib.build_params(device="tpu")


def test_names_match_the_worker_and_pipeline():
    from pantheon.models.mathena.tasks import TASKS as MATHENA_PIPELINES
    assert lib.PIPELINE in MATHENA_PIPELINES and lib.ACTIONS == {"analyze": "mathena.analyze"}
    pytest.importorskip("torch")
    from pantheon.pipelines import mathena as mt
    assert (lib.DEMO_DETECTOR_CARD, lib.DEMO_HENA_CARD) == (mt.DEMO_DETECTOR_CARD, mt.DEMO_HENA_CARD)
    assert lib.tooth_segment_name(36) == mt.tooth_name(36) and lib.tooth_segment_name("48") == mt.tooth_name(48)


def test_findings_text_and_cells():
    assert lib.row_centre_lps(ROW) == [-12.5, 40.25, 3.0]
    assert lib.row_centre_ras(ROW) == [12.5, -40.25, 3.0]
    assert lib.row_centre_ras({"tooth": 11}) is None
    assert lib.row_centre_ras(dict(ROW, centre_lps_x=float("nan"))) is None
    assert lib.row_centre_ras(dict(ROW, centre_lps_x="1.5", centre_lps_y="2", centre_lps_z="0")) == [-1.5, -2.0, 0.0]
    assert lib.finding_text(ROW) == "Tooth 36: caries; stage H (0.87)"
    assert lib.finding_text(dict(ROW, caries_pixels=0, anomaly_probability=0.7)) == "Tooth 36: anomaly; stage H (0.87)"
    assert lib.finding_text({"tooth": "21.0"}) == "Tooth 21: no caries or anomaly found"
    # the pipeline's calls win over pixels/probability, also as the text a table node gives back
    assert lib.finding_text(dict(ROW, caries="False", anomaly="True")) == "Tooth 36: anomaly; stage H (0.87)"
    assert lib.finding_text(dict(ROW, caries=True, anomaly=False, anomaly_probability=0.9)) == \
        "Tooth 36: caries; stage H (0.87)"
    assert lib.format_cell("anomaly", True) == "yes" and lib.format_cell("caries", False) == "no"
    # as a table node gives them back (the real-Qt panel showed 0/1 before)
    assert [lib.format_cell("caries", v) for v in (1, 0, "1", "0", "True", "false")] == ["yes", "no"] * 3
    assert lib.format_cell("tooth", 36.0) == "36" and lib.format_cell("score", 0.9134) == "0.91"
    assert lib.format_cell("caries_area_mm2", float("nan")) == "" and lib.format_cell("caries_area_mm2", 7.25) == "7.2"
    assert lib.format_cell("caries_pixels", 12) == "12" and lib.format_cell("stage", "H") == "H"
    assert lib.summary_text({"n_teeth": 1, "n_caries": 0, "n_anomaly": 1}, {"warning": "Demo."}) == \
        "1 tooth detected; caries in 0, anomaly in 1. Demo."


def test_chart_path_from_result(tmp_path):
    (tmp_path / "chart.png").write_bytes(b"\x89PNG")
    assert lib.chart_path_from_result({"files": {"chart": "chart.png"}, "output_dir": str(tmp_path)}) == \
        str(tmp_path / "chart.png")
    assert lib.chart_path_from_result({"files": {"chart": "gone.png"}, "output_dir": str(tmp_path)}) is None
    assert lib.chart_path_from_result({"outputs": {}}) is None and lib.chart_path_from_result(None) is None


@pytest.mark.slow
def test_make_opg_file_runs_in_a_separate_python(tmp_path):
    from pantheon.io import read_volume
    path = lib.make_opg_file(str(tmp_path / "opg.nrrd"), sys.executable, seed=1, size=(96, 192), oblique_deg=30.0,
                             rgb=True)
    vol = read_volume(path)
    assert vol.shape == (1, 96, 192) and vol.components == 3
    assert abs(vol.direction[0, 0]) < 0.95 and np.isclose(np.linalg.det(vol.direction), 1.0)


# ============================================================================ the .ui file


def _strings(widget, prop):
    return [s.text for s in widget.findall(f"property[@name='{prop}']/stringlist/string")]


def test_ui_has_every_widget_the_code_uses():
    widgets, root = ui_widgets(UI_FILE)
    used = used_ui_names(MODULE_FILE)
    assert used, "the widget code uses no ui names?"
    assert used - set(widgets) == set(), f"missing in the .ui: {sorted(used - set(widgets))}"
    assert widgets["inputVolumeSelector"].get("class") == "qMRMLNodeComboBox"
    assert set(_strings(widgets["inputVolumeSelector"], "nodeTypes")) == {"vtkMRMLScalarVolumeNode",
                                                                          "vtkMRMLVectorVolumeNode"}
    assert "vtkMRMLLabelMapVolumeNode" in _strings(widgets["inputVolumeSelector"], "hideChildNodeTypes")
    expected = {"findingsTableWidget": "QTableWidget", "chartLabel": "QLabel", "applyButton": "QPushButton",
                "progressBar": "QProgressBar", "errorLabel": "QLabel", "scoreThresholdSliderWidget": "ctkSliderWidget"}
    for name, cls in expected.items():
        assert widgets[name].get("class") == cls, name
    for name in ("Inputs", "Weights and device", "Findings", "Log"):
        assert has_section(widgets, name), name
    assert custom_widgets_declared(widgets, root)


def test_ui_parameter_names_are_parameter_node_fields():
    widgets, _ = ui_widgets(UI_FILE)
    fields = parameter_node_fields(MODULE_FILE, "ToothAnalysisParameterNode")
    bound = bound_parameters(widgets)
    assert set(bound.values()) == {"inputVolume", "scoreThreshold"} and set(bound.values()) <= set(fields)
    # the parameter node wrapper sets the selector's node types from this annotation: scalar and RGB
    # images; Optional, so that the wrapper can store its default None (the harness tests open the panel)
    assert fields["inputVolume"] == "Optional[Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]]"
    assert {"weightsChoice", "detectorPath", "henaPath", "device", "workerPython"} <= set(fields)


# ============================================================================ module against real MRML


@pytest.fixture(scope="module")
def tooth():
    yield from slicer_module("ToothAnalysis", MODULE_DIR)


@pytest.fixture
def scene(tooth, mrml_scene):
    return mrml_scene


_matrix = ijk_to_ras


def _slice_node(scene, name, axes):
    """A slice node whose SliceToRAS columns are ``axes`` (x, y, normal); slicer-core has no
    orientation presets (the application registers them)."""
    import slicer
    node = slicer.vtkMRMLSliceNode()
    node.SetName(name)
    node.SetLayoutName(name)
    m = node.GetSliceToRAS()
    for c, axis in enumerate(axes):
        for r in range(3):
            m.SetElement(r, c, float(axis[r]))
    node.UpdateMatrices()
    node.SetFieldOfView(250.0, 200.0, 1.0)
    scene.AddNode(node)
    return node


def test_module_loads_without_worker_or_torch(tooth):
    logic = tooth.ToothAnalysisLogic()
    assert logic.moduleName == "ToothAnalysis" and logic._client is None  # nothing started at import
    assert "torch" not in vars(tooth)


def test_findings_table_rows_and_view_centring(tooth, scene):
    """A known row: the table round-trips through MRML, the views centre on the row's RAS point,
    views showing the image plane zoom to the tooth, and a parent transform is applied."""
    import slicer

    from pantheon import slicerbridge as bridge
    logic = tooth.ToothAnalysisLogic()
    node = slicer.util.addVolumeFromArray(np.zeros((1, 80, 120), np.uint8), name="opg")
    assert logic.findingsTable(node) is None and logic.chartPath(node) is None
    other = dict(ROW, tooth=11, centre_lps_x=5.0, caries_area_mm2=1.5)
    imported = bridge.import_result({"tables": {"findings": [ROW, other]}}, node, lib.ACTION, show=False)
    table = imported.tables["findings"]
    assert logic.findingsTable(node) is table
    rows = logic.findingsRows(table)
    assert [r["tooth"] for r in rows] == [36, 11] and rows[0]["stage"] == "H"
    assert rows[0]["centre_lps_y"] == pytest.approx(40.25) and np.isnan(rows[0]["caries_area_mm2"])
    assert logic.findingsRows(None) == []

    crosshair = scene.AddNewNodeByClass("vtkMRMLCrosshairNode")
    red = _slice_node(scene, "Red", [(-1, 0, 0), (0, 1, 0), (0, 0, 1)])  # axial
    yellow = _slice_node(scene, "Yellow", [(0, -1, 0), (0, 0, 1), (-1, 0, 0)])  # sagittal
    ras = logic.centreOnFinding(rows[0], node)
    assert ras == [12.5, -40.25, 3.0]
    assert list(crosshair.GetCrosshairRAS()) == pytest.approx(ras)
    for view in (red, yellow):
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(view.GetSliceToRAS())[:3, 3], ras, atol=1e-6)
    # the axial view shows the image plane: zoomed to 4 x the box's larger side; the sagittal one is not
    assert min(red.GetFieldOfView()[:2]) == pytest.approx(4 * 12.0)
    assert yellow.GetFieldOfView()[:2] == pytest.approx((250.0, 200.0))

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.array(
        [[1, 0, 0, 10.0], [0, 1, 0, -5.0], [0, 0, 1, 2.0], [0, 0, 0, 1]])))
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert logic.centreOnFinding(rows[0], node, zoom=False) == pytest.approx([22.5, -45.25, 5.0])
    with pytest.raises(ValueError, match="no tooth centre"):
        logic.centreOnFinding({"tooth": 11}, node)


# ---------------------------------------------------------------------------- with the real worker


@pytest.fixture(scope="module")
def logic(tooth):
    yield from worker_logic(tooth.ToothAnalysisLogic, "removeCharts")


@pytest.fixture(scope="module")
def opg_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("tooth-opg")
    return lib.make_opg_file(str(d / "opg.nrrd"), sys.executable, seed=5, size=(256, 512), oblique_deg=25.0)


def _load(scene, path, name):
    import slicer
    slicer.mrmlScene = scene
    return archetype_load_volume(path, {"name": name})


def segment_mask(segmentation_node, segment_id, reference):
    """A segment as a (K, J, I) array on the reference volume's grid (slicer-core has no
    slicer.modules, which slicer.util.arrayFromSegmentBinaryLabelmap needs)."""
    import slicer
    import vtk
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    tmp = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, tmp, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        np.testing.assert_allclose(_matrix(tmp), _matrix(reference), atol=1e-6)
        return slicer.util.arrayFromVolume(tmp).copy()
    finally:
        slicer.mrmlScene.RemoveNode(tmp)


def _segment_names(seg_node):
    seg = seg_node.GetSegmentation()
    return {seg.GetNthSegment(i).GetName(): seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())}


def _box_pixels(row):
    """Pixel index bounds (half-open) whose centres lie inside a pixel-edge box."""
    c0, r0 = int(np.ceil(row["box_x0"] - 0.5)), int(np.ceil(row["box_y0"] - 0.5))
    c1, r1 = int(np.ceil(row["box_x1"] - 0.5)), int(np.ceil(row["box_y1"] - 0.5))
    return r0, r1, c0, c1


@needs_worker
@pytest.mark.slow
def test_analyze_oblique_opg_end_to_end(tooth, logic, scene, opg_file):
    import slicer

    from pantheon.slicerbridge import ATTR_INPUT
    node = _load(scene, opg_file, "opg")
    m = _matrix(node)
    assert abs(m[0, 0]) / np.linalg.norm(m[:3, 0]) < 0.95, "the test image's grid should be oblique"
    before = slicer.util.arrayFromVolume(node).copy()
    task = logic.submit(node, device="cpu")
    assert os.path.isdir(task.temp_dir) and (os.stat(task.temp_dir).st_mode & 0o777) == 0o700
    seen = []
    imported = logic.wait(task, progress=lambda f, msg: seen.append((f, msg)), timeout=300)
    assert not os.path.exists(task.temp_dir), "the private temp folder is removed"
    assert seen and all(0.0 <= f <= 1.0 for f, _ in seen)

    # outputs: three segmentations, two probability maps, the findings table, all tied to the input
    assert {"teeth", "caries", "anomaly"} <= {k for k, n in imported.nodes.items() if n.IsA("vtkMRMLSegmentationNode")}
    for name in ("caries_probability", "anomaly_probability"):
        heat = imported.nodes[name]
        np.testing.assert_allclose(_matrix(heat), m, atol=1e-6)
        assert slicer.util.arrayFromVolume(heat).shape == before.shape
    table = imported.tables["findings"]
    assert table.GetAttribute(ATTR_INPUT) == node.GetID()
    rows = logic.findingsRows(table)
    assert len(rows) == int(imported.scalars["n_teeth"])
    teeth = imported.nodes["teeth"]
    names = _segment_names(teeth)
    assert set(names) == {lib.tooth_segment_name(r["tooth"]) for r in rows}, "one segment per tooth, by FDI"
    assert set(_segment_names(imported.nodes["caries"])) == {"caries"}
    assert set(_segment_names(imported.nodes["anomaly"])) == {"anomaly"}
    assert "warning" in imported.notes  # demo weights are labelled as such

    # the chart survives the job's temp folder
    chart = logic.chartPath(node)
    assert chart and Path(chart).read_bytes()[:4] == b"\x89PNG" and not chart.startswith(task.temp_dir)

    # oblique, flipped grid: each tooth segment lies on its box's pixels; the best-scoring one fills it
    if rows:
        best = max(rows, key=lambda r: r["score"])
        for row in sorted(rows, key=lambda r: -r["score"])[:3]:
            mask = segment_mask(teeth, names[lib.tooth_segment_name(row["tooth"])], node)[0].astype(bool)
            r0, r1, c0, c1 = _box_pixels(row)
            # the table's box corners are rounded to 0.01 px, so an edge pixel may go either way
            outer, inner = np.zeros_like(mask), np.zeros_like(mask)
            outer[max(r0 - 1, 0):r1 + 1, max(c0 - 1, 0):c1 + 1] = True
            inner[r0 + 1:r1 - 1, c0 + 1:c1 - 1] = True
            assert mask.any() or row is not best
            assert not (mask & ~outer).any(), f"tooth {row['tooth']} outside its box"
            if row is best:
                assert mask[inner].all(), "the best-scoring tooth's segment fills its box"
            # centring: the RAS point the views jump to is the box centre on this grid
            ras = logic.centreOnFinding(row, node)
            i, j, k = (np.linalg.inv(m) @ np.array(list(ras) + [1.0]))[:3]
            assert abs(k) < 1e-4 and c0 - 0.5 <= i <= c1 - 0.5 and r0 - 0.5 <= j <= r1 - 0.5
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)  # the input is never modified
    np.testing.assert_allclose(_matrix(node), m)

    # re-run with another threshold: the same nodes are reused and updated
    ids = {k: n.GetID() for k, n in imported.nodes.items()}
    again = logic.process(node, device="cpu", score_thresh=0.6, timeout=300)
    assert {k: n.GetID() for k, n in again.nodes.items()} == ids
    assert again.tables["findings"].GetID() == table.GetID()
    assert again.notes.get("model_cache") == "hit"
    assert all(r["score"] >= 0.6 for r in logic.findingsRows(table))
    assert logic.chartPath(node) == chart and os.path.isfile(chart)


@needs_worker
@pytest.mark.slow
def test_rgb_vector_volume_lands_on_the_same_pixels(tooth, logic, scene, opg_file):
    """An RGB (vector) volume of the same picture on the same oblique grid gives the same teeth."""
    import slicer

    gray = _load(scene, opg_file, "gray")
    arr, m = slicer.util.arrayFromVolume(gray), _matrix(gray)
    rgb = slicer.util.addVolumeFromArray(np.repeat(arr[..., None], 3, axis=-1), ijkToRAS=m, name="rgb",
                                         nodeClassName="vtkMRMLVectorVolumeNode")
    assert rgb.IsA("vtkMRMLVectorVolumeNode")
    a = logic.process(gray, device="cpu", score_thresh=0.5, timeout=300)
    b = logic.process(rgb, device="cpu", score_thresh=0.5, timeout=300)
    assert a.tables["findings"].GetID() != b.tables["findings"].GetID()  # per input, nothing shared
    rows_a = logic.findingsRows(a.tables["findings"])
    rows_b = logic.findingsRows(b.tables["findings"])
    assert len(rows_b) == int(b.scalars["n_teeth"])
    common = sorted({r["tooth"] for r in rows_a} & {r["tooth"] for r in rows_b})
    assert len(common) >= 0.9 * max(len(rows_a), len(rows_b))
    for fdi in common[:4]:
        name = lib.tooth_segment_name(fdi)
        ma = segment_mask(a.nodes["teeth"], _segment_names(a.nodes["teeth"])[name], gray)
        mb = segment_mask(b.nodes["teeth"], _segment_names(b.nodes["teeth"])[name], rgb)
        assert ma.shape == arr.shape and np.mean(ma == mb) > 0.99
    for node in b.nodes.values():
        if node.IsA("vtkMRMLVolumeNode"):
            np.testing.assert_allclose(_matrix(node), m, atol=1e-6)


@needs_worker
@pytest.mark.slow
def test_cancel_and_input_errors(tooth, logic, scene, opg_file):
    import slicer
    node = _load(scene, opg_file, "opg")
    task = logic.submit(node, device="cpu", score_thresh=0.0)
    task.cancel()
    with pytest.raises(lib.TaskError) as err:
        logic.wait(task, timeout=120)
    assert err.value.kind == "cancelled" and task.state == "cancelled"
    assert not os.path.exists(task.temp_dir)
    assert logic.client.ping()  # the worker survives a cancel
    ct = slicer.util.addVolumeFromArray(np.zeros((4, 96, 96), np.int16), name="ct")
    with pytest.raises(lib.TaskError) as err:
        logic.process(ct, device="cpu", timeout=60)
    assert err.value.kind == "input" and "3D volume" in err.value.message
    with pytest.raises(ValueError, match="Choose a panoramic"):
        logic.submit(None)


@needs_worker
@pytest.mark.slow
def test_self_test_runs_against_the_real_scene(tooth, scene, monkeypatch):
    """ToothAnalysisTest with the demo weights; loadVolume (which needs the application) is replaced
    by the reader Slicer uses."""
    import slicer
    monkeypatch.setattr(slicer.util, "loadVolume", archetype_load_volume)
    monkeypatch.setenv("PANTHEON_SELFTEST_REQUIRE_WORKER", "1")
    test = tooth.ToothAnalysisTest()
    test.messages = []
    test.runTest()
    assert "Test passed" in test.messages and "Analysing with the demo weights" in test.messages

