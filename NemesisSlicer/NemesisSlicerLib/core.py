"""Pure-Python pieces of NemesisSlicer: choices and parameter building. The worker plumbing every
Pantheon panel shares (RAS/LPS, install plans, debouncing, the non-blocking task handle) lives in
:mod:`pantheon.slicerbridge.panel` and is re-exported here under the names this module has always used.

No ``slicer``, ``qt``, ``vtk`` or ``torch`` import happens here, so this file is unit-tested in a
plain Python; the module file passes the Slicer-specific callables in.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

from pantheon.defaults import NEMESIS_DEMO_CARD, NEMESIS_DEMO_PROBE_CARD, NEMESIS_MASK_RATIO
from pantheon.slicerbridge.panel import (  # noqa: F401
    REQUIREMENT_SPECS,
    TORCH_CPU_INDEX,
    TORCH_CUDA_INDEX,
    Debouncer,
    InstallPlan,
    InstallStep,
    TaskError,
    ThreadTask,
    check_device,
    environment_text,
    install_plan,
    lps_to_ras,
    private_temp_dir,
    ras_to_lps,
    remove_tree,
    run_worker_python,
)
from pantheon.slicerbridge.panel import WorkerTask as NemesisTask  # noqa: F401

__all__ = [
    "MIN_PROBE_CASES",
    "ACTIONS", "ORGANS", "ORGAN_NAMES", "DEVICES", "PRECISIONS",
    "WEIGHTS_DEMO", "WEIGHTS_OFFICIAL", "WEIGHTS_FILE", "WEIGHTS_CHOICES",
    "DEMO_CARD", "DEMO_PROBE_CARD", "DEFAULT_MASK_RATIO", "OFFICIAL_CARD", "OFFICIAL_SIZE_TEXT",
    "ras_to_lps", "lps_to_ras", "weights_params", "probe_params", "build_params",
    "REQUIREMENT_SPECS", "TORCH_CPU_INDEX", "TORCH_CUDA_INDEX", "InstallStep", "InstallPlan",
    "install_plan", "Debouncer", "NemesisTask", "private_temp_dir", "remove_tree",
    "PHANTOM_SCRIPT", "make_phantom_files", "TaskError", "metrics_text", "environment_text",
    "probe_path_from_result", "ThreadTask",
    "STROKE_FOREGROUND", "STROKE_BACKGROUND", "StrokesProblem", "stroke_label_map", "default_stroke_segments",
    "strokes_text", "atypicality_text", "DEFAULT_ATYPICALITY_DRAWS", "SimilarityProblem", "point_outside_text",
    "best_match_text",
]

# ------------------------------------------------------------------------------------ choices
# UI action -> worker pipeline.
ACTIONS: Dict[str, str] = {
    "features": "nemesis.features",
    "organs": "nemesis.organs",
    "pca": "nemesis.pca",
    "similarity": "nemesis.similarity",
    "reconstruct": "nemesis.reconstruct",
    "atypicality": "nemesis.atypicality",
    "train_probe": "nemesis.train_probe",
    "strokes": "nemesis.strokes",
}

MIN_PROBE_CASES = 2  # one case is held out to measure the probe

# BTCV organs of the NEMESIS organ probe (same order and names as
# pantheon.models.nemesis.probe.BTCV_ORGANS, which needs torch and is not imported here),
# with the name of the check box that selects each one in the panel.
ORGANS = [
    ("aorta", "organAortaCheckBox"),
    ("gallbladder", "organGallbladderCheckBox"),
    ("spleen", "organSpleenCheckBox"),
    ("left kidney", "organLeftKidneyCheckBox"),
    ("right kidney", "organRightKidneyCheckBox"),
    ("liver", "organLiverCheckBox"),
    ("stomach", "organStomachCheckBox"),
    ("pancreas", "organPancreasCheckBox"),
]
ORGAN_NAMES = [name for name, _ in ORGANS]

DEVICES = ("auto", "cpu", "cuda")  # offered before the worker is checked; then each GPU (cuda:N)
PRECISIONS = ("fp32", "int8", "bf16", "fp16")  # int8: CPU only

WEIGHTS_DEMO = "demo"
WEIGHTS_OFFICIAL = "official"
WEIGHTS_FILE = "file"
WEIGHTS_CHOICES = (WEIGHTS_DEMO, WEIGHTS_OFFICIAL, WEIGHTS_FILE)

# The pipeline's own demo cards and reconstruction default (pantheon.defaults: torch-free).
DEMO_CARD = NEMESIS_DEMO_CARD
DEMO_PROBE_CARD = NEMESIS_DEMO_PROBE_CARD
DEFAULT_MASK_RATIO = NEMESIS_MASK_RATIO
# pantheon.models.nemesis.atypicality.DEFAULT_DRAWS (that module imports torch-side code)
DEFAULT_ATYPICALITY_DRAWS = 4
OFFICIAL_CARD = "nemesis-mae-768"
OFFICIAL_SIZE_TEXT = "about 1.3 GB"


# ------------------------------------------------------------------------------------ params
def weights_params(choice: str, path: Optional[str] = None, allow_download: bool = False) -> Dict[str, object]:
    """Map the panel's weights choice to worker parameters.

    ``demo`` -> the bundled demo encoder card; ``official`` -> the published NEMESIS checkpoint card,
    downloadable only when ``allow_download`` (the user agreed; its sha256 is not published, so the
    computed checksum is recorded next to the cached file: ``trust_unverified``); ``file`` -> a local
    checkpoint path, which must exist.
    """
    choice = (choice or WEIGHTS_DEMO).lower()
    if choice == WEIGHTS_DEMO:
        return {"weights": DEMO_CARD}
    if choice == WEIGHTS_OFFICIAL:
        out: Dict[str, object] = {"weights": OFFICIAL_CARD}
        if allow_download:
            out.update(allow_download=True, trust_unverified=True)
        return out
    if choice == WEIGHTS_FILE:
        if not path or not str(path).strip():
            raise ValueError("Choose a NEMESIS checkpoint file (weights: file).")
        p = os.path.abspath(os.path.expanduser(str(path).strip()))
        if not os.path.isfile(p):
            raise ValueError(f"The checkpoint file {p} does not exist.")
        return {"weights": p}
    raise ValueError(f"Unknown weights choice {choice!r}; use one of {', '.join(WEIGHTS_CHOICES)}.")


def probe_params(path: Optional[str]) -> Dict[str, object]:
    """Organ probe: a trained probe file, or (empty) the demo probe that matches the demo encoder."""
    if path and str(path).strip():
        p = os.path.abspath(os.path.expanduser(str(path).strip()))
        if not os.path.isfile(p):
            raise ValueError(f"The probe file {p} does not exist.")
        return {"probe": p}
    return {"probe": DEMO_PROBE_CARD}


def build_params(action: str, *, weights: Optional[Dict[str, object]] = None, device: str = "auto",
                 precision: str = "fp32", stride: Optional[int] = None, organs: Optional[Sequence[str]] = None,
                 probe: Optional[str] = None, point_lps=None, mask_ratio=DEFAULT_MASK_RATIO, noise_std: float = 0.0,
                 seed: int = 0, draws: int = DEFAULT_ATYPICALITY_DRAWS, **extra) -> Dict[str, object]:
    """Worker parameters for one action (only the keys that pipeline takes)."""
    if action not in ACTIONS:
        raise ValueError(f"Unknown action {action!r}; use one of {', '.join(ACTIONS)}.")
    device = check_device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"Precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "int8" and device.startswith("cuda"):
        raise ValueError("int8 runs on the CPU only: choose the device cpu (or auto), or another precision.")
    params: Dict[str, object] = dict(weights or {"weights": DEMO_CARD})
    params["device"] = device
    if action != "train_probe":
        params["precision"] = precision
    if stride and action in ("features", "organs", "pca", "similarity", "strokes"):
        params["stride"] = int(stride)
    if action == "organs":
        chosen = list(organs) if organs else list(ORGAN_NAMES)
        unknown = [o for o in chosen if o not in ORGAN_NAMES]
        if unknown:
            raise ValueError(f"Unknown organ(s) {', '.join(unknown)}; choose from {', '.join(ORGAN_NAMES)}.")
        params["organs"] = chosen
        params.update(probe_params(probe))
    if action in ("similarity", "reconstruct"):
        if point_lps is None:
            raise ValueError(f"{action} needs a point (LPS mm).")
        params["point_lps"] = [float(v) for v in point_lps[:3]]
    if action in ("reconstruct", "atypicality"):
        plane, axis = (float(v) for v in mask_ratio)
        for v in (plane, axis):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"mask ratios must be in [0, 1), got {mask_ratio}")
        params.update(mask_ratio=[plane, axis], seed=int(seed))
    if action == "reconstruct":
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        params["noise_std"] = float(noise_std)
    if action == "atypicality":
        if int(draws) < 1:
            raise ValueError(f"The number of mask draws must be at least 1, got {draws}.")
        params["draws"] = int(draws)
    params.update({k: v for k, v in extra.items() if v is not None})
    return params


# ------------------------------------------------------------------------------------ strokes
# Values of the stroke map the worker reads (pantheon.models.nemesis.strokes, which imports torch-side
# code and is not imported here).
STROKE_FOREGROUND, STROKE_BACKGROUND = 1, 2
_BACKGROUND_WORDS = ("background", "outside", "around", "bg", "not ")


class StrokesProblem(ValueError):
    """What the annotator has to paint or choose before strokes can be segmented (one sentence)."""


def stroke_label_map(foreground, background, foreground_name: str = "foreground",
                     background_name: str = "background"):
    """The stroke map from two masks on the CT's grid: 1 foreground, 2 background, 0 elsewhere and
    where the two overlap (a voxel painted as both says nothing). :class:`StrokesProblem`, in one
    sentence, when no foreground or no background voxel is left."""
    import numpy as np
    fg, bg = np.asarray(foreground, bool), np.asarray(background, bool)
    both = fg & bg
    out = np.zeros(fg.shape, np.uint8)
    out[fg & ~both] = STROKE_FOREGROUND
    out[bg & ~both] = STROKE_BACKGROUND
    for value, mask, name, other, kind, where in (
            (STROKE_FOREGROUND, fg, foreground_name, background_name, "foreground", "inside the structure"),
            (STROKE_BACKGROUND, bg, background_name, foreground_name, "background", "around the structure")):
        if not (out == value).any():
            if mask.any():
                raise StrokesProblem(f"Every voxel of the {name!r} segment is also in the {other!r} segment (voxels in "
                                 f"both count as unlabelled); paint {kind} strokes where the other segment is not.")
            raise StrokesProblem(f"The {kind} segment {name!r} is empty; paint at least one stroke {where} with the "
                             "Segment Editor.")
    return out


def default_stroke_segments(segments: Sequence, foreground: str = "", background: str = ""):
    """(foreground ID, background ID) to offer for a stroke segmentation's ``segments`` [(ID, name)]:
    the current choices while they exist, else a segment named like background (background,
    outside, around, bg) for the background and another for the foreground; "" when there is none."""
    ids = [sid for sid, _ in segments]
    named_bg = [sid for sid, name in segments if any(w in f"{name} ".lower() for w in _BACKGROUND_WORDS)]
    fg = foreground if foreground in ids else ""
    bg = background if background in ids and background != fg else ""
    if not bg:
        bg = next((sid for sid in named_bg if sid != fg), "")
    if not fg:
        fg = next((sid for sid in ids if sid != bg and sid not in named_bg), "")
        fg = fg or next((sid for sid in ids if sid != bg), "")
    if not bg:
        bg = next((sid for sid in ids if sid != fg), "")
    return fg, bg


def strokes_text(scalars: dict, output_name: str = "") -> str:
    """One log line for a stroke segmentation: its volume and where it went."""
    where = f" in {output_name}" if output_name else ""
    if "segmented_volume_ml" not in (scalars or {}):
        return f"Segmented from strokes{where}."
    return (f"Segmented from strokes{where}: {float(scalars['segmented_volume_ml']):.1f} ml "
            f"({int(scalars.get('segmented_voxels', 0))} voxels).")


def atypicality_text(scalars: dict, draws: Optional[int] = None) -> str:
    """One log line for an atypicality map: what it averaged and its mean inside the body."""
    scalars = scalars or {}
    n = int(scalars.get("mask_draws", draws or 0))
    text = f"Atypicality map over {n} mask draw{'s' if n != 1 else ''}" if n else "Atypicality map"
    if "mean_error_in_body_hu" in scalars:
        text += f": mean reconstruction error in the body {float(scalars['mean_error_in_body_hu']):.1f} HU"
    never = int(scalars.get("voxels_never_hidden", 0))
    if never:
        text += f"; {never} voxels no draw hid are 0"
    return text + ". Bright = unlike what the model learnt to fill in; not a diagnosis."


# ------------------------------------------------------------------------------------ similarity
class SimilarityProblem(ValueError):
    """Why a similarity cannot run for the point as it is (one sentence for the status line)."""


def point_outside_text(point_lps, ras_to_ijk, dims, name: str = "the CT") -> Optional[str]:
    """The sentence to show when ``point_lps`` (LPS mm, in the volume's own frame) lies outside a
    volume of ``dims`` voxels (I, J, K) whose RAS-to-IJK matrix is ``ras_to_ijk`` (4x4 rows);
    None when it is inside (within half a voxel of the edge centres, as the worker tests it)."""
    ras = lps_to_ras(point_lps) + [1.0]
    ijk = [sum(float(row[c]) * ras[c] for c in range(4)) for row in list(ras_to_ijk)[:3]]
    if all(-0.5 <= v <= int(n) - 0.5 for v, n in zip(ijk, dims)):
        return None
    where = ", ".join(f"{v:.1f}" for v in ras[:3])
    return f"The point (RAS {where} mm) lies outside {name}; place it inside that image."


def best_match_text(scalars: dict, best_match_ras, target_name: str = "") -> str:
    """The status line for a similarity over another CT: where its best match is (RAS mm) and how similar."""
    where = f" in {target_name}" if target_name else ""
    if best_match_ras is None:
        return f"Similarity mapped{where}."
    ras = ", ".join(f"{float(v):.1f}" for v in best_match_ras)
    score = scalars.get("best_similarity") if scalars else None
    similar = f", similarity {float(score):.2f}" if isinstance(score, (int, float)) else ""
    return f"Best match{where}: RAS ({ras}) mm{similar}."


# ------------------------------------------------------------------------------------ phantom
# Run by the worker's Python (which has numpy/scipy and the pantheon package): the Slicer process
# itself does not import pantheon.synth.
PHANTOM_SCRIPT = r"""
import sys
from pantheon.io import write_volume
from pantheon.synth import make_abdomen_phantom
out, seed, oblique = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ct, lab = make_abdomen_phantom(seed, shape=tuple(int(v) for v in sys.argv[4].split(",")) if len(sys.argv) > 4 else None,
                               oblique=oblique if oblique > 0 else False)
write_volume(ct, out + "/phantom.nrrd")
write_volume(lab, out + "/phantom-label.nrrd")
"""


def make_phantom_files(out_dir: str, python: Optional[str] = None, seed: int = 0, oblique: float = 0.0,
                       shape: Optional[Sequence[int]] = None, env: Optional[dict] = None,
                       timeout: float = 300.0) -> tuple:
    """Write a synthetic abdominal CT and its BTCV label map (NRRD) with ``python`` (the worker's)."""
    args = [str(out_dir), str(int(seed)), str(float(oblique))]
    if shape:
        args.append(",".join(str(int(v)) for v in shape))
    run_worker_python(PHANTOM_SCRIPT, args, python, env, timeout, what="Making the phantom")
    return os.path.join(out_dir, "phantom.nrrd"), os.path.join(out_dir, "phantom-label.nrrd")


def metrics_text(scalars: dict) -> str:
    parts = []
    if "psnr_db" in scalars:
        hidden = (f" (hidden patches {float(scalars['psnr_masked_db']):.2f} dB)"
                  if scalars.get("psnr_masked_db") is not None else "")
        parts.append(f"PSNR {float(scalars['psnr_db']):.2f} dB{hidden}")
    if "ssim" in scalars:
        parts.append(f"SSIM {float(scalars['ssim']):.3f}")
    if "masked_fraction" in scalars:
        parts.append(f"masked {100 * float(scalars['masked_fraction']):.0f}%")
    return ", ".join(parts)


def probe_path_from_result(result: dict) -> Optional[str]:
    """Where the trained probe was written, from a train_probe result."""
    for key in ("probe", "probe_path", "weights"):
        value = result.get(key) if isinstance(result, dict) else None
        if isinstance(value, str) and value:
            return value
    for sub in ("files", "outputs", "notes", "scalars"):
        d = result.get(sub) if isinstance(result, dict) else None
        if isinstance(d, dict):
            for key in ("probe", "probe_path"):
                if isinstance(d.get(key), str):
                    p = d[key]
                    return p if os.path.isabs(p) else os.path.join(result.get("output_dir", ""), p)
    out = result.get("output_dir") if isinstance(result, dict) else None
    if out and os.path.isdir(out):
        for name in sorted(os.listdir(out)):
            if name.endswith((".pt", ".safetensors")):
                return os.path.join(out, name)
    return None


