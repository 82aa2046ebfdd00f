"""LiverSynthesis, run in a real Qt the way Slicer runs it (see Testing/qt_harness): a segmentation
with an annotator's segment names picked up by the panel, its reference volume followed, Synthesize
MRI clicked with HCC edits (remove, grow, a new HCC at a point placed in a view), Cancel, and
Generate pairs into a folder, with the real worker and the bundled demo 3D-LLDM. The synthetic MRI
is checked voxel for voxel against the core ``synthesize`` on the oblique phantom's own grid, and
the edited labels against the core's edits."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from qt_harness.fixtures import assert_unload_ends_the_worker, lib_fixture, panel_fixture, screenshot_dir, wait_idle

REPO = Path(__file__).resolve().parents[1]
MODULE = "LiverSynthesis"
NAMES = ("Liver", "portal_vein", "Hepatic veins", "HCC")  # an annotator's spellings of labels 1-4

pytestmark = pytest.mark.usefixtures("harness_checks")


panel = panel_fixture(MODULE)
lib = lib_fixture(MODULE)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory, lib):
    """An oblique, anisotropic HBP liver MRI (24 x 64 x 72, PIL) with two HCCs and its 3D-LLDM labels."""
    folder = tmp_path_factory.mktemp("panel-hcc-mri")
    mri, labels, info = lib.make_phantom_files(str(folder), sys.executable, seed=7, oblique=12.0, shape=(24, 64, 72),
                                               orientation="PIL", n_hcc=2)
    return mri, labels


@pytest.fixture(scope="module")
def model():
    from pantheon.models.lldm.synthesis import load_model
    return load_model(None, "cpu")[0]


def _load_mri(phantom, name="LiverMRI"):
    import slicer
    return slicer.util.loadVolume(phantom[0], {"name": name})


def _annotation(phantom, reference=None, names=NAMES, extra=(), name="annotation"):
    """A segmentation as an annotator would have it: one segment per phantom label (value n -> names[n-1],
    None: left out), empty ``extra`` segments, and ``reference`` as its reference geometry volume."""
    import slicer
    import vtk
    labels = slicer.util.loadVolume(phantom[1], {"name": "labels", "labelmap": True, "show": False})
    arr = slicer.util.arrayFromVolume(labels)
    kept = [(v, n) for v, n in enumerate(names, start=1) if n is not None]
    remap = np.zeros(arr.shape, np.uint8)
    for index, (value, _n) in enumerate(kept, start=1):
        remap[arr == value] = index
    slicer.util.updateVolumeFromArray(labels, remap)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    ids = vtk.vtkStringArray()
    for _v, segment_name in kept:
        ids.InsertNextValue(segment_name)
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, seg, ids)
    slicer.mrmlScene.RemoveNode(labels)
    for segment_name in extra:
        seg.GetSegmentation().AddEmptySegment(segment_name, segment_name)
    if reference is not None:
        seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return seg


def _phantom_labels(phantom, reference):
    """The phantom's label map as Slicer reads it, as a pantheon Volume on ``reference``'s grid (the
    same voxels in the same index order as the node: what the panel exports for the worker)."""
    import slicer

    from pantheon import slicerbridge as bridge
    node = slicer.util.loadVolume(phantom[1], {"name": "phantom labels", "labelmap": True, "show": False})
    try:
        np.testing.assert_allclose(_ijk_to_ras(node), _ijk_to_ras(reference), atol=1e-6)
        return bridge.volume_from_node(reference).with_array(slicer.util.arrayFromVolume(node).copy())
    finally:
        slicer.mrmlScene.RemoveNode(node)


def _ijk_to_ras(node):
    import slicer
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _outputs():
    import slicer
    return {n.GetName(): n for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode")
            for n in slicer.util.getNodesByClass(cls) if n.GetAttribute("Pantheon.Output")}


def _labels_of(seg, reference):
    """A segmentation's segments as one 3D-LLDM map on the reference grid (by segment name)."""
    import slicer
    out = np.zeros(slicer.util.arrayFromVolume(reference).shape, np.uint8)
    segmentation = seg.GetSegmentation()
    for name, value in (("liver", 1), ("portal_vein", 2), ("hepatic_vein", 3), ("hcc", 4)):
        sid = segmentation.GetSegmentIdBySegmentName(name)
        if sid:
            out[slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, reference) > 0] = value
    return out


