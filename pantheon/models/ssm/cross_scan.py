"""Four-directional cross scan / merge of VMamba's SS2D (Liu et al., arXiv 2401.10166; as in
``SS2D.forward_corev0`` of Mamba-UNet's ``code/networks/mamba_sys.py``, identical to VMamba v0).

Directions, in this order: 0 row-major (left to right, top to bottom), 1 column-major (top to
bottom, left to right), 2 row-major reversed, 3 column-major reversed.
"""

from __future__ import annotations

import torch

__all__ = ["cross_scan", "cross_merge"]


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): the four scan orders of every image."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    rows = x.reshape(b, c, h * w)
    cols = x.transpose(2, 3).reshape(b, c, h * w)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """(B, 4, C, L) -> (B, C, H, W): undo each direction's order and sum the four.

    ``y`` may also be given as (B, 4, C, H, W) (then H and W come from it); otherwise pass
    ``height`` and ``width`` (one of them is enough), with H * W == L.
    """
    if y.dim() == 5:
        height, width = y.shape[-2:]
        y = y.flatten(-2)
    if y.dim() != 4 or y.shape[1] != 4:
        raise ValueError(f"cross_merge expects (B, 4, C, L), got shape {tuple(y.shape)}")
    b, _, c, length = y.shape
    if height is None and width is None:
        raise ValueError("cross_merge needs height or width for an (B, 4, C, L) input")
    if height is None:
        height = length // width
    if width is None:
        width = length // height
    if height * width != length:
        raise ValueError(f"height {height} x width {width} != sequence length {length}")
    rows = y[:, 0] + y[:, 2].flip(-1)                      # row-major order
    cols = y[:, 1] + y[:, 3].flip(-1)                      # column-major order
    cols = cols.view(b, c, width, height).transpose(2, 3)  # back to (B, C, H, W)
    return rows.view(b, c, height, width) + cols
