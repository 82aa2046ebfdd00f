"""pantheon.slicerbridge against Slicer's real MRML library (PyPI slicer-core), in plain Python.

Input volume nodes have oblique, anisotropic, mirrored IJKToRAS matrices; results are written as the
worker writes them (pantheon.worker.tasks.write_outputs) in the input's geometry, imported through the
bridge, and every voxel of every output node is checked to sit at the input voxel's RAS position with
the expected value.
"""


import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (MRML without the Slicer app) is not installed")
try:
    import vtk
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLScene  # noqa: F401
except ImportError as exc:  # pragma: no cover
    pytest.skip(f"slicer-core lacks MRML classes: {exc}", allow_module_level=True)

from test_io_support import assert_same_voxels, random_volume  # noqa: E402

from pantheon import slicerbridge as sb  # noqa: E402
from pantheon.errors import InputError  # noqa: E402
from pantheon.io import Volume, read_volume  # noqa: E402
from pantheon.results import HeatmapOutput, LabelOutput, Result, Segment  # noqa: E402
from pantheon.slicerbridge import terms  # noqa: E402

BTCV_VALUES = [o[1] for o in terms.BTCV_ORGANS]


@pytest.fixture
def scene(mrml_scene):
    return mrml_scene


def _matrix(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _add_input(scene, seed=0, left_handed=True, name="CT"):
    v = random_volume(seed, shape=(5, 6, 7), dtype=np.int16, left_handed=left_handed)
    node = vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    arr, m = v.to_slicer()
    slicer.util.updateVolumeFromArray(node, arr)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
    node.CreateDefaultDisplayNodes() if scene.GetNodeByID("vtkMRMLColorTableNodeGrey") else None
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.GetSceneItemID(), f"study {name}")
    sh.CreateItem(study, node)
    node.SetAttribute("user", "keep")
    return node, v


def _snapshot(node):
    return (node.GetMTime(), slicer.util.arrayFromVolume(node).copy(), _matrix(node),
            {a: node.GetAttribute(a) for a in node.GetAttributeNames()}, node.GetName(),
            node.GetTransformNodeID(), node.GetNumberOfDisplayNodes())


def _assert_unchanged(node, snap):
    mtime, arr, m, attrs, name, tid, ndisp = snap
    assert node.GetMTime() == mtime
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), arr)
    np.testing.assert_array_equal(_matrix(node), m)
    assert {a: node.GetAttribute(a) for a in node.GetAttributeNames()} == attrs
    assert (node.GetName(), node.GetTransformNodeID(), node.GetNumberOfDisplayNodes()) == (name, tid, ndisp)


def _make_result(geom: Volume, seed=0, with_table=True):
    rng = np.random.default_rng(seed)
    heat = geom.with_array(rng.random(geom.shape).astype(np.float32))
    pca = geom.with_array(rng.random(geom.shape + (3,)).astype(np.float32))
    labels = rng.choice([0] + BTCV_VALUES, size=geom.shape).astype(np.uint8)
    segs = [Segment(idx, name.capitalize(), color, ("SCT", code, meaning))
            for name, idx, color, code, meaning in terms.BTCV_ORGANS]
    res = Result(labels={"organs": LabelOutput(geom.with_array(labels), segs)},
                 heatmaps={"similarity": HeatmapOutput(heat, "inferno", (0.0, 1.0), "cosine similarity")},
                 volumes={"pca": pca},
                 tables={"findings": [{"organ": "liver", "present": True, "volume_ml": 12.5, "n": 3},
                                      {"organ": "spleen", "present": False, "volume_ml": None, "n": 1}]}
                 if with_table else {},
                 scalars={"score": 0.75}, notes={"model": "demo"})
    return res, heat, pca, labels


def _result_dict(res, folder):
    """The result document as the worker hands it to Slicer (its writer: raw NRRD, maps as computed)."""
    from pantheon.worker.tasks import write_outputs
    doc = write_outputs(res, folder)
    assert doc["output_dir"] == str(folder.resolve())
    return doc


