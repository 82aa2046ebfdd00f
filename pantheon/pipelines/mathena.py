"""ToothAnalysis: MATHENA on one panoramic radiograph (OPG); every output lands on the input's pixels.

Data flow (MATHE detects, HENA analyses per-tooth crops, as in the paper; sizes are assumptions, see
``pantheon.models.mathena.preprocess``):

1. The input Volume is checked (a single slice, at least 64 px a side, finite, not constant);
   colour is turned into luminance (ITU-R BT.601), intensities into float32 [0, 1]
   (:func:`~pantheon.models.mathena.preprocess.to_grayscale_float`).
2. The image is letterboxed to the detector input (``DETECTOR_INPUT_HW``, aspect kept, zero pad);
   MATHE detects teeth with class-agnostic NMS (one box per tooth) and the numbering step
   (:mod:`pantheon.models.mathena.numbering`) gives every tooth one FDI number, each number at most
   once, in arch order, gaps for missing teeth, weak boxes that fit no free number left out; boxes
   are mapped back to source pixels (``Letterbox.boxes_to_source``).
3. Each box is expanded by ``CROP_MARGIN``, cropped from the *source-resolution* image and
   letterboxed to ``CROP_SIZE`` (:func:`crop_tooth`); HENA gives caries and anomaly logits per
   crop pixel, an image-level anomaly logit and Demirjian stage logits.
4. Caries / anomaly probabilities (the crop's averaged with its mirror image's) are pasted back onto
   the source grid (``ToothCrop.paste``; where crops overlap the maximum wins) and thresholded at
   ``MASK_THRESHOLD`` (0.3; both chosen on validation OPGs, ``pantheon.models.mathena.hena``).

So a very large image is *processed* at the models' resolutions (detector input, crop size) and
its outputs are still on the source grid: label volumes are ``volume.with_array(...)``, the exact
shape, spacing, origin and direction of the input.

The tooth label map paints each detection box (not a tooth outline: MATHENA has no tooth
segmentation head) with the FDI number; where boxes overlap the higher score wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..anatomy import tooth_code
from ..defaults import MATHENA_DEMO_DETECTOR_CARD, MATHENA_DEMO_HENA_CARD, MATHENA_SCORE_THRESHOLD
from ..errors import CheckpointError, InputError, PantheonError
from ..io.validate import (
    COMMAND_PIXEL_LIMITS,
    check_pixel_count,
    require_finite,
    require_int,
    require_number,
    require_volume,
)
from ..io.volume import Volume
from ..models.mathena.hena import FLIP_AVERAGE, MASK_THRESHOLD, crop_probabilities
from ..progress import Reporter
from ..results import HeatmapOutput, LabelOutput, Result, Segment

MIN_SIDE = 64
#: Largest image ToothAnalysis takes by default, in pixels (50 million, e.g. 10000 x 5000; a panoramic
#: X-ray is 3-25 million). The pipeline keeps about 25 bytes a pixel (float32 maps on the source grid).
#: Overridable: ``max_pixels`` of :func:`opg_to_gray` / :func:`analyze` (0 = no limit), ``--max-pixels``.
MAX_PIXELS = COMMAND_PIXEL_LIMITS["tooth"]
#: DICOM modalities a panoramic X-ray can carry: PX panoramic, DX digital / CR computed / RG
#: radiography, IO intra-oral, OT other (secondary captures). Any other (CT, MR, XC photograph...) is refused.
XRAY_MODALITIES = ("PX", "DX", "CR", "RG", "IO", "OT")
#: A panoramic X-ray is about twice as wide as high (1.6-2.6); narrower images are refused.
MIN_ASPECT = 1.3
#: Colour photographs: more than COLOUR_FRACTION of 16-pixel (or larger) blocks with a chroma
#: (max - min channel, 0..1) above COLOUR_CHROMA. An X-ray stored as RGB has R = G = B.
COLOUR_CHROMA, COLOUR_FRACTION = 0.1, 0.2
#: Fraction of the image at the darkest level from which a narrow image is called a cross-section.
CROSS_SECTION_DARK = 0.2
#: The detector's own evidence: with at least MIN_TEETH_FOR_ORDER confident boxes (p_real >= 0.5,
#: before the numbering step), fewer than MIN_ARCH_ORDER of their pairs placed as in a panoramic
#: X-ray with the detector's own numbers (upper above lower, patient's right on the image's left,
#: numbers growing away from the midline) flags the result. Held-out synthetic OPGs: 0.96-1.0;
#: noise, photographs and CT slices: 0.55-0.75.
MIN_TEETH_FOR_ORDER, MIN_ARCH_ORDER = 4, 0.85
#: Fewer teeth than this (a panoramic X-ray of an adult shows about 28; noise and other pictures
#: give the demo detector 0-8, in no order) flags the result too.
FEW_TEETH = 8
DEMO_DETECTOR_CARD = MATHENA_DEMO_DETECTOR_CARD
DEMO_HENA_CARD = MATHENA_DEMO_HENA_CARD
MODEL_NAME = "MATHENA (arXiv 2604.00537, reconstruction)"
# SNOMED CT 80967001 |Dental caries (disorder)|. Segment codes say what a segment is; the entry of
# Slicer's terminology lists written for each (caries: "Lucency" in "Tooth"; anomaly: "Tissue" in
# "Jaw region"; a tooth: "Tooth" + Right/Left) comes from pantheon.anatomy.slicer_term.
CARIES_CODE = ("SCT", "80967001", "Dental caries")
ANOMALY_CODE = ("SCT", "263654008", "Abnormal")  # impacted teeth and periapical lesions, one class
# Per-tooth finding rules. Stray pixels above 0.5 appear on many healthy teeth (on held-out
# synthetic OPGs: any caries pixel on 11-42% of caries-free teeth, any anomaly pixel on 42% of
# normal ones), so a tooth is called from an area / probability, not from one pixel.
# Caries >= 0.25% of the 64x64 crop (~10 px) above MASK_THRESHOLD: on 60 validation OPGs (seeds
# 43000-43059, GT-box crops, demo HENA) sensitivity 0.92 with 1.1% of the 1560 caries-free teeth
# flagged (0.5% of the crop: 0.80 / 0.8%; any pixel: 0.97 / 3.3%). Anomaly probability >= 0.2,
# measured on the held-out OPGs when the demo was first built: sensitivity 0.76, 0.2% flagged (the
# probability is calibrated to the data's prevalence, so 0.5 calls only half the anomalies).
MIN_CARIES_FRACTION = 0.0025
ANOMALY_THRESHOLD = 0.2
LUMA = np.array([0.299, 0.587, 0.114])

# Quadrant base colours (RGB 0..1): 1 blue, 2 green, 3 orange, 4 purple; primary 5-8 reuse 1-4.
_QUADRANT_RGB = {1: (0.23, 0.49, 0.85), 2: (0.22, 0.70, 0.38), 3: (0.93, 0.55, 0.15), 4: (0.60, 0.36, 0.78)}


def tooth_color(fdi: int) -> Tuple[float, float, float]:
    """Colour per quadrant, lighter towards the third molar so neighbours are told apart."""
    q, t = divmod(int(fdi), 10)
    base = np.array(_QUADRANT_RGB[(q - 1) % 4 + 1])
    mix = 0.45 * (t - 1) / 7.0
    return tuple(float(c) for c in base * (1 - mix) + mix)


def tooth_name(fdi: int) -> str:
    return f"tooth {int(fdi)}"


# ---------------------------------------------------------------------------- input
def spacing_known(volume: Volume) -> bool:
    """False for pixel spacing exactly (1, 1): what PNG/JPEG readers report when there is none."""
    return not (volume.spacing[0] == 1.0 and volume.spacing[1] == 1.0)


def opg_to_gray(volume: Volume, name: str = "input", max_pixels: Optional[int] = MAX_PIXELS) -> np.ndarray:
    """(H, W) float32 in [0, 1] from a single-slice Volume (grayscale or RGB/RGBA); InputError
    with one sentence when it cannot be a panoramic X-ray: 3D, too small or too large
    (``max_pixels``, None or 0 = no limit), a DICOM of another modality (CT, MR...), a colour
    photograph, or an image that is not wide like a panoramic X-ray (a CT or MR slice...)."""
    from ..models.mathena.preprocess import to_grayscale_float
    require_volume(volume, name)
    if volume.shape[0] > 1:
        raise InputError(f"The {name} image is a 3D volume ({volume.shape[0]} slices of {volume.shape[1]}x"
                         f"{volume.shape[2]}); ToothAnalysis needs a 2D panoramic X-ray.")
    check_pixel_count(volume.size_ijk, max_pixels or 0, f"The {name} image", volume.components, two_d=True)
    modality = str(volume.metadata.get("modality", "")).strip().upper()
    if modality and modality not in XRAY_MODALITIES:
        raise InputError(f"The {name} image is a DICOM {_MODALITY_NAMES.get(modality, modality)} image (Modality "
                         f"{modality}); ToothAnalysis needs a panoramic dental X-ray (Modality PX, DX, CR or IO).")
    a = volume.array[0]
    if a.size == 0:
        raise InputError(f"The {name} image is empty.")
    H, W = a.shape[:2]
    if min(H, W) < MIN_SIDE:
        raise InputError(f"The {name} image is {W}x{H} pixels; ToothAnalysis needs at least {MIN_SIDE} pixels "
                         "a side (a panoramic X-ray is usually over 1000 wide).")
    if volume.components > 1:
        if volume.components not in (3, 4):
            raise InputError(f"The {name} image has {volume.components} components; expected grayscale or RGB.")
        require_finite(a, name, "values")
        colour = colour_fraction(a)
        if colour > COLOUR_FRACTION:
            raise InputError(f"The {name} image is a colour picture ({100 * colour:.0f}% of it in colour), not an "
                             "X-ray; ToothAnalysis needs a panoramic dental X-ray (grey levels, also when stored "
                             "as RGB).")
        a = np.tensordot(a[..., :3].astype(np.float32), LUMA.astype(np.float32), axes=([-1], [0]))
    require_finite(a, name, "pixels")
    try:
        gray = to_grayscale_float(a)
    except InputError as exc:
        msg = str(exc).rstrip(".")
        raise InputError(f"Cannot analyse the {name} image: {msg}.") from None
    _check_panoramic_shape(gray, name)
    return gray


_MODALITY_NAMES = {"CT": "CT", "MR": "MR", "PT": "PET", "NM": "nuclear medicine", "US": "ultrasound",
                   "XC": "photograph", "ES": "endoscopy", "OP": "ophthalmic photograph", "SM": "microscopy",
                   "MG": "mammography", "XA": "angiography", "RF": "fluoroscopy", "SEG": "segmentation"}


def colour_fraction(rgb: np.ndarray) -> float:
    """Fraction of the image, in blocks of at least 16 x 16 pixels, whose mean colour has a chroma
    (max - min of R, G, B on a 0..1 scale) above COLOUR_CHROMA. 0 for an X-ray stored as RGB; block
    means ignore per-pixel colour noise, so only real colour regions count."""
    a = np.asarray(rgb)[..., :3]
    H, W = a.shape[:2]
    b = max(16, min(H, W) // 32)
    hh, ww = (H // b) * b, (W // b) * b
    if hh == 0 or ww == 0:
        return 0.0
    step = max(1, b // 8)  # sample within blocks: cheap on very large images, same block means
    sub = a[:hh:step, :ww:step].astype(np.float32)
    lo, hi = float(sub.min()), float(sub.max())
    if not hi > lo:
        return 0.0
    sub = (sub - lo) / (hi - lo)
    bh, bw = b // step, b // step
    hh2, ww2 = (sub.shape[0] // bh) * bh, (sub.shape[1] // bw) * bw
    blocks = sub[:hh2, :ww2].reshape(hh2 // bh, bh, ww2 // bw, bw, 3).mean(axis=(1, 3))
    chroma = blocks.max(-1) - blocks.min(-1)
    return float((chroma > COLOUR_CHROMA).mean())


def _check_panoramic_shape(gray: np.ndarray, name: str) -> None:
    """A panoramic X-ray is a wide image; a CT/MR slice is square with a dark surround."""
    H, W = gray.shape
    aspect = W / H
    if aspect >= MIN_ASPECT:
        return
    dark = float((gray[::max(1, H // 512), ::max(1, W // 512)] <= 0.02).mean())
    if dark >= CROSS_SECTION_DARK:
        what = (f"{W} x {H} pixels with {100 * dark:.0f}% of it at the darkest level around the picture, like a "
                "CT or MR cross-section")
    elif 1 / 1.1 <= aspect <= 1.1:
        what = f"{W} x {H} pixels, square"
    elif aspect < 1:
        what = f"{W} x {H} pixels, taller than wide"
    else:
        what = f"{W} x {H} pixels, only {aspect:.2f} times as wide as high"
    raise InputError(f"The {name} image is {what}; ToothAnalysis needs a panoramic dental X-ray, which is about "
                     "twice as wide as high (not a CT or MR slice, a photograph, an intra-oral or a cephalometric "
                     "image).")


def arch_order(dets: List[dict]) -> Tuple[float, int]:
    """(fraction of tooth pairs placed as in a panoramic X-ray, number of pairs compared).

    On the image, the patient's right (FDI quadrants 1, 4, 5, 8) is on the left; upper teeth
    (1, 2, 5, 6) are above lower ones on the same side; within a quadrant, higher numbers lie further
    from the midline. 1.0 is a perfect arch; random boxes give about 0.5. NaN with fewer than 2 teeth.
    """
    info = []
    for d in dets:
        q, t = divmod(int(d["fdi"]), 10)
        q = (q - 1) % 4 + 1
        x0, y0, x1, y1 = d["box"]
        info.append((q, t, (x0 + x1) / 2, (y0 + y1) / 2))
    ok = total = 0
    for a in range(len(info)):
        for b in range(a + 1, len(info)):
            qa, ta, xa, ya = info[a]
            qb, tb, xb, yb = info[b]
            right_a, right_b = qa in (1, 4), qb in (1, 4)
            upper_a, upper_b = qa in (1, 2), qb in (1, 2)
            if right_a != right_b:
                total += 1
                ok += (xa < xb) if right_a else (xb < xa)
            elif upper_a != upper_b:
                total += 1
                ok += (ya < yb) if upper_a else (yb < ya)
            if qa == qb and ta != tb:
                total += 1
                further_a = ta > tb
                if right_a:  # image-left quadrants: further from the midline = smaller x
                    ok += (xa < xb) if further_a else (xb < xa)
                else:
                    ok += (xa > xb) if further_a else (xb > xa)
    return (ok / total if total else float("nan")), total


# ---------------------------------------------------------------------------- models
@dataclass
class MathenaModels:
    detector: torch.nn.Module
    hena: torch.nn.Module
    detector_id: str = "unknown"
    hena_id: str = "unknown"
    demo: bool = False


def _resolve(ref: Optional[str], default_card: str):
    from ..runtime import resolve_weights_argument
    return resolve_weights_argument(ref, default_card)


def _label(path: Path, card) -> str:
    if card is None:
        return path.name
    return card.id + ("-demo" if card.demo and "demo" not in card.id else "")


def load_mathena_models(detector: Optional[str] = None, hena: Optional[str] = None) -> MathenaModels:
    """Detector and HENA from file paths or model-card ids (default the bundled demo cards)."""
    from ..models.mathena import load_mathena
    dpath, dcard = _resolve(detector, DEMO_DETECTOR_CARD)
    hpath, hcard = _resolve(hena, DEMO_HENA_CARD)
    det = load_mathena(dpath, kind="MATHEDetector")
    hen = load_mathena(hpath, kind="HENA")
    demo = bool((dcard is not None and dcard.demo) or (hcard is not None and hcard.demo))
    return MathenaModels(det, hen, _label(dpath, dcard), _label(hpath, hcard), demo)


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _config(model) -> dict:
    return dict(getattr(model, "config", {}) or {})


# ---------------------------------------------------------------------------- steps
def detect_teeth(detector, gray: np.ndarray, score_thresh: float = MATHENA_SCORE_THRESHOLD,
                 input_hw: Optional[Tuple[int, int]] = None, raw: Optional[list] = None) -> List[dict]:
    """Teeth on a (H, W) [0, 1] image: ``[{"fdi", "score", "number_probability", "box" (x0, y0,
    x1, y1) source pixel-edge coordinates}]`` sorted by FDI: one box per tooth, each FDI number at
    most once, numbers in arch order (:func:`~pantheon.models.mathena.numbering.detect_and_number`).
    ``raw``, when a list, receives the detector's own boxes with its best number per box (score >=
    ``score_thresh``) and ``p_real``, the probability that the box is a tooth of its own: the
    evidence :func:`arch_order` judges."""
    from ..models.mathena.numbering import detect_and_number
    if int(getattr(detector, "num_classes", 32)) < 32:
        raise CheckpointError("This detector has no FDI tooth classes (a single 'tooth' class); ToothAnalysis "
                              "needs a detector trained on FDI numbers.")
    found = detect_and_number(detector, gray, score_thresh, input_hw)
    H, W = gray.shape

    def rows(d, extra=None):
        out = []
        for k, (box, s, f) in enumerate(zip(d["boxes"], d["scores"], d["labels"])):
            x0, y0, x1, y1 = float(max(box[0], 0)), float(max(box[1], 0)), float(min(box[2], W)), float(min(box[3], H))
            if x1 - x0 < 1 or y1 - y0 < 1:  # a box in the letterbox padding, nothing of the image
                continue
            row = {"fdi": int(f), "score": float(s), "box": (x0, y0, x1, y1)}
            if extra:
                row.update({name: float(v[k]) for name, v in extra.items()})
            out.append(row)
        return out

    if raw is not None:
        raw.extend(rows(found["raw"], {"p_real": found["raw"]["p_real"]}))
    return rows(found, {"number_probability": found["number_probability"]})


def _box_pixels(box, H, W):
    """Integer pixel bounds (half-open) of the pixels whose centres lie in a pixel-edge box."""
    x0, y0, x1, y1 = box
    c0, r0 = int(np.clip(np.ceil(x0 - 0.5), 0, W)), int(np.clip(np.ceil(y0 - 0.5), 0, H))
    c1, r1 = int(np.clip(np.ceil(x1 - 0.5), 0, W)), int(np.clip(np.ceil(y1 - 0.5), 0, H))
    return r0, r1, c0, c1


def _paste_max(target: np.ndarray, info, crop_map: np.ndarray, thresh: float) -> int:
    """Paste a crop-space probability map onto ``target`` (source grid) by maximum; returns the
    number of source pixels of this tooth's map above ``thresh``."""
    H, W = target.shape
    if hasattr(info, "to_source"):
        y0, x0, patch = info.to_source(crop_map)
        h, w = min(patch.shape[0], max(0, H - y0)), min(patch.shape[1], max(0, W - x0))
        patch = patch[:h, :w]
        view = target[y0:y0 + h, x0:x0 + w]
    else:
        patch = np.asarray(info.paste(crop_map, (H, W)), np.float32)
        view = target
    np.maximum(view, patch, out=view)
    return int((patch > thresh).sum())


