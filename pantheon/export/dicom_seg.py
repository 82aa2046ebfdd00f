"""DICOM SEG export of a label map computed on a DICOM series (and a reader used to check it).

:func:`write_dicom_seg` turns a :class:`~pantheon.results.LabelOutput` whose volume lies in the
exact geometry of a DICOM series (as :func:`pantheon.io.read_volume` reads that series) into a
DICOM Segmentation Storage object (BINARY) that references the series' instances one by one.
:func:`write_dicom_seg_side_output` is the same for a SEG written *beside* other outputs (the
batch): it never raises for a SEG problem and says in one sentence why no SEG was written.

Decisions (stated once here):

- **Slice matching.** Label slice ``k`` is matched to the source instance whose
  ImagePositionPatient lies at voxel (0, 0, k) of the series geometry: the instances are sorted by
  their position projected on the slice normal (SimpleITK's order) and each one must sit on its
  slice within ``max(1e-3 mm, 1 % of the slice spacing)``. File names and file order never count.
- **Projection images** (DX, CR, a panoramic X-ray: one image without ImagePositionPatient /
  ImageOrientationPatient, which is normal for them) get a 2D SEG: one frame per segment, aligned
  pixel for pixel with the image and referencing it by SOP Instance UID, without plane positions
  (what the standard and highdicom do for images without patient coordinates). Several such
  images in one series are refused (nothing says how they stack).
- **Geometry.** The label volume must have the series' shape and its voxel grid must coincide with
  the series' one within 1e-3 mm (origin, spacing and direction are checked separately so that the
  error names what differs); otherwise :class:`~pantheon.errors.InputError`.
- **Spacing.** PixelSpacing and SliceThickness come from the source images (SliceThickness is the
  measured slice spacing when the source leaves it out or empty). SpacingBetweenSlices is always
  the spacing measured between the ImagePositionPatient values (the slice spacing of the series
  geometry), never the source's SpacingBetweenSlices: GDCM-written MR series are known to say
  1 mm for slices 4 mm apart, and readers that trust it (dcmqi, pydicom-seg) then rebuild a
  striped volume.
- **Patient and study attributes.** They are copied from the source (highdicom). Type-2 ones the
  source lacks (de-identified series often drop PatientID, PatientBirthDate, PatientSex,
  AccessionNumber, StudyDate ...) are written empty, as the standard allows; ContentCreatorName
  (type 2) is written, empty unless ``content_creator`` is given. Only the source itself is never
  changed.
- **Segments.** One segment per label value present in the map (listed segments absent from the
  map are left out), numbered 1..N in increasing label value. Segment label = ``Segment.name``.
  Category, type, type modifier, anatomic region (+ modifier) = the entry of 3D Slicer's
  terminology lists for the segment's code (:func:`pantheon.anatomy.term_for`: e.g. Kidney +
  Right, Neoplasm under Morphologically Altered Structure); a segment without a code gets Slicer's
  default "Tissue"/"Tissue". A tooth also carries its own SNOMED CT code as Primary Anatomic
  Structure.
- **Unlisted values.** A value present in the map but missing from ``segments`` is *not* dropped
  (that would silently lose voxels) and not refused: it becomes a segment "Label N" with the generic
  "Tissue" entry and a grey colour, and a :class:`UserWarning` says so.
- **Colour.** RecommendedDisplayCIELabValue from the segment's sRGB colour (highdicom's
  ``CIELabColor.from_rgb``, D65).
- **Algorithm.** SegmentAlgorithmType AUTOMATIC, AlgorithmIdentification (family
  "Artificial Intelligence", name, version) on every segment.
- **Empty frames** (a slice with none of a segment) are omitted; a label map with no non-zero voxel
  is refused ("nothing to save").
- **Writing** goes to a temporary file in the target folder, replaced onto the target at the end,
  so a failed write leaves no file (and an existing target untouched).
- The source images of a CT/MR series must carry a single FrameOfReferenceUID (mandatory there);
  single-frame images only.
- **Messages** are one sentence saying what is missing or wrong, never an exception's own text
  (the exception stays chained for programs).

highdicom and pydicom are imported inside functions: importing :mod:`pantheon.export` stays cheap.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from .. import __version__
from ..anatomy import Term, term_for
from ..errors import InputError
from ..io.atomic import atomic_path
from ..results import LabelOutput, Segment

PathLike = Union[str, os.PathLike]

GEOMETRY_ATOL_MM = 1e-3
UNLISTED_COLOR = (0.5, 0.5, 0.5)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# Type-2 attributes that highdicom copies from the source image into the SEG's Patient and General
# Study modules; a SEG may carry them empty, a de-identified source often has none of them.
TYPE2_FROM_SOURCE = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                     "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
# Type-1 identifiers a SEG cannot be written without (it references the study, series and images).
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


_PREFIX = "Cannot export DICOM SEG: "


def _fail(reason: str) -> InputError:
    return InputError(_PREFIX + reason)


# --------------------------------------------------------------------------- source series
@dataclass
class _Source:
    series: object          # the series as pantheon.io.read_volume reads it
    slices: List[object]    # pydicom datasets without pixel data, one per slice k
    projection: bool        # one projection image (no patient coordinates)


def _source_files(source: Path) -> Tuple[List[str], Path]:
    """Files of the DICOM series that read_volume reads for ``source`` (a folder or one of its files)."""
    import SimpleITK as sitk

    if source.is_dir():
        folder = source
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if not series:
            raise _fail(f"{source} contains no DICOM series (a DICOM SEG can only be written for a label map "
                        "computed on a DICOM series).")
        files = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in series}
        best = max(series, key=lambda uid: len(files[uid]))  # the same rule as pantheon.io.read_volume
        return files[best], folder
    if source.is_file():
        import pydicom

        try:
            ds = pydicom.dcmread(str(source), stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not DICOM"
            raise _fail(f"{source} is not a DICOM file (a DICOM SEG can only be written for a label map "
                        "computed on a DICOM series).") from exc
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source.parent), uid))
        return files or [str(source)], source
    raise _fail(f"the source DICOM series {source} does not exist.")


def _read_source(source_dicom_dir: PathLike) -> _Source:
    """The series as read_volume reads it, with its instances in slice order (see the module doc)."""
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
            raise _fail(f"{Path(f).name} of the source series in {source} cannot be read as DICOM.") from exc
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise _fail(f"the images in {source} are multi-frame images, which are not supported.")
    for ds in datasets:
        for kw in REQUIRED_UIDS:
            if not str(ds.get(kw, "") or ""):
                raise _fail(f"{Path(ds.filename).name} of {source} has no {kw}, which a DICOM SEG must reference.")
    if len(datasets) != series.shape[0]:
        raise _fail(f"the series in {source} has {len(datasets)} files for {series.shape[0]} slices.")

    positioned = ["ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in datasets]
    if not any(positioned):
        if len(datasets) != 1:
            raise _fail(f"the {len(datasets)} images in {source} have no ImagePositionPatient, so nothing says "
                        "how they stack into a volume.")
        return _Source(series, datasets, projection=True)
    if not all(positioned):
        raise _fail(f"some images in {source} have no ImagePositionPatient or ImageOrientationPatient.")

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
            raise _fail(f"{Path(ds.filename).name} of {source} does not sit on a slice of the series "
                        "(or two files share one position).")
        if np.abs(np.array([float(x) for x in ds.ImageOrientationPatient]) - iop).max() > 1e-4:
            raise _fail(f"{Path(ds.filename).name} of {source} has another orientation than the rest of the series.")
        slices[k] = ds
    for_uids = {str(getattr(ds, "FrameOfReferenceUID", "") or "") for ds in slices}
    if "" in for_uids or len(for_uids) != 1:
        raise _fail(f"the images of {source} do not share one FrameOfReferenceUID (missing or inconsistent), "
                    "so a segmentation could not be placed on them.")
    return _Source(series, slices, projection=False)


def _series_in_slice_order(source_dicom_dir: PathLike):
    """(series Volume as read_volume reads it, pydicom datasets without pixel data, one per slice k)."""
    src = _read_source(source_dicom_dir)
    return src.series, src.slices


def _check_geometry(label_vol, series, source) -> None:
    """The label grid must be the series grid within GEOMETRY_ATOL_MM; name what differs."""
    if label_vol.components != 1:
        raise _fail(f"the label map has {label_vol.components} components, not one.")
    if label_vol.shape != series.shape:
        raise _fail(f"the label map's shape (K, J, I) {label_vol.shape} differs from the DICOM series' "
                    f"{series.shape} in {source}.")
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
        raise _fail(f"the label map is not in the geometry of the DICOM series in {source}: {'; '.join(problems)}.")


def _for_highdicom(src: _Source) -> List[object]:
    """In-memory copies of the source datasets for highdicom to copy from (the files are not touched):
    absent type-2 attributes present and empty; for CT/MR the pixel measures of :func:`_pixel_measures`.
    The latter matters: when the PixelSpacing it is given matches the source's, highdicom writes the
    source's pixel measures instead, SpacingBetweenSlices included."""
    measures = _pixel_measures(src)
    out = []
    for ds in src.slices:
        ds = copy.deepcopy(ds)
        for kw in TYPE2_FROM_SOURCE:
            if kw not in ds:
                setattr(ds, kw, None)  # present, zero length
        if measures is not None:
            m = measures[0]
            ds.PixelSpacing, ds.SliceThickness = m.PixelSpacing, m.SliceThickness
            if "SpacingBetweenSlices" in m:
                ds.SpacingBetweenSlices = m.SpacingBetweenSlices
            elif "SpacingBetweenSlices" in ds:
                del ds.SpacingBetweenSlices  # one slice: nothing to space
        out.append(ds)
    return out


