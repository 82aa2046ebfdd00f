"""Reading and writing volumes, dispatching on the file extension.

- NIfTI (.nii, .nii.gz): nibabel, so that qform/sform are handled explicitly (see
  :func:`pantheon.io.convert.from_nibabel`: sform wins when its code is set).
- NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), PNG/JPEG/BMP/TIFF: SimpleITK, with the image IO
  forced by the extension so a mislabelled file fails clearly instead of being guessed.
- DICOM: a folder (or one .dcm file of it) is read as a series with SimpleITK's ImageSeriesReader.
- 2D images become single-slice volumes (K = 1); they carry no geometry, so spacing 1 / identity.
  (A multi-page TIFF reads as K pages; truncated JPEG/BMP files, which ITK only warns about,
  are caught with Pillow.)

Every failure to read raises :class:`InputError` naming the file. Writes are atomic: the file is
written in a temporary folder next to the target and moved into place with ``os.replace``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError
from . import convert
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


def _extension(path: Path) -> str:
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


# --------------------------------------------------------------------------- reading
def read_volume(path: PathLike, grayscale: bool = False) -> Volume:
    """Read an image file or a DICOM folder as a :class:`Volume` (LPS geometry).

    ``grayscale=True`` turns colour images (RGB/RGBA) into one float32 luminance component
    (ITU-R BT.601 weights, alpha dropped); otherwise colour is kept as components.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"Cannot read {p}: no such file or folder.")
    if p.is_dir():
        vol = _read_dicom_folder(p)
    else:
        ext = _extension(p)
        if ext not in _FORMATS:
            raise InputError(f"Cannot read {p}: unsupported file type '{ext or p.name}' "
                             f"(supported: {', '.join(SUPPORTED_EXTENSIONS)} or a DICOM folder).")
        if p.stat().st_size == 0:
            raise InputError(f"Cannot read {p}: the file is empty.")
        fmt, io_name = _FORMATS[ext]
        if fmt == "NIfTI":
            vol = _read_nifti(p)
        elif fmt == "DICOM":
            vol = _read_dicom_file(p)
        else:
            vol = _read_sitk(p, io_name)
    return _to_grayscale(vol) if grayscale else vol


def _read_nifti(p: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(p), mmap=False)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"Cannot read {p}: it is not a NIfTI image.")
        return convert.from_nibabel(img, name=str(p))  # reads the data: truncation shows here
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error...)
        raise _corrupt(p, exc) from exc


def _read_sitk(p: Path, io_name: str) -> Volume:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO(io_name)
        reader.SetFileName(str(p))
        img = reader.Execute()
    except RuntimeError as exc:
        raise _corrupt(p, exc) from exc
    if io_name in ("JPEGImageIO", "BMPImageIO"):
        _check_not_truncated(p)
    return convert.from_sitk(img, name=str(p))


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


def _read_dicom_file(p: Path) -> Volume:
    """A single .dcm file stands for the whole series it belongs to."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        series_uid = reader.GetMetaData("0020|000e").strip(" \x00") if reader.HasMetaDataKey("0020|000e") else ""
    except RuntimeError as exc:
        raise _corrupt(p, exc) from exc
    files = []
    if series_uid:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p.parent), series_uid))
    if len(files) > 1:
        all_series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p.parent))
        listed = [f for uid in all_series for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p.parent), uid)]
        _refuse_unreadable_images(p.parent, listed)
    return _read_dicom_files(files or [str(p)], p)


def _read_dicom_folder(folder: Path) -> Volume:
    """Read the DICOM series of a folder; with several series, the one with most files."""
    import SimpleITK as sitk

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
    return _read_dicom_files(files[best], folder)


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


def _read_dicom_files(files, shown: Path) -> Volume:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageSeriesReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Cannot read the DICOM series in {shown}: a file is truncated, corrupted "
                         f"or inconsistent with the others ({_reason(exc)}).") from exc
    vol = convert.from_sitk(img, name=str(shown))
    if 1 < len(files) == vol.shape[0]:  # one slice per file (not multi-frame files)
        _check_slice_positions(vol, reader, files, shown)
    return vol


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
    return vol.with_array(gray.astype(np.float32))


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
    ext = _extension(p)
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
