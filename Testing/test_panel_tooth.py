"""ToothAnalysis, run in a real Qt the way Slicer runs it (see Testing/qt_harness): loaded as a
module, its widget set up and entered, inputs picked through its selectors, its buttons clicked,
the event loop pumped while its own timer polls the real worker (bundled demo weights).

What lands in the scene is asserted through the scene and through what the panel shows. Nothing
here depends on how many teeth the demo weights find.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from qt_harness.fixtures import assert_unload_ends_the_worker, lib_fixture, panel_fixture, screenshot_dir, wait_idle

REPO = Path(__file__).resolve().parents[1]
MODULE = "ToothAnalysis"

pytestmark = pytest.mark.usefixtures("harness_checks")


panel = panel_fixture(MODULE)
lib = lib_fixture(MODULE)


@pytest.fixture(scope="module")
def opg_file(tmp_path_factory, lib):
    folder = tmp_path_factory.mktemp("panel-opg")
    return lib.make_opg_file(str(folder / "opg.nrrd"), sys.executable, seed=5, size=(256, 512), oblique_deg=20.0)


def _rows(table):
    return [[table.item(r, c).text() if table.item(r, c) is not None else "" for c in range(table.columnCount)]
            for r in range(table.rowCount)]


def test_panel_opens_and_does_not_pick_a_ct_as_the_xray(harness, panel):
    import slicer
    ui = panel.ui
    assert panel.parent.isEntered
    assert ui.applyButton.text == "Analyze" and not ui.applyButton.enabled  # nothing to analyse yet
    assert ui.statusLabel.text == "Idle" and not ui.errorLabel.visible
    harness.close_scene()
    ct = slicer.util.addVolumeFromArray(np.zeros((20, 32, 32), np.int16), name="CT")
    harness.leave_module()
    harness.show_module(MODULE)
    # a 3D CT is not a panoramic X-ray: not chosen on entry, Analyze stays disabled
    assert ui.inputVolumeSelector.currentNode() is not ct
    assert panel._parameterNode.inputVolume is not ct and not ui.applyButton.enabled
    slicer.mrmlScene.RemoveNode(ct)


def test_weights_and_worker_radios_are_separate_choices(harness, panel):
    ui = panel.ui
    ui.weightsFileRadioButton.click()
    ui.workerCustomPythonRadioButton.click()
    assert ui.weightsFileRadioButton.checked and ui.workerCustomPythonRadioButton.checked
    assert ui.detectorPathLineEdit.enabled and ui.workerPythonLineEdit.enabled
    ui.weightsDemoRadioButton.click()
    ui.workerSlicerPythonRadioButton.click()
    assert panel._parameterNode.weightsChoice == "demo" and panel._parameterNode.workerPython == ""
    assert not ui.detectorPathLineEdit.enabled and not ui.workerPythonLineEdit.enabled


@pytest.mark.slow
def test_analyze_through_the_panel(harness, panel, lib):
    """On the sample X-ray a user gets from Sample Data (the screenshot in the README)."""
    import slicer

    from pantheon.sampledata import DATA_DIR
    ui = panel.ui
    harness.close_scene()
    node = slicer.util.loadVolume(str(DATA_DIR / "PantheonPanoramicXrayPhantom.nrrd"), {"name": "PanoramicXray"})
    ui.inputVolumeSelector._h_choose(node)
    assert panel._parameterNode.inputVolume is node and ui.applyButton.enabled
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel" and ui.applyButton.enabled  # Apply became Cancel
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: analyze", ui.errorLabel.text
    assert ui.applyButton.text == "Analyze" and ui.applyButton.enabled

    teeth = next(n for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode") if n.GetName().endswith("teeth"))
    seg = teeth.GetSegmentation()
    names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
    table = ui.findingsTableWidget
    rows = _rows(table)
    assert len(rows) == len(names) == table.rowCount and names, "one findings row per tooth segment"
    headers = [h for _k, h in lib.FINDINGS_COLUMNS]
    assert [table.horizontalHeaderItem(c).text() for c in range(table.columnCount)] == headers
    assert sorted(f"tooth {r[headers.index('Tooth (FDI)')]}" for r in rows) == sorted(names)
    assert {r[headers.index("Caries")] for r in rows} <= {"yes", "no"}  # words, not the table's 0/1
    assert ui.summaryLabel.text.startswith(f"{len(rows)} tooth" if len(rows) == 1 else f"{len(rows)} teeth")
    assert ui.chartLabel.pixmap is not None and not ui.chartLabel.pixmap.isNull()
    assert all(n.GetImageData().GetDimensions()[2] == 1 for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))

    # clicking a row centres the views on that tooth: the crosshair lands inside its box
    table.setCurrentCell(0, 0)
    table.cellClicked.emit(0, 0)
    row = panel.findingRows[0]
    crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    assert list(crosshair.GetCrosshairRAS()) == pytest.approx(lib.row_centre_ras(row), abs=1e-6)
    assert ui.selectedToothLabel.text == lib.finding_text(row)
    harness.screenshot(MODULE, screenshot_dir() / f"{MODULE}.png")


@pytest.mark.slow
def test_cancel_a_run(harness, panel, opg_file):
    import slicer
    ui = panel.ui
    harness.close_scene()
    node = slicer.util.loadVolume(opg_file, {"name": "ToCancel"})
    ui.inputVolumeSelector._h_choose(node)
    before = slicer.mrmlScene.GetNumberOfNodes()
    ui.applyButton.click()
    ui.applyButton.click()  # the same button is Cancel while it runs
    assert ui.applyButton.text in ("Cancelling...", "Analyze")
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Cancelled" and ui.applyButton.text == "Analyze" and ui.applyButton.enabled
    assert slicer.mrmlScene.GetNumberOfNodes() == before, "a cancelled run adds nothing to the scene"


@pytest.mark.slow
def test_a_missing_checkpoint_is_said_in_the_panel(harness, panel, opg_file, tmp_path):
    import slicer
    ui = panel.ui
    harness.close_scene()
    node = slicer.util.loadVolume(opg_file, {"name": "OPG"})
    ui.inputVolumeSelector._h_choose(node)
    ui.weightsFileRadioButton.click()
    ui.detectorPathLineEdit._h_type(str(tmp_path / "missing-detector.safetensors"))
    ui.henaPathLineEdit._h_type(str(tmp_path / "missing-hena.safetensors"))
    shown = len(harness.dialogs.shown)
    ui.applyButton.click()
    harness.process_events()
    assert panel.task is None and ui.errorLabel.visible
    assert "checkpoint file" in ui.errorLabel.text and "does not exist" in ui.errorLabel.text
    assert "Traceback" not in ui.errorLabel.text
    assert any("does not exist" in t for t in harness.dialogs.texts(shown))  # the error box, as Slicer shows it
    ui.weightsDemoRadioButton.click()


@pytest.mark.slow
def test_close_scene_then_new_data(harness, panel, opg_file):
    import slicer
    ui = panel.ui
    harness.close_scene()
    assert ui.findingsTableWidget.rowCount == 0 and not ui.applyButton.enabled
    assert ui.inputVolumeSelector.currentNode() is None and panel._parameterNode.inputVolume is None
    node = slicer.util.loadVolume(opg_file, {"name": "AfterClose"})
    harness.process_events()  # the panel looks at a new node once the reader is done
    assert ui.inputVolumeSelector.currentNode() is node  # the only 2D image: chosen for the empty input
    assert panel._parameterNode.inputVolume is node and ui.applyButton.enabled


def test_leave_and_reenter_keep_the_choices(harness, panel):
    ui = panel.ui
    ui.scoreThresholdSliderWidget._h_type(0.45)
    assert panel._parameterNode.scoreThreshold == pytest.approx(0.45)
    harness.leave_module()
    assert not panel.parent.isEntered
    panel._parameterNode.scoreThreshold = 0.5  # changed elsewhere (e.g. a script) while the panel is hidden
    assert ui.scoreThresholdSliderWidget.value == pytest.approx(0.45)  # not bound while hidden
    harness.show_module(MODULE)
    assert ui.scoreThresholdSliderWidget.value == pytest.approx(0.5)


@pytest.mark.slow
def test_self_test_runs_inside_the_harness(harness, panel):
    import slicer
    harness.close_scene()
    slicer.selfTests[MODULE](msec=0)
    assert any("Test passed" in m for m in harness.messages)


@pytest.mark.slow  # starts a worker (15-20 s) unless an earlier slow test left one running
def test_unload_shuts_the_worker_down(harness, panel):
    assert_unload_ends_the_worker(harness, MODULE, panel.logic)
