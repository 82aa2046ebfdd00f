"""pantheon.metrics: every metric on small inputs worked out by hand, the conventions at the edges
(empty masks, one class absent, IoU exactly 0.5), and the reason map50 is not MONAI's COCOMetric."""

import subprocess
import sys

import numpy as np
import pytest

from pantheon.metrics import (
    auroc,
    auroc_confidence_interval,
    binary_metrics,
    box_iou,
    dice,
    dice_scores,
    map50,
    sensitivity_specificity,
)


def test_import_loads_no_heavy_library():
    code = "import sys, pantheon.metrics; print(sorted(m for m in ('torch', 'monai', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------- ROC
def test_auroc_hand_computed():
    # positives 0.2, 0.6, 0.4; negatives 0.2, 0.9. Pairs: (0.2, 0.2) tie 1/2, (0.6, 0.2) and
    # (0.4, 0.2) wins, the three against 0.9 losses -> 2.5 / 6
    assert auroc([0.2, 0.2, 0.6, 0.9, 0.4], [0, 1, 1, 0, 1]) == pytest.approx(5 / 12, abs=1e-12)
    assert auroc([3, 2, 1], [1, 1, 0]) == 1.0 and auroc([1, 2, 3], [1, 1, 0]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert np.isnan(auroc([0.2, 0.3], [1, 1])) and np.isnan(auroc([0.2, 0.3], [0, 0]))
    with pytest.raises(ValueError):
        auroc([0.1, 0.2, 0.3], [0, 1])


def test_auroc_is_the_pairwise_mann_whitney_definition():
    # the O(n^2) definition NeoNet used before: P(pos > neg) + 1/2 P(pos == neg), on many ties
    rng = np.random.default_rng(0)
    for _ in range(5):
        s, y = rng.integers(0, 6, 150).astype(float), rng.random(150) < 0.3
        diff = s[y][:, None] - s[~y][None, :]
        assert auroc(s, y) == pytest.approx((np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size, abs=1e-12)


def test_auroc_confidence_interval_hanley_mcneil():
    # AUC 0.75, 3 positives, 2 negatives: Q1 = 0.75 / 1.25 = 0.6, Q2 = 2 * 0.5625 / 1.75 = 9/14,
    # var = (0.1875 + 2 (0.6 - 0.5625) + (9/14 - 0.5625)) / 6 = 0.4 / 7, SE = 0.2390457;
    # low = 0.75 - 1.96 SE = 0.2814704, high = 1.2185 clipped to 1
    lo, hi = auroc_confidence_interval(0.75, 3, 2)
    assert lo == pytest.approx(0.75 - 1.96 * np.sqrt(0.4 / 7), abs=1e-12) and lo == pytest.approx(0.2814704, abs=1e-7)
    assert hi == 1.0
    # a perfect AUC has zero Hanley-McNeil variance
    assert auroc_confidence_interval(1.0, 5, 5) == [1.0, 1.0]
    assert all(np.isnan(auroc_confidence_interval(float("nan"), 5, 5)))
    assert all(np.isnan(auroc_confidence_interval(0.7, 0, 5)))


def test_sensitivity_specificity_hand_computed():
    # TP 2 (of 3 positives), FN 1; TN 3 (of 4 negatives), FP 1
    sens, spec = sensitivity_specificity([1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0])
    assert sens == pytest.approx(2 / 3) and spec == pytest.approx(3 / 4)
    sens, spec = sensitivity_specificity([1, 1], [1, 0])
    assert sens == 0.5 and np.isnan(spec)
    assert all(np.isnan(sensitivity_specificity([], [])))


def test_binary_metrics_hand_computed():
    m = binary_metrics([0, 1, 1, 0, 1], [0.2, 0.2, 0.6, 0.9, 0.4])
    # at 0.5: predicted 0 0 1 1 0 -> TP 1 / 3, TN 1 / 2, accuracy 2 / 5; AUC 5/12 (above)
    assert m["sensitivity"] == pytest.approx(1 / 3) and m["specificity"] == pytest.approx(1 / 2)
    assert m["accuracy"] == pytest.approx(2 / 5) and m["auc"] == pytest.approx(5 / 12)
    assert (m["n"], m["n_positive"]) == (5, 3)
    # Hanley-McNeil for 5/12 with 3 + 2 cases: SE 0.2868324; low clipped to 0, high 0.9788577
    assert m["auc_ci95"][0] == 0.0 and m["auc_ci95"][1] == pytest.approx(0.9788577, abs=1e-7)
    assert m["auc_ci95"] == auroc_confidence_interval(m["auc"], 3, 2)
    assert binary_metrics([0, 1], [0.3, 0.3], threshold=0.3)["specificity"] == 0.0  # >= threshold is positive
    one = binary_metrics([1, 1], [0.2, 0.8])
    assert np.isnan(one["auc"]) and all(np.isnan(one["auc_ci95"])) and np.isnan(one["specificity"])
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5])


