"""Reading and writing volumes, dispatching on the file extension.

- NIfTI (.nii, .nii.gz): nibabel, with the geometry ITK and 3D Slicer give the file (see
  :func:`pantheon.io.convert.nifti_itk_affine`: ITK's choice between sform and qform, spacing
  from pixdim), and a warning when sform and qform disagree by more than a quarter voxel.
- NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), PNG/JPEG/BMP/TIFF: SimpleITK, with the image IO
  forced by the extension so a mislabelled file fails clearly instead of being guessed.
- DICOM: a folder (or one .dcm file of it) is read as a series with SimpleITK's ImageSeriesReader;
  one multi-frame file (enhanced CT/MR: many frames in one file) is the 3D volume of its frames,
  placed from the per-frame positions. Duplicate instances, several images at one position and
  uneven spacing are refused, each with its own sentence.
- 2D images become single-slice volumes (K = 1); they carry no geometry, so spacing 1 / identity.
  (A multi-page TIFF reads as K pages; truncated JPEG/BMP files, which ITK only warns about,
  are caught with Pillow.)

**Size limit.** ``max_pixels`` (default :data:`~pantheon.io.validate.DEFAULT_MAX_PIXELS` voxels,
:data:`~pantheon.io.validate.DEFAULT_MAX_PIXELS_2D` for PNG/JPEG/BMP/TIFF; 0 = none) is checked
from the header, before any pixel is decoded: a 780 KB PNG that claims 40000 x 20000 pixels is
refused in milliseconds instead of decompressing to gigabytes.

**Metadata.** ``Volume.metadata`` gets ``format`` and, where the file says so, the DICOM
``modality`` / ``sop_class_uid`` / ``photometric``, and label ``segments`` ({value: name}) from a
.seg.nrrd header or a Slicer colour table next to the file (``<name>_ColorTable.ctbl``).

**Library noise.** ITK warnings and GDCM / libjpeg messages, which C++ prints straight onto the
process's stderr, are kept off it while a file is read (:func:`quiet_native_output`); what they
would have warned about is checked here and said in one sentence when it matters.

Every failure to read raises :class:`InputError` naming the file. Writes are atomic: the file is
written in a temporary folder next to the target and moved into place with ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from ..errors import InputError
from . import convert
from .validate import check_pixel_count
from .volume import Volume

PathLike = Union[str, os.PathLike]

# extension -> (format name, SimpleITK ImageIO or None for nibabel / DICOM)
_FORMATS = {
    ".nii": ("NIfTI", None),
    ".nii.gz": ("NIfTI", None),
    ".nrrd": ("NRRD", "NrrdImageIO"),
    ".nhdr": ("NRRD", "NrrdImageIO"),
    ".mha": ("MetaImage", "MetaImageIO"),
    ".mhd": ("MetaImage", "MetaImageIO"),
    ".png": ("PNG", "PNGImageIO"),
    ".jpg": ("JPEG", "JPEGImageIO"),
    ".jpeg": ("JPEG", "JPEGImageIO"),
    ".bmp": ("BMP", "BMPImageIO"),
    ".tif": ("TIFF", "TIFFImageIO"),
    ".tiff": ("TIFF", "TIFFImageIO"),
    ".dcm": ("DICOM", "GDCMImageIO"),
}
SUPPORTED_EXTENSIONS = tuple(_FORMATS)
# Formats without geometry: written as one slice; read with spacing 1, origin 0, identity.
_IMAGE_2D = {"PNG", "JPEG", "BMP", "TIFF"}
_WRITABLE_2D_DTYPES = {"PNG": ("uint8", "uint16"), "JPEG": ("uint8",), "BMP": ("uint8",),
                       "TIFF": ("uint8", "uint16", "float32")}


def file_extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _reason(exc: BaseException) -> str:
    """The most useful part of a library error (SimpleITK's are long and multi-line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    itk = [ln for ln in lines if "ITK ERROR" in ln or "itk::ERROR" in ln]
    if itk:  # "ITK ERROR: NrrdImageIO(0x55...): Read: ..." -> "NrrdImageIO: Read: ..."
        text = re.sub(r"^.*?ERROR:\s*", "", itk[-1])
        text = re.sub(r"\(0x[0-9a-fA-F]+\)", "", text)
    else:
        text = " ".join(lines) or type(exc).__name__
    text = text.rstrip(".:")
    return text if len(text) <= 200 else text[:197] + "..."


def _corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(f"Cannot read {path}: the file is truncated, corrupted or not a valid image ({_reason(exc)}).")


# --------------------------------------------------------------------------- native output
_NATIVE_LOCK = threading.RLock()
# Lines the C++ libraries print that say nothing a user can act on (what matters is checked here).
_NATIVE_NOISE = re.compile(r"(WARNING: In .*(itk|ITK|gdcm|GDCM)|^\s*$|ImageSeriesReader|GDCMImageIO|NiftiImageIO|"
                           r"ImageIO \(0x|JPEG|Premature end|Corrupt JPEG|SOS parameters|data precision|"
                           r"gdcm::|^(Warning|Error|Debug): In .*gdcm|Huffman|Unknown VR|Output Window|^\s*\(0x)")


@contextlib.contextmanager
def quiet_native_output():
    """Keep ITK warnings and GDCM/libjpeg messages off stderr while the body runs.

    ITK's own warnings are switched off (``SetGlobalWarningDisplay(False)``); GDCM's codecs print
    with C ``fprintf``, which no Python setting reaches, so file descriptor 2 is pointed at a
    temporary file for the duration. Whatever else was written there meanwhile (another thread,
    Python's own stderr) is written back afterwards; only the library noise is dropped.
    """
    import SimpleITK as sitk

    with _NATIVE_LOCK:
        was = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        saved = capture = None
        try:
            try:
                sys.stderr.flush()
            except Exception:
                pass
            try:
                saved = os.dup(2)
                capture = tempfile.TemporaryFile()
                os.dup2(capture.fileno(), 2)
            except OSError:  # no usable fd 2 (e.g. a GUI process on Windows): nothing to redirect
                if saved is not None:
                    os.close(saved)
                if capture is not None:
                    capture.close()
                saved = None
            yield
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(was)
            if saved is not None:
                try:
                    sys.stderr.flush()
                except Exception:
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                text = capture.read().decode("utf-8", "replace")
                capture.close()
                keep = [ln for ln in text.splitlines() if not _NATIVE_NOISE.search(ln)]
                if keep:
                    try:
                        sys.stderr.write("\n".join(keep) + "\n")
                    except Exception:
                        pass


# --------------------------------------------------------------------------- reading
def read_volume(path: PathLike, grayscale: bool = False, max_pixels: Optional[int] = None) -> Volume:
    """Read an image file or a DICOM folder as a :class:`Volume` (LPS geometry).

    ``grayscale=True`` turns colour images (RGB/RGBA) into one float32 luminance component
    (ITU-R BT.601 weights, alpha dropped); otherwise colour is kept as components.
    ``max_pixels`` refuses, from the header and before decoding, an image with more pixels
    (voxels): ``None`` = the default for its kind (see :mod:`pantheon.io.validate`), 0 = no limit.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"Cannot read {p}: no such file or folder.")
    if p.is_dir():
        vol = _read_dicom_folder(p, max_pixels)
    else:
        ext = file_extension(p)
        if ext not in _FORMATS:
            raise InputError(f"Cannot read {p}: unsupported file type '{ext or p.name}' "
                             f"(supported: {', '.join(SUPPORTED_EXTENSIONS)} or a DICOM folder).")
        if p.stat().st_size == 0:
            raise InputError(f"Cannot read {p}: the file is empty.")
        fmt, io_name = _FORMATS[ext]
        if fmt == "NIfTI":
            vol = _read_nifti(p, max_pixels)
        elif fmt == "DICOM":
            vol = _read_dicom_file(p, max_pixels)
        else:
            vol = _read_sitk(p, io_name, fmt, max_pixels)
        vol.metadata.setdefault("format", fmt)
        if fmt in ("NIfTI", "NRRD", "MetaImage"):
            names = _colour_table_names(p)
            if names and "segments" not in vol.metadata:
                vol.metadata["segments"] = names
    return _to_grayscale(vol) if grayscale else vol


def _read_nifti(p: Path, max_pixels=None) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(p), mmap=False)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"Cannot read {p}: it is not a NIfTI image.")
        shape = tuple(int(x) for x in img.shape)
        spatial = (list(shape[:3]) + [1, 1, 1])[:3]
        comps = shape[4] if len(shape) == 5 else 1
        check_pixel_count(spatial, max_pixels, f"Cannot read {p}: the image", comps)
        return Volume.from_nibabel(img, name=str(p))  # reads the data: truncation shows here
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error...)
        raise _corrupt(p, exc) from exc


def _read_sitk(p: Path, io_name: str, fmt: str = "", max_pixels=None) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    try:
        with quiet_native_output():
            reader.SetImageIO(io_name)
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _corrupt(p, exc) from exc
    size = [int(x) for x in reader.GetSize()]
    check_pixel_count(size + [1] if len(size) == 2 else size, max_pixels, f"Cannot read {p}: the image",
                      reader.GetNumberOfComponents(), two_d=True if fmt in _IMAGE_2D else None)
    meta = _nrrd_segments(reader, p) if io_name == "NrrdImageIO" else {}
    if meta.get("layers", 1) > 1:  # Slicer stores overlapping segments as layers (a "list" axis)
        raise InputError(f"Cannot read {p}: it is a segmentation whose segments overlap, stored as "
                         f"{meta['layers']} layers; Pantheon needs one label per voxel (a single-layer "
                         "segmentation, or a label map exported from it).")
    try:
        with quiet_native_output():
            img = reader.Execute()
    except RuntimeError as exc:
        raise _corrupt(p, exc) from exc
    if io_name in ("JPEGImageIO", "BMPImageIO"):
        _check_not_truncated(p)
    vol = Volume.from_sitk(img, name=str(p))
    if meta.get("segments"):
        vol.metadata["segments"] = meta["segments"]
        vol.metadata["segment_codes"] = meta.get("codes", {})
    return vol


def _nrrd_segments(reader, p: Path) -> dict:
    """{value: name} (and {value: [codes]}) of a Slicer .seg.nrrd, from its SegmentN_* header fields."""
    keys = set(reader.GetMetaDataKeys())
    names: Dict[int, str] = {}
    codes: Dict[int, List[str]] = {}
    layers = set()
    n = 0
    while f"Segment{n}_Name" in keys or f"Segment{n}_ID" in keys:
        pre = f"Segment{n}_"
        name = reader.GetMetaData(pre + "Name") if pre + "Name" in keys else reader.GetMetaData(pre + "ID")
        try:
            value = int(float(reader.GetMetaData(pre + "LabelValue"))) if pre + "LabelValue" in keys else n + 1
        except ValueError:
            value = n + 1
        layers.add(reader.GetMetaData(pre + "Layer").strip() if pre + "Layer" in keys else "0")
        names[value] = name.strip()
        if pre + "Tags" in keys:  # TerminologyEntry:...~SCT^10200004^Liver~... -> ["SCT^10200004"]
            codes[value] = re.findall(r"([A-Za-z0-9]+)\^([^\^~|]+)\^", reader.GetMetaData(pre + "Tags"))
        n += 1
    return {"segments": names, "codes": codes, "layers": max(1, len(layers))} if names else {}


def _colour_table_names(p: Path) -> Dict[int, str]:
    """{value: name} from a Slicer colour table next to a label map: ``<name>_ColorTable.ctbl`` or
    ``<name>.ctbl`` (lines ``value name R G B A``; Slicer writes spaces in names as underscores)."""
    stem = p.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for cand in (p.with_name(stem + "_ColorTable.ctbl"), p.with_name(stem + ".ctbl")):
        if not cand.is_file():
            continue
        names: Dict[int, str] = {}
        try:
            for line in cand.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) < 2 or line.lstrip().startswith("#"):
                    continue
                try:
                    value = int(parts[0])
                except ValueError:
                    continue
                if value != 0:
                    names[value] = parts[1].replace("_", " ")
        except OSError:
            continue
        return names
    return {}


def _check_not_truncated(p: Path) -> None:
    """ITK only *warns* on truncated JPEG/BMP files (and returns grey); Pillow notices."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.load()
    except OSError as exc:
        if "truncated" in str(exc):
            raise _corrupt(p, exc) from exc
    except Exception:  # anything else Pillow dislikes, ITK has already read successfully
        pass


# --------------------------------------------------------------------------- DICOM
def _read_dicom_file(p: Path, max_pixels=None) -> Volume:
    """A single .dcm file stands for the whole series it belongs to (a multi-frame file for itself)."""
    import SimpleITK as sitk

    try:
        with quiet_native_output():
            reader = sitk.ImageFileReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
        series_uid = reader.GetMetaData("0020|000e").strip(" \x00") if reader.HasMetaDataKey("0020|000e") else ""
        frames = int(reader.GetMetaData("0028|0008").strip(" \x00") or 1) if reader.HasMetaDataKey("0028|0008") else 1
    except RuntimeError as exc:
        raise _corrupt(p, exc) from exc
    except ValueError:
        frames = 1
    if frames > 1:
        return _read_dicom_files([str(p)], p, max_pixels)
    files = []
    if series_uid:
        with quiet_native_output():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p.parent), series_uid))
    if len(files) > 1:
        with quiet_native_output():
            all_series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p.parent))
            listed = [f for uid in all_series
                      for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p.parent), uid)]
        _refuse_unreadable_images(p.parent, listed)
    return _read_dicom_files(files or [str(p)], p, max_pixels)


