"""A batch case in the Slicer scene, for reviewing its pseudo-labels (the PantheonReview module).

:func:`load_review_case` puts one ``done`` case of a :class:`pantheon.batch.review.ReviewSession`
into the scene: its input image as the background volume (read with :func:`pantheon.io.read_volume`,
the grid every output and correction of the case lies on), its outputs through
:func:`~pantheon.slicerbridge.scene.import_result` (label outputs as segmentations, heatmaps with
their colour map and range, the first one as the foreground overlay), and the latest correction, if
the case has one, as the segmentation to edit. A case whose pipeline writes only maps
(nemesis-organs) gets an empty segmentation "<case> correction" with one segment per map, to draw
a correction in. :func:`remove_review_case` takes every node of the case out of the scene again.

:func:`collect_corrections` turns the edited segmentations into label maps on the case image's
exact grid, with the label values of the original output's segments (:func:`correction_values`),
and keeps only those that differ from what was loaded: what ``ReviewSession.record(...,
"corrected", corrected=...)`` takes.

``slicer`` and ``vtk`` are imported inside functions only; nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..io import read_volume
from . import terms
from .scene import (
    ImportedResult,
    ensure_converters,
    export_segmentation,
    import_result,
    remove_node_and_helpers,
    remove_outputs,
    segment_terminology,
    storable_for_slicer,
)

ATTR_CASE = "PantheonReview.Case"  # on the nodes this module makes itself (the image, a correction segmentation)
CORRECTION_NAME = "segmentation"  # the output name of a correction drawn on a case without label outputs
SEGMENT_EDITOR_TAG = "SegmentEditor"  # the Segment Editor's parameter node singleton (SegmentEditor.py)
OVERLAY_OPACITY = 0.5

_CORRECTED_SUFFIX = re.compile(r"\.corrected(-\d+)?$")
_LABEL_N = re.compile(r"^label (\d+)$")  # import_result names a value its output does not list "Label N"


@dataclass
class ReviewCase:
    """What :func:`load_review_case` put into the scene for one case."""

    case_id: str
    volume: object  # the case's image (vtkMRMLScalarVolumeNode)
    imported: ImportedResult  # the batch's outputs for the case
    corrected: Dict[str, object] = field(default_factory=dict)  # output name -> the latest correction's node
    # output name -> (segmentation to edit, the file it was loaded from; None: drawn from nothing)
    editable: Dict[str, Tuple[object, Optional[str]]] = field(default_factory=dict)
    label_specs: Dict[str, list] = field(default_factory=dict)  # output name -> result.json's segments
    maps_only: bool = False  # the pipeline wrote no label output: new segments take BTCV organ values
    extra: List[object] = field(default_factory=list)  # other nodes made here (the correction segmentation)

    def nodes(self) -> list:
        """Every node of the case still in the scene."""
        out = [self.volume, *self.imported.nodes.values(), *self.imported.tables.values(),
               *self.corrected.values(), *self.extra]
        seen, unique = set(), []
        for node in out:
            if node is not None and node.GetScene() is not None and id(node) not in seen:
                seen.add(id(node))
                unique.append(node)
        return unique

    def first_segmentation(self):
        """The segmentation a reviewer edits first (None when the case has none)."""
        return next((node for node, _baseline in self.editable.values()), None)


def _slicer():
    import slicer
    return slicer


def btcv_segments() -> List[dict]:
    """The BTCV organs as result.json segments (value, name, colour, code): how a correction drawn
    on a maps-only case (nemesis-organs' organ maps) is labelled."""
    return [{"value": int(value), "name": name, "color": list(color), "code": ["SCT", code, meaning]}
            for name, value, color, code, meaning in terms.BTCV_ORGANS]


def correction_values(segments: Sequence[Tuple[str, Optional[str]]], spec_segments: Sequence[dict],
                      btcv: bool = False) -> Tuple[Dict[str, int], List[str]]:
    """Label values for the segments ``(name, SNOMED CT type code or None)`` of an edited segmentation,
    as in the original output's ``spec_segments`` (result.json): by name, then "Label N" (a value
    the output did not list), then by code; with ``btcv`` (a maps-only case), a BTCV organ by code
    or name. Any other segment takes the next value above all of these. Returns ({name: value},
    sentences saying which new segment took which value)."""
    by_name, by_code, used = {}, {}, set()
    for s in spec_segments or ():
        value = int(s["value"])
        used.add(value)
        by_name.setdefault(terms.normalize_name(str(s.get("name") or "")), value)
        code = s.get("code")
        if code and len(code) >= 2 and code[1]:
            by_code.setdefault(str(code[1]), value)
    btcv_values = {name: int(value) for name, value, *_rest in terms.BTCV_ORGANS}
    if btcv:
        used |= set(btcv_values.values())
    values: Dict[str, int] = {}
    added: List[str] = []
    for name, code in segments:
        if name in values:
            continue
        key = terms.normalize_name(name)
        value = by_name.get(key)
        if value is None and _LABEL_N.match(key):
            value = int(_LABEL_N.match(key).group(1))
        if value is None and code:
            value = by_code.get(str(code))
        if value is None and btcv:
            organ = terms.btcv_organ_from_code(code) if code else None
            organ = organ or terms.btcv_organ_from_name(name)
            value = btcv_values.get(organ) if organ else None
        if value is None:
            value = max(used | set(values.values()) | {0}) + 1
            added.append(f"the new segment {name!r} is saved as label {value}")
        values[name] = value
    return values, added


# --------------------------------------------------------------------------- loading
def _stem(file_name: str) -> str:
    name = Path(file_name).name
    for ext in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name.rpartition(".")[0] or name


def correction_output_name(corrected_file: str, label_files: Dict[str, str]) -> str:
    """The output a corrected file corrects: ``tumour.corrected-2.nii.gz`` -> the label output written
    as ``tumour.nii.gz``, else the stem itself (a correction of a maps-only case)."""
    stem = _CORRECTED_SUFFIX.sub("", _stem(corrected_file))
    for name, file in label_files.items():
        if _stem(file) == stem:
            return name
    return stem


def _read_result(folder: Path) -> dict:
    try:
        doc = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"The case folder {folder} has no readable result.json; rerun the batch for it.") from None
    return doc if isinstance(doc, dict) else {}


