"""Writing a :class:`~pantheon.results.Result` to files, all or nothing, plus a preview picture.

Everything is written into a hidden staging folder inside the output folder and moved into place
only when every file is complete, so a failure or a cancel never leaves half an output behind and
never touches files the user already had (unless the same names are being replaced).

Heatmaps are stored compactly when their values lie in their declared range (probabilities in
[0, 1], similarities in [-1, 1]): to 1/255 of that range, i.e. within half a step (1/510 of the
range, 0.002 for a probability) of the computed value.

- NIfTI (``nii.gz``, ``nii``): uint8 with ``scl_slope``/``scl_inter``, which nibabel, ITK
  (SimpleITK) and 3D Slicer apply on read, so every reader sees the values, not the codes. A
  512x512x200 probability map is ~52 MB before compression instead of 210 MB.
- NRRD: the format has no value scaling that readers apply, so float32, rounded to the same steps
  (which lets gzip shrink it about four times).

``compact=False`` writes every map as computed (float32): the Slicer worker does, its files live
for seconds. ``result.json`` says how each map is stored (``"stored"``: dtype, step, largest error).

Single-case commands write through an :class:`OutputFolder`: a folder that already holds results is
refused unless asked to replace it (then replaced whole, by a swap), and it is locked while written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .errors import PantheonError
from .io import Volume, write_volume
from .progress import Reporter
from .results import HeatmapOutput, Result

VOLUME_FORMATS = ("nii.gz", "nii", "nrrd")
STAGE_PREFIX = ".pantheon-partial-"
LEVELS = 255  # uint8 codes 0..255 span a heatmap's value range


@contextmanager
def staged_output(out_dir):
    """Yields a staging folder; on success its files are moved into ``out_dir``, else it is removed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out_dir))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, out_dir / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def json_safe(value):
    """Plain JSON values: NaN/inf become null, numpy scalars plain numbers, dict keys strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value


# ---------------------------------------------------------------------------- compact heatmaps
def heatmap_step(heatmap: HeatmapOutput) -> Optional[float]:
    """The step (value range / 255) a heatmap is stored to, or None to store it as computed: a map
    with values outside its declared range (a reconstruction error in HU), non-finite values, more
    than one component or an empty range keeps float32."""
    lo, hi = (float(v) for v in heatmap.value_range)
    a = np.asarray(heatmap.volume.array)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo) or heatmap.volume.components != 1 or a.size == 0:
        return None
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        return None
    amin, amax = float(np.min(a)), float(np.max(a))  # NaN propagates: refused below
    slack = 1e-6 * (hi - lo)  # float rounding at the ends (a sigmoid's 1.0000001)
    if not (math.isfinite(amin) and math.isfinite(amax)) or amin < lo - slack or amax > hi + slack:
        return None
    return (hi - lo) / LEVELS


def heatmap_codes(array: np.ndarray, lo: float, step: float) -> np.ndarray:
    """uint8 codes ``round((value - lo) / step)`` of values in [lo, lo + 255 step] (as
    :func:`heatmap_step` checks): the value is ``code * step + lo`` within step / 2."""
    a = np.ascontiguousarray(array).reshape(-1)
    out = np.empty(a.size, np.uint8)
    scale, offset = np.float32(1.0 / step), np.float32(0.5 - lo / step)  # +0.5, then truncation: rounding
    chunk = 1 << 20  # a megavoxel at a time: one pass that stays in the cache, 10x faster than whole arrays
    tmp = np.empty(min(chunk, a.size), np.float32)
    for start in range(0, a.size, chunk):
        t = tmp[:min(chunk, a.size - start)]
        np.multiply(a[start:start + chunk], scale, out=t, casting="unsafe")
        t += offset
        np.clip(t, 0, LEVELS + 0.5, out=t)  # the range check allows float rounding at the ends
        out[start:start + t.size] = t  # float -> uint8 truncates
    return out.reshape(np.shape(array))


def _write_scaled_nifti(volume: Volume, codes: np.ndarray, slope: float, inter: float, path: Path) -> None:
    """uint8 ``codes`` (K, J, I) with ``value = codes * slope + inter`` in the header, geometry as
    :func:`pantheon.io.write_volume` writes it (the header of :func:`pantheon.io.convert.to_nibabel`)."""
    import nibabel as nib

    from .io.convert import to_nibabel
    template = to_nibabel(Volume(np.zeros((1, 1, 1), np.uint8), volume.spacing, volume.origin, volume.direction))
    # codes.T is (I, J, K) in Fortran order: nibabel writes it without another copy
    img = nib.Nifti1Image(codes.T, template.affine, template.header.copy())
    img.header.set_slope_inter(slope, inter)  # set, so nibabel writes the codes as they are
    img.to_filename(str(path))


def _write_heatmap(heatmap: HeatmapOutput, path: Path, fmt: str, compress: bool, compact: bool) -> dict:
    """Write one heatmap; returns how it is stored (result.json's ``"stored"``)."""
    step = heatmap_step(heatmap) if compact else None
    if step is None:
        volume = heatmap.volume
        if volume.array.dtype == np.float16:  # held compactly in memory (organ maps); NRRD has no half floats
            volume = volume.with_array(volume.array.astype(np.float32))
        write_volume(volume, path, compress=compress)
        return {"dtype": str(np.asarray(volume.array).dtype), "max_error": 0.0}
    lo = float(heatmap.value_range[0])
    codes = heatmap_codes(heatmap.volume.array, lo, step)
    stored = {"step": step, "max_error": step / 2}
    if fmt in ("nii.gz", "nii"):
        _write_scaled_nifti(heatmap.volume, codes, step, lo, path)
        return {"dtype": "uint8", "scl_slope": step, "scl_inter": lo, **stored}
    values = codes.astype(np.float32)
    values *= np.float32(step)
    values += np.float32(lo)
    write_volume(heatmap.volume.with_array(values), path, compress=compress)
    return {"dtype": "float32", **stored}


# ---------------------------------------------------------------------------- writing a result
def write_result(result: Result, out_dir, fmt: str = "nii.gz", source: Optional[Volume] = None,
                 preview: bool = True, extra_json: Optional[dict] = None, compress: bool = True,
                 compact: bool = True, progress=None) -> List[Path]:
    """Write volumes, heatmaps and labels as images, everything else as ``result.json``; returns paths.

    ``compress=False`` writes raw images: several times faster for files that live only for seconds
    (the worker hands them straight to Slicer). ``compact`` stores heatmaps to 1/255 of their range
    (see the module docstring). ``progress`` (a callable ``(fraction, message)``) is told before
    each file, in proportion to the voxels written, and reaches 1 when everything is written
    (the preview, drawn meanwhile, included).
    """
    if fmt not in VOLUME_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(VOLUME_FORMATS)}, got {fmt!r}")
    rep = Reporter(progress)
    draw = preview and source is not None and bool(result.heatmaps or result.volumes)
    jobs = ([("heatmap", n, o) for n, o in result.heatmaps.items()]
            + [("volume", n, v) for n, v in result.volumes.items()]
            + [("labels", n, lab) for n, lab in result.labels.items()])

    def weight(kind, item):
        vol = item if kind == "volume" else item.volume
        return float(np.asarray(vol.array).size)

    weights = [weight(k, i) for k, _n, i in jobs]
    total, done = max(sum(weights), 1.0), 0.0
    with staged_output(out_dir) as stage, ThreadPoolExecutor(1) as pool:
        # The preview is drawn while the maps are written: matplotlib holds the GIL, compression
        # lets go of it, so together they take about as long as the longer of the two.
        drawing = pool.submit(_draw_preview, source, result, stage / "preview.png") if draw else None
        manifest: Dict[str, dict] = {}
        for (kind, name, item), w in zip(jobs, weights):
            file = f"{name}.{fmt}"
            rep(done / total, f"Writing {file}")
            if kind == "heatmap":
                stored = _write_heatmap(item, stage / file, fmt, compress, compact)
                manifest[name] = {"kind": "heatmap", "file": file, "colormap": item.colormap,
                                  "range": list(item.value_range), "description": item.description,
                                  "label": item.label or item.description, "stored": stored}
            elif kind == "volume":
                write_volume(item, stage / file, compress=compress)
                manifest[name] = {"kind": "volume", "file": file, "components": item.components}
            else:
                write_volume(item.volume, stage / file, compress=compress)
                manifest[name] = {"kind": "labels", "file": file,
                                  "segments": [dict(value=s.value, name=s.name, color=list(s.color),
                                                    code=list(s.code) if s.code else None) for s in item.segments]}
            done += w
        doc = {"outputs": manifest, "scalars": result.scalars, "tables": result.tables, "notes": result.notes}
        doc.update(extra_json or {})
        (stage / "result.json").write_text(json.dumps(json_safe(doc), indent=2) + "\n")
        if drawing is not None:
            rep(done / total, "Drawing preview.png")
            drawing.result()  # its error, if any, fails the write like any other file's
        names = sorted(p.name for p in stage.iterdir())
    rep(1.0, "Written")
    return [Path(out_dir) / n for n in names]


