"""Pure-Python pieces of LiverSynthesis: which segment becomes which 3D-LLDM label, the worker
parameters of both actions (checked, one sentence per mistake), the HCC edits, the texts of the
panel and its log, the summary of a generated folder, and the phantom of the self-test. The worker
plumbing every Pantheon panel shares lives in :mod:`pantheon.slicerbridge.panel` and is
re-exported here.

No ``slicer``, ``qt``, ``vtk`` or ``torch`` import happens here, so this file is unit-tested in a
plain Python; the module file passes the Slicer-specific values in.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from pantheon.anatomy import HCC_LABELS
from pantheon.defaults import NEOGEN_DDIM_STEPS, NEOGEN_MAX_DDIM_STEPS
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
from pantheon.slicerbridge.terms import parse_terminology

__all__ = [
    "ACTIONS", "DEVICES", "COMPONENTS", "WEIGHTS_DEMO", "WEIGHTS_FILE", "WEIGHTS_CHOICES", "DEMO_CARDS",
    "DEFAULT_STEPS", "MAX_STEPS", "MAX_PAIRS", "MAX_SEED", "MAX_SCALE", "MAX_GROW_MM", "HCC_DIAMETER_RANGE",
    "LIVER", "PORTAL_VEIN", "HEPATIC_VEIN", "HCC", "LABEL_NAMES", "SEGMENT_CODES", "DEMO_WARNING", "FILE_WARNING",
    "segment_label", "LabelPlan", "plan_labels", "plan_text", "parse_hcc_numbers", "edit_params", "edits_text",
    "STEER_NAMES", "steer_params", "steer_text",
    "weights_params", "build_params", "check_output_folder", "volumes_text", "summary_of", "generation_text",
    "pair_files", "weights_warning", "PHANTOM_SCRIPT", "make_phantom_files",
    "TaskError", "WorkerTask", "ThreadTask", "environment_text", "install_plan", "poll_task", "private_temp_dir",
    "remove_tree", "run_worker_python", "ras_to_lps", "lps_to_ras", "check_device",
]

# ------------------------------------------------------------------------------------ choices
#: UI action -> worker task.
ACTIONS: Dict[str, str] = {"synthesize": "lldm.synthesize", "generate": "foscu.generate"}
DEVICES = ("auto", "cpu", "cuda")  # offered before the worker is checked; then each GPU (cuda:N)
#: Weights components: 3D-LLDM (both actions) and FOSCU's label generator (generate only).
COMPONENTS = ("lldm", "labelgen")
WEIGHTS_DEMO = "demo"
WEIGHTS_FILE = "file"
WEIGHTS_CHOICES = (WEIGHTS_DEMO, WEIGHTS_FILE)
#: Model cards of the bundled demo weights (pantheon/registry/cards).
DEMO_CARDS: Dict[str, str] = {"lldm": "lldm-demo", "labelgen": "foscu-demo-labelgen"}
#: DDIM steps offered by default: the worker's and command line's default (``pantheon lldm synthesize``).
DEFAULT_STEPS = NEOGEN_DDIM_STEPS
MAX_STEPS = NEOGEN_MAX_DDIM_STEPS
MAX_SEED = 2 ** 31 - 1
#: The worker's limits (pantheon.models.lldm.synthesis / edits, pantheon.models.foscu.tasks).
MAX_PAIRS = 1000
MAX_SCALE = 10.0
MAX_GROW_MM = 100.0
HCC_DIAMETER_RANGE = (2.0, 200.0)

DEMO_WARNING = ("Demo weights, trained on synthetic phantoms: the liver lands on its label and HCCs come out dark, "
                "but vessels less dark than in a real hepatobiliary phase. Synthetic images for research and data "
                "augmentation only; never for diagnosis.")
FILE_WARNING = "Your own weights files: synthetic images for research and data augmentation only; never for diagnosis."

# ------------------------------------------------------------------------------------ labels
#: 3D-LLDM label values (pantheon.models.lldm: 1 liver, 2 portal vein, 3 hepatic veins, 4 HCC).
LIVER, PORTAL_VEIN, HEPATIC_VEIN, HCC = 1, 2, 3, 4
LABEL_NAMES: Dict[int, str] = {LIVER: "liver", PORTAL_VEIN: "portal vein", HEPATIC_VEIN: "hepatic veins", HCC: "HCC"}
# Segment names (lower case, words; see _words) per label: the core's (pantheon.models.lldm.synthesis)
# and the spellings annotators use. Numbered segments ("HCC 2", "tumour_3") count as their label.
_NAMES: Dict[int, frozenset] = {
    LIVER: frozenset({"liver", "hepar", "liver parenchyma", "whole liver", "liver whole", "liver mask"}),
    PORTAL_VEIN: frozenset({"portal vein", "portal veins", "portal vein tree", "portal venous system", "pv",
                            "vena portae", "portal vein branches", "portal"}),
    HEPATIC_VEIN: frozenset({"hepatic vein", "hepatic veins", "hv", "hepatic vein tree", "hepatic venous system",
                             "hepatic vein branches", "left hepatic vein", "middle hepatic vein",
                             "right hepatic vein"}),
    HCC: frozenset({"hcc", "hccs", "hepatocellular carcinoma", "tumour", "tumor", "tumours", "tumors",
                    "liver tumour", "liver tumor", "lesion", "lesions", "liver lesion", "neoplasm", "mass",
                    "nodule", "liver nodule", "hcc lesion", "hepatoma"}),
}
#: SNOMED CT type codes of a segment's terminology that name a label (where the name does not).
SEGMENT_CODES: Dict[str, int] = {"10200004": LIVER, "32764006": PORTAL_VEIN, "8887007": HEPATIC_VEIN,
                                 "25370001": HCC, "108369006": HCC}


def _words(name: str) -> str:
    """'PortalVein_2' -> 'portal vein'; 'HCC #1' -> 'hcc'; 'Liver (whole)' -> 'liver whole'."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(name or ""))
    text = " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
    return re.sub(r"(\s*\d+)+$", "", text).strip()


