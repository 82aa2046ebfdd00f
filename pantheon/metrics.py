"""Evaluation metrics of every PANTHEON model, one implementation each, on well-kept libraries.

What each metric is and where it comes from:

- :func:`auroc`: area under the ROC curve, scikit-learn ``roc_auc_score`` (tied scores count 1/2,
  i.e. Mann-Whitney U / (n_pos n_neg)); NaN when one class is absent.
- :func:`auroc_confidence_interval`: 95 % interval of an AUROC, Hanley & McNeil (1982) standard
  error with the normal approximation, clipped to [0, 1]. Written here: scikit-learn has no AUROC
  interval, and this is the method the NeoNet reports have always used.
- :func:`sensitivity_specificity`: from scikit-learn ``confusion_matrix``.
- :func:`binary_metrics`: AUROC, its interval, accuracy, sensitivity, specificity of a binary
  classifier at a threshold (NeoNet's held-out and k-fold evaluation).
- :func:`dice` and :func:`dice_scores`: Dice of binary masks, MONAI ``compute_dice``.
- :func:`box_iou`: IoU of x0 y0 x1 y1 boxes, MONAI ``monai.data.box_utils.box_iou``.
- :func:`map50`: mAP at IoU 0.5; detections are matched to ground truth by MONAI's
  ``monai.apps.detection.metrics.matching.matching_batch`` (the COCO rule); the AP itself is the
  all-point interpolated area computed here, because MONAI's ``COCOMetric`` samples the
  precision-recall curve at 101 recall points and so gives other numbers (see :func:`map50`).

Importing this module loads only numpy: scikit-learn, torch and MONAI are imported inside the
functions that need them, so that modules which merely import a metric stay light.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

NAN = float("nan")


# ------------------------------------------------------------------------------------------- ROC
def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (truthy = positive), scikit-learn
    ``roc_auc_score``: P(score of a random positive > score of a random negative), ties counted 1/2.
    NaN without both classes (scikit-learn would raise)."""
    from sklearn.metrics import roc_auc_score
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if y.shape != s.shape:
        raise ValueError("scores and labels differ in length")
    if y.all() or not y.any():
        return NAN
    return float(roc_auc_score(y, s))


def auroc_confidence_interval(auc: float, n_positive: int, n_negative: int, z: float = 1.96) -> List[float]:
    """[low, high] approximate 95 % confidence interval of an ROC AUC: Hanley & McNeil (1982)
    standard error, normal approximation, clipped to [0, 1]. It says how far a held-out AUC on a few
    dozen cases can be trusted to lie above chance. NaNs when the AUC is undefined."""
    if not (auc == auc) or n_positive < 1 or n_negative < 1:
        return [NAN, NAN]
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_positive - 1) * (q1 - auc * auc) + (n_negative - 1) * (q2 - auc * auc)) / (
        n_positive * n_negative)
    se = math.sqrt(max(var, 0.0))
    return [max(0.0, auc - z * se), min(1.0, auc + z * se)]


def sensitivity_specificity(labels, predicted) -> Tuple[float, float]:
    """(TP / positives, TN / negatives) of 0/1 ``predicted`` against 0/1 ``labels``, from scikit-learn
    ``confusion_matrix``; NaN where a class is absent."""
    from sklearn.metrics import confusion_matrix
    y = np.asarray(labels, dtype=int).reshape(-1)
    p = np.asarray(predicted, dtype=int).reshape(-1)
    if not y.size:  # confusion_matrix refuses empty input
        return NAN, NAN
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, p, labels=[0, 1]).ravel())
    return (tp / (tp + fn) if tp + fn else NAN), (tn / (tn + fp) if tn + fp else NAN)