def _draw_preview(source: Volume, result: Result, path: Path) -> None:
    from .preview import save_preview
    save_preview(source, result, path)


# ---------------------------------------------------------------------------- locks
def _lock_file(f) -> None:
    """Exclusive, non-blocking; OSError when another process holds it."""
    if os.name == "nt":
        import msvcrt
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class FileLock:
    """An exclusive lock on the file ``path`` (created when missing): ``fcntl.flock`` on POSIX,
    ``msvcrt.locking`` on Windows. When another process holds it, :meth:`acquire` raises
    PantheonError(``busy``) at once. The operating system drops the lock when its process ends, so a
    killed run never leaves a stale one. ``remove=True`` deletes the file on release (a lock file
    beside a user's folder should not stay there)."""

    def __init__(self, path, busy: str, remove: bool = False):
        self.path = Path(path)
        self.busy = busy
        self.remove = remove
        self.f = None

    def acquire(self) -> "FileLock":
        while True:
            f = open(self.path, "a+b")
            try:
                _lock_file(f)
            except OSError:
                f.close()
                raise PantheonError(self.busy) from None
            if not self.remove:
                break
            # The previous holder may have deleted the file between our open and our lock: a lock on
            # that orphan would exclude nobody, so lock the file now at the path instead.
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            f.close()
        self.f = f
        return self

    def release(self) -> None:
        f, self.f = self.f, None
        if f is None:
            return
        if self.remove:
            try:  # while still held, so nobody locks the file we delete
                os.unlink(self.path)
            except OSError:  # Windows: an open file cannot be deleted; it stays, unlocked
                pass
        f.close()  # closing drops the lock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