def segment_label(name: str, terminology: Optional[str] = None) -> Optional[int]:
    """The 3D-LLDM label a segment stands for, by its name (case and punctuation ignored, a trailing
    number dropped) or else by its terminology's SNOMED CT type code; None: not one of the four."""
    words = _words(name)
    for value, names in _NAMES.items():
        if words in names:
            return value
    if terminology:
        code = parse_terminology(terminology).get("type")
        if code and str(code[1]) in SEGMENT_CODES:
            return SEGMENT_CODES[str(code[1])]
    return None


@dataclass
class LabelPlan:
    """Which segment of a segmentation becomes which label of the map sent to the worker.

    ``values``: segment ID -> label; ``order``: the IDs in painting order (liver first, HCC last,
    so a tumour or vessel drawn inside the liver segment keeps its label); ``names``: ID -> name;
    ``ignored``: names of segments 3D-LLDM does not know (left out)."""

    segmentation: str
    values: Dict[str, int] = field(default_factory=dict)
    order: List[str] = field(default_factory=list)
    names: Dict[str, str] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)

    def segments_of(self, value: int) -> List[str]:
        return [self.names[sid] for sid in self.order if self.values[sid] == value]


def plan_labels(segments: Sequence[Tuple[str, str, Optional[str]]], segmentation_name: str = "the segmentation"
                ) -> LabelPlan:
    """The :class:`LabelPlan` of ``segments`` (``(ID, name, terminology entry)`` in the segmentation's
    order); ValueError in one sentence when no segment is a liver (3D-LLDM needs one)."""
    plan = LabelPlan(str(segmentation_name))
    for sid, name, term in segments:
        value = segment_label(name, term)
        if value is None:
            plan.ignored.append(str(name))
        else:
            plan.values[str(sid)] = value
            plan.names[str(sid)] = str(name)
    plan.order = sorted(plan.values, key=lambda sid: plan.values[sid])  # stable: the segmentation's order within
    if LIVER not in plan.values.values():
        listed = ", ".join(repr(str(n)) for _s, n, _t in segments) or "none"
        raise ValueError(f"No liver segment in {plan.segmentation!r} (segments: {listed}); 3D-LLDM synthesises "
                         "the MRI around a liver, so name the liver's segment 'liver'.")
    return plan


