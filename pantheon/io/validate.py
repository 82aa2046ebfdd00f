"""Checks shared by every entry point (command line, worker, batch, Slicer panels, Python).

Each check raises :class:`~pantheon.errors.InputError` with one sentence in plain words: no Python
names (``num_inference_steps``), no numpy reprs (``np.float64(1.0)``), the value that was given and
what is accepted. Pipelines call them, so every caller refuses the same things the same way.

- Image size: :func:`check_pixel_count` (a stated limit per command, checked from a file's header
  by :func:`pantheon.io.read_volume` before anything is decoded, and again by the pipelines).
- Shape: :func:`describe_shape` / :func:`require_3d` say "a single voxel", "2D" or "1 voxel thick";
  :func:`check_3d_size` adds the size limit.
- Scans: :func:`check_scan`, the first checks of a 3D scan every 3D pipeline runs (NEMESIS' CT,
  NeoNet's MRI) before its own value-range check; :func:`require_volume`, :func:`require_finite`
  and :func:`sample_values` (with :data:`SAMPLE_VOXELS`) for the rest (the 2D X-ray check too).
- Label maps: :func:`check_label_map`.
- Parameters: :func:`require_int`, :func:`require_number`.
- Formatting: :func:`fmt_point`, :func:`fmt_size`.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, InvalidParameter
from .volume import Volume

#: Default limit of :func:`pantheon.io.read_volume` for volumes (NIfTI, NRRD, MHA, DICOM): voxels.
DEFAULT_MAX_PIXELS = 1_000_000_000
#: The stated limit of each family of commands (pixels, voxels for 3D), torch-free so that the command
#: line can show and apply them before importing a model. The pipelines use the same numbers:
#: ``nemesis.MAX_VOXELS``, ``mathena.MAX_PIXELS``, ``neonet.MAX_VOXELS``. 0 means no limit.
COMMAND_PIXEL_LIMITS = {
    "nemesis": 500_000_000,  # a CT up to 512 x 512 x 1900; the maps need ~10+ bytes a voxel
    "tooth": 50_000_000,     # a radiograph up to 10000 x 5000; OPGs are 3-25 million pixels
    "pni": 200_000_000,      # an MRI or label map up to 512 x 512 x 760
    "lldm": 200_000_000,     # a label map up to 512 x 512 x 760 (the model grid is small; the result is float32)
}
#: Default limit for formats without geometry (PNG, JPEG, BMP, TIFF): pixels. 200 megapixels is
#: 20000 x 10000, far beyond any radiograph, and about 0.8 GB as float32 before any processing.
DEFAULT_MAX_PIXELS_2D = 200_000_000
#: Value statistics of an image (percentiles, share of air) use every n-th voxel, about this many
#: in all: percentiles of a few million voxels are stable, and a large CT is not copied whole.
SAMPLE_VOXELS = 2_000_000
#: Hounsfield units: below this a voxel is air (about -1000 HU) or lung, which no MRI and no label
#: map has; many such voxels mean a CT (NeoNet's MRI check, the label-map check).
AIR_HU = -500.0


# ---------------------------------------------------------------------------- formatting
def _num(x: float, digits: int = 1) -> str:
    """A plain number: ``12.3``, ``-4``, ``1e+06`` -- never a numpy repr."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e15 or (x != 0 and abs(x) < 10.0 ** -digits):
        return f"{x:.3g}"
    s = f"{x:.{digits}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def fmt_point(point, digits: int = 1) -> str:
    """``(12.3, -4.5, 6)``: a point for a message, whatever its type (tuple, numpy array...)."""
    values = np.asarray(point, dtype=np.float64).reshape(-1)
    return "(" + ", ".join(_num(v, digits) for v in values) + ")"


def fmt_size(size_ijk: Sequence[int]) -> str:
    """``40000 x 20000 pixels`` (one slice) or ``512 x 512 x 300 voxels``, in (i, j, k) order."""
    size = [int(s) for s in size_ijk]
    if len(size) == 3 and size[2] == 1:
        size = size[:2]
    return " x ".join(map(str, size)) + (" pixels" if len(size) == 2 else " voxels")


