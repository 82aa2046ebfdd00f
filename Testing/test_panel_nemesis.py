"""NemesisSlicer, run in a real Qt the way Slicer runs it (see Testing/qt_harness): organ maps,
feature PCA, reconstruction at the crosshair, similarity that follows a placed point, probe
training from segmentations in the scene, all through the panel's widgets and the real worker
with the bundled demo weights."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from qt_harness.fixtures import assert_unload_ends_the_worker, lib_fixture, panel_fixture, screenshot_dir, wait_idle

REPO = Path(__file__).resolve().parents[1]
MODULE = "NemesisSlicer"

pytestmark = pytest.mark.usefixtures("harness_checks")


panel = panel_fixture(MODULE)
lib = lib_fixture(MODULE)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory, lib):
    """Two CT phantoms with their full 13-structure BTCV label maps."""
    out = []
    for seed in (3, 4):
        folder = tmp_path_factory.mktemp(f"panel-ct{seed}")
        out.append(lib.make_phantom_files(str(folder), sys.executable, seed=seed, oblique=10.0, shape=(40, 56, 56)))
    return out


def _load(phantom, name):
    import slicer
    return slicer.util.loadVolume(phantom[0], {"name": name})


def _segmentation(phantom, name):
    """The label map as an annotator's segmentation: one segment per BTCV structure, named as BTCV names them."""
    import slicer
    import vtk

    from pantheon.synth.ct_phantom import BTCV_LABELS
    labels = slicer.util.loadVolume(phantom[1], {"name": "labels", "labelmap": True, "show": False})
    present = sorted(int(v) for v in np.unique(slicer.util.arrayFromVolume(labels)) if v)
    remap = np.zeros_like(slicer.util.arrayFromVolume(labels))
    for n, value in enumerate(present):
        remap[slicer.util.arrayFromVolume(labels) == value] = n + 1
    slicer.util.updateVolumeFromArray(labels, remap)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    ids = vtk.vtkStringArray()
    for value in present:
        ids.InsertNextValue(BTCV_LABELS[value])
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, seg, ids)
    slicer.mrmlScene.RemoveNode(labels)
    return seg, present


def test_panel_opens_and_radio_choices_are_separate(harness, panel):
    ui = panel.ui
    for button in (ui.organsApplyButton, ui.pcaApplyButton, ui.reconstructApplyButton, ui.similarityApplyButton,
                   ui.atypicalityApplyButton, ui.trainProbeButton):
        assert not button.enabled
    ui.weightsFileRadioButton.click()
    ui.workerCustomPythonRadioButton.click()  # "Another interpreter" can be chosen at all
    assert ui.weightsFileRadioButton.checked and ui.workerCustomPythonRadioButton.checked
    assert ui.weightsPathLineEdit.enabled and ui.workerPythonLineEdit.enabled
    ui.weightsDemoRadioButton.click()
    ui.workerSlicerPythonRadioButton.click()
    assert panel._parameterNode.weightsChoice == "demo" and panel._parameterNode.workerPython == ""

    # precision: the parameter's choices in the combo box, and the choice reaches the worker's parameters
    combo = ui.precisionComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == ["fp32", "int8", "bf16", "fp16"]
    assert panel._parameterNode.precision == "fp32" and combo.currentText == "fp32"
    combo.setCurrentIndex(1)
    assert panel._parameterNode.precision == "int8"
    sent = {}
    panel.logic.submit, original = (lambda action, node, **kw: sent.update(kw)), panel.logic.submit
    try:
        panel._parameterNode.inputVolume = None
        panel.submitAction("pca")
    finally:
        panel.logic.submit = original
        combo.setCurrentIndex(0)
    assert sent["precision"] == "int8" and panel._parameterNode.precision == "fp32"


