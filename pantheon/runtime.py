"""What every model's pipelines share at run time: the device, the precision, the weights a
user names (a file or a model card), and the identity a loaded model is cached under.

torch is imported inside the functions, so the batch parent process and the command line can
import this module (to resolve a card, say) without loading PyTorch.
"""

from __future__ import annotations

import os
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Tuple

from .errors import InvalidParameter, PantheonError

#: every precision a pipeline accepts; int8 is CPU-only and NEMESIS-only (dynamic quantisation)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def pick_device(device: Optional[str] = "auto"):
    """``auto`` (the first GPU when CUDA is usable, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps`` as a ``torch.device``; anything unusable raises PantheonError with one sentence saying why."""
    import torch
    name = "auto" if device is None else str(device).strip().lower()
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise PantheonError("Apple's GPU (mps) was requested but PyTorch cannot use it here; use cpu.")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise PantheonError(f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N (N = GPU number, from 0).")
    if not torch.cuda.is_available():
        from .worker.requirements import torch_report
        why = (torch_report().get("cuda_error") or "No CUDA device is available to PyTorch.").rstrip(".")
        what = "CUDA" if name == "cuda" else f"GPU {name}"
        raise PantheonError(f"{what} was requested but {why[0].lower()}{why[1:]}; use cpu instead.")
    if match.group(1) is None:
        return torch.device("cuda")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise PantheonError(f"GPU {name} does not exist: PyTorch sees {count} CUDA device"
                            f"{'' if count == 1 else 's'} here ({have}).")
    return torch.device("cuda", index)


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a scheduler may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX); without them CPU
    autocast to bf16 is emulated and several times slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_for(device, precision: Optional[str]):
    """The autocast context for ``precision``; fp32 and int8 (quantised into the model) need none."""
    if precision in (None, "fp32", "float32", "int8"):
        return nullcontext()
    import torch
    dtypes = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if precision not in dtypes:
        raise InvalidParameter(f"The precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


def resolve_weights_argument(weights: Optional[str], default_card: str, allow_download: bool = False,
                             trust_unverified: bool = False, progress=None, cancel=None) -> Tuple[Path, Any]:
    """``weights`` is a file path or a model-card id (default ``default_card``) -> (path, card or None)."""
    from .registry import get_card, resolve_weights
    if weights and Path(weights).expanduser().is_file():
        return Path(weights).expanduser().resolve(), None
    if (weights and any(sep in weights for sep in ("/", "\\"))
            or (weights or "").endswith((".pt", ".pth", ".safetensors"))):
        from .errors import CheckpointError
        raise CheckpointError(f"Weights file {weights} does not exist.")
    card = get_card(weights or default_card)
    return resolve_weights(card, allow_download=allow_download, trust_unverified=trust_unverified,
                           progress=progress, cancel=cancel), card


def weights_identity(ref: Optional[str]) -> Tuple[str, Optional[tuple]]:
    """What a weights argument is, for a cache key: a card id as is; a file by real path, size and
    modification time, so a file replaced between two requests is loaded again."""
    if not ref:
        return ("", None)
    path = os.path.expanduser(str(ref))
    if os.path.isfile(path):
        st = os.stat(path)
        return (os.path.realpath(path), (st.st_size, st.st_mtime_ns))
    return (str(ref), None)


def parameter_bytes(*modules) -> int:
    """Bytes held by the parameters of ``modules`` (None entries skipped): a loaded model's cache weight."""
    return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())


def cached(cache, key: Hashable, load: Callable[[], Any], size: Callable[[Any], int]) -> Tuple[Any, bool]:
    """(value, hit): ``cache.get(key)``, or ``load()`` put under ``key`` weighing ``size(value)`` bytes.
    ``cache`` is the worker's LRU (:class:`pantheon.worker.server.LRUCache`) or anything with get/put."""
    value = cache.get(key)
    if value is not None:
        return value, True
    value = load()
    cache.put(key, value, size(value))
    return value, False
