"""Saving and loading MATHENA models (MATHE detector, HENA) as safetensors.

The architecture config is stored as JSON in the safetensors metadata (``config``) together with
the model kind (``kind``: "MATHEDetector" or "HENA"); loading rebuilds the model from it and
checks the state dict strictly, raising :class:`pantheon.errors.CheckpointError` that names every
missing, unexpected and wrong-shaped key. Nothing pickled is ever read.
"""

from __future__ import annotations

import json
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from ...errors import CheckpointError
from ..checkpoints import check_state_dict as _check_state_dict
from ..checkpoints import read_safetensors, save_safetensors
from .detector import MATHEDetector
from .hena import HENA

FORMAT = "pantheon-mathena-v1"
KINDS = {"MATHEDetector": MATHEDetector, "HENA": HENA}
Model = Union[MATHEDetector, HENA]


def _kind_of(model) -> str:
    for name, cls in KINDS.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"not a MATHENA model: {type(model).__name__}")


def save_mathena(model: Model, path, extra_metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``model``'s weights to ``path`` (safetensors, config and kind in metadata, atomic)."""
    meta = {"format": FORMAT, "kind": _kind_of(model), "config": json.dumps(model.config),
            **(extra_metadata or {})}
    save_safetensors(model.state_dict(), path, meta)


def read_mathena(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, metadata with ``config`` parsed) of a MATHENA safetensors file."""
    return read_safetensors(path, model_name="MATHENA")


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path="checkpoint") -> None:
    """Strict match: one CheckpointError naming every missing, unexpected and wrong-shaped key."""
    _check_state_dict(model, state, path, "MATHENA")


def load_mathena(path, kind: Optional[str] = None, **overrides) -> Model:
    """Rebuild and load a model saved by :func:`save_mathena`, in eval mode.

    ``kind`` ("MATHEDetector" / "HENA") defaults to the file's; a mismatch raises CheckpointError.
    ``overrides`` replace config entries (e.g. an explicit architecture to check against).
    HENA files without ``ad_branch`` in their config predate that option and load with
    ``ad_branch=False`` (their original layout).
    """
    state, meta = read_mathena(path)
    file_kind = meta.get("kind")
    kind = kind or file_kind
    if kind not in KINDS:
        raise CheckpointError(f"{path} is not a MATHENA checkpoint (model kind {file_kind!r}).")
    if file_kind is not None and file_kind != kind:
        raise CheckpointError(f"{path} holds a {file_kind} checkpoint, not a {kind}.")
    config = dict(meta["config"])
    if kind == "HENA" and "ad_branch" not in config:  # written before HENA had an AD decoder branch
        config["ad_branch"] = False
    config.update(overrides)
    try:
        model = KINDS[kind](**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build a {kind} with config {config}: {exc}") from None
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.eval()
