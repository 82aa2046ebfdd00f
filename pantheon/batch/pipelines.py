"""Batch pipelines: a registry ``name -> BatchPipeline``.

A :class:`BatchPipeline` has two callables:

- ``load(options) -> context``: runs ONCE per worker process (model weights, probe...);
- ``run(volume, context, options, progress) -> Result``: one case.

plus ``findings(result) -> {column: number}`` for the manifest, summary.csv and index.html
(default: every scalar, and the maximum of every heatmap as ``max_<name>``) and ``main_map``
(the heatmap or RGB volume overlaid on the thumbnail; default: the heatmap with the highest
maximum, else the first 3-component volume).

Adding MATHENA or NeoNet later is one :func:`register` call. Nothing here imports torch at module
level: the batch parent process never loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..errors import PantheonError
from ..results import Result


def default_findings(result: Result) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for name, h in result.heatmaps.items():
        out[f"max_{name}"] = round(float(np.nanmax(h.volume.array)), 4) if h.volume.array.size else float("nan")
    for name, v in result.scalars.items():
        out[name] = float(v)
    return out


def default_main_map(result: Result):
    """(name, volume, colormap, value range) to overlay on the thumbnail, or None."""
    if result.heatmaps:
        name, h = max(result.heatmaps.items(), key=lambda kv: float(np.nanmax(kv[1].volume.array)))
        return name, h.volume, h.colormap, h.value_range
    for name, v in result.volumes.items():
        if v.components == 3:
            return name, v, "rgb", (0.0, 1.0)
    for name, lab in result.labels.items():
        return name, lab.volume, "labels", (0.0, float(max([s.value for s in lab.segments] or [1])))
    return None


@dataclass
class BatchPipeline:
    name: str
    load: Callable[[dict], Any]
    run: Callable[..., Result]
    description: str = ""
    findings: Callable[[Result], Dict[str, float]] = default_findings
    main_map: Callable[[Result], Optional[tuple]] = default_main_map
    options: Dict[str, Any] = field(default_factory=dict)  # option name -> default
    #: the command family whose input limit applies (``pantheon.io.validate.COMMAND_PIXEL_LIMITS``)
    pixel_family: str = "nemesis"

    def __post_init__(self):
        self.options.setdefault("max_pixels", None)

    def max_pixels(self, options: dict) -> int:
        """The largest input in pixels (voxels): ``--max-pixels``, else the family's limit; 0 = none."""
        from ..io.validate import COMMAND_PIXEL_LIMITS
        value = options.get("max_pixels")
        return COMMAND_PIXEL_LIMITS[self.pixel_family] if value is None else int(value)


PIPELINES: Dict[str, BatchPipeline] = {}


def register(pipeline: BatchPipeline) -> BatchPipeline:
    PIPELINES[pipeline.name] = pipeline
    return pipeline


def get_pipeline(name: str) -> BatchPipeline:
    if name not in PIPELINES:
        raise PantheonError(f"Unknown batch pipeline {name!r}; choose from {', '.join(sorted(PIPELINES))}.")
    return PIPELINES[name]


# ---------------------------------------------------------------------------- NEMESIS
def _nemesis_engine(options: dict):
    from ..pipelines import nemesis as nem
    weights = options.get("weights")
    if weights and Path(weights).is_file() and not str(weights).lower().endswith(".safetensors"):
        from ..models.checkpoints import check_torch_file
        check_torch_file(weights)  # not a PyTorch file at all: our sentence, not torch's KeyError
    return nem.load_engine(options.get("weights"), options.get("device") or "auto",
                           options.get("precision") or "fp32", int(options.get("batch_size") or 1),
                           max_voxels=PIPELINES["nemesis-pca"].max_pixels(options))


def _load_nemesis_organs(options: dict):
    from ..pipelines import nemesis as nem
    engine = _nemesis_engine(options)
    return {"engine": engine, "probe": nem.load_probe_for(engine, options.get("probe"))}