def segment_editor_node(scene, create: bool = False):
    """The Segment Editor's parameter node (a singleton the Segment Editor module finds and uses)."""
    node = scene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode")
    if node is None and create:
        node = _slicer().vtkMRMLSegmentEditorNode()
        node.SetSingletonTag(SEGMENT_EDITOR_TAG)
        node = scene.AddNode(node)
    return node


def _empty_correction(scene, volume, case_id: str, names: Sequence[str]):
    """A segmentation on the case image's grid with one empty segment per map (BTCV colour and
    terminology for an organ), to draw a correction of a maps-only case in."""
    ensure_converters()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{case_id} correction"))
    node.SetAttribute(ATTR_CASE, case_id)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    colours = {name: (color, code, meaning) for name, _v, color, code, meaning in terms.BTCV_ORGANS}
    segmentation = node.GetSegmentation()
    for name in names:
        organ = terms.btcv_organ_from_name(name)
        color, code, meaning = colours.get(organ, ((0.5, 0.5, 0.5), None, None))
        sid = segmentation.AddEmptySegment(segmentation.GenerateUniqueSegmentID(name), name, list(color))
        if code:
            segment = segmentation.GetSegment(sid)
            entry = terms.terminology_string(("SCT", code, meaning))
            if hasattr(segment, "SetTerminology"):
                segment.SetTerminology(entry)
            else:
                segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
    return node


def load_review_case(session, case_id: str, show: bool = True, action: Optional[str] = None) -> ReviewCase:
    """Put case ``case_id`` of ``session`` into the scene (see the module docstring). Nothing stays
    in the scene when it fails (InputError in one sentence for a missing image or output)."""
    slicer = _slicer()
    files = session.files(case_id)  # InputError for a case that is not done
    folder = Path(session.dir) / case_id
    doc = _read_result(folder)
    image = files.get("input")
    if not image or not Path(image).exists():
        raise InputError(f"The image of case {case_id} ({image}) is not there any more; review where the batch "
                         "ran, or put the image back.")
    vol = read_volume(image)
    if vol.components != 1:
        raise InputError(f"The image of case {case_id} has {vol.components} components; only grey images are "
                         "reviewed here.")
    outputs = {name: spec for name, spec in (doc.get("outputs") or {}).items()
               if isinstance(spec, dict) and spec.get("kind") in ("heatmap", "volume", "labels")}
    label_files = {name: spec["file"] for name, spec in outputs.items() if spec["kind"] == "labels"}
    scene = slicer.mrmlScene
    array, ijk_to_ras = vol.to_slicer()
    volume = slicer.util.addVolumeFromArray(storable_for_slicer(array), ijk_to_ras,
                                            name=scene.GenerateUniqueName(case_id))
    volume.SetAttribute(ATTR_CASE, case_id)
    case = ReviewCase(case_id, volume, ImportedResult(),
                      label_specs={name: list(spec.get("segments") or []) for name, spec in outputs.items()
                                   if spec["kind"] == "labels"},
                      maps_only=not label_files)
    try:
        result = {"outputs": outputs, "tables": doc.get("tables") or {}, "scalars": doc.get("scalars") or {},
                  "notes": doc.get("notes") or {}, "output_dir": str(folder)}
        case.imported = import_result(result, volume, action or session.pipeline or "batch", show=False)
        # the latest correction replaces its output as the segmentation to edit
        corrections = {}
        for path in files.get("corrected") or []:
            name = correction_output_name(path, label_files)
            spec = case.label_specs.get(name) or (btcv_segments() if case.maps_only else [])
            rel = os.path.relpath(path, session.dir)  # files() gives it under the batch folder
            corrections[name] = {"kind": "labels", "file": rel, "segments": spec}
        if corrections:
            done = import_result({"outputs": corrections, "output_dir": str(session.dir)}, volume, "corrected",
                                 show=False)
            case.corrected = dict(done.nodes)
        for name in label_files:
            if name in case.corrected:
                display = case.imported.nodes[name].GetDisplayNode()
                if display is not None:
                    display.SetVisibility(False)  # the correction is shown instead
                case.editable[name] = (case.corrected[name], str(Path(session.dir) / corrections[name]["file"]))
            else:
                case.editable[name] = (case.imported.nodes[name], str(folder / label_files[name]))
        for name, node in case.corrected.items():
            if name not in case.editable:
                case.editable[name] = (node, str(Path(session.dir) / corrections[name]["file"]))
        if not case.editable:
            maps = [name for name, spec in outputs.items() if spec["kind"] == "heatmap"]
            node = _empty_correction(scene, volume, case_id, maps)
            case.extra.append(node)
            case.editable[CORRECTION_NAME] = (node, None)
        editor = segment_editor_node(scene, create=True)
        if editor is not None:  # opening the Segment Editor edits this case's segmentation on its image
            editor.SetAndObserveSegmentationNode(case.first_segmentation())
            editor.SetAndObserveSourceVolumeNode(volume)
    except BaseException:
        remove_review_case(case)
        raise
    if show:
        show_review_case(case)
    return case