def _read_dicom_folder(folder: Path, max_pixels=None) -> Volume:
    """Read the DICOM series of a folder; with several series, the one with most files."""
    import SimpleITK as sitk

    with quiet_native_output():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        files = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in series}
    _refuse_unreadable_images(folder, [f for fs in files.values() for f in fs])
    if not series:
        raise InputError(f"Cannot read {folder}: the folder contains no readable DICOM series.")
    best = max(series, key=lambda uid: len(files[uid]))
    if len(series) > 1:
        others = ", ".join(f"{uid} ({len(files[uid])} files)" for uid in series if uid != best)
        warnings.warn(f"{folder} holds {len(series)} DICOM series; reading {best} ({len(files[best])} files), "
                      f"the one with most files, and ignoring {others}.", stacklevel=3)
    return _read_dicom_files(files[best], folder, max_pixels)


def _refuse_unreadable_images(folder: Path, listed) -> None:
    """GDCM silently leaves out DICOM files it cannot parse (e.g. truncated); a series would lose a slice.

    Files outside every series that carry the DICOM magic and a PixelData tag are images that
    failed to parse; non-image objects (DICOMDIR, reports) have no PixelData and are left alone.
    """
    known = {os.path.realpath(f) for f in listed}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or os.path.realpath(f) in known:
            continue
        try:
            with open(f, "rb") as fh:
                if fh.read(132)[128:132] != b"DICM":
                    continue
                has_pixels = b"\xe0\x7f\x10\x00" in fh.read()  # tag (7FE0,0010), little endian
        except OSError:
            continue
        if has_pixels:
            raise InputError(f"Cannot read the DICOM series in {folder}: {f.name} is truncated or corrupted "
                             "(remove it or export the series again).")