# ------------------------------------------------------------------------------------------ Dice
def _masks():
    a = np.zeros((3, 3), bool)
    a[0, :] = True
    a[1, 0] = True          # 4 px
    b = np.zeros((3, 3), bool)
    b[0, :2] = True
    b[2, 2] = True          # 3 px, 2 of them in a
    return a, b


def test_dice_hand_computed():
    a, b = _masks()
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 3), abs=1e-15)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    empty = np.zeros((3, 3), bool)
    assert dice(empty, empty) == 1.0  # nothing to find and nothing found
    assert dice(a, empty) == 0.0 and dice(empty, b) == 0.0
    vol = np.zeros((2, 3, 4), np.uint8)  # any shape, any integer type
    vol[0, 0, :2] = 1
    assert dice(vol, vol[::-1]) == 0.0 and dice(vol, vol) == 1.0


def test_dice_scores_conventions_hand_computed():
    a, b = _masks()
    empty = np.zeros((3, 3), bool)
    d = dice_scores(np.stack([a, a, empty]), np.stack([b, empty, empty]))
    # positive: only the first crop has a ground truth -> 4/7; pooled: 2 * 2 / (8 + 3)
    assert d["positive"] == pytest.approx(4 / 7, abs=1e-15) and d["pooled"] == pytest.approx(4 / 11, abs=1e-15)
    assert (d["positive_crops"], d["crops"]) == (1, 3)
    none = dice_scores(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    assert np.isnan(none["positive"]) and np.isnan(none["pooled"]) and none["positive_crops"] == 0
    only_fp = dice_scores(np.stack([a]), np.stack([empty]))
    assert np.isnan(only_fp["positive"]) and only_fp["pooled"] == 0.0


def test_dice_equals_the_count_formula_to_the_last_bit():
    rng = np.random.default_rng(1)
    p, g = rng.random((300, 16, 16)) < 0.3, rng.random((300, 16, 16)) < 0.2
    g[::7] = False
    d = dice_scores(p, g)
    inter, ps, gs = (p & g).reshape(300, -1).sum(1), p.reshape(300, -1).sum(1), g.reshape(300, -1).sum(1)
    pos = gs > 0
    assert d["positive"] == float(np.mean(2 * inter[pos] / (ps[pos] + gs[pos])))
    assert d["pooled"] == float(2 * inter.sum() / (ps.sum() + gs.sum()))
    assert d["positive_crops"] == 300 - len(range(0, 300, 7))


# ------------------------------------------------------------------------------------- detection
def test_box_iou_hand_computed():
    iou = box_iou([[0, 0, 10, 10]], [[5, 5, 15, 15], [10, 0, 20, 10], [0, 0, 20, 10], [0, 0, 10, 10]])
    # overlap 5 x 5 = 25 of 100 + 100 - 25; touching edges; 100 of 200; identical
    assert iou.dtype == np.float64 and iou.shape == (1, 4)
    assert iou[0, 0] == pytest.approx(25 / 175, abs=1e-7)
    assert iou[0, 1] == 0.0 and iou[0, 2] == 0.5 and iou[0, 3] == 1.0
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def _hit_fp_hit():
    """One class, two GT boxes; detections: hit (0.9), false positive (0.8), hit (0.7)."""
    gt = [{"boxes": np.array([[0, 0, 10, 10], [20, 0, 30, 10]]), "labels": np.array([11, 11])}]
    pred = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60], [21, 0, 30, 10]]),
             "scores": np.array([0.9, 0.8, 0.7]), "labels": np.array([11, 11, 11])}]
    return pred, gt