def fmt_count(n: int) -> str:
    """``800 million``, ``1.2 billion``, ``45000``."""
    n = int(n)
    if n >= 1_000_000_000:
        return f"{_num(n / 1e9)} billion"
    if n >= 1_000_000:
        return f"{_num(n / 1e6)} million"
    return str(n)


# ---------------------------------------------------------------------------- size
def pixel_limit(max_pixels, two_d: bool) -> Optional[int]:
    """The limit to apply: ``None`` -> the default for the kind of image, ``0`` or negative -> no limit."""
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS_2D if two_d else DEFAULT_MAX_PIXELS
    limit = require_int(max_pixels, "pixel limit")
    return limit if limit > 0 else None


def check_pixel_count(size_ijk: Sequence[int], max_pixels, name: str = "The image",
                      components: int = 1, two_d: Optional[bool] = None) -> None:
    """Refuse an image with more pixels (voxels) than ``max_pixels`` (see :func:`pixel_limit`).

    ``size_ijk`` comes from a header, so this runs before any pixel is decoded. The sentence says
    how much memory the image would take and how to raise the limit.
    """
    size = [int(s) for s in size_ijk]
    if two_d is None:
        two_d = len(size) < 3 or size[2] == 1
    limit = pixel_limit(max_pixels, two_d)
    n = int(np.prod(size, dtype=np.int64))
    if limit is None or n <= limit:
        return
    unit = "pixels" if two_d else "voxels"
    gb = n * max(1, int(components)) * 4 / 1e9  # as float32, the least any model works with
    raise InputError(f"{name} is {fmt_size(size)} ({fmt_count(n)} {unit}), more than the limit of {fmt_count(limit)} "
                     f"{unit}: processing it would need well over {_num(gb)} GB of memory; if this machine has it, "
                     f"raise the limit (--max-pixels {n} on the command line).")


# ---------------------------------------------------------------------------- shape
def describe_shape(volume) -> Optional[str]:
    """Why a volume is not a usable 3D image, or None: a single voxel, 2D (one slice), or too thin."""
    i, j, k = volume.size_ijk
    if i * j * k == 1:
        return "a single voxel (1 x 1 x 1)"
    if k == 1 and min(i, j) >= 2:
        return f"2D (one slice of {i} x {j} pixels)"
    if min(i, j, k) < 2:
        thin = [axis for axis, n in zip("ijk", (i, j, k)) if n < 2]
        return (f"only 1 voxel thick along {' and '.join(thin)} ({i} x {j} x {k} voxels), a line or a "
                "plane rather than a volume")
    return None


def require_3d(volume, name: str, needs: str) -> None:
    """InputError unless ``volume`` has at least 2 voxels along each axis. ``needs`` ends the sentence
    (e.g. "NEMESIS needs a 3D CT volume")."""
    why = describe_shape(volume)
    if why is not None:
        raise InputError(f"The {name} image is {why}; {needs}.")


def check_3d_size(volume, name: str, needs: str, max_voxels, what: Optional[str] = None) -> None:
    """:func:`require_3d`, then :func:`check_pixel_count` with ``max_voxels`` (None or 0 = no limit);
    ``what`` starts the size sentence (default "The <name> image")."""
    require_3d(volume, name, needs)
    check_pixel_count(volume.size_ijk, max_voxels or 0, what or f"The {name} image", two_d=False)


# ---------------------------------------------------------------------------- scans
def require_volume(volume, name: str) -> None:
    """InputError unless ``volume`` is a :class:`~pantheon.io.volume.Volume` (a Python caller's mistake)."""
    if not isinstance(volume, Volume):
        raise InputError(f"The {name} image must be a pantheon Volume, got {type(volume).__name__}.")