def plan_text(plan: LabelPlan) -> str:
    """What each segment is used as, e.g. "Segments used: 'Liver' as liver; 'HCC 1', 'HCC 2' as HCC. No
    portal vein, hepatic veins. Not used: 'spleen'."."""
    used = []
    for value, label in LABEL_NAMES.items():
        names = plan.segments_of(value)
        if names:
            used.append(", ".join(repr(n) for n in names) + f" as {label}")
    missing = [LABEL_NAMES[v] for v in (PORTAL_VEIN, HEPATIC_VEIN, HCC) if not plan.segments_of(v)]
    text = "Segments used: " + "; ".join(used) + "."
    if missing:
        text += " No " + ", ".join(missing) + "."
    if plan.ignored:
        text += " Not used: " + ", ".join(repr(n) for n in plan.ignored) + "."
    return text


# ------------------------------------------------------------------------------------ edits
def parse_hcc_numbers(text) -> List[int]:
    """'1, 3' / '1 3' / '' -> [1, 3] / [1, 3] / []: the HCCs to remove, numbered from the largest."""
    raw = str(text or "").strip()
    if not raw:
        return []
    parts = [p for p in re.split(r"[\s,;]+", raw) if p]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"HCC numbers to remove must be whole numbers from 1 (the largest HCC), e.g. '1, 3'; "
                         f"got {raw!r}.")
    return list(dict.fromkeys(int(p) for p in parts))


def _number(name: str, value, lo: float, hi: float, unit: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if not lo <= float(value) <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}{unit}, got {float(value):g}{unit}.")
    return float(value)


def edit_params(remove="", grow_mm: float = 0.0, add_lps: Sequence[Sequence[float]] = (),
                add_diameter_mm: float = 20.0) -> Dict[str, object]:
    """The lesion edits as ``lldm.synthesize`` parameters (only those asked for): ``remove`` (text or
    numbers), grow every HCC by ``grow_mm`` (negative: shrink), a new HCC of ``add_diameter_mm`` at
    each LPS point of ``add_lps`` (in the reference volume's frame)."""
    out: Dict[str, object] = {}
    numbers = parse_hcc_numbers(remove) if isinstance(remove, str) else parse_hcc_numbers(
        " ".join(str(v) for v in (remove or ())))
    if numbers:
        out["remove_hcc"] = numbers
    grow = _number("The HCC growth", grow_mm, -MAX_GROW_MM, MAX_GROW_MM, " mm")
    if grow:
        out["grow_hcc_mm"] = grow
    points = [list(p) for p in add_lps or ()]
    if points:
        lo, hi = HCC_DIAMETER_RANGE
        diameter = _number("A new HCC's diameter", add_diameter_mm, lo, hi, " mm")
        for p in points:
            if len(p) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in p):
                raise ValueError(f"A new HCC's centre must be three coordinates in mm, got {p!r}.")
        out["add_hcc"] = [[float(v) for v in p] + [diameter] for p in points]
    return out


def edits_text(params: Mapping[str, object]) -> str:
    """The edits of a request in words ("" when none), e.g. "Edits: removed HCC 1, 3; every other HCC
    grown by 5 mm; 1 new HCC of 20 mm."."""
    parts = []
    removed = list(params.get("remove_hcc") or [])
    if removed:
        parts.append("removed HCC " + ", ".join(str(v) for v in removed))
    grow = float(params.get("grow_hcc_mm") or 0.0)
    if grow:
        which = "every other HCC" if removed else "every HCC"
        parts.append(f"{which} {'grown' if grow > 0 else 'shrunk'} by {abs(grow):g} mm")
    added = list(params.get("add_hcc") or [])
    if added:
        sizes = sorted({f"{float(a[3]):g}" for a in added})
        parts.append(f"{len(added)} new HCC{'s' if len(added) > 1 else ''} of {', '.join(sizes)} mm")
    return ("Edits: " + "; ".join(parts) + ".") if parts else ""


