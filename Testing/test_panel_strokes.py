"""NemesisSlicer's "Segment from strokes", run in a real Qt the way Slicer runs it (see
Testing/qt_harness): strokes simulated on a phantom's true liver are imported as the two segments of a
stroke segmentation, the panel's widgets run them in the real worker with the bundled demo weights,
and the result segment is checked voxel for voxel, on the CT's own grid, against the core run in this
process. Painting more strokes updates the result from the worker's warm state."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from qt_harness.fixtures import lib_fixture, panel_fixture, screenshot_dir, wait_idle

MODULE = "NemesisSlicer"
LIVER = 6  # BTCV label of the liver
DICE_FLOOR = 0.7  # measured 0.80 (3 stroke pairs) and 0.80 (4) on this phantom

pytestmark = [pytest.mark.usefixtures("harness_checks"), pytest.mark.slow]

panel = panel_fixture(MODULE)
lib = lib_fixture(MODULE)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory, lib):
    """Two small oblique CT phantoms with their BTCV label maps (the second one is never run before
    the cancel test: its features are not in the worker's cache)."""
    out = []
    for seed in (3, 4):
        folder = tmp_path_factory.mktemp(f"strokes-ct{seed}")
        out.append(lib.make_phantom_files(str(folder), sys.executable, seed=seed, oblique=10.0, shape=(40, 56, 56)))
    return out


def _ijk_to_ras(node):
    import slicer
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _strokes(phantom, n):
    """(CT Volume, liver mask, stroke map Volume) with ``n`` foreground and ``n`` background strokes;
    those for n are those for n - 1 plus one pair."""
    from pantheon.io import read_volume
    from pantheon.models.nemesis.strokes import simulate_strokes
    ct, lab = read_volume(phantom[0]), read_volume(phantom[1])
    liver = lab.array == LIVER
    return ct, liver, lab.with_array(simulate_strokes(liver, n, seed=0, body=ct.array > -500))


def _label_node(volume, ct_node, name="strokes"):
    """A temporary label map node holding ``volume`` (a pantheon Volume on the CT's grid)."""
    import slicer
    array, ijk_to_ras = volume.to_slicer()
    np.testing.assert_allclose(ijk_to_ras, _ijk_to_ras(ct_node), atol=1e-4)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array).astype(np.uint8))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return node


def _stroke_segmentation(strokes, ct_node, name="Strokes", background=True):
    """The 1/2 stroke map as an annotator's segmentation: segments "liver" (1) and "background" (2)."""
    import slicer
    import vtk
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
    labels = _label_node(strokes, ct_node)
    ids = vtk.vtkStringArray()
    for sid in ("liver", "background") if background else ("liver",):
        ids.InsertNextValue(sid)
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, seg, ids)
    slicer.mrmlScene.RemoveNode(labels)
    if not background:
        seg.GetSegmentation().AddEmptySegment("background", "background")  # added, not painted yet
    return seg


def _paint(seg, segment_id, mask_volume, ct_node):
    """Add voxels to a segment as the Segment Editor's paint effect does (vtkSlicerSegmentEditorLogic:
    SetBinaryLabelmapToSegment with MODE_MERGE_MASK, the mode that keeps shared labelmap layers right)."""
    import slicer
    node = _label_node(mask_volume, ct_node, "stroke")
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    image = logic.CreateOrientedImageDataFromVolumeNode(node)
    slicer.mrmlScene.RemoveNode(node)
    assert logic.SetBinaryLabelmapToSegment(image, seg, segment_id, logic.MODE_MERGE_MASK)


def _on_ct_grid(seg, segment_id, ct_node):
    """A segment's voxels exported onto the CT's grid (checked to be that grid)."""
    import slicer
    import vtk
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    try:
        assert slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
            seg, ids, node, ct_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        np.testing.assert_allclose(_ijk_to_ras(node), _ijk_to_ras(ct_node), atol=1e-6)
        return slicer.util.arrayFromVolume(node) > 0
    finally:
        slicer.mrmlScene.RemoveNode(node)


