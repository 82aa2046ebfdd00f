"""``SelectiveScan``: a parameter-free module that fixes the backend for SS2D / VSS blocks."""

from __future__ import annotations

import torch
from torch import nn

from .cross_scan import cross_merge, cross_scan
from .selective_scan import BACKENDS, selective_scan_fn

__all__ = ["SelectiveScan"]


class SelectiveScan(nn.Module):
    """Calls :func:`selective_scan_fn` with a fixed ``backend`` / ``chunk_size``.

    ``forward`` takes the mamba-ssm arguments. The scan always runs in float32 (float64 for
    float64 inputs) with autocast disabled, as VMamba and mamba-ssm do; the output has u's dtype.
    The static helpers :meth:`cross_scan` / :meth:`cross_merge` are the SS2D direction helpers.
    """

    cross_scan = staticmethod(cross_scan)
    cross_merge = staticmethod(cross_merge)

    def __init__(self, backend: str = "auto", chunk_size: int | None = None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.chunk_size = chunk_size

    def forward(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False):
        with torch.autocast(device_type=u.device.type, enabled=False):
            return selective_scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                     delta_softplus=delta_softplus, return_last_state=return_last_state,
                                     backend=self.backend, chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, chunk_size={self.chunk_size}"