def test_panel_opens(harness, panel, lib):
    ui = panel.ui
    assert panel.parent.isEntered and ui.synthesizeButton.text == "Synthesize MRI"
    assert ui.generateButton.text == "Generate pairs"
    assert not ui.synthesizeButton.enabled and not ui.generateButton.enabled
    assert not ui.openIndexButton.enabled and not ui.loadPairButton.enabled
    assert ui.segmentsLabel.text == "Choose a segmentation with a liver segment."
    # the demo caveat is on show, not in the help only
    assert ui.warningLabel.text == lib.DEMO_WARNING and not ui.warningLabel.isHidden()
    assert "vessels less dark than in a real hepatobiliary phase" in ui.warningLabel.text


def test_the_scale_box_starts_at_the_demo_weights_own_scale(harness, panel):
    """Ticking "ControlNet scale" alone changes nothing: the box starts at the scale the bundled demo
    weights sample with (their card), which is what the unticked box uses."""
    import json

    from pantheon.registry import CARDS_DIR
    own = json.loads((CARDS_DIR / "lldm-demo.json").read_text())["extra"]["architecture"]["conditioning_scale"]
    assert not panel._parameterNode.useControlNetScale and not panel.ui.controlNetScaleSpinBox.enabled
    assert panel._parameterNode.controlNetScale == own == panel.ui.controlNetScaleSpinBox.value == 3.0
    assert f"({own:g} for the demo weights)" in panel.ui.controlNetScaleCheckBox.toolTip


def test_weights_choice_changes_the_caveat(harness, panel, lib, tmp_path):
    """The demo caveat stays as long as 3D-LLDM runs with the demo weights."""
    ui = panel.ui
    ui.weightsFileRadioButton.click()
    assert panel._parameterNode.weightsChoice == "file" and ui.lldmPathLineEdit.enabled
    assert ui.warningLabel.text == lib.DEMO_WARNING  # no 3D-LLDM file chosen yet
    ui.lldmPathLineEdit._h_type(str(tmp_path / "lldm.safetensors"))
    assert ui.warningLabel.text == lib.FILE_WARNING
    ui.weightsDemoRadioButton.click()
    assert ui.warningLabel.text == lib.DEMO_WARNING and not ui.lldmPathLineEdit.enabled
    panel._parameterNode.lldmPath = ""  # a script clears it (an emptied path field tells nobody)
    panel.syncSettingsWidgets()
    assert ui.lldmPathLineEdit.currentPath == ""


def test_segments_are_read_by_name_and_the_reference_follows(harness, panel, phantom):
    """A segmentation loaded after the panel opened is picked up; the reference is its reference
    geometry volume; the segments line names what each segment is used as."""
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(phantom)
    other = _load_mri(phantom, "other")
    seg = _annotation(phantom, mri, extra=("spleen",))
    harness.process_events()
    p = panel._parameterNode
    assert p.segmentation is seg and p.referenceVolume is mri
    assert ui.segmentsLabel.text == ("Segments used: 'Liver' as liver; 'portal_vein' as portal vein; 'Hepatic veins' "
                                     "as hepatic veins; 'HCC' as HCC. Not used: 'spleen'.")
    assert ui.synthesizeButton.enabled
    # renaming a segment in the Segment Editor updates the line at once
    segmentation = seg.GetSegmentation()
    segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("HCC")).SetName("Tumour 1")
    harness.process_events()
    assert "'Tumour 1' as HCC" in ui.segmentsLabel.text
    # a second segmentation drawn on the other volume: the reference follows it...
    second = _annotation(phantom, other, name="second")
    ui.segmentationSelector._h_choose(second)
    assert p.referenceVolume is other
    # ...unless the user chose the reference themselves
    mine = _load_mri(phantom, "mine")
    ui.referenceVolumeSelector._h_choose(mine)
    ui.segmentationSelector._h_choose(seg)
    assert p.referenceVolume is mine
    ui.segmentationSelector._h_choose(second)
    assert p.referenceVolume is mine


def test_without_a_reference_geometry_the_panel_asks_for_the_volume(harness, panel, phantom):
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(phantom)
    seg = _annotation(phantom, None, name="loaded from a .seg.nrrd")  # no reference geometry volume
    harness.process_events()
    p = panel._parameterNode
    assert p.segmentation is seg and p.referenceVolume is None
    assert ui.statusLabel.text == "Choose the reference volume: the grid the synthetic MRI lands on."
    assert not ui.synthesizeButton.enabled
    ui.referenceVolumeSelector._h_choose(mri)
    assert ui.synthesizeButton.enabled and ui.statusLabel.text == "Idle"