def show_review_case(case: ReviewCase) -> bool:
    """The case image as background, its first heatmap (else image output) as the foreground
    overlay, views fitted to the image. Needs the Slicer application (False without it)."""
    slicer = _slicer()
    if getattr(slicer, "app", None) is None:
        return False
    volumes = [node for node in case.imported.nodes.values() if node.IsA("vtkMRMLVolumeNode")]
    # the first heatmap, else the first other image output (nemesis-pca's feature map)
    overlay = next((node for node in volumes if node.GetAttribute("Pantheon.Kind") == "heatmap"),
                   volumes[0] if volumes else None)
    slicer.util.setSliceViewerLayers(background=case.volume, foreground=overlay,
                                     foregroundOpacity=OVERLAY_OPACITY if overlay is not None else None, fit=True)
    return True


def remove_review_case(case: Optional[ReviewCase]) -> int:
    """Take every node of ``case`` out of the scene (display, storage and subject hierarchy items
    too); returns how many nodes went."""
    if case is None or case.volume is None:
        return 0
    scene = case.volume.GetScene()
    if scene is None:  # the scene was closed: nothing of the case is left
        return 0
    count = remove_outputs(case.volume)
    for node in [*case.extra, case.volume]:
        if node is not None and node.GetScene() is not None:
            remove_node_and_helpers(scene, node)
            count += 1
    return count


# --------------------------------------------------------------------------- corrections
def _segments(node) -> List[Tuple[str, Optional[str]]]:
    """(name, SNOMED CT type code or None) of each segment of a segmentation node."""
    segmentation = node.GetSegmentation()
    out = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetSegment(segmentation.GetNthSegmentID(i))
        kind = terms.parse_terminology(segment_terminology(segment))["type"]
        out.append((segment.GetName(), kind[1] if kind else None))
    return out


def collect_corrections(case: ReviewCase, out_dir, edited=None) -> Tuple[Dict[str, Path], List[str]]:
    """The corrected label maps of ``case``, written into ``out_dir``: {output name: file}, and
    sentences about new segments. Each editable segmentation (``edited``, the one the Segment Editor
    edits, stands in for the first when it is not one of the case's) is exported on the case
    image's exact grid with the original output's label values, and kept only when it differs from
    the file it was loaded from (a drawn correction: when it is not empty)."""
    editable = dict(case.editable)
    known = [node for node, _baseline in editable.values()]
    if edited is not None and edited.GetScene() is not None and all(edited is not n for n in known):
        name = next(iter(editable), CORRECTION_NAME)
        editable[name] = (edited, editable.get(name, (None, None))[1])
    out_dir = Path(out_dir)
    written: Dict[str, Path] = {}
    notes: List[str] = []
    for n, (name, (node, baseline)) in enumerate(editable.items()):
        if node is None or node.GetScene() is None:
            continue
        segments = _segments(node)
        spec = case.label_specs.get(name) or (btcv_segments() if case.maps_only else [])
        values, added = correction_values(segments, spec, btcv=case.maps_only)
        path = export_segmentation(node, case.volume, out_dir / f"correction-{n}.nii.gz", label_values=values)
        new = read_volume(path)
        if baseline is not None:
            old = read_volume(baseline)
            if old.shape == new.shape and old.same_geometry(new, atol=1e-3) and np.array_equal(old.array, new.array):
                continue
        elif not np.any(new.array):
            continue
        written[name] = path
        notes.extend(added)
    return written, notes
