"""Scene <-> Pantheon: the only code that calls Slicer's API (imported inside functions only).

Works both in the Slicer application and in plain Python with PyPI ``slicer-core`` (MRML, the
segmentations/colors/terminologies logic classes and ``slicer.util``, but no ``slicer.app`` and no
``slicer.modules``). What slicer-core lacks is filled in here, only when it is missing:

- segmentation converter rules are not registered -> registered once (:func:`ensure_converters`);
- ``slicer.modules.segmentations.logic()`` -> the static ``vtkSlicerSegmentationsModuleLogic`` methods;
- default colour nodes (Grey, Labels ...) are not in a new scene -> ``vtkMRMLColorLogic`` adds them;
- file-based colour tables (Inferno, Viridis, Magma, Plasma) are absent -> built from matplotlib's
  maps as ``vtkMRMLColorTableNode`` singletons "Pantheon_<name>" (real Slicer uses its own
  ``vtkMRMLColorTableNodeFile<Name>.txt``); "hot" is always built (Slicer has no such table);
- subject hierarchy items are not created automatically -> created here for the output nodes.

Geometry: everything is in the volume node's *local* frame (IJKToRAS, parent transforms not
applied). Outputs observe the same parent transform as their input, so they stay on top of it
whatever the transform is (also non-linear). ``volume_from_node(node, world=True)`` instead
hardens a linear parent transform into the geometry.

Outputs are tagged with node attributes ``Pantheon.InputNodeID``, ``Pantheon.Action``,
``Pantheon.Output`` and ``Pantheon.Kind``. A re-run of the same action on the same input *reuses*
the nodes of the same output name and kind (same node IDs; the node's display settings survive,
except that a heatmap's colour map / window-level are reset when the result suggests different
ones), removes that action's outputs that the new result no longer has, and never touches other
actions or other inputs. Segments are recreated on each run (names, colours, terminology from the
result). The input node is never modified.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import InputError, PantheonError
from ..io import Volume, read_volume, write_volume
from . import terms

ATTR_INPUT = "Pantheon.InputNodeID"
ATTR_ACTION = "Pantheon.Action"
ATTR_OUTPUT = "Pantheon.Output"
ATTR_KIND = "Pantheon.Kind"
ATTR_COLORMAP = "Pantheon.Colormap"
ATTR_RANGE = "Pantheon.Range"
FOLDER_SUFFIX = " - Pantheon outputs"
DEFAULT_OVERLAY_OPACITY = 0.5

# result colormap name -> Slicer's built-in colour node ID (present in the Slicer application).
BUILTIN_COLOR_IDS = {
    "inferno": "vtkMRMLColorTableNodeFileInferno.txt",
    "viridis": "vtkMRMLColorTableNodeFileViridis.txt",
    "magma": "vtkMRMLColorTableNodeFileMagma.txt",
    "plasma": "vtkMRMLColorTableNodeFilePlasma.txt",
    "gray": "vtkMRMLColorTableNodeGrey",
    "grey": "vtkMRMLColorTableNodeGrey",
    "rainbow": "vtkMRMLColorTableNodeRainbow",
    "red": "vtkMRMLColorTableNodeRed",
    "iron": "vtkMRMLColorTableNodeIron",
}


@dataclass
class ImportedResult:
    """What :func:`import_result` put into the scene and what goes back to the panel."""

    nodes: Dict[str, object] = field(default_factory=dict)   # output name -> MRML node
    scalars: Dict[str, float] = field(default_factory=dict)
    tables: Dict[str, object] = field(default_factory=dict)  # table name -> vtkMRMLTableNode
    notes: Dict[str, str] = field(default_factory=dict)
    folder_item: int = 0  # subject hierarchy folder holding the outputs (0 when none)


# --------------------------------------------------------------------------- small helpers
def _slicer():
    import slicer
    return slicer


def scene_of(node):
    scene = node.GetScene() if node is not None else None
    return scene if scene is not None else getattr(_slicer(), "mrmlScene", None)


def _matrix(node) -> np.ndarray:
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _slicer().util.arrayFromVTKMatrix(m)


def check_volume_node(node, what="input"):
    if node is None or not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"the {what} must be a volume node, got {node!r}")
    if node.GetImageData() is None:
        raise InputError(f"volume {node.GetName()!r} has no image data")


def _seg_logic():
    """slicer.modules.segmentations.logic() in Slicer; the static logic class in slicer-core."""
    slicer = _slicer()
    modules = getattr(slicer, "modules", None)
    seg_module = getattr(modules, "segmentations", None) if modules is not None else None
    if seg_module is not None:
        return seg_module.logic()
    return slicer.vtkSlicerSegmentationsModuleLogic


def ensure_converters():
    """Register the segmentation conversion rules (done by the Segmentations module in Slicer)."""
    slicer = _slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    have = {r.GetClassName() for r in factory.GetConverterRules()}
    for name in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                 "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                 "vtkFractionalLabelmapToClosedSurfaceConversionRule"):
        cls = getattr(slicer, name, None)
        if cls is not None and name not in have:
            factory.RegisterConverterRule(cls())


def _ensure_default_colors(scene):
    """Slicer's default colour nodes; a bare slicer-core scene has none."""
    if scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is None:
        logic = _slicer().vtkMRMLColorLogic()
        logic.SetMRMLScene(scene)  # adds the default (non-file) colour nodes
        logic.SetMRMLScene(None)