def _pixel_measures(src: _Source):
    """Pixel Measures of a CT/MR SEG: PixelSpacing and SliceThickness of the source, the measured
    SpacingBetweenSlices (see the module doc); None for a projection image (highdicom decides)."""
    import highdicom as hd

    if src.projection:
        return None
    first = src.slices[0]
    spacing = first.get("PixelSpacing") or [src.series.spacing[1], src.series.spacing[0]]
    measured = round(float(src.series.spacing[2]), 6)  # 1 nm: below any tolerance, above float noise
    thickness = first.get("SliceThickness")
    thickness = measured if thickness in (None, "") else float(thickness)
    between = measured if len(src.slices) > 1 else None
    return hd.PixelMeasuresSequence(pixel_spacing=[float(s) for s in spacing], slice_thickness=thickness,
                                    spacing_between_slices=between)


def _complete_type2c(seg_ds, src: _Source) -> None:
    """What highdicom leaves out but the SEG IOD asks for in these cases (all checked by dciodvfy)."""
    if "ContentCreatorName" not in seg_ds:
        seg_ds.ContentCreatorName = None  # type 2: present, empty when nobody is named
    if src.projection and "PatientOrientation" not in seg_ds:
        # type 2C without plane orientation; the frames are the source's pixels, so its orientation holds
        seg_ds.PatientOrientation = src.slices[0].get("PatientOrientation") or None
    if str(seg_ds.get("PatientIdentityRemoved", "")).upper() == "YES" and \
            "DeidentificationMethod" not in seg_ds and "DeidentificationMethodCodeSequence" not in seg_ds:
        # 1C: the source says it was de-identified but not how; say that rather than drop the flag
        seg_ds.DeidentificationMethod = "Source de-identified; method not stated in the source"


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


