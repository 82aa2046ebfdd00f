"""Crop boxes -> markups ROI nodes (Slicer's ``vtkMRMLMarkupsROINode``), exactly on the crop.

A pipeline's crop box (e.g. NeoNet's TLCR box, the ``crop_box`` note of ``pni.predict``) is an
oriented box: centre, edge-to-edge size along the box's own i, j, k axes, and the directions of
those axes. :func:`roi_geometry` accepts it in either frame and returns RAS:

- ``centre_ras``, ``size_mm``, ``orientation_ras`` (3x3, columns = RAS directions of the box
  axes), as written by :func:`pantheon.models.neonet.tlcr.box_as_roi`;
- or ``centre_lps``, ``size_mm``, ``direction_lps`` (columns = LPS directions), converted here
  (x and y negated).

:func:`import_roi` puts it into the scene as a Box ROI whose ObjectToNode matrix is the box's
orientation plus centre, so its 8 corners are the crop's corners (voxel edges) whatever the
input's orientation (oblique, LPS/RAS-flipped, anisotropic). Like :func:`~pantheon.slicerbridge.
scene.import_result`'s outputs, the ROI is in the input's *local* frame (it observes the input's
parent transform), carries the ``Pantheon.*`` attributes, lives in the input's subject-hierarchy
output folder, and a re-run of the same action on the same input reuses the node (same ID).

Its ``Pantheon.Action`` tag is ``"<action>/roi"``, not ``action`` itself, so that importing the
next result of ``action`` (which removes that action's outputs the result no longer lists) does
not delete it; :func:`~pantheon.slicerbridge.scene.remove_outputs` without an action removes it.

``slicer`` and ``vtk`` are imported inside functions only; nothing here imports torch.
"""

from __future__ import annotations

import json
from typing import Optional, Union

import numpy as np

from ..errors import InputError
from .scene import (
    ATTR_ACTION,
    ATTR_INPUT,
    ATTR_KIND,
    ATTR_OUTPUT,
    check_volume_node,
    outputs_of,
    place_in_hierarchy,
    scene_of,
)

__all__ = ["ROI_KIND", "roi_action", "roi_geometry", "roi_corners_ras", "roi_node_corners", "import_roi", "find_roi"]

ROI_KIND = "roi"
_FLIP = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS


def roi_action(action: str) -> str:
    """The ``Pantheon.Action`` tag of an action's ROI outputs."""
    return f"{action}/{ROI_KIND}"


def roi_geometry(box: Union[dict, str]) -> dict:
    """``{"centre_ras", "size_mm", "orientation_ras"}`` (numpy) from a crop-box dict or its JSON."""
    if isinstance(box, str):
        try:
            box = json.loads(box)
        except ValueError as exc:
            raise InputError(f"the crop box is not valid JSON: {exc}") from exc
    if not isinstance(box, dict):
        raise InputError(f"a crop box must be a dict, got {type(box).__name__}")
    try:
        size = np.asarray(box["size_mm"], dtype=np.float64).reshape(3)
        if "centre_ras" in box:
            centre = np.asarray(box["centre_ras"], dtype=np.float64).reshape(3)
            orient = np.asarray(box.get("orientation_ras", np.eye(3)), dtype=np.float64).reshape(3, 3)
        else:
            centre = _FLIP @ np.asarray(box["centre_lps"], dtype=np.float64).reshape(3)
            orient = _FLIP @ np.asarray(box.get("direction_lps", _FLIP), dtype=np.float64).reshape(3, 3)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError("a crop box needs size_mm and centre_ras (+ orientation_ras) or centre_lps "
                         f"(+ direction_lps): {exc}") from exc
    if not (np.all(np.isfinite(size)) and np.all(size > 0) and np.all(np.isfinite(centre))
            and np.all(np.isfinite(orient))):
        raise InputError("the crop box has a non-positive size or non-finite values")
    norms = np.linalg.norm(orient, axis=0)
    if np.any(norms < 1e-9):
        raise InputError("the crop box orientation has a zero axis")
    return {"centre_ras": centre, "size_mm": size, "orientation_ras": orient / norms}


_SIGNS = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=np.float64)


def _corners(size, rotation, centre) -> np.ndarray:
    return (_SIGNS * np.asarray(size, dtype=np.float64) / 2.0) @ np.asarray(rotation).T + np.asarray(centre)


def roi_corners_ras(box: Union[dict, str]) -> np.ndarray:
    """(8, 3) RAS corners of a crop box (the same order as ``CropBox.corners_lps``: i, then j, then k
    from the low to the high side)."""
    g = roi_geometry(box)
    return _corners(g["size_mm"], g["orientation_ras"], g["centre_ras"])


def roi_node_corners(roi_node, world: bool = True) -> np.ndarray:
    """(8, 3) RAS corners of a box ROI node, in the order of :func:`roi_corners_ras`: in world
    coordinates (parent transforms applied), or with ``world=False`` in the node's own frame."""
    import slicer
    m = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToWorldMatrix() if world else roi_node.GetObjectToNodeMatrix())
    return _corners(roi_node.GetSize(), m[:3, :3], m[:3, 3])


def find_roi(input_node, action: str, name: str = "crop_box"):
    """The ROI node a previous :func:`import_roi` made for this input/action/name, or None."""
    for node in outputs_of(input_node, roi_action(action)):
        if node.GetAttribute(ATTR_OUTPUT) == name and node.IsA("vtkMRMLMarkupsROINode"):
            return node
    return None


def import_roi(box: Union[dict, str], input_node, action: str, name: str = "crop_box", locked: bool = True,
               color: Optional[tuple] = (0.2, 0.9, 0.9)):
    """Create (or update, on a re-run) the ROI node of crop box ``box`` for ``input_node``; returns it.

    ``locked``: the ROI is a result, not a control; lock its handles so it is not moved by accident.
    """
    import slicer

    if not isinstance(action, str) or not action.strip():
        raise ValueError("action must be a non-empty string, e.g. 'predict'")
    check_volume_node(input_node)
    g = roi_geometry(box)
    scene = scene_of(input_node)
    node = find_roi(input_node, action, name)
    if node is None:
        node = slicer.vtkMRMLMarkupsROINode()
        label = f"{input_node.GetName()} {action} {name.replace('_', ' ')}"
        node.SetName(scene.GenerateUniqueName(label))
        scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
    node.SetAttribute(ATTR_INPUT, input_node.GetID())
    node.SetAttribute(ATTR_ACTION, roi_action(action))
    node.SetAttribute(ATTR_OUTPUT, name)
    node.SetAttribute(ATTR_KIND, ROI_KIND)
    node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    matrix = np.eye(4)
    matrix[:3, :3] = g["orientation_ras"]
    matrix[:3, 3] = g["centre_ras"]
    was = node.StartModify()
    try:
        if hasattr(node, "SetROIType") and hasattr(node, "ROITypeBox"):
            node.SetROIType(node.ROITypeBox)
        node.SetSize(*(float(v) for v in g["size_mm"]))
        node.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(matrix))
        node.SetLocked(bool(locked))
    finally:
        node.EndModify(was)
    display = node.GetDisplayNode()
    if display is not None and color is not None:
        display.SetSelectedColor(*color)
        display.SetColor(*color)
    place_in_hierarchy(scene, input_node, [node])
    return node
