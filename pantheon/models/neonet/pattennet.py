"""PattenNet (PNI-Attention Network), NeoNet's classifier (NeoCls).

Paper: NeoNet (arXiv 2603.29449) states only that PattenNet combines the **frozen LDM encoder** with
**3D Dual Attention Blocks (DAB)** to capture subtle intensity variations and spatial patterns of
perineural invasion. Everything else here is an **assumption** (the paper gives neither the
encoder layer, the DAB design nor the head):

- the frozen encoder is NeoGen's AutoencoderKL encoder + ``quant_conv_mu`` (posterior mean, times the
  NeoGen latent ``scale_factor``); it stays in eval mode with ``requires_grad=False`` even while the
  rest trains;
- a DAB is a residual conv block (Conv-GN-SiLU-Conv-GN) followed by CBAM-style channel attention
  (shared MLP on avg- and max-pooled descriptors, reduction ``reduction``) and spatial attention
  (Conv3d on channel-mean and channel-max maps, kernel ``spatial_kernel``), then the skip sum;
- all DABs run at latent resolution (no striding: a 96x96x48 patch gives a 24x24x12 latent), so the
  returned attention map (mean of the DABs' spatial-attention maps, values in (0, 1)) has one value
  per latent voxel and can be upsampled onto the MRI with :func:`attention_to_image`;
- head: global average pooling -> dropout -> Linear -> one PNI logit (use BCE-with-logits).
  ``pooling="avgmax"`` concatenates global max pooling to it: a perineural tumour tentacle fills a
  few latent voxels only, and averaging over the whole crop dilutes that evidence (assumption);
- the tumour channel is the binary tumour mask when the user supplies one and NeoSeg's tumour
  *probability* end to end (the demo classifier is trained on both; a thin extension NeoSeg is
  unsure of still registers where its argmax would drop it);
- masks (``mask_channels`` > 0) reach the latent grid by average pooling (partial-volume fractions),
  max pooling (a thin structure stays at 1), both ("avgmax" doubles the channels) or a small learned
  stem (``mask_pooling="conv"``: Conv3d 3x3x3 at patch resolution, SiLU, then a Conv3d with kernel
  and stride = the encoder's factor, ``mask_embed_channels`` wide). The stem exists because a
  1-2 voxel thin tentacle survives pooling to the latent grid only as a faint partial-volume trace
  next to the main mass, while a convolution at patch resolution can recognise it as a thin
  structure before downsampling (assumption; the image path stays the frozen encoder).
- ``radial_channel``: the stem also receives each mask multiplied by the distance of every voxel
  from the crop centre (0 at the centre, 3 at the corners). TLCR centres the crop on the tumour,
  so "tumour far from the centre for its size" -- the tentacle of perineural spread -- becomes a
  value the convolutions and the max pooling read directly; measured on the demo phantoms, a
  network given only the plain mask did not find that relation within the CPU budget (loss stuck
  at chance for hundreds of steps). Assumption (a CoordConv-style positional input restricted to
  the mask; only with ``mask_pooling="conv"``).
- ``dense_head``: the head reads the pooled input of the first DAB (frozen latent + mask features)
  next to the last DAB's output. Measured on the demo phantoms: with the DABs alone between the
  mask stem and the head, the loss stayed at chance for 100+ steps at lr 1e-2, while the same stem
  feeding the head directly separated held-out phantoms (AUC 1.0 on ground-truth masks) within
  100 steps; the per-sample GroupNorm inside the blocks washes out the one global quantity
  that matters (how far the tumour reaches). Assumption (a DenseNet-style skip around the DABs).
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError

_POOLINGS = ("avg", "avgmax")
_MASK_POOLINGS = ("avg", "max", "avgmax", "conv")


def _radial_map(shape, like: torch.Tensor) -> torch.Tensor:
    """(1, 1, D, H, W) distance of each voxel centre from the patch centre, 0 at the centre and
    3 at the corners. O(1) values on purpose: the tumour/tentacle differences must be large
    against the stem's initial weights, or Adam needs hundreds of steps just to grow them."""
    axes = [torch.arange(n, device=like.device, dtype=like.dtype) - (n - 1) / 2 for n in shape]
    g = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(sum(a * a for a in g))
    return (3.0 * r / r.max().clamp_min(1e-6))[None, None]