def _matplotlib_colors(name: str, n: int = 256) -> Optional[np.ndarray]:
    if name == "hot":  # matplotlib's "hot", piecewise linear (no matplotlib needed)
        x = np.linspace(0.0, 1.0, n)
        r = np.clip(x / 0.365079, 0, 1)
        g = np.clip((x - 0.365079) / (0.746032 - 0.365079), 0, 1)
        b = np.clip((x - 0.746032) / (1 - 0.746032), 0, 1)
        return np.stack([r, g, b], axis=1)
    try:
        from matplotlib import colormaps
        return np.asarray(colormaps[name](np.linspace(0.0, 1.0, n)))[:, :3]
    except (ImportError, KeyError, ValueError):
        return None


def color_node_id(scene, colormap: Optional[str]) -> str:
    """Colour node ID for a result colormap name; creates a Pantheon colour table when needed.

    Order: Slicer's built-in node (``vtkMRMLColorTableNodeFile<Name>.txt`` etc.) -> an existing or
    new singleton ``vtkMRMLColorTableNode`` "Pantheon_<name>" built from matplotlib -> Grey.
    """
    slicer = _slicer()
    name = (colormap or "inferno").strip().lower()
    builtin = BUILTIN_COLOR_IDS.get(name)
    if builtin and name != "hot" and scene.GetNodeByID(builtin) is not None:
        return builtin
    tag = f"Pantheon_{name}"
    existing = scene.GetSingletonNode(tag, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing.GetID()
    rgb = _matplotlib_colors(name)
    if rgb is None:
        _ensure_default_colors(scene)
        return BUILTIN_COLOR_IDS["gray"]
    node = slicer.vtkMRMLColorTableNode()
    node.SetTypeToUser()
    node.SetSingletonTag(tag)
    node.SetName(f"{name} (Pantheon)")
    node.SetAttribute("Category", "Continuous")
    node.SetNumberOfColors(len(rgb))
    for i, (r, g, b) in enumerate(rgb):
        node.SetColor(i, str(i), float(r), float(g), float(b), 1.0)
    scene.AddNode(node)
    return node.GetID()


# --------------------------------------------------------------------------- node -> worker input
def volume_from_node(volume_node, world: bool = False) -> Volume:
    """The node's voxels and exact geometry as a :class:`Volume` (a copy; the node is untouched).

    Geometry is the node's IJKToRAS (its local frame); results computed on it go back under the
    same parent transform (see :func:`import_result`). With ``world=True`` a linear parent
    transform is hardened into the geometry; a non-linear one raises :class:`InputError`.
    """
    slicer = _slicer()
    check_volume_node(volume_node)
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    m = _matrix(volume_node)
    parent = volume_node.GetParentTransformNode()
    if world and parent is not None:
        import vtk
        if not parent.IsTransformToWorldLinear():
            raise InputError(f"volume {volume_node.GetName()!r} is under a non-linear transform; harden it "
                             "(Data module: right-click the volume, Harden transform) and run again.")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        m = slicer.util.arrayFromVTKMatrix(to_world) @ m
    return Volume.from_slicer(array, m, name=f"volume {volume_node.GetName()!r}")


def export_volume(volume_node, path, world: bool = False) -> Path:
    """Write the node's voxels + geometry to ``path`` (NRRD by default; any pantheon.io format)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".nrrd")
    return write_volume(volume_from_node(volume_node, world=world), path)


def _segments_of(segmentation_node):
    seg = segmentation_node.GetSegmentation()
    out = []
    for i in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(i)
        out.append((sid, seg.GetSegment(sid)))
    return out


def segment_terminology(segment) -> str:
    """The segment's serialised terminology entry ("" when none)."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    import vtk
    value = vtk.reference("")
    ok = segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value) if ok else ""


