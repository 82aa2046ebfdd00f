"""HENA: the MATHENA per-tooth network (arXiv 2604.00537).

Stated by the authors (the paper's abstract and their blog post, team-sudal.tistory.com/134): a
lightweight Mamba-based U-shaped encoder-decoder (Mamba-UNet) on per-tooth crops, a Global Context
State Token (GCST) at the bottleneck, and a triple head: caries segmentation (CarSeg, trained
first), anomaly detection (AD, fine-tuned on the frozen shared representation) and dental
developmental staging (DDS, linear probe). Everything else is a reconstruction; assumptions are
marked in the argument docs.

Topology (Mamba-UNet, ``ziyangwang007/Mamba-UNet code/networks/mamba_sys.py``, channels-last):

- stem: Conv ``patch_size`` x ``patch_size`` stride ``patch_size`` -> ``embed_dim`` + LayerNorm;
- encoder: ``len(depths)`` stages of VSS blocks at dims ``embed_dim * 2**i``; PatchMerging
  (2x2 concat -> LN -> Linear 4C->2C) between stages; the skip of a stage is its output before
  merging. The last stage is the bottleneck (at 1/(patch_size * 2**(stages-1)) resolution);
- bottleneck: LayerNorm, then the GCST (if ``use_gcst``);
- decoder: per level PatchExpand (Linear C->2C, 2x2 pixel shuffle to C/2, LN), concat skip,
  Linear 2C->C, ``decoder_depths`` VSS blocks; final x``patch_size`` expand (Linear, pixel
  shuffle, LN) to the crop resolution with ``embed_dim`` channels.

GCST (the paper gives only its name and its place at the bottleneck; this reading is an
assumption, a summary token in the manner of Vim's class token and Mamba(R)'s registers): a
learnable token g0 (N(0, 0.02)) plus a linear map of the mean-pooled bottleneck tokens forms g.
A VSS block scans the bottleneck with g placed first in each of the four scan sequences (every
direction starts from the global-context state) and again last (its output there has seen the
whole crop); the four read-outs are summed into the GCST feature z_g (LayerNorm). z_g then
modulates every bottleneck token by FiLM, x <- x * (1 + gamma(z_g)) + beta(z_g).
``use_gcst=False`` removes token, scan and FiLM (the "w/o GCST" ablation).

Heads (``forward`` returns a :class:`HENAOutput`):

- ``caries`` (B, 1, H, W) logits: 1x1 projection of the decoder output;
- ``anomaly`` (B, 1, H, W) logits: its own small per-pixel MLP (1x1 conv - GELU - 1x1 conv) on the
  output of the AD decoder branch (``ad_branch=True``, default) or of the shared decoder
  (``ad_branch=False``, the original layout), and ``anomaly_score`` (B,) image-level logit: a
  Linear layer on [mean-pooled (and, with the branch, max-pooled) AD hidden features, probe
  features];
- ``stage`` (B, 8) Demirjian A-H logits: a single Linear layer (linear probe) on the probe features
  = mean-pooled bottleneck tokens (after GCST), concatenated with z_g when ``use_gcst``.

Staged training (order stated in the paper's abstract: CarSeg first, then frozen, AD fine-tuned,
DDS linear probe): "carseg" trains stem, encoder, bottleneck/GCST, decoder and the
caries head (the *shared* part plus its head); :meth:`freeze_shared` then freezes the shared part
(requires_grad False, kept in eval mode); "ad" trains only the AD part; "dds" only the probe.

AD branch (assumption; the paper says only that AD is "fine-tuned" on the frozen shared
representation, not which modules train): with ``ad_branch=True``
the AD head reads a decoder of its own (same topology as the shared decoder: PatchExpand, skip
concat, VSS blocks, final expand) fed by the frozen encoder skips and the frozen bottleneck
(after GCST). When the "ad" stage starts, the branch is initialised as a copy of the trained
shared decoder (:meth:`init_ad_branch`) and then fine-tuned, so the shared encoder, GCST,
shared decoder and caries head stay exactly as CarSeg left them. Why: a per-pixel MLP on the
``embed_dim`` channels of a decoder trained for caries alone cannot outline impacted teeth or
periapical lesions (held-out anomaly Dice about 0.03 in the first demo build).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vss import SS2D, VSSBlock

STAGES = ("carseg", "ad", "dds")
DEMIRJIAN_STAGES = tuple("ABCDEFGH")


@dataclass
class HENAOutput:
    caries: torch.Tensor          # (B, 1, H, W) logits
    anomaly: torch.Tensor         # (B, 1, H, W) logits
    anomaly_score: torch.Tensor   # (B,) image-level logit
    stage: torch.Tensor           # (B, num_stages) logits
    features: torch.Tensor        # (B, F) probe features (pooled bottleneck [+ z_g])
    gcst: Optional[torch.Tensor]  # (B, C_bottleneck) z_g, None without GCST


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): 2x2 concat, LayerNorm(4C), Linear 4C->2C (Swin/VMamba)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """(B, H, W, C) -> (B, rH, rW, C_out): Linear C -> r*r*C_out, pixel shuffle, LayerNorm."""

    def __init__(self, dim: int, out_dim: int, ratio: int = 2):
        super().__init__()
        self.ratio, self.out_dim = ratio, out_dim
        self.expand = nn.Linear(dim, ratio * ratio * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x):
        B, H, W, _ = x.shape
        r = self.ratio
        x = self.expand(x).view(B, H, W, r, r, self.out_dim).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(B, H * r, W * r, self.out_dim))



def _decoder_levels(dims: Sequence[int], decoder_depths: Sequence[int], vss: dict):
    """The U-Net decoder's levels, deepest first: 2x patch expansion, skip concatenation back to
    the level's width, VSS blocks (shared by HENA's decoder and the anomaly branch, same keys)."""
    expands, concat_back, decoder = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
    for j, level in enumerate(range(len(dims) - 2, -1, -1)):
        expands.append(PatchExpand(dims[level + 1], dims[level], 2))
        concat_back.append(nn.Linear(2 * dims[level], dims[level]))
        decoder.append(nn.Sequential(*[VSSBlock(dims[level], **vss) for _ in range(decoder_depths[j])]))
    return expands, concat_back, decoder

class _DecoderBranch(nn.Module):
    """A decoder with the shared decoder's topology (for the AD head): bottleneck + skips -> (B, H, W, C0).

    ``ready`` (buffer, 0/1) records whether it was initialised from the shared decoder."""

    def __init__(self, dims: Sequence[int], decoder_depths: Sequence[int], patch_size: int, vss: dict):
        super().__init__()
        self.expands, self.concat_back, self.decoder = _decoder_levels(dims, decoder_depths, vss)
        self.final_expand = PatchExpand(dims[0], dims[0], patch_size)
        self.register_buffer("ready", torch.zeros(()))

    def forward(self, x, skips):
        for expand, cat, dec, skip in zip(self.expands, self.concat_back, self.decoder, reversed(skips)):
            x = dec(cat(torch.cat([expand(x), skip], dim=-1)))
        return self.final_expand(x)


class GCST(nn.Module):
    """Global Context State Token at the bottleneck (channels-last (B, h, w, C) in and out)."""

    def __init__(self, dim: int, d_state: int = 16, ssm_ratio: float = 2.0, d_conv: int = 3):
        super().__init__()
        self.token = nn.Parameter(torch.randn(dim) * 0.02)
        self.pool_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv)
        self.token_norm = nn.LayerNorm(dim)
        self.film = nn.Linear(dim, 2 * dim)
        nn.init.normal_(self.film.weight, std=0.02)
        nn.init.zeros_(self.film.bias)

    def forward(self, x):
        g = self.token + self.pool_proj(x.mean(dim=(1, 2)))                 # (B, C)
        y, c = self.op(self.norm(x), context=g)
        x = x + y
        z = self.token_norm(g + c)                                           # GCST feature z_g
        gamma, beta = self.film(z).chunk(2, dim=-1)
        return x * (1 + gamma[:, None, None]) + beta[:, None, None], z


class HENA(nn.Module):
    """Lightweight Mamba-UNet with GCST and triple head on per-tooth crops.

    ``forward(crops)`` with crops (B, in_channels, H, W), H and W multiples of
    ``patch_size * 2**(len(depths) - 1)``, returns a :class:`HENAOutput`.

    Args:
        in_channels: crop channels (grayscale: 1).
        embed_dim: stage-1 width; stage i has ``embed_dim * 2**i``. Assumption (the paper says
            "lightweight"; Mamba-UNet uses 96).
        depths: VSS blocks per encoder stage (the last is the bottleneck). Assumption ([2,2,2,2]).
        decoder_depths: VSS blocks per decoder level, deepest first (``len(depths) - 1``
            entries; default: the encoder depths reversed without the bottleneck). Assumption.
        patch_size: stem stride (Mamba-UNet: 4).
        d_state, ssm_ratio, d_conv: SS2D settings (VMamba v0 / Mamba-UNet: 16, 2, 3).
        use_gcst: GCST at the bottleneck; False is the ablation.
        num_stages: DDS classes (Demirjian A-H = 8). Assumption (the paper does not give the stages).
        drop_path: maximum stochastic-depth rate (linear over encoder blocks; 0.2 in
            Mamba-UNet training, default 0 here).
        ad_branch: give the AD head its own decoder branch (see the module docstring). Assumption.
            Checkpoints written before this option existed load with ``ad_branch=False``.
    """

    def __init__(self, in_channels: int = 1, embed_dim: int = 48, depths: Sequence[int] = (2, 2, 2, 2),
                 decoder_depths: Optional[Sequence[int]] = None, patch_size: int = 4, d_state: int = 16,
                 ssm_ratio: float = 2.0, d_conv: int = 3, use_gcst: bool = True, num_stages: int = 8,
                 drop_path: float = 0.0, ad_branch: bool = True):
        super().__init__()
        depths = [int(d) for d in depths]
        if len(depths) < 2:
            raise ValueError("HENA needs at least two stages (encoder + bottleneck)")
        n = len(depths)
        decoder_depths = [int(d) for d in (decoder_depths if decoder_depths is not None else depths[-2::-1])]
        if len(decoder_depths) != n - 1:
            raise ValueError(f"decoder_depths needs {n - 1} entries, got {decoder_depths}")
        self.config = dict(in_channels=in_channels, embed_dim=embed_dim, depths=depths,
                           decoder_depths=decoder_depths, patch_size=patch_size, d_state=d_state,
                           ssm_ratio=ssm_ratio, d_conv=d_conv, use_gcst=use_gcst, num_stages=num_stages,
                           drop_path=drop_path, ad_branch=bool(ad_branch))
        self.use_gcst = use_gcst
        self.patch_size = patch_size
        self.multiple = patch_size * 2 ** (n - 1)
        dims = [embed_dim * 2 ** i for i in range(n)]
        self.dims = dims
        dpr = torch.linspace(0, drop_path, sum(depths)).tolist()
        vss = dict(d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv)

        # ---- shared representation -------------------------------------------------------------
        self.stem = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)
        self.stem_norm = nn.LayerNorm(embed_dim)
        self.encoder = nn.ModuleList()
        self.merges = nn.ModuleList()
        k = 0
        for i, d in enumerate(depths):
            self.encoder.append(nn.Sequential(*[VSSBlock(dims[i], drop_path=dpr[k + j], **vss) for j in range(d)]))
            k += d
            if i < n - 1:
                self.merges.append(PatchMerging(dims[i]))
        self.bottleneck_norm = nn.LayerNorm(dims[-1])
        self.gcst = GCST(dims[-1], **vss) if use_gcst else None
        self.expands, self.concat_back, self.decoder = _decoder_levels(dims, decoder_depths, vss)
        self.final_expand = PatchExpand(embed_dim, embed_dim, patch_size)
        self.caries_head = nn.Linear(embed_dim, 1)

        # ---- task heads on the frozen representation -------------------------------------------
        self.feature_dim = dims[-1] * (2 if use_gcst else 1)
        self.ad_branch = _DecoderBranch(dims, decoder_depths, patch_size, vss) if ad_branch else None
        self.ad_head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.ad_mask = nn.Linear(embed_dim, 1)
        # with the branch the image-level logit also sees the max-pooled hidden features: a small
        # periapical lesion barely moves a mean over the whole crop
        self.ad_image = nn.Linear(embed_dim * (2 if ad_branch else 1) + self.feature_dim, 1)
        self.stage_probe = nn.Linear(self.feature_dim, num_stages)
        self._shared_frozen = False

    # -- module groups ------------------------------------------------------------------------------

    _SHARED = ("stem", "stem_norm", "encoder", "merges", "bottleneck_norm", "gcst", "expands",
               "concat_back", "decoder", "final_expand")
    _STAGE_MODULES = {"carseg": _SHARED + ("caries_head",), "ad": ("ad_branch", "ad_head", "ad_mask", "ad_image"),
                      "dds": ("stage_probe",)}

    def _modules_of(self, names) -> List[nn.Module]:
        return [getattr(self, n) for n in names if getattr(self, n) is not None]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the shared representation (stem, encoder, bottleneck/GCST, decoder)."""
        for m in self._modules_of(self._SHARED):
            yield from m.parameters()

    def trainable_parameters(self, stage: str) -> List[nn.Parameter]:
        """Parameters trained in ``stage``: "carseg" (shared + caries head), "ad" (AD decoder branch
        when present, per-pixel MLP, mask and image-level layers), "dds" (the linear probe only)."""
        if stage not in STAGES:
            raise ValueError(f"unknown HENA training stage {stage!r}; expected one of {STAGES}")
        return [p for m in self._modules_of(self._STAGE_MODULES[stage]) for p in m.parameters()]

    def freeze_shared(self, freeze_caries_head: bool = True) -> None:
        """Freeze the shared representation after the CarSeg stage (and the caries head)."""
        names = self._SHARED + (("caries_head",) if freeze_caries_head else ())
        for m in self._modules_of(names):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        self._shared_frozen = True

    @torch.no_grad()
    def init_ad_branch(self) -> None:
        """Copy the (trained) shared decoder into the AD branch and mark the branch initialised."""
        if self.ad_branch is None:
            return
        b = self.ad_branch
        for dst, src in ((b.expands, self.expands), (b.concat_back, self.concat_back), (b.decoder, self.decoder),
                         (b.final_expand, self.final_expand)):
            dst.load_state_dict(src.state_dict())
        b.ready.fill_(1.0)

    def set_stage(self, stage: str) -> List[nn.Parameter]:
        """Make exactly ``stage``'s parameters trainable (freezing the shared part for "ad"/"dds");
        returns them, ready for an optimiser. Entering "ad" for the first time initialises the AD
        branch from the shared decoder (a saved, already initialised branch is left alone)."""
        params = self.trainable_parameters(stage)
        if stage == "ad" and self.ad_branch is not None and not bool(self.ad_branch.ready):
            self.init_ad_branch()
        if stage != "carseg":
            self.freeze_shared()
        for p in self.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        return params

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self._shared_frozen:  # frozen modules stay in eval mode (dropout, drop path)
            for m in self._modules_of(self._SHARED + ("caries_head",)):
                m.eval()
        return self

    # -- forward ------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> HENAOutput:
        B, _, H, W = x.shape
        if H % self.multiple or W % self.multiple:
            raise ValueError(f"HENA needs crop sides that are multiples of {self.multiple}, got {H}x{W}")
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1))  # (B, h, w, C0)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i < len(self.merges):
                skips.append(x)
                x = self.merges[i](x)
        x = self.bottleneck_norm(x)
        z = None
        if self.gcst is not None:
            x, z = self.gcst(x)
        pooled = x.mean(dim=(1, 2))
        feats = pooled if z is None else torch.cat([pooled, z], dim=-1)
        bottleneck = x
        for expand, cat, dec, skip in zip(self.expands, self.concat_back, self.decoder, reversed(skips)):
            x = dec(cat(torch.cat([expand(x), skip], dim=-1)))
        x = self.final_expand(x)  # (B, H, W, C0)
        caries = self.caries_head(x).permute(0, 3, 1, 2)
        if self.ad_branch is not None:
            ad_hidden = self.ad_head(self.ad_branch(bottleneck, skips))
            pooled_ad = [ad_hidden.mean(dim=(1, 2)), ad_hidden.amax(dim=(1, 2))]
        else:
            ad_hidden = self.ad_head(x)
            pooled_ad = [ad_hidden.mean(dim=(1, 2))]
        anomaly = self.ad_mask(ad_hidden).permute(0, 3, 1, 2)
        anomaly_score = self.ad_image(torch.cat(pooled_ad + [feats], dim=-1)).squeeze(-1)
        stage = self.stage_probe(feats)
        return HENAOutput(caries=caries.contiguous(), anomaly=anomaly.contiguous(), anomaly_score=anomaly_score,
                          stage=stage, features=feats, gcst=z)

    # -- losses ---------------------------------------------------------------------------------------

    @staticmethod
    def _bce_dice(logits, target, eps: float = 1.0):
        """Pixel BCE + soft Dice (1:1) of (B, 1, H, W) logits: MONAI ``DiceCELoss`` (one channel, so
        BCE with logits; Dice per crop, ``eps`` added to numerator and denominator, mean over the batch).
        Same values as the hand-written loss it replaced (``Testing/test_metrics.py``)."""
        from monai.losses import DiceCELoss
        return DiceCELoss(sigmoid=True, smooth_nr=eps, smooth_dr=eps)(logits, target.to(logits.dtype))

    @staticmethod
    def ad_loss(out: HENAOutput, targets: dict, eps: float = 1.0) -> torch.Tensor:
        """AD loss: pixel BCE (all crops) + soft Dice (crops with an anomaly only) + image-level BCE.

        ``targets["anomaly"]`` (B, 1, H, W) mask; ``targets["anomaly_label"]`` (B,) image label
        (default: any positive pixel); optional ``targets["anomaly_logit_offset"]`` (float):
        added to the image-level logit inside the loss only (logit adjustment, Menon et al. 2021).
        Why: training batches oversample anomalous crops; with offset ``logit(q) - logit(pi)``
        (q the sampled, pi the true positive share) the *unshifted* logit is calibrated to the true
        prior, so ``sigmoid(anomaly_score) > 0.5`` is a sensible decision. The Dice term skips
        normal crops: with an empty target soft Dice only rewards an all-zero mask, and the pixel
        BCE already says that, without drowning the few lesion pixels.
        """
        logits, mask = out.anomaly, targets["anomaly"].to(out.anomaly.dtype)
        label = targets.get("anomaly_label")
        if label is None:
            label = (mask.flatten(1).amax(1) > 0)
        label = label.to(out.anomaly_score.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, mask)
        p, t = torch.sigmoid(logits).flatten(1), mask.flatten(1)
        pos = t.sum(1) > 0
        dice = (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps))[pos].sum() / pos.sum().clamp(min=1)
        offset = float(targets.get("anomaly_logit_offset", 0.0))
        image = F.binary_cross_entropy_with_logits(out.anomaly_score + offset, label)
        return bce + dice + image

    def loss(self, out: HENAOutput, targets: dict, stage: str) -> torch.Tensor:
        """Loss of one training stage (see "Staged training" in the module docstring).

        "carseg": BCE + soft Dice (1:1) on ``targets["caries"]`` (B, 1, H, W);
        "ad": :meth:`ad_loss`;
        "dds": cross-entropy on ``targets["stage"]`` (B,) class indices (A..H -> 0..7).
        """
        if stage == "carseg":
            return self._bce_dice(out.caries, targets["caries"])
        if stage == "ad":
            return self.ad_loss(out, targets)
        if stage == "dds":
            return F.cross_entropy(out.stage, targets["stage"].long())
        raise ValueError(f"unknown HENA training stage {stage!r}; expected one of {STAGES}")


