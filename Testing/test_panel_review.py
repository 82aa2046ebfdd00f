"""PantheonReview, run in a real Qt the way Slicer runs it (see Testing/qt_harness): real batch
folders (nemesis-organs over three CT phantoms, neonet-predict over an MR phantom) are opened through
the panel's folder field, cases are accepted, rejected and corrected through its buttons and
keyboard shortcuts, and what lands in the batch folder (manifest, corrected label maps) and in the
scene is asserted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from qt_harness.fixtures import panel_fixture, screenshot_dir

from pantheon.batch.review import ReviewSession
from pantheon.io import read_volume
from pantheon.outputs import FileLock

REPO = Path(__file__).resolve().parents[1]
MODULE = "PantheonReview"
SHAPE = (32, 48, 48)

pytestmark = pytest.mark.usefixtures("harness_checks")


panel = panel_fixture(MODULE)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """Two real batch folders: nemesis-organs (liver map only) over three CT phantoms (the last one
    oblique), and neonet-predict (a label output "tumour": liver 1, tumour 2, and an attention map)
    over one MR phantom."""
    from pantheon.cli import main
    from pantheon.io import write_volume
    from pantheon.synth import make_abdomen_phantom
    from pantheon.synth.mri_phantom import make_liver_mri_phantom
    root = tmp_path_factory.mktemp("review-panel")
    cts, mrs = root / "cts", root / "mrs"
    cts.mkdir()
    mrs.mkdir()
    for s in range(3):
        ct, _lab = make_abdomen_phantom(s, shape=SHAPE, oblique=(s == 2))
        write_volume(ct, cts / f"ct{s}.nii.gz")
    mri, _lab, _info = make_liver_mri_phantom(1, shape=(20, 72, 72), spacing=(2.0, 2.0, 3.0), oblique=True)
    write_volume(mri, mrs / "mr1.nii.gz")
    assert main(["batch", "nemesis-organs", "--input", str(cts), "--output", str(root / "ct-out"), "--quiet",
                 "--organs", "liver"]) == 0
    assert main(["batch", "neonet-predict", "--input", str(mrs), "--output", str(root / "mr-out"), "--quiet",
                 "--workers", "1"]) == 0
    return {"ct": root / "ct-out", "mr": root / "mr-out"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest(folder: Path) -> dict:
    return {c["case_id"]: c for c in json.loads((folder / "manifest.json").read_text())["cases"]}


def _ijk_to_ras(node):
    import slicer
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _open(harness, panel, folder) -> None:
    panel.ui.batchFolderPathLineEdit._h_type(str(folder))
    harness.process_events()


def _shortcut(key: str):
    """The panel's shortcut on Slicer's main window for ``key`` (None when it is not installed)."""
    import qt
    import slicer
    found = [s for s in slicer.util.mainWindow().findChildren(qt.QShortcut) if s.key.toString() == key]
    assert len(found) <= 1, f"{len(found)} shortcuts on {key}"
    return found[0] if found else None


def _press(harness, key: str) -> None:
    """What pressing ``key`` in Slicer's main window does: the shortcut's activated() signal."""
    shortcut = _shortcut(key)
    assert shortcut is not None and shortcut.enabled, f"no shortcut on {key}"
    shortcut.activated.emit()
    harness.process_events()


def _case_nodes(case_id: str) -> list:
    """Every node of the scene that belongs to ``case_id`` (named after it, or tagged with it)."""
    import slicer
    scene = slicer.mrmlScene
    out = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        name = node.GetName() or ""
        if name == case_id or name.startswith(case_id + " ") or node.GetAttribute("PantheonReview.Case") == case_id:
            out.append(node)
    return out


def _paint(segmentation_node, segment_id: str, mask, volume) -> None:
    """Replace a segment's voxels by ``mask`` (K, J, I on ``volume``'s grid): what painting and
    erasing in the Segment Editor leaves in the segment's binary labelmap."""
    import slicer
    import vtk
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "painted")
    labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(_ijk_to_ras(volume)))
    slicer.util.updateVolumeFromArray(labelmap, np.asarray(mask, np.uint8))
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids)
    slicer.mrmlScene.RemoveNode(labelmap)