def _set_segment_terminology(segment, entry: str):
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(entry)
    else:
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


def _check_segmentation_node(segmentation_node):
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"expected a segmentation node, got {segmentation_node!r}")


def iter_segment_masks(segmentation_node, reference_volume_node, segment_ids):
    """``(segment ID, mask)`` for each of ``segment_ids``, one at a time (a CT-sized bool array each):
    the segment's voxels on the reference volume's voxel grid, in Slicer's (K, J, I) array order.
    An empty segment gives an all-False mask. Nothing in the scene is changed (a temporary label map
    node is added and removed)."""
    slicer = _slicer()
    _check_segmentation_node(segmentation_node)
    check_volume_node(reference_volume_node, "reference volume")
    segmentation = segmentation_node.GetSegmentation()
    for sid in segment_ids:
        if segmentation.GetSegment(sid) is None:
            raise InputError(f"The segmentation {segmentation_node.GetName()!r} has no segment {sid!r}.")
    ensure_converters()
    shape = tuple(reversed(reference_volume_node.GetImageData().GetDimensions()))
    ref_matrix = _matrix(reference_volume_node)
    scene = scene_of(reference_volume_node)
    import vtk
    before = {n.GetID() for n in _all_nodes(scene)}
    tmp = slicer.vtkMRMLLabelMapVolumeNode()
    tmp.SetHideFromEditors(True)
    scene.AddNode(tmp)
    try:
        for sid in segment_ids:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(sid)
            ok = _seg_logic().ExportSegmentsToLabelmapNode(
                segmentation_node, ids, tmp, reference_volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
            if not ok:
                raise PantheonError(f"Slicer could not export segment {sid!r} to a label map")
            mask = slicer.util.arrayFromVolume(tmp)
            if mask.shape != shape or not np.allclose(_matrix(tmp), ref_matrix, atol=1e-6):
                raise PantheonError(f"segment {sid!r} was not exported on the reference grid")
            yield sid, mask > 0
    finally:
        remove_node_and_helpers(scene, tmp)
        for extra in _all_nodes(scene):  # e.g. the colour table the export made for the label map
            if extra is not None and extra.GetID() not in before:
                scene.RemoveNode(extra)


def segment_masks(segmentation_node, reference_volume_node, segment_ids) -> Dict[str, np.ndarray]:
    """``{segment ID: mask}`` of :func:`iter_segment_masks` (all held at once: for a few segments)."""
    return dict(iter_segment_masks(segmentation_node, reference_volume_node, list(segment_ids)))


def write_label_array(array: np.ndarray, reference_volume_node, path) -> Path:
    """Write a (K, J, I) array with the reference volume's geometry (its voxels are not read)."""
    check_volume_node(reference_volume_node, "reference volume")
    shape = tuple(reversed(reference_volume_node.GetImageData().GetDimensions()))
    if tuple(array.shape) != shape:
        raise InputError(f"the label array has the shape {tuple(array.shape)}, the reference volume {shape}")
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".nrrd")
    vol = Volume.from_slicer(array, _matrix(reference_volume_node),
                             name=f"volume {reference_volume_node.GetName()!r}")
    return write_volume(vol, path)


