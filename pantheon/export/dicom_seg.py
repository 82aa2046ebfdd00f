"""DICOM SEG export of a label map computed on a DICOM series (and a reader used to check it).

:func:`write_dicom_seg` turns a :class:`~pantheon.results.LabelOutput` whose volume lies in the
exact geometry of a DICOM series (as :func:`pantheon.io.read_volume` reads that series) into a
DICOM Segmentation Storage object (BINARY) that references the series' instances one by one.

Decisions (stated once here):

- **Slice matching.** Label slice ``k`` is matched to the source instance whose
  ImagePositionPatient lies at voxel (0, 0, k) of the series geometry: the instances are sorted by
  their position projected on the slice normal (SimpleITK's order) and each one must sit on its
  slice within ``max(1e-3 mm, 1 % of the slice spacing)``. File names and file order never count.
- **Geometry.** The label volume must have the series' shape and its voxel grid must coincide with
  the series' one within 1e-3 mm (origin, spacing and direction are checked separately so that the
  error names what differs); otherwise :class:`~pantheon.errors.InputError`.
- **Segments.** One segment per label value present in the map (listed segments absent from the
  map are left out), numbered 1..N in increasing label value. Segment label = ``Segment.name``.
  SegmentedPropertyCategory = SCT 123037004 "Anatomical Structure"; SegmentedPropertyType = the
  segment's ``code`` (any coding scheme, used as given) or, when it has none, the generic
  SCT 85756007 "Tissue".
- **Unlisted values.** A value present in the map but missing from ``segments`` is *not* dropped
  (that would silently lose voxels) and not refused: it becomes a segment "Label N" with the generic
  "Tissue" type and a grey colour, and a :class:`UserWarning` says so.
- **Colour.** RecommendedDisplayCIELabValue from the segment's sRGB colour (highdicom's
  ``CIELabColor.from_rgb``, D65).
- **Algorithm.** SegmentAlgorithmType AUTOMATIC, AlgorithmIdentification (family
  "Artificial Intelligence", name, version) on every segment.
- **Empty frames** (a slice with none of a segment) are omitted; a label map with no non-zero voxel
  is refused ("nothing to save").
- **Writing** goes to a temporary file in the target folder, replaced onto the target at the end,
  so a failed write leaves no file (and an existing target untouched).
- The source images must carry a single FrameOfReferenceUID (mandatory for CT/MR); single-frame
  images only.

highdicom and pydicom are imported inside functions: importing :mod:`pantheon.export` stays cheap.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .. import __version__
from ..errors import InputError
from ..results import LabelOutput, Segment

PathLike = Union[str, os.PathLike]

GEOMETRY_ATOL_MM = 1e-3
CATEGORY_CODE = ("SCT", "123037004", "Anatomical Structure")
GENERIC_TYPE_CODE = ("SCT", "85756007", "Tissue")
UNLISTED_COLOR = (0.5, 0.5, 0.5)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


# --------------------------------------------------------------------------- source series
def _source_files(source: Path) -> Tuple[List[str], Path]:
    """Files of the DICOM series that read_volume reads for ``source`` (a folder or one of its files)."""
    import SimpleITK as sitk

    if source.is_dir():
        folder = source
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if not series:
            raise InputError(f"Cannot export DICOM SEG: {source} contains no DICOM series "
                             "(a DICOM SEG can only be written for a label map computed on a DICOM series).")
        files = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in series}
        best = max(series, key=lambda uid: len(files[uid]))  # the same rule as pantheon.io.read_volume
        return files[best], folder
    if source.is_file():
        import pydicom

        try:
            ds = pydicom.dcmread(str(source), stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not DICOM"
            raise InputError(f"Cannot export DICOM SEG: {source} is not a DICOM file "
                             "(a DICOM SEG can only be written for a label map computed on a DICOM series).") from exc
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source.parent), uid))
        return files or [str(source)], source
    raise InputError(f"Cannot export DICOM SEG: the source DICOM series {source} does not exist.")


def _series_in_slice_order(source_dicom_dir: PathLike):
    """(series Volume as read_volume reads it, pydicom datasets without pixel data, one per slice k)."""
    import pydicom

    from ..io import read_volume

    source = Path(source_dicom_dir)
    files, shown = _source_files(source)
    series = read_volume(shown)  # raises InputError for unreadable / irregular series
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"Cannot export DICOM SEG: {f} of the source series cannot be read ({exc}).") from exc
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise InputError(f"Cannot export DICOM SEG for {source}: multi-frame source images are not supported.")
    for ds in datasets:
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "SOPInstanceUID"):
            if kw not in ds:
                raise InputError(f"Cannot export DICOM SEG: {ds.filename} of {source} has no {kw}.")
    if len(datasets) != series.shape[0]:
        raise InputError(f"Cannot export DICOM SEG: the series in {source} has {len(datasets)} files "
                         f"for {series.shape[0]} slices.")

    # SimpleITK's order: increasing position along the slice normal (row x column cosines).
    iop = np.array([float(x) for x in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipps = np.array([[float(x) for x in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(ipps @ normal, kind="stable")
    tol = max(GEOMETRY_ATOL_MM, 0.01 * series.spacing[2])
    slices: List[Optional[object]] = [None] * series.shape[0]
    for n in order:
        ds, ipp = datasets[n], ipps[n]
        k = int(round(float(series.world_to_ijk(ipp)[0, 2])))
        off = np.inf if not 0 <= k < series.shape[0] else np.abs(series.ijk_to_world([0, 0, k])[0] - ipp).max()
        if off > tol or slices[k] is not None:
            raise InputError(f"Cannot export DICOM SEG: {Path(ds.filename).name} of {source} does not sit on "
                             "a slice of the series (or two files share one position).")
        if np.abs(np.array([float(x) for x in ds.ImageOrientationPatient]) - iop).max() > 1e-4:
            raise InputError(f"Cannot export DICOM SEG: {Path(ds.filename).name} of {source} has another orientation.")
        slices[k] = ds
    for_uids = {str(getattr(ds, "FrameOfReferenceUID", "") or "") for ds in slices}
    if "" in for_uids or len(for_uids) != 1:
        raise InputError(f"Cannot export DICOM SEG: the images of {source} do not share one FrameOfReferenceUID "
                         "(missing or inconsistent), so a segmentation could not be placed on them.")
    return series, slices


def _check_geometry(label_vol, series, source) -> None:
    """The label grid must be the series grid within GEOMETRY_ATOL_MM; name what differs."""
    if label_vol.components != 1:
        raise InputError(f"Cannot export DICOM SEG: the label map has {label_vol.components} components, not one.")
    if label_vol.shape != series.shape:
        raise InputError(f"Cannot export DICOM SEG: the label map's shape (K, J, I) {label_vol.shape} differs from "
                         f"the DICOM series' {series.shape} in {source}.")
    problems = []
    d_origin = float(np.linalg.norm(np.subtract(label_vol.origin, series.origin)))
    if d_origin > GEOMETRY_ATOL_MM:
        problems.append(f"origin differs by {d_origin:.4g} mm")
    extent = np.array(series.size_ijk, dtype=float) - 1.0  # index span along i, j, k
    d_spacing = float(np.max(np.abs(np.subtract(label_vol.spacing, series.spacing)) * np.maximum(extent, 1.0)))
    if d_spacing > GEOMETRY_ATOL_MM:
        problems.append(f"spacing differs ({tuple(round(s, 6) for s in label_vol.spacing)} vs "
                        f"{tuple(round(s, 6) for s in series.spacing)} mm)")
    span = np.diag(np.array(series.spacing) * np.maximum(extent, 1.0))
    d_direction = float(np.max(np.linalg.norm((label_vol.direction - series.direction) @ span, axis=0)))
    if d_direction > GEOMETRY_ATOL_MM:
        problems.append(f"direction differs (up to {d_direction:.4g} mm at the far edge)")
    if problems:
        raise InputError(f"Cannot export DICOM SEG: the label map is not in the geometry of the DICOM series in "
                         f"{source}: {'; '.join(problems)}.")


# --------------------------------------------------------------------------- segments
def _coded(code):
    import highdicom as hd

    scheme, value, meaning = code
    return hd.sr.CodedConcept(value=str(value), scheme_designator=str(scheme), meaning=str(meaning))


def _segments_present(label: LabelOutput, values: np.ndarray) -> List[Segment]:
    by_value: Dict[int, Segment] = {}
    for s in label.segments:
        by_value.setdefault(int(s.value), s)
    present, unlisted = [], []
    for v in values:
        v = int(v)
        if v in by_value:
            present.append(by_value[v])
        else:
            unlisted.append(v)
            present.append(Segment(v, f"Label {v}", UNLISTED_COLOR, None))
    if unlisted:
        warnings.warn(f"Label values {unlisted} are not among the listed segments; they are saved as segments "
                      f"named 'Label N' with the generic type 'Tissue'.", stacklevel=3)
    return present


def _label_values(arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(integer label array, sorted non-zero values); refuses non-integer or negative labels."""
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError("Cannot export DICOM SEG: the label map holds non-integer values.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise InputError(f"Cannot export DICOM SEG: a label map of type {arr.dtype} is not supported.")
    values = np.unique(arr)
    if values.size and values[0] < 0:
        raise InputError(f"Cannot export DICOM SEG: the label map holds negative values ({int(values[0])}).")
    values = values[values != 0]
    if values.size == 0:
        raise InputError("Cannot export DICOM SEG: the label map is empty (no labelled voxel), nothing to save.")
    return arr, values


# --------------------------------------------------------------------------- writer
def write_dicom_seg(label: LabelOutput, source_dicom_dir: PathLike, out_path: PathLike,
                    series_description: str = "Pantheon segmentation", algorithm_name: str = "Pantheon",
                    algorithm_version: str = __version__, manufacturer: str = "Pantheon",
                    content_creator: Optional[str] = None) -> Path:
    """Write ``label`` as a BINARY DICOM SEG referencing the series in ``source_dicom_dir``; returns the path.

    Raises :class:`~pantheon.errors.InputError` when the source is not a DICOM series, when the
    label map is not in its geometry, or when the label map is empty. See the module docstring.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    arr, values = _label_values(np.asarray(label.volume.array))
    series, sources = _series_in_slice_order(source_dicom_dir)
    _check_geometry(label.volume, series, source_dicom_dir)
    segments = _segments_present(label, values)

    # Label-map style array: value = segment number (1..N, in increasing label value).
    lut = np.zeros(int(values.max()) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    lut[values] = np.arange(1, len(values) + 1)
    pixels = lut[arr]

    algorithm = hd.AlgorithmIdentificationSequence(
        name=str(algorithm_name), family=codes.cid7162.ArtificialIntelligence, version=str(algorithm_version))
    descriptions = []
    for number, seg in enumerate(segments, start=1):
        rgb = np.clip(np.asarray(seg.color, dtype=float)[:3], 0.0, 1.0) * 255.0
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(seg.name)[:64],
            segmented_property_category=_coded(CATEGORY_CODE),
            segmented_property_type=_coded(seg.code if seg.code else GENERIC_TYPE_CODE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        ))

    first = sources[0]
    series_number = int(getattr(first, "SeriesNumber", None) or 0) + 1000
    try:
        seg_ds = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=str(manufacturer),
            manufacturer_model_name=str(algorithm_name),
            software_versions=str(algorithm_version),
            device_serial_number="0",
            series_description=str(series_description)[:64],
            content_creator_name=content_creator,
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"Cannot export DICOM SEG for {source_dicom_dir}: {exc}") from exc

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent))
    os.close(fd)
    try:
        pydicom.dcmwrite(tmp, seg_ds, enforce_file_format=True)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out


# --------------------------------------------------------------------------- reader (checks)
def read_dicom_seg_as_label(seg_path: PathLike, reference_dicom_dir: PathLike
                            ) -> Tuple[np.ndarray, Dict[int, Tuple[str, Optional[Tuple[str, str, str]]]]]:
    """Read a DICOM SEG back onto its reference series.

    Returns ``(array, segments)``: ``array[k, j, i]`` holds the segment number of each voxel
    (0 = none) in the reference series' (k, j, i) order (as :func:`pantheon.io.read_volume` reads it),
    frames mapped to the source instances by SOP Instance UID; ``segments`` maps each segment number
    to ``(segment label, (scheme, code value, meaning) of its SegmentedPropertyType)``.
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(seg_path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"Cannot read {seg_path} as a DICOM SEG ({exc}).") from exc
    _, sources = _series_in_slice_order(reference_dicom_dir)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False,
        assert_missing_frames_are_empty=True)
    segments = {}
    for item in seg.SegmentSequence:
        t = item.SegmentedPropertyTypeCodeSequence[0]
        segments[int(item.SegmentNumber)] = (str(item.SegmentLabel),
                                             (str(t.CodingSchemeDesignator), str(t.CodeValue), str(t.CodeMeaning)))
    return np.asarray(arr), segments
