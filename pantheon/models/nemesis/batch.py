"""NEMESIS in the batch runner: its :class:`~pantheon.batch.adapter.BatchPipeline` list, declared
by :mod:`pantheon.models.nemesis.plugin`. torch is imported only inside ``load`` / ``run`` (the batch
worker processes), never when the list is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ...batch.adapter import BatchPipeline, default_findings, default_main_map, pixel_limit
from ...results import Result


def _nemesis_engine(options: dict):
    from ...pipelines import nemesis as nem
    weights = options.get("weights")
    if weights and Path(weights).is_file() and not str(weights).lower().endswith(".safetensors"):
        from ..checkpoints import check_torch_file
        check_torch_file(weights)  # not a PyTorch file at all: our sentence, not torch's KeyError
    return nem.load_engine(options.get("weights"), options.get("device") or "auto",
                           options.get("precision") or "fp32", int(options.get("batch_size") or 1),
                           max_voxels=pixel_limit(options, "nemesis"))


def _load_nemesis_organs(options: dict):
    from ...pipelines import nemesis as nem
    engine = _nemesis_engine(options)
    return {"engine": engine, "probe": nem.load_probe_for(engine, options.get("probe"))}


def _run_nemesis_organs(volume, context, options, progress=None) -> Result:
    from ...pipelines import nemesis as nem
    return nem.organ_maps(volume, context["engine"], context["probe"], options.get("organs") or None,
                          progress=progress)


def _load_nemesis(options: dict):
    return {"engine": _nemesis_engine(options)}


def _run_nemesis_pca(volume, context, options, progress=None) -> Result:
    from ...pipelines import nemesis as nem
    return nem.pca(volume, context["engine"], progress=progress)


def _organ_findings(result: Result) -> Dict[str, float]:
    """Per-organ maximum presence probability (``max_<organ>``)."""
    return default_findings(result)


def _pca_main(result: Result):
    v = result.volumes.get("pca")
    return ("pca", v, "rgb", (0.0, 1.0)) if v is not None else default_main_map(result)


def pipelines() -> List[BatchPipeline]:
    return [
        BatchPipeline("nemesis-organs", _load_nemesis_organs, _run_nemesis_organs,
                       "NEMESIS organ-presence probability heatmaps (8 BTCV organs)", findings=_organ_findings,
                       options={"weights": None, "probe": None, "device": "auto", "organs": None,
                                "precision": "fp32"}),
        BatchPipeline("nemesis-pca", _load_nemesis, _run_nemesis_pca,
                       "NEMESIS PCA map of the token features (RGB volume)", main_map=_pca_main,
                       options={"weights": None, "device": "auto", "precision": "fp32"}),
    ]
