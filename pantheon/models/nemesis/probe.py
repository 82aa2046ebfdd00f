"""The NEMESIS paper's downstream probe: BTCV organ presence from frozen-encoder tokens.

Per 128^3 superpatch, 8 binary labels (organ present when it covers more than 100 voxels);
probe = mean of encoder tokens -> LayerNorm -> Linear(E -> 8), trained with BCE-with-logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...anatomy import BTCV_ORGANS  # noqa: E402  (re-exported)
from ...errors import CheckpointError
from ..checkpoints import check_state_dict, read_safetensors, save_safetensors

ORGAN_NAMES = [o[0] for o in BTCV_ORGANS]
#: the CT the NEMESIS encoder was pretrained on: HU clipped to this window, RAS-canonical axes
HU_WINDOW = (-175.0, 250.0)
DEFAULT_ORIENTATION = "RAS"
PROBE_FORMAT = "pantheon-nemesis-probe-v1"


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


def save_probe(probe: OrganProbe, path, encoder_sha256: str, window: Sequence[float] = HU_WINDOW,
               orientation: str = DEFAULT_ORIENTATION, metrics: Optional[dict] = None) -> Path:
    """Probe weights as safetensors (organs, window and encoder checksum in the metadata), atomically."""
    meta = {"format": PROBE_FORMAT, "organs": json.dumps([o[0] for o in BTCV_ORGANS]),
            "btcv_labels": json.dumps([o[1] for o in BTCV_ORGANS]), "window": json.dumps(list(window)),
            "orientation": orientation, "encoder_sha256": encoder_sha256,
            "embed_dim": str(probe.linear.in_features), "metrics": json.dumps(metrics or {})}
    return save_safetensors(probe.state_dict(), path, meta)


def load_probe(path, encoder_sha256: Optional[str] = None) -> Tuple[OrganProbe, dict]:
    """Load probe weights (never executing code); refuse a probe trained on another encoder when its
    checksum is given."""
    state, meta = read_safetensors(path, PROBE_FORMAT, "NEMESIS organ probe")
    if "linear.weight" not in state:
        raise CheckpointError(f"{path} is not a NEMESIS organ probe (it has no linear.weight).")
    if encoder_sha256 and meta.get("encoder_sha256") and meta["encoder_sha256"] != encoder_sha256:
        raise CheckpointError(f"Probe {path} was trained on a different NEMESIS encoder "
                              f"(sha256 {meta['encoder_sha256'][:12]}…, loaded {encoder_sha256[:12]}…).")
    probe = OrganProbe(state["linear.weight"].shape[1], state["linear.weight"].shape[0])
    check_state_dict(probe, state, path, "NEMESIS organ probe")
    probe.load_state_dict(state)
    return probe.eval(), meta