def _segment_mask(segmentation_node, segment_id, volume):
    import slicer
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume) > 0


def test_label_values_and_texts(harness, panel):
    """What a correction's segments are saved as, which output a corrected file corrects, and the
    panel's texts (pure Python; the harness only loaded the module)."""
    import sys

    from pantheon.slicerbridge.review import correction_output_name, correction_values
    spec = [{"value": 1, "name": "liver", "code": ["SCT", "10200004", "Liver"]},
            {"value": 2, "name": "tumour", "code": ["SCT", "108369006", "Neoplasm"]}]
    values, added = correction_values([("liver", None), ("Tumour", None), ("Label 5", None), ("hepar", "10200004"),
                                       ("Segment_1", None)], spec)
    assert values == {"liver": 1, "Tumour": 2, "Label 5": 5, "hepar": 1, "Segment_1": 6}
    assert added == ["the new segment 'Segment_1' is saved as label 6"]
    values, added = correction_values([("liver", None), ("Spleen", None), ("kidney_left", None), ("blob", None)], [],
                                      btcv=True)
    assert values == {"liver": 6, "Spleen": 1, "kidney_left": 3, "blob": 12} and len(added) == 1
    assert correction_output_name("ct1/tumour.corrected-2.nii.gz", {"tumour": "tumour.nii.gz"}) == "tumour"
    assert correction_output_name("ct0/segmentation.corrected.nii.gz", {}) == "segmentation"
    assert correction_output_name("ct0/liver.corrected.nrrd", {"organs": "organs.nrrd"}) == "liver"
    lib = sys.modules[f"{MODULE}Lib.core"]
    assert lib.status_text({"cases": 3, "unreviewed": 3}, 5) == (
        "0 of 3 cases reviewed: 0 accepted, 0 rejected, 0 corrected. 2 cases are not done (failed or pending) and "
        "not shown.")
    review = {"decision": "corrected", "rating": 2, "reviewer": "dr-a", "comment": "edge"}
    assert lib.case_text("ct1", 1, 3, review) == "Case ct1 (2 of 3): corrected, rating 2 by dr-a (edge)."
    assert lib.one_sentence(RuntimeError("")) == "Unexpected error (RuntimeError)."
    assert [key for key, _action in lib.SHORTCUTS][:5] == ["Ctrl+Shift+Left", "Ctrl+Shift+Right", "N", "A", "X"]


def test_a_folder_that_is_not_a_batch_says_so_in_one_sentence(harness, panel, tmp_path):
    ui = panel.ui
    assert not ui.acceptButton.enabled and not ui.nextButton.enabled and not ui.saveCorrectionButton.enabled
    (tmp_path / "images").mkdir()
    _open(harness, panel, tmp_path / "images")
    text = ui.statusLabel.text
    assert "is not a Pantheon batch output folder (it has no manifest.json)" in text
    assert "\n" not in text and "Traceback" not in text and text.endswith(".")
    assert panel.logic.session is None and not ui.acceptButton.enabled
    _open(harness, panel, tmp_path / "nowhere")
    assert ui.statusLabel.text == f"The folder {tmp_path / 'nowhere'} does not exist."
    # a manifest that is not one
    (tmp_path / "images" / "manifest.json").write_text("{not json")
    _open(harness, panel, tmp_path / "images-again")
    _open(harness, panel, tmp_path / "images")
    assert "cannot be read" in ui.statusLabel.text and "\n" not in ui.statusLabel.text


