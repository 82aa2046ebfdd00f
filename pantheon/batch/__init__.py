"""Batch pseudo-labelling: one pipeline over a folder (or CSV) of images, resumable.

    pantheon batch nemesis-organs --input CTs/ --output out/ [--workers N]

Output folder layout::

    out/manifest.json        every case: state (pending|running|done|failed), attempts, error,
                             times, seconds, output files, findings (see :mod:`.manifest`)
    out/<case_id>/           one folder per finished case: the pipeline's images (nii.gz/nrrd),
                             result.json, <label>.seg.nrrd for label outputs, thumbnail.png and
                             case.json (written last). Built in out/.partial-<case>-..., then renamed,
                             so a case folder is either complete or absent.
    out/logs/<case_id>.log   per-case log, one section per attempt (kept for failed cases too)
    out/summary.csv          case_id, state, seconds, pipeline_seconds, attempts, findings..., error, input
    out/index.html           overview table with a thumbnail per case (links relative)

A rerun skips done cases whose folders are complete and redoes failed (unless
``retry_failed=False``), unfinished and pending ones. A failing case is recorded with its
one-sentence error and the batch goes on. Only one batch at a time may write a folder
(``out/.batch.lock``). Engines: ``local`` (process pool) and ``ray`` (Ray actors, one model load each);
see :data:`runner.EXECUTORS`.
Ctrl-C raises :class:`BatchInterrupted` (a KeyboardInterrupt) after the clean-up; its message says
what was written. Local workers never outlive the batch process.
"""

from .cases import Case, discover_cases
from .pipelines import PIPELINES, BatchPipeline, get_pipeline, register
from .runner import EXECUTORS, BatchInterrupted, run_batch

__all__ = ["Case", "discover_cases", "PIPELINES", "BatchPipeline", "get_pipeline", "register", "EXECUTORS",
           "run_batch", "BatchInterrupted"]