_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "Modality", "ImagePositionPatient", "ImageOrientationPatient",
                "NumberOfFrames", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"]


def _dicom_headers(files) -> List[Optional[object]]:
    """pydicom datasets (no pixel data) of ``files``; None for a file pydicom cannot parse (GDCM could)."""
    try:
        import pydicom
    except ImportError:  # pydicom comes with highdicom; without it the extra checks are skipped
        return [None] * len(files)
    out = []
    for f in files:
        try:
            out.append(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_HEADER_TAGS))
        except Exception:
            out.append(None)
    return out


def _dicom_metadata(ds) -> dict:
    meta = {"format": "DICOM"}
    if ds is None:
        return meta
    for key, attr in (("modality", "Modality"), ("sop_class_uid", "SOPClassUID"),
                      ("photometric", "PhotometricInterpretation")):
        value = getattr(ds, attr, None)
        if value not in (None, ""):
            meta[key] = str(value).strip()
    return meta


def _pixel_count(ds) -> Optional[int]:
    try:
        return int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None


def _read_dicom_files(files, shown: Path, max_pixels=None) -> Volume:
    import SimpleITK as sitk

    headers = _dicom_headers(files)
    counts = [_pixel_count(ds) for ds in headers]
    if all(c is not None for c in counts) and headers and headers[0] is not None:
        ds0 = headers[0]
        frames = sum(int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in headers)
        check_pixel_count((int(ds0.Columns), int(ds0.Rows), frames), max_pixels,
                          f"Cannot read the DICOM series in {shown}: the image",
                          int(getattr(ds0, "SamplesPerPixel", 1) or 1))
    multi = [f for f, ds in zip(files, headers) if ds is not None and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1]
    if multi and len(files) > 1:
        raise InputError(f"Cannot read the DICOM series in {shown}: it holds {len(multi)} multi-frame files "
                         f"among {len(files)}; give one multi-frame file (its own 3D volume) instead of the folder.")
    if len(files) > 1:
        _refuse_duplicates(files, headers, shown)
    try:
        with quiet_native_output():
            if multi:
                reader = sitk.ImageFileReader()
                reader.SetImageIO("GDCMImageIO")
                reader.SetFileName(files[0])
            else:
                reader = sitk.ImageSeriesReader()
                reader.SetImageIO("GDCMImageIO")
                reader.SetFileNames(files)
                reader.MetaDataDictionaryArrayUpdateOn()
            img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Cannot read the DICOM series in {shown}: a file is truncated, corrupted "
                         f"or inconsistent with the others ({_reason(exc)}).") from exc
    if multi:
        vol = _multiframe_volume(img, headers[0], shown)
    else:
        vol = Volume.from_sitk(img, name=str(shown))
        if 1 < len(files) == vol.shape[0]:  # one slice per file
            _check_slice_positions(vol, reader, files, shown)
    vol.metadata.update(_dicom_metadata(headers[0] if headers else None))
    return vol


