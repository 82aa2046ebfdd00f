"""The worker's task registry (every model plug-in's tasks, see :mod:`pantheon.plugins`) and the
helpers tasks share: reading an input through the cache, writing the result, a progress span.

Each task takes a :class:`pantheon.worker.server.JobContext` and returns the result document
(the parsed ``result.json``: outputs, scalars, tables, notes) plus ``output_dir``. numpy, torch
and the pipelines are imported inside the functions, so importing this module stays cheap.

Caches (one LRU under the worker's byte budget, see :class:`pantheon.worker.server.LRUCache`):
``("volume", realpath, size, mtime_ns)`` -> (Volume, content hash); ``("engine", weights, device,
precision)`` -> NemesisEngine; ``("probe", probe, engine sha)`` -> OrganProbe; ``("features",
content hash, encoder sha, precision, stride)`` -> FeatureGrid. The content hash covers the voxel
bytes, dtype and geometry, so the same image written to a new temporary file still hits.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Union

from ..errors import Cancelled, InputError
from .protocol import TEST_PIPELINES_ENV

if TYPE_CHECKING:  # annotations only: numpy and the server stay lazy
    from ..results import Result
    from .server import JobContext


def available_pipelines() -> Dict[str, Callable]:
    """Every model plug-in's tasks (:func:`pantheon.plugins.worker_tasks`), plus the test tasks
    when the worker runs under the tests."""
    from ..plugins import worker_tasks
    names = worker_tasks()
    if os.environ.get(TEST_PIPELINES_ENV) == "1":
        names.update(TEST_PIPELINES)
    return names


# ------------------------------------------------------------------------------ helpers
def write_outputs(result: Result, out_dir: Union[str, Path], extra_notes: Optional[dict] = None,
                  progress: Optional[Callable[[float, str], None]] = None) -> dict:
    """Write a Result as uncompressed NRRD + result.json (files live for seconds in a private
    folder; uncompressed is several times faster to write and for Slicer to read). Heatmaps keep
    every computed digit (``compact=False``): NRRD has no value scaling Slicer would apply, and
    compacting saves nothing on files that are deleted once Slicer has read them."""
    from ..outputs import write_result
    result.notes.update(extra_notes or {})
    write_result(result, out_dir, "nrrd", preview=False, compress=False, compact=False, progress=progress)
    doc = json.loads((Path(out_dir) / "result.json").read_text())
    doc["output_dir"] = str(Path(out_dir).resolve())
    return doc


def read_input(ctx: JobContext, name: str = "volume", cache: bool = True) -> Tuple[object, str]:
    """(Volume, content hash) of input ``name``, from the cache when the file is unchanged; with
    ``cache=False`` read and not kept (an input that changes with every request, e.g. paint strokes)."""
    import hashlib

    import numpy as np

    from ..io import read_volume
    path = ctx.inputs.get(name)
    if not path:
        raise InputError(f"The request has no input '{name}' (a file path).")
    p = Path(path)
    if not p.exists():
        raise InputError(f"Input '{name}' does not exist: {path}")
    st = p.stat()
    key = ("volume", str(p.resolve()), st.st_size, st.st_mtime_ns)
    hit = ctx.cache.get(key) if cache else None
    if hit is not None:
        return hit
    vol = read_volume(p)
    h = hashlib.blake2b(digest_size=20)
    h.update(np.ascontiguousarray(vol.array).data)
    h.update(json.dumps([vol.array.dtype.str, list(vol.array.shape), list(map(float, vol.spacing)),
                         list(map(float, vol.origin)), np.asarray(vol.direction, float).ravel().tolist()]).encode())
    entry = (vol, h.hexdigest())
    if cache:
        ctx.cache.put(key, entry, vol.array.nbytes)
    return entry


def progress_span(ctx: JobContext, start: float, stop: float) -> Callable[..., None]:
    """A progress callback ``(fraction, message)`` that fills ``start..stop`` of the job's bar."""
    return lambda f, m="": ctx.progress(start + (stop - start) * f, m)


# ------------------------------------------------------------------------------ test pipelines
def task_sleep(ctx: JobContext) -> Dict[str, Any]:
    """Sleeps ``seconds`` in ``steps`` steps, reporting progress; honours cancel; optional
    ``fail`` (an error kind: "input" or "internal") raises after the sleep."""
    from ..results import Result
    seconds = float(ctx.params.get("seconds", 1.0))
    steps = max(1, int(ctx.params.get("steps", 10)))
    for i in range(steps):
        ctx.progress(i / steps, f"step {i}/{steps}")
        if ctx.cancel.wait(seconds / steps):
            raise Cancelled("Cancelled by the user.")
    ctx.progress(1.0, f"step {steps}/{steps}")
    fail = ctx.params.get("fail")
    if fail == "input":
        raise InputError("Requested failure (input).")
    if fail:
        raise RuntimeError("Requested failure (internal).")
    if ctx.params.get("write"):
        return write_outputs(Result(scalars={"seconds": seconds}), ctx.output_dir)
    return {"outputs": {}, "scalars": {"seconds": seconds}, "tables": {}, "notes": {}, "output_dir": ctx.output_dir}


def task_roundtrip(ctx: JobContext) -> Dict[str, Any]:
    """Reads input 'volume', writes a float32 heatmap of the same size: times both (benchmark)."""
    import numpy as np

    from ..io import read_volume
    from ..results import HeatmapOutput, Result
    t0 = time.perf_counter()
    vol = read_volume(ctx.inputs["volume"]) if ctx.inputs.get("volume") else None
    if vol is None:
        raise InputError("system.roundtrip needs input 'volume'.")
    t1 = time.perf_counter()
    heat = vol.with_array(vol.array.astype(np.float32))
    t2 = time.perf_counter()
    res = Result(heatmaps={"heatmap": HeatmapOutput(heat)})
    doc = write_outputs(res, ctx.output_dir, {"read_s": f"{t1 - t0:.4f}"})
    doc["scalars"].update({"read_s": t1 - t0, "write_s": time.perf_counter() - t2})
    return doc


TEST_PIPELINES = {"system.sleep": task_sleep, "system.roundtrip": task_roundtrip}