def test_open_loads_the_first_unreviewed_case_on_its_grid(harness, panel, batches, tmp_path):
    import slicer
    ui = panel.ui
    harness.close_scene()
    out = _copy(batches["ct"], tmp_path / "ct-out")
    ReviewSession(out, reviewer="earlier").record("ct0", "accepted", rating=5)  # reviewed before
    _open(harness, panel, out)
    assert panel.logic.caseId == "ct1", ui.statusLabel.text
    assert ui.progressLabel.text.startswith("1 of 3 cases reviewed: 1 accepted, 0 rejected, 0 corrected")
    assert ui.caseLabel.text == "Case ct1 (2 of 3): not reviewed yet."
    assert ui.previousButton.enabled and ui.nextButton.enabled and ui.acceptButton.enabled
    case = panel.logic.case
    image = _manifest(out)["ct1"]["input"]
    # the image on the voxels of its file: as Slicer's own reader (ITK) puts it, and as pantheon reads it
    reference = slicer.util.loadVolume(image, {"name": "reference", "show": False})
    np.testing.assert_allclose(_ijk_to_ras(case.volume), _ijk_to_ras(reference), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(case.volume), slicer.util.arrayFromVolume(reference))
    slicer.mrmlScene.RemoveNode(reference)
    np.testing.assert_allclose(_ijk_to_ras(case.volume), read_volume(image).index_to_ras(), atol=1e-6)
    # the liver map on the same grid, with its colour map, as the foreground overlay of every view
    liver = case.imported.nodes["liver"]
    assert liver.GetImageData().GetDimensions() == case.volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(_ijk_to_ras(liver), _ijk_to_ras(case.volume), atol=1e-6)
    assert liver.GetAttribute("Pantheon.Colormap") == "inferno"
    for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == case.volume.GetID()
        assert composite.GetForegroundVolumeID() == liver.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    # a maps-only case: an empty segmentation to draw a correction in, which the Segment Editor edits
    correction = case.editable["segmentation"][0]
    assert [correction.GetSegmentation().GetNthSegment(i).GetName()
            for i in range(correction.GetSegmentation().GetNumberOfSegments())] == ["liver"]
    editor = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert editor.GetSegmentationNode() is correction and editor.GetSourceVolumeNode() is case.volume


def test_accept_with_rating_by_keys_then_the_next_case_loads_and_the_last_goes(harness, panel, batches, tmp_path):
    import slicer
    ui = panel.ui
    harness.close_scene()
    out = _copy(batches["ct"], tmp_path / "ct-out")
    _open(harness, panel, out)
    assert panel.logic.caseId == "ct0"
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    items_before = slicer.mrmlScene.GetSubjectHierarchyNode().GetNumberOfItems()
    assert _case_nodes("ct0")
    # a batch writing into the folder: the decision is refused in one sentence, nothing moves
    lock = FileLock(out / ".batch.lock", busy="busy").acquire()
    try:
        ui.acceptButton.click()
        harness.process_events()
    finally:
        lock.release()
    assert ui.statusLabel.text == f"A batch is writing to {out}; review when it has finished."
    assert panel.logic.caseId == "ct0" and "review" not in _manifest(out)["ct0"]
    # the keys are Slicer shortcuts on its main window while the module is shown
    _press(harness, "4")
    assert ui.rating4RadioButton.checked
    ui.commentLineEdit.text = "liver map fine"
    _press(harness, "A")
    review = _manifest(out)["ct0"]["review"]
    assert (review["decision"], review["rating"], review["comment"]) == ("accepted", 4, "liver map fine")
    assert panel.logic.caseId == "ct1" and ui.statusLabel.text.startswith("ct0: accepted.")
    assert ui.rating4RadioButton.checked is False and ui.ratingNoneRadioButton.checked and ui.commentLineEdit.text == ""
    assert _case_nodes("ct0") == [], "the previous case's nodes are still in the scene"
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    # reject with the button, no rating: the oblique case comes next
    ui.rejectButton.click()
    harness.process_events()
    assert _manifest(out)["ct1"]["review"]["decision"] == "rejected" and panel.logic.caseId == "ct2"
    assert ui.progressLabel.text.startswith("2 of 3 cases reviewed: 1 accepted, 1 rejected")
    # back and forth: the reviewed case shows its decision; nothing piles up
    _press(harness, "Ctrl+Shift+Left")
    assert panel.logic.caseId == "ct1" and ui.caseLabel.text.startswith("Case ct1 (2 of 3): rejected")
    ui.previousButton.click()
    harness.process_events()
    assert panel.logic.caseId == "ct0" and ui.rating4RadioButton.checked and ui.commentLineEdit.text == "liver map fine"
    assert not ui.previousButton.enabled
    _press(harness, "N")
    assert panel.logic.caseId == "ct2"
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert slicer.mrmlScene.GetSubjectHierarchyNode().GetNumberOfItems() == items_before
    assert _case_nodes("ct0") == [] and _case_nodes("ct1") == [] and _case_nodes("ct2")
    _press(harness, "X")
    assert ui.statusLabel.text.endswith("All cases are reviewed.") and panel.logic.caseId == "ct2"
    assert not ui.nextUnreviewedButton.enabled and not ui.nextButton.enabled
    assert ui.progressLabel.text.startswith("3 of 3 cases reviewed")
    # a rerun of the same decision keeps the earlier one in the history
    assert ReviewSession(out).status() == {"cases": 3, "unreviewed": 0, "accepted": 1, "rejected": 2, "corrected": 0}


