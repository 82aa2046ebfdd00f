"""What a model gives the batch runner: a :class:`BatchPipeline` (load once per worker process,
run per case, the findings and the thumbnail's map). Each model's plug-in lists its own
(``batch_pipelines`` in :mod:`pantheon.plugins`); :mod:`pantheon.batch.pipelines` collects them.

A :class:`BatchPipeline` has two callables:

- ``load(options) -> context``: runs ONCE per worker process (model weights, probe...);
- ``run(volume, context, options, progress) -> Result``: one case.

plus ``findings(result) -> {column: number}`` for the manifest, summary.csv and index.html
(default: every scalar, and the maximum of every heatmap as ``max_<name>``) and ``main_map``
(the heatmap or RGB volume overlaid on the thumbnail; default: the heatmap with the highest
maximum, else the first 3-component volume). Nothing here imports torch: the batch parent
process never loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

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
        return pixel_limit(options, self.pixel_family)


def pixel_limit(options: dict, family: str) -> int:
    """``options["max_pixels"]`` when given, else the command family's limit
    (``pantheon.io.validate.COMMAND_PIXEL_LIMITS``); 0 = no limit."""
    from ..io.validate import COMMAND_PIXEL_LIMITS
    value = options.get("max_pixels")
    return COMMAND_PIXEL_LIMITS[family] if value is None else int(value)