def _export_segment(scene, seg_node, seg_id, reference):
    out = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(out)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(seg_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        seg_node, ids, out, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    arr = slicer.util.arrayFromVolume(out).copy()
    np.testing.assert_allclose(_matrix(out), _matrix(reference), atol=1e-9)
    scene.RemoveNode(out)
    return arr


def _node_volume(node):
    return Volume.from_slicer(slicer.util.arrayFromVolume(node), _matrix(node))


# --------------------------------------------------------------------------- node -> worker
def test_volume_from_node_and_export_round_trip(scene, tmp_path):
    node, v = _add_input(scene, seed=3)
    snap = _snapshot(node)
    got = sb.volume_from_node(node)
    assert_same_voxels(v, got)
    np.testing.assert_allclose(got.index_to_ras(), _matrix(node), atol=1e-12)
    path = sb.export_volume(node, tmp_path / "input.nrrd")
    back = read_volume(path)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, slicer.util.arrayFromVolume(node))
    np.testing.assert_allclose(back.index_to_ras(), _matrix(node), atol=1e-9)
    _assert_unchanged(node, snap)


def test_volume_from_node_world_hardens_linear_transform(scene):
    node, v = _add_input(scene, seed=4)
    t = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(t)
    shift = np.eye(4)
    shift[:3, 3] = [10.0, -5.0, 2.5]
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(t.GetID())
    np.testing.assert_allclose(sb.volume_from_node(node).index_to_ras(), _matrix(node), atol=1e-12)
    np.testing.assert_allclose(sb.volume_from_node(node, world=True).index_to_ras(), shift @ _matrix(node),
                               atol=1e-9)