def require_finite(array: np.ndarray, name: str, unit: str = "voxels", advice: str = "") -> None:
    """InputError naming how many ``unit`` (voxels, pixels, values) of a float image are NaN or
    infinite; ``advice`` ends the sentence after a semicolon."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"The {name} image contains {bad} NaN or infinite {unit}"
                         + (f"; {advice}." if advice else "."))


def sample_values(array: np.ndarray, n: int = SAMPLE_VOXELS) -> np.ndarray:
    """About ``n`` values of ``array`` (flattened, every k-th; all of a smaller one), a view."""
    return array.reshape(-1)[:: max(1, array.size // n)]


def check_scan(volume, name: str, app: str, scan: str, channel: str, modalities: Sequence[str], max_voxels,
               nan_advice: str) -> Tuple[np.ndarray, float, float]:
    """The checks every 3D pipeline runs first on its scan, each failing with one sentence, in this
    order: a Volume; one component ("``app`` needs a single-channel ``channel``"); 3D and within
    ``max_voxels`` (None or 0 = no limit); the DICOM Modality, when known, in ``modalities``
    ("``app`` needs a ``scan``"); not empty; no NaN or infinite voxel (``nan_advice``); not constant.

    Returns ``(array, min, max)`` for the pipeline's own check of the value range (Hounsfield units
    for a CT, no air for an MRI).
    """
    require_volume(volume, name)
    if volume.components != 1:
        raise InputError(f"The {name} image has {volume.components} components; "
                         f"{app} needs a single-channel {channel}.")
    check_3d_size(volume, name, f"{app} needs a 3D {scan} volume", max_voxels)
    modality = str(volume.metadata.get("modality", "")).strip().upper()
    if modality and modality not in modalities:
        raise InputError(f"The {name} image is a DICOM {modality} image (Modality {modality}); {app} needs a {scan}.")
    a = volume.array
    if a.size == 0:
        raise InputError(f"The {name} image is empty.")
    require_finite(a, name, "voxels", nan_advice)
    lo, hi = float(a.min()), float(a.max())
    if lo == hi:
        raise InputError(f"The {name} image is constant ({lo:g}); there is nothing to analyse.")
    return a, lo, hi


# ---------------------------------------------------------------------------- parameters
def _is_number(value) -> bool:
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def require_int(value, what: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an int; InputError naming ``what`` (plain words) when it is not a whole number in range."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidParameter(f"The {what} must be a whole number, got {value!r}.") from None
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) != int(value):
        shown = _num(value, 4) if _is_number(value) else repr(value)
        raise InvalidParameter(f"The {what} must be a whole number, got {shown}.")
    v = int(value)
    _in_range(v, what, minimum, maximum, whole=True)
    return v


def require_number(value, what: str, minimum: Optional[float] = None, maximum: Optional[float] = None,
                   min_inclusive: bool = True, max_inclusive: bool = True, note: str = "") -> float:
    """``value`` as a finite float in range; InputError naming ``what`` otherwise. ``note`` is added in
    brackets to the sentence (e.g. what the number means)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidParameter(f"The {what} must be a number, got {value!r}.") from None
    if not _is_number(value) or not math.isfinite(float(value)):
        raise InvalidParameter(f"The {what} must be a finite number, got {value!r}.")
    v = float(value)
    _in_range(v, what, minimum, maximum, min_inclusive=min_inclusive, max_inclusive=max_inclusive, note=note)
    return v


def _in_range(v, what, minimum, maximum, whole=False, min_inclusive=True, max_inclusive=True, note=""):
    lo_ok = minimum is None or (v >= minimum if min_inclusive else v > minimum)
    hi_ok = maximum is None or (v <= maximum if max_inclusive else v < maximum)
    if lo_ok and hi_ok:
        return
    kind = "a whole number" if whole else "a number"
    if minimum is not None and maximum is not None:
        rng = (f"between {_num(minimum, 6)} and {_num(maximum, 6)}" if min_inclusive and max_inclusive else
               f"from {_num(minimum, 6)} {'(included)' if min_inclusive else '(excluded)'} to "
               f"{_num(maximum, 6)} {'(included)' if max_inclusive else '(excluded)'}")
    elif minimum is not None:
        rng = f"{'at least' if min_inclusive else 'more than'} {_num(minimum, 6)}"
    else:
        rng = f"{'at most' if max_inclusive else 'less than'} {_num(maximum, 6)}"
    extra = f" ({note})" if note else ""
    raise InvalidParameter(f"The {what} must be {kind} {rng}{extra}, got {_num(v, 6)}.")


