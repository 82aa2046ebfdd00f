"""The NEMESIS paper's downstream probe: BTCV organ presence from frozen-encoder tokens.

Per 128^3 superpatch, 8 binary labels (organ present when it covers more than 100 voxels);
probe = mean of encoder tokens -> LayerNorm -> Linear(E -> 8), trained with BCE-with-logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...anatomy import BTCV_ORGANS  # noqa: E402  (re-exported)

ORGAN_NAMES = [o[0] for o in BTCV_ORGANS]


class OrganProbe(nn.Module):
    """LayerNorm + Linear on the mean encoder token -> one logit per organ."""

    def __init__(self, embed_dim: int, num_organs: int = len(BTCV_ORGANS)):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.linear = nn.Linear(embed_dim, num_organs)

    def forward(self, tokens_or_mean: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, E) or already-pooled (B, E) -> logits (B, organs)."""
        pooled = tokens_or_mean.mean(1) if tokens_or_mean.ndim == 3 else tokens_or_mean
        return self.linear(self.norm(pooled))
