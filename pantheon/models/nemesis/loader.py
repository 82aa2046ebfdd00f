"""Loading NEMESIS checkpoints: the published ``torch.save`` format and Pantheon's safetensors.

Never executes pickled code: ``torch.load(weights_only=True)`` or safetensors. The architecture is
read from tensor shapes; what shapes cannot tell (heads, superpatch size) comes from the
checkpoint's config when present, else the paper defaults; keyword overrides win over both.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, Mapping, Tuple

import torch

from ...errors import CheckpointError
from ..checkpoints import check_state_dict as _check_state_dict
from ..checkpoints import read_safetensors, save_safetensors, torch_load_tensors
from .mae import NemesisMAE

PAPER_DEFAULTS = dict(num_heads=8, decoder_num_heads=8, superpatch_size=(128, 128, 128))
_ARCH_KEYS = ("superpatch_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_depth",
              "decoder_num_heads", "num_maegic_tokens", "ffn_dim", "dropout")


def read_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, config) from a checkpoint file, safely. Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes).")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = torch_load_tensors(path, "NEMESIS")  # one sentence of ours for every way the file can be bad
    config: dict = {}
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        state = obj["model_state_dict"]
        config = obj.get("config") or {}
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state = obj["state_dict"]
        config = obj.get("config") or {}
    else:
        state = obj
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"Checkpoint {path} holds no state dict of tensors; it is not a NEMESIS checkpoint.")
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}  # DataParallel prefix
    if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):
        config = {**config, **config["model"]}  # nested {"model": {...}} as in some training configs
    return state, dict(config) if isinstance(config, Mapping) else {}


def _read_safetensors(path: Path):
    state, meta = read_safetensors(path, model_name="NEMESIS")
    return state, meta["config"]


def infer_architecture(state: Mapping[str, torch.Tensor], path="checkpoint") -> dict:
    """Architecture arguments recoverable from tensor shapes alone."""
    try:
        linear_w = state["encoder.adaptive_agg.linear.weight"]
        embed_w = state["encoder.adaptive_agg.embed.weight"]
        pos = state["encoder.adaptive_agg.pos_embed"]
    except KeyError as exc:
        raise CheckpointError(f"{path} is not a NEMESIS checkpoint: it has no {exc.args[0]!r} tensor.") from None
    embed_dim, patch_voxels = linear_w.shape
    sub, plane = embed_w.shape
    pd = pos.shape[1]
    side = math.isqrt(plane)
    if side * side != plane or pd * plane != patch_voxels:
        raise CheckpointError(f"{path}: patch embedding shapes {tuple(linear_w.shape)} and {tuple(embed_w.shape)} "
                              "do not describe a NEMESIS patch.")

    def count_blocks(prefix):
        ids = {int(m.group(1)) for k in state for m in [re.match(rf"{prefix}\.blocks\.(\d+)\.", k)] if m}
        return max(ids) + 1 if ids else 0

    ffn = state.get("encoder.blocks.0.ffn.0.weight")
    return dict(embed_dim=int(embed_dim), patch_size=(int(pd), side, side), num_maegic_tokens=int(embed_dim // sub),
                depth=count_blocks("encoder"), decoder_depth=count_blocks("decoder"),
                ffn_dim=int(ffn.shape[0]) if ffn is not None else 1024)


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path="checkpoint") -> None:
    """Strict match: one CheckpointError naming every missing, unexpected and wrong-shaped key."""
    _check_state_dict(model, state, path, "NEMESIS")


def load_nemesis(path, **overrides) -> NemesisMAE:
    """Load a NEMESIS checkpoint into a :class:`NemesisMAE` in eval mode.

    Accepts the published format (dict with ``model_state_dict``), a bare state dict, an optional
    ``module.`` prefix, and Pantheon's ``.safetensors`` (config in the metadata).
    """
    state, config = read_checkpoint(path)
    unknown = set(overrides) - set(_ARCH_KEYS)
    if unknown:
        raise TypeError(f"unknown NEMESIS argument(s): {', '.join(sorted(unknown))}")
    args = dict(PAPER_DEFAULTS)
    args.update({k: config[k] for k in ("num_heads", "decoder_num_heads", "superpatch_size") if k in config})
    args.update(infer_architecture(state, path))
    args.update(overrides)
    try:
        model = NemesisMAE(**args)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build a NEMESIS model with {args}: {exc}") from None
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_nemesis(model: NemesisMAE, path, extra_metadata: Dict[str, str] | None = None) -> None:
    """Save weights as safetensors with the architecture config in the metadata (atomic)."""
    meta = {"config": json.dumps(model.config), "format": "pantheon-nemesis-v1", **(extra_metadata or {})}
    save_safetensors(model.state_dict(), path, meta)