def test_map50_hand_computed():
    pred, gt = _hit_fp_hit()
    # recall 1/2, 1/2, 1 at precision 1, 1/2, 2/3; envelope 1 up to recall 1/2, then 2/3 -> 5/6
    assert map50(pred, gt) == {"map50": pytest.approx(5 / 6, abs=1e-15), "per_class": {11: pytest.approx(5 / 6)}}
    # two images, three classes:
    # class 11: 0.9 false positive (image 2), 0.6 hit (image 1), 0.5 hit (image 2), 2 GT -> precision
    #           0, 1/2, 2/3 at recall 0, 1/2, 1 -> AP 2/3
    # class 12: hit 0.8, then a duplicate of the same box 0.7 (false positive after full recall) -> 1
    # class 13: detections only, no GT -> not averaged
    gt = [{"boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "labels": [11, 12]}, {"boxes": [[0, 0, 10, 10]], "labels": [11]}]
    pred = [{"boxes": [[1, 0, 10, 10], [20, 0, 30, 10], [20, 0, 30, 10], [40, 0, 50, 10]],
             "scores": [0.6, 0.8, 0.7, 0.95], "labels": [11, 12, 12, 13]},
            {"boxes": [[60, 60, 70, 70], [0, 1, 10, 10]], "scores": [0.9, 0.5], "labels": [11, 11]}]
    m = map50(pred, gt)
    assert m["per_class"] == {11: pytest.approx(2 / 3), 12: 1.0} and m["map50"] == pytest.approx(5 / 6)


def test_map50_edges():
    gt = [{"boxes": [[0, 0, 10, 10]], "labels": [11]}]
    # IoU exactly 0.5 is a hit; just under is a miss
    assert map50([{"boxes": [[0, 0, 20, 10]], "scores": [0.9], "labels": [11]}], gt)["map50"] == 1.0
    assert map50([{"boxes": [[0, 0, 20.1, 10]], "scores": [0.9], "labels": [11]}], gt)["map50"] == 0.0
    # wrong class is no hit; no detections at all: AP 0; no GT: NaN
    assert map50([{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [12]}], gt)["per_class"] == {11: 0.0}
    assert map50([{"boxes": np.zeros((0, 4)), "scores": [], "labels": []}], gt)["per_class"] == {11: 0.0}
    assert np.isnan(map50([{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [11]}],
                          [{"boxes": np.zeros((0, 4)), "labels": []}])["map50"])


def test_monai_coco_metric_gives_other_numbers():
    """Why map50 keeps its all-point AP: MONAI's COCOMetric samples precision at 101 recall points."""
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    pred, gt = _hit_fp_hit()
    coco = COCOMetric(classes=["11"], iou_list=[0.5], iou_range=(0.5, 0.5, 0.05), max_detection=[100], verbose=False)
    matched = matching_batch(box_iou, coco.iou_thresholds, [pred[0]["boxes"]], [np.zeros(3, int)], [pred[0]["scores"]],
                             [gt[0]["boxes"]], [np.zeros(2, int)])
    ap = coco(matched)[0]["AP_IoU_0.50_MaxDet_100"]
    # recall thresholds 0, 0.01 ... 0.5 read precision 1, the 50 above 0.5 read 2/3
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)
    assert abs(ap - map50(pred, gt)["map50"]) > 1e-3


# ---------------------------------------------------------------------------------------- losses
def test_hena_carseg_loss_is_bce_plus_soft_dice():
    """HENA's carseg loss is MONAI's DiceCELoss; it must give the values of the formula it replaced."""
    import torch

    from pantheon.models.mathena.hena import HENA
    # logits 0 (p = 1/2) on 4 pixels, 2 of them positive: BCE = ln 2; Dice = 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    assert HENA._bce_dice(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(np.log(2) + 0.4, abs=1e-6)

    def former(logits, target, eps=1.0):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
        return bce + (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()

    g = torch.Generator().manual_seed(0)
    for b in (1, 3, 6):
        logits = (3 * torch.randn(b, 1, 32, 32, generator=g)).requires_grad_(True)
        target = (torch.rand(b, 1, 32, 32, generator=g) < 0.2).float()
        target[0] = 0  # an empty crop: Dice term 1 - 1 / (sum p + 1)
        new, old = HENA._bce_dice(logits, target), former(logits, target)
        assert new.item() == pytest.approx(old.item(), abs=1e-6)
        (gn,), (go,) = torch.autograd.grad(new, logits), torch.autograd.grad(old, logits)
        assert torch.allclose(gn, go, atol=1e-8)