# --------------------------------------------------------------------------- results -> scene
@pytest.mark.parametrize("left_handed", [True, False])
def test_import_result_every_voxel_lands_in_place(scene, tmp_path, left_handed):
    node, v = _add_input(scene, seed=1 if left_handed else 2, left_handed=left_handed)
    snap = _snapshot(node)
    geom = Volume.from_slicer(slicer.util.arrayFromVolume(node), _matrix(node))
    res, heat, pca, labels = _make_result(geom)
    imported = sb.import_result(_result_dict(res, tmp_path / "r"), node, "organs")
    _assert_unchanged(node, snap)

    # heatmap: scalar volume, same grid as the input, colour table + window/level from the result
    hn = imported.nodes["similarity"]
    assert hn.GetClassName() == "vtkMRMLScalarVolumeNode"
    np.testing.assert_allclose(_matrix(hn), _matrix(node), atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(hn), heat.array)
    assert_same_voxels(heat, _node_volume(hn))
    d = hn.GetDisplayNode()
    assert not d.GetAutoWindowLevel()
    assert (d.GetWindow(), d.GetLevel()) == pytest.approx((1.0, 0.5))
    color = scene.GetNodeByID(d.GetColorNodeID())
    assert color is not None and color.GetNumberOfColors() == 256
    rgba = [0.0] * 4
    color.GetColor(255, rgba)
    assert rgba[0] > 0.9 and rgba[2] < 0.8  # inferno ends in light yellow
    assert hn.GetDescription() == "cosine similarity"

    # PCA: vector volume (K, J, I, 3)
    pn = imported.nodes["pca"]
    assert pn.GetClassName() == "vtkMRMLVectorVolumeNode"
    assert slicer.util.arrayFromVolume(pn).shape == geom.shape + (3,)
    assert_same_voxels(pca, _node_volume(pn))

    # labels: segmentation node; each segment exported on the input grid equals the label mask
    sn = imported.nodes["organs"]
    assert sn.GetClassName() == "vtkMRMLSegmentationNode"
    seg = sn.GetSegmentation()
    assert seg.GetNumberOfSegments() == len(terms.BTCV_ORGANS)
    for name, idx, rgb, code, meaning in terms.BTCV_ORGANS:
        sid = seg.GetSegmentIdBySegmentName(name.capitalize())
        assert sid, name
        segment = seg.GetSegment(sid)
        assert segment.GetColor() == pytest.approx(rgb)
        entry = sb.segment_terminology(segment)
        want = terms.parse_terminology(terms.terminology_string(("SCT", code, meaning)))  # Slicer's list entry
        assert terms.parse_terminology(entry) == want  # kidneys: Kidney (64033007) + Right/Left modifier
        parsed = slicer.vtkSlicerTerminologyEntry()  # Slicer's own parser agrees
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(entry, parsed)
        assert parsed.GetTypeObject().GetCodeValue() == want["type"][1]
        assert (parsed.GetTypeModifierObject().GetCodeValue() or None) == (want["modifier"] or (None, None))[1]
        assert parsed.GetCategoryObject().GetCodeValue() == "123037004"
        mask = _export_segment(scene, sn, sid, node)
        np.testing.assert_array_equal(mask > 0, labels == idx, err_msg=name)

    # tables, scalars, notes
    tn = imported.tables["findings"]
    assert tn.GetClassName() == "vtkMRMLTableNode"
    table = tn.GetTable()
    assert table.GetNumberOfRows() == 2
    assert [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())] == \
        ["organ", "present", "volume_ml", "n"]
    assert table.GetColumnByName("organ").GetClassName() == "vtkStringArray"
    assert table.GetColumnByName("present").GetClassName() == "vtkBitArray"
    assert table.GetColumnByName("n").GetClassName() == "vtkIntArray"
    vol_ml = table.GetColumnByName("volume_ml")
    assert vol_ml.GetClassName() == "vtkDoubleArray"
    assert vol_ml.GetValue(0) == 12.5 and np.isnan(vol_ml.GetValue(1))
    assert imported.scalars == {"score": 0.75} and imported.notes == {"model": "demo"}

    # tags and subject hierarchy: a folder under the input's study holds every output
    sh = scene.GetSubjectHierarchyNode()
    study = sh.GetItemParent(sh.GetItemByDataNode(node))
    folder = imported.folder_item
    assert folder and sh.GetItemParent(folder) == study
    assert sh.GetItemName(folder) == "CT - Pantheon outputs"
    for out in list(imported.nodes.values()) + [tn]:
        assert out.GetAttribute(sb.ATTR_INPUT) == node.GetID()
        assert out.GetAttribute(sb.ATTR_ACTION) == "organs"
        assert sh.GetItemParent(sh.GetItemByDataNode(out)) == folder
    assert len(sb.outputs_of(node)) == 4