def _position(ds) -> Optional[np.ndarray]:
    try:
        ipp = np.array([float(x) for x in ds.ImagePositionPatient], dtype=np.float64)
        return ipp if ipp.shape == (3,) else None
    except (AttributeError, TypeError, ValueError):
        return None


def _normal(ds) -> Optional[np.ndarray]:
    try:
        iop = np.array([float(x) for x in ds.ImageOrientationPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if iop.shape != (6,):
        return None
    n = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 1e-6 else None


def _refuse_duplicates(files, headers, shown: Path) -> None:
    """Two files of one image (same SOP Instance UID), or two images at one position: say so, rather
    than "unevenly spaced" (which is what the slice check would see)."""
    seen: Dict[str, str] = {}
    for f, ds in zip(files, headers):
        uid = str(getattr(ds, "SOPInstanceUID", "") or "") if ds is not None else ""
        if uid:
            if uid in seen:
                raise InputError(f"Cannot read the DICOM series in {shown}: it holds duplicate instances "
                                 f"({Path(seen[uid]).name} and {Path(f).name} are the same image, SOP Instance UID "
                                 f"{uid}); remove the copies and try again.")
            seen[uid] = f
    normal = next((n for n in (_normal(ds) for ds in headers if ds is not None) if n is not None), None)
    placed = [(f, _position(ds)) for f, ds in zip(files, headers) if ds is not None]
    placed = [(f, x) for f, x in placed if x is not None]
    if normal is None or len(placed) < 2:
        return
    along = sorted(((float(x @ normal), f) for f, x in placed))
    steps = np.diff([a for a, _ in along])
    typical = float(np.median(np.abs(steps))) if len(steps) else 0.0
    tol = max(1e-3, 0.01 * typical)
    same = [(along[n][1], along[n + 1][1]) for n in range(len(steps)) if abs(steps[n]) <= tol]
    if same:
        a, b = same[0]
        distinct = len(along) - len(same)
        raise InputError(f"Cannot read the DICOM series in {shown}: {len(files)} images lie at only {distinct} "
                         f"distinct positions ({Path(a).name} and {Path(b).name} are at the same place): the series "
                         "holds duplicate slices, or several acquisitions, echoes or time points (4D); keep one image "
                         "per position and try again.")


def _frame_positions(ds) -> Optional[np.ndarray]:
    """(F, 3) ImagePositionPatient of each frame of an enhanced multi-frame object, or None."""
    seq = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if not seq:
        return None
    out = []
    for item in seq:
        pps = getattr(item, "PlanePositionSequence", None)
        if not pps:
            return None
        x = _position(pps[0])
        if x is None:
            return None
        out.append(x)
    return np.array(out)


def _functional_group_value(ds, sequence: str, attr: str):
    """A value from the shared functional groups, else from the first frame's; floats, or None."""
    for groups in (getattr(ds, "SharedFunctionalGroupsSequence", None),
                   (getattr(ds, "PerFrameFunctionalGroupsSequence", None) or [None])[:1]):
        for item in groups or []:
            seq = getattr(item, sequence, None) if item is not None else None
            if seq:
                try:
                    return [float(x) for x in getattr(seq[0], attr)]
                except (AttributeError, TypeError, ValueError):
                    pass
    return None


def _per_frame_values(ds, sequence: str, attr: str) -> list:
    out = []
    for item in getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []:
        seq = getattr(item, sequence, None)
        if seq:
            try:
                out.append([float(x) for x in getattr(seq[0], attr)])
            except (AttributeError, TypeError, ValueError):
                pass
    return out


def _frame_rescales(ds) -> set:
    seen = set()
    for item in getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []:
        pvt = getattr(item, "PixelValueTransformationSequence", None)
        if pvt:
            seen.add((str(getattr(pvt[0], "RescaleSlope", "1")), str(getattr(pvt[0], "RescaleIntercept", "0"))))
    return seen


def _multiframe_volume(img, ds, shown: Path) -> Volume:
    """The 3D volume of a multi-frame file: in-plane geometry from GDCM, the frame axis from the
    per-frame positions (sorted along the slice normal, evenly spaced, one frame per position)."""
    import SimpleITK as sitk

    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1) if ds is not None else img.GetSize()[-1]
    if img.GetDimension() != 3:
        raise InputError(f"Cannot read {shown}: a multi-frame DICOM of dimension {img.GetDimension()} is not "
                         "supported.")
    positions = _frame_positions(ds) if ds is not None else None
    if positions is None or len(positions) != n_frames:
        raise InputError(f"Cannot read {shown}: it is a multi-frame DICOM with {n_frames} frames but no position per "
                         "frame (a cine loop or a stack of separate pictures, not one 3D volume).")
    orientations = {tuple(np.round(o, 4)) for o in _per_frame_values(ds, "PlaneOrientationSequence",
                                                                       "ImageOrientationPatient")}
    if len(orientations) > 1:
        raise InputError(f"Cannot read {shown}: its frames lie in {len(orientations)} different orientations "
                         "(several stacks in one file); Pantheon needs one 3D volume, so export a single stack.")
    if len(_frame_rescales(ds)) > 1:
        raise InputError(f"Cannot read {shown}: its frames have different rescale slopes or intercepts, which "
                         "Pantheon does not apply frame by frame; convert it to a single-frame series first.")
    arr = sitk.GetArrayFromImage(img)  # (F, J, I[, C]) in stored frame order
    comps = int(img.GetNumberOfComponentsPerPixel())
    if comps == 1 and arr.ndim == 4:
        arr = arr[..., 0]
    # In-plane geometry from the functional groups (GDCM gives up on it, to spacing 1, when the
    # frames are not stored in position order); GDCM's own as a fallback.
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    row, col = d[:, 0], d[:, 1]
    pixel_spacing = img.GetSpacing()[:2]
    iop, ps = _functional_group_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient"), \
        _functional_group_value(ds, "PixelMeasuresSequence", "PixelSpacing")
    if iop is not None and len(iop) == 6:
        row, col = np.array(iop[:3], np.float64), np.array(iop[3:], np.float64)
        row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if ps is not None and len(ps) == 2 and min(ps) > 0:
        pixel_spacing = (float(ps[1]), float(ps[0]))  # PixelSpacing is (between rows, between columns)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    sorted_along = along[order]
    steps = np.diff(sorted_along)
    typical = float(np.median(steps)) if len(steps) else 1.0
    tol = max(1e-3, 0.01 * abs(typical))
    if len(steps) and np.any(steps <= tol):
        distinct = 1 + int(np.sum(steps > tol))
        raise InputError(f"Cannot read {shown}: its {n_frames} frames lie at only {distinct} distinct positions "
                         "(several stacks, time points or echoes in one file, i.e. 4D); Pantheon needs one 3D volume, "
                         "so export a single stack.")
    first = positions[order[0]]
    expected = first[None] + np.outer(np.arange(n_frames) * typical, normal)
    off = np.linalg.norm(positions[order] - expected, axis=1)
    if len(steps) and float(off.max()) > max(1e-3, 0.01 * typical):
        worst = int(np.argmax(off))
        raise InputError(f"Cannot read {shown}: its frames are not evenly spaced along one line (frame "
                         f"{int(order[worst]) + 1} is {off[worst]:.2f} mm off; missing frames, variable spacing or "
                         "gantry tilt), so it would need resampling.")
    arr = np.ascontiguousarray(arr[order])
    spacing = (pixel_spacing[0], pixel_spacing[1], abs(typical) if len(steps) else img.GetSpacing()[2])
    direction = np.stack([row, col, normal], axis=1)
    convert.check_direction(direction, str(shown))
    return Volume(arr, spacing, tuple(first), direction, comps)


def _check_slice_positions(vol: Volume, reader, files, shown: Path) -> None:
    """ITK assumes slices on a regular line; refuse gaps, uneven spacing and gantry tilt, which it would misplace."""
    tol = max(1e-3, 0.01 * vol.spacing[2])
    for n in range(len(files)):
        if not reader.HasMetaDataKey(n, "0020|0032"):
            continue
        try:
            ipp = np.array([float(x) for x in reader.GetMetaData(n, "0020|0032").strip(" \x00").split("\\")])
        except ValueError:
            continue
        expected = vol.ijk_to_world([0, 0, n])[0]
        if ipp.shape == (3,) and np.abs(ipp - expected).max() > tol:
            raise InputError(
                f"Cannot read the DICOM series in {shown}: its slices are not evenly spaced along one line "
                f"({Path(files[n]).name} is {np.abs(ipp - expected).max():.2f} mm off; missing slices, "
                "variable spacing or gantry tilt), so it would need resampling.")


def _to_grayscale(vol: Volume) -> Volume:
    """Luminance of a colour volume; one-component volumes are returned unchanged."""
    if vol.components == 1:
        return vol
    a = vol.array.astype(np.float32)
    if vol.components in (3, 4):
        gray = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    elif vol.components == 2:  # grey + alpha
        gray = a[..., 0]
    else:
        raise InputError(f"Cannot convert a {vol.components}-component image to grayscale.")
    out = vol.with_array(gray.astype(np.float32))
    out.metadata.update(vol.metadata)
    return out


# --------------------------------------------------------------------------- writing
def write_volume(volume: Volume, path: PathLike, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the extension), atomically; returns the path.

    The file is first written into a temporary folder in the target's directory and then moved
    over the target with ``os.replace``, so a failed write never leaves a partial file and never
    destroys an existing one. Two-file formats (.nhdr, .mhd) move the data file first and the
    header last. PNG/JPEG/BMP/TIFF store one slice and no orientation. ``compress`` applies to
    NRRD/MHA. Raises InputError when the format cannot hold the volume, OSError naming the file
    when the write itself fails.
    """
    p = Path(path)
    ext = file_extension(p)
    if ext not in _FORMATS or ext == ".dcm":
        raise InputError(f"Cannot write {p}: unsupported file type '{ext or p.name}' "
                         "(use .nii.gz, .nrrd, .mha or an image format).")
    fmt, io_name = _FORMATS[ext]
    _check_writable(volume, p, fmt)
    parent = p.parent
    if not parent.is_dir():
        raise InputError(f"Cannot write {p}: the folder {parent} does not exist.")

    tmpdir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent))
    try:
        target = tmpdir / p.name
        if fmt == "NIfTI":
            convert.to_nibabel(volume).to_filename(str(target))
        else:
            _write_sitk(volume, target, fmt, io_name, compress)
        written = sorted(tmpdir.iterdir(), key=lambda f: f.name == p.name)  # header (main file) last
        if not any(f.name == p.name for f in written):
            raise OSError(f"the writer produced no {p.name}")
        for f in written:
            os.replace(f, parent / f.name)
    except InputError:
        raise
    except Exception as exc:
        raise OSError(f"Cannot write {p}: {_reason(exc)}") from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return p


def _check_writable(volume: Volume, p: Path, fmt: str) -> None:
    if fmt not in _IMAGE_2D:
        return
    if not volume.is_2d:
        raise InputError(f"Cannot write {p}: {fmt} holds one slice, but the volume has {volume.shape[0]}.")
    if volume.components not in (1, 3, 4):
        raise InputError(f"Cannot write {p}: {fmt} needs 1, 3 or 4 components, not {volume.components}.")
    allowed = _WRITABLE_2D_DTYPES[fmt]
    if volume.array.dtype.name not in allowed:
        raise InputError(f"Cannot write {p}: {fmt} stores {' or '.join(allowed)} pixels, "
                         f"not {volume.array.dtype.name}; convert the array first.")


def _write_sitk(volume: Volume, target: Path, fmt: str, io_name: str, compress: bool) -> None:
    import SimpleITK as sitk

    if fmt in _IMAGE_2D:  # one slice; only the pixel size survives (formats without orientation)
        img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array[0]), isVector=volume.components > 1)
        img.SetSpacing(volume.spacing[:2])
    else:
        img = convert.to_sitk(volume)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO(io_name)
    writer.SetFileName(str(target))
    writer.SetUseCompression(bool(compress) and fmt in ("NRRD", "MetaImage"))
    writer.Execute(img)