# ---------------------------------------------------------------------------- pipeline
def analyze(volume: Volume, detector, hena, score_thresh: float = MATHENA_SCORE_THRESHOLD, progress=None, cancel=None,
            batch_size: int = 8, mask_thresh: float = MASK_THRESHOLD, detector_id: str = "unknown",
            hena_id: str = "unknown", demo: Optional[bool] = None,
            known_spacing: Optional[bool] = None, anomaly_thresh: float = ANOMALY_THRESHOLD,
            min_caries_fraction: float = MIN_CARIES_FRACTION, max_pixels: Optional[int] = MAX_PIXELS,
            flip_average: bool = FLIP_AVERAGE) -> Result:
    """Tooth detection and per-tooth caries / anomaly / stage analysis of one OPG.

    ``detector`` / ``hena`` are models (or a :class:`MathenaModels` as ``detector`` with ``hena``
    None). ``known_spacing`` overrides the rule "spacing exactly (1, 1) means unknown".
    Caries / anomaly probabilities are HENA's on the crop averaged with its mirror image
    (``flip_average``; :data:`~pantheon.models.mathena.hena.FLIP_AVERAGE` says why).
    A tooth has caries when at least ``min_caries_fraction`` of its crop is above ``mask_thresh``,
    and an anomaly when HENA's per-tooth anomaly probability is at least ``anomaly_thresh``; the
    caries / anomaly segmentations keep only those teeth's pixels (the probability maps keep all).
    Returns labels "teeth" (value = FDI), "caries", "anomaly"; heatmaps "caries_probability",
    "anomaly_probability"; table "findings"; scalars; notes. All on the input's geometry.
    """
    from ..models.mathena import DEMIRJIAN_STAGES
    from ..models.mathena.preprocess import CROP_MARGIN, CROP_SIZE, crop_tooth
    if isinstance(detector, MathenaModels):
        models = detector
        detector, hena = models.detector, models.hena
        detector_id, hena_id = models.detector_id, models.hena_id
        demo = models.demo if demo is None else demo
    rep = Reporter(progress, cancel)
    rep(0.0, "Checking the image")
    score_thresh = require_number(score_thresh, "detection score threshold", 0.0, 1.0)
    mask_thresh = require_number(mask_thresh, "mask threshold", 0.0, 1.0)
    anomaly_thresh = require_number(anomaly_thresh, "anomaly threshold", 0.0, 1.0)
    min_caries_fraction = require_number(min_caries_fraction, "minimum caries fraction", 0.0, 1.0)
    batch_size = require_int(batch_size, "batch size (tooth crops per forward pass)", minimum=1)
    gray = opg_to_gray(volume, max_pixels=max_pixels)
    H, W = gray.shape
    rep(0.05, "Detecting teeth")
    raw: List[dict] = []
    dets = detect_teeth(detector, gray, score_thresh, raw=raw)
    rep(0.35, f"{len(dets)} teeth detected")
    # Arch order is judged on the detector's own numbers of its confident boxes (before the
    # numbering step, which puts any boxes in order): on a non-OPG they are scattered. Weak boxes
    # (noise fires many) are no teeth to judge.
    confident = [r for r in raw if r["p_real"] >= 0.5]
    order, pairs = arch_order(confident)
    input_warning = None
    few = len(dets) < FEW_TEETH
    # with few teeth even before numbering, "only N teeth" says more than their order
    if len(confident) >= (FEW_TEETH if few else MIN_TEETH_FOR_ORDER) and order < MIN_ARCH_ORDER:
        input_warning = (f"The {len(confident)} detected teeth are not in the order of a dental arch (only "
                         f"{100 * order:.0f}% of tooth pairs placed as in a panoramic X-ray), so this image may not "
                         "be a panoramic dental X-ray and its findings are unreliable.")
    elif few:
        count = "No" if not dets else f"Only {len(dets)}"
        input_warning = (f"{count} {'tooth was' if len(dets) == 1 else 'teeth were'} detected: unless this is a "
                         "panoramic dental X-ray of a patient with few teeth, the image is not one and its findings "
                         "are meaningless.")

    caries_p = np.zeros((H, W), np.float32)
    anomaly_p = np.zeros((H, W), np.float32)
    caries_kept = np.zeros((H, W), np.float32)  # probabilities of the teeth called carious / anomalous
    anomaly_kept = np.zeros((H, W), np.float32)
    teeth = np.zeros((H, W), np.uint8)
    per_tooth = []
    size = int(_config(hena).get("crop_size", 0) or CROP_SIZE)
    cin = int(_config(hena).get("in_channels", 1))
    dev = _device_of(hena)
    stage_names = list(DEMIRJIAN_STAGES)
    for first in range(0, len(dets), max(1, batch_size)):
        chunk = dets[first:first + max(1, batch_size)]
        crops, infos = [], []
        for d in chunk:
            crop, info = crop_tooth(gray, d["box"], size, CROP_MARGIN)
            crops.append(np.asarray(crop, np.float32))
            infos.append(info)
        x = torch.from_numpy(np.stack(crops)[:, None]).repeat(1, cin, 1, 1).to(dev)
        probs = {k: v.cpu().numpy() for k, v in crop_probabilities(hena, x, flip_average).items()}
        car, ano, score, stage = probs["caries"], probs["anomaly"], probs["anomaly_score"], probs["stage"]
        for k, (d, info) in enumerate(zip(chunk, infos)):
            has_caries = float((car[k] > mask_thresh).mean()) >= min_caries_fraction
            has_anomaly = float(score[k]) >= anomaly_thresh
            # only the tooth's window of the source grid is touched (fast on very large images)
            n_car = _paste_max(caries_p, info, car[k], mask_thresh)
            n_ano = _paste_max(anomaly_p, info, ano[k], mask_thresh)
            if has_caries:
                _paste_max(caries_kept, info, car[k], mask_thresh)
            if has_anomaly:
                _paste_max(anomaly_kept, info, ano[k], mask_thresh)
            s = int(np.argmax(stage[k]))
            per_tooth.append(dict(d, caries=has_caries, anomaly=has_anomaly,
                                  caries_pixels=n_car if has_caries else 0, anomaly_pixels=n_ano if has_anomaly else 0,
                                  anomaly_probability=float(score[k]),
                                  stage=stage_names[s] if s < len(stage_names) else str(s),
                                  stage_probability=float(stage[k][s])))
        rep(0.35 + 0.55 * (first + len(chunk)) / max(len(dets), 1), f"Analysed {first + len(chunk)}/{len(dets)} teeth")

    for d in sorted(per_tooth, key=lambda t: t["score"]):  # higher score painted last (wins)
        r0, r1, c0, c1 = _box_pixels(d["box"], H, W)
        teeth[r0:r1, c0:c1] = d["fdi"]
    caries = (caries_kept > mask_thresh).astype(np.uint8)
    anomaly = (anomaly_kept > mask_thresh).astype(np.uint8)

    known = spacing_known(volume) if known_spacing is None else bool(known_spacing)
    px_area = float(volume.spacing[0] * volume.spacing[1])
    rows = []
    for d in per_tooth:
        x0, y0, x1, y1 = d["box"]
        rows.append({"tooth": d["fdi"], "score": round(d["score"], 4),
                     "number_probability": round(d.get("number_probability", 1.0), 4),
                     "caries": d["caries"], "anomaly": d["anomaly"],
                     "caries_area_mm2": round(d["caries_pixels"] * px_area, 4) if known else None,
                     "caries_pixels": d["caries_pixels"],
                     "anomaly_probability": round(d["anomaly_probability"], 4),
                     "anomaly_pixels": d["anomaly_pixels"],
                     "stage": d["stage"], "stage_probability": round(d["stage_probability"], 4),
                     "box_x0": round(x0, 2), "box_y0": round(y0, 2), "box_x1": round(x1, 2), "box_y1": round(y1, 2)})

    ref = volume if volume.components == 1 else Volume(np.zeros(volume.shape, np.uint8), volume.spacing,
                                                       volume.origin, volume.direction)
    res = Result()
    res.labels["teeth"] = LabelOutput(ref.with_array(teeth[None]),
                                      [Segment(d["fdi"], tooth_name(d["fdi"]), tooth_color(d["fdi"]),
                                               tooth_code(d["fdi"])) for d in per_tooth])
    res.labels["caries"] = LabelOutput(ref.with_array(caries[None]),
                                       [Segment(1, "caries", (0.9, 0.1, 0.1), CARIES_CODE)])
    res.labels["anomaly"] = LabelOutput(ref.with_array(anomaly[None]),
                                        [Segment(1, "anomaly", (1.0, 0.6, 0.0), ANOMALY_CODE)])
    res.heatmaps["caries_probability"] = HeatmapOutput(ref.with_array(caries_p[None]), "inferno", (0.0, 1.0),
                                                       "HENA caries probability per pixel (max over tooth crops)")
    res.heatmaps["anomaly_probability"] = HeatmapOutput(ref.with_array(anomaly_p[None]), "magma", (0.0, 1.0),
                                                        "HENA anomaly probability per pixel (max over tooth crops)")
    res.tables["findings"] = rows
    res.scalars.update({
        "n_teeth": float(len(rows)),
        "n_caries": float(sum(1 for r in rows if r["caries"])),
        "n_anomaly": float(sum(1 for r in rows if r["anomaly"])),
        "caries_pixels": float(caries.sum()), "anomaly_pixels": float(anomaly.sum())})
    if known:
        res.scalars["caries_area_mm2"] = float(caries.sum() * px_area)
    demo = bool(demo) if demo is not None else ("demo" in detector_id or "demo" in hena_id)
    res.notes.update({
        "model": MODEL_NAME, "detector": detector_id, "hena": hena_id,
        "score_threshold": f"{score_thresh:g}", "mask_threshold": f"{mask_thresh:g}",
        "finding_rules": (f"caries: >= {100 * min_caries_fraction:g}% of the tooth crop above the mask threshold; "
                          f"anomaly: per-tooth anomaly probability >= {anomaly_thresh:g}; the segmentations keep "
                          "only those teeth, the probability maps show every pixel"),
        "image": f"{W}x{H} pixels; detector input and {size}x{size} crops are at model resolution, "
                 "outputs on the input grid",
        "teeth_map": "each detected tooth's box painted with its FDI number (higher score wins on overlap)",
        "numbering": (f"one box per tooth, FDI numbers assigned jointly along each jaw (each number once, in arch "
                      f"order, gaps for missing teeth); {max(0, len(raw) - len(dets))} of the detector's {len(raw)} "
                      "boxes left out (no free number fits them or too little evidence); number_probability = "
                      "the detector's probability of the number given"),
        "spacing": (f"pixel spacing {volume.spacing[0]:g} x {volume.spacing[1]:g} mm" if known else
                    "pixel spacing unknown (1 x 1 in the file, as PNG/JPEG report it): caries areas in mm2 "
                    "are not reported, see caries_pixels")})
    if pairs:
        res.notes["arch_order"] = (f"{order:.2f} of {pairs} tooth pairs placed as in a panoramic X-ray "
                                   f"(below {MIN_ARCH_ORDER:g} with {MIN_TEETH_FOR_ORDER}+ teeth is flagged)")
    if demo:
        res.notes["warning"] = "Demo weights trained on synthetic OPGs: not for clinical use."
    if input_warning:
        res.notes["input_warning"] = input_warning
        res.notes["warning"] = " ".join(w for w in (input_warning, res.notes.get("warning", "")) if w)
    rep(1.0, "Done")
    return res