# ---------------------------------------------------------------------------- label maps
#: A label map has few labels with small values; more than this many distinct labels, or a value
#: above MAX_LABEL_VALUE, is an image (MRI, CT), not a label map.
MAX_LABELS = 64
MAX_LABEL_VALUE = 1000


def check_label_map(volume, what: str = "label map"):
    """``(integer array, {value: voxel count})`` of a label map; InputError in one sentence when the
    volume is not one: several components, non-integer values (an image), negative values (a CT in
    Hounsfield units), many distinct or large values (an MRI or CT), NaN."""
    if getattr(volume, "components", 1) != 1:
        raise InputError(f"The {what} has {volume.components} components (a colour or vector image); a label map "
                         "has one whole number per voxel.")
    a = np.asarray(volume.array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.size == 0:
        raise InputError(f"The {what} is empty.")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"The {what} has values of type {a.dtype.name}; a label map holds whole numbers.")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(f"The {what} contains NaN or infinite values; a label map holds whole numbers.")
        sample = sample_values(a)
        frac = np.abs(sample - np.rint(sample)) > 1e-3
        if frac.any():
            example = float(sample[np.argmax(frac)])
            raise InputError(f"The {what} has fractional values ({100 * float(frac.mean()):.0f}% of voxels, e.g. "
                             f"{_num(example, 3)}): it is an image (an MRI or CT?), not a label map of whole numbers.")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0:
        ct = " (like a CT in Hounsfield units)" if lo <= AIR_HU else ""
        raise InputError(f"The {what} has negative values (down to {_num(lo, 3)}){ct}: it is an image, not a label "
                         "map, whose labels are whole numbers from 0.")
    if hi > MAX_LABEL_VALUE:
        raise InputError(f"The {what} has values up to {_num(hi, 3)}: it is an image (an MRI or CT?), not a label map, "
                         f"whose labels are small whole numbers (at most {MAX_LABEL_VALUE} here).")
    small = np.uint8 if hi <= 255 else np.uint16  # hi <= MAX_LABEL_VALUE: 2 bytes a voxel at most
    ints = np.rint(a).astype(small) if np.issubdtype(a.dtype, np.floating) else a.astype(small, copy=False)
    flat = ints.reshape(-1)
    counts = np.zeros(int(hi) + 1, np.int64)
    for start in range(0, flat.size, 1 << 24):  # chunks: bincount's int64 copy stays small
        chunk = flat[start:start + (1 << 24)]
        labelled = chunk[chunk != 0]  # most of a label map is 0: count only the rest
        counts += np.bincount(labelled, minlength=counts.size)
        counts[0] += chunk.size - labelled.size
    present = {int(v): int(c) for v, c in enumerate(counts) if c}
    labels = [v for v in present if v != 0]
    if len(labels) > MAX_LABELS:
        raise InputError(f"The {what} has {len(labels)} distinct values (up to {max(labels)}): it is an image "
                         f"(an MRI or CT?), not a label map, which has a few labels (at most {MAX_LABELS} here).")
    return ints, present


def describe_geometry_mismatch(a, b, name_a: str, name_b: str) -> Optional[str]:
    """How the grid of ``a`` differs from that of ``b`` (for a message), or None when they match."""
    if a.shape != b.shape:
        return f"{name_a} is {fmt_size(a.size_ijk)}, {name_b} {fmt_size(b.size_ijk)}"
    if not np.allclose(a.spacing, b.spacing, atol=1e-3, rtol=1e-4):
        sp = lambda v: " x ".join(_num(s, 3) for s in v.spacing)  # noqa: E731
        return f"{name_a} has {sp(a)} mm voxels, {name_b} {sp(b)} mm"
    if not np.allclose(a.direction, b.direction, atol=1e-3):
        return f"{name_a} and {name_b} have differently oriented axes"
    shift = float(np.linalg.norm(np.asarray(a.origin) - np.asarray(b.origin)))
    if shift > 1e-3:
        return f"{name_a} is shifted by {_num(shift, 2)} mm from {name_b}"
    return None
