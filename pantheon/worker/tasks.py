"""Pipelines the worker serves, by name, plus the warm caches they share.

Each task takes a :class:`pantheon.worker.server.JobContext` and returns the result document
(the parsed ``result.json``: outputs, scalars, tables, notes) plus ``output_dir``. numpy, torch
and the pipelines are imported inside the functions, so importing this module stays cheap.

Caches (one LRU under the worker's byte budget, see :class:`pantheon.worker.server.LRUCache`):
``("volume", realpath, size, mtime_ns)`` -> (Volume, content hash); ``("engine", weights, device,
precision)`` -> NemesisEngine; ``("probe", probe, engine sha)`` -> OrganProbe; ``("features",
content hash, encoder sha, precision, stride)`` -> FeatureGrid. The content hash covers the voxel
bytes, dtype and geometry, so the same image written to a new temporary file still hits.
"""

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import Cancelled, InputError
from .protocol import TEST_PIPELINES_ENV


def available_pipelines():
    from .tasks_mathena import MATHENA_PIPELINES
    from .tasks_neonet import NEONET_PIPELINES
    names = dict(NEMESIS_PIPELINES)
    names.update(MATHENA_PIPELINES)
    names.update(NEONET_PIPELINES)
    if os.environ.get(TEST_PIPELINES_ENV) == "1":
        names.update(TEST_PIPELINES)
    return names


# ------------------------------------------------------------------------------ helpers
from ..outputs import json_safe  # noqa: E402

def write_outputs(result, out_dir, extra_notes=None, progress=None):
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


def read_input(ctx, name="volume"):
    """(Volume, content hash) of input ``name``, from the cache when the file is unchanged."""
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
    hit = ctx.cache.get(key)
    if hit is not None:
        return hit
    vol = read_volume(p)
    h = hashlib.blake2b(digest_size=20)
    h.update(np.ascontiguousarray(vol.array).data)
    h.update(json.dumps([vol.array.dtype.str, list(vol.array.shape), list(map(float, vol.spacing)),
                         list(map(float, vol.origin)), np.asarray(vol.direction, float).ravel().tolist()]).encode())
    entry = (vol, h.hexdigest())
    ctx.cache.put(key, entry, vol.array.nbytes)
    return entry


def _stride(value):
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise InputError(f"stride must be an integer or three integers, got {value!r}.")


def _point(ctx):
    p = ctx.params.get("point_lps")
    if not isinstance(p, (list, tuple)) or len(p) != 3 or not all(isinstance(v, (int, float)) for v in p):
        raise InputError("This action needs 'point_lps': [x, y, z] in LPS millimetres.")
    return [float(v) for v in p]


def get_engine(ctx):
    from ..pipelines import nemesis as nem
    weights = ctx.params.get("weights") or None
    device = ctx.params.get("device") or "auto"
    precision = ctx.params.get("precision") or "fp32"
    stamp = None
    if weights and os.path.isfile(os.path.expanduser(weights)):
        st = os.stat(os.path.expanduser(weights))
        stamp = (os.path.realpath(os.path.expanduser(weights)), st.st_size, st.st_mtime_ns)
    key = ("engine", weights or "", stamp, device, precision)
    engine = ctx.cache.get(key)
    if engine is None:
        ctx.progress(0.0, "Loading the model")
        try:
            engine = nem.load_engine(weights, device, precision)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        nbytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
        ctx.cache.put(key, engine, nbytes)
        ctx.notes["model_cache"] = "miss"
    else:
        ctx.notes["model_cache"] = "hit"
    engine.batch_size = max(1, int(ctx.params.get("batch_size") or 1))
    return engine


@contextmanager
def cancel_hooks(model, event):
    """Forward pre-hooks on the transformer blocks and the patch aggregator that raise Cancelled
    when ``event`` is set, so a cancel lands between blocks even inside one heavy superpatch."""
    def hook(module, args):
        if event.is_set():
            raise Cancelled("Cancelled by the user.")
    modules = []
    for part in ("encoder", "decoder"):
        sub = getattr(model, part, None)
        modules += list(getattr(sub, "blocks", []) or [])
        if getattr(sub, "adaptive_agg", None) is not None:
            modules.append(sub.adaptive_agg)
    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def get_features(ctx, engine, volume, vhash, progress):
    from ..pipelines import nemesis as nem
    stride = _stride(ctx.params.get("stride"))
    key = ("features", vhash, engine.weights_sha256 or engine.weights_id, engine.precision, str(stride))
    fg = ctx.cache.get(key)
    if fg is not None:
        ctx.notes["feature_cache"] = "hit"
        progress(1.0, "Features from the worker cache")
        return fg
    ctx.notes["feature_cache"] = "miss"
    prepared = nem.prepare_ct(volume)
    try:
        fg = nem.compute_features(prepared, engine, stride, progress=progress, cancel=ctx.cancel)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    ctx.cache.put(key, fg, fg.tokens.nbytes + fg.centres_lps.nbytes)
    return fg


def _sub(ctx, start, stop):
    return lambda f, m="": ctx.progress(start + (stop - start) * f, m)


# ------------------------------------------------------------------------------ NEMESIS tasks
def task_features(ctx):
    from ..pipelines import nemesis as nem
    from ..results import Result
    vol, vhash = read_input(ctx)
    engine = get_engine(ctx)
    with cancel_hooks(engine.model, ctx.cancel):
        fg = get_features(ctx, engine, vol, vhash, _sub(ctx, 0.05, 0.95))
    res = Result()
    res.scalars.update({"grid_d": fg.tokens.shape[0], "grid_h": fg.tokens.shape[1], "grid_w": fg.tokens.shape[2],
                        "embed_dim": fg.tokens.shape[3]})
    res.notes.update(nem._notes(engine, fg))
    res.notes["grid"] = "x".join(map(str, fg.tokens.shape))
    doc = write_outputs(res, ctx.output_dir, ctx.notes)
    ctx.progress(1.0, "Features ready")
    return doc


