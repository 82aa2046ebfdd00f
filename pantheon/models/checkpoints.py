"""Checkpoint plumbing shared by every model: safetensors files with a JSON config in the metadata,
written atomically, read without executing code, and a strict key check whose one error names
every missing, unexpected and wrong-shaped tensor. ``.pt`` files (``torch.save``) are read with
``weights_only=True`` through :func:`torch_load_tensors`, whose errors are our own sentences."""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError
from ..io.atomic import atomic_path


def save_safetensors(state: Mapping[str, torch.Tensor], path, metadata: Dict[str, str]) -> Path:
    """Write tensors + string metadata to ``path`` atomically (:func:`pantheon.io.atomic.atomic_path`)."""
    from safetensors.torch import save_file
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata))
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


# ---------------------------------------------------------------------------- torch.save files
# torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, a bare pickle stream.
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK", b"\x80"
# What torch says when weights_only=True refuses a file: it advises weights_only=False, i.e. running
# the file's code. For a corrupted or hostile file that is the wrong advice, so no user may see it.
_TORCH_ADVICE = re.compile(r"weights_only|Weights only load failed|torch\.load|pytorch\.org", re.I)


def torch_load_tensors(path, model_name: str = "Pantheon") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one CheckpointError naming the file."""
    path = check_torch_file(path)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before failing on them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad bytes (KeyError, RuntimeError...)
        raise CheckpointError(describe_torch_load_error(path, exc, model_name)) from None


def check_torch_file(path) -> Path:
    """``path`` if it exists and starts like a ``torch.save`` file (reads 4 bytes), else one CheckpointError:
    a cheap first check for callers that hand the file to another loader."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"Checkpoint {path} cannot be read ({exc.strerror or exc}).") from None
    if not head:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes).")
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise CheckpointError(f"Checkpoint {path} is not a PyTorch checkpoint: its bytes are neither a zip archive "
                              "nor a pickle, so it is corrupted or another kind of file.")
    return path


def describe_torch_load_error(path, exc: BaseException, model_name: str = "Pantheon") -> str:
    """One sentence of ours for an exception of ``torch.load(weights_only=True)`` on ``path``."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"Checkpoint {path} holds a Python object ({found.group(1)}) besides tensors and plain settings; "
                f"Pantheon never runs code from a checkpoint file, so save the {model_name} weights as a plain "
                "state dict of tensors.")
    if isinstance(exc, pickle.UnpicklingError) or "WeightsUnpickler" in text:
        return (f"Checkpoint {path} is corrupted or not a {model_name} checkpoint: its contents cannot be "
                "decoded as tensors and settings.")
    return f"Checkpoint {path} is truncated or corrupted and cannot be read ({_first_clause(exc)})."


def resume_error(ckpt_path, exc: BaseException) -> CheckpointError:
    """The error for a training checkpoint that cannot be resumed: why, and how to start afresh. A damaged
    checkpoint must never be silently trained over, so training stops with this instead."""
    reason = str(exc) if isinstance(exc, CheckpointError) else (
        f"it does not hold what a resumable run saves ({_first_clause(exc)})")
    return CheckpointError(f"Cannot resume from {ckpt_path}: {reason.rstrip('.')}; delete it, or rerun with "
                           "--restart to start afresh.")


def _first_clause(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [""])[0]
    line = line.split(". ")[0].rstrip(".")  # torch appends paragraphs of advice after the first sentence
    if not line or _TORCH_ADVICE.search(line):
        return type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def without_torch_advice(message: str) -> str:
    """``message`` unchanged, unless it carries PyTorch's ``weights_only`` advice (a loader that passed
    torch's text on): then our own sentence for the checkpoint it names. The command line and the
    batch engine pass every error through this before a user sees it."""
    if not _TORCH_ADVICE.search(message):
        return message
    named = re.match(r"(?:Checkpoint )?(.+?) (?:contains|is|holds|cannot) ", message)
    if named and Path(named.group(1)).is_file():
        try:  # read it again to tell a corrupted file from one holding Python objects
            torch_load_tensors(named.group(1))
        except CheckpointError as exc:
            return str(exc)
    cut = re.split(r"\s*\(?\s*(?:Weights only load failed|WeightsUnpickler)", message, maxsplit=1)[0].rstrip(" ;:,(")
    if cut and not _TORCH_ADVICE.search(cut):
        return cut + ("" if cut.endswith(".") else ".")
    return "A checkpoint file could not be read: it is corrupted or holds more than tensors and plain settings."
