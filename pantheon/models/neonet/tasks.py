"""Worker tasks for NeoNet (``pni.*``): PNI prediction and NeoGen synthesis on MRI.

Declared by :mod:`pantheon.models.neonet.plugin`; same contract as :mod:`pantheon.worker.tasks`: each task takes a
JobContext and returns the result document; heavy imports stay inside the functions.

``pni.predict``
    inputs: ``volume`` (the MRI), optional ``tumour_mask`` (label volume on the MRI's grid: binary =
    tumour, or NeoSeg ids 1 liver / 2 tumour; NeoSeg is skipped when given).
    params: ``neoseg``, ``pattennet`` (weights path or model-card id; default the demo cards),
    ``device`` (auto | cpu | cuda).
    result: labels ``tumour``, heatmap ``pni_attention``, scalars ``pni_probability`` and
    ``tumour_volume_ml``, table ``crop_box``, notes (``crop_box`` JSON in RAS, caveats, weights).
``pni.synthesize``
    input: ``mask`` (label volume: 1 liver, 2 tumour; a binary map is a tumour).
    params: ``neogen``, ``device``, ``steps`` (DDIM steps, default 50), ``seed`` (default 0),
    ``pni`` (class 0/1, default 1), ``n`` (patches, default 1).
    result: volumes ``synthetic_mri_<i>`` on the mask's grid, table/notes ``crop_box``.

Models are cached per component in the worker's LRU under ``("neonet", kind, weights, file
stamp, device)``: a second request with the same weights does not reload them (note
``model_cache``: hit / miss), and a changed weights file (size or mtime) is reloaded.
"""

import dataclasses

from ...defaults import NEOGEN_DDIM_STEPS, NEOGEN_MAX_DDIM_STEPS, NEOGEN_MAX_PATCHES
from ...errors import InputError
from ...runtime import cached, parameter_bytes, pick_device, weights_identity
from ...worker.tasks import progress_span, read_input, write_outputs

PARAM_OF = {"neoseg": "neoseg", "neogen": "neogen", "pattennet": "pattennet"}
MAX_STEPS = NEOGEN_MAX_DDIM_STEPS
MAX_PATCHES = NEOGEN_MAX_PATCHES


def _device(ctx):
    return str(pick_device(ctx.params.get("device") or "auto"))


def get_models(ctx, kinds):
    """A NeoNetModels holding the ``kinds`` components, each from the cache when possible."""
    from ...pipelines.neonet import load_neonet_models
    device = _device(ctx)
    loaded, ids, demo, base, hits = {}, {}, False, None, []
    for kind in kinds:
        arg = ctx.params.get(PARAM_OF[kind]) or None
        if arg is not None and not isinstance(arg, str):
            raise InputError(f"'{kind}' must be a weights path or a model-card id, got {arg!r}.")
        key = ("neonet", kind, weights_identity(arg), device)

        def load(kind=kind, arg=arg):
            ctx.progress(0.0, f"Loading {kind}")
            try:
                models = load_neonet_models(**{kind: arg}, components=(kind,), device=device)
            except ValueError as exc:
                raise InputError(str(exc)) from exc
            return models, getattr(models, kind)
        entry, hit = cached(ctx.cache, key, load, lambda e: parameter_bytes(e[1]))
        hits.append(hit)
        models, module = entry
        base = base or models
        loaded[kind] = module
        ids[kind] = models.ids.get(kind, kind)
        demo = demo or bool(models.demo)
    ctx.notes["model_cache"] = "hit" if all(hits) else "miss"
    for kind in ("neoseg", "neogen", "pattennet"):
        loaded.setdefault(kind, None)
    return dataclasses.replace(base, ids=ids, demo=demo, **loaded)


def _int_param(ctx, name, default, lo, hi):
    value = ctx.params.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InputError(f"'{name}' must be a whole number, got {value!r}.")
    value = int(value)
    if not lo <= value <= hi:
        raise InputError(f"'{name}' must be between {lo} and {hi}, got {value}.")
    return value


def task_predict(ctx):
    from ...pipelines import neonet
    vol, _ = read_input(ctx, "volume")
    mask = read_input(ctx, "tumour_mask")[0] if ctx.inputs.get("tumour_mask") else None
    kinds = ("pattennet",) if mask is not None else ("neoseg", "pattennet")
    models = get_models(ctx, kinds)
    res = neonet.predict(vol, models, tumour_mask=mask, progress=progress_span(ctx, 0.05, 0.9), cancel=ctx.cancel)
    ctx.progress(0.9, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes)
    ctx.progress(1.0, "Done")
    return doc


def task_synthesize(ctx):
    from ...pipelines import neonet
    steps = _int_param(ctx, "steps", NEOGEN_DDIM_STEPS, 1, MAX_STEPS)
    seed = _int_param(ctx, "seed", 0, 0, 2 ** 31 - 1)
    pni = _int_param(ctx, "pni", 1, 0, 1)
    n = _int_param(ctx, "n", 1, 1, MAX_PATCHES)
    labels, _ = read_input(ctx, "mask")
    models = get_models(ctx, ("neogen",))
    res = neonet.synthesize(labels, models, pni=pni, n=n, steps=steps, seed=seed,
                            progress=progress_span(ctx, 0.05, 0.9), cancel=ctx.cancel)
    ctx.progress(0.9, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes)
    ctx.progress(1.0, "Done")
    return doc


TASKS = {
    "pni.predict": task_predict,
    "pni.synthesize": task_synthesize,
}
