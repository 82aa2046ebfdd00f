"""Background worker: runs pipelines in a separate (torch-enabled) Python process.

``python -m pantheon.worker`` is the worker program (:mod:`pantheon.worker.server`);
:mod:`pantheon.worker.client` is the stdlib-only client the Slicer process imports.
The protocol is documented in ``docs/worker-protocol.md``.
"""

from .protocol import MAX_REQUEST_BYTES, PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION", "MAX_REQUEST_BYTES"]
