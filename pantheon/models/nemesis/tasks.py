"""Worker tasks for NEMESIS (``nemesis.*``), declared by :mod:`pantheon.models.nemesis.plugin`.

Each task takes a :class:`pantheon.worker.server.JobContext` and returns the result document
(see :mod:`pantheon.worker.tasks`); numpy, torch and the pipelines are imported inside the
functions. Warm caches (the worker's LRU): ``("engine", weights, file identity, device,
precision)`` -> NemesisEngine; ``("probe", probe, engine sha)`` -> OrganProbe; ``("features",
content hash, encoder sha, precision, stride)`` -> FeatureGrid (one per scan: a similarity over
another CT keeps both scans'); ``("strokes", content hash, encoder sha, precision, stride)`` -> the
Volume read the first time and the last stroke Result (warm updates).
"""

import json
from contextlib import contextmanager
from pathlib import Path

from ...defaults import NEMESIS_MASK_RATIO, PROBE_EPOCHS, PROBE_HOLDOUT_FRACTION
from ...errors import Cancelled, InputError
from ...io.atomic import atomic_path
from ...outputs import json_safe
from ...runtime import cached, parameter_bytes, weights_identity
from ...worker.tasks import progress_span, read_input, write_outputs


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
    from ...pipelines import nemesis as nem
    weights = ctx.params.get("weights") or None
    device = ctx.params.get("device") or "auto"
    precision = ctx.params.get("precision") or "fp32"
    key = ("engine", weights_identity(weights), device, precision)

    def load():
        ctx.progress(0.0, "Loading the model")
        try:
            return nem.load_engine(weights, device, precision)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    engine, hit = cached(ctx.cache, key, load, lambda e: parameter_bytes(e.model))
    ctx.notes["model_cache"] = "hit" if hit else "miss"
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
    from ...pipelines import nemesis as nem
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


# ------------------------------------------------------------------------------ tasks
def task_features(ctx):
    from ...pipelines import nemesis as nem
    from ...results import Result
    vol, vhash = read_input(ctx)
    engine = get_engine(ctx)
    with cancel_hooks(engine.model, ctx.cancel):
        fg = get_features(ctx, engine, vol, vhash, progress_span(ctx, 0.05, 0.95))
    res = Result()
    res.scalars.update({"grid_d": fg.tokens.shape[0], "grid_h": fg.tokens.shape[1], "grid_w": fg.tokens.shape[2],
                        "embed_dim": fg.tokens.shape[3]})
    res.notes.update(nem.run_notes(engine, fg))
    res.notes["grid"] = "x".join(map(str, fg.tokens.shape))
    doc = write_outputs(res, ctx.output_dir, ctx.notes)
    ctx.progress(1.0, "Features ready")
    return doc


def _feature_task(ctx, run):
    vol, vhash = read_input(ctx)
    engine = get_engine(ctx)
    with cancel_hooks(engine.model, ctx.cancel):
        fg = get_features(ctx, engine, vol, vhash, progress_span(ctx, 0.05, 0.85))
        res = run(vol, engine, fg, progress_span(ctx, 0.85, 0.95))
    ctx.progress(0.95, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes, progress_span(ctx, 0.95, 1.0))
    ctx.progress(1.0, "Done")
    return doc


def task_organs(ctx):
    from ...pipelines import nemesis as nem
    organs = ctx.params.get("organs")
    if organs is not None and (not isinstance(organs, list) or not all(isinstance(o, str) for o in organs)):
        raise InputError("'organs' must be a list of organ names.")

    def run(vol, engine, fg, progress):
        probe_arg = ctx.params.get("probe") or None
        key = ("probe", weights_identity(probe_arg), engine.weights_sha256)
        probe, _ = cached(ctx.cache, key, lambda: nem.load_probe_for(engine, probe_arg), parameter_bytes)
        return nem.organ_maps(vol, engine, probe, organs, feature_grid=fg, progress=progress, cancel=ctx.cancel)
    return _feature_task(ctx, run)


def task_pca(ctx):
    from ...pipelines import nemesis as nem
    return _feature_task(ctx, lambda vol, engine, fg, progress: nem.pca(
        vol, engine, feature_grid=fg, progress=progress, cancel=ctx.cancel))


def task_similarity(ctx):
    """Similarity to the token at ``point_lps`` (LPS mm) of input "volume": over that CT, or, with
    an input "target", over the target CT (on its voxels, with its best match; see
    :mod:`pantheon.models.nemesis.compare`)."""
    from ...pipelines import nemesis as nem
    point = _point(ctx)
    if ctx.inputs.get("target"):
        return _similarity_in_target(ctx, point)
    return _feature_task(ctx, lambda vol, engine, fg, progress: nem.similarity(
        vol, engine, point, feature_grid=fg, progress=progress, cancel=ctx.cancel))