def export_segmentation(segmentation_node, reference_volume_node, path, label_values=None, ignored=None) -> Path:
    """Write the segmentation as one label map on the reference volume's voxel grid.

    Label values come from :func:`pantheon.slicerbridge.terms.resolve_label_values`: by default
    BTCV organs by SNOMED CT code or name (unknown segments -> InputError listing them); with
    ``label_values`` ({segment name or code: int}) segments not in it are left out; with a list
    ``ignored``, segments that are not probe organs are left out too and named in it. Where
    segments overlap, the later segment (in the segmentation's order) wins. Nothing in the
    scene is changed (a temporary label map node is added and removed).
    """
    _check_segmentation_node(segmentation_node)
    check_volume_node(reference_volume_node, "reference volume")
    segments = _segments_of(segmentation_node)
    values = terms.resolve_label_values(
        [(sid, s.GetName(), segment_terminology(s)) for sid, s in segments], label_values, ignored)
    shape = tuple(reversed(reference_volume_node.GetImageData().GetDimensions()))
    out = np.zeros(shape, dtype=np.uint8 if max(values.values(), default=0) <= 255 else np.uint16)
    for sid, mask in iter_segment_masks(segmentation_node, reference_volume_node,
                                        [sid for sid, _segment in segments if sid in values]):
        out[mask] = values[sid]
    return write_label_array(out, reference_volume_node, path)


def import_segment(label: Volume, segmentation_node, reference_volume_node, name: str, color=None,
                   key: Optional[str] = None) -> str:
    """Put the voxels > 0 of ``label`` into ``segmentation_node`` as one segment named ``name``, on
    ``label``'s own voxels (no resampling when it lies on the reference volume's grid, as results do).
    The segment an earlier call tagged with the same ``key`` is replaced in place (same segment ID);
    other segments are left alone. A segmentation without segments gets the reference volume's
    geometry and parent transform. Returns the segment ID."""
    slicer = _slicer()
    import vtk
    _check_segmentation_node(segmentation_node)
    check_volume_node(reference_volume_node, "reference volume")
    if label.components != 1:
        raise InputError("a label output must have one component")
    ensure_converters()
    scene = scene_of(reference_volume_node)
    segmentation = segmentation_node.GetSegmentation()
    sid = None
    if key is not None:
        for other_id, segment in _segments_of(segmentation_node):
            value = vtk.reference("")
            if segment.GetTag(ATTR_OUTPUT, value) and str(value) == key:
                sid = other_id
                break
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    if segmentation.GetNumberOfSegments() == 0:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
        segmentation_node.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
    if sid is None:
        sid = segmentation.GenerateUniqueSegmentID(name)
    tmp = slicer.vtkMRMLLabelMapVolumeNode()
    tmp.SetHideFromEditors(True)
    scene.AddNode(tmp)
    try:
        _set_volume_content(tmp, label.with_array((np.asarray(label.array) > 0).astype(np.uint8)))
        # in the reference volume's frame: placed as the volume is, whatever the segmentation's transform
        tmp.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(sid)
        ok = _seg_logic().ImportLabelmapToSegmentationNode(tmp, segmentation_node, ids)  # clears, then fills
    finally:
        remove_node_and_helpers(scene, tmp)
    if not ok:
        raise PantheonError("Slicer could not import the label map into a segmentation")
    segment = segmentation.GetSegment(sid)
    segment.SetName(str(name))
    if color is not None:
        segment.SetColor(*(float(c) for c in list(color)[:3]))
    if key is not None:
        segment.SetTag(ATTR_OUTPUT, str(key))
    return sid


# --------------------------------------------------------------------------- finding outputs
def _all_nodes(scene):
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]