def _run_nemesis_organs(volume, context, options, progress=None) -> Result:
    from ..pipelines import nemesis as nem
    return nem.organ_maps(volume, context["engine"], context["probe"], options.get("organs") or None,
                          progress=progress)


def _load_nemesis(options: dict):
    return {"engine": _nemesis_engine(options)}


def _run_nemesis_pca(volume, context, options, progress=None) -> Result:
    from ..pipelines import nemesis as nem
    return nem.pca(volume, context["engine"], progress=progress)


def _organ_findings(result: Result) -> Dict[str, float]:
    """Per-organ maximum presence probability (``max_<organ>``)."""
    return default_findings(result)


def _pca_main(result: Result):
    v = result.volumes.get("pca")
    return ("pca", v, "rgb", (0.0, 1.0)) if v is not None else default_main_map(result)


register(BatchPipeline("nemesis-organs", _load_nemesis_organs, _run_nemesis_organs,
                       "NEMESIS organ-presence probability heatmaps (8 BTCV organs)", findings=_organ_findings,
                       options={"weights": None, "probe": None, "device": "auto", "organs": None,
                                "precision": "fp32"}))
register(BatchPipeline("nemesis-pca", _load_nemesis, _run_nemesis_pca,
                       "NEMESIS PCA map of the token features (RGB volume)", main_map=_pca_main,
                       options={"weights": None, "device": "auto", "precision": "fp32"}))


# ---------------------------------------------------------------------------- NeoNet (PNIPredict)
def _load_neonet_predict(options: dict):
    from ..pipelines import neonet
    from ..pipelines.nemesis import pick_device
    return {"models": neonet.load_neonet_models(options.get("neoseg"), None, options.get("pattennet"),
                                                components=("neoseg", "pattennet"),
                                                device=str(pick_device(options.get("device") or "cpu")))}


def _run_neonet_predict(volume, context, options, progress=None) -> Result:
    from ..pipelines import neonet
    return neonet.predict(volume, context["models"], progress=progress,
                          max_voxels=PIPELINES["neonet-predict"].max_pixels(options))


def _neonet_findings(result: Result) -> Dict[str, float]:
    """PNI probability and tumour volume (mL)."""
    return {k: round(float(v), 4) for k, v in result.scalars.items()}


register(BatchPipeline("neonet-predict", _load_neonet_predict, _run_neonet_predict,
                       "NeoNet PNI probability, tumour segmentation and attention heat map on liver MRI",
                       findings=_neonet_findings,
                       options={"neoseg": None, "pattennet": None, "device": "cpu"}, pixel_family="pni"))


# ---------------------------------------------------------------------------- MATHENA (ToothAnalysis)
def _load_mathena(options: dict):
    from ..pipelines import mathena as mt
    return {"models": mt.load_mathena_models(options.get("detector"), options.get("hena"))}


def _run_mathena(volume, context, options, progress=None) -> Result:
    from ..pipelines import mathena as mt
    thresh = options.get("score_thresh")
    return mt.analyze(volume, context["models"], None, 0.3 if thresh is None else float(thresh), progress=progress,
                      max_pixels=PIPELINES["mathena-analyze"].max_pixels(options))


def _mathena_findings(result: Result) -> Dict[str, float]:
    """Counts of detected teeth, teeth with caries and with an anomaly (and caries area when known)."""
    return {k: float(v) for k, v in result.scalars.items()}


def _mathena_main(result: Result):
    h = result.heatmaps.get("caries_probability")
    return ("caries_probability", h.volume, h.colormap, h.value_range) if h is not None else default_main_map(result)


register(BatchPipeline("mathena-analyze", _load_mathena, _run_mathena,
                       "MATHENA ToothAnalysis on OPGs: teeth (FDI), caries, anomalies, stages",
                       findings=_mathena_findings, main_map=_mathena_main,
                       options={"detector": None, "hena": None, "score_thresh": 0.3}, pixel_family="tooth"))