def test_save_correction_writes_the_edited_label_map_beside_the_original(harness, panel, batches, tmp_path):
    import slicer
    ui = panel.ui
    harness.close_scene()
    out = _copy(batches["mr"], tmp_path / "mr-out")
    _open(harness, panel, out)
    case = panel.logic.case
    assert panel.logic.caseId == "mr1", ui.statusLabel.text
    tumour = case.imported.nodes["tumour"]
    assert tumour.IsA("vtkMRMLSegmentationNode") and case.editable["tumour"][0] is tumour
    editor = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert editor.GetSegmentationNode() is tumour
    segmentation = tumour.GetSegmentation()
    ids = {segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName(): segmentation.GetNthSegmentID(i)
           for i in range(segmentation.GetNumberOfSegments())}
    assert set(ids) == {"liver", "tumour"}

    # nothing edited yet: one sentence, nothing recorded
    ui.saveCorrectionButton.click()
    harness.process_events()
    assert ui.statusLabel.text.startswith("Nothing was edited in the case's segmentation")
    assert "review" not in _manifest(out)["mr1"]

    # the reviewer erases the tumour's upper half and paints a block of liver elsewhere
    original = read_volume(out / "mr1" / "tumour.nii.gz")
    before = _segment_mask(tumour, ids["tumour"], case.volume)
    assert before.sum() > 20
    k = np.nonzero(before.any(axis=(1, 2)))[0]
    kept = before.copy()
    kept[k[len(k) // 2]:] = False
    _paint(tumour, ids["tumour"], kept, case.volume)
    liver = _segment_mask(tumour, ids["liver"], case.volume)
    block = np.zeros_like(liver)
    block[2:5, 2:8, 2:8] = True
    _paint(tumour, ids["liver"], liver | (block & ~kept), case.volume)
    ui.rating2RadioButton.click()
    ui.commentLineEdit.text = "tumour too tall"
    ui.saveCorrectionButton.click()
    harness.process_events()
    assert "mr1: corrected (tumour.corrected.nii.gz written)" in ui.statusLabel.text, ui.statusLabel.text
    review = _manifest(out)["mr1"]["review"]
    assert (review["decision"], review["rating"], review["comment"]) == ("corrected", 2, "tumour too tall")
    assert review["corrected"] == ["mr1/tumour.corrected.nii.gz"]
    fixed = read_volume(out / "mr1" / "tumour.corrected.nii.gz")
    assert (out / "mr1" / "tumour.nii.gz").is_file()  # the original stays
    # on the exact grid of the case's image and of the original output, with its label values
    image = read_volume(_manifest(out)["mr1"]["input"])
    assert fixed.shape == image.shape and np.allclose(fixed.index_to_lps(), image.index_to_lps(), atol=1e-6)
    assert np.allclose(fixed.index_to_lps(), original.index_to_lps(), atol=1e-6)
    expected = np.where(kept, 2, np.where(liver | (block & ~kept), 1, 0))
    got, _m = fixed.to_slicer()
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(fixed.array)) == {0, 1, 2}
    assert (fixed.array == 2).sum() < (original.array == 2).sum()

    # going back to the case shows the correction (the original output hidden) as the one to edit
    assert ui.statusLabel.text.endswith("All cases are reviewed.")
    panel.logic.loadCase("mr1")
    case = panel.logic.case
    corrected = case.corrected["tumour"]
    assert case.editable["tumour"][0] is corrected
    assert not case.imported.nodes["tumour"].GetDisplayNode().GetVisibility()
    seg = corrected.GetSegmentation()
    assert sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())) == ["liver", "tumour"]
    np.testing.assert_array_equal(_segment_mask(corrected, seg.GetSegmentIdBySegmentName("tumour"), case.volume),
                                  kept)


