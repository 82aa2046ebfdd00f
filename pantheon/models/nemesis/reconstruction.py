"""What a masked reconstruction is shown as, and how good it is (shared by the pipeline and training).

MAE papers (He et al. 2022 and NEMESIS's own figures) show the reconstruction with the visible
patches pasted back from the input: the loss trains only the masked patches, so the decoder's
output on visible patches is unconstrained and looks like noise. Metrics are on the model's
[0, 1] window scale (HU [-175, 250]), as in the paper, with the prediction clipped to that range
(the target lives there, the display cannot show anything outside it):

- ``psnr_db`` / ``ssim``: the whole superpatch as displayed (visible patches pasted);
- ``psnr_masked_db`` / ``ssim_masked``: only the voxels the encoder never saw;
- ``psnr_raw_db``: the paper's formula on the raw decoder output (every patch predicted), which
  is what the reference logs; low when the loss is masked-only, because visible patches are untrained.

PSNR and the SSIM map come from MONAI (``PSNRMetric``, ``compute_ssim_and_cs``; Gaussian window
11, sigma 1.5, as ``SSIMMetric``); masked SSIM averages the SSIM map over windows centred on
masked voxels.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

SSIM_WIN = 11
SSIM_SIGMA = 1.5


def voxel_mask(token_mask: torch.Tensor, grid, patch) -> torch.Tensor:
    """(B, N) token mask (True = masked) -> (B, 1, D, H, W) voxel mask."""
    B = token_mask.shape[0]
    m = token_mask.reshape(B, 1, *grid).float()
    for axis, p in enumerate(patch):
        m = m.repeat_interleave(int(p), dim=2 + axis)
    return m > 0.5


def paste_visible(prediction: torch.Tensor, model_input: torch.Tensor, vmask: torch.Tensor) -> torch.Tensor:
    """The displayed reconstruction: the prediction on masked voxels, the model's input elsewhere,
    clipped to [0, 1] (the window: noise can push the input out of it, and the display cannot show it)."""
    return torch.where(vmask, prediction.float(), model_input.float()).clamp(0, 1)


def _psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-item PSNR (data range 1) of (B, 1, n) voxel lists or (B, 1, D, H, W) volumes."""
    from monai.metrics import PSNRMetric
    return PSNRMetric(max_val=1.0, reduction="none")(pred.float(), target.float()).reshape(-1)


def _ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from monai.metrics.regression import compute_ssim_and_cs
    ssim, _ = compute_ssim_and_cs(pred.float(), target.float(), spatial_dims=3, kernel_size=[SSIM_WIN] * 3,
                                  kernel_sigma=[SSIM_SIGMA] * 3, data_range=1.0)
    return ssim  # (B, 1, D-10, H-10, W-10): the window centred on voxel i+5


def reconstruction_metrics(prediction: torch.Tensor, target: torch.Tensor, model_input: torch.Tensor,
                           token_mask: torch.Tensor, grid, patch) -> Dict[str, np.ndarray]:
    """Per-superpatch metrics (arrays of length B) of a masked reconstruction against the clean ``target``.

    ``prediction`` is the raw decoder output, ``model_input`` what the encoder saw (target + noise),
    all (B, 1, D, H, W) on the [0, 1] window scale. Keys as in the module docstring.
    """
    target = target.float()
    vmask = voxel_mask(token_mask.cpu(), grid, patch).to(target.device)
    shown = paste_visible(prediction, model_input, vmask)
    B = target.shape[0]
    out = {"psnr_db": _psnr(shown, target), "psnr_raw_db": _psnr(prediction.float(), target)}
    ssim = _ssim_map(shown, target)
    out["ssim"] = ssim.reshape(B, -1).mean(1)
    h = SSIM_WIN // 2
    centre_masked = vmask[:, :, h:-h, h:-h, h:-h]
    masked_psnr, masked_ssim = [], []
    for b in range(B):
        m = vmask[b]
        if m.any():
            masked_psnr.append(_psnr(shown[b][m].reshape(1, 1, -1), target[b][m].reshape(1, 1, -1))[0])
        else:
            masked_psnr.append(torch.tensor(float("nan")))
        cm = centre_masked[b]
        masked_ssim.append(ssim[b][cm].mean() if cm.any() else torch.tensor(float("nan")))
    out["psnr_masked_db"] = torch.stack(masked_psnr)
    out["ssim_masked"] = torch.stack(masked_ssim)
    return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in out.items()}