def _groups(channels: int, preferred: int = 8) -> int:
    g = min(preferred, channels)
    while channels % g:
        g -= 1
    return g


class ChannelAttention3D(nn.Module):
    """CBAM channel gate: sigmoid(MLP(avgpool) + MLP(maxpool)) per channel."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.mlp(F.adaptive_avg_pool3d(x, 1)) + self.mlp(F.adaptive_max_pool3d(x, 1))
        return x * torch.sigmoid(gate)


class SpatialAttention3D(nn.Module):
    """CBAM spatial gate: sigmoid(Conv3d([mean_c, max_c])); returns (gated x, map (B,1,d,h,w))."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial_kernel must be odd, got {kernel_size}")
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        att = torch.sigmoid(self.conv(desc))
        return x * att, att


class DualAttentionBlock3D(nn.Module):
    """3D Dual Attention Block: residual conv block with channel then spatial attention."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 8, spatial_kernel: int = 7):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels), nn.SiLU(),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels))
        self.channel_attention = ChannelAttention3D(out_channels, reduction)
        self.spatial_attention = SpatialAttention3D(spatial_kernel)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y = self.channel_attention(self.body(x))
        y, att = self.spatial_attention(y)
        return self.act(y + self.skip(x)), att


def attention_to_image(attention_map: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Trilinear upsampling of a (B, 1, d, h, w) attention map to the input patch's spatial shape.

    ``image_shape`` is (D, H, W) or a full (B, C, D, H, W) shape (its last three entries are used).
    Returns (B, 1, D, H, W), ready to be placed back at the crop position on the MRI.
    """
    shape = tuple(int(s) for s in image_shape)[-3:]
    if len(shape) != 3:
        raise InputError(f"image_shape must give three spatial sizes, got {tuple(image_shape)}.")
    if attention_map.ndim != 5:
        raise InputError(f"Expected an attention map shaped (B, 1, d, h, w), got {tuple(attention_map.shape)}.")
    return F.interpolate(attention_map.float(), size=shape, mode="trilinear", align_corners=False)