def test_a_segmentation_loaded_alone_synthesises_on_its_own_grid(harness, panel, lib, phantom, model, tmp_path):
    """A .seg.nrrd loaded without its image (as FOSCU's pairs are): the panel offers the grid the file
    carries; the empty volume it adds there has the file's exact geometry, and the synthetic MRI is
    the core's on that grid, voxel for voxel."""
    import slicer

    from pantheon.io import read_volume
    from pantheon.io.segnrrd import write_seg_nrrd
    from pantheon.models.lldm.synthesis import label_segments, synthesize
    from pantheon.results import LabelOutput
    ui = panel.ui
    harness.close_scene()
    labels = read_volume(phantom[1])
    path = write_seg_nrrd(LabelOutput(labels, label_segments()), tmp_path / "pair.seg.nrrd")
    seg = slicer.util.loadSegmentation(str(path))
    harness.process_events()
    p = panel._parameterNode
    assert p.segmentation is seg and p.referenceVolume is None
    assert ui.statusLabel.text == "Choose the reference volume, or use the segmentation's own grid."
    assert ui.segmentationGridButton.enabled and not ui.synthesizeButton.enabled
    ui.segmentationGridButton.click()
    grid = p.referenceVolume
    assert grid is not None and grid.GetName() == "pair grid" and not ui.segmentationGridButton.enabled
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is grid
    want_ijk_to_ras = labels.index_to_ras()
    np.testing.assert_allclose(_ijk_to_ras(grid), want_ijk_to_ras, atol=1e-9)
    assert slicer.util.arrayFromVolume(grid).shape == labels.shape and not slicer.util.arrayFromVolume(grid).any()
    ui.synthesisStepsSpinBox.value = 2
    ui.synthesisSeedSpinBox.value = 3
    assert ui.synthesizeButton.enabled
    ui.synthesizeButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: synthesize", ui.errorLabel.text
    volume = _outputs()["pair synthetic MRI"]
    np.testing.assert_allclose(_ijk_to_ras(volume), want_ijk_to_ras, atol=1e-6)
    want, _m = synthesize(labels, model, steps=2, seed=3).volumes["synthetic_mri"].to_slicer()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(volume), want, atol=2e-5)


def test_a_segmentation_without_a_liver_is_refused_in_one_sentence(harness, panel, phantom):
    import slicer
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(phantom)
    seg = _annotation(phantom, mri, names=(None, None, None, "HCC"), extra=("spleen",), name="tumours only")
    ui.segmentationSelector._h_choose(seg)
    harness.process_events()
    sentence = ("No liver segment in 'tumours only' (segments: 'HCC', 'spleen'); 3D-LLDM synthesises the MRI around a "
                "liver, so name the liver's segment 'liver'.")
    assert ui.segmentsLabel.text == sentence and ui.statusLabel.text == sentence
    assert not ui.synthesizeButton.enabled
    # the same sentence from the logic (scripts), before any worker is asked
    with pytest.raises(ValueError) as err:
        panel.logic.submitSynthesis(seg, mri)
    assert str(err.value) == sentence
    # adding a liver segment fixes it: the hint goes, the button comes
    seg.GetSegmentation().AddEmptySegment("liver", "liver")
    harness.process_events()
    assert ui.synthesizeButton.enabled and ui.statusLabel.text == "Idle"
    assert "'liver' as liver" in ui.segmentsLabel.text
    # an empty liver on this grid is refused when the job starts (with the error box)
    shown = len(harness.dialogs.shown)
    panel.runAction("synthesize")
    assert panel.task is None and "has no voxel inside 'LiverMRI'" in ui.errorLabel.text
    assert any("has no voxel inside" in t for t in harness.dialogs.texts(shown))
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetAttribute("Pantheon.Output")]


def test_a_bad_hcc_number_is_refused_in_one_sentence(harness, panel, phantom):
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(phantom)
    seg = _annotation(phantom, mri)
    ui.segmentationSelector._h_choose(seg)
    ui.removeHCCLineEdit.setText("first")
    assert panel._parameterNode.removeHCC == "first"
    panel.runAction("synthesize")
    assert panel.task is None
    assert ui.errorLabel.text == ("HCC numbers to remove must be whole numbers from 1 (the largest HCC), e.g. '1, 3'; "
                                  "got 'first'.")
    ui.removeHCCLineEdit.setText("")