# ------------------------------------------------------------------------------------ steering
#: The core's label names (``lldm.synthesize``'s ``use``), by label value.
STEER_NAMES: Dict[int, str] = {v: n for v, n in HCC_LABELS.items() if v}


def steer_params(portal_vein: bool = True, hepatic_vein: bool = True, hcc: bool = True) -> Dict[str, object]:
    """Which labels steer the synthesis, as ``lldm.synthesize`` parameters: ``{}`` when all do, else
    ``use`` (the liver always steers; the labels left out join the liver)."""
    chosen = {LIVER: True, PORTAL_VEIN: bool(portal_vein), HEPATIC_VEIN: bool(hepatic_vein), HCC: bool(hcc)}
    if all(chosen.values()):
        return {}
    return {"use": [STEER_NAMES[v] for v, on in chosen.items() if on]}


def steer_text(params: Mapping[str, object]) -> str:
    """e.g. "Steered by liver, HCC; the model drew the portal vein and hepatic veins itself." ("" when
    every label steered). An HCC left out is synthesised as liver."""
    use = params.get("use")
    if not use:
        return ""
    names = {n: v for v, n in STEER_NAMES.items()}
    kept = [LABEL_NAMES[names[n]] for n in use]
    free = [LABEL_NAMES[v] for v in (PORTAL_VEIN, HEPATIC_VEIN) if STEER_NAMES[v] not in use]
    text = "Steered by " + ", ".join(kept) + ";"
    if free:
        text += " the model drew the " + " and ".join(free) + " itself;"
    if STEER_NAMES[HCC] not in use:
        text += " the HCC was synthesised as liver;"
    return text[:-1] + "."


# ------------------------------------------------------------------------------------ params
def _checked_path(kind: str, path) -> str:
    p = os.path.abspath(os.path.expanduser(str(path).strip()))
    if not os.path.isfile(p):
        raise ValueError(f"The {kind} weights file {p} does not exist.")
    return p


_COMPONENT_WORDS = {"lldm": "3D-LLDM", "labelgen": "label generator"}


def weights_params(choice: Optional[str] = WEIGHTS_DEMO, paths: Optional[Mapping[str, str]] = None
                   ) -> Dict[str, str]:
    """The panel's weights choice: ``demo`` -> the demo cards; ``file`` -> the chosen files (each
    must exist), a component without a file keeping its demo card."""
    choice = (choice or WEIGHTS_DEMO).lower()
    if choice not in WEIGHTS_CHOICES:
        raise ValueError(f"Unknown weights choice {choice!r}; use one of {', '.join(WEIGHTS_CHOICES)}.")
    out = dict(DEMO_CARDS)
    if choice == WEIGHTS_FILE:
        given = {k: v for k, v in (paths or {}).items() if k in COMPONENTS and v and str(v).strip()}
        if not given:
            raise ValueError("Choose a 3D-LLDM or label-generator weights file (weights: files), or use the demo "
                             "weights.")
        out.update({k: _checked_path(_COMPONENT_WORDS[k], v) for k, v in given.items()})
    return out


def weights_warning(choice: Optional[str], lldm_path: Optional[str] = None) -> str:
    """The caveat shown at the top of the panel: the demo 3D-LLDM's, unless a 3D-LLDM weights file is chosen."""
    own = (choice or WEIGHTS_DEMO).lower() == WEIGHTS_FILE and bool(str(lldm_path or "").strip())
    return FILE_WARNING if own else DEMO_WARNING


def _whole(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}.")
    return value


def check_output_folder(path) -> str:
    """The folder the pairs go into, absolute; ValueError in one sentence when it cannot be one (an
    existing file, or a place this user cannot write). An existing folder of pairs is fine: a rerun
    adds only the missing pairs."""
    raw = str(path or "").strip()
    if not raw:
        raise ValueError("Choose the folder the new pairs are written into.")
    folder = os.path.abspath(os.path.expanduser(raw))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder} is a file, not a folder; choose a folder for the pairs.")
    existing = folder
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"Pantheon cannot write into {existing}; choose another folder for the pairs.")
    return folder


