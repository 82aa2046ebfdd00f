"""Pure-Python pieces of ToothAnalysis: choices, worker parameters, findings-table helpers and the
synthetic-OPG maker for the self-test. The worker plumbing every Pantheon panel shares (RAS/LPS,
install plans, the non-blocking task handle) lives in :mod:`pantheon.slicerbridge.panel` and is
re-exported here.

No ``slicer``, ``qt``, ``vtk`` or ``torch`` import happens here, so this file is unit-tested in a
plain Python; the module file passes the Slicer-specific objects in.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence

from pantheon.defaults import MATHENA_DEMO_DETECTOR_CARD, MATHENA_DEMO_HENA_CARD, MATHENA_SCORE_THRESHOLD
from pantheon.slicerbridge.panel import (  # noqa: F401
    InstallPlan,
    TaskError,
    ThreadTask,
    WorkerTask,
    check_device,
    environment_text,
    install_plan,
    lps_to_ras,
    private_temp_dir,
    ras_to_lps,
    remove_tree,
    run_worker_python,
)

__all__ = [
    "ACTION", "PIPELINE", "ACTIONS", "DEVICES", "WEIGHTS_DEMO", "WEIGHTS_FILE", "WEIGHTS_CHOICES",
    "DEMO_DETECTOR_CARD", "DEMO_HENA_CARD", "DEFAULT_SCORE_THRESHOLD", "OUTPUT_TEETH", "OUTPUT_CARIES",
    "OUTPUT_ANOMALY", "TABLE_FINDINGS", "FINDINGS_COLUMNS", "weights_params", "build_params",
    "tooth_segment_name", "format_cell", "row_centre_lps", "row_centre_ras", "finding_text",
    "chart_path_from_result", "summary_text", "OPG_SCRIPT", "make_opg_file", "xray_problem",
    "ras_to_lps", "lps_to_ras", "private_temp_dir", "remove_tree", "run_worker_python", "TaskError",
    "WorkerTask", "ThreadTask", "environment_text", "install_plan", "InstallPlan",
]

# ------------------------------------------------------------------------------------ choices
ACTION = "analyze"  # the panel's one action; also the bridge's action name (node names, re-run reuse)
PIPELINE = "mathena.analyze"
ACTIONS: Dict[str, str] = {ACTION: PIPELINE}

DEVICES = ("auto", "cpu", "cuda")  # offered before the worker is checked; then each GPU (cuda:N)

WEIGHTS_DEMO = "demo"
WEIGHTS_FILE = "file"
WEIGHTS_CHOICES = (WEIGHTS_DEMO, WEIGHTS_FILE)

# Model cards of the bundled demo weights and the detection threshold: the pipeline's own values
# (pantheon.defaults is torch-free; pantheon.pipelines.mathena is not).
DEMO_DETECTOR_CARD = MATHENA_DEMO_DETECTOR_CARD
DEMO_HENA_CARD = MATHENA_DEMO_HENA_CARD
DEFAULT_SCORE_THRESHOLD = MATHENA_SCORE_THRESHOLD

# Output names of mathena.analyze (see pantheon.models.mathena.tasks).
OUTPUT_TEETH = "teeth"
OUTPUT_CARIES = "caries"
OUTPUT_ANOMALY = "anomaly"
TABLE_FINDINGS = "findings"

# Findings columns shown in the panel: (row key, header). The table node keeps every column.
FINDINGS_COLUMNS = [
    ("tooth", "Tooth (FDI)"),
    ("score", "Score"),
    ("caries", "Caries"),
    ("anomaly", "Anomaly"),
    ("caries_pixels", "Caries px"),
    ("caries_area_mm2", "Caries mm²"),
    ("anomaly_probability", "Anomaly p"),
    ("stage", "Stage"),
    ("stage_probability", "Stage p"),
]


def xray_problem(name: str, dimensions: Optional[Sequence[int]]) -> Optional[str]:
    """Why an image of these (i, j, k) dimensions is not a panoramic X-ray, in one sentence (None if it may be)."""
    if dimensions is None or len(dimensions) != 3:
        return f"{name} has no image data."
    if min(dimensions) != 1:
        i, j, k = dimensions
        return f"{name} is a 3D volume ({i} x {j} x {k}); choose a 2D panoramic X-ray."
    return None


# ------------------------------------------------------------------------------------ params
def _checkpoint(path: Optional[str], what: str) -> str:
    if not path or not str(path).strip():
        raise ValueError(f"Choose the {what} checkpoint file (weights: files).")
    p = os.path.abspath(os.path.expanduser(str(path).strip()))
    if not os.path.isfile(p):
        raise ValueError(f"The {what} checkpoint file {p} does not exist.")
    return p


def weights_params(choice: str, detector_path: Optional[str] = None, hena_path: Optional[str] = None) -> Dict[str, str]:
    """The panel's weights choice -> worker parameters: ``demo`` -> the bundled demo model cards;
    ``file`` -> a MATHE detector and a HENA checkpoint file, both of which must exist."""
    choice = (choice or WEIGHTS_DEMO).lower()
    if choice == WEIGHTS_DEMO:
        return {"detector": DEMO_DETECTOR_CARD, "hena": DEMO_HENA_CARD}
    if choice == WEIGHTS_FILE:
        return {"detector": _checkpoint(detector_path, "tooth detector (MATHE)"),
                "hena": _checkpoint(hena_path, "HENA")}
    raise ValueError(f"Unknown weights choice {choice!r}; use one of {', '.join(WEIGHTS_CHOICES)}.")


def build_params(weights: Optional[Dict[str, str]] = None, score_thresh: float = DEFAULT_SCORE_THRESHOLD,
                 device: str = "auto", **extra) -> Dict[str, object]:
    """Worker parameters for ``mathena.analyze``."""
    device = check_device(device)
    score = float(score_thresh)
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"The detection score threshold must be between 0 and 1, got {score:g}.")
    params: Dict[str, object] = dict(weights or weights_params(WEIGHTS_DEMO))
    params.update(score_thresh=score, device=device)
    params.update({k: v for k, v in extra.items() if v is not None})
    return params


# ------------------------------------------------------------------------------------ findings
def tooth_segment_name(fdi) -> str:
    """The segment name of a tooth (as pantheon.pipelines.mathena.tooth_name writes it)."""
    return f"tooth {int(fdi)}"


def _missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def format_cell(key: str, value) -> str:
    """Text of one findings cell: integers plain, probabilities/scores with 2 decimals, areas 1."""
    if _missing(value):
        return ""
    if key == "tooth":
        return str(int(float(value)))
    if key in ("caries", "anomaly"):  # the calls come back from a table node as 0/1 or text
        return "yes" if _called({key: value}, key) else "no"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (key.endswith("_pixels") and isinstance(value, float) and value.is_integer()):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.1f}" if key.endswith("_mm2") else f"{value:.2f}"
    return str(value)


def row_centre_lps(row: dict) -> Optional[List[float]]:
    """The tooth's box centre in LPS mm from a findings row (None when the row has no centre)."""
    try:
        values = [float(row[f"centre_lps_{a}"]) for a in "xyz"]
    except (KeyError, TypeError, ValueError):
        return None
    if any(math.isnan(v) or math.isinf(v) for v in values):
        return None
    return values