@pytest.mark.slow
def test_synthesize_lands_on_the_reference_voxels_then_edits_replace_it(harness, panel, lib, phantom, model):
    """The synthetic MRI is the core's, voxel for voxel, on the oblique MRI's grid; with edits the
    edited labels come back and both nodes are replaced by a rerun; without edits the stale edited
    labels go. The README screenshot is taken after the edited run."""
    import slicer

    from pantheon.models.lldm.edits import apply_edits
    from pantheon.models.lldm.synthesis import synthesize
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(phantom)
    seg = _annotation(phantom, mri, extra=("spleen",))
    harness.process_events()
    assert panel._parameterNode.segmentation is seg and panel._parameterNode.referenceVolume is mri
    before = slicer.util.arrayFromVolume(mri).copy()
    ui.synthesisStepsSpinBox.value = 2
    ui.synthesisSeedSpinBox.value = 7
    ui.synthesizeButton.click()
    assert ui.synthesizeButton.text == "Cancel" and not ui.generateButton.enabled
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: synthesize", ui.errorLabel.text
    outputs = _outputs()
    assert set(outputs) == {"annotation synthetic MRI"}  # no edits: no edited labels
    volume = outputs["annotation synthetic MRI"]
    assert volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA("vtkMRMLLabelMapVolumeNode")
    assert volume.GetImageData().GetDimensions() == mri.GetImageData().GetDimensions()
    np.testing.assert_allclose(_ijk_to_ras(volume), _ijk_to_ras(mri), atol=1e-6)
    labels = _phantom_labels(phantom, mri)
    want, _m = synthesize(labels, model, steps=2, seed=7).volumes["synthetic_mri"].to_slicer()
    got = slicer.util.arrayFromVolume(volume)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert got.std() > 0.05  # a picture, not a constant
    log = ui.logTextEdit.toPlainText()
    assert "Segments used: 'Liver' as liver;" in log and "Not used: 'spleen'." in log
    assert ui.synthesisResultLabel.text.startswith("annotation synthetic MRI: on the grid of LiverMRI. Conditioned on: "
                                                   "liver ")
    assert "warning: Demo weights" in log
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(mri), before)  # the input is untouched

    # edits: remove the largest HCC, grow the other by 3 mm, a new 20 mm HCC at a point placed deep in the liver
    from scipy import ndimage
    depth = ndimage.distance_transform_edt(labels.array == 1)
    k, j, i = np.unravel_index(np.argmax(depth), depth.shape)
    ras = (_ijk_to_ras(mri) @ [i, j, k, 1.0])[:3]
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "new HCC")
    ui.addHCCPointsSelector._h_choose(points)
    ui.addHCCPlaceWidget.placeButton().click()
    ui.addHCCPlaceWidget._h_click_in_view(ras)
    assert points.GetNumberOfControlPoints() == 1
    ui.removeHCCLineEdit.setText("1")
    ui.growHCCSpinBox.value = 3.0
    ui.addHCCDiameterSpinBox.value = 20.0
    ui.synthesizeButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: synthesize", ui.errorLabel.text
    outputs = _outputs()
    assert set(outputs) == {"annotation synthetic MRI", "annotation edited labels"}
    assert outputs["annotation synthetic MRI"] is volume  # replaced in place
    edited = outputs["annotation edited labels"]
    expected = apply_edits(labels, labels.array, remove=[1], grow_mm=3.0, add=[((ras * [-1, -1, 1]).tolist(), 20.0)])
    np.testing.assert_array_equal(_labels_of(edited, mri), expected)
    assert (expected == 4).sum() != (labels.array == 4).sum()
    want, _m = synthesize(labels.with_array(expected), model, steps=2, seed=7).volumes["synthetic_mri"].to_slicer()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(volume), want, atol=2e-5)
    assert "Edits: removed HCC 1; every other HCC grown by 3 mm; 1 new HCC of 20 mm." in ui.synthesisResultLabel.text
    assert seg.GetSegmentation().GetNumberOfSegments() == 5  # the user's segmentation is untouched
    shot = harness.screenshot(MODULE, screenshot_dir() / f"{MODULE}.png")  # lays the panel out at its size
    bar = ui.logTextEdit.verticalScrollBar()
    bar.setValue(bar.maximum())  # the log's newest lines, as a user watching it sees them
    harness.screenshot(MODULE, shot)

    # no edits again: the same volume node, and the edited labels (no longer its labels) are gone
    ui.removeHCCLineEdit.setText("")
    ui.growHCCSpinBox.value = 0.0
    ui.addHCCPointsSelector._h_choose(None)
    count = slicer.mrmlScene.GetNumberOfNodes()
    ui.synthesizeButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: synthesize", ui.errorLabel.text
    assert set(_outputs()) == {"annotation synthetic MRI"} and _outputs()["annotation synthetic MRI"] is volume
    assert edited.GetScene() is None and slicer.mrmlScene.GetNumberOfNodes() < count