# ---------------------------------------------------------------------------- single-case folders
#: Files a single-case command writes besides the images result.json lists.
PANTHEON_FILES = ("result.json", "preview.png", "chart.png", "features.npz", "probe.safetensors",
                  "probe.card.json", "metrics.json", "phantom_ct.*", "phantom_labels.*")
#: What marks a folder as holding results (of a case, or a trained probe).
RESULT_MARKERS = ("result.json", "probe.safetensors", "probe.card.json")
#: Left by the operating system, never the user's work.
OS_CLUTTER = (".DS_Store", "Thumbs.db", "desktop.ini")


def _is_leftover(name: str) -> bool:
    """A staging folder or temporary file of an earlier run that was killed mid-write."""
    return name.startswith(STAGE_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))


def pantheon_files(folder: Path) -> Tuple[List[str], List[str]]:
    """(names Pantheon wrote, other names) in ``folder``: the images its result.json lists, the
    files every command writes beside them, leftovers of a killed run."""
    names = sorted(os.listdir(folder))
    listed = set()
    try:
        doc = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        for spec in (doc.get("outputs") or {}).values():
            if isinstance(spec, dict) and isinstance(spec.get("file"), str):
                listed.add(spec["file"])
    except (OSError, ValueError, AttributeError):
        pass
    ours, other = [], []
    for n in names:
        mine = (n in listed or n in OS_CLUTTER or _is_leftover(n) or any(fnmatch(n, p) for p in PANTHEON_FILES))
        (ours if mine else other).append(n)
    return ours, other


@contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait (POSIX, main thread) while the old results are swapped for the new:
    a Ctrl-C between the two renames would leave neither in place."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = mask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


