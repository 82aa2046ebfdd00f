"""Worker tasks for 3D-LLDM (``lldm.*``), declared by :mod:`pantheon.models.lldm.plugin`; same
contract as :mod:`pantheon.worker.tasks` (a JobContext in, the result document out; heavy imports
inside the functions).

``lldm.synthesize``
    input: ``labels`` (label map: 1 liver, 2 portal vein, 3 hepatic veins, 4 HCC, or named segments).
    params: ``weights`` (path or model-card id; default the demo card), ``device``, ``steps`` (DDIM,
    default 50), ``seed`` (default 0), ``scale`` (ControlNet scale; default the weights' own), lesion
    edits ``remove_hcc`` (list of HCC numbers, 1 = largest), ``grow_hcc_mm`` with ``grow_hcc``
    (numbers; default all) and ``add_hcc`` (list of ``[L, P, S, diameter_mm]``, LPS mm), ``use`` (the
    labels that steer, a list of names; default all, see :func:`~.synthesis.check_use`).
    result: volume ``synthetic_mri`` and label map ``labels`` (the conditioning, after the edits) on
    the input's grid.

The model is cached in the worker's LRU under ``("lldm", weights identity, device)`` (note
``model_cache``: hit / miss).
"""

from ...defaults import NEOGEN_DDIM_STEPS, NEOGEN_MAX_DDIM_STEPS
from ...errors import InputError
from ...runtime import cached, parameter_bytes, pick_device, weights_identity
from ...worker.tasks import progress_span, read_input, write_outputs


def _ints(ctx, name):
    value = ctx.params.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError(f"'{name}' must be a list of HCC numbers (1 = the largest), got {value!r}.")
    return value


def _number(ctx, name, default=None):
    value = ctx.params.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InputError(f"'{name}' must be a number, got {value!r}.")
    return value


def task_synthesize(ctx):
    from .edits import apply_edits
    from .synthesis import check_use, lldm_labels, load_model, synthesize
    steps = _number(ctx, "steps", NEOGEN_DDIM_STEPS)
    seed = _number(ctx, "seed", 0)
    scale = _number(ctx, "scale")
    if not isinstance(steps, int) or not 1 <= steps <= NEOGEN_MAX_DDIM_STEPS:
        raise InputError(f"'steps' must be a whole number from 1 to {NEOGEN_MAX_DDIM_STEPS}, got {steps!r}.")
    add = ctx.params.get("add_hcc") or []
    if not isinstance(add, list) or not all(isinstance(a, (list, tuple)) and len(a) == 4 for a in add):
        raise InputError("'add_hcc' must be a list of [L, P, S, diameter_mm].")
    use = check_use(ctx.params.get("use"))
    labels, _ = read_input(ctx, "labels")
    remove, grow_which, grow_mm = _ints(ctx, "remove_hcc"), _ints(ctx, "grow_hcc"), _number(ctx, "grow_hcc_mm", 0)
    if remove or grow_mm or add:  # edits are checked, and refused, before any model load
        labels = labels.with_array(apply_edits(labels, lldm_labels(labels), remove=remove, grow_mm=grow_mm or 0.0,
                                               grow_which=grow_which, add=[(a[:3], a[3]) for a in add]))
    else:
        lldm_labels(labels)
    device = str(pick_device(ctx.params.get("device") or "auto"))
    weights = ctx.params.get("weights") or None

    def load():
        ctx.progress(0.0, "Loading 3D-LLDM")
        return load_model(weights, device)
    (model, wid, demo), hit = cached(ctx.cache, ("lldm", weights_identity(weights), device), load,
                                     lambda e: parameter_bytes(e[0]))
    ctx.notes["model_cache"] = "hit" if hit else "miss"
    res = synthesize(labels, model, steps=steps, seed=int(seed), conditioning_scale=scale,
                     progress=progress_span(ctx, 0.05, 0.9), cancel=ctx.cancel, weights_id=wid, demo=demo, use=use)
    ctx.progress(0.9, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes, progress_span(ctx, 0.9, 1.0))
    ctx.progress(1.0, "Done")
    return doc


TASKS = {"lldm.synthesize": task_synthesize}