@pytest.mark.slow
def test_organ_maps_pca_and_reconstruction(harness, panel):
    """On the sample CT a user gets from Sample Data (the screenshot in the README)."""
    import slicer

    from pantheon.sampledata import DATA_DIR
    ui = panel.ui
    harness.close_scene()
    ct_file = DATA_DIR / "PantheonAbdominalCTPhantom.nrrd"
    ct = slicer.util.loadVolume(str(ct_file), {"name": "AbdominalCT"})
    ui.inputVolumeSelector._h_choose(ct)
    for box in (ui.organAortaCheckBox, ui.organGallbladderCheckBox, ui.organStomachCheckBox, ui.organPancreasCheckBox,
                ui.organLeftKidneyCheckBox, ui.organRightKidneyCheckBox):
        box.click()  # keep liver and spleen
    assert panel._parameterNode.organLiver and not panel._parameterNode.organAorta
    ui.organsApplyButton.click()
    assert ui.organsApplyButton.text == "Cancel" and not ui.pcaApplyButton.enabled
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: organs", ui.errorLabel.text
    maps = {n.GetAttribute("Pantheon.Output"): n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if n.GetAttribute("Pantheon.Action") == "organs"}
    assert set(maps) == {"liver", "spleen"}
    # what a value means reaches the user: the log and each map's description (Data module)
    assert "block" in ui.logTextEdit.toPlainText() and "outside the body" in ui.logTextEdit.toPlainText()
    assert "centred on this voxel" in maps["liver"].GetDescription()
    # the maps are exactly the pipeline's, voxel for voxel, on the CT's grid
    from pantheon.io import read_volume
    from pantheon.pipelines import nemesis as nem
    engine = nem.load_engine(device="cpu")
    expected = nem.organ_maps(read_volume(ct_file), engine, nem.load_probe_for(engine), ["liver", "spleen"])
    for organ in ("liver", "spleen"):
        want, _m = expected.heatmaps[organ].volume.to_slicer()
        np.testing.assert_allclose(slicer.util.arrayFromVolume(maps[organ]), want, atol=1e-5)
        np.testing.assert_allclose(_ijk_to_ras(maps[organ]), _ijk_to_ras(ct), atol=1e-6)

    ui.pcaCollapsibleButton.collapsed = False
    ui.pcaApplyButton.click()
    wait_idle(harness, panel)
    pca = next(n for n in slicer.util.getNodesByClass("vtkMRMLVectorVolumeNode")
               if n.GetAttribute("Pantheon.Action") == "pca")
    assert pca.GetImageData().GetNumberOfScalarComponents() == 3
    assert pca.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()

    centre = _ijk_to_ras(ct) @ np.r_[(np.array(ct.GetImageData().GetDimensions()) - 1) / 2.0, 1.0]
    crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    crosshair.SetCrosshairRAS(*centre[:3])
    ui.reconstructCollapsibleButton.collapsed = False
    ui.reconstructApplyButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: reconstruct", ui.errorLabel.text
    assert "PSNR" in ui.reconstructMetricsLabel.text and "hidden patches" in ui.reconstructMetricsLabel.text
    ui.pcaCollapsibleButton.collapsed = True
    harness.screenshot(MODULE, screenshot_dir() / f"{MODULE}.png")


def _ijk_to_ras(node):
    import slicer
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


@pytest.mark.slow
def test_similarity_follows_a_placed_point(harness, panel, phantoms):
    import slicer
    ui = panel.ui
    harness.close_scene()
    ct = _load(phantoms[0], "CT")
    ui.inputVolumeSelector._h_choose(ct)
    ui.similarityCollapsibleButton.collapsed = False
    point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    ui.similarityPointSelector._h_choose(point)
    assert panel._parameterNode.similarityPoint is point and panel._parameterNode.similarityAutoUpdate
    assert not ui.similarityApplyButton.enabled  # no point placed yet
    place = ui.similarityPlaceWidget
    place.placeButton().click()
    assert place.placeModeEnabled
    centre = _ijk_to_ras(ct) @ np.r_[np.array(ct.GetImageData().GetDimensions()) / 2.0, 1.0]
    place._h_click_in_view(centre[:3])
    assert not place.placeModeEnabled and ui.similarityApplyButton.enabled
    # placing the point starts the (immediate) similarity job by itself, although the panel was idle
    harness.wait_until(lambda: panel.task is not None and panel.task.action == "similarity", 10, "a similarity job")
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: similarity", ui.errorLabel.text
    sim = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
               if n.GetAttribute("Pantheon.Action") == "similarity")
    first = slicer.util.arrayFromVolume(sim).copy()
    # dragging the point: one job once it rests, answered from cached features
    corner = _ijk_to_ras(ct) @ np.r_[np.array(ct.GetImageData().GetDimensions()) / 8.0, 1.0]  # other tokens
    point.SetNthControlPointPositionWorld(0, *corner[:3])
    harness.wait_until(lambda: panel.task is not None, 10, "the debounced similarity job")
    wait_idle(harness, panel)
    assert not np.array_equal(slicer.util.arrayFromVolume(sim), first), "the map follows the point"
    # auto update off: moving the point starts nothing
    ui.similarityAutoUpdateCheckBox.click()
    assert not panel._parameterNode.similarityAutoUpdate
    point.SetNthControlPointPositionWorld(0, *centre[:3])
    harness.pump(1.0)
    assert panel.task is None and ui.statusLabel.text == "Done: similarity"
    ui.similarityAutoUpdateCheckBox.click()
    harness.pump(0.5)
    wait_idle(harness, panel)


