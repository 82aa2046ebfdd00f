"""MATHE: the MATHENA tooth detector (arXiv 2604.00537).

Stated by the authors (the paper's abstract and their blog post, team-sudal.tistory.com/134): a
multi-resolution CNN + SSM hybrid backbone with four-directional VSS blocks at the P4 and P5 stages,
a BiFPN neck, evaluated by mAP@50. Everything
else is a reconstruction, marked as an assumption in the argument docs:

- Backbone: YOLOv8-style conv stages (stride-2 Conv-BN-SiLU + C2f) for P1-P3; at P4 (stride 16)
  and P5 (stride 32) the stride-2 conv is followed by ``num_vss`` :class:`~.vss.VSSBlock`.
- Neck: BiFPN (EfficientDet, arXiv 1911.09070) over P3-P5: top-down then bottom-up paths, fast
  normalised fusion ``sum_i w_i I_i / (eps + sum_j w_j)`` with ``w = ReLU(learned)``, each node
  followed by a depthwise-separable 3x3 conv + BN + SiLU.
- Head: FCOS-style anchor-free head (Tian et al., arXiv 1904.01355) shared across levels:
  classification logits (``num_classes``), box regression as ltrb distances in pixels, centre-ness
  (on the regression tower). The paper does not give the head; FCOS/centre-ness is simpler than a
  YOLOv8 head with TAL + DFL and needs no assigner hyper-parameters beyond size ranges.

Boxes are ``(x0, y0, x1, y1)`` in input pixels, x along the width (last) axis; box geometry (IoU,
GIoU, NMS, clipping, areas, inside tests) uses :mod:`monai.data.box_utils`, the classification
loss :class:`monai.losses.FocalLoss`.

Class indices follow FDI notation: :func:`fdi_to_class` / :func:`class_to_fdi`.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vss import VSSBlock

PERMANENT_FDI: Tuple[int, ...] = tuple(q * 10 + t for q in (1, 2, 3, 4) for t in range(1, 9))
PRIMARY_FDI: Tuple[int, ...] = tuple(q * 10 + t for q in (5, 6, 7, 8) for t in range(1, 6))
ALL_FDI: Tuple[int, ...] = PERMANENT_FDI + PRIMARY_FDI
_FDI_INDEX = {fdi: i for i, fdi in enumerate(ALL_FDI)}


def fdi_to_class(fdi: int) -> int:
    """FDI tooth number -> class index: permanent 11-18, 21-28, 31-38, 41-48 -> 0..31; primary
    51-55, 61-65, 71-75, 81-85 -> 32..51. Raises ValueError for anything else."""
    try:
        return _FDI_INDEX[int(fdi)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{fdi!r} is not an FDI tooth number (11-48 permanent, 51-85 primary)") from None


def class_to_fdi(idx: int) -> int:
    """Class index (0..51) -> FDI tooth number; inverse of :func:`fdi_to_class`."""
    i = int(idx)
    if not 0 <= i < len(ALL_FDI):
        raise ValueError(f"class index {idx!r} is outside 0..{len(ALL_FDI) - 1}")
    return ALL_FDI[i]


def fdi_mirror(fdi: int) -> int:
    """FDI number of the same tooth on the other side (left-right image flip swaps quadrants
    1<->2, 3<->4, 5<->6, 7<->8): a flip must remap the labels."""
    fdi_to_class(fdi)
    q, t = divmod(int(fdi), 10)
    return (q + 1 if q % 2 else q - 1) * 10 + t


# ------------------------------------------------------------------------------------------------
# Backbone
# ------------------------------------------------------------------------------------------------


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = ConvBNAct(c, c, 3), ConvBNAct(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8 C2f: 1x1 split, ``n`` residual bottlenecks on one half, concat of all, 1x1."""

    def __init__(self, cin: int, cout: int, n: int = 1):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNAct(cin, 2 * self.c, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = ConvBNAct((2 + n) * self.c, cout, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class MATHEBackbone(nn.Module):
    """CNN + SSM hybrid: returns (P3, P4, P5) at strides 8, 16, 32 with widths ``widths[2:]``."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128, 256, 512),
                 c2f_depth: int = 1, num_vss: int = 2, d_state: int = 16, ssm_ratio: float = 2.0,
                 d_conv: int = 3, drop_path: float = 0.0):
        super().__init__()
        w = list(widths)
        if len(w) != 5:
            raise ValueError(f"widths needs 5 entries (P1..P5), got {widths!r}")
        self.stem = ConvBNAct(in_channels, w[0], 3, 2)                                   # P1
        self.stage2 = nn.Sequential(ConvBNAct(w[0], w[1], 3, 2), C2f(w[1], w[1], c2f_depth))  # P2
        self.stage3 = nn.Sequential(ConvBNAct(w[1], w[2], 3, 2), C2f(w[2], w[2], c2f_depth))  # P3

        def vss_stage(cin, cout):
            blocks = [VSSBlock(cout, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv,
                               drop_path=drop_path, channel_first=True) for _ in range(num_vss)]
            return nn.Sequential(ConvBNAct(cin, cout, 3, 2), *blocks)

        self.stage4 = vss_stage(w[2], w[3])                                               # P4 + VSS
        self.stage5 = vss_stage(w[3], w[4])                                               # P5 + VSS

    def forward(self, x):
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        return p3, p4, p5


# ------------------------------------------------------------------------------------------------
# BiFPN
# ------------------------------------------------------------------------------------------------


class FastFusion(nn.Module):
    """EfficientDet fast normalised fusion of same-shaped inputs, then DW-separable conv-BN-SiLU."""

    def __init__(self, n_inputs: int, channels: int, eps: float = 1e-4):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n_inputs))
        self.eps = eps
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                                  nn.Conv2d(channels, channels, 1, bias=False),
                                  nn.BatchNorm2d(channels), nn.SiLU())

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        w = F.relu(self.w)
        w = w / (w.sum() + self.eps)
        return self.conv(sum(wi * x for wi, x in zip(w, inputs)))


def _resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest upsampling or 3x3/s2 max-pool downsampling of ``x`` to ``ref``'s spatial size."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    if x.shape[-2] > ref.shape[-2]:
        x = F.max_pool2d(x, 3, 2, 1)
        if x.shape[-2:] == ref.shape[-2:]:
            return x
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class BiFPNLayer(nn.Module):
    """One BiFPN layer over three levels (P3, P4, P5)."""

    def __init__(self, channels: int):
        super().__init__()
        self.td4 = FastFusion(2, channels)   # P4_td  = f(P4, up(P5))
        self.out3 = FastFusion(2, channels)  # P3_out = f(P3, up(P4_td))
        self.out4 = FastFusion(3, channels)  # P4_out = f(P4, P4_td, down(P3_out))
        self.out5 = FastFusion(2, channels)  # P5_out = f(P5, down(P4_out))

    def forward(self, feats):
        p3, p4, p5 = feats
        p4_td = self.td4([p4, _resize_to(p5, p4)])
        p3_out = self.out3([p3, _resize_to(p4_td, p3)])
        p4_out = self.out4([p4, p4_td, _resize_to(p3_out, p4)])
        p5_out = self.out5([p5, _resize_to(p4_out, p5)])
        return p3_out, p4_out, p5_out


class BiFPN(nn.Module):
    """1x1 lateral projections to ``channels`` then ``repeats`` BiFPN layers."""

    def __init__(self, in_channels: Sequence[int], channels: int = 128, repeats: int = 2):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, channels, 1) for c in in_channels)
        self.layers = nn.ModuleList(BiFPNLayer(channels) for _ in range(repeats))

    def forward(self, feats):
        feats = tuple(l(f) for l, f in zip(self.lateral, feats))
        for layer in self.layers:
            feats = layer(feats)
        return feats


# ------------------------------------------------------------------------------------------------
# Head
# ------------------------------------------------------------------------------------------------


class Scale(nn.Module):
    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return x * self.scale


class FCOSHead(nn.Module):
    """Shared towers (conv-GN-SiLU x ``num_convs``); cls logits, ltrb distances, centre-ness."""

    def __init__(self, channels: int, num_classes: int, num_convs: int = 2, num_levels: int = 3,
                 prior_prob: float = 0.01, max_log_dist: float = 10.0):
        super().__init__()

        def tower():
            layers = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(channels, channels, 3, 1, 1), nn.GroupNorm(math.gcd(8, channels), channels),
                           nn.SiLU()]
            return nn.Sequential(*layers)

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, 1, 1)
        self.centerness = nn.Conv2d(channels, 1, 3, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.max_log_dist = max_log_dist
        for m in [self.cls_logits, self.bbox_pred, self.centerness]:
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats, strides):
        cls, reg, ctr = [], [], []
        for i, (f, s) in enumerate(zip(feats, strides)):
            c, r = self.cls_tower(f), self.reg_tower(f)
            cls.append(self.cls_logits(c))
            d = self.scales[i](self.bbox_pred(r)).clamp(max=self.max_log_dist)
            reg.append(torch.exp(d) * s)  # ltrb distances in pixels
            ctr.append(self.centerness(r))
        return cls, reg, ctr


# ------------------------------------------------------------------------------------------------
# Detector
# ------------------------------------------------------------------------------------------------


def level_points(h: int, w: int, stride: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h*w, 2) centres (x, y) in pixels of a stride-``stride`` feature map, row-major."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


class MATHEDetector(nn.Module):
    """MATHE tooth detector: hybrid CNN/VSS backbone, BiFPN neck, FCOS-style anchor-free head.

    ``forward(images)`` with images (B, in_channels, H, W), H and W multiples of 32, returns a dict
    of per-level lists (levels P3, P4, P5): ``"cls"`` (B, num_classes, h, w) logits, ``"reg"``
    (B, 4, h, w) ltrb distances in pixels, ``"ctr"`` (B, 1, h, w) centre-ness logits, plus
    ``"strides"``. :meth:`decode` turns it into boxes; :meth:`loss` trains it.

    Args:
        num_classes: 32 FDI permanent teeth; 52 with primary teeth (``include_primary``). The
            paper's class set is unknown (assumption); a 1-class "tooth" detector also works.
        include_primary: shorthand for ``num_classes=52`` (when num_classes is None).
        in_channels: input channels; 3 (grayscale OPG repeated) is an assumption, 1 works too.
        widths: P1..P5 backbone widths. Assumption (YOLOv8-s has P3/P4/P5 = 128/256/512).
        c2f_depth: bottlenecks per C2f at P2/P3. Assumption.
        num_vss: VSS blocks after the stride-2 conv at P4 and at P5. Assumption (2 is a common choice).
        d_state, ssm_ratio, d_conv: SS2D settings (VMamba v0: 16, 2, 3).
        neck_channels: BiFPN width. Assumption (EfficientDet D0-D7 use 64-384).
        bifpn_repeats: number of BiFPN layers. Assumption (EfficientDet D0-D7 use 3-8).
        head_convs: convs per head tower. Assumption (FCOS uses 4).
        size_ranges: FCOS target assignment, the range of max(l, t, r, b) each level (P3, P4, P5)
            is responsible for, in pixels. Assumption (FCOS values with P6/P7 folded into P5).
        center_radius: FCOS centre sampling, a location is positive only within
            ``center_radius * stride`` of the box centre (as well as inside it). Assumption.
        focal_alpha, focal_gamma: sigmoid focal loss settings (RetinaNet/FCOS: 0.25, 2).
        loss_weights: (cls, box GIoU, centre-ness) weights. Assumption (FCOS: 1, 1, 1).
        drop_path: stochastic depth in the VSS blocks.
    """

    strides = (8, 16, 32)

    def __init__(self, num_classes: int | None = None, include_primary: bool = False, in_channels: int = 3,
                 widths: Sequence[int] = (32, 64, 128, 256, 512), c2f_depth: int = 1, num_vss: int = 2,
                 d_state: int = 16, ssm_ratio: float = 2.0, d_conv: int = 3, neck_channels: int = 128,
                 bifpn_repeats: int = 2, head_convs: int = 2,
                 size_ranges: Sequence[Sequence[float]] = ((0, 64), (64, 128), (128, float("inf"))),
                 center_radius: float = 1.5, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 loss_weights: Sequence[float] = (1.0, 1.0, 1.0), drop_path: float = 0.0):
        super().__init__()
        if num_classes is None:
            num_classes = len(ALL_FDI) if include_primary else len(PERMANENT_FDI)
        self.num_classes = int(num_classes)
        self.config = dict(num_classes=self.num_classes, in_channels=in_channels, widths=list(widths),
                           c2f_depth=c2f_depth, num_vss=num_vss, d_state=d_state, ssm_ratio=ssm_ratio,
                           d_conv=d_conv, neck_channels=neck_channels, bifpn_repeats=bifpn_repeats,
                           head_convs=head_convs, size_ranges=[list(r) for r in size_ranges],
                           center_radius=center_radius, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
                           loss_weights=list(loss_weights), drop_path=drop_path)
        self.size_ranges = [tuple(float(v) for v in r) for r in size_ranges]
        self.center_radius = center_radius
        self.loss_weights = tuple(loss_weights)
        self.backbone = MATHEBackbone(in_channels, widths, c2f_depth, num_vss, d_state, ssm_ratio, d_conv, drop_path)
        self.neck = BiFPN(list(widths)[2:], neck_channels, bifpn_repeats)
        self.head = FCOSHead(neck_channels, self.num_classes, head_convs, num_levels=3)
        from monai.losses import FocalLoss
        self.focal = FocalLoss(include_background=True, gamma=focal_gamma, alpha=focal_alpha,
                               use_softmax=False, reduction="none")

    def forward(self, images: torch.Tensor) -> Dict[str, list]:
        H, W = images.shape[-2:]
        if H % 32 or W % 32:
            raise ValueError(f"MATHE needs height and width that are multiples of 32, got {H}x{W}")
        feats = self.neck(self.backbone(images))
        cls, reg, ctr = self.head(feats, self.strides)
        return {"cls": cls, "reg": reg, "ctr": ctr, "strides": list(self.strides)}

    # -- shared helpers ---------------------------------------------------------------------------

    def _flatten(self, outputs):
        """Concatenate levels: cls (B, P, K), reg (B, P, 4), ctr (B, P), points (P, 2), stride (P,)."""
        cls = torch.cat([c.flatten(2).transpose(1, 2) for c in outputs["cls"]], 1)
        reg = torch.cat([r.flatten(2).transpose(1, 2) for r in outputs["reg"]], 1)
        ctr = torch.cat([c.flatten(1) for c in outputs["ctr"]], 1)
        pts, strides, levels = [], [], []
        for i, (c, s) in enumerate(zip(outputs["cls"], outputs["strides"])):
            p = level_points(c.shape[-2], c.shape[-1], s, device=cls.device)
            pts.append(p)
            strides.append(torch.full((len(p),), float(s), device=cls.device))
            levels.append(torch.full((len(p),), i, device=cls.device, dtype=torch.long))
        return cls, reg, ctr, torch.cat(pts), torch.cat(strides), torch.cat(levels)

    @staticmethod
    def _boxes_from_ltrb(points, ltrb):
        return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)

    # -- inference --------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, outputs, image_size: Sequence[int], score_thresh: float = 0.05, nms_thresh: float = 0.6,
               max_det: int = 100, pre_nms_topk: int = 1000,
               class_agnostic: bool = False) -> List[Dict[str, torch.Tensor]]:
        """Per image ``{"boxes": (n, 4) x0 y0 x1 y1, "scores": (n,), "labels": (n,) class indices}``.

        Score = sqrt(sigmoid(cls) * sigmoid(centre-ness)) (FCOS); candidates above ``score_thresh``
        (top ``pre_nms_topk``), clipped to ``image_size`` = (H, W) with MONAI
        ``clip_boxes_to_image`` (empty boxes dropped), at most ``max_det`` kept.

        - Per class (default): a candidate is a (location, class) pair; MONAI ``batched_nms`` per
          class. One tooth can come out twice with neighbouring numbers (per-class NMS does not see
          that 16 and 17 sit on the same box), which is what mAP is computed on.
        - ``class_agnostic``: one candidate per location (its best class), MONAI
          ``non_max_suppression`` over all classes: one box per tooth. The result also has
          ``"class_scores"`` (n, num_classes): per class, the score-weighted mean of sigmoid(cls)
          over the locations the kept box suppressed (IoU > ``nms_thresh``, itself included), i.e.
          every location that saw this tooth votes for its number; ``labels`` is their argmax.
          The numbering step (:func:`~.numbering.number_teeth`) turns these into FDI numbers.
        """
        from monai.data.box_utils import batched_nms, box_iou, clip_boxes_to_image, non_max_suppression
        H, W = int(image_size[0]), int(image_size[1])
        cls, reg, ctr, points, _, _ = self._flatten(outputs)
        probs_all = torch.sigmoid(cls.float())
        scores_all = torch.sqrt(probs_all * torch.sigmoid(ctr.float())[..., None])
        results = []
        for b in range(cls.shape[0]):
            s = scores_all[b]
            if class_agnostic:
                best, best_lab = s.max(dim=1)
                pt_idx = (best > score_thresh).nonzero()[:, 0]
                labels, scores = best_lab[pt_idx], best[pt_idx]
            else:
                cand = (s > score_thresh).nonzero()
                pt_idx, labels = cand[:, 0], cand[:, 1]
                scores = s[pt_idx, labels]
            if scores.numel() > pre_nms_topk:
                scores, top = scores.topk(pre_nms_topk)
                pt_idx, labels = pt_idx[top], labels[top]
            boxes = self._boxes_from_ltrb(points[pt_idx], reg[b, pt_idx].float())
            if boxes.numel():
                # MONAI clips coordinate axis i to spatial_size[i]: boxes are (x, y) so pass (W, H).
                boxes, keep = clip_boxes_to_image(boxes, (W, H), remove_empty=True)
                scores, labels, pt_idx = scores[keep], labels[keep], pt_idx[keep]
            probs = probs_all[b, pt_idx]
            cand_boxes, cand_scores, cand_probs = boxes, scores, probs
            if boxes.numel():
                if class_agnostic:
                    keep = non_max_suppression(boxes, scores, nms_thresh, max_det)
                else:
                    keep = batched_nms(boxes, scores, labels, nms_thresh, max_det)
                keep = keep.long()
                boxes, scores, labels, probs = boxes[keep], scores[keep], labels[keep], probs[keep]
            out = {"boxes": boxes.reshape(-1, 4), "scores": scores, "labels": labels.long()}
            if class_agnostic:
                if len(boxes):
                    w = (box_iou(boxes, cand_boxes) > nms_thresh).float() * cand_scores[None]
                    w[torch.arange(len(boxes)), keep] = scores  # a kept box always votes for itself
                    probs = (w @ cand_probs) / w.sum(1, keepdim=True)
                    labels = probs.argmax(1)
                out["class_scores"] = probs.reshape(-1, self.num_classes)
                out["labels"] = labels.long()
            results.append(out)
        return results

    # -- training ---------------------------------------------------------------------------------

    def assign_targets(self, points, strides, levels, gt_boxes, gt_labels):
        """FCOS assignment for one image.

        A location is a candidate for a GT box when it lies inside the box (MONAI
        ``centers_in_boxes``), within ``center_radius * stride`` of the box centre (centre
        sampling), and max(l, t, r, b) falls in its level's ``size_ranges``. Among several
        candidates the box with the smallest area (MONAI ``box_area``) wins.
        Returns (matched GT index per location, -1 for background; ltrb targets (P, 4)).
        """
        from monai.data.box_utils import box_area, centers_in_boxes
        P, G = len(points), len(gt_boxes)
        if G == 0:
            return torch.full((P,), -1, dtype=torch.long, device=points.device), points.new_zeros(P, 4)
        pts = points[:, None, :].expand(P, G, 2)
        bxs = gt_boxes[None].expand(P, G, 4)
        ltrb = torch.cat([pts - bxs[..., :2], bxs[..., 2:] - pts], dim=-1)  # (P, G, 4)
        inside = centers_in_boxes(pts.reshape(-1, 2), bxs.reshape(-1, 4), eps=0.0).reshape(P, G)
        centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        radius = self.center_radius * strides[:, None]
        near = ((points[:, None, :] - centres[None]).abs() <= radius[..., None]).all(-1)
        lo = torch.tensor([r[0] for r in self.size_ranges], device=points.device)[levels]
        hi = torch.tensor([r[1] for r in self.size_ranges], device=points.device)[levels]
        m = ltrb.max(-1).values
        ok = inside & near & (m >= lo[:, None]) & (m <= hi[:, None])
        area = box_area(gt_boxes).to(points.dtype)[None].expand(P, G).clone()
        area[~ok] = float("inf")
        best_area, best = area.min(dim=1)
        best[torch.isinf(best_area)] = -1
        target_ltrb = ltrb[torch.arange(P, device=points.device), best.clamp(min=0)]
        return best, target_ltrb

    def loss(self, outputs, targets: Sequence[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """FCOS losses; ``targets`` per image ``{"boxes": (n, 4) x0 y0 x1 y1 pixels, "labels": (n,)}``.

        - ``cls``: sigmoid focal loss (MONAI ``FocalLoss``) over all locations and classes, summed
          and divided by the number of positive locations (at least 1).
        - ``box``: 1 - GIoU (MONAI ``box_pair_giou``) of predicted vs target boxes at positives,
          weighted by the centre-ness target.
        - ``ctr``: BCE-with-logits of centre-ness at positives against
          sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)).
        ``total`` = weighted sum with ``loss_weights``.
        """
        from monai.data.box_utils import box_pair_giou
        cls, reg, ctr, points, strides, levels = self._flatten(outputs)
        B, P, K = cls.shape
        cls_t = torch.zeros_like(cls)
        pos_reg, pos_tgt, pos_ctr, pos_pts = [], [], [], []
        for b, t in enumerate(targets):
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=cls.device).reshape(-1, 4)
            labels = torch.as_tensor(t["labels"], dtype=torch.long, device=cls.device).reshape(-1)
            idx, ltrb = self.assign_targets(points, strides, levels, boxes, labels)
            pos = idx >= 0
            cls_t[b, pos, labels[idx[pos]]] = 1.0
            pos_reg.append(reg[b, pos])
            pos_tgt.append(ltrb[pos])
            pos_ctr.append(ctr[b, pos])
            pos_pts.append(points[pos])
        n_pos = sum(len(p) for p in pos_pts)
        norm = max(float(n_pos), 1.0)
        # MONAI FocalLoss expects (N, C, ...): put classes on dim 1.
        l_cls = self.focal(cls.float().transpose(1, 2), cls_t.transpose(1, 2)).sum() / norm
        if n_pos:
            reg_p, tgt_p, ctr_p, pts_p = (torch.cat(x) for x in (pos_reg, pos_tgt, pos_ctr, pos_pts))
            lr, tb = tgt_p[:, [0, 2]], tgt_p[:, [1, 3]]
            ctr_t = torch.sqrt((lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6))
                               * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)))
            giou = box_pair_giou(self._boxes_from_ltrb(pts_p, reg_p.float()), self._boxes_from_ltrb(pts_p, tgt_p))
            l_box = ((1.0 - giou) * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
            l_ctr = F.binary_cross_entropy_with_logits(ctr_p.float(), ctr_t, reduction="sum") / norm
        else:  # keep the graph connected so every head parameter gets a (zero) gradient
            l_box = reg.sum() * 0.0
            l_ctr = ctr.sum() * 0.0
        wc, wb, wn = self.loss_weights
        return {"cls": l_cls, "box": l_box, "ctr": l_ctr, "total": wc * l_cls + wb * l_box + wn * l_ctr}
