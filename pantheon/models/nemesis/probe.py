"""The NEMESIS paper's downstream probe: BTCV organ presence from frozen-encoder tokens.

Per 128^3 superpatch, 8 binary labels (organ present when it covers more than 100 voxels);
probe = mean of encoder tokens -> LayerNorm -> Linear(E -> 8), trained with BCE-with-logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# (name, BTCV label index, RGB colour, SNOMED CT code, code meaning) in the paper's column order.
BTCV_ORGANS = [
    ("aorta", 8, (0.84, 0.18, 0.14), "15825003", "Aorta"),
    ("gallbladder", 4, (0.55, 0.71, 0.24), "28231008", "Gallbladder"),
    ("spleen", 1, (0.62, 0.33, 0.60), "78961009", "Spleen"),
    ("left kidney", 3, (0.73, 0.50, 0.36), "64033007", "Left kidney"),
    ("right kidney", 2, (0.85, 0.62, 0.46), "9846003", "Right kidney"),
    ("liver", 6, (0.87, 0.51, 0.28), "10200004", "Liver"),
    ("stomach", 7, (0.85, 0.73, 0.55), "69695003", "Stomach"),
    ("pancreas", 11, (0.97, 0.83, 0.50), "15776009", "Pancreas"),
]
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