def outputs_of(input_node, action: Optional[str] = None) -> list:
    """Output nodes Pantheon made for ``input_node`` (of one ``action`` or all), in scene order."""
    scene = scene_of(input_node)
    if scene is None or input_node is None:
        return []
    iid = input_node.GetID()
    found = []
    for node in _all_nodes(scene):
        if node is None or node.GetAttribute(ATTR_INPUT) != iid:
            continue
        if action is not None and node.GetAttribute(ATTR_ACTION) != action:
            continue
        found.append(node)
    return found


def release_output(node) -> None:
    """Make a Pantheon output an ordinary node: later runs neither reuse nor remove it."""
    for attr in (ATTR_INPUT, ATTR_ACTION, ATTR_OUTPUT):
        node.RemoveAttribute(attr)


def remove_node_and_helpers(scene, node):
    if node is None or node.GetScene() is None:
        return
    helpers = []
    for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                          ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, count):
            helpers += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(node) if sh is not None else 0
    if item:
        sh.RemoveItem(item, False, False)  # the item only; the node goes next
    scene.RemoveNode(node)
    for h in helpers:
        if h is not None and h.GetScene() is not None:
            scene.RemoveNode(h)


def _output_folder(scene, input_node, create: bool) -> int:
    sh = scene.GetSubjectHierarchyNode()
    if sh is None:
        return 0
    import vtk
    input_item = sh.GetItemByDataNode(input_node)
    parent = sh.GetItemParent(input_item) if input_item else sh.GetSceneItemID()
    children = vtk.vtkIdList()
    sh.GetItemChildren(parent, children)
    for n in range(children.GetNumberOfIds()):
        child = children.GetId(n)
        if sh.GetItemAttribute(child, ATTR_INPUT) == input_node.GetID():
            return child
    if not create:
        return 0
    folder = sh.CreateFolderItem(parent, f"{input_node.GetName()}{FOLDER_SUFFIX}")
    sh.SetItemAttribute(folder, ATTR_INPUT, input_node.GetID())
    return folder


def remove_outputs(input_node, action: Optional[str] = None) -> int:
    """Remove Pantheon's outputs of ``input_node`` (one action or all); returns how many nodes."""
    scene = scene_of(input_node)
    nodes = outputs_of(input_node, action)
    for node in nodes:
        remove_node_and_helpers(scene, node)
    folder = _output_folder(scene, input_node, create=False) if scene is not None else 0
    if folder:
        import vtk
        sh = scene.GetSubjectHierarchyNode()
        children = vtk.vtkIdList()
        sh.GetItemChildren(folder, children)
        if children.GetNumberOfIds() == 0:
            sh.RemoveItem(folder, False, False)
    return len(nodes)


# --------------------------------------------------------------------------- results -> scene
def storable_for_slicer(array: np.ndarray) -> np.ndarray:
    """updateVolumeFromArray rejects int64/uint64 and bool; narrow them losslessly or refuse."""
    a = np.ascontiguousarray(array)
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    if a.dtype in (np.int64, np.uint64):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        for t in (np.uint8, np.int16, np.int32):
            info = np.iinfo(t)
            if info.min <= lo and hi <= info.max:
                return a.astype(t)
        return a.astype(np.float64)
    if a.dtype == np.float16:
        return a.astype(np.float32)
    return a


def _set_volume_content(node, vol: Volume):
    slicer = _slicer()
    arr, m = vol.to_slicer()
    slicer.util.updateVolumeFromArray(node, storable_for_slicer(arr))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))


def _node_name(input_node, action, name):
    return f"{input_node.GetName()} {action} {name}" if name != action else f"{input_node.GetName()} {name}"


def _get_or_create(scene, existing, key, class_name, input_node, action, out_name, kind):
    slicer = _slicer()
    node = existing.pop(key, None)
    if node is not None and node.GetClassName() != class_name:
        remove_node_and_helpers(scene, node)
        node = None
    created = node is None
    if created:
        node = getattr(slicer, class_name)()
        node.SetName(scene.GenerateUniqueName(_node_name(input_node, action, out_name)))
        scene.AddNode(node)
    node.SetAttribute(ATTR_INPUT, input_node.GetID())
    node.SetAttribute(ATTR_ACTION, action)
    node.SetAttribute(ATTR_OUTPUT, key)
    node.SetAttribute(ATTR_KIND, kind)
    if hasattr(node, "SetAndObserveTransformNodeID"):
        node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    return node, created