def test_unchecked_vessels_are_left_to_the_model(harness, panel, phantom, model):
    """"Steered by": unchecking the vessels sends ``use`` = liver, HCC; the volume is the core's with
    the same choice, the log and result line say it, and the choice stays in the parameter node."""
    import slicer

    from pantheon.models.lldm.synthesis import synthesize
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(phantom)
    _annotation(phantom, mri)
    harness.process_events()
    assert ui.steerPortalVeinCheckBox.checked and ui.steerHepaticVeinCheckBox.checked and ui.steerHCCCheckBox.checked
    ui.synthesisStepsSpinBox.value = 2
    ui.synthesisSeedSpinBox.value = 3
    ui.steerPortalVeinCheckBox.click()
    ui.steerHepaticVeinCheckBox.click()
    p = panel._parameterNode
    assert not p.steerPortalVein and not p.steerHepaticVein and p.steerHCC
    ui.synthesizeButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: synthesize", ui.errorLabel.text
    volume = _outputs()["annotation synthetic MRI"]
    labels = _phantom_labels(phantom, mri)
    want, _m = synthesize(labels, model, steps=2, seed=3, use=("liver", "hcc")).volumes["synthetic_mri"].to_slicer()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(volume), want, atol=2e-5)
    said = "Steered by liver, HCC; the model drew the portal vein and hepatic veins itself."
    assert said in ui.logTextEdit.toPlainText() and said in ui.synthesisResultLabel.text
    ui.steerPortalVeinCheckBox.click()
    ui.steerHepaticVeinCheckBox.click()
    assert p.steerPortalVein and p.steerHepaticVein


@pytest.mark.slow
def test_cancel_synthesis(harness, panel, phantom):
    import slicer
    ui = panel.ui
    harness.close_scene()
    mri = _load_mri(phantom)
    seg = _annotation(phantom, mri)
    ui.segmentationSelector._h_choose(seg)
    ui.synthesisStepsSpinBox.value = 1000  # long enough to cancel
    ui.synthesizeButton.click()
    assert ui.synthesizeButton.text == "Cancel" and not ui.generateButton.enabled  # one job at a time
    harness.pump(0.5)
    ui.synthesizeButton.click()
    assert ui.synthesizeButton.text == "Cancelling..."
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Cancelled" and ui.synthesizeButton.text == "Synthesize MRI"
    assert ui.synthesizeButton.enabled
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetAttribute("Pantheon.Output")]
    ui.synthesisStepsSpinBox.value = 2


@pytest.fixture(scope="module")
def tiny_labelgen(tmp_path_factory):
    """A small untrained FOSCU label generator as a weights file (the panel's "weights files" route)."""
    if not (REPO / "pantheon" / "models" / "foscu" / "tasks.py").is_file():
        pytest.skip("the worker task foscu.generate (pantheon/models/foscu/tasks.py) is not written yet")
    import torch

    from pantheon.models.foscu.labelgen import build_labelgen, save_labelgen
    torch.manual_seed(0)
    model = build_labelgen(grid=(32, 32, 32), ae_channels=(8, 8, 8), unet_channels=(8, 8, 8),
                           unet_num_head_channels=(0, 0, 8)).eval()
    return save_labelgen(model, tmp_path_factory.mktemp("labelgen") / "labelgen.safetensors")