def _check_inside(volume, point_lps) -> None:
    """The query point must lie in the query CT: said before any model load or encoder pass (the
    same test as :func:`pantheon.models.nemesis.compare.query_at`, which runs again later)."""
    import numpy as np

    from ...pipelines import nemesis as nem
    point = nem.check_point(point_lps)
    ijk = volume.world_to_ijk(point)[0]
    if np.any(ijk < -0.5) or np.any(ijk > np.array(volume.size_ijk) - 0.5):
        ras = ", ".join(f"{v:.1f}" for v in point * [-1, -1, 1])
        raise InputError(f"The point (RAS {ras} mm) lies outside the query CT; place it inside that image.")


def _similarity_in_target(ctx, point):
    """Query token from the first CT's cached features, map over the target's cached features: a
    moved point costs no encoder pass for either scan. Notes ``query_feature_cache`` and
    ``target_feature_cache`` say which scan's features were cached; ``feature_cache`` is "hit" only
    when both were (no encoder pass at all)."""
    from ...pipelines import nemesis as nem
    from .compare import query_at, similarity_in
    vol, vhash = read_input(ctx)
    _check_inside(vol, point)
    target, thash = read_input(ctx, "target")
    engine = get_engine(ctx)
    stride = _stride(ctx.params.get("stride"))
    key = ("features", thash, engine.weights_sha256 or engine.weights_id, engine.precision, str(stride))
    if ctx.cache.get(key) is None:  # checked once per target, named as the target (not "input")
        nem.check_ct(target, "target", max_voxels=nem._limit(engine))
    with cancel_hooks(engine.model, ctx.cancel):
        fg = get_features(ctx, engine, vol, vhash, progress_span(ctx, 0.05, 0.45))
        ctx.notes["query_feature_cache"] = ctx.notes["feature_cache"]
        target_fg = get_features(ctx, engine, target, thash, progress_span(ctx, 0.45, 0.85))
        ctx.notes["target_feature_cache"] = ctx.notes["feature_cache"]
        both = ctx.notes["query_feature_cache"] == ctx.notes["target_feature_cache"] == "hit"
        ctx.notes["feature_cache"] = "hit" if both else "miss"
        query = query_at(vol, engine, point, feature_grid=fg)
        res = similarity_in(target, engine, query, feature_grid=target_fg, progress=progress_span(ctx, 0.85, 0.95),
                            cancel=ctx.cancel)
    ctx.check()
    ctx.progress(0.95, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes, progress_span(ctx, 0.95, 1.0))
    ctx.progress(1.0, "Done")
    return doc


def _mask_ratio(ctx):
    ratio = ctx.params.get("mask_ratio", list(NEMESIS_MASK_RATIO))
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        return float(ratio)
    if isinstance(ratio, (list, tuple)) and len(ratio) == 2 and all(isinstance(v, (int, float)) for v in ratio):
        return (float(ratio[0]), float(ratio[1]))
    raise InputError("'mask_ratio' must be a number or [plane, axis].")


def task_reconstruct(ctx):
    from ...pipelines import nemesis as nem
    point = _point(ctx)
    ratio = _mask_ratio(ctx)
    vol, _ = read_input(ctx)
    engine = get_engine(ctx)
    with cancel_hooks(engine.model, ctx.cancel):
        res = nem.reconstruct(vol, engine, point, ratio, float(ctx.params.get("noise_std", 0.0) or 0.0),
                              int(ctx.params.get("seed", 0) or 0), progress=progress_span(ctx, 0.05, 0.9),
                              cancel=ctx.cancel)
    ctx.progress(0.9, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes, progress_span(ctx, 0.9, 1.0))
    ctx.progress(1.0, "Done")
    return doc


def task_atypicality(ctx):
    """Masked-reconstruction error over the whole CT (:mod:`pantheon.models.nemesis.atypicality`):
    parameters ``draws`` (default 4), ``mask_ratio``, ``seed``. Every superpatch runs the whole model
    ``draws`` times: no cached features to reuse."""
    from .atypicality import DEFAULT_DRAWS, atypicality
    draws = ctx.params.get("draws", DEFAULT_DRAWS)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise InputError(f"'draws' must be a whole number of mask draws, at least 1; got {draws!r}.")
    seed = ctx.params.get("seed", 0) or 0
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"'seed' must be a whole number >= 0, got {seed!r}.")
    ratio = _mask_ratio(ctx)
    vol, _ = read_input(ctx)
    engine = get_engine(ctx)
    with cancel_hooks(engine.model, ctx.cancel):
        try:
            res = atypicality(vol, engine, draws, ratio, seed, progress=progress_span(ctx, 0.05, 0.9),
                              cancel=ctx.cancel)
        except ValueError as exc:  # e.g. a mask ratio out of range: the pipeline's sentence
            raise InputError(str(exc)) from exc
    ctx.check()
    ctx.progress(0.9, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes, progress_span(ctx, 0.9, 1.0))
    ctx.progress(1.0, "Done")
    return doc