def build_params(action: str, *, weights: Optional[Mapping[str, str]] = None, device: str = "auto",
                 steps: int = DEFAULT_STEPS, seed: int = 0, scale: Optional[float] = None,
                 edits: Optional[Mapping[str, object]] = None, n: int = 1, output: Optional[str] = None,
                 label_steps: int = DEFAULT_STEPS, image_steps: int = DEFAULT_STEPS,
                 steer: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
    """Worker parameters of one action (only the keys its task takes), each value checked.

    ``synthesize`` (``lldm.synthesize``): weights, device, steps, seed, ControlNet ``scale`` (None:
    the weights' own), ``edits`` (:func:`edit_params`) and ``steer`` (:func:`steer_params`).
    ``generate`` (``foscu.generate``): ``n`` pairs into ``output``, seed, label/image DDIM steps,
    both weights, device."""
    if action not in ACTIONS:
        raise ValueError(f"Unknown action {action!r}; use one of {', '.join(ACTIONS)}.")
    w = dict(weights) if weights is not None else weights_params(WEIGHTS_DEMO)
    params: Dict[str, object] = {"device": check_device(device), "seed": _whole("The seed", seed, 0, MAX_SEED)}
    if action == "synthesize":
        params.update(weights=w.get("lldm") or DEMO_CARDS["lldm"], steps=_whole("DDIM steps", steps, 1, MAX_STEPS))
        if scale is not None:
            params["scale"] = _number("The ControlNet scale", scale, 0.0, MAX_SCALE)
        params.update(dict(edits or {}))
        use = dict(steer or {}).get("use")
        if use is not None:
            if not isinstance(use, (list, tuple)) or STEER_NAMES[LIVER] not in use or \
                    any(n not in STEER_NAMES.values() for n in use):
                raise ValueError(f"The labels that steer must be the liver and any of portal_vein, hepatic_vein, "
                                 f"hcc; got {use!r}.")
            params["use"] = list(use)
        return params
    params.update(output=check_output_folder(output), n=_whole("The number of pairs", n, 1, MAX_PAIRS),
                  label_steps=_whole("Label DDIM steps", label_steps, 1, MAX_STEPS),
                  image_steps=_whole("Image DDIM steps", image_steps, 1, MAX_STEPS),
                  labelgen=w.get("labelgen") or DEMO_CARDS["labelgen"], lldm=w.get("lldm") or DEMO_CARDS["lldm"])
    return params


# ------------------------------------------------------------------------------------ results
def _scalars(result) -> dict:
    if isinstance(result, dict):
        return dict(result.get("scalars") or {})
    return dict(getattr(result, "scalars", None) or {})


def volumes_text(result) -> str:
    """The label volumes the synthesis was conditioned on, e.g. "Conditioned on: liver 1520 ml, portal
    vein 31 ml, hepatic veins 24 ml, HCC 14.2 ml." ("" without them)."""
    scalars = _scalars(result)
    keys = {LIVER: "liver_ml", PORTAL_VEIN: "portal_vein_ml", HEPATIC_VEIN: "hepatic_vein_ml", HCC: "hcc_ml"}
    parts = []
    for value, key in keys.items():
        ml = scalars.get(key)
        if isinstance(ml, (int, float)) and math.isfinite(ml):
            parts.append(f"{LABEL_NAMES[value]} {ml:.1f} ml" if ml < 100 else f"{LABEL_NAMES[value]} {ml:.0f} ml")
    return ("Conditioned on: " + ", ".join(parts) + ".") if parts else ""


def summary_of(result) -> dict:
    """The ``summary`` of a ``foscu.generate`` result (folder, pairs, made_now, csv, index)."""
    summary = dict((result or {}).get("summary") or {}) if isinstance(result, dict) else {}
    if not summary.get("folder"):
        raise ValueError("The generation result has no summary of its folder.")
    return summary


def generation_text(summary: Mapping[str, object]) -> str:
    """One sentence on a finished generation, e.g. "Made 3 new pairs (5 in /data/synth: cases.csv,
    index.html)."; when none was needed, why."""
    pairs, made = int(summary.get("pairs") or 0), int(summary.get("made_now") or 0)
    folder = str(summary.get("folder"))
    if made == 0:
        return (f"Made no new pair: {folder} already holds pairs 1 to {pairs} (a rerun only adds missing pairs); "
                "ask for more pairs or choose another folder.")
    kept = f", {pairs - made} kept from before" if pairs > made else ""
    flagged = int(summary.get("anatomy_flagged") or 0)
    flag = (f" {flagged} pair{'s' if flagged != 1 else ''} failed the anatomy check on every draw (see "
            "anatomy_problem in cases.csv)." if flagged else "")
    return (f"Made {made} new pair{'s' if made != 1 else ''} ({pairs} in {folder}{kept}): images/, labels/, "
            "cases.csv, index.html." + flag)


def pair_files(summary: Mapping[str, object], index: int = 0) -> Tuple[str, str, str]:
    """(case id, image path, label path) of pair ``index`` of a generated folder, from its cases.csv; the
    label as the .seg.nrrd beside the .nii.gz when there is one (segment names and colours for Slicer)."""
    folder = str(summary.get("folder"))
    table = str(summary.get("csv") or os.path.join(folder, "cases.csv"))
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"The pairs' table {table} cannot be read ({exc.strerror or exc}).") from None
    if not 0 <= index < len(rows):
        plural = "s" if len(rows) != 1 else ""
        raise ValueError(f"{table} lists {len(rows)} pair{plural}; there is no pair {index + 1}.")
    row = rows[index]
    image = os.path.join(folder, row["image"])
    label = os.path.join(folder, row["label"])
    seg = re.sub(r"\.nii(\.gz)?$", ".seg.nrrd", label)
    if seg != label and os.path.isfile(seg):
        label = seg
    for path in (image, label):
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing from the folder of pairs.")
    return row.get("case_id") or f"pair {index + 1}", image, label


