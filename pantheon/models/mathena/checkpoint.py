"""Saving and loading MATHENA models (MATHE detector, HENA) as safetensors.

The architecture config is stored as JSON in the safetensors metadata (``config``) together with
the model kind (``kind``: "MATHEDetector" or "HENA"); loading rebuilds the model from it and
checks the state dict strictly, raising :class:`pantheon.errors.CheckpointError` that names every
missing, unexpected and wrong-shaped key. Nothing pickled is ever read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from ...errors import CheckpointError
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
    from safetensors.torch import save_file
    path = Path(path)
    meta = {"format": FORMAT, "kind": _kind_of(model), "config": json.dumps(model.config),
            **(extra_metadata or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)


def read_mathena(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, metadata with ``config`` parsed) of a MATHENA safetensors file."""
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
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupted and cannot be read ({exc}).") from None
    try:
        meta["config"] = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"Checkpoint {path} has an unreadable config in its metadata.") from None
    return state, meta


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path="checkpoint") -> None:
    """Strict match: one CheckpointError naming every missing, unexpected and wrong-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
                   for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        def fmt(name, items):
            shown = ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
            return f"{len(items)} {name}: {shown}"
        parts = [fmt(n, i) for n, i in (("missing", missing), ("unexpected", unexpected),
                                         ("wrong-shaped", wrong)) if i]
        raise CheckpointError(f"{path} does not match the {type(model).__name__} architecture: "
                              + "; ".join(parts) + ".")


def load_mathena(path, kind: Optional[str] = None, **overrides) -> Model:
    """Rebuild and load a model saved by :func:`save_mathena`, in eval mode.

    ``kind`` ("MATHEDetector" / "HENA") defaults to the file's; a mismatch raises CheckpointError.
    ``overrides`` replace config entries (e.g. an explicit architecture to check against).
    """
    state, meta = read_mathena(path)
    file_kind = meta.get("kind")
    kind = kind or file_kind
    if kind not in KINDS:
        raise CheckpointError(f"{path} is not a MATHENA checkpoint (model kind {file_kind!r}).")
    if file_kind is not None and file_kind != kind:
        raise CheckpointError(f"{path} holds a {file_kind} checkpoint, not a {kind}.")
    config = {**meta["config"], **overrides}
    try:
        model = KINDS[kind](**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build a {kind} with config {config}: {exc}") from None
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.eval()