def _warm_bytes(vol, fg=None) -> int:
    """What a stroke segmentation keeps alive between updates, roughly: the CT and its canonical copy,
    the float32 model array, the int16 local means, the uint8 result and float32 probability map on
    the input grid, and the standardized token features (about the size of the tokens)."""
    n = int(vol.array.size)
    return 2 * int(vol.array.nbytes) + n * (4 + 2 + 1 + 4) + (int(fg.tokens.nbytes) if fg is not None else 0)


def task_strokes(ctx):
    """Segment the structure marked by the stroke map (input "strokes": 1 foreground, 2 background,
    0 unlabelled, on the CT's grid). The Volume first read for this CT and the last Result stay in
    the worker cache, so the next update for the same CT passes that same Volume object and
    ``previous=``: no encoder pass and no re-preparation (``strokes_cache``: hit). Parameter
    ``probability`` (default true): also write the probability map."""
    from .strokes import check_strokes, segment_from_strokes
    vol, vhash = read_input(ctx)
    strokes, _ = read_input(ctx, "strokes", cache=False)  # new with every stroke: not worth a cache slot
    check_strokes(vol, strokes)  # a wrong stroke map costs no model load
    engine = get_engine(ctx)
    stride = _stride(ctx.params.get("stride"))
    want_map = bool(ctx.params.get("probability", True))  # the panel shows the segment only: skip the map
    key = ("strokes", vhash, engine.weights_sha256 or engine.weights_id, engine.precision, str(stride))
    warm = ctx.cache.get(key)
    with cancel_hooks(engine.model, ctx.cancel):
        if warm is not None:
            ctx.notes["strokes_cache"] = "hit"
            # the first Volume object: the core recognises its own prepared state by identity
            vol, previous, nbytes = warm
            fg_key = ("features", vhash, engine.weights_sha256 or engine.weights_id, engine.precision, str(stride))
            # only used should the core have dropped its warm state: then no encoder pass either
            fg = ctx.cache.get(fg_key)
            res = segment_from_strokes(vol, engine, strokes, feature_grid=fg, previous=previous,
                                       progress=progress_span(ctx, 0.05, 0.9), cancel=ctx.cancel, stride=stride,
                                       probability_map=want_map)
        else:
            ctx.notes["strokes_cache"] = "miss"
            fg = get_features(ctx, engine, vol, vhash, progress_span(ctx, 0.05, 0.8))
            res = segment_from_strokes(vol, engine, strokes, feature_grid=fg, progress=progress_span(ctx, 0.8, 0.9),
                                       cancel=ctx.cancel, stride=stride, probability_map=want_map)
            nbytes = _warm_bytes(vol, fg)
    ctx.cache.put(key, (vol, res, nbytes), nbytes)
    ctx.check()
    ctx.progress(0.9, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes, progress_span(ctx, 0.9, 1.0))
    ctx.progress(1.0, "Done")
    return doc


def task_train_probe(ctx):
    from ...results import Result
    from ...train.nemesis import train_probe
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
    # probe.safetensors appears only once training finished and was not cancelled.
    with atomic_path(out / "probe.safetensors") as partial:
        with cancel_hooks(engine.model, ctx.cancel):
            _, metrics = train_probe(pairs, engine, partial,
                                     holdout_fraction=float(ctx.params.get("holdout_fraction", PROBE_HOLDOUT_FRACTION)),
                                     epochs=int(ctx.params.get("epochs", PROBE_EPOCHS)),
                                     seed=int(ctx.params.get("seed", 0)),
                                     progress=progress_span(ctx, 0.05, 0.95), cancel=ctx.cancel)
        ctx.check()
    (out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    try:  # the CLI's model card for the probe, when that helper is available
        from ...train.nemesis import write_probe_card
        write_probe_card(out, engine)
    except Exception as exc:  # the probe itself is saved; the card is a convenience
        ctx.log(f"probe card not written: {exc}")
    res = Result()
    res.tables["auroc"] = [{"organ": k, "auroc_held_out": v.get("auroc"),
                            "auroc_train": metrics["train"][k].get("auroc")}
                           for k, v in metrics["held_out"].items()]
    res.scalars["mean_auroc_held_out"] = metrics["held_out"]["mean"]["auroc"]
    res.notes["probe"] = str((out / "probe.safetensors").resolve())
    res.notes["cases"] = json.dumps(metrics["cases"])
    doc = write_outputs(res, ctx.output_dir, ctx.notes)
    ctx.progress(1.0, "Probe trained")
    return doc


TASKS = {
    "nemesis.features": task_features,
    "nemesis.organs": task_organs,
    "nemesis.pca": task_pca,
    "nemesis.similarity": task_similarity,
    "nemesis.reconstruct": task_reconstruct,
    "nemesis.atypicality": task_atypicality,
    "nemesis.strokes": task_strokes,
    "nemesis.train_probe": task_train_probe,
}