# ------------------------------------------------------------------------------------ phantom
# Run by the worker's Python (numpy/scipy and the pantheon package): the Slicer process itself does
# not import pantheon.synth.
PHANTOM_SCRIPT = r"""
import json, sys
from pantheon.io import write_volume
from pantheon.synth.hcc_mri_phantom import make_hcc_mri_phantom
out, seed, oblique = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
shape = tuple(int(v) for v in sys.argv[4].split(",")) if len(sys.argv) > 4 and sys.argv[4] else None
orientation = sys.argv[5] if len(sys.argv) > 5 else "random"
n_hcc = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] else None
mri, lab, info = make_hcc_mri_phantom(seed, shape=shape, orientation=orientation,
                                      oblique=oblique if oblique > 0 else False, n_hcc=n_hcc)
write_volume(mri, out + "/mri.nrrd")
write_volume(lab, out + "/labels.nrrd")
print(json.dumps({"hcc": info["hcc"], "hcc_volume_ml": info["hcc_volume_ml"]}))
"""


def make_phantom_files(out_dir: str, python: Optional[str] = None, seed: int = 0, oblique: float = 0.0,
                       shape: Optional[Sequence[int]] = None, orientation: str = "random", n_hcc: Optional[int] = None,
                       env: Optional[dict] = None, timeout: float = 300.0) -> tuple:
    """Write a synthetic hepatobiliary-phase liver MRI and its 3D-LLDM label map (1 liver, 2 portal
    vein, 3 hepatic veins, 4 HCC) as NRRD with ``python`` (the worker's); returns (mri path, label
    path, info dict)."""
    args = [str(out_dir), str(int(seed)), str(float(oblique)),
            ",".join(str(int(v)) for v in shape) if shape else "", str(orientation),
            "" if n_hcc is None else str(int(n_hcc))]
    out = run_worker_python(PHANTOM_SCRIPT, args, python, env, timeout, what="Making the liver MRI phantom")
    info = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return os.path.join(out_dir, "mri.nrrd"), os.path.join(out_dir, "labels.nrrd"), info
