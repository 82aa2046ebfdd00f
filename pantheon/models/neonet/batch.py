"""NeoNet (PNIPredict) in the batch runner: its :class:`~pantheon.batch.adapter.BatchPipeline` list, declared
by :mod:`pantheon.models.neonet.plugin`. torch is imported only inside ``load`` / ``run`` (the batch
worker processes), never when the list is made.
"""

from __future__ import annotations

from typing import Dict, List

from ...batch.adapter import BatchPipeline, pixel_limit
from ...results import Result


def _load_neonet_predict(options: dict):
    from ...pipelines import neonet
    from ...runtime import pick_device
    return {"models": neonet.load_neonet_models(options.get("neoseg"), None, options.get("pattennet"),
                                            components=("neoseg", "pattennet"),
                                            device=str(pick_device(options.get("device") or "cpu")))}


def _run_neonet_predict(volume, context, options, progress=None) -> Result:
    from ...pipelines import neonet
    return neonet.predict(volume, context["models"], progress=progress,
                          max_voxels=pixel_limit(options, "pni"))


def _neonet_findings(result: Result) -> Dict[str, float]:
    """PNI probability and tumour volume (mL)."""
    return {k: round(float(v), 4) for k, v in result.scalars.items()}


def pipelines() -> List[BatchPipeline]:
    return [
        BatchPipeline("neonet-predict", _load_neonet_predict, _run_neonet_predict,
                       "NeoNet PNI probability, tumour segmentation and attention heat map on liver MRI",
                       findings=_neonet_findings,
                       options={"neoseg": None, "pattennet": None, "device": "cpu"}, pixel_family="pni"),
    ]
