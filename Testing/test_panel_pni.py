"""PNIPredict, run in a real Qt the way Slicer runs it (see Testing/qt_harness): inputs picked
through its selectors, Predict and Synthesize clicked, the real worker with the bundled demo
weights. What lands in the scene and what the panel says are asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from qt_harness.fixtures import assert_unload_ends_the_worker, lib_fixture, panel_fixture, screenshot_dir, wait_idle

REPO = Path(__file__).resolve().parents[1]
MODULE = "PNIPredict"

pytestmark = pytest.mark.usefixtures("harness_checks")


panel = panel_fixture(MODULE)
lib = lib_fixture(MODULE)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory, lib):
    folder = tmp_path_factory.mktemp("panel-mri")
    mri, labels, info = lib.make_phantom_files(str(folder), sys.executable, seed=3, oblique=10.0, shape=(24, 64, 72),
                                               spacing=(4.0, 3.5, 6.0), orientation="LPI")
    return mri, labels


def _load_mri(harness, phantom, name="LiverMRI"):
    import slicer
    return slicer.util.loadVolume(phantom[0], {"name": name})


def _annotation(phantom, keep=((1, "liver"), (2, "tumour")), name="annotation"):
    """A segmentation as an annotator would have it: segments made from the phantom's label map."""
    import slicer
    import vtk
    labels = slicer.util.loadVolume(phantom[1], {"name": "labels", "labelmap": True, "show": False})
    arr = slicer.util.arrayFromVolume(labels)
    remap = np.zeros(arr.shape, np.uint8)
    for n, (value, _seg_name) in enumerate(keep):
        remap[arr == value] = n + 1
    slicer.util.updateVolumeFromArray(labels, remap)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    ids = vtk.vtkStringArray()
    for _v, seg_name in keep:
        ids.InsertNextValue(seg_name)
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, seg, ids)
    slicer.mrmlScene.RemoveNode(labels)
    return seg


def _segment_voxels(seg, segment_id, reference):
    import slicer
    return int(slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, reference).sum())


def test_panel_opens(harness, panel):
    ui = panel.ui
    assert panel.parent.isEntered and ui.applyButton.text == "Predict PNI"
    assert not ui.applyButton.enabled and not ui.synthesizeButton.enabled
    assert ui.probabilityLabel.text == "PNI probability: not computed yet"


def test_weights_and_worker_radios_are_separate_choices(harness, panel):
    """They share one parent widget; without button groups Qt made them one exclusive group."""
    ui = panel.ui
    ui.weightsFileRadioButton.click()
    ui.workerCustomPythonRadioButton.click()
    assert ui.weightsFileRadioButton.checked and ui.workerCustomPythonRadioButton.checked
    assert panel._parameterNode.weightsChoice == "file" and ui.workerPythonLineEdit.enabled
    ui.weightsDemoRadioButton.click()
    ui.workerSlicerPythonRadioButton.click()
    assert panel._parameterNode.weightsChoice == "demo" and not ui.workerPythonLineEdit.enabled


def test_synthesis_reference_follows_the_chosen_mri(harness, panel, phantom):
    ui = panel.ui
    harness.close_scene()
    first = _load_mri(harness, phantom, "first")
    second = _load_mri(harness, phantom, "second")
    ui.inputVolumeSelector._h_choose(first)
    assert panel._parameterNode.synthesisReference is first
    ui.inputVolumeSelector._h_choose(second)
    assert panel._parameterNode.synthesisReference is second  # not stuck on the first one ever picked
    ui.synthesisReferenceSelector._h_choose(first)  # the user's own choice is kept
    ui.inputVolumeSelector._h_choose(second)
    assert panel._parameterNode.synthesisReference is first


@pytest.mark.slow
def test_predict_with_neoseg_then_with_my_segmentation(harness, panel, lib):
    """On the sample MRI a user gets from Sample Data (the screenshot in the README)."""
    import slicer

    from pantheon import slicerbridge as bridge
    from pantheon.sampledata import DATA_DIR
    ui = panel.ui
    harness.close_scene()
    mri = slicer.util.loadVolume(str(DATA_DIR / "PantheonLiverMRIPhantom.nrrd"), {"name": "LiverMRI"})
    ui.inputVolumeSelector._h_choose(mri)
    before = slicer.util.arrayFromVolume(mri).copy()
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel"  # first the worker's Python is checked, then the job runs
    harness.wait_until(lambda: getattr(panel.task, "kind", None) != "prepare", 120, "the worker to be ready")
    if panel.task is not None:
        assert ui.probabilityLabel.text == "PNI probability: computing..."
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: predict", ui.errorLabel.text
    result = panel.logic.lastResult
    p = result.scalars["pni_probability"]
    assert ui.probabilityLabel.text == lib.probability_html(lib.probability_text(p, demo=True)) and 0.0 <= p <= 1.0
    assert "not for clinical use" in ui.probabilityLabel.text  # the caveat stays next to the number
    harness.screenshot(MODULE, screenshot_dir() / f"{MODULE}.png")
    assert "Tumour from: NeoSeg" in ui.caveatsLabel.text
    roi = result.nodes["crop_box"]
    box = lib.crop_box_of(result)
    assert ui.cropBoxLabel.text == lib.crop_box_text(box) and ui.cropBoxLabel.text.startswith("Crop box")
    np.testing.assert_allclose(bridge.roi_node_corners(roi), bridge.roi_corners_ras(box), atol=1e-4)
    heat = result.nodes["pni_attention"]
    assert heat.GetImageData().GetDimensions() == mri.GetImageData().GetDimensions()
    log = ui.logTextEdit.toPlainText()
    assert "crop_box: {" not in log and lib.crop_box_text(box) in log  # words, not JSON
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(mri), before)
    neoseg = result.nodes["tumour"]
    assert panel._parameterNode.synthesisSegmentation is neoseg  # offered for synthesis

    # the user edits NeoSeg's segmentation and predicts again with it: it must stay as they left it
    tumour_id = neoseg.GetSegmentation().GetSegmentIdBySegmentName("tumour")
    voxels = _segment_voxels(neoseg, tumour_id, mri)
    ui.useTumourSegmentationCheckBox.click()
    assert ui.useTumourSegmentationCheckBox.checked and ui.tumourSegmentSelector.enabled
    ui.tumourSegmentSelector._h_nodes._h_choose(neoseg)
    ui.tumourSegmentSelector._h_choose_segment(tumour_id)
    assert panel._parameterNode.tumourSegmentation is neoseg and panel._parameterNode.tumourSegmentId == tumour_id
    ui.applyButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: predict", ui.errorLabel.text
    second = panel.logic.lastResult
    assert second.notes["tumour_source"] == "supplied tumour mask"
    assert second.nodes["tumour"] is not neoseg, "a re-run must not write into the segmentation it read"
    assert neoseg.GetScene() is slicer.mrmlScene and _segment_voxels(neoseg, tumour_id, mri) == voxels
    assert second.nodes["crop_box"] is roi and second.nodes["pni_attention"] is heat  # re-run: same nodes
    ui.useTumourSegmentationCheckBox.click()