class OutputFolder:
    """The output folder of a single-case command (one case in, one folder of results out).

    - missing, empty, or holding other files but no results: the results are written beside what
      is there (staged, then moved in); a missing folder appears whole when the results are done;
    - holding results (a ``result.json`` or a trained probe): refused, so two cases never mix,
      unless ``overwrite``: then the new results replace the folder whole, by swapping in a complete
      staged folder, so a failure leaves the old results as they were. A folder that also holds files
      Pantheon did not write, or an input of the command, is refused even then (they would be lost);
    - locked from :meth:`open` to :meth:`close` (a ``.<name>.pantheon-lock`` file beside the folder,
      removed after): a second command into the same folder is refused while the first runs.

    Every refusal is one sentence (PantheonError) and touches nothing.
    """

    def __init__(self, path, overwrite: bool = False, inputs: Iterable = (), option: str = "-o"):
        # the real folder: replacing a symbolic link would swap the link, not the results
        self.path = Path(os.path.realpath(Path(path).expanduser()))
        self.overwrite = bool(overwrite)
        self.inputs = [Path(os.path.abspath(Path(p).expanduser())) for p in inputs if p]
        self.option = option
        self.mode: Optional[str] = None  # "new", "beside" or "replace"
        self._lock: Optional[FileLock] = None
        self._made: List[Path] = []  # parent folders this run created (removed again if it fails)

    # -- opening: lock, then look
    def open(self) -> "OutputFolder":
        path = self.path
        if path.exists() and not path.is_dir():
            raise PantheonError(f"The output {path} is a file, not a folder; give {self.option} a folder.")
        missing = []
        p = path.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self._made.append(d)
        busy = (f"Another pantheon command is writing to {path}; wait for it to finish or choose another "
                "output folder.")
        parent_writable = os.access(path.parent, os.W_OK | os.X_OK)
        lock_path = path.parent / f".{path.name}.pantheon-lock" if parent_writable else path / ".pantheon-lock"
        try:
            self._lock = FileLock(lock_path, busy, remove=True).acquire()
            self.mode = self._inspect(parent_writable)
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def _inspect(self, parent_writable: bool) -> str:
        path = self.path
        if not path.exists():
            return "new"
        ours, other = pantheon_files(path)
        other = [n for n in other if n != ".pantheon-lock"]  # ours, when the parent is read-only
        for n in ours:  # a killed run's staging folder: ours, and nobody else writes here now
            if _is_leftover(n):
                if (path / n).is_dir():
                    shutil.rmtree(path / n, ignore_errors=True)
                else:
                    _unlink(path / n)
        if not any(fnmatch(n, m) for n in ours for m in RESULT_MARKERS):
            if (path / "manifest.json").is_file() and (path / "summary.csv").is_file():
                raise PantheonError(f"The output folder {path} holds a pantheon batch; give this command a folder "
                                    "of its own.")
            return "beside"  # empty, or the user's other files: nothing of another case to mix with
        marker = next(n for n in ours for m in RESULT_MARKERS if fnmatch(n, m))
        if not self.overwrite:
            raise PantheonError(f"The output folder {path} already holds results ({marker} of an earlier run); "
                                "choose a new folder, or add --overwrite to replace it.")
        if other:
            raise PantheonError(f"The output folder {path} holds files Pantheon did not write ({_some(other)}) beside "
                                "earlier results; --overwrite replaces the whole folder, so move them out or "
                                "choose another folder.")
        for p in self.inputs:
            if p == path or path in p.parents:
                raise PantheonError(f"--overwrite would delete {p}, an input of this command inside {path}; choose "
                                    "another output folder.")
        if not parent_writable:
            raise PantheonError(f"--overwrite replaces {path} by a rename in {path.parent}, which is not writable; "
                                "choose another output folder.")
        return "replace"

    def close(self, failed: bool = False) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if failed:
            for d in reversed(self._made):  # innermost first; only if still empty
                try:
                    d.rmdir()
                except OSError:
                    break
        self._made = []

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)
        return False

    # -- writing
    @contextmanager
    def staged(self):
        """Yields a folder to write the results into; on success they become the output folder's
        content (moved beside what is there, or swapped in whole for ``replace``), else removed."""
        if self.mode is None:
            raise RuntimeError("open() the output folder first")
        if self.mode == "beside":
            with staged_output(self.path) as stage:
                yield stage
            return
        parent, name = self.path.parent, self.path.name
        stage = Path(tempfile.mkdtemp(prefix=f".{name}{STAGE_PREFIX}", dir=parent))
        try:
            yield stage
            with _signals_held():
                if self.mode == "new":
                    os.replace(stage, self.path)  # the folder appears whole
                else:
                    old = parent / f".{name}.pantheon-old-{uuid.uuid4().hex[:8]}"
                    os.replace(self.path, old)
                    try:
                        os.replace(stage, self.path)
                    except BaseException:
                        os.replace(old, self.path)  # the earlier results, as they were
                        raise
                    shutil.rmtree(old, ignore_errors=True)
            self._made = []  # the parents now hold the results: keep them
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def _some(names: List[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