def binary_metrics(y_true, scores, threshold: float = 0.5) -> Dict[str, float]:
    """AUC (:func:`auroc`) with its 95 % interval (:func:`auroc_confidence_interval`), and accuracy,
    sensitivity, specificity of ``scores >= threshold``.

    ``scores`` are probabilities of the positive class (PNI+); an undefined metric (one class
    absent) is NaN.
    """
    y = np.asarray(y_true, dtype=int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError("y_true and scores differ in length")
    pred = (s >= threshold).astype(int)
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    pair = (y == 0) | (y == 1)
    auc = auroc(s[pair], y[pair])
    sens, spec = sensitivity_specificity(y, pred)
    return {"auc": auc, "auc_ci95": auroc_confidence_interval(auc, n_pos, n_neg),
            "accuracy": float(np.mean(pred == y)) if y.size else NAN,
            "sensitivity": sens, "specificity": spec, "n": int(y.size), "n_positive": n_pos}


# ------------------------------------------------------------------------------------------ Dice
def _dice_per_item(pred, truth, ignore_empty: bool) -> np.ndarray:
    """(N,) Dice of N binary mask pairs (N, ...), MONAI ``compute_dice``."""
    import torch
    from monai.metrics import compute_dice
    p = np.asarray(pred).astype(bool)
    g = np.asarray(truth).astype(bool)
    n = len(p)
    p, g = p.reshape(n, -1), g.reshape(n, -1)
    out = np.empty(n, np.float64)
    for a in range(0, n, 256):  # bounded memory on large evaluation sets
        # Two channels with include_background=False: a single channel would be read as class indices
        # and summed in float32, while a float64 ground truth keeps the counts exact (the values are
        # 2|P∩G| / (|P| + |G|) of the former numpy code to the last bit). Channel 0 is never read, so
        # a stride-0 view of the foreground stands in for it and nothing is copied.
        pt = torch.from_numpy(p[a:a + 256])[:, None].expand(-1, 2, -1)
        gt = torch.from_numpy(g[a:a + 256]).double()[:, None].expand(-1, 2, -1)
        d = compute_dice(pt, gt, include_background=False, ignore_empty=ignore_empty)
        out[a:a + 256] = d[:, 0].numpy()
    return out


def dice(pred, truth) -> float:
    """Dice 2 |P ∩ G| / (|P| + |G|) of two binary masks of any shape (MONAI ``compute_dice``);
    1.0 when both are empty, 0.0 when only one is (MONAI's ``ignore_empty=False``)."""
    return float(_dice_per_item(np.asarray(pred)[None], np.asarray(truth)[None], ignore_empty=False)[0])


def dice_scores(pred_masks, gt_masks) -> dict:
    """Dice over a set of masks (MATHENA's crops), two conventions:

    ``positive``: mean per-mask Dice over masks with a non-empty ground truth (NaN if none);
    ``pooled``: Dice of all masks' pixels together, negatives included (NaN when prediction and
    ground truth are both empty everywhere); ``positive_crops``: how many masks had a non-empty
    ground truth; ``crops``: how many masks.
    """
    p = np.asarray(pred_masks).astype(bool).reshape(len(pred_masks), -1)
    g = np.asarray(gt_masks).astype(bool).reshape(len(gt_masks), -1)
    pos = g.any(1)
    positive = float(_dice_per_item(p[pos], g[pos], ignore_empty=True).mean()) if pos.any() else NAN
    pooled = (float(_dice_per_item(p.reshape(1, -1), g.reshape(1, -1), ignore_empty=False)[0])
              if p.any() or g.any() else NAN)
    return {"positive": positive, "pooled": pooled, "positive_crops": int(pos.sum()), "crops": int(len(p))}


# ------------------------------------------------------------------------------------- detection
def box_iou(a, b) -> np.ndarray:
    """(n, m) IoU of x0 y0 x1 y1 boxes (pixel edges: width = x1 - x0), MONAI ``box_iou``, returned
    in float64 (MONAI computes in float32); empty inputs give an empty (n, m) array."""
    from monai.data.box_utils import box_iou as _iou
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return np.asarray(_iou(a, b), np.float64)


def map50(predictions: Sequence[dict], ground_truth: Sequence[dict], iou_thresh: float = 0.5) -> dict:
    """mAP at IoU ``iou_thresh``. ``predictions[i]``: ``{"boxes" (n, 4), "scores" (n,), "labels" (n,)}``;
    ``ground_truth[i]``: ``{"boxes", "labels"}``; labels are integer ids (FDI numbers).
    Returns ``{"map50", "per_class": {label: AP}}``.

    Per class: each image's detections, best score first, are matched to the unmatched ground-truth
    box of that class with the highest IoU >= ``iou_thresh`` (MONAI ``matching_batch``, the COCO
    rule); then all images' detections, sorted by score (ties in image order), give the
    precision-recall curve, and AP is the area under its monotone envelope at every recall step
    (all-point interpolation, VOC 2010+). mAP averages the classes with at least one ground-truth
    box; a class without any detection has AP 0.

    Why not MONAI's ``COCOMetric``: it reads precision at 101 fixed recall points (nearest
    neighbour, COCO style) instead of the exact area, so its numbers differ: two boxes found as hit,
    false positive, hit give (51 + 50 * 2/3) / 101 = 0.83498 there and 5/6 = 0.83333 here
    (``Testing/test_metrics.py``). It also keeps only ``max_detection`` boxes per image and sums
    true / false positives in float32. The figures reported so far are the all-point ones.
    """
    from monai.apps.detection.metrics.matching import matching_batch
    labels = lambda d: np.asarray(d["labels"]).reshape(-1).astype(np.int64)  # noqa: E731
    pboxes = [np.asarray(p["boxes"], np.float64).reshape(-1, 4) for p in predictions]
    gboxes = [np.asarray(g["boxes"], np.float64).reshape(-1, 4) for g in ground_truth]
    matched = matching_batch(
        iou_fn=box_iou, iou_thresholds=[iou_thresh], pred_boxes=pboxes, pred_classes=[labels(p) for p in predictions],
        pred_scores=[np.asarray(p["scores"], np.float64).reshape(-1) for p in predictions], gt_boxes=gboxes,
        gt_classes=[labels(g) for g in ground_truth],
        max_detections=max([len(b) for b in pboxes] + [1]))  # keep every detection
    classes = sorted({int(c) for g in ground_truth for c in labels(g)})
    per_class = {}
    for c in classes:
        res = [r[c] for r in matched if c in r]
        n_gt = sum(len(r["gtIgnore"]) for r in res)
        scores = np.concatenate([r["dtScores"] for r in res])
        tp = np.concatenate([r["dtMatches"][0] for r in res])[np.argsort(-scores, kind="stable")]
        if not len(tp):
            per_class[c] = 0.0
            continue
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        recall = ctp / max(n_gt, 1)
        precision = ctp / np.maximum(ctp + cfp, 1e-12)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[1.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone envelope
        idx = np.flatnonzero(mrec[1:] != mrec[:-1])
        per_class[c] = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
    return {"map50": float(np.mean(list(per_class.values()))) if per_class else NAN, "per_class": per_class}
