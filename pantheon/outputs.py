"""Writing a :class:`~pantheon.results.Result` to files, all or nothing, plus a preview picture.

Everything is written into a hidden staging folder inside the output folder and moved into place
only when every file is complete, so a failure or a cancel never leaves half an output behind and
never touches files the user already had (unless the same names are being replaced).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .io import Volume, write_volume
from .results import Result

VOLUME_FORMATS = ("nii.gz", "nii", "nrrd")


@contextmanager
def staged_output(out_dir):
    """Yields a staging folder; on success its files are moved into ``out_dir``, else it is removed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".pantheon-partial-", dir=out_dir))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, out_dir / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def json_safe(value):
    """Plain JSON values: NaN/inf become null, numpy scalars plain numbers, dict keys strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value


def write_result(result: Result, out_dir, fmt: str = "nii.gz", source: Optional[Volume] = None,
                 preview: bool = True, extra_json: Optional[dict] = None, compress: bool = True) -> List[Path]:
    """Write volumes, heatmaps and labels as images, everything else as ``result.json``; returns paths.

    ``compress=False`` writes raw images: several times faster for files that live only for seconds
    (the worker hands them straight to Slicer).
    """
    if fmt not in VOLUME_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(VOLUME_FORMATS)}, got {fmt!r}")
    written = []
    with staged_output(out_dir) as stage:
        manifest: Dict[str, dict] = {}
        for name, out in result.heatmaps.items():
            write_volume(out.volume, stage / f"{name}.{fmt}", compress=compress)
            manifest[name] = {"kind": "heatmap", "file": f"{name}.{fmt}", "colormap": out.colormap,
                              "range": list(out.value_range), "description": out.description}
        for name, vol in result.volumes.items():
            write_volume(vol, stage / f"{name}.{fmt}", compress=compress)
            manifest[name] = {"kind": "volume", "file": f"{name}.{fmt}", "components": vol.components}
        for name, lab in result.labels.items():
            write_volume(lab.volume, stage / f"{name}.{fmt}", compress=compress)
            manifest[name] = {"kind": "labels", "file": f"{name}.{fmt}",
                              "segments": [dict(value=s.value, name=s.name, color=list(s.color),
                                                code=list(s.code) if s.code else None) for s in lab.segments]}
        doc = {"outputs": manifest, "scalars": result.scalars, "tables": result.tables, "notes": result.notes}
        doc.update(extra_json or {})
        (stage / "result.json").write_text(json.dumps(json_safe(doc), indent=2) + "\n")
        if preview and source is not None and (result.heatmaps or result.volumes):
            from .preview import save_preview
            save_preview(source, result, stage / "preview.png")
        names = sorted(p.name for p in stage.iterdir())
    written = [Path(out_dir) / n for n in names]
    return written