@pytest.mark.slow
def test_synthesize_and_cancel(harness, panel, phantom):
    import slicer
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(harness, phantom)
    seg = _annotation(phantom)
    ui.inputVolumeSelector._h_choose(mri)
    ui.synthesisSegmentationSelector._h_choose(seg)
    assert panel._parameterNode.synthesisReference is mri and ui.synthesizeButton.enabled
    ui.synthesisStepsSpinBox.value = 2
    ui.synthesisSeedSpinBox.value = 7
    ui.synthesizeButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: synthesize", ui.errorLabel.text
    patch = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                 if n.GetAttribute("Pantheon.Output") == "synthetic_mri_1")
    assert patch.GetImageData().GetDimensions() == mri.GetImageData().GetDimensions()
    values = slicer.util.arrayFromVolume(patch)
    assert np.isfinite(values).all() and (values != 0).any()
    assert seg.GetSegmentation().GetNumberOfSegments() == 2  # the annotation is untouched

    ui.synthesisStepsSpinBox.value = 1000  # long enough to cancel
    ui.synthesizeButton.click()
    assert ui.synthesizeButton.text == "Cancel" and not ui.applyButton.enabled  # one job at a time
    harness.pump(0.5)
    ui.synthesizeButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Cancelled" and ui.synthesizeButton.text == "Synthesize"
    assert ui.synthesizeButton.enabled and ui.applyButton.enabled


@pytest.mark.slow
def test_a_liver_only_segmentation_is_refused_in_the_panel(harness, panel, phantom):
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(harness, phantom)
    liver_only = _annotation(phantom, keep=((1, "liver"),), name="liver only")
    ui.inputVolumeSelector._h_choose(mri)
    ui.synthesisSegmentationSelector._h_choose(liver_only)
    shown = len(harness.dialogs.shown)
    ui.synthesizeButton.click()
    harness.process_events()
    assert panel.task is None and ui.errorLabel.visible and "needs a tumour segment" in ui.errorLabel.text
    assert any("needs a tumour segment" in t for t in harness.dialogs.texts(shown))


@pytest.mark.slow
def test_close_scene_leaves_nothing_stale(harness, panel, phantom, lib):
    import slicer
    ui = panel.ui
    harness.close_scene()
    p = panel._parameterNode
    assert p.inputVolume is None and p.synthesisReference is None and p.synthesisSegmentation is None
    assert not ui.applyButton.enabled and not ui.synthesizeButton.enabled
    assert ui.probabilityLabel.text == lib.probability_html("PNI probability: not computed yet")
    assert ui.cropBoxLabel.text == ""
    mri = _load_mri(harness, phantom, "new")
    harness.process_events()
    assert p.inputVolume is mri and p.synthesisReference is mri and ui.applyButton.enabled
    assert slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLMarkupsROINode") is None


@pytest.mark.slow
def test_self_test_runs_inside_the_harness(harness, panel):
    import slicer
    harness.close_scene()
    slicer.selfTests[MODULE](msec=0)
    assert any("Test passed" in m for m in harness.messages)


def test_leave_and_reenter(harness, panel):
    ui = panel.ui
    harness.leave_module()
    panel._parameterNode.showHeatmap = False  # changed by a script while the panel is hidden
    panel._parameterNode.synthesisSteps = 7
    assert ui.showHeatmapCheckBox.checked  # not bound while hidden
    harness.show_module(MODULE)
    assert not ui.showHeatmapCheckBox.checked and ui.synthesisStepsSpinBox.value == 7
    ui.showHeatmapCheckBox.click()
    assert panel._parameterNode.showHeatmap


@pytest.mark.slow  # starts a worker (15-20 s) unless an earlier slow test left one running
def test_unload_shuts_the_worker_down(harness, panel):
    assert_unload_ends_the_worker(harness, MODULE, panel.logic)