def heatmap_description(spec: dict) -> str:
    """What a heatmap's values mean (result.json's description), and how closely the file keeps
    them when it stores them to steps (see pantheon.outputs)."""
    text = str(spec.get("description") or spec.get("label") or "").strip()
    stored = spec.get("stored") if isinstance(spec.get("stored"), dict) else {}
    err, step = stored.get("max_error"), stored.get("step")
    if text and isinstance(err, (int, float)) and isinstance(step, (int, float)) and err > 0:
        text += f" Stored in steps of {step:.3g}: within {err:.2g} of the computed value."
    return text


def _import_heatmap(scene, node, created, vol: Volume, spec: dict):
    if vol.array.dtype == np.float64:  # a map stored as uint8 with a NIfTI scale reads as float64
        vol = vol.with_array(vol.array.astype(np.float32))
    _set_volume_content(node, vol)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    colormap = str(spec.get("colormap") or "inferno")
    rng = spec.get("range")
    if rng and len(rng) == 2 and all(r is not None and math.isfinite(r) for r in rng) and rng[1] > rng[0]:
        lo, hi = float(rng[0]), float(rng[1])
    else:
        finite = vol.array[np.isfinite(vol.array)] if vol.array.size else np.zeros(1)
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
    suggestion = json.dumps([colormap, lo, hi])
    if created or node.GetAttribute(ATTR_RANGE) != suggestion:
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(color_node_id(scene, colormap))
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(lo, hi)
        node.SetAttribute(ATTR_COLORMAP, colormap)
        node.SetAttribute(ATTR_RANGE, suggestion)
    description = heatmap_description(spec)
    if description:  # the Data module and the node's tooltip show it
        node.SetDescription(description)


def _import_volume(node, created, vol: Volume):
    _set_volume_content(node, vol)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def _import_labels(scene, seg_node, created, vol: Volume, spec: dict, input_node):
    """Label volume -> segments (one per listed value, plus "Label N" for unlisted values)."""
    slicer = _slicer()
    import vtk
    ensure_converters()
    if vol.components != 1:
        raise InputError("a label output must have one component")
    arr = vol.array
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError("a label output must hold whole numbers")
    listed, seen = [], set()
    for s in spec.get("segments") or []:
        v = int(s["value"])
        if v == 0 or v in seen:
            continue
        seen.add(v)
        listed.append(s)
    present = [int(v) for v in np.unique(arr) if int(v) != 0]
    for v in present:
        if v not in seen:
            listed.append({"value": v, "name": f"Label {v}", "color": [0.5, 0.5, 0.5], "code": None})
            seen.add(v)
    # Remap to 1..N in the listed order so each label lands in its own segment ID.
    uniq, inverse = np.unique(arr, return_inverse=True)
    new_index = {int(s["value"]): n + 1 for n, s in enumerate(listed)}
    lut = np.array([new_index.get(int(v), 0) for v in uniq], dtype=np.int32)
    remapped = lut[inverse.reshape(-1)].reshape(arr.shape)
    remapped = remapped.astype(np.uint8 if len(listed) < 256 else np.uint16)

    segmentation = seg_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    if created:
        seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    ids = vtk.vtkStringArray()
    used = set()
    seg_ids = []
    for s in listed:
        base = str(s.get("name") or f"Label {s['value']}")
        sid, n = base, 2
        while sid in used:
            sid, n = f"{base}_{n}", n + 1
        used.add(sid)
        seg_ids.append(sid)
        ids.InsertNextValue(sid)
    if not listed:
        return
    tmp = slicer.vtkMRMLLabelMapVolumeNode()
    tmp.SetHideFromEditors(True)
    scene.AddNode(tmp)
    try:
        _set_volume_content(tmp, vol.with_array(remapped))
        ok = _seg_logic().ImportLabelmapToSegmentationNode(tmp, seg_node, ids)
    finally:
        remove_node_and_helpers(scene, tmp)
    if not ok:
        raise PantheonError("Slicer could not import the label map into a segmentation")
    for sid, s in zip(seg_ids, listed):
        segment = segmentation.GetSegment(sid)
        segment.SetName(str(s.get("name") or sid))
        color = s.get("color") or [0.5, 0.5, 0.5]
        segment.SetColor(*(float(c) for c in color[:3]))
        code = s.get("code")
        if code and len(code) == 3 and code[1]:
            _set_segment_terminology(segment, terms.terminology_string(tuple(str(c) for c in code)))


