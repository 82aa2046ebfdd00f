"""MATHENA (ToothAnalysis) in the batch runner: its :class:`~pantheon.batch.adapter.BatchPipeline` list, declared
by :mod:`pantheon.models.mathena.plugin`. torch is imported only inside ``load`` / ``run`` (the batch
worker processes), never when the list is made.
"""

from __future__ import annotations

from typing import Dict, List

from ...batch.adapter import BatchPipeline, default_main_map, pixel_limit
from ...defaults import MATHENA_SCORE_THRESHOLD
from ...results import Result


def _load_mathena(options: dict):
    from ...pipelines import mathena as mt
    return {"models": mt.load_mathena_models(options.get("detector"), options.get("hena"))}


def _run_mathena(volume, context, options, progress=None) -> Result:
    from ...pipelines import mathena as mt
    thresh = options.get("score_thresh")
    return mt.analyze(volume, context["models"], None, MATHENA_SCORE_THRESHOLD if thresh is None else float(thresh),
                      progress=progress, max_pixels=pixel_limit(options, "tooth"))


def _mathena_findings(result: Result) -> Dict[str, float]:
    """Counts of detected teeth, teeth with caries and with an anomaly (and caries area when known)."""
    return {k: float(v) for k, v in result.scalars.items()}


def _mathena_main(result: Result):
    h = result.heatmaps.get("caries_probability")
    return ("caries_probability", h.volume, h.colormap, h.value_range) if h is not None else default_main_map(result)


def pipelines() -> List[BatchPipeline]:
    return [
        BatchPipeline("mathena-analyze", _load_mathena, _run_mathena,
                       "MATHENA ToothAnalysis on OPGs: teeth (FDI), caries, anomalies, stages",
                       findings=_mathena_findings, main_map=_mathena_main,
                       options={"detector": None, "hena": None, "score_thresh": MATHENA_SCORE_THRESHOLD},
                       pixel_family="tooth"),
    ]