@pytest.mark.slow
def test_generate_pairs_then_open_the_index_and_load_the_first_pair(harness, panel, lib, tiny_labelgen, tmp_path):
    import slicer
    ui = panel.ui
    harness.close_scene()
    ui.generateCollapsibleButton.collapsed = False
    ui.weightsFileRadioButton.click()
    ui.labelgenPathLineEdit._h_type(str(tiny_labelgen))
    folder = tmp_path / "synthetic pairs"
    ui.pairsFolderPathLineEdit._h_type(str(folder))
    assert panel._parameterNode.pairsFolder == str(folder) and ui.generateButton.enabled
    ui.pairsCountSpinBox.value = 2
    ui.pairsSeedSpinBox.value = 3
    ui.pairsLabelStepsSpinBox.value = 2
    ui.pairsImageStepsSpinBox.value = 2
    ui.generateButton.click()
    assert ui.generateButton.text == "Cancel" and not ui.synthesizeButton.enabled
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: generate", ui.errorLabel.text
    summary = panel.lastSummary
    assert summary["folder"] == str(folder) and summary["pairs"] == 2 and summary["made_now"] == 2
    assert ui.generationResultLabel.text == lib.generation_text(summary)
    assert ui.generationResultLabel.text.startswith(f"Made 2 new pairs (2 in {folder}")
    assert lib.generation_text(summary) in ui.logTextEdit.toPlainText()
    with open(folder / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["seed"] for r in rows] == ["3", "4"] and (folder / "index.html").is_file()

    opened = []
    panel.urlOpener = opened.append
    assert ui.openIndexButton.enabled and ui.loadPairButton.enabled
    ui.openIndexButton.click()
    assert opened == [str(folder / "index.html")]
    ui.loadPairButton.click()
    volume = slicer.util.getFirstNodeByName("pair-00000")
    labels = slicer.util.getFirstNodeByName("pair-00000 labels")
    assert volume.IsA("vtkMRMLScalarVolumeNode") and labels.IsA("vtkMRMLSegmentationNode")
    assert panel.logic.defaultReference(labels) is volume  # ready to synthesise from
    from pantheon.io import read_volume
    image = read_volume(folder / "images" / "pair-00000.nii.gz")
    np.testing.assert_allclose(slicer.util.arrayFromVolume(volume), image.to_slicer()[0], atol=1e-6)
    names = {labels.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(labels.GetSegmentation().GetNumberOfSegments())}
    assert names and names <= {"liver", "portal_vein", "hepatic_vein", "hcc"}

    # the same request again: the folder is complete, nothing is made, and the panel says so
    ui.generateButton.click()
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: generate", ui.errorLabel.text
    assert panel.lastSummary["made_now"] == 0
    assert ui.generationResultLabel.text.startswith(f"Made no new pair: {folder} already holds pairs 1 to 2")
    ui.weightsDemoRadioButton.click()


def test_an_output_file_instead_of_a_folder_is_refused(harness, panel, tmp_path):
    ui = panel.ui
    not_a_folder = tmp_path / "pairs.txt"
    not_a_folder.write_text("x")
    ui.pairsFolderPathLineEdit._h_type(str(not_a_folder))
    panel.runAction("generate")
    assert panel.task is None
    assert ui.errorLabel.text == f"{not_a_folder} is a file, not a folder; choose a folder for the pairs."


def test_leave_and_reenter(harness, panel):
    ui = panel.ui
    harness.leave_module()
    panel._parameterNode.synthesisSteps = 7  # changed by a script while the panel is hidden
    panel._parameterNode.removeHCC = "2, 3"
    panel._parameterNode.useControlNetScale = True
    assert ui.removeHCCLineEdit.text != "2, 3"  # not bound while hidden
    harness.show_module(MODULE)
    assert ui.synthesisStepsSpinBox.value == 7 and ui.removeHCCLineEdit.text == "2, 3"
    assert ui.controlNetScaleCheckBox.checked and ui.controlNetScaleSpinBox.enabled
    ui.controlNetScaleCheckBox.click()
    assert not panel._parameterNode.useControlNetScale and not ui.controlNetScaleSpinBox.enabled
    ui.removeHCCLineEdit.setText("")


def test_close_scene_leaves_nothing_stale(harness, panel, phantom):
    ui = panel.ui
    harness.close_scene()
    p = panel._parameterNode
    assert p.segmentation is None and p.referenceVolume is None and p.addHCCPoints is None
    assert not ui.synthesizeButton.enabled and ui.synthesisResultLabel.text == ""
    assert ui.segmentsLabel.text == "Choose a segmentation with a liver segment."
    mri = _load_mri(phantom, "new")
    seg = _annotation(phantom, mri, name="new annotation")
    harness.process_events()
    assert p.segmentation is seg and p.referenceVolume is mri and ui.synthesizeButton.enabled


@pytest.mark.slow
def test_self_test_runs_inside_the_harness(harness, panel):
    import slicer
    harness.close_scene()
    slicer.selfTests[MODULE](msec=0)
    assert any("Test passed" in m for m in harness.messages)
    assert "Removing the largest HCC and synthesizing again" in harness.messages


@pytest.mark.slow  # starts a worker unless an earlier slow test left one running
def test_unload_shuts_the_worker_down(harness, panel):
    assert_unload_ends_the_worker(harness, MODULE, panel.logic)