def test_a_correction_drawn_on_a_maps_only_case(harness, panel, batches, tmp_path):
    """nemesis-organs writes maps only: the reviewer paints the liver into the prepared segmentation;
    it is saved as segmentation.corrected.nii.gz with BTCV's liver value, which `pantheon review
    export` then takes as the case's label map."""
    ui = panel.ui
    harness.close_scene()
    out = _copy(batches["ct"], tmp_path / "ct-out")
    _open(harness, panel, out)
    case = panel.logic.case
    node = case.editable["segmentation"][0]
    sid = node.GetSegmentation().GetSegmentIdBySegmentName("liver")
    mask = np.zeros(SHAPE, bool)
    mask[10:20, 15:30, 12:36] = True
    _paint(node, sid, mask, case.volume)
    _press(harness, "3")
    ui.saveCorrectionButton.click()
    harness.process_events()
    review = _manifest(out)["ct0"]["review"]
    assert (review["decision"], review["rating"], review["corrected"]) == ("corrected", 3,
                                                                           ["ct0/segmentation.corrected.nii.gz"])
    fixed = read_volume(out / "ct0" / "segmentation.corrected.nii.gz")
    got, _m = fixed.to_slicer()
    np.testing.assert_array_equal(got, mask * 6)  # BTCV liver
    assert fixed.same_geometry(read_volume(_manifest(out)["ct0"]["input"]), atol=1e-6)
    assert panel.logic.caseId == "ct1"
    rows = ReviewSession(out).export(tmp_path / "trainset", decisions=("corrected",))
    assert [r["case_id"] for r in rows] == ["ct0"]


def test_a_restart_resumes_at_the_first_unreviewed_case(harness, panel, batches, tmp_path):
    import slicer
    ui = panel.ui
    harness.close_scene()
    out = _copy(batches["ct"], tmp_path / "ct-out")
    _open(harness, panel, out)
    ui.acceptButton.click()
    harness.process_events()
    assert panel.logic.caseId == "ct1"
    nodes = slicer.mrmlScene.GetNumberOfNodes()
    # Slicer closed and started again: the module is unloaded (its case leaves the scene) ...
    harness.unload_module(MODULE)
    assert _case_nodes("ct1") == []
    # ... and its new panel reopens the last folder at its first unreviewed case
    harness.load_module(REPO / MODULE)
    fresh = harness.show_module(MODULE)
    assert fresh is not panel
    assert fresh.ui.batchFolderPathLineEdit.currentPath == str(out)
    assert fresh.logic.caseId == "ct1" and fresh.logic.case is not None
    assert fresh.ui.progressLabel.text.startswith("1 of 3 cases reviewed")
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes
    assert _shortcut("A") is not None
    harness.screenshot(MODULE, screenshot_dir() / f"{MODULE}.png")
    # leaving the module removes its keys (the Segment Editor has its own on 1-5)
    harness.leave_module()
    assert _shortcut("A") is None and _shortcut("4") is None
    harness.show_module(MODULE)
    assert _shortcut("Ctrl+Shift+Right") is not None


def test_close_scene_then_next(harness, batches, tmp_path):
    """File > Close Scene takes the case's nodes; the panel says so and the next case loads anew."""
    panel = harness.widget(MODULE)
    ui = panel.ui
    out = _copy(batches["ct"], tmp_path / "ct-out")
    _open(harness, panel, out)
    assert panel.logic.caseId == "ct0"
    harness.close_scene()
    assert panel.logic.case is None and ui.caseLabel.text.endswith("It is not loaded.")
    assert not ui.acceptButton.enabled
    ui.nextButton.click()
    harness.process_events()
    assert panel.logic.caseId == "ct1" and panel.logic.case is not None and ui.acceptButton.enabled


def test_self_test_runs_inside_the_harness(harness):
    import slicer
    harness.close_scene()
    slicer.selfTests[MODULE](msec=0)
    assert any("Test passed" in m for m in harness.messages)