def _feature_task(ctx, run):
    vol, vhash = read_input(ctx)
    engine = get_engine(ctx)
    with cancel_hooks(engine.model, ctx.cancel):
        fg = get_features(ctx, engine, vol, vhash, _sub(ctx, 0.05, 0.85))
        res = run(vol, engine, fg, _sub(ctx, 0.85, 0.95))
    ctx.progress(0.95, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes, _sub(ctx, 0.95, 1.0))
    ctx.progress(1.0, "Done")
    return doc


def task_organs(ctx):
    from ..pipelines import nemesis as nem
    organs = ctx.params.get("organs")
    if organs is not None and (not isinstance(organs, list) or not all(isinstance(o, str) for o in organs)):
        raise InputError("'organs' must be a list of organ names.")

    def run(vol, engine, fg, progress):
        probe_arg = ctx.params.get("probe") or None
        key = ("probe", probe_arg or "", engine.weights_sha256)
        probe = ctx.cache.get(key)
        if probe is None:
            probe = nem.load_probe_for(engine, probe_arg)
            ctx.cache.put(key, probe, sum(p.numel() * p.element_size() for p in probe.parameters()))
        return nem.organ_maps(vol, engine, probe, organs, feature_grid=fg, progress=progress, cancel=ctx.cancel)
    return _feature_task(ctx, run)


def task_pca(ctx):
    from ..pipelines import nemesis as nem
    return _feature_task(ctx, lambda vol, engine, fg, progress: nem.pca(
        vol, engine, feature_grid=fg, progress=progress, cancel=ctx.cancel))


def task_similarity(ctx):
    from ..pipelines import nemesis as nem
    point = _point(ctx)
    return _feature_task(ctx, lambda vol, engine, fg, progress: nem.similarity(
        vol, engine, point, feature_grid=fg, progress=progress, cancel=ctx.cancel))


def task_reconstruct(ctx):
    from ..pipelines import nemesis as nem
    point = _point(ctx)
    ratio = ctx.params.get("mask_ratio", [0.5, 0.5])
    if isinstance(ratio, (int, float)):
        ratio = float(ratio)
    elif isinstance(ratio, (list, tuple)) and len(ratio) == 2:
        ratio = (float(ratio[0]), float(ratio[1]))
    else:
        raise InputError("'mask_ratio' must be a number or [plane, axis].")
    vol, _ = read_input(ctx)
    engine = get_engine(ctx)
    with cancel_hooks(engine.model, ctx.cancel):
        res = nem.reconstruct(vol, engine, point, ratio, float(ctx.params.get("noise_std", 0.0) or 0.0),
                              int(ctx.params.get("seed", 0) or 0), progress=_sub(ctx, 0.05, 0.9), cancel=ctx.cancel)
    ctx.progress(0.9, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes, _sub(ctx, 0.9, 1.0))
    ctx.progress(1.0, "Done")
    return doc


def task_train_probe(ctx):
    from ..results import Result
    from ..train.nemesis import train_probe
    pairs, n = [], 0
    while f"image_{n}" in ctx.inputs:
        if f"label_{n}" not in ctx.inputs:
            raise InputError(f"Input image_{n} has no label_{n}.")
        pairs.append((read_input(ctx, f"image_{n}")[0], read_input(ctx, f"label_{n}")[0]))
        n += 1
    if len(pairs) < 2:
        raise InputError("Training a probe needs at least two cases: inputs image_0/label_0, image_1/label_1, ...")
    engine = get_engine(ctx)
    out = Path(ctx.params.get("output") or ctx.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "probe.safetensors.partial"
    try:
        with cancel_hooks(engine.model, ctx.cancel):
            _, metrics = train_probe(pairs, engine, partial, holdout_fraction=float(ctx.params.get("holdout_fraction", 0.25)),
                                     epochs=int(ctx.params.get("epochs", 300)), seed=int(ctx.params.get("seed", 0)),
                                     progress=_sub(ctx, 0.05, 0.95), cancel=ctx.cancel)
        ctx.check()
        partial.replace(out / "probe.safetensors")
    finally:
        if partial.exists():
            partial.unlink()
    (out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    try:  # the CLI's model card for the probe, when that helper is available
        from ..train.nemesis import write_probe_card
        write_probe_card(out, engine)
    except Exception as exc:  # the probe itself is saved; the card is a convenience
        ctx.log(f"probe card not written: {exc}")
    res = Result()
    res.tables["auroc"] = [{"organ": k, "auroc_held_out": v.get("auroc"), "auroc_train": metrics["train"][k].get("auroc")}
                           for k, v in metrics["held_out"].items()]
    res.scalars["mean_auroc_held_out"] = metrics["held_out"]["mean"]["auroc"]
    res.notes["probe"] = str((out / "probe.safetensors").resolve())
    res.notes["cases"] = json.dumps(metrics["cases"])
    doc = write_outputs(res, ctx.output_dir, ctx.notes)
    ctx.progress(1.0, "Probe trained")
    return doc


# ------------------------------------------------------------------------------ test pipelines
def task_sleep(ctx):
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


def task_roundtrip(ctx):
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


NEMESIS_PIPELINES = {
    "nemesis.features": task_features,
    "nemesis.organs": task_organs,
    "nemesis.pca": task_pca,
    "nemesis.similarity": task_similarity,
    "nemesis.reconstruct": task_reconstruct,
    "nemesis.train_probe": task_train_probe,
}
TEST_PIPELINES = {"system.sleep": task_sleep, "system.roundtrip": task_roundtrip}
