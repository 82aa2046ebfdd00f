"""NeoSeg: the 3D liver/tumour segmenter that feeds NeoNet's Tumor-Localized ROI Crop (TLCR).

Paper: NeoNet (arXiv 2603.29449) names NeoSeg and TLCR but not the network. The group's FOSCU
paper (arXiv 2603.29343) trains an "enhanced 3D U-Net" for hepatic segmentation, so the default
here is MONAI's residual 3D ``UNet`` (``monai.networks.nets.UNet``) with instance norm, trained
with Dice+CE and run with sliding-window inference. The network choice and every size below are
**assumptions** (the paper gives neither the network nor its training; see ``pantheon.models.neonet``).

Classes, in channel order: 0 background, 1 liver, 2 tumour (cholangiocarcinoma).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from ...errors import InputError

NEOSEG_CLASSES = ("background", "liver", "tumour")


def _ints(v, n=None) -> Tuple[int, ...]:
    t = (int(v),) * (n or 1) if isinstance(v, (int, float)) else tuple(int(x) for x in v)
    if n is not None and len(t) != n:
        raise ValueError(f"expected {n} values, got {v!r}")
    return t


class NeoSeg(nn.Module):
    """MONAI residual 3D U-Net with a 3-class softmax head (background / liver / tumour).

    Args:
        in_channels: image channels (1: T1 hepatobiliary-phase MRI).
        num_classes: output classes; 3 = background, liver, tumour.
        channels: feature widths per level. Assumption (not in the paper): ``(16, 32, 64, 128, 256)``,
            the MONAI 3D U-Net tutorial default.
        strides: downsampling strides between levels (one fewer than ``channels``). Assumption: all 2.
        num_res_units: residual units per block. Assumption: 2.
        norm: normalisation layer. Assumption: ``"INSTANCE"``.
        dropout: dropout probability. Assumption: 0.0.
    """

    kind = "neoseg"

    def __init__(self, in_channels: int = 1, num_classes: int = 3,
                 channels: Sequence[int] = (16, 32, 64, 128, 256), strides: Sequence[int] = (2, 2, 2, 2),
                 num_res_units: int = 2, norm: str = "INSTANCE", dropout: float = 0.0):
        super().__init__()
        from monai.networks.nets import UNet

        channels, strides = _ints(channels), _ints(strides)
        if len(strides) != len(channels) - 1:
            raise ValueError(f"NeoSeg needs len(strides) == len(channels) - 1, got {strides} for {channels}")
        self.config = dict(in_channels=int(in_channels), num_classes=int(num_classes), channels=list(channels),
                           strides=list(strides), num_res_units=int(num_res_units), norm=str(norm),
                           dropout=float(dropout))
        self.net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, channels=channels,
                        strides=strides, num_res_units=num_res_units, norm=norm, dropout=dropout)

    @property
    def downsampling_factor(self) -> int:
        """Every spatial size fed to the network must be a multiple of this."""
        return int(math.prod(self.config["strides"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, D, H, W) for x (B, in_channels, D, H, W)."""
        return self.net(x)

    @torch.no_grad()
    def predict(self, volume: torch.Tensor, roi_size: Sequence[int] = (96, 96, 48), sw_batch_size: int = 1,
                overlap: float = 0.25, mode: str = "gaussian") -> torch.Tensor:
        """Class probabilities (B, num_classes, D, H, W) for a whole volume via sliding windows.

        ``volume`` may be (D, H, W), (C, D, H, W) or (B, C, D, H, W). Windows of ``roi_size`` (each a
        multiple of :attr:`downsampling_factor`; the default 96x96x48 is the TLCR crop assumption) are
        blended with ``mode`` weights; the softmax is taken after blending, so voxels sum to 1.
        """
        from monai.inferers import sliding_window_inference

        if not torch.is_tensor(volume):
            volume = torch.as_tensor(volume)
        if volume.ndim == 3:
            volume = volume[None, None]
        elif volume.ndim == 4:
            volume = volume[None]
        if volume.ndim != 5:
            raise InputError(f"NeoSeg expects a 3D volume, got an array with shape {tuple(volume.shape)}.")
        if volume.shape[1] != self.config["in_channels"]:
            raise InputError(f"NeoSeg expects {self.config['in_channels']} image channel(s), "
                             f"got {volume.shape[1]}.")
        if not torch.isfinite(volume).all():
            raise InputError("The volume contains NaN or infinite values.")
        roi = _ints(roi_size, 3)
        f = self.downsampling_factor
        if any(r % f for r in roi):
            raise ValueError(f"roi_size {roi} must be a multiple of the U-Net downsampling factor {f} on every axis.")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        param = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            logits = sliding_window_inference(volume.to(param.device, param.dtype), roi, int(sw_batch_size),
                                              self.net, overlap=overlap, mode=mode)
        finally:
            self.train(was_training)
        return torch.softmax(torch.as_tensor(logits), dim=1)


def build_neoseg(**kw) -> NeoSeg:
    """A :class:`NeoSeg` with the documented defaults; keyword arguments override them."""
    return NeoSeg(**kw)
