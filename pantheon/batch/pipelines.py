"""Batch pipelines by name: every model plug-in's :class:`~pantheon.batch.adapter.BatchPipeline`
(``batch_pipelines`` in :mod:`pantheon.plugins`), collected on first use. Nothing here imports
torch: the batch parent process never loads a model.
"""

from __future__ import annotations

from typing import Dict, List

from ..errors import PantheonError
from .adapter import BatchPipeline, default_findings, default_main_map  # noqa: F401  (the batch API)

#: name -> pipeline; filled from the plug-ins on first use (tests add their own with ``register``)
PIPELINES: Dict[str, BatchPipeline] = {}
_collected = False


def _collect() -> None:
    global _collected
    if _collected:
        return
    _collected = True
    from ..plugins import plugins
    for plugin in plugins():
        for pipeline in plugin.batch():
            if pipeline.name in PIPELINES:
                raise PantheonError(f"The batch pipeline {pipeline.name!r} is declared twice.")
            PIPELINES[pipeline.name] = pipeline


def register(pipeline: BatchPipeline) -> BatchPipeline:
    _collect()
    PIPELINES[pipeline.name] = pipeline
    return pipeline


def pipeline_names() -> List[str]:
    """Every batch pipeline's name, sorted (the ``pantheon batch`` choices)."""
    _collect()
    return sorted(PIPELINES)


def get_pipeline(name: str) -> BatchPipeline:
    _collect()
    if name not in PIPELINES:
        raise PantheonError(f"Unknown batch pipeline {name!r}; choose from {', '.join(sorted(PIPELINES))}.")
    return PIPELINES[name]
