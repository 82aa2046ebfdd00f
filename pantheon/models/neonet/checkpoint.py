"""Saving and loading NeoNet components (NeoSeg, NeoGen, PattenNet) as safetensors.

The file holds only tensors; the component kind and its constructor config travel as JSON in the
safetensors metadata, so loading never executes pickled code. Loading is strict: one
:class:`pantheon.errors.CheckpointError` names every missing, unexpected and wrong-shaped key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ...errors import CheckpointError

FORMAT = "pantheon-neonet-v1"


def _builders():
    from .neogen import NeoGen
    from .neoseg import NeoSeg
    from .pattennet import PattenNet
    return {"neoseg": lambda c: NeoSeg(**c), "neogen": lambda c: NeoGen(**c),
            "pattennet": lambda c: PattenNet(**c)}


KINDS = ("neoseg", "neogen", "pattennet")


def _kind_of(module: nn.Module) -> str:
    kind = getattr(module, "kind", None)
    if kind not in KINDS:
        raise TypeError(f"{type(module).__name__} is not a NeoNet component ({', '.join(KINDS)})")
    return kind


def save_neonet_component(module: nn.Module, path, config: Optional[dict] = None,
                          extra_metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``module``'s state dict to ``path`` (.safetensors), atomically, with its kind and
    constructor ``config`` (default ``module.config``) in the metadata. Returns the path."""
    from safetensors.torch import save_file
    kind = _kind_of(module)
    config = dict(module.config if config is None else config)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    meta = {**(extra_metadata or {}), "format": FORMAT, "kind": kind, "config": json.dumps(config)}
    state = {k: v.detach().contiguous().cpu().clone() for k, v in module.state_dict().items()}
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_neonet_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, metadata with ``config`` decoded) from a NeoNet safetensors file."""
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
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"Checkpoint {path} is not a Pantheon NeoNet checkpoint "
                              f"(format {meta.get('format')!r}, expected {FORMAT!r}).")
    try:
        meta["config"] = json.loads(meta.get("config", ""))
    except json.JSONDecodeError:
        raise CheckpointError(f"Checkpoint {path} has an unreadable config in its metadata.") from None
    if not isinstance(meta["config"], Mapping):
        raise CheckpointError(f"Checkpoint {path} has a config that is not a mapping.")
    return state, meta


def check_component_state(model: nn.Module, state: Mapping[str, torch.Tensor], path="checkpoint",
                          kind: str = "NeoNet") -> None:
    """Strict match: raise one CheckpointError naming every missing, unexpected and wrong-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
                   for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        def fmt(name, items):
            if not items:
                return None
            shown = ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
            return f"{len(items)} {name}: {shown}"
        parts = [p for p in (fmt("missing", missing), fmt("unexpected", unexpected), fmt("wrong-shaped", wrong)) if p]
        raise CheckpointError(f"{path} does not match the {kind} architecture: " + "; ".join(parts) + ".")


def load_neonet_component(path, kind: Optional[str] = None, map_location="cpu") -> nn.Module:
    """Rebuild the component saved at ``path`` from its metadata config, load its weights strictly and
    return it in eval mode. ``kind`` ("neoseg", "neogen", "pattennet"), when given, must match the file."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    state, meta = read_neonet_checkpoint(path)
    saved = meta.get("kind")
    if saved not in KINDS:
        raise CheckpointError(f"Checkpoint {path} names an unknown component kind {saved!r}.")
    if kind is not None and saved != kind:
        raise CheckpointError(f"Checkpoint {path} holds a {saved} component, not a {kind}.")
    try:
        model = _builders()[saved](dict(meta["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build a {saved} from its stored config: {exc}") from None
    check_component_state(model, state, path, saved)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
