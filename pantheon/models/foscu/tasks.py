"""Worker tasks for FOSCU's Duo-Diffusion (``foscu.*``), declared by :mod:`pantheon.models.foscu.plugin`;
same contract as :mod:`pantheon.worker.tasks` (a JobContext in, the result document out; heavy
imports inside the functions).

``foscu.generate``
    no inputs. params: ``output`` (folder, required), ``n`` (pairs, 1-1000), ``seed`` (default 0;
    pair n uses seed + n), ``label_steps`` / ``image_steps`` (DDIM, default 50), ``labelgen`` and
    ``lldm`` (weights path or model-card id; default the demo cards), ``device`` (3D-LLDM's).
    result: ``summary`` (``folder``, ``pairs``, ``made_now``, ``csv``, ``index``, ``anatomy_flagged``:
    pairs whose every label draw failed the anatomy check) and the counts as scalars. Resumable:
    the same request again adds only the missing pairs.

Both models are cached in the worker's LRU under ``("foscu-labelgen" | "lldm", weights identity,
device)`` (note ``model_cache``: hit / miss).
"""

from ...defaults import NEOGEN_DDIM_STEPS, NEOGEN_MAX_DDIM_STEPS
from ...errors import InputError
from ...runtime import cached, parameter_bytes, pick_device, weights_identity
from ...worker.tasks import progress_span

#: a folder of pairs is a dataset, not a whole cohort: a typo (10000) must not run for days
MAX_PAIRS = 1000


def _whole(ctx, name, default, low, high):
    value = ctx.params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"'{name}' must be a whole number from {low} to {high}, got {value!r}.")
    return value


def task_generate(ctx):
    from pathlib import Path

    from ..lldm.synthesis import load_model
    from .labelgen import load_labelgen_argument
    from .pairs import generate_pairs
    output = ctx.params.get("output")
    if not isinstance(output, str) or not output.strip():
        raise InputError("'output' must name the folder the pairs are written into.")
    n = _whole(ctx, "n", 1, 1, MAX_PAIRS)
    seed = _whole(ctx, "seed", 0, 0, 2 ** 31 - 1)
    label_steps = _whole(ctx, "label_steps", NEOGEN_DDIM_STEPS, 1, NEOGEN_MAX_DDIM_STEPS)
    image_steps = _whole(ctx, "image_steps", NEOGEN_DDIM_STEPS, 1, NEOGEN_MAX_DDIM_STEPS)
    if Path(output).exists() and not Path(output).is_dir():
        raise InputError(f"{output} exists and is not a folder.")
    device = str(pick_device(ctx.params.get("device") or "auto"))
    labelgen_w, lldm_w = ctx.params.get("labelgen") or None, ctx.params.get("lldm") or None
    ctx.progress(0.0, "Loading the label generator and 3D-LLDM")
    # the label sampler draws its noise on the CPU (seeded pairs are the same on every machine)
    (labelgen, _, demo_l), hit_l = cached(ctx.cache, ("foscu-labelgen", weights_identity(labelgen_w), "cpu"),
                                          lambda: load_labelgen_argument(labelgen_w, "cpu"),
                                          lambda e: parameter_bytes(e[0]))
    (lldm, _, demo_i), hit_i = cached(ctx.cache, ("lldm", weights_identity(lldm_w), device),
                                      lambda: load_model(lldm_w, device), lambda e: parameter_bytes(e[0]))
    ctx.notes["model_cache"] = "hit" if hit_l and hit_i else "miss"
    summary = generate_pairs(n, output, labelgen, lldm, seed=seed, label_steps=label_steps, image_steps=image_steps,
                             progress=progress_span(ctx, 0.02, 1.0), cancel=ctx.cancel, demo=demo_l or demo_i)
    summary["index"] = str(Path(summary["folder"]) / "index.html")
    ctx.progress(1.0, "Done")
    counts = {k: summary[k] for k in ("pairs", "made_now", "anatomy_flagged")}
    return {"outputs": {}, "scalars": counts, "tables": {},
            "notes": dict(ctx.notes), "output_dir": ctx.output_dir, "summary": summary}


TASKS = {"foscu.generate": task_generate}