def test_reimport_replaces_and_leaves_other_inputs_alone(scene, tmp_path):
    a, _ = _add_input(scene, seed=5, name="A")
    b, _ = _add_input(scene, seed=6, name="B")
    ga = Volume.from_slicer(slicer.util.arrayFromVolume(a), _matrix(a))
    gb = Volume.from_slicer(slicer.util.arrayFromVolume(b), _matrix(b))
    res_a, *_ = _make_result(ga, seed=1)
    res_b, *_ = _make_result(gb, seed=2)
    first = sb.import_result(_result_dict(res_a, tmp_path / "a1"), a, "organs")
    other = sb.import_result(_result_dict(res_b, tmp_path / "b1"), b, "organs")
    b_arrays = {k: slicer.util.arrayFromVolume(n).copy() for k, n in other.nodes.items() if n.IsA("vtkMRMLVolumeNode")}
    ids_first = {k: n.GetID() for k, n in first.nodes.items()}
    first.nodes["similarity"].GetDisplayNode().SetInterpolate(0)  # a user display tweak
    n_nodes = scene.GetNumberOfNodes()

    res2, heat2, _pca2, labels2 = _make_result(ga, seed=7)
    second = sb.import_result(_result_dict(res2, tmp_path / "a2"), a, "organs")
    assert scene.GetNumberOfNodes() == n_nodes
    assert {k: n.GetID() for k, n in second.nodes.items()} == ids_first
    assert second.tables["findings"].GetID() == first.tables["findings"].GetID()
    assert second.nodes["similarity"].GetDisplayNode().GetInterpolate() == 0
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(second.nodes["similarity"]), heat2.array)
    sid = second.nodes["organs"].GetSegmentation().GetSegmentIdBySegmentName("Liver")
    np.testing.assert_array_equal(_export_segment(scene, second.nodes["organs"], sid, a) > 0, labels2 == 6)
    assert second.nodes["organs"].GetSegmentation().GetNumberOfSegments() == len(terms.BTCV_ORGANS)
    for k, arr in b_arrays.items():  # B's outputs untouched
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(other.nodes[k]), arr)
    assert len(sb.outputs_of(b)) == 4

    # another action on A adds nodes; a smaller re-run drops outputs it no longer has
    sim = Result(heatmaps={"similarity": HeatmapOutput(ga.with_array(heat2.array), "viridis", (0.0, 2.0))})
    s1 = sb.import_result(_result_dict(sim, tmp_path / "s1"), a, "similarity")
    assert s1.nodes["similarity"].GetID() not in ids_first.values()
    assert s1.nodes["similarity"].GetDisplayNode().GetWindow() == pytest.approx(2.0)
    res3, *_ = _make_result(ga, seed=8, with_table=False)
    del res3.volumes["pca"]
    sb.import_result(_result_dict(res3, tmp_path / "a3"), a, "organs")
    assert sorted(n.GetAttribute(sb.ATTR_OUTPUT) for n in sb.outputs_of(a, "organs")) == ["organs", "similarity"]
    assert scene.GetNodeByID(ids_first["pca"]) is None

    assert sb.remove_outputs(a, "organs") == 2
    assert len(sb.outputs_of(a)) == 1
    assert sb.remove_outputs(a) == 1 and sb.outputs_of(a) == []
    assert len(sb.outputs_of(b)) == 4
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemByName("A - Pantheon outputs") == 0
    assert sh.GetItemByName("B - Pantheon outputs") != 0


def test_outputs_follow_the_input_transform(scene, tmp_path):
    node, _ = _add_input(scene, seed=9)
    t = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(t)
    node.SetAndObserveTransformNodeID(t.GetID())
    geom = sb.volume_from_node(node)
    res = Result(heatmaps={"h": HeatmapOutput(geom.with_array(np.zeros(geom.shape, np.float32)))})
    imported = sb.import_result(_result_dict(res, tmp_path / "r"), node, "similarity")
    assert imported.nodes["h"].GetTransformNodeID() == t.GetID()


def test_broken_result_changes_nothing(scene, tmp_path):
    node, _ = _add_input(scene)
    n = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="missing"):
        sb.import_result({"outputs": {"x": {"kind": "heatmap", "file": "nope.nrrd"}}, "output_dir": str(tmp_path)},
                         node, "similarity")
    with pytest.raises(ValueError):
        sb.import_result({}, node, "")
    assert scene.GetNumberOfNodes() == n


