"""Pure-Python pieces of PNIPredict: actions, weights choices, parameter building, the probability
text with its caveats, crop-box helpers and the MRI phantom for the self-test. The worker plumbing
every Pantheon panel shares lives in :mod:`pantheon.slicerbridge.panel` and is re-exported here.

No ``slicer``, ``qt``, ``vtk`` or ``torch`` import happens here, so this file is unit-tested in a
plain Python; the module file passes the Slicer-specific callables in.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Mapping, Optional, Sequence

from pantheon.defaults import NEOGEN_DDIM_STEPS, NEOGEN_MAX_DDIM_STEPS, NEOGEN_MAX_PATCHES, NEONET_DEMO_CARDS
from pantheon.slicerbridge.panel import (  # noqa: F401
    TaskError,
    ThreadTask,
    WorkerTask,
    check_device,
    environment_text,
    install_plan,
    lps_to_ras,
    poll_task,
    private_temp_dir,
    ras_to_lps,
    remove_tree,
    run_worker_python,
)

__all__ = [
    "ACTIONS", "DEVICES", "COMPONENTS", "WEIGHTS_DEMO", "WEIGHTS_FILE", "WEIGHTS_CHOICES", "DEMO_CARDS",
    "DEFAULT_STEPS", "MAX_STEPS", "TUMOUR_VALUE", "LIVER_VALUE", "AUTO_SYNTHESIS_LABELS",
    "weights_params", "build_params", "probability_text", "probability_html", "prediction_text", "caveats_text",
    "crop_box_of", "crop_box_text", "tumour_label_values", "synthesis_label_values", "PHANTOM_SCRIPT",
    "make_phantom_files", "TaskError", "WorkerTask", "ThreadTask", "environment_text", "install_plan", "poll_task",
    "private_temp_dir", "remove_tree", "run_worker_python", "ras_to_lps", "lps_to_ras",
]

# ------------------------------------------------------------------------------------ choices
#: UI action -> worker pipeline.
ACTIONS: Dict[str, str] = {"predict": "pni.predict", "synthesize": "pni.synthesize"}
DEVICES = ("auto", "cpu", "cuda")  # offered before the worker is checked; then each GPU (cuda:N)
#: NeoNet components and the pipelines that use them.
COMPONENTS = ("neoseg", "pattennet", "neogen")
WEIGHTS_DEMO = "demo"
WEIGHTS_FILE = "file"
WEIGHTS_CHOICES = (WEIGHTS_DEMO, WEIGHTS_FILE)
# The pipeline's own demo cards, DDIM steps and limits (pantheon.defaults: torch-free).
DEMO_CARDS = dict(NEONET_DEMO_CARDS)
#: DDIM steps offered by default in the panel: the worker's and command line's default too (the
#: demo NeoGen on a CPU takes about a second per step; fewer is the user's choice).
DEFAULT_STEPS = NEOGEN_DDIM_STEPS
MAX_STEPS = NEOGEN_MAX_DDIM_STEPS
MAX_PATCHES = NEOGEN_MAX_PATCHES

#: Label values of the masks the worker reads (NeoSeg ids).
LIVER_VALUE, TUMOUR_VALUE = 1, 2
#: Segments recognised automatically for synthesis: name or SNOMED CT code -> NeoSeg id.
AUTO_SYNTHESIS_LABELS: Dict[str, int] = {
    "liver": LIVER_VALUE, "10200004": LIVER_VALUE,
    "tumour": TUMOUR_VALUE, "tumor": TUMOUR_VALUE, "neoplasm": TUMOUR_VALUE, "mass": TUMOUR_VALUE,
    "cholangiocarcinoma": TUMOUR_VALUE, "108369006": TUMOUR_VALUE,
}


# ------------------------------------------------------------------------------------ params
def _checked_path(kind: str, path) -> str:
    p = os.path.abspath(os.path.expanduser(str(path).strip()))
    if not os.path.isfile(p):
        raise ValueError(f"The {kind} weights file {p} does not exist.")
    return p


def weights_params(choice: Optional[str] = WEIGHTS_DEMO, paths: Optional[Mapping[str, str]] = None,
                   components: Sequence[str] = COMPONENTS) -> Dict[str, str]:
    """The panel's weights choice as worker parameters, one entry per component in ``components``.

    ``demo`` -> the bundled demo model cards. ``file`` -> the chosen files (each must exist); a
    component without a file keeps its demo card, so a retrained PattenNet can be combined with the
    demo NeoSeg.
    """
    choice = (choice or WEIGHTS_DEMO).lower()
    if choice not in WEIGHTS_CHOICES:
        raise ValueError(f"Unknown weights choice {choice!r}; use one of {', '.join(WEIGHTS_CHOICES)}.")
    out = {k: DEMO_CARDS[k] for k in components}
    if choice == WEIGHTS_FILE:
        given = {k: v for k, v in (paths or {}).items() if k in components and v and str(v).strip()}
        if not given:
            raise ValueError("Choose at least one NeoNet weights file (weights: files), or use the demo weights.")
        out.update({k: _checked_path(k, v) for k, v in given.items()})
    return out


def _whole(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def build_params(action: str, *, weights: Optional[Dict[str, str]] = None, device: str = "auto",
                 steps: int = DEFAULT_STEPS, seed: int = 0, pni: int = 1, n: int = 1, **extra) -> Dict[str, object]:
    """Worker parameters for one action (only the keys that pipeline takes)."""
    if action not in ACTIONS:
        raise ValueError(f"Unknown action {action!r}; use one of {', '.join(ACTIONS)}.")
    device = check_device(device)
    wanted = ("neoseg", "pattennet") if action == "predict" else ("neogen",)
    w = dict(weights) if weights is not None else weights_params(WEIGHTS_DEMO)
    params: Dict[str, object] = {k: w.get(k) or DEMO_CARDS[k] for k in wanted}
    params["device"] = device
    if action == "synthesize":
        params.update(steps=_whole("steps", steps, 1, MAX_STEPS), seed=_whole("seed", seed, 0, 2 ** 31 - 1),
                      pni=_whole("PNI class", pni, 0, 1), n=_whole("number of patches", n, 1, MAX_PATCHES))
    params.update({k: v for k, v in extra.items() if v is not None})
    return params


# ------------------------------------------------------------------------------------ results
def _notes(result) -> dict:
    if isinstance(result, dict):
        return dict(result.get("notes") or {})
    return dict(getattr(result, "notes", None) or {})


def _scalars(result) -> dict:
    if isinstance(result, dict):
        return dict(result.get("scalars") or {})
    return dict(getattr(result, "scalars", None) or {})


def _is_demo(notes: Mapping[str, str]) -> bool:
    return "warning" in notes or "demo" in str(notes.get("weights", "")).lower()


def probability_text(probability, demo: bool = True) -> str:
    """One line for the big label, caveat included, e.g.
    "PNI probability 0.73 (demo weights, synthetic training data: not for clinical use)"."""
    try:
        p = float(probability)
    except (TypeError, ValueError):
        p = float("nan")
    if not math.isfinite(p):
        return "PNI probability: not available"
    why = "demo weights, synthetic training data" if demo else "research model"
    return f"PNI probability {p:.2f} ({why}: not for clinical use)"


def probability_html(text: str) -> str:
    """The big label: the probability large, its caveat (the bracket) on a smaller line below it."""
    from html import escape
    head, bracket, tail = str(text).partition(" (")
    if not bracket:
        return escape(str(text))
    return f"{escape(head)}<br><span style='font-size: 11pt; font-weight: normal;'>({escape(tail)}</span>"


def prediction_text(result) -> str:
    """The probability line for a predict result (ImportedResult or result dict)."""
    notes, scalars = _notes(result), _scalars(result)
    return probability_text(scalars.get("pni_probability"), demo=_is_demo(notes))


def caveats_text(result) -> str:
    """The caveats the panel shows under the probability (one per line)."""
    notes, scalars = _notes(result), _scalars(result)
    lines = []
    if notes.get("pni_prediction"):
        lines.append(f"Read as PNI {notes['pni_prediction']} at the untuned 0.5 threshold (not a calibrated "
                     "operating point).")
    if notes.get("warning"):
        lines.append(notes["warning"])
    if notes.get("heatmap"):
        lines.append(notes["heatmap"])
    if notes.get("tumour_source"):
        vol = scalars.get("tumour_volume_ml")
        extra = f", {float(vol):.1f} ml" if isinstance(vol, (int, float)) and math.isfinite(vol) else ""
        lines.append(f"Tumour from: {notes['tumour_source']}{extra}.")
    lines.append(notes.get("research_only") or "Research software: not validated for clinical use.")
    return "\n".join(lines)


def crop_box_of(result) -> Optional[dict]:
    """The crop box (centre_ras, size_mm, orientation_ras, ...) of a result, or None."""
    raw = _notes(result).get("crop_box")
    if not raw:
        return None
    try:
        box = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return None
    return box if isinstance(box, dict) and "size_mm" in box else None


def crop_box_text(box: Optional[dict]) -> str:
    if not box:
        return ""
    size = " x ".join(f"{float(v):g}" for v in box.get("size_mm", []))
    centre = box.get("centre_ras")
    where = "" if centre is None else " at RAS (" + ", ".join(f"{float(v):.1f}" for v in centre) + ")"
    return f"Crop box {size} mm{where}"


# ------------------------------------------------------------------------------------ masks
def tumour_label_values(segment_name: str) -> Dict[str, int]:
    """Label values that export exactly the chosen tumour segment (a binary mask = tumour)."""
    if not segment_name or not str(segment_name).strip():
        raise ValueError("The tumour segment has no name; name it (e.g. 'tumour') first.")
    return {str(segment_name): TUMOUR_VALUE}


def synthesis_label_values(tumour_name: Optional[str] = None, liver_name: Optional[str] = None) -> Dict[str, int]:
    """Label values for the synthesis mask: the chosen tumour/liver segments, else the segments whose
    name or SNOMED CT code says liver or tumour (:data:`AUTO_SYNTHESIS_LABELS`)."""
    if tumour_name or liver_name:
        out: Dict[str, int] = {}
        if liver_name:
            out[str(liver_name)] = LIVER_VALUE
        if tumour_name:
            out[str(tumour_name)] = TUMOUR_VALUE
        return out
    return dict(AUTO_SYNTHESIS_LABELS)


# ------------------------------------------------------------------------------------ phantom
# Run by the worker's Python (which has numpy/scipy and the pantheon package): the Slicer process
# itself does not import pantheon.synth.
PHANTOM_SCRIPT = r"""
import json, sys
from pantheon.io import write_volume
from pantheon.synth.mri_phantom import make_liver_mri_phantom
out, seed, oblique = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
shape = tuple(int(v) for v in sys.argv[4].split(",")) if len(sys.argv) > 4 and sys.argv[4] else None
spacing = tuple(float(v) for v in sys.argv[5].split(",")) if len(sys.argv) > 5 and sys.argv[5] else None
orientation = sys.argv[6] if len(sys.argv) > 6 else "random"
mri, lab, info = make_liver_mri_phantom(seed, shape=shape, spacing=spacing, orientation=orientation,
                                        oblique=oblique if oblique > 0 else False)
write_volume(mri, out + "/mri.nrrd")
write_volume(lab, out + "/mri-label.nrrd")
print(json.dumps({"pni": bool(info["pni"]), "tumour_volume_ml": float(info["tumour_volume_ml"])}))
"""


def make_phantom_files(out_dir: str, python: Optional[str] = None, seed: int = 0, oblique: float = 0.0,
                       shape: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None,
                       orientation: str = "random", env: Optional[dict] = None, timeout: float = 300.0) -> tuple:
    """Write a synthetic liver MRI and its label map (1 liver, 2 tumour, 3 ducts, 4 vessels) as NRRD
    with ``python`` (the worker's); returns (mri path, label path, info dict)."""
    args = [str(out_dir), str(int(seed)), str(float(oblique)),
            ",".join(str(int(v)) for v in shape) if shape else "",
            ",".join(str(float(v)) for v in spacing) if spacing else "", str(orientation)]
    out = run_worker_python(PHANTOM_SCRIPT, args, python, env, timeout, what="Making the MRI phantom")
    info = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return os.path.join(out_dir, "mri.nrrd"), os.path.join(out_dir, "mri-label.nrrd"), info
