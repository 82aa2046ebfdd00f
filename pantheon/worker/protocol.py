"""Wire format shared by the worker and its client (stdlib only, Python 3.9 syntax).

One JSON object per line (UTF-8, ``\\n``-terminated) on the worker's stdin (requests) and on a
private duplicate of its original stdout (answers). See ``docs/worker-protocol.md``.
"""

from __future__ import annotations

import json
from typing import Any, Dict

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 1 << 20  # a request line longer than this is refused with a "protocol" error

# Error kinds (WorkerError.kind / error["kind"]).
ERROR_KINDS = ("input", "checkpoint", "cancelled", "crashed", "protocol", "version", "internal", "timeout")

# Environment variable that enables the "system.*" test pipelines in a worker.
TEST_PIPELINES_ENV = "PANTHEON_WORKER_TEST_PIPELINES"


def encode(message: Dict[str, Any]) -> bytes:
    """dict -> one protocol line (bytes, newline-terminated); non-finite floats become null."""
    return (json.dumps(message, allow_nan=False, separators=(",", ":"), default=_default) + "\n").encode("utf-8")


def _default(value: Any) -> Any:
    for attr in ("tolist", "item"):  # numpy scalars/arrays, without importing numpy here
        if hasattr(value, attr):
            return getattr(value, attr)()
    return str(value)


def decode(line: bytes) -> Dict[str, Any]:
    """bytes -> dict; raises ValueError with a readable reason."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError("request is not UTF-8: %s" % exc)
    except json.JSONDecodeError as exc:
        raise ValueError("request is not valid JSON: %s" % exc)
    if not isinstance(obj, dict):
        raise ValueError("request must be a JSON object, got %s" % type(obj).__name__)
    return obj


def error_kind_for(exc: BaseException) -> str:
    """Map an exception to a protocol error kind without importing the pantheon error module
    eagerly (it is stdlib-only, but keep this function cheap)."""
    from ..errors import Cancelled, CheckpointError, InputError, RegistryError
    if isinstance(exc, Cancelled):
        return "cancelled"
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, (CheckpointError, RegistryError)):
        return "checkpoint"
    from ..errors import PantheonError
    if isinstance(exc, PantheonError):  # expected, user-actionable (bad parameter, no CUDA...)
        return "input"
    return "internal"