@pytest.mark.slow
def test_atypicality_map_over_the_whole_ct(harness, panel, phantoms):
    """The masked-reconstruction error over the whole CT: the pipeline's map, voxel for voxel, on
    the oblique CT's grid, as the overlay of every view; a rerun replaces it."""
    import slicer

    from pantheon.io import read_volume
    from pantheon.models.nemesis.atypicality import atypicality
    from pantheon.pipelines import nemesis as nem
    ui, p = panel.ui, panel._parameterNode
    harness.close_scene()
    ct = _load(phantoms[0], "CT")
    ui.inputVolumeSelector._h_choose(ct)
    ui.atypicalityCollapsibleButton.collapsed = False
    assert p.atypicalityDraws == 4 and ui.atypicalityDrawsSpinBox.value == 4 and ui.atypicalityApplyButton.enabled
    ui.atypicalityDrawsSpinBox.value = 2
    assert p.atypicalityDraws == 2
    ui.atypicalityApplyButton.click()
    assert ui.atypicalityApplyButton.text == "Cancel" and not ui.organsApplyButton.enabled
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: atypicality", ui.errorLabel.text
    maps = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if n.GetAttribute("Pantheon.Action") == "atypicality"]
    assert len(maps) == 1
    heat = maps[0]
    np.testing.assert_allclose(_ijk_to_ras(heat), _ijk_to_ras(ct), atol=1e-6)
    assert heat.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    want = atypicality(read_volume(phantoms[0][0]), nem.load_engine(device="cpu"), draws=2, seed=0)
    expected, _m = want.heatmaps["atypicality"].volume.to_slicer()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(heat), expected, atol=1e-4)
    assert heat.GetAttribute("Pantheon.Colormap") == "magma" and "not a diagnosis" in heat.GetDescription()
    for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (ct.GetID(), heat.GetID())
    log = ui.logTextEdit.toPlainText()
    mean = want.scalars["mean_error_in_body_hu"]
    assert f"Atypicality map over 2 mask draws: mean reconstruction error in the body {mean:.1f} HU" in log
    harness.screenshot(MODULE, screenshot_dir() / f"{MODULE}-atypicality.png")
    # more draws: the same node, a new map (more voxels hidden at least once)
    ui.atypicalityDrawsSpinBox.value = 6
    ui.atypicalityApplyButton.click()
    wait_idle(harness, panel)
    assert [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if n.GetAttribute("Pantheon.Action") == "atypicality"] == [heat]
    assert not np.allclose(slicer.util.arrayFromVolume(heat), expected)
    assert "over 6 mask draws" in ui.logTextEdit.toPlainText()
    ui.atypicalityCollapsibleButton.collapsed = True


@pytest.mark.slow
def test_train_probe_from_two_btcv_segmentations(harness, panel, phantoms):
    ui = panel.ui
    harness.close_scene()
    ui.trainCollapsibleButton.collapsed = False
    cases = []
    for n, phantom in enumerate(phantoms):
        volume = _load(phantom, f"case{n}")
        seg, present = _segmentation(phantom, f"case{n} BTCV")
        assert len(present) > 8  # a full BTCV segmentation: more structures than the probe's 8 organs
        cases.append((volume, seg))
    ui.trainVolumeSelector._h_choose(cases[0][0])
    ui.trainSegmentationSelector._h_choose(cases[0][1])
    ui.addTrainPairButton.click()
    assert ui.trainPairsListWidget.count == 1 and not ui.trainProbeButton.enabled  # one case is not enough
    ui.trainVolumeSelector._h_choose(cases[1][0])
    ui.trainSegmentationSelector._h_choose(cases[1][1])
    ui.addTrainPairButton.click()
    assert ui.trainPairsListWidget.count == 2 and ui.trainProbeButton.enabled
    ui.probeEpochsSpinBox.value = 5
    ui.trainProbeButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: train_probe", ui.errorLabel.text
    assert ui.probePathLineEdit.currentPath.endswith("probe.safetensors")
    log = ui.logTextEdit.toPlainText()
    assert "not probe organs, left out" in log and "esophagus" in log

    # File > Close Scene: the cases belong to that scene; nothing stale stays enabled
    harness.close_scene()
    assert ui.trainPairsListWidget.count == 0 and not ui.trainProbeButton.enabled
    assert not ui.organsApplyButton.enabled and ui.reconstructMetricsLabel.text == "-"
    fresh = _load(phantoms[1], "fresh")
    harness.process_events()
    assert panel.trainPairs == [] and panel._parameterNode.inputVolume is fresh and ui.organsApplyButton.enabled
    ui.probePathLineEdit.currentPath = ""


