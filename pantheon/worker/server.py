"""The worker program: ``python -m pantheon.worker [--cache-mb N] [--preload]``.

Reads one JSON request per line on stdin, answers one JSON message per line on a private copy
of the original stdout (fd 1 itself is pointed at stderr, so stray ``print`` calls from libraries
can never corrupt the protocol). Requests are acknowledged in the order they arrive; jobs run one
at a time on a job thread, control requests (cancel, stats...) are answered while a job runs.
Everything heavy (numpy, torch, the pipelines) is imported lazily. See docs/worker-protocol.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import queue
import sys
import threading
import time
import traceback
import warnings
from typing import IO, Any, Callable, Dict, Hashable, NoReturn, Optional, Sequence

from .. import __version__
from .protocol import MAX_REQUEST_BYTES, PROTOCOL_VERSION, decode, encode, error_kind_for

_SENTINEL = object()


class LRUCache:
    """Least-recently-used cache of (value, nbytes) under a byte budget; thread-safe."""

    def __init__(self, budget_bytes: float) -> None:
        from collections import OrderedDict
        self.budget = int(budget_bytes)
        self._items = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
            return default

    def put(self, key: Hashable, value: Any, nbytes: int) -> bool:
        nbytes = int(nbytes)
        with self._lock:
            self._items.pop(key, None)
            if nbytes > self.budget:
                return False  # never cache something larger than the whole budget
            self._items[key] = (value, nbytes)
            while sum(n for _, n in self._items.values()) > self.budget:
                self._items.popitem(last=False)
                self.evictions += 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            kinds = {}
            for key, (_, n) in self._items.items():
                kind = key[0] if isinstance(key, tuple) else str(key)
                entry = kinds.setdefault(kind, {"count": 0, "bytes": 0})
                entry["count"] += 1
                entry["bytes"] += n
            return {"budget_bytes": self.budget, "bytes": sum(n for _, n in self._items.values()),
                    "entries": len(self._items), "by_kind": kinds, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}


class JobContext:
    """What a task function gets: its request, a cancel event, progress/log senders and the caches."""

    def __init__(self, server: Server, job_id: str, pipeline: str, params: Dict[str, Any], inputs: Dict[str, str],
                 output_dir: str) -> None:
        self.server = server
        self.id = job_id
        self.pipeline = pipeline
        self.params = params
        self.inputs = inputs
        self.output_dir = output_dir
        self.cancel = threading.Event()
        self.cache = server.cache
        self.notes = {}  # extra notes merged into result.json (e.g. feature_cache: hit)
        self._last_sent = 0.0
        self._last_fraction = -1.0

    def progress(self, fraction: float, message: str = "") -> None:
        """Progress callback for pipelines: raises Cancelled once cancel is set, throttles sends."""
        from ..errors import Cancelled
        if self.cancel.is_set():
            raise Cancelled("Cancelled by the user.")
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_sent >= 0.05 or fraction - self._last_fraction >= 0.01:
            fraction = max(fraction, self._last_fraction)  # never send a step backwards
            self._last_sent, self._last_fraction = now, fraction
            self.server.send({"type": "progress", "id": self.id, "fraction": fraction, "message": str(message)})

    def log(self, line: object) -> None:
        self.server.send({"type": "log", "id": self.id, "line": str(line)})

    def check(self) -> None:
        from ..errors import Cancelled
        if self.cancel.is_set():
            raise Cancelled("Cancelled by the user.")


class _ProtocolLogHandler(logging.Handler):
    def __init__(self, server: Server) -> None:
        super().__init__(logging.INFO)
        self.server = server
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            current = self.server.current
            self.server.send({"type": "log", "id": current.id if current else None, "line": self.format(record)})
        except Exception:  # logging must never break a job
            pass


class Server:
    def __init__(self, out_stream: IO[bytes], cache_mb: float = 2048, preload: bool = False) -> None:
        self._out = out_stream
        self._out_lock = threading.Lock()
        self.cache = LRUCache(float(cache_mb) * 1024 * 1024)
        self._queue = queue.Queue()
        self._state_lock = threading.Lock()
        self._queued = {}  # job id -> JobContext, not started yet
        self.current = None  # JobContext running now
        self.preload = preload
        self.started = time.time()
        self.jobs_done = 0
        self.shutdown_requested = False
        self._runner = threading.Thread(target=self._run_jobs, name="pantheon-job", daemon=True)
        self._runner.start()

    # -------------------------------------------------------------------------- output
    def send(self, message: Dict[str, Any]) -> None:
        data = encode(message)
        with self._out_lock:
            self._out.write(data)
            self._out.flush()

    def ack(self, request_id: Optional[str], error: Optional[Dict[str, Any]] = None, **extra: Any) -> None:
        msg = {"type": "ack", "id": request_id}
        if error is not None:
            msg["error"] = error
        msg.update(extra)
        self.send(msg)

    # -------------------------------------------------------------------------- input
    def serve(self, stdin: IO[bytes]) -> int:
        """Read requests until EOF or shutdown; returns the exit code."""
        while True:
            line = stdin.readline(MAX_REQUEST_BYTES + 1)
            if not line:
                return 0  # the client went away: stop (no orphan workers)
            if len(line) > MAX_REQUEST_BYTES and not line.endswith(b"\n"):
                size = len(line)
                while line and not line.endswith(b"\n"):  # drop the rest of the line
                    line = stdin.readline(1 << 16)
                    size += len(line)
                self.ack(None, {"kind": "protocol", "message": f"Request of {size} bytes refused: the limit is "
                                                               f"{MAX_REQUEST_BYTES} bytes (send files, not data)."})
                continue
            if not line.strip():
                continue
            try:
                if self.handle(line) is _SENTINEL:
                    return 0
            except Exception as exc:  # a bug in request handling must not kill the worker
                self.send({"type": "log", "id": None, "line": traceback.format_exc()})
                self.ack(None, {"kind": "internal", "message": f"Request handling failed: {exc}"})

    def handle(self, line: bytes) -> object:
        try:
            req = decode(line)
        except ValueError as exc:
            self.ack(None, {"kind": "protocol", "message": str(exc)})
            return None
        rid = req.get("id")
        if not isinstance(rid, str) or not rid or len(rid) > 200:
            self.ack(None, {"kind": "protocol", "message": "request needs an 'id' (non-empty string)."})
            return None
        op = req.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
        if handler is None:
            self.ack(rid, {"kind": "protocol", "message": f"Unknown operation {op!r}; expected one of "
                                                          "hello, info, submit, cancel, stats, clear, shutdown."})
            return None
        return handler(rid, req)

    # -------------------------------------------------------------------------- operations
    def op_hello(self, rid: str, req: Dict[str, Any]) -> None:
        proto = req.get("protocol")
        info = {"protocol": PROTOCOL_VERSION, "pantheon": __version__, "python": sys.executable,
                "python_version": platform.python_version(), "pid": os.getpid()}
        if proto != PROTOCOL_VERSION:
            self.ack(rid, {"kind": "version", "message": f"The worker speaks protocol {PROTOCOL_VERSION} (pantheon "
                                                         f"{__version__}) but the client speaks protocol {proto} "
                                                         f"(pantheon {req.get('pantheon')}); update so both match.",
                           "worker": info})
            return None
        self.ack(rid)
        self.send({"type": "reply", "id": rid, "data": info})
        if self.preload:
            threading.Thread(target=self._preload, daemon=True).start()
        return None

    def _preload(self) -> None:
        try:
            import pantheon.pipelines.nemesis  # noqa: F401  (warms the torch import for the first job)
        except Exception as exc:
            self.send({"type": "log", "id": None, "line": f"preload failed: {exc}"})

    def op_info(self, rid: str, req: Dict[str, Any]) -> None:
        self.ack(rid)

        def answer() -> None:
            from .requirements import torch_report
            data = {"protocol": PROTOCOL_VERSION, "pantheon": __version__, "python": sys.executable,
                    "python_version": platform.python_version(), "pid": os.getpid()}
            # torch, torch_cuda, cuda, cuda_devices [{index, device, name, memory_bytes, capability,
            # usable}], cuda_error; no test kernel here: that would hold a CUDA context on every GPU.
            rep = torch_report(check_kernels=False)
            data.update(rep)
            data["cuda"] = bool(rep.get("cuda"))
            data["device_names"] = [d["name"] for d in rep["cuda_devices"]] + ["cpu"]
            if rep.get("torch_error"):
                data["error"] = "torch is not usable in this Python: " + rep["torch_error"]
            self.send({"type": "reply", "id": rid, "data": data})
        threading.Thread(target=answer, daemon=True).start()

    def op_stats(self, rid: str, req: Dict[str, Any]) -> None:
        self.ack(rid)
        current = self.current
        self.send({"type": "reply", "id": rid, "data": {
            "cache": self.cache.stats(), "jobs_done": self.jobs_done, "running": current.id if current else None,
            "queued": list(self._queued), "pid": os.getpid(), "uptime_s": time.time() - self.started}})

    def op_clear(self, rid: str, req: Dict[str, Any]) -> None:
        self.ack(rid)
        self.cache.clear()
        self.send({"type": "reply", "id": rid, "data": {"cache": self.cache.stats()}})

    def op_cancel(self, rid: str, req: Dict[str, Any]) -> None:
        job_id = req.get("job")
        self.ack(rid)
        with self._state_lock:
            ctx = self._queued.pop(job_id, None)
            if ctx is None and self.current is not None and self.current.id == job_id:
                self.current.cancel.set()
                state = "cancelling"
            else:
                state = "cancelled" if ctx is not None else "unknown"
        if ctx is not None:
            ctx.cancel.set()
            self.send({"type": "error", "id": job_id,
                       "error": {"kind": "cancelled", "message": "Cancelled by the user."}})
        self.send({"type": "reply", "id": rid, "data": {"job": job_id, "state": state}})

    def op_shutdown(self, rid: str, req: Dict[str, Any]) -> object:
        self.shutdown_requested = True
        self.ack(rid)
        with self._state_lock:
            for ctx in self._queued.values():
                ctx.cancel.set()
            if self.current is not None:
                self.current.cancel.set()
        self.send({"type": "reply", "id": rid, "data": {"pid": os.getpid()}})
        return _SENTINEL

    def op_submit(self, rid: str, req: Dict[str, Any]) -> None:
        from .tasks import available_pipelines
        pipelines = available_pipelines()
        name, params, inputs, out = (req.get("pipeline"), req.get("params", {}), req.get("inputs", {}),
                                     req.get("output_dir"))
        problem = None
        if name not in pipelines:
            problem = f"Unknown pipeline {name!r}; this worker serves {', '.join(sorted(pipelines))}."
        elif not isinstance(params, dict):
            problem = "'params' must be a JSON object."
        elif not isinstance(inputs, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in inputs.items()):
            problem = "'inputs' must map names to file paths (strings)."
        elif not isinstance(out, str) or not out:
            problem = "'output_dir' must be a folder path."
        if problem:
            self.ack(rid, {"kind": "input" if name not in pipelines else "protocol", "message": problem})
            return None
        ctx = JobContext(self, rid, name, params, inputs, out)
        with self._state_lock:
            self._queued[rid] = ctx
        self.ack(rid)
        self._queue.put(ctx)
        return None

    # -------------------------------------------------------------------------- jobs
    def _run_jobs(self) -> None:
        from .tasks import available_pipelines
        while True:
            ctx = self._queue.get()
            with self._state_lock:
                if self._queued.pop(ctx.id, None) is None:
                    continue  # cancelled while queued (already answered)
                self.current = ctx
            try:
                self.send({"type": "started", "id": ctx.id})
                t0 = time.perf_counter()
                result = available_pipelines()[ctx.pipeline](ctx)
                result.setdefault("notes", {})["worker_seconds"] = f"{time.perf_counter() - t0:.3f}"
                ctx.check()
                final = {"type": "result", "id": ctx.id, "result": result}
            except BaseException as exc:  # noqa: B902 - every failure becomes an answer
                kind = error_kind_for(exc)
                if kind == "internal":
                    self.send({"type": "log", "id": ctx.id, "line": traceback.format_exc()})
                message = str(exc) or type(exc).__name__
                if kind == "internal":
                    message = f"{type(exc).__name__}: {message}"
                final = {"type": "error", "id": ctx.id, "error": {"kind": kind, "message": message}}
            # idle *before* answering: a client that has the answer never sees this job as running
            with self._state_lock:
                self.current = None
            self.jobs_done += 1
            self.send(final)


# ------------------------------------------------------------------------------ parent watchdog
def _pid_gone(pid: int) -> bool:
    """True once process ``pid`` has exited (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return True  # the pid now belongs to another user's process: ours is gone
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _wait_for_exit(pid: int, poll_s: float = 0.5) -> None:
    """Block until process ``pid`` exits."""
    if os.name == "nt":
        import ctypes
        from ctypes import wintypes
        k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        k32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
        k32.OpenProcess.restype = wintypes.HANDLE
        k32.WaitForSingleObject.argtypes = (wintypes.HANDLE, wintypes.DWORD)
        k32.WaitForSingleObject.restype = wintypes.DWORD
        handle = k32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            if ctypes.get_last_error() == 87:  # ERROR_INVALID_PARAMETER: no such process, it is gone
                return
            threading.Event().wait()  # cannot watch it (access denied): rely on stdin EOF
        k32.WaitForSingleObject(handle, 0xFFFFFFFF)
        return
    if hasattr(os, "pidfd_open"):  # Linux >= 5.3: readable once the process exits, immune to pid reuse
        import select
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            fd = None
        if fd is not None:
            select.select([fd], [], [])
            return
    while not _pid_gone(pid):
        time.sleep(poll_s)


def own_process_group(parent_pid: Optional[int]) -> Optional[int]:
    """This worker's process group when the client started it in a session of its own (POSIX
    ``start_new_session``: the group is the worker, its launcher and their children, nothing
    else), else None. Only then may the worker end the whole group when it is orphaned."""
    if os.name == "nt" or not parent_pid:
        return None  # Windows: the client's job object ends the tree when the client dies
    try:
        pgid = os.getpgid(0)
        if pgid == os.getsid(0) and pgid != os.getpgid(parent_pid):
            return pgid
    except OSError:
        pass
    return None


def end_orphaned(group: Optional[int], code: int = 0) -> NoReturn:
    """Exit now, taking the rest of our own process group (launcher, children) along."""
    try:
        sys.stderr.flush()
    except Exception:
        pass
    if group:
        import signal
        try:
            os.killpg(group, signal.SIGKILL)  # includes this process
        except OSError:
            pass
    os._exit(code)


def watch_parent(pid: int, on_gone: Optional[Callable[[int], Any]] = None) -> threading.Thread:
    """Exit this worker when the process that started it (the client, e.g. Slicer) dies.

    The worker normally learns that from EOF on stdin, but a killed client's pipe can stay open
    when another process inherited it; a worker holding GPU memory must not outlive Slicer.
    """
    def watch() -> None:
        _wait_for_exit(pid)
        try:
            sys.stderr.write(f"pantheon worker: the client process {pid} is gone; exiting\n")
        finally:
            (on_gone or os._exit)(0)
    thread = threading.Thread(target=watch, name="pantheon-parent-watch", daemon=True)
    thread.start()
    return thread


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m pantheon.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-mb", type=float, default=2048, help="memory budget for models and features")
    parser.add_argument("--preload", action="store_true", help="import torch and the pipelines after the handshake")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process (the client) exits")
    args = parser.parse_args(argv)
    group = own_process_group(args.parent_pid)
    if args.parent_pid:
        watch_parent(args.parent_pid, on_gone=lambda code: end_orphaned(group, code))

    # The protocol gets a private copy of stdout; fd 1 (and sys.stdout) now go to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    server = Server(out, args.cache_mb, args.preload)
    logging.basicConfig(level=logging.WARNING, handlers=[_ProtocolLogHandler(server)])
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    code = server.serve(sys.stdin.buffer)
    try:
        sys.stderr.flush()
        out.flush()
    finally:
        if not server.shutdown_requested:
            end_orphaned(group, code)  # stdin closed without shutdown: the client is gone
        os._exit(code)  # do not wait for a job thread stuck in native code