def _segments(seg):
    s = seg.GetSegmentation()
    return [(s.GetNthSegmentID(i), s.GetNthSegment(i).GetName()) for i in range(s.GetNumberOfSegments())]


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _open(harness, panel, phantom, name="CT"):
    import slicer
    ui = panel.ui
    harness.close_scene()
    ct = slicer.util.loadVolume(phantom[0], {"name": name})
    ui.inputVolumeSelector._h_choose(ct)
    ui.strokesCollapsibleButton.collapsed = False
    return ct


def test_segment_from_strokes_and_update_as_painting(harness, panel, phantoms):
    import slicer
    import vtk

    from pantheon.models.nemesis.strokes import SEGMENT_NAME, segment_from_strokes
    from pantheon.pipelines import nemesis as nem
    ui, p = panel.ui, panel._parameterNode
    ct = _open(harness, panel, phantoms[0])
    ct_vol, liver, strokes3 = _strokes(phantoms[0], 3)
    liver_kji = ct_vol.with_array(liver.astype(np.uint8)).to_slicer()[0] > 0
    seg = _stroke_segmentation(strokes3, ct)
    assert not ui.strokesApplyButton.enabled  # no stroke segmentation chosen yet
    ui.strokeSegmentationSelector._h_choose(seg)
    # the segments named like the structure and like background are offered as such
    assert (p.strokeForegroundSegmentId, p.strokeBackgroundSegmentId) == ("liver", "background")
    assert ui.strokeForegroundSelector.currentSegmentID() == "liver"
    assert ui.strokeBackgroundSelector.currentSegmentID() == "background"
    assert "unlabelled (0)" in ui.strokeForegroundSelector.toolTip and "unlabelled" in ui.strokesApplyButton.toolTip
    assert p.strokesAutoUpdate and ui.strokesApplyButton.enabled and p.strokeOutputSegmentation is None
    before = {sid: _on_ct_grid(seg, sid, ct) for sid in ("liver", "background")}

    ui.strokesApplyButton.click()
    assert ui.strokesApplyButton.text == "Cancel"
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: strokes", ui.errorLabel.text
    first = panel.logic.lastStrokesResult
    assert first.notes["strokes_cache"] == "miss" and "strokes_cache: miss" in ui.logTextEdit.toPlainText()
    out = p.strokeOutputSegmentation
    assert out is first.nodes["segmentation"] and out is not seg
    assert [name for _, name in _segments(out)] == [SEGMENT_NAME]
    sid = first.segmentId

    # on the CT's exact grid: the segment's own labelmap has the CT's geometry and extent (no resampling)
    labelmap = out.GetSegmentation().GetSegment(sid).GetRepresentation(
        slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(m), _ijk_to_ras(ct), atol=1e-6)
    dims = ct.GetImageData().GetDimensions()
    assert tuple(labelmap.GetExtent()) == (0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    # voxel for voxel the core's answer for these strokes, read back from the scene
    engine = nem.load_engine(device="cpu")
    expected = segment_from_strokes(ct_vol, engine, strokes3).labels["segmentation"].volume.to_slicer()[0] > 0
    got = _on_ct_grid(out, sid, ct)
    assert got.shape == expected.shape and (got != expected).mean() < 1e-3, (got != expected).sum()
    assert _dice(got, liver_kji) > DICE_FLOOR
    # the strokes are the annotator's: untouched, and no segment added to them
    assert [s for s, _ in _segments(seg)] == ["liver", "background"]
    for stroke_id, mask in before.items():
        assert np.array_equal(_on_ct_grid(seg, stroke_id, ct), mask)

    # one more stroke pair, painted: the update starts by itself, from the worker's warm state
    _, _, strokes4 = _strokes(phantoms[0], 4)
    for stroke_id, value in (("liver", 1), ("background", 2)):
        _paint(seg, stroke_id, strokes4.with_array((strokes4.array == value).astype(np.uint8)), ct)
    harness.wait_until(lambda: panel.task is not None, 10, "the update after painting")
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: strokes", ui.errorLabel.text
    second = panel.logic.lastStrokesResult
    assert second.notes["strokes_cache"] == "hit" and "feature_cache" not in second.notes
    assert second.nodes["segmentation"] is out and second.segmentId == sid
    assert [name for _, name in _segments(out)] == [SEGMENT_NAME]  # replaced, not added
    got4 = _on_ct_grid(out, sid, ct)
    assert not np.array_equal(got4, got) and _dice(got4, liver_kji) > DICE_FLOOR
    assert np.array_equal(_on_ct_grid(seg, "liver", ct), strokes4.to_slicer()[0] == 1)

    # "Update as I paint" off: painting starts nothing
    ui.strokesAutoUpdateCheckBox.click()
    assert not p.strokesAutoUpdate
    _paint(seg, "background", strokes4.with_array((strokes4.array == 2).astype(np.uint8)), ct)
    harness.pump(1.0)
    assert panel.task is None and panel.logic.lastStrokesResult is second
    ui.strokesAutoUpdateCheckBox.click()
    harness.screenshot(MODULE, screenshot_dir() / f"{MODULE}-strokes.png")

    # the logic without the GUI: into a segmentation of the user's, whose other segments stay
    mine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Mine")
    mine.GetSegmentation().AddEmptySegment("kept", "kept")
    for _ in range(2):
        imported = panel.logic.segmentFromStrokes(ct, seg, "liver", "background", mine)
        assert imported.notes["strokes_cache"] == "hit"
        assert [name for _, name in _segments(mine)] == ["kept", SEGMENT_NAME]
    assert [name for _, name in _segments(out)] == [SEGMENT_NAME]
    with pytest.raises(ValueError, match="must not become strokes"):
        panel.logic.segmentFromStrokes(ct, seg, "liver", "background", seg)


def test_strokes_without_background_say_so_and_run_nothing(harness, panel, phantoms):
    import slicer
    ui = panel.ui
    ct = _open(harness, panel, phantoms[0])
    _, _, strokes = _strokes(phantoms[0], 3)
    seg = _stroke_segmentation(strokes.with_array((strokes.array == 1).astype(np.uint8)), ct, background=False)
    ui.strokeSegmentationSelector._h_choose(seg)
    assert panel._parameterNode.strokeBackgroundSegmentId == "background" and ui.strokesApplyButton.enabled
    shown = len(harness.dialogs.shown)
    ui.strokesApplyButton.click()
    harness.process_events()
    message = ui.errorLabel.text
    assert ui.errorLabel.visible and panel.task is None, message
    assert message == ("The background segment 'background' is empty; paint at least one stroke around the "
                       "structure with the Segment Editor.")
    assert len(harness.dialogs.shown) == shown  # a sentence in the panel, no pop-up
    assert [n.GetName() for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")] == ["Strokes"]
    # once painted, the error goes with the next run
    _paint(seg, "background", strokes.with_array((strokes.array == 2).astype(np.uint8)), ct)
    harness.wait_until(lambda: panel.task is not None, 10, "the update after painting")
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: strokes" and not ui.errorLabel.visible


def test_cancel(harness, panel, phantoms):
    import slicer
    ui = panel.ui
    ct = _open(harness, panel, phantoms[1], "CT2")  # not seen by the worker: the encoder has to run
    _, _, strokes = _strokes(phantoms[1], 3)
    seg = _stroke_segmentation(strokes, ct)
    ui.strokeSegmentationSelector._h_choose(seg)
    panel.logic.prepareWorker()  # the worker is up: the click starts the job itself
    ui.strokesApplyButton.click()
    assert panel.task is not None and panel.task.action == "strokes"
    ui.strokesApplyButton.click()
    assert ui.strokesApplyButton.text == "Cancelling..."
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Cancelled" and ui.strokesApplyButton.text == "Segment from strokes"
    assert [n.GetName() for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")] == ["Strokes"]
    assert panel._parameterNode.strokeOutputSegmentation is None