@pytest.mark.slow
def test_cancel_and_errors_in_the_panel(harness, panel, phantoms, tmp_path):
    import slicer
    ui = panel.ui
    harness.close_scene()
    ct = _load(phantoms[0], "CT")
    ui.inputVolumeSelector._h_choose(ct)
    ui.organsApplyButton.click()
    ui.organsApplyButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Cancelled" and ui.organsApplyButton.text == "Compute organ maps"
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetAttribute("Pantheon.Action")]

    ui.weightsFileRadioButton.click()
    ui.weightsPathLineEdit._h_type(str(tmp_path / "nope.safetensors"))
    shown = len(harness.dialogs.shown)
    ui.pcaApplyButton.click()
    harness.process_events()
    assert ui.errorLabel.visible and "does not exist" in ui.errorLabel.text and panel.task is None
    assert any("does not exist" in t for t in harness.dialogs.texts(shown))

    # the official checkpoint: asked first (no wait cursor over the question); declining runs nothing
    ui.weightsOfficialRadioButton.click()
    if not panel.logic.officialWeightsCached():
        harness.dialogs.answers.append(False)
        ui.pcaApplyButton.click()
        harness.process_events()
        assert "not downloaded" in ui.errorLabel.text and panel.task is None
    ui.weightsDemoRadioButton.click()


@pytest.mark.slow
def test_official_weights_are_downloaded_before_the_action(harness, panel, phantoms, lib, monkeypatch):
    """Asked once (before anything waits), downloaded on a thread with progress, then the action
    it was for runs. The download itself (network, checksum) is tested in test_registry_download.py;
    here it is replaced, and the official card is answered with the demo weights."""
    import slicer
    ui = panel.ui
    harness.close_scene()
    ct = _load(phantoms[0], "CT")
    ui.inputVolumeSelector._h_choose(ct)
    logic_class = type(panel.logic)
    cached = [False]

    def download(progress, cancel):
        progress(0.5, "Downloading the official checkpoint...")
        cached[0] = True
        return "/cache/nemesis-mae-768.pt"

    monkeypatch.setattr(logic_class, "officialWeightsCached", lambda self: cached[0])
    monkeypatch.setattr(logic_class, "startOfficialWeightsDownload",
                        lambda self, followUp=None: lib.ThreadTask(followUp or "download", download, followUp))
    demo = lib.weights_params(lib.WEIGHTS_DEMO)
    monkeypatch.setattr(logic_class, "weightsArgument", lambda self, choice, path=None, allowDownload=False: demo)
    ui.weightsOfficialRadioButton.click()
    shown = len(harness.dialogs.shown)
    harness.dialogs.answers.append(True)
    ui.pcaApplyButton.click()
    wait_idle(harness, panel)
    assert harness.dialogs.texts(shown)[0].startswith("Download the official NEMESIS checkpoint")
    assert "Weights ready: /cache/nemesis-mae-768.pt" in ui.logTextEdit.toPlainText()
    assert ui.statusLabel.text == "Done: pca", ui.errorLabel.text
    assert any(n.GetAttribute("Pantheon.Action") == "pca" for n in slicer.util.getNodesByClass("vtkMRMLVolumeNode"))
    ui.pcaApplyButton.click()  # cached now: no second question
    wait_idle(harness, panel)
    assert len(harness.dialogs.shown) == shown + 1
    ui.weightsDemoRadioButton.click()


@pytest.mark.slow
def test_self_test_runs_inside_the_harness(harness, panel):
    import slicer
    harness.close_scene()
    slicer.selfTests[MODULE](msec=0)
    assert any("Test passed" in m for m in harness.messages)


@pytest.mark.slow  # starts a worker (15-20 s) unless an earlier slow test left one running
def test_leave_reenter_and_unload(harness, panel):
    ui = panel.ui
    harness.leave_module()
    panel._parameterNode.maskRatioPlane = 0.25
    harness.show_module(MODULE)
    assert ui.maskRatioPlaneSlider.value == pytest.approx(0.25)
    assert_unload_ends_the_worker(harness, MODULE, panel.logic)