def analyze_with(volume: Volume, models: MathenaModels, score_thresh: float = MATHENA_SCORE_THRESHOLD, progress=None,
                 cancel=None) -> Result:
    return analyze(volume, models, None, score_thresh, progress, cancel)


# ---------------------------------------------------------------------------- picture
def save_overlay_preview(volume: Volume, result: Result, path) -> Path:
    """The OPG with detection boxes (FDI numbers), caries (red) and anomaly (orange) overlays."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    try:
        gray = opg_to_gray(volume)
    except PantheonError:
        gray = np.zeros(volume.shape[1:3], np.float32)
    H, W = gray.shape
    step = max(1, int(np.ceil(max(H, W) / 1600)))
    g = gray[::step, ::step]
    rgb = np.repeat(g[..., None], 3, axis=-1)
    for name, colour in (("caries", (1.0, 0.1, 0.1)), ("anomaly", (1.0, 0.6, 0.0))):
        if name in result.labels:
            m = result.labels[name].volume.array[0][::step, ::step] > 0
            rgb[m] = 0.45 * rgb[m] + 0.55 * np.array(colour)
    fig_w = 12.0
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * H / W + 0.4))
    ax.imshow(rgb, extent=(0, W, H, 0), interpolation="bilinear")
    for row in result.tables.get("findings", []):
        x0, y0, x1, y1 = row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"]
        c = tooth_color(row["tooth"])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=1.2))
        ax.text(x0 + 2, y0 + 2, str(row["tooth"]), color="white", fontsize=7, va="top",
                bbox=dict(facecolor=c, alpha=0.8, pad=1, linewidth=0))
    ax.set_axis_off()
    n = len(result.tables.get("findings", []))
    ax.set_title(f"MATHENA: {n} {'tooth' if n == 1 else 'teeth'} detected; red caries, orange anomaly  "
                 f"{result.notes.get('warning', '')}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def dental_chart(result: Result, path) -> Path:
    """Write the dental chart PNG of ``result`` to ``path``; see :mod:`pantheon.chart`."""
    from ..chart import dental_chart as _chart
    return _chart(result, path)