# --------------------------------------------------------------------------- segmentation -> worker
def test_export_segmentation_maps_btcv_and_refuses_unknown(scene, tmp_path):
    node, _ = _add_input(scene, seed=10)
    snap = _snapshot(node)
    geom = sb.volume_from_node(node)
    res, _h, _p, labels = _make_result(geom, seed=3)
    seg_node = sb.import_result(_result_dict(res, tmp_path / "r"), node, "organs").nodes["organs"]
    seg = seg_node.GetSegmentation()
    # rename some segments: the SNOMED code still identifies them; drop the code of another
    seg.GetSegment(seg.GetSegmentIdBySegmentName("Liver")).SetName("Segment_1")
    spleen = seg.GetSegment(seg.GetSegmentIdBySegmentName("Spleen"))
    spleen.SetTerminology("") if hasattr(spleen, "SetTerminology") else None
    spleen.SetName("SPLEEN")
    n = scene.GetNumberOfNodes()
    path = sb.export_segmentation(seg_node, node, tmp_path / "seg.nrrd")
    out = read_volume(path)
    assert scene.GetNumberOfNodes() == n
    np.testing.assert_allclose(out.index_to_ras(), _matrix(node), atol=1e-9)
    np.testing.assert_array_equal(out.array, labels)
    _assert_unchanged(node, snap)

    # unknown segment -> clear error naming it; label_values picks and ignores the rest
    seg.AddEmptySegment("tumour", "Tumour")
    with pytest.raises(InputError, match="'Tumour'"):
        sb.export_segmentation(seg_node, node, tmp_path / "bad.nrrd")
    assert not (tmp_path / "bad.nrrd").exists()
    out2 = read_volume(sb.export_segmentation(seg_node, node, tmp_path / "two.nrrd",
                                              label_values={"tumour": 9, "78961009": 5, "segment 1": 1}))
    expected = np.where(labels == 6, 1, 0)
    np.testing.assert_array_equal(out2.array, expected)  # spleen lost its code and is not named: left out


def test_segment_masks_and_import_segment_replace_in_place(scene, tmp_path):
    """One segment put into a segmentation of the user's, on the input's oblique grid, replaced (same
    ID) by a later call with the same key; its other segments stay; masks read back exactly."""
    node, geom = _add_input(scene, seed=11)
    snap = _snapshot(node)
    mask = np.random.default_rng(0).random(geom.shape) > 0.6
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    target.GetSegmentation().AddEmptySegment("kept", "kept")  # an empty segment reads back as all False
    sid = sb.import_segment(geom.with_array(mask.astype(np.uint8)), target, node, "Result", (1, 0, 0), key="k")
    n = scene.GetNumberOfNodes()  # the segmentation's display node, no helper left behind
    kji = geom.with_array(mask.astype(np.uint8)).to_slicer()[0] > 0
    masks = sb.segment_masks(target, node, [sid, "kept"])
    np.testing.assert_array_equal(masks[sid], kji)
    assert not masks["kept"].any() and scene.GetNumberOfNodes() == n
    again = sb.import_segment(geom.with_array((~mask).astype(np.uint8)), target, node, "Result", key="k")
    assert again == sid and target.GetSegmentation().GetNumberOfSegments() == 2
    np.testing.assert_array_equal(sb.segment_masks(target, node, [sid])[sid], ~kji)
    other = sb.import_segment(geom.with_array(mask.astype(np.uint8)), target, node, "Result", key="other")
    assert other != sid and target.GetSegmentation().GetNumberOfSegments() == 3 and scene.GetNumberOfNodes() == n
    path = sb.write_label_array(masks[sid].astype(np.uint8), node, tmp_path / "mask.nrrd")
    np.testing.assert_allclose(read_volume(path).index_to_ras(), _matrix(node), atol=1e-9)
    with pytest.raises(InputError, match="has no segment 'nope'"):
        sb.segment_masks(target, node, ["nope"])
    _assert_unchanged(node, snap)


def test_show_result_without_app(scene, tmp_path):
    node, _ = _add_input(scene)
    geom = sb.volume_from_node(node)
    res, *_ = _make_result(geom)
    imported = sb.import_result(_result_dict(res, tmp_path / "r"), node, "organs", show=False)
    assert sb.show_result(imported, node) is False  # slicer-core has no slicer.app
    assert imported.nodes["organs"].GetDisplayNode().GetVisibility()


@pytest.mark.parametrize("name", ["inferno", "viridis", "magma", "plasma", "hot", "gray"])
def test_color_tables(scene, name):
    cid = sb.color_node_id(scene, name)
    assert scene.GetNodeByID(cid) is not None
    assert sb.color_node_id(scene, name) == cid  # no duplicates
