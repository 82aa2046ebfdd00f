"""NemesisSlicer's similarity across scans, run in a real Qt the way Slicer runs it (see
Testing/qt_harness): a point placed in CT A's liver, "Show in" CT B, and the map lands on B's own
voxels (B is stored with permuted, flipped and tilted axes), lights up B's liver, and follows the point
from the worker's cached features of both scans. The real worker, the bundled demo weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qt_harness.fixtures import lib_fixture, panel_fixture, screenshot_dir, wait_idle

MODULE = "NemesisSlicer"
SHAPE = (40, 64, 64)
# measured (demo weights, these phantoms, the point deepest in A's liver): mean similarity 0.81 over B's
# liver, 0.43 over B's other body voxels, as the core gives it (Testing/test_nemesis_compare.py)
LIVER_MARGIN = 0.2

pytestmark = [pytest.mark.usefixtures("harness_checks"), pytest.mark.slow]

panel = panel_fixture(MODULE)
lib = lib_fixture(MODULE)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """CT A (axial) and CT B (another phantom, stored with permuted, flipped and tilted axes), with
    their BTCV label maps, as files."""
    from pantheon.io import write_volume
    from pantheon.synth import make_abdomen_phantom
    folder = tmp_path_factory.mktemp("compare")
    out = {}
    for name, seed, kw in (("A", 0, {}), ("B", 5, {"orientation": "random", "oblique": True})):
        ct, lab = make_abdomen_phantom(seed, shape=SHAPE, **kw)
        write_volume(lab, folder / f"{name}-label.nrrd")
        out[name] = (str(write_volume(ct, folder / f"{name}.nrrd")), ct, lab)
    return out


def _labels_as_loaded(scans, name, volume_node):
    """The label map as Slicer reads it beside its CT: on the CT node's voxels (checked)."""
    import slicer
    node = slicer.util.loadVolume(scans[name][0].replace(".nrrd", "-label.nrrd"),
                                  {"name": f"{name} labels", "labelmap": True, "show": False})
    try:
        np.testing.assert_allclose(_ijk_to_ras(node), _ijk_to_ras(volume_node), atol=1e-6)
        return slicer.util.arrayFromVolume(node).copy()
    finally:
        slicer.mrmlScene.RemoveNode(node)


def _value(organ):
    from pantheon.anatomy import BTCV_ORGANS
    return {name: value for name, value, *_ in BTCV_ORGANS}[organ]


def _centre_ras(ct, lab, organ):
    """RAS of the organ voxel deepest inside the organ (where a user would click)."""
    from scipy import ndimage
    depth = ndimage.distance_transform_edt(lab.array == _value(organ))
    kji = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return ct.ijk_to_world(np.array(kji[::-1], float))[0] * [-1, -1, 1]


def _ijk_to_ras(node):
    import slicer
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _similarity_map(of):
    import slicer
    maps = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if n.GetAttribute("Pantheon.Action") == "similarity"
            and n.GetAttribute("Pantheon.InputNodeID") == of.GetID()]
    assert len(maps) == 1, [n.GetName() for n in maps]
    return maps[0]


