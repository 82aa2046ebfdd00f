"""Crop box -> markups ROI (pantheon.slicerbridge.markups) on a real MRML scene (PyPI slicer-core).

The ROI must coincide with the crop in world space: its 8 corners are the TLCR box's corners
computed from the image geometry, for oblique, LPS/RAS-flipped, permuted and anisotropic grids,
given the box in RAS (``box_as_roi``, what ``pni.predict`` writes) or in LPS. A re-run reuses the
node, importing the next result of the action leaves it alone, it follows the input's parent
transform and sits in the input's output folder.
"""

import json

import numpy as np
import pytest

from pantheon.errors import InputError
from pantheon.io.volume import Volume
from pantheon.models.neonet.tlcr import box_as_roi, tlcr_box

slicer = pytest.importorskip("slicer", reason="slicer-core (MRML without the Slicer app) is not installed")
if not hasattr(slicer, "vtkMRMLMarkupsROINode"):
    pytest.skip("slicer-core lacks markups", allow_module_level=True)

from pantheon import slicerbridge as bridge  # noqa: E402

FLIP = np.diag([-1.0, -1.0, 1.0])


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


GRIDS = {  # direction (LPS columns of i, j, k), spacing (si, sj, sk), shape (K, J, I)
    "oblique-LPI-aniso": (_rotation(0.2, -0.15, 0.3) @ np.diag([1.0, 1.0, -1.0]), (1.2, 0.9, 4.0), (20, 40, 36)),
    "RAS-flipped-aniso": (np.diag([-1.0, -1.0, 1.0]), (0.8, 1.7, 3.0), (24, 30, 44)),
    "permuted-ASL-oblique": (_rotation(-0.1, 0.25, 0.05) @ np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, 1.0, 0]]),
                             (2.5, 3.5, 1.1), (50, 22, 28)),
}