# -- inference ----------------------------------------------------------------------------------------

#: Caries / anomaly masks at inference average the probabilities of the crop and of its left-right
#: mirror, and are drawn where that mean is at least MASK_THRESHOLD. A mirrored tooth is still a
#: plausible tooth (the contralateral one), while an upside-down one is a tooth of the other jaw.
#: Both chosen on 60 validation OPGs (seeds 43000-43059, disjoint from training and held-out images,
#: demo HENA): Dice on positive crops, caries 0.700 -> 0.729, anomaly 0.819 -> 0.832 (plain at 0.5:
#: 0.695 / 0.815); adding the up-down flips scored lower (0.713 / 0.814), so they are not used.
#: The image-level anomaly score and the stage come from the unmirrored crop alone (mirroring did
#: not improve them on the same images: stage accuracy 0.797 against 0.799). Cost: HENA runs twice;
#: a whole analysis of a 700 x 1400 OPG with 28 teeth takes 1.05 s instead of 0.61 s (one thread).
FLIP_AVERAGE = True
MASK_THRESHOLD = 0.3


@torch.inference_mode()
def crop_probabilities(hena: nn.Module, crops: torch.Tensor, flip_average: bool = FLIP_AVERAGE) -> dict:
    """HENA's probabilities for a batch of crops (B, C, H, W): ``caries`` and ``anomaly`` (B, H, W)
    (mirror-averaged when ``flip_average``), ``anomaly_score`` (B,), ``stage`` (B, stages) softmax."""
    out = hena(crops)
    caries = torch.sigmoid(out.caries.float())[:, 0]
    anomaly = torch.sigmoid(out.anomaly.float())[:, 0]
    if flip_average:
        mirrored = hena(torch.flip(crops, dims=[-1]))
        caries = (caries + torch.flip(torch.sigmoid(mirrored.caries.float())[:, 0], dims=[-1])) / 2
        anomaly = (anomaly + torch.flip(torch.sigmoid(mirrored.anomaly.float())[:, 0], dims=[-1])) / 2
    return {"caries": caries, "anomaly": anomaly, "anomaly_score": torch.sigmoid(out.anomaly_score.float().reshape(-1)),
            "stage": torch.softmax(out.stage.float(), dim=-1)}