class PattenNet(nn.Module):
    """Frozen NeoGen autoencoder encoder + 3D DABs + GAP + linear head -> PNI logit.

    Args:
        autoencoder_config: the NeoGen autoencoder's architecture (keys of :class:`NeoGen`'s config:
            ``in_channels``, ``ae_channels``, ``ae_num_res_blocks``, ``ae_attention_levels``,
            ``latent_channels``, ``ae_norm_num_groups``); the encoder is rebuilt from it and its weights
            come from :meth:`from_neogen` or a checkpoint.
        dab_channels: output widths of the DABs, one block each. Assumption: (64, 128, 256).
        reduction: channel-attention reduction ratio. Assumption: 8.
        spatial_kernel: spatial-attention kernel size. Assumption: 7.
        dropout: dropout before the linear head. Assumption: 0.3.
        mask_channels: extra anatomical-mask channels (e.g. tumour) pooled to the latent grid
            and concatenated before the first DAB. Assumption: 0 (image only); when > 0 pass ``masks``.
        scale_factor: the NeoGen latent scale applied to the encoder output.
        pooling: global pooling before the head, "avg" or "avgmax" (avg and max
            concatenated). Assumption: "avg".
        mask_pooling: how masks reach the latent grid, "avg", "max", "avgmax" or "conv" (learned stem).
            Assumption: "avg".
        mask_embed_channels: width of the "conv" mask stem. Assumption: 8.
        radial_channel: also feed the stem the masks times a normalised distance-from-crop-centre map.
            Assumption: False.
        dense_head: the head also reads the pooled input of the first DAB. Assumption: False.
    """

    kind = "pattennet"
    _AE_KEYS = ("in_channels", "ae_channels", "ae_num_res_blocks", "ae_attention_levels", "latent_channels",
                "ae_norm_num_groups")

    def __init__(self, autoencoder_config: dict, dab_channels: Sequence[int] = (64, 128, 256), reduction: int = 8,
                 spatial_kernel: int = 7, dropout: float = 0.3, mask_channels: int = 0, scale_factor: float = 1.0,
                 pooling: str = "avg", mask_pooling: str = "avg", mask_embed_channels: int = 8,
                 radial_channel: bool = False, dense_head: bool = False):
        super().__init__()
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
        if mask_pooling not in _MASK_POOLINGS:
            raise ValueError(f"mask_pooling must be one of {_MASK_POOLINGS}, got {mask_pooling!r}")
        from monai.networks.nets import AutoencoderKL

        missing = [k for k in self._AE_KEYS if k not in autoencoder_config]
        if missing:
            raise ValueError(f"autoencoder_config lacks {', '.join(missing)}")
        ae_cfg = {k: autoencoder_config[k] for k in self._AE_KEYS}
        ae_cfg["ae_channels"] = [int(c) for c in ae_cfg["ae_channels"]]
        n = len(ae_cfg["ae_channels"])
        att = ae_cfg["ae_attention_levels"]
        ae_cfg["ae_attention_levels"] = [bool(a) for a in (att if att is not None else [False] * n)]
        dab_channels = [int(c) for c in dab_channels]
        if not dab_channels:
            raise ValueError("PattenNet needs at least one dual attention block")
        self.config = dict(autoencoder_config=ae_cfg, dab_channels=dab_channels, reduction=int(reduction),
                           spatial_kernel=int(spatial_kernel), dropout=float(dropout), mask_channels=int(mask_channels),
                           pooling=str(pooling), mask_pooling=str(mask_pooling))
        if dense_head:
            self.config["dense_head"] = True
        if mask_pooling == "conv":
            self.config["mask_embed_channels"] = int(mask_embed_channels)
            self.config["radial_channel"] = bool(radial_channel)
        elif radial_channel:
            raise ValueError("radial_channel needs mask_pooling='conv'")
        self.ae_factor = 2 ** (n - 1)
        ae = AutoencoderKL(spatial_dims=3, in_channels=ae_cfg["in_channels"], out_channels=ae_cfg["in_channels"],
                           num_res_blocks=(int(ae_cfg["ae_num_res_blocks"]),) * n, channels=ae_cfg["ae_channels"],
                           attention_levels=ae_cfg["ae_attention_levels"], latent_channels=ae_cfg["latent_channels"],
                           norm_num_groups=ae_cfg["ae_norm_num_groups"], with_encoder_nonlocal_attn=False,
                           with_decoder_nonlocal_attn=False)
        self.encoder = ae.encoder
        self.quant_conv_mu = ae.quant_conv_mu
        del ae
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        for p in self.frozen_parameters():
            p.requires_grad_(False)
        n_mask = int(mask_channels) * (2 if mask_pooling == "avgmax" else 1)
        self.mask_stem = None
        if mask_pooling == "conv" and mask_channels:
            f, w = self.ae_factor, int(mask_embed_channels)
            self.mask_stem = nn.Sequential(nn.Conv3d(int(mask_channels) * (1 + int(bool(radial_channel))), w, 3,
                                                     padding=1),
                                           nn.SiLU(),
                                           nn.Conv3d(w, w, f, stride=f), nn.SiLU())
            n_mask = w
        blocks, c = [], ae_cfg["latent_channels"] + n_mask
        c_in = c
        for w in dab_channels:
            blocks.append(DualAttentionBlock3D(c, w, reduction, spatial_kernel))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear((c + (c_in if dense_head else 0)) * (2 if pooling == "avgmax" else 1), 1)
        self.train()

    @classmethod
    def from_neogen(cls, neogen, **kw) -> "PattenNet":
        """A PattenNet whose frozen encoder is a copy of ``neogen``'s trained autoencoder encoder."""
        net = cls(neogen.config, scale_factor=float(neogen.scale_factor), **kw)
        net.encoder.load_state_dict(copy.deepcopy(neogen.autoencoder.encoder.state_dict()))
        net.quant_conv_mu.load_state_dict(copy.deepcopy(neogen.autoencoder.quant_conv_mu.state_dict()))
        return net.to(neogen.scale_factor.device)

    def frozen_parameters(self):
        yield from self.encoder.parameters()
        yield from self.quant_conv_mu.parameters()

    def train(self, mode: bool = True) -> "PattenNet":
        super().train(mode)
        self.encoder.eval()  # frozen: always in inference mode
        self.quant_conv_mu.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen latent (B, latent_channels, D/f, H/f, W/f), no gradients."""
        c = self.config["autoencoder_config"]["in_channels"]
        if x.ndim != 5 or x.shape[1] != c:
            raise InputError(f"PattenNet expects patches shaped (B, {c}, D, H, W), got {tuple(x.shape)}.")
        if any(s % self.ae_factor for s in x.shape[2:]):
            raise InputError(f"Patch size {tuple(x.shape[2:])} is not divisible by the encoder's downsampling "
                             f"factor {self.ae_factor} on every axis.")
        with torch.no_grad():
            return self.quant_conv_mu(self.encoder(x)) * self.scale_factor

    def forward(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(PNI logit (B,), attention map (B, 1, d, h, w) at latent resolution) for patches x (B, C, D, H, W)."""
        h = self.encode(x)
        m = self.config["mask_channels"]
        if m:
            if masks is None or masks.ndim != 5 or masks.shape[1] != m or masks.shape[2:] != x.shape[2:]:
                raise InputError(f"This PattenNet needs masks shaped (B, {m}, {', '.join(map(str, x.shape[2:]))}).")
            mk = masks.to(h.dtype)
            mp = self.config.get("mask_pooling", "avg")
            if mp == "conv":
                if self.config.get("radial_channel"):
                    r = _radial_map(mk.shape[2:], mk)
                    mk = torch.cat([mk, mk * r], 1)
                h = torch.cat([h, self.mask_stem(mk)], dim=1)
            else:
                pooled = ([F.adaptive_avg_pool3d(mk, h.shape[2:])] if mp in ("avg", "avgmax") else []) + \
                         ([F.adaptive_max_pool3d(mk, h.shape[2:])] if mp in ("max", "avgmax") else [])
                h = torch.cat([h] + pooled, dim=1)
        elif masks is not None:
            raise InputError("This PattenNet takes no masks (mask_channels=0).")
        maps, h0 = [], h
        for block in self.blocks:
            h, att = block(h)
            maps.append(att)
        attention = torch.stack(maps, 0).mean(0)
        feats = [h, h0] if self.config.get("dense_head") else [h]
        feat = torch.cat([F.adaptive_avg_pool3d(f, 1).flatten(1) for f in feats], dim=1)
        if self.config.get("pooling", "avg") == "avgmax":
            feat = torch.cat([feat] + [F.adaptive_max_pool3d(f, 1).flatten(1) for f in feats], dim=1)
        logit = self.head(self.dropout(feat)).squeeze(1)
        return logit, attention

    attention_to_image = staticmethod(attention_to_image)


def build_pattennet(autoencoder_config: dict, **kw) -> PattenNet:
    """A :class:`PattenNet` with the documented defaults; keyword arguments override them."""
    return PattenNet(autoencoder_config, **kw)