def _volume(name):
    direction, spacing, shape = GRIDS[name]
    rng = np.random.default_rng(0)
    arr = rng.uniform(50, 400, size=shape).astype(np.float32)
    vol = Volume(arr, spacing, (12.0, -30.0, 55.0), direction)
    mask = np.zeros(shape, np.uint8)
    k, j, i = (s // 2 for s in shape)
    mask[max(0, k - 2):k + 3, max(0, j - 4):j + 2, max(0, i - 3):i + 5] = 2
    mask[1, 1, 1] = 2  # a stray island the TLCR box must ignore
    return vol, vol.with_array(mask)


def _node(vol, name="mri"):
    arr, m = vol.to_slicer()
    return slicer.util.addVolumeFromArray(arr, ijkToRAS=m, name=name)


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("frame", ["ras", "lps"])
def test_roi_corners_are_the_crop_corners(mrml_scene, grid, frame):
    vol, mask = _volume(grid)
    box = tlcr_box(mask, size=(16, 12, 8), spacing=(4.0, 5.0, 6.0), label=2)  # anisotropic box
    expected = box.corners_lps() @ FLIP.T  # the crop's outer corners in RAS, from the image geometry
    if frame == "ras":
        roi_box = json.loads(json.dumps({k: np.asarray(v).tolist() for k, v in box_as_roi(box).items()}))
    else:
        roi_box = {"centre_lps": list(box.index_to_lps()[:3, :3] @ ((np.array(box.size_ijk) - 1) / 2.0)
                                      + box.index_to_lps()[:3, 3]),
                   "size_mm": list(box.size_mm), "direction_lps": np.asarray(box.direction).tolist()}
    node = _node(vol)
    roi = bridge.import_roi(roi_box, node, "predict")
    assert roi.IsA("vtkMRMLMarkupsROINode") and roi.GetScene() is mrml_scene
    np.testing.assert_allclose(bridge.roi_node_corners(roi), expected, atol=1e-6)
    np.testing.assert_allclose(bridge.roi_corners_ras(roi_box), expected, atol=1e-6)
    np.testing.assert_allclose(roi.GetSize(), box.size_mm, atol=1e-9)
    # every voxel of the crop grid lies inside the ROI
    kji = np.argwhere(np.ones(box.shape, bool))[::97]
    lps = np.c_[kji[:, ::-1], np.ones(len(kji))] @ box.index_to_lps().T
    m = slicer.util.arrayFromVTKMatrix(roi.GetObjectToWorldMatrix())
    local = ((lps[:, :3] @ FLIP.T) - m[:3, 3]) @ m[:3, :3]
    assert np.all(np.abs(local) <= np.array(roi.GetSize()) / 2 + 1e-6)


def test_rerun_reuses_node_and_survives_import_result(mrml_scene, tmp_path):
    vol, mask = _volume("oblique-LPI-aniso")
    node = _node(vol)
    box = box_as_roi(tlcr_box(mask, size=(8, 8, 4), spacing=(4.0, 4.0, 4.0), label=2))
    roi = bridge.import_roi(box, node, "predict")
    assert roi.GetLocked() and roi.GetAttribute(bridge.ATTR_INPUT) == node.GetID()
    assert roi.GetAttribute(bridge.ATTR_KIND) == "roi" and roi.GetAttribute(bridge.ATTR_OUTPUT) == "crop_box"
    moved = dict(box, centre_ras=list(np.asarray(box["centre_ras"]) + [5.0, 0.0, 0.0]))
    again = bridge.import_roi(json.dumps({k: np.asarray(v).tolist() for k, v in moved.items()}), node, "predict")
    assert again.GetID() == roi.GetID()
    assert len([n for n in bridge.outputs_of(node) if n.IsA("vtkMRMLMarkupsROINode")]) == 1
    c = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(c)
    np.testing.assert_allclose(c, moved["centre_ras"], atol=1e-6)
    assert bridge.find_roi(node, "predict") is roi and bridge.find_roi(node, "synthesize") is None
    # importing the action's next result (which lists no ROI) leaves the ROI in place
    res = bridge.import_result({"outputs": {}, "scalars": {"x": 1.0}, "tables": {"t": [{"a": 1}]}, "notes": {}},
                               node, "predict", show=False)
    assert roi.GetScene() is mrml_scene
    # same subject-hierarchy folder as the action's other outputs
    sh = mrml_scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(roi)) == res.folder_item != 0
    # other inputs get their own ROI; removing all outputs of the input removes it
    other = _node(vol, "other")
    assert bridge.import_roi(box, other, "predict").GetID() != roi.GetID()
    bridge.remove_outputs(node)
    assert roi.GetScene() is None and bridge.find_roi(node, "predict") is None


def test_roi_follows_parent_transform(mrml_scene):
    vol, mask = _volume("RAS-flipped-aniso")
    node = _node(vol)
    t = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, :3] = _rotation(0.0, 0.0, 0.4)
    m[:3, 3] = [10.0, -5.0, 20.0]
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    node.SetAndObserveTransformNodeID(t.GetID())
    box = tlcr_box(mask, size=(8, 8, 4), spacing=(4.0, 4.0, 4.0), label=2)
    roi = bridge.import_roi(box_as_roi(box), node, "predict")
    assert roi.GetTransformNodeID() == t.GetID()
    local = box.corners_lps() @ FLIP.T
    world = np.c_[local, np.ones(8)] @ m.T
    np.testing.assert_allclose(bridge.roi_node_corners(roi), world[:, :3], atol=1e-6)


def test_bad_boxes(mrml_scene):
    vol, _ = _volume("RAS-flipped-aniso")
    node = _node(vol)
    with pytest.raises(InputError, match="size_mm"):
        bridge.import_roi({"centre_ras": [0, 0, 0]}, node, "predict")
    with pytest.raises(InputError, match="non-positive"):
        bridge.import_roi({"centre_ras": [0, 0, 0], "size_mm": [1, 0, 1]}, node, "predict")
    with pytest.raises(InputError, match="JSON"):
        bridge.import_roi("{not json", node, "predict")
    with pytest.raises(ValueError, match="action"):
        bridge.import_roi({"centre_ras": [0, 0, 0], "size_mm": [1, 1, 1]}, node, "")
    assert not [n for n in bridge.outputs_of(node)]