def _description(number: int, seg: Segment, algorithm):
    """highdicom SegmentDescription with the Slicer terminology entry of ``seg`` (module doc)."""
    import highdicom as hd

    term: Term = term_for(seg.code)
    rgb = np.clip(np.asarray(seg.color, dtype=float)[:3], 0.0, 1.0) * 255.0
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=str(seg.name)[:64],
        segmented_property_category=_coded(term.category),
        segmented_property_type=_coded(term.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[_coded(term.region)] if term.region else None,
        primary_anatomic_structures=[_coded(term.structure)] if term.structure else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )
    # Modifiers sit inside the coded item they modify (PS3.3 C.8.20.2 / General Anatomy macro).
    if term.modifier:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [_coded(term.modifier)]
    if term.region and term.region_modifier:
        desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(term.region_modifier)]
    return desc


def _label_values(arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(integer label array, sorted non-zero values); refuses non-integer or negative labels."""
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise _fail("the label map holds non-integer values.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise _fail(f"a label map of type {arr.dtype} is not supported.")
    values = np.unique(arr)
    if values.size and values[0] < 0:
        raise _fail(f"the label map holds negative values ({int(values[0])}).")
    values = values[values != 0]
    if values.size == 0:
        raise _fail("the label map is empty (no labelled voxel), nothing to save.")
    return arr, values


# --------------------------------------------------------------------------- writer
def write_dicom_seg(label: LabelOutput, source_dicom_dir: PathLike, out_path: PathLike,
                    series_description: str = "Pantheon segmentation", algorithm_name: str = "Pantheon",
                    algorithm_version: str = __version__, manufacturer: str = "Pantheon",
                    content_creator: Optional[str] = None) -> Path:
    """Write ``label`` as a BINARY DICOM SEG referencing the series in ``source_dicom_dir``; returns the path.

    Raises :class:`~pantheon.errors.InputError` when the source is not a DICOM series a SEG can
    reference, when the label map is not in its geometry, or when the label map is empty. See the
    module docstring.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    arr, values = _label_values(np.asarray(label.volume.array))
    src = _read_source(source_dicom_dir)
    _check_geometry(label.volume, src.series, source_dicom_dir)
    segments = _segments_present(label, values)

    # Label-map style array: value = segment number (1..N, in increasing label value).
    lut = np.zeros(int(values.max()) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    lut[values] = np.arange(1, len(values) + 1)
    pixels = lut[arr]

    algorithm = hd.AlgorithmIdentificationSequence(
        name=str(algorithm_name), family=codes.cid7162.ArtificialIntelligence, version=str(algorithm_version))
    sources = _for_highdicom(src)
    first = sources[0]
    series_number = int(getattr(first, "SeriesNumber", None) or 0) + 1000
    try:
        descriptions = [_description(n, seg, algorithm) for n, seg in enumerate(segments, start=1)]
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
            pixel_measures=_pixel_measures(src),
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise _fail(f"highdicom could not build a segmentation object on the series in {source_dicom_dir} "
                    "(an attribute it needs is missing or invalid there).") from exc
    _complete_type2c(seg_ds, src)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pydicom.dcmwrite(tmp, seg_ds, enforce_file_format=True)
    return out


def write_dicom_seg_side_output(label: LabelOutput, source_dicom_dir: PathLike, out_path: PathLike,
                                log: Optional[Callable[[str], None]] = None, **kwargs) -> Optional[str]:
    """:func:`write_dicom_seg` for a SEG written beside other outputs: a SEG problem never raises.

    Returns None when the SEG was written, else one sentence saying that it was skipped and why
    ("organs.seg.dcm skipped: the images of ... do not share one FrameOfReferenceUID ..."); nothing
    is left at ``out_path`` then. An unexpected error (not a known SEG problem) is also turned into
    such a sentence; its type and text go to ``log`` (e.g. the batch case log) for whoever debugs it.
    KeyboardInterrupt and other BaseExceptions still propagate.
    """
    name = Path(out_path).name
    try:
        write_dicom_seg(label, source_dicom_dir, out_path, **kwargs)
        return None
    except InputError as exc:
        msg = str(exc).strip() or "The source series does not allow one."
        reason = msg[len(_PREFIX):] if msg.startswith(_PREFIX) else msg  # e.g. a reader's own sentence
        if reason[:2].istitle():  # "Cannot read ..." -> "cannot read ...", but "DICOM ..." stays
            reason = reason[0].lower() + reason[1:]
        return f"{name} skipped: {reason}"
    except Exception as exc:  # noqa: BLE001 - a side output must never cost the main outputs
        if log is not None:
            log(f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        return f"{name} skipped: an unexpected error occurred while writing it (details in the log)."


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
        raise InputError(f"Cannot read {seg_path} as a DICOM SEG.") from exc
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
