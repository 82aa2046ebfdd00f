"""FDI numbering of detected teeth along the dental arch: one number per tooth, one tooth per number.

Why: the detector scores every FDI class independently, and per-class NMS / per-class AP never see
that 16 and 17 sit on the same box, or that two boxes both say 36. On panoramic X-rays that gave
one tooth two neighbouring numbers, numbers out of order and invented teeth while mAP@50 stayed
high. This step decides all numbers of an image jointly, with what a dentist knows about an arch:

1. One box per tooth: the detector's class-agnostic decode (:meth:`MATHEDetector.decode` with
   ``class_agnostic=True``, MONAI ``non_max_suppression``) gives boxes, tooth scores and per-box
   class scores (the vote of every location that saw the tooth).
2. Each box goes to the jaw (upper: quadrants 1, 2, 5, 6) and dentition (permanent / primary) that
   holds most of its class probability.
3. Within a jaw and dentition the teeth lie in one order across the picture: patient's right on
   the image's left, so the upper jaw reads 18 ... 11 | 21 ... 28 and the lower 48 ... 41 | 31 ... 38
   (primary: 55 ... 51 | 61 ... 65, 85 ... 81 | 71 ... 75). Boxes are sorted by their centre's
   position along the arch axis (the principal axis of all box centres, so a tilted picture keeps
   its order) and an ordered assignment to these slots is solved exactly by dynamic programming:
   slots may stay empty (missing teeth stay gaps), each slot takes at most one box, slot indices
   strictly increase with the box order, and a box may be left out.
4. Score of an assignment: sum over kept boxes of ``log p_real + log q(number)``, over
   left-out boxes ``log(1 - p_real)``, and over consecutive kept boxes of a jaw a spacing term:
   their centre distance against the widths of the teeth their numbers imply (two numbers apart
   only with room for the missing tooth between them; ``spacing_sigma``). ``q`` is the box's
   class distribution (class scores normalised to sum 1); ``p_real`` the calibrated probability
   that the box is a tooth of its own (:func:`tooth_evidence`): a strong box is expensive to leave
   out, a weak one survives only with a number the detector is sure of and that no stronger box
   claims (low-evidence boxes are suppressed).

Hand-written: the dynamic programme. ``scipy.optimize.linear_sum_assignment`` solves an
assignment but cannot impose the order along the arch; with order the problem is a monotone
alignment (like sequence alignment), exact in O(boxes x 16) per jaw. Box geometry uses MONAI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ...defaults import MATHENA_SCORE_THRESHOLD
from .detector import ALL_FDI

_EPS = 1e-9

#: Image-left-to-right slot order of each (jaw, dentition) group: patient's right on the left.
ARCH_SEQUENCES = {
    ("upper", "permanent"): tuple([10 + t for t in range(8, 0, -1)] + [20 + t for t in range(1, 9)]),
    ("lower", "permanent"): tuple([40 + t for t in range(8, 0, -1)] + [30 + t for t in range(1, 9)]),
    ("upper", "primary"): tuple([50 + t for t in range(5, 0, -1)] + [60 + t for t in range(1, 6)]),
    ("lower", "primary"): tuple([80 + t for t in range(5, 0, -1)] + [70 + t for t in range(1, 6)]),
}


#: Mean mesiodistal crown widths (mm) of permanent and primary teeth (textbook averages): the
#: spacing term expects neighbouring teeth these widths apart along the arch.
TOOTH_WIDTH_MM = {}
for _q, (_up, _lo) in {1: (1, 0), 2: (1, 0), 3: (0, 1), 4: (0, 1)}.items():
    for _t, (_wu, _wl) in enumerate(zip((8.5, 6.6, 7.6, 7.0, 6.7, 10.0, 9.2, 8.6),
                                         (5.2, 5.7, 7.0, 7.0, 7.2, 11.0, 10.5, 10.0)), start=1):
        TOOTH_WIDTH_MM[_q * 10 + _t] = _wu if _up else _wl
for _q in (5, 6, 7, 8):
    for _t, (_wu, _wl) in enumerate(zip((6.5, 5.2, 7.0, 7.3, 8.2), (4.2, 4.1, 5.0, 7.7, 9.9)), start=1):
        TOOTH_WIDTH_MM[_q * 10 + _t] = _wu if _q in (5, 6) else _wl


@dataclass
class Numbering:
    """Result of :func:`number_teeth`, one entry per input box: ``fdi`` (0 = left out),
    ``number_probability`` (the box's class probability of its number, 0 when left out),
    ``p_real`` (the tooth evidence used), ``keep`` (bool)."""

    fdi: np.ndarray
    number_probability: np.ndarray
    p_real: np.ndarray

    @property
    def keep(self) -> np.ndarray:
        return self.fdi > 0


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


#: Calibration of the detector score to "this box is a tooth of its own":
#: ``p_real = sigmoid(EVIDENCE_SLOPE * (logit(score) - logit(mid)))`` with the coin-flip score
#: ``mid = sigmoid(logit(score_thresh) + EVIDENCE_LOGIT_OFFSET)``, so that lowering the detection
#: threshold also lets weaker boxes in (threshold 0: every box that finds a free number).
#: Fitted (logistic regression) at the default threshold 0.3 on the demo detector's class-agnostic
#: boxes of 24 validation OPGs (seeds 42000-42023, disjoint from training and from the reported
#: held-out sets): mid 0.43, slope 3.3; a box scoring 0.3-0.4 was a distinct tooth 24 % of the
#: time, 0.4-0.5 49 %, 0.5-0.6 88 %, above 0.6 97-99 %.
EVIDENCE_LOGIT_OFFSET, EVIDENCE_SLOPE = 0.565, 3.3


def tooth_evidence(scores, score_thresh: float = MATHENA_SCORE_THRESHOLD, slope: float = EVIDENCE_SLOPE,
                   offset: float = EVIDENCE_LOGIT_OFFSET) -> np.ndarray:
    """``p_real`` of detection scores (see :data:`EVIDENCE_LOGIT_OFFSET`)."""
    s = np.asarray(scores, np.float64)
    return 1.0 / (1.0 + np.exp(-slope * (_logit(s) - _logit(score_thresh) - offset)))


def arch_axis(centres: np.ndarray) -> np.ndarray:
    """Unit vector along the arch: the principal axis of the box centres, pointing to +x. With
    fewer than 3 boxes, or centres spread more vertically than horizontally (not an arch), +x."""
    c = np.asarray(centres, np.float64).reshape(-1, 2)
    if len(c) < 3:
        return np.array([1.0, 0.0])
    d = c - c.mean(0)
    w, v = np.linalg.eigh(d.T @ d)
    axis = v[:, int(np.argmax(w))]
    if abs(axis[0]) < abs(axis[1]):
        return np.array([1.0, 0.0])
    return axis if axis[0] > 0 else -axis


def ordered_assignment(emission: np.ndarray, drop: np.ndarray,
                       transition: Optional[np.ndarray] = None) -> Tuple[np.ndarray, float]:
    """Best monotone assignment of n ordered boxes to m ordered slots.

    ``emission[i, k]``: log-score of box i taking slot k; ``drop[i]``: log-score of leaving box i
    out; ``transition[j, i, a, b]`` (optional, (n, n, m, m)): log-score added when box j in slot a
    is followed, as the next kept box, by box i in slot b. Each slot takes at most one box; kept
    boxes take strictly increasing slots in box order. Returns (slot per box, -1 = left out; the
    total score). Exact dynamic programme over (last kept box, its slot), O(n^2 m^2)."""
    e = np.asarray(emission, np.float64)
    d = np.asarray(drop, np.float64).reshape(-1)
    n, m = e.shape
    if n == 0:
        return np.zeros(0, np.int64), 0.0
    cum = np.concatenate([[0.0], np.cumsum(d)])  # cum[i] = drops of boxes 0..i-1
    later = np.triu(np.ones((m, m), bool), 1)  # [a, b]: a < b
    V = np.full((n, m), -np.inf)  # best score with box i kept in slot b as the last kept box so far
    back = np.full((n, m, 2), -1, np.int64)  # (previous kept box, its slot), -1 = none
    for i in range(n):
        best = cum[i] + e[i]  # every earlier box left out
        if i:
            between = cum[i] - cum[1:i + 1]  # boxes j+1..i-1 left out, for j = 0..i-1
            M = V[:i, :, None] + between[:, None, None]
            if transition is not None:
                M = M + transition[:i, i]
            M = np.where(later[None], M, -np.inf).reshape(i * m, m)
            arg = np.argmax(M, axis=0)
            val = M[arg, np.arange(m)] + e[i]
            better = val > best
            best = np.where(better, val, best)
            back[i, better, 0], back[i, better, 1] = arg[better] // m, arg[better] % m
        V[i] = best
    tail = V + (cum[n] - cum[1:n + 1])[:, None]  # boxes after the last kept one left out
    flat = int(np.argmax(tail))
    total = float(tail.reshape(-1)[flat])
    slots = np.full(n, -1, np.int64)
    if cum[n] >= total:  # nothing kept
        return slots, float(cum[n])
    i, b = divmod(flat, m)
    while i >= 0:
        slots[i] = b
        i, b = back[i, b]
    return slots, total


def _slot_widths(seq: Sequence[int]) -> np.ndarray:
    return np.array([TOOTH_WIDTH_MM[f] for f in seq], np.float64)


def _expected_distance(widths: np.ndarray) -> np.ndarray:
    """(m, m): centre-to-centre distance of slot a and slot b > a along the arch in tooth-width
    units (half of each plus every tooth between: the teeth in slots a+1..b-1 are missing)."""
    c = np.concatenate([[0.0], np.cumsum(widths)])
    a, b = np.meshgrid(np.arange(len(widths)), np.arange(len(widths)), indexing="ij")
    return widths[a] / 2 + (c[b] - c[np.minimum(a + 1, b)]) + widths[b] / 2


def number_teeth(boxes, scores, class_scores, classes: Optional[Sequence[int]] = None,
                 score_thresh: float = MATHENA_SCORE_THRESHOLD, axis: Optional[Sequence[float]] = None,
                 spacing_sigma: Optional[float] = 0.2, spacing_cap: float = 6.0,
                 evidence_slope: float = EVIDENCE_SLOPE, evidence_offset: float = EVIDENCE_LOGIT_OFFSET) -> Numbering:
    """FDI numbers for one image's class-agnostic detections (module docstring).

    Args:
        boxes: (n, 4) x0 y0 x1 y1 (any pixel frame in which the picture is upright).
        scores: (n,) tooth scores in (0, 1) (the detector's best class score per box).
        class_scores: (n, K) per-class probabilities (sigmoid outputs; normalised here).
        classes: FDI number of each of the K columns (default ``ALL_FDI[:K]``).
        score_thresh: the detection threshold: boxes below it are left out, and the score a box
            needs to count as a coin flip (``p_real`` 0.5) follows it (:func:`tooth_evidence`).
        axis: arch direction (x, y); default :func:`arch_axis` of the box centres.
        spacing_sigma: spread (of the log ratio) of the spacing term: consecutive kept teeth are
            expected ``TOOTH_WIDTH_MM``-proportional distances apart, so two numbers apart only
            with room for the missing tooth between them (None: no spacing term). Assumption:
            0.2; synthetic OPGs give 0.85-1.27 as the 5-95 % range of the ratio.
        spacing_cap: largest penalty (nats) of one spacing mismatch, so an odd pair (an impacted
            tooth lying behind its neighbour) cannot outweigh everything else.
        evidence_slope, evidence_offset: score calibration (:data:`EVIDENCE_LOGIT_OFFSET`).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(-1)
    n = len(b)
    P = np.asarray(class_scores, np.float64)
    if n:
        P = P.reshape(n, -1)
    else:  # no boxes: as many columns as classes, so the checks below still hold
        P = np.zeros((0, P.shape[-1] if P.ndim == 2 else len(classes if classes is not None else ALL_FDI)))
    K = P.shape[1]
    cls = tuple(int(c) for c in (classes if classes is not None else ALL_FDI[:K]))
    if len(cls) != K:
        raise ValueError(f"{K} class-score columns but {len(cls)} class numbers")
    fdi = np.zeros(n, np.int64)
    prob = np.zeros(n)
    thr = float(np.clip(score_thresh, 1e-4, 1 - 1e-4))
    p_real = tooth_evidence(s, thr, evidence_slope, evidence_offset)
    if n == 0:
        return Numbering(fdi, prob, p_real)
    P = np.clip(np.nan_to_num(P, nan=0.0), 0.0, None)
    tot = P.sum(1, keepdims=True)
    Q = np.where(tot > _EPS, P / np.maximum(tot, _EPS), 1.0 / K)
    col = {c: j for j, c in enumerate(cls)}
    quad = np.array([c // 10 for c in cls])
    jaw = np.where(Q[:, np.isin(quad, (1, 2, 5, 6))].sum(1) >= 0.5, "upper", "lower")
    dent = np.where(Q[:, quad >= 5].sum(1) > 0.5, "primary", "permanent")
    eligible = s >= thr
    centres = (b[:, :2] + b[:, 2:]) / 2
    ax = np.asarray(axis, np.float64) if axis is not None else \
        arch_axis(centres[eligible] if eligible.sum() >= 3 else centres)
    ax = ax / max(np.linalg.norm(ax), _EPS)
    pos = centres @ ax
    groups = []
    for (j, dn), seq in ARCH_SEQUENCES.items():
        idx = np.flatnonzero((jaw == j) & (dent == dn) & eligible)
        if not len(idx):
            continue
        idx = idx[np.argsort(pos[idx], kind="stable")]
        cols = [col.get(f) for f in seq]
        logq = np.full((len(idx), len(seq)), np.log(_EPS))
        for k, c in enumerate(cols):
            if c is not None:
                logq[:, k] = np.log(np.maximum(Q[idx, c], _EPS))
        groups.append((seq, idx, cols, logq, _expected_distance(_slot_widths(seq))))
    scale = _spacing_scale(groups, pos) if spacing_sigma else None
    for seq, idx, cols, logq, expected in groups:
        emission = np.log(np.maximum(p_real[idx], _EPS))[:, None] + logq
        drop = np.log(np.maximum(1 - p_real[idx], _EPS))
        trans = None
        if scale:
            dist = np.maximum(pos[idx][None, :] - pos[idx][:, None], 1e-3)  # [j, i], used for j < i
            ratio = np.log(dist[:, :, None, None] / (expected[None, None] * scale))
            trans = -np.minimum(ratio ** 2 / (2 * spacing_sigma ** 2), spacing_cap)
        slots, _ = ordered_assignment(emission, drop, trans)
        for i, k in zip(idx, slots):
            if k >= 0 and cols[k] is not None:
                fdi[i] = seq[k]
                prob[i] = Q[i, cols[k]]
    return Numbering(fdi, prob, p_real)


def _spacing_scale(groups, pos) -> Optional[float]:
    """Pixels per tooth-width unit along the arch: median over consecutive boxes of a jaw of their
    centre distance / the expected distance between their most likely numbers (pairs whose
    numbers are not in order are skipped). None with fewer than 2 usable pairs."""
    ratios = []
    for seq, idx, cols, logq, expected in groups:
        k = np.argmax(logq, axis=1)
        for a, b2 in zip(range(len(idx) - 1), range(1, len(idx))):
            if k[b2] > k[a]:
                ratios.append((pos[idx[b2]] - pos[idx[a]]) / expected[k[a], k[b2]])
    ratios = [r for r in ratios if r > 0]
    return float(np.median(ratios)) if len(ratios) >= 2 else None


#: Class-agnostic NMS IoU of :func:`detect_and_number`: two boxes overlapping more are one tooth.
#: Ground-truth teeth of synthetic OPGs overlap at most 0.38 (an impacted molar behind its
#: neighbour); the duplicates seen with per-class NMS overlapped 0.87-1.0.
AGNOSTIC_NMS_IOU = 0.6


def detect_and_number(detector, gray: np.ndarray, score_thresh: float = MATHENA_SCORE_THRESHOLD, input_hw=None,
                      nms_thresh: float = AGNOSTIC_NMS_IOU, **numbering_kw) -> dict:
    """Detector + numbering on one (H, W) [0, 1] image, boxes in source pixels (pixel edges).

    Returns ``{"boxes" (n, 4), "scores" (n,), "labels" (n,) FDI numbers, "number_probability"
    (n,)}`` for the numbered teeth (sorted by FDI) and ``"raw"``: every class-agnostic box at or
    above ``score_thresh`` with the detector's own best number (``"boxes", "scores", "labels"``),
    and ``"p_real"`` (:func:`tooth_evidence`), for checks that need the detector's unconstrained
    evidence (arch order of a non-OPG).
    ``detector.decode`` without ``class_scores`` (a stub) counts as certain of its labels."""
    import torch

    from .detector import class_to_fdi
    from .preprocess import DETECTOR_INPUT_HW, letterbox
    hw = tuple(input_hw or DETECTOR_INPUT_HW)
    img, lb = letterbox(gray, hw)
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    cin = int((getattr(detector, "config", None) or {}).get("in_channels", 3))
    try:
        dev = next(detector.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        dev = torch.device("cpu")
    x = x.repeat(1, cin, 1, 1).to(dev)
    with torch.inference_mode():
        dec = detector.decode(detector(x), hw, score_thresh=score_thresh, nms_thresh=nms_thresh,
                              class_agnostic=True)[0]
    boxes = dec["boxes"].float().cpu().numpy().reshape(-1, 4)
    scores = dec["scores"].float().cpu().numpy().reshape(-1)
    labels = dec["labels"].cpu().numpy().reshape(-1).astype(np.int64)
    K = int(getattr(detector, "num_classes", 32))
    if "class_scores" in dec:
        P = dec["class_scores"].float().cpu().numpy().reshape(len(boxes), K)  # K: no boxes is (0, K)
    else:
        P = np.zeros((len(boxes), K))
        P[np.arange(len(boxes)), labels] = 1.0
    nb = number_teeth(boxes, scores, P, classes=[class_to_fdi(k) for k in range(P.shape[1])],
                      score_thresh=score_thresh, **numbering_kw)
    src = lb.boxes_to_source(boxes, clip=True).astype(np.float64) if len(boxes) else np.zeros((0, 4))
    raw_fdi = np.array([class_to_fdi(int(c)) for c in labels], np.int64)
    keep = np.flatnonzero(nb.keep)
    keep = keep[np.argsort(nb.fdi[keep], kind="stable")]
    return {"boxes": src[keep], "scores": scores[keep].astype(np.float64), "labels": nb.fdi[keep],
            "number_probability": nb.number_probability[keep],
            "raw": {"boxes": src, "scores": scores.astype(np.float64), "labels": raw_fdi, "p_real": nb.p_real}}


def duplicate_numbers(fdis: Sequence[int]) -> int:
    """How many detections repeat an FDI number already given in the same image (0 = none)."""
    f = [int(x) for x in fdis if int(x) > 0]
    return len(f) - len(set(f))


__all__ = ["ARCH_SEQUENCES", "TOOTH_WIDTH_MM", "AGNOSTIC_NMS_IOU", "detect_and_number", "tooth_evidence", "Numbering",
           "arch_axis", "ordered_assignment", "number_teeth", "duplicate_numbers"]
