"""Checkpoint plumbing shared by every model: safetensors files with a JSON config in the metadata,
written atomically, read without executing code, and a strict key check whose one error names
every missing, unexpected and wrong-shaped tensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError


def save_safetensors(state: Mapping[str, torch.Tensor], path, metadata: Dict[str, str]) -> Path:
    """Write tensors + string metadata to ``path`` atomically (temporary name, then rename)."""
    from safetensors.torch import save_file
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata=dict(metadata))
    tmp.replace(path)
    return path


def read_safetensors(path, expected_format: Optional[str] = None, model_name: str = "Pantheon"
                     ) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, metadata with ``config`` decoded to a dict) or one CheckpointError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes).")
    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint {path} is truncated, corrupted or not a safetensors file and cannot "
                              f"be read ({exc}).") from None
    if expected_format is not None and meta.get("format") != expected_format:
        raise CheckpointError(f"Checkpoint {path} is not a {model_name} checkpoint "
                              f"(format {meta.get('format')!r}, expected {expected_format!r}).")
    try:
        meta["config"] = json.loads(meta.get("config") or "{}")
    except json.JSONDecodeError:
        raise CheckpointError(f"Checkpoint {path} has an unreadable config in its metadata.") from None
    if not isinstance(meta["config"], Mapping):
        raise CheckpointError(f"Checkpoint {path} has a config that is not a mapping.")
    return state, meta


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path="checkpoint",
                     model_name: str = "model") -> None:
    """Strict match: raise one CheckpointError naming every missing, unexpected and wrong-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
                   for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if not (missing or unexpected or wrong):
        return

    def fmt(name, items):
        if not items:
            return None
        shown = ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
        return f"{len(items)} {name}: {shown}"
    parts = [p for p in (fmt("missing", missing), fmt("unexpected", unexpected), fmt("wrong-shaped", wrong)) if p]
    raise CheckpointError(f"{path} does not match the {model_name} architecture: " + "; ".join(parts) + ".")