def _layers():
    """(background, foreground) volume IDs of every slice view."""
    import slicer
    scene = slicer.mrmlScene
    return {(c.GetBackgroundVolumeID(), c.GetForegroundVolumeID())
            for c in (scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                      for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")))}


def _inside(node, ras, mask_kji):
    """Whether world ``ras`` falls on a True voxel of ``mask_kji`` (a mask on ``node``'s voxels)."""
    ijk = np.rint(np.linalg.inv(_ijk_to_ras(node)) @ np.r_[ras, 1.0])[:3].astype(int)
    return bool(mask_kji[ijk[2], ijk[1], ijk[0]])


def test_point_in_one_ct_map_in_another(harness, panel, scans, lib):
    import slicer
    ui, p = panel.ui, panel._parameterNode
    harness.close_scene()
    a = slicer.util.loadVolume(scans["A"][0], {"name": "A"})
    b = slicer.util.loadVolume(scans["B"][0], {"name": "B"})
    ui.inputVolumeSelector._h_choose(a)
    ui.similarityCollapsibleButton.collapsed = False
    # "Show in" offers "Same CT" first (the default: today's single-scan map) and the loaded CTs
    assert ui.similarityTargetSelector._h_item_texts()[:3] == ["Same CT", "A", "B"]
    assert p.similarityTarget is None and p.similarityMarkBestMatch
    point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    ui.similarityPointSelector._h_choose(point)
    ui.similarityPlaceWidget.placeButton().click()
    ui.similarityPlaceWidget._h_click_in_view(_centre_ras(scans["A"][1], scans["A"][2], "liver"))
    # placing the point runs the single-scan map on A by itself
    harness.wait_until(lambda: panel.task is not None, 10, "the similarity job for the placed point")
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: similarity", ui.errorLabel.text
    on_a = _similarity_map(a)

    # "Show in" B: the map runs again by itself, onto B's voxels
    ui.similarityTargetSelector._h_choose(b)
    assert p.similarityTarget is b
    harness.wait_until(lambda: panel.task is not None, 10, "the similarity job for the other CT")
    wait_idle(harness, panel)
    first = panel.logic.lastSimilarityResult
    heat = _similarity_map(b)
    assert first.nodes["similarity"] is heat and first.targetVolumeNode is b and first.queryVolumeNode is a
    # on B's exact geometry: its IJKToRAS (permuted, flipped, tilted axes) and its dimensions
    np.testing.assert_allclose(_ijk_to_ras(heat), _ijk_to_ras(b), atol=1e-6)
    assert heat.GetImageData().GetDimensions() == b.GetImageData().GetDimensions()
    assert not np.allclose(_ijk_to_ras(b), _ijk_to_ras(a), atol=1e-3)
    # shown as B's foreground overlay, with the single-scan map's colour map and window
    assert _layers() == {(b.GetID(), heat.GetID())}
    display, single = heat.GetDisplayNode(), on_a.GetDisplayNode()
    assert display.GetColorNodeID() == single.GetColorNodeID()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((single.GetWindow(), single.GetLevel()))
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((2.0, 0.0))  # cosine: -1 .. 1
    # it lights up B's liver
    labels = _labels_as_loaded(scans, "B", b)
    sim = slicer.util.arrayFromVolume(heat)
    liver = labels == _value("liver")
    other = (slicer.util.arrayFromVolume(b) > -500) & ~liver
    print(f"similarity over B: liver {sim[liver].mean():.3f}, other body {sim[other].mean():.3f}")
    assert sim[liver].mean() > sim[other].mean() + LIVER_MARGIN, (sim[liver].mean(), sim[other].mean())
    # the best match: in the status (RAS mm, similarity), in B's liver, marked by a locked point in B
    best = first.bestMatchRAS
    assert _inside(b, best, liver)
    text = ui.statusLabel.text
    assert text == lib.best_match_text(first.scalars, best, "B") and text.startswith("Best match in B: RAS (")
    assert f"similarity {first.scalars['best_similarity']:.2f}" in text and text in ui.logTextEdit.toPlainText()
    marker = first.nodes["best_match"]
    assert marker.GetNumberOfControlPoints() == 1 and marker.GetLocked()
    assert marker.GetAttribute("Pantheon.InputNodeID") == b.GetID() and marker is not point
    position = [0.0, 0.0, 0.0]
    marker.GetNthControlPointPositionWorld(0, position)
    np.testing.assert_allclose(position, best, atol=1e-3)
    # A's features came from the single-scan run; B's were computed now
    assert (first.notes["query_feature_cache"], first.notes["target_feature_cache"]) == ("hit", "miss")

    # the point moves (to A's spleen): the map on B follows, from both scans' cached features
    before = sim.copy()
    point.SetNthControlPointPositionWorld(0, *_centre_ras(scans["A"][1], scans["A"][2], "spleen"))
    harness.wait_until(lambda: panel.task is not None, 10, "the debounced similarity job")
    wait_idle(harness, panel)
    second = panel.logic.lastSimilarityResult
    assert second is not first and second.nodes["similarity"] is heat  # the same node, updated in place
    assert not np.allclose(slicer.util.arrayFromVolume(heat), before), "the map follows the point"
    assert (second.notes["query_feature_cache"], second.notes["target_feature_cache"]) == ("hit", "hit")
    assert second.notes["feature_cache"] == "hit"  # no encoder pass for either scan
    log = ui.logTextEdit.toPlainText()
    assert "query_feature_cache: hit" in log and "target_feature_cache: hit" in log
    assert second.nodes["best_match"] is marker and marker.GetNumberOfControlPoints() == 1
    assert ui.statusLabel.text.startswith("Best match in B: RAS (")
    harness.screenshot(MODULE, screenshot_dir() / f"{MODULE}-compare.png")

    # "Same CT" again: the single-scan map on A, shown over A; B's map stays as it was
    on_b = slicer.util.arrayFromVolume(heat).copy()
    a_before = slicer.util.arrayFromVolume(on_a).copy()
    ui.similarityTargetSelector._h_choose(None)
    assert p.similarityTarget is None
    harness.wait_until(lambda: panel.task is not None, 10, "the similarity job on the same CT")
    wait_idle(harness, panel)
    assert ui.statusLabel.text == "Done: similarity", ui.errorLabel.text
    assert _similarity_map(a) is on_a and not np.allclose(slicer.util.arrayFromVolume(on_a), a_before)
    np.testing.assert_allclose(_ijk_to_ras(on_a), _ijk_to_ras(a), atol=1e-6)
    assert _layers() == {(a.GetID(), on_a.GetID())}
    assert np.array_equal(slicer.util.arrayFromVolume(heat), on_b)
    assert panel.logic.lastSimilarityResult is second


def test_point_outside_the_query_ct_is_one_sentence(harness, panel, scans, lib, monkeypatch):
    """Dragged out of CT A while the map follows it on B: one sentence in the status line, no pop-up,
    no job; should the panel's own check miss it, the worker's refusal reads the same way."""
    import slicer
    ui, p = panel.ui, panel._parameterNode
    a = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetName() == "A")
    b = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetName() == "B")
    point = p.similarityPoint
    assert p.inputVolume is a and point is not None and panel.task is None
    ui.similarityTargetSelector._h_choose(b)
    harness.wait_until(lambda: panel.task is not None, 10, "the similarity job for the other CT")
    wait_idle(harness, panel)
    done = panel.logic.lastSimilarityResult
    shown = len(harness.dialogs.shown)
    outside = _ijk_to_ras(a) @ np.r_[-40.0, -40.0, -40.0, 1.0]  # well outside A's voxels
    point.SetNthControlPointPositionWorld(0, *outside[:3])
    harness.pump(1.0)  # past the debounce
    text = ui.statusLabel.text
    assert panel.task is None and panel.logic.lastSimilarityResult is done
    assert "lies outside A" in text and text.endswith(".") and text.count(". ") == 0 and "\n" not in text, text
    assert "Traceback" not in ui.logTextEdit.toPlainText() and len(harness.dialogs.shown) == shown

    # the worker says it too (the panel's check bypassed): the same kind of sentence, still no pop-up
    monkeypatch.setattr(lib, "point_outside_text", lambda *args, **kw: None)
    point.SetNthControlPointPositionWorld(0, *(outside[:3] + 1.0))
    harness.wait_until(lambda: panel.task is not None, 10, "the job the worker refuses")
    wait_idle(harness, panel)
    text = ui.statusLabel.text
    assert "outside the query CT" in text and text.endswith(".") and "\n" not in text, text
    assert len(harness.dialogs.shown) == shown and panel.logic.lastSimilarityResult is done
    assert "Traceback" not in ui.logTextEdit.toPlainText()
    monkeypatch.undo()

    # back inside: the map follows again and the sentence goes
    point.SetNthControlPointPositionWorld(0, *_centre_ras(scans["A"][1], scans["A"][2], "liver"))
    harness.wait_until(lambda: panel.task is not None, 10, "the similarity job for the point back inside")
    wait_idle(harness, panel)
    assert ui.statusLabel.text.startswith("Best match in B: RAS (")
    ui.similarityTargetSelector._h_choose(None)
    harness.wait_until(lambda: panel.task is not None, 10, "the similarity job on the same CT")
    wait_idle(harness, panel)


def test_logic_without_the_gui(harness, panel, scans):
    """submitSimilarity from a script: the same result, the markers optional."""
    import slicer
    logic = panel.logic
    a = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetName() == "A")
    b = next(n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetName() == "B")
    point = logic.pointLPSFromRAS(_centre_ras(scans["A"][1], scans["A"][2], "liver"))
    imported = logic.wait(logic.submitSimilarity(a, point, b, markBestMatch=False, device="cpu"), timeout=120)
    assert imported.notes["feature_cache"] == "hit" and "best_match" not in imported.nodes
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode")
                if n.GetAttribute("Pantheon.InputNodeID") == b.GetID()]  # the earlier marker is gone
    assert json.loads(imported.notes["best_match_ras"]) == pytest.approx(imported.bestMatchRAS, abs=1e-3)
    assert imported.nodes["similarity"] is _similarity_map(b)
    with pytest.raises(ValueError, match="lies outside A"):
        logic.submitSimilarity(a, [v + 1000.0 for v in point], b)