def row_centre_ras(row: dict) -> Optional[List[float]]:
    """The tooth's box centre in Slicer's RAS (local frame of the input volume)."""
    lps = row_centre_lps(row)
    return None if lps is None else lps_to_ras(lps)


def _called(row: dict, finding: str) -> bool:
    """The pipeline's per-tooth call (``caries`` / ``anomaly`` columns; a table node gives them back
    as text); older rows without them fall back to pixels / probability."""
    value = row.get(finding)
    if not _missing(value):
        return str(value).strip().lower() in ("true", "1", "1.0", "yes")
    if not _missing(row.get(f"{finding}_pixels")) and float(row[f"{finding}_pixels"]) > 0:
        return True
    p = row.get("anomaly_probability") if finding == "anomaly" else None
    return not _missing(p) and float(p) >= 0.5


def finding_text(row: dict) -> str:
    """One line about a tooth, e.g. "Tooth 36: caries, anomaly; stage H (0.91)"."""
    try:
        fdi = int(float(row.get("tooth")))
    except (TypeError, ValueError):
        return "Tooth ?"
    parts = [name for name in ("caries", "anomaly") if _called(row, name)]
    text = f"Tooth {fdi}: " + (", ".join(parts) if parts else "no caries or anomaly found")
    if not _missing(row.get("stage")):
        text += f"; stage {row['stage']}"
        if not _missing(row.get("stage_probability")):
            text += f" ({float(row['stage_probability']):.2f})"
    return text


def chart_path_from_result(result: dict) -> Optional[str]:
    """The dental chart PNG named in a mathena.analyze result document (None when absent)."""
    if not isinstance(result, dict):
        return None
    name = (result.get("files") or {}).get("chart")
    if not name:
        return None
    path = name if os.path.isabs(name) else os.path.join(result.get("output_dir") or "", name)
    return path if os.path.isfile(path) else None


def summary_text(scalars: dict, notes: Optional[dict] = None) -> str:
    """E.g. "28 teeth detected; caries in 2, anomaly in 1." plus the demo-weights warning."""
    n = int(scalars.get("n_teeth", 0) or 0)
    text = f"{n} {'tooth' if n == 1 else 'teeth'} detected; caries in {int(scalars.get('n_caries', 0) or 0)}, " \
           f"anomaly in {int(scalars.get('n_anomaly', 0) or 0)}."
    warning = (notes or {}).get("warning")
    if warning:
        text += f" {warning}"
    return text


# ------------------------------------------------------------------------------------ phantom
# Run by the worker's Python (numpy and the pantheon package): the Slicer process itself does not
# import pantheon.synth. Writes one synthetic OPG (NRRD); an angle != 0 gives an oblique, flipped grid.
OPG_SCRIPT = (r"""
import sys
import numpy as np
from pantheon.io import Volume, write_volume
from pantheon.synth.opg import make_opg
out, seed, h, w, angle, rgb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), """
              r"""float(sys.argv[5]), sys.argv[6] == "1"
img = make_opg(seed, size=(h, w)).image
arr = img.array[0]
direction, origin = img.direction, img.origin
if angle:
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    direction, origin = rot @ np.diag([1.0, -1.0, -1.0]), (-30.0, 15.0, 4.0)
if rgb:
    arr = np.repeat(arr[..., None], 3, axis=-1)
write_volume(Volume(arr[None], img.spacing, origin, direction, 3 if rgb else 1), out)
print(out)
""")


def make_opg_file(path: str, python: Optional[str] = None, seed: int = 0, size: Sequence[int] = (256, 512),
                  oblique_deg: float = 0.0, rgb: bool = False, env: Optional[dict] = None,
                  timeout: float = 300.0) -> str:
    """Write a synthetic OPG to ``path`` (NRRD) with ``python`` (the worker's interpreter)."""
    args = [str(path), str(int(seed)), str(int(size[0])), str(int(size[1])), str(float(oblique_deg)),
            "1" if rgb else "0"]
    run_worker_python(OPG_SCRIPT, args, python, env, timeout, what="Making the synthetic OPG")
    return str(path)
