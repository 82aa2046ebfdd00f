"""Worker tasks for MATHENA (``mathena.*``): dental panoramic X-ray analysis.

Declared by :mod:`pantheon.models.mathena.plugin`; same contract as :mod:`pantheon.worker.tasks`: each task takes a
JobContext and returns the result document; heavy imports stay inside the functions.

``mathena.analyze`` (input ``volume``: one 2D OPG, grayscale or RGB, in any geometry):

- params: ``detector`` / ``hena`` (checkpoint path or model-card id; default the bundled demo
  cards), ``score_thresh`` (0..1, default 0.3), ``device`` (auto / cpu / cuda);
- outputs: labels ``teeth`` (value = FDI number), ``caries``, ``anomaly``; heatmaps
  ``caries_probability``, ``anomaly_probability`` (all on the input's exact grid); table
  ``findings`` (one row per tooth, with the pipeline's columns plus ``centre_lps_x/y/z`` - the
  centre of the tooth's box in LPS mm - and ``box_width_mm`` / ``box_height_mm``, so a viewer can
  centre on a tooth without reading the label map); ``files.chart``: the dental chart PNG,
  relative to ``output_dir``.

Loaded models stay in the worker's LRU cache under ``("mathena", detector, hena, device)`` where
a weights *file* is identified by (real path, size, mtime): a replaced file is reloaded.
"""

import json
from pathlib import Path

from ...defaults import MATHENA_SCORE_THRESHOLD
from ...errors import InputError
from ...runtime import cached, parameter_bytes, pick_device, weights_identity
from ...worker.tasks import progress_span, read_input, write_outputs

CHART_FILE = "chart.png"


def _param_str(ctx, name):
    value = ctx.params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InputError(f"'{name}' must be a checkpoint path or a model-card id (a string).")
    return value


def get_mathena_models(ctx):
    """MathenaModels for the request's ``detector`` / ``hena`` / ``device``, cached between requests."""
    from ...pipelines import mathena as mt
    detector, hena = _param_str(ctx, "detector"), _param_str(ctx, "hena")
    device = ctx.params.get("device") or "auto"
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise InputError(f"device must be auto, cpu or cuda, got {device!r}.")
    dev = pick_device(device)
    key = ("mathena", weights_identity(detector), weights_identity(hena), str(dev))

    def load():
        ctx.progress(0.0, "Loading the MATHENA models")
        models = mt.load_mathena_models(detector, hena)
        models.detector.to(dev).eval()
        models.hena.to(dev).eval()
        return models
    models, hit = cached(ctx.cache, key, load, lambda m: parameter_bytes(m.detector, m.hena))
    ctx.notes["model_cache"] = "hit" if hit else "miss"
    return models


def add_tooth_geometry(volume, rows):
    """Add ``centre_lps_x/y/z`` and ``box_width_mm`` / ``box_height_mm`` to findings rows (in place).

    Boxes are in source pixel-edge coordinates (pixel ``c`` spans ``[c, c + 1]``), so the box
    centre is the continuous index ``(x0 + x1) / 2 - 0.5``; the volume's geometry (spacing,
    origin, direction) maps it to LPS millimetres, like every other output of this request.
    """
    import numpy as np
    if not rows:
        return rows
    ijk = np.array([[(r["box_x0"] + r["box_x1"]) / 2.0 - 0.5, (r["box_y0"] + r["box_y1"]) / 2.0 - 0.5, 0.0]
                    for r in rows], dtype=np.float64)
    lps = volume.ijk_to_world(ijk)
    for r, p in zip(rows, lps):
        r["centre_lps_x"], r["centre_lps_y"], r["centre_lps_z"] = (round(float(v), 4) for v in p)
        r["box_width_mm"] = round(float((r["box_x1"] - r["box_x0"]) * volume.spacing[0]), 4)
        r["box_height_mm"] = round(float((r["box_y1"] - r["box_y0"]) * volume.spacing[1]), 4)
    return rows


def task_analyze(ctx):
    from ...pipelines import mathena as mt
    try:
        score = float(ctx.params.get("score_thresh", MATHENA_SCORE_THRESHOLD))
    except (TypeError, ValueError):
        raise InputError(f"score_thresh must be a number, got {ctx.params.get('score_thresh')!r}.") from None
    if not 0.0 <= score <= 1.0:
        raise InputError(f"score_thresh must be between 0 and 1, got {score:g}.")
    ctx.progress(0.0, "Reading the image")
    vol, _ = read_input(ctx)
    mt.opg_to_gray(vol)  # a bad input fails before any model is loaded
    models = get_mathena_models(ctx)
    res = mt.analyze(vol, models, None, score, progress=progress_span(ctx, 0.05, 0.85), cancel=ctx.cancel)
    add_tooth_geometry(vol, res.tables.get("findings", []))
    ctx.progress(0.85, "Writing results")
    doc = write_outputs(res, ctx.output_dir, ctx.notes)
    ctx.progress(0.92, "Drawing the dental chart")
    out = Path(ctx.output_dir)
    mt.dental_chart(res, out / CHART_FILE)
    doc["files"] = {"chart": CHART_FILE}
    on_disk = {k: v for k, v in doc.items() if k != "output_dir"}
    (out / "result.json").write_text(json.dumps(on_disk, indent=2) + "\n")
    ctx.progress(1.0, "Done")
    return doc


TASKS = {
    "mathena.analyze": task_analyze,
}