def _vtk_column(name: str, values: list):
    import vtk
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        arr = vtk.vtkBitArray()
        conv = lambda v: int(bool(v))  # noqa: E731  (None -> 0)
    elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present) \
            and len(present) == len(values) and all(-2**31 <= v < 2**31 for v in present):
        arr = vtk.vtkIntArray()
        conv = int
    elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        arr = vtk.vtkDoubleArray()
        conv = lambda v: float("nan") if v is None else float(v)  # noqa: E731
    else:
        arr = vtk.vtkStringArray()
        conv = lambda v: "" if v is None else (v if isinstance(v, str) else json.dumps(v))  # noqa: E731
    arr.SetName(name)
    arr.SetNumberOfValues(len(values))
    for i, v in enumerate(values):
        arr.SetValue(i, conv(v))
    return arr


def _fill_table(table_node, rows: List[dict]):
    columns: List[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    table_node.RemoveAllColumns()
    for col in columns:
        table_node.AddColumn(_vtk_column(str(col), [row.get(col) for row in rows]))
    table_node.Modified()


def import_result(result: dict, input_node, action: str, show: bool = True, protect=()) -> ImportedResult:
    """Put a worker result (parsed result.json + "output_dir") into the scene, under ``input_node``.

    heatmap -> vtkMRMLScalarVolumeNode (colour table from "colormap", window/level from "range");
    volume -> vtkMRMLVectorVolumeNode when multi-component (PCA map), else scalar volume;
    labels -> vtkMRMLSegmentationNode (names, colours, SNOMED CT terminology; reference geometry
    = the input); tables -> vtkMRMLTableNode; scalars and notes are returned. Re-running an action
    replaces its previous outputs for this input (see the module docstring). ``show`` sets up the
    views when the Slicer application is there (:func:`show_result`).

    ``protect``: nodes the job read (e.g. the user's own tumour segmentation). Should one of them be
    an output of an earlier run (a user who edited Pantheon's result and runs again with it), it is
    handed over to the user (no longer an output) and a new output node is made, so a re-run never
    writes into what it read.
    """
    if not isinstance(action, str) or not action.strip():
        raise ValueError("action must be a non-empty string, e.g. 'organs'")
    check_volume_node(input_node)
    scene = scene_of(input_node)
    outputs = dict(result.get("outputs") or {})
    out_dir = result.get("output_dir")
    if outputs and out_dir is None:
        raise InputError("the result has image outputs but no 'output_dir' to read them from")
    out_dir = Path(out_dir) if out_dir is not None else None
    # Read everything first, so a broken result changes nothing in the scene.
    volumes = {}
    for name, spec in outputs.items():
        kind = spec.get("kind")
        if kind not in ("heatmap", "volume", "labels"):
            raise InputError(f"output {name!r} has unknown kind {kind!r}")
        path = out_dir / spec["file"]
        if not path.is_file():
            raise InputError(f"output {name!r}: file {path} is missing")
        volumes[name] = read_volume(path)

    _ensure_default_colors(scene)
    for node in protect or ():
        if node is not None and node.GetAttribute(ATTR_INPUT) is not None:
            release_output(node)
    existing = {n.GetAttribute(ATTR_OUTPUT): n for n in outputs_of(input_node, action)}
    imported = ImportedResult(scalars=dict(result.get("scalars") or {}), notes=dict(result.get("notes") or {}))
    for name, spec in outputs.items():
        vol, kind = volumes[name], spec["kind"]
        if kind == "labels":
            cls = "vtkMRMLSegmentationNode"
        elif kind == "volume" and vol.components > 1:
            cls = "vtkMRMLVectorVolumeNode"
        else:
            cls = "vtkMRMLScalarVolumeNode"
        node, created = _get_or_create(scene, existing, name, cls, input_node, action, name, kind)
        if kind == "heatmap":
            _import_heatmap(scene, node, created, vol, spec)
        elif kind == "volume":
            _import_volume(node, created, vol)
        else:
            _import_labels(scene, node, created, vol, spec, input_node)
        imported.nodes[name] = node
    for name, rows in (result.get("tables") or {}).items():
        node, _created = _get_or_create(scene, existing, f"tables/{name}", "vtkMRMLTableNode", input_node,
                                        action, name, "table")
        _fill_table(node, list(rows or []))
        imported.tables[name] = node
    for stale in existing.values():  # outputs of the previous run this result no longer has
        remove_node_and_helpers(scene, stale)
    imported.folder_item = place_in_hierarchy(scene, input_node,
                                               list(imported.nodes.values()) + list(imported.tables.values()))
    if show:
        show_result(imported, input_node)
    return imported


def output_node(input_node, action: str, name: str, class_name: str = "vtkMRMLSegmentationNode",
                kind: str = "labels", exclude=()):
    """The output node ``name`` of ``action`` for ``input_node``: the one an earlier run made, else a
    new one, named, tagged and placed in the subject hierarchy as :func:`import_result`'s outputs.
    A node in ``exclude`` (e.g. one the job reads) that is such an output is handed over to the
    user (see ``protect`` in :func:`import_result`), never reused."""
    scene = scene_of(input_node)
    for node in exclude or ():
        if (node is not None and node.GetAttribute(ATTR_INPUT) == input_node.GetID()
                and node.GetAttribute(ATTR_ACTION) == action):
            release_output(node)
    existing = {n.GetAttribute(ATTR_OUTPUT): n for n in outputs_of(input_node, action)}
    node, created = _get_or_create(scene, existing, name, class_name, input_node, action, name, kind)
    if created and hasattr(node, "CreateDefaultDisplayNodes"):
        node.CreateDefaultDisplayNodes()
    place_in_hierarchy(scene, input_node, [node])
    return node


def place_in_hierarchy(scene, input_node, nodes) -> int:
    sh = scene.GetSubjectHierarchyNode()
    if sh is None or not nodes:
        return 0
    folder = _output_folder(scene, input_node, create=True)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if not item:
            sh.CreateItem(folder, node)
        elif sh.GetItemParent(item) != folder:
            sh.SetItemParent(item, folder)
    return folder


def show_result(imported: ImportedResult, input_node, opacity: float = DEFAULT_OVERLAY_OPACITY) -> bool:
    """Show the input with the first heatmap (else volume) as foreground overlay; segmentations on.

    The view part needs the Slicer application (``slicer.app``); without it (slicer-core) only
    display nodes are touched and False is returned.
    """
    slicer = _slicer()
    overlay = None
    for node in imported.nodes.values():
        if node.IsA("vtkMRMLSegmentationNode"):
            display = node.GetDisplayNode()
            if display is not None:
                display.SetVisibility(True)
        elif overlay is None and node.IsA("vtkMRMLScalarVolumeNode") and node.GetAttribute(ATTR_KIND) == "heatmap":
            overlay = node
    if overlay is None:
        overlay = next((n for n in imported.nodes.values() if n.IsA("vtkMRMLVolumeNode")), None)
    if getattr(slicer, "app", None) is None:
        return False
    slicer.util.setSliceViewerLayers(background=input_node, foreground=overlay,
                                     foregroundOpacity=opacity if overlay is not None else None)
    return True
