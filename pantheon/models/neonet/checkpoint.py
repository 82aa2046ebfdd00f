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
from ..checkpoints import check_state_dict, read_safetensors, save_safetensors

FORMAT = "pantheon-neonet-v1"


def component_builders():
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
    kind = _kind_of(module)
    config = dict(module.config if config is None else config)
    meta = {**(extra_metadata or {}), "format": FORMAT, "kind": kind, "config": json.dumps(config)}
    return save_safetensors(module.state_dict(), path, meta)


def read_neonet_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, metadata with ``config`` decoded) from a NeoNet safetensors file."""
    return read_safetensors(path, FORMAT, "Pantheon NeoNet")


def check_component_state(model: nn.Module, state: Mapping[str, torch.Tensor], path="checkpoint",
                          kind: str = "NeoNet") -> None:
    """Strict match: raise one CheckpointError naming every missing, unexpected and wrong-shaped key."""
    check_state_dict(model, state, path, kind)


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
        model = component_builders()[saved](dict(meta["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build a {saved} from its stored config: {exc}") from None
    check_component_state(model, state, path, saved)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
