"""Client of the Pantheon worker; what the Slicer process imports (stdlib only, Python 3.9 syntax,
never torch or numpy).

Each :class:`WorkerClient` owns one worker process (``python -m pantheon.worker``) and talks to
it over the worker's stdin/stdout with one JSON object per line (docs/worker-protocol.md). Two
clients therefore have two independent workers. The API is non-blocking (:meth:`WorkerClient.submit`
returns a :class:`Job` that a Qt timer polls) with a blocking :meth:`WorkerClient.run` for
scripts and batch. Callbacks (``log_callback``, ``progress``) are always called in the thread
that calls :meth:`Job.poll` / :meth:`WorkerClient.run` / :meth:`WorkerClient.poll_logs`, never
from the client's reader threads, so they may touch Qt widgets.

Temporary files: the client makes one private session folder (mode 0700) holding the worker's
TMPDIR and, for jobs without ``output_dir``, one output folder per job. A failed, cancelled or
crashed job's automatic output folder is removed at once; a successful one stays until the caller
calls :meth:`WorkerClient.release` (or removes ``result["output_dir"]``) or the client shuts down,
which removes the whole session folder. Folders passed as ``output_dir`` are never removed. Paths
passed in ``remove_when_done`` (e.g. a folder from :meth:`WorkerClient.input_dir` holding the NRRD
the Slicer side wrote) are removed when the job ends, whatever the outcome.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .. import __version__
from .protocol import PROTOCOL_VERSION, encode

__all__ = ["WorkerClient", "Job", "WorkerError", "default_python", "worker_base_environment", "is_slicer_python"]

_TERMINAL = ("done", "failed", "cancelled")


TEMP_ROOT_ENV = "PANTHEON_WORKER_TMPDIR"


def fast_temp_root(min_free_bytes: int = 4 << 30) -> Optional[str]:
    """Where volumes travel between Slicer and the worker: $PANTHEON_WORKER_TMPDIR, else a RAM-backed
    /dev/shm when it has room (a 300 MB heatmap is written there in ~0.2 s instead of up to 1.6 s
    through the disk's write-back), else the system temp folder (None)."""
    root = os.environ.get(TEMP_ROOT_ENV)
    if root:
        return root
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and os.access(shm, os.W_OK):
            st = os.statvfs(shm)
            if st.f_bavail * st.f_frsize >= min_free_bytes:
                return shm
    except OSError:
        pass
    return None


class WorkerError(Exception):
    """A failed worker request: ``kind`` is one of input, checkpoint, cancelled, crashed, protocol,
    version, internal, timeout; ``message`` is one sentence for the user."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> Dict[str, str]:
        return {"kind": self.kind, "message": self.message}


def default_python() -> str:
    """The interpreter the worker runs with: $PANTHEON_WORKER_PYTHON, else PythonSlicer when this
    process is the Slicer application, else sys.executable."""
    env = os.environ.get("PANTHEON_WORKER_PYTHON")
    if env:
        return env
    exe = sys.executable or "python"
    name = os.path.basename(exe).lower()
    if name.startswith("slicer"):  # inside Slicer sys.executable is the application itself
        suffix = ".exe" if os.name == "nt" else ""
        here = os.path.dirname(exe)
        for cand in (os.path.join(here, "PythonSlicer" + suffix), os.path.join(here, "bin", "PythonSlicer" + suffix),
                     os.path.join(os.path.dirname(here), "bin", "PythonSlicer" + suffix)):
            if os.path.isfile(cand):
                return cand
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return exe


def is_slicer_python(python: Optional[str]) -> bool:
    """True when ``python`` is Slicer's own launcher (PythonSlicer), which sets up Slicer's
    environment itself; any other interpreter needs :func:`worker_base_environment` (True)."""
    name = str(python or "").replace("\\", "/").rsplit("/", 1)[-1].lower()  # also a Windows path elsewhere
    return name.startswith("pythonslicer")


def worker_base_environment(use_startup_env: bool) -> Dict[str, str]:
    """The environment a worker starts from. ``use_startup_env``: the environment Slicer itself
    was started with (``slicer.util.startupEnvironment()``), without what Slicer's launcher adds
    (PYTHONHOME, PYTHONPATH, LD_LIBRARY_PATH/DYLD_*, QT_PLUGIN_PATH, SLICER_HOME...), which would
    make another Python (e.g. a conda env) fail to start or load Slicer's packages. Outside Slicer,
    or when False, a copy of ``os.environ``."""
    # Inside Slicer the application has loaded slicer.util already; looked up, never imported
    # (the core package does not import Slicer modules, Testing/test_import_rules.py).
    util = getattr(sys.modules.get("slicer"), "util", None) if use_startup_env else None
    if util is not None:
        try:
            env = util.startupEnvironment()
            if env:
                return {str(k): str(v) for k, v in env.items()}
        except Exception:  # slicer without an application (e.g. tests): the current environment it is
            pass
    return dict(os.environ)


class _ProcessTree:
    """The worker process and every process it starts, ended as one.

    The worker may be started through a launcher (PythonSlicer starts the real interpreter as its
    child): killing only the process we started would orphan the interpreter, with its RAM, GPU
    memory and our pipes. POSIX: the worker gets its own session (so its own process group) and is
    ended with ``killpg``. Windows: it is put in a job object with KILL_ON_JOB_CLOSE, which kills
    the whole tree on TerminateJobObject and also when this process dies and the handle closes;
    if the job cannot be made, ``taskkill /T`` ends the tree.

    Only :meth:`_watch` reaps the started process, after killing its group, so the group id can
    never belong to a reused pid when it is signalled.
    """

    def __init__(self, cmd: Sequence[str], **kwargs: Any) -> None:
        self._job = None
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
            self.proc = subprocess.Popen(cmd, **kwargs)
            self._job = windows_kill_on_close_job(self.proc)
        else:
            self.proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.pid = self.proc.pid
        self.returncode = None
        self.exited = threading.Event()  # set once the started process and its group are gone
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="pantheon-worker-watch")
        self._watcher.start()

    def _watch(self) -> None:
        # Wait for the started process (the launcher, or the worker itself) to exit, then end what
        # is left of its tree: a killed launcher must not leave the real interpreter running.
        if os.name != "nt" and hasattr(os, "waitid"):
            try:
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
            except (ChildProcessError, OSError):
                pass
            self._kill_tree()
        else:
            self.proc.wait()
            self._kill_tree()
        self.returncode = self.proc.wait()
        self.exited.set()
        self.close()

    def _kill_tree(self) -> None:
        if os.name == "nt":
            if self._job is not None and _windows_terminate_job(self._job):
                return
            if self.proc.poll() is None:
                try:
                    subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.pid)], capture_output=True, timeout=30,
                                   creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
                except (OSError, subprocess.SubprocessError):
                    pass
                self._kill_started()
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)  # start_new_session: the group id is the pid
        except ProcessLookupError:
            pass  # the whole group is gone already
        except OSError:
            self._kill_started()

    def _kill_started(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    def kill(self) -> None:
        """End the whole tree now (no-op once it is gone)."""
        if not self.exited.is_set():
            self._kill_tree()

    def close(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            windows_close_job(job)  # KILL_ON_JOB_CLOSE: also ends anything still in the job


def _windows_kernel32() -> Any:
    import ctypes
    from ctypes import wintypes
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    k32.CreateJobObjectW.argtypes = (ctypes.c_void_p, wintypes.LPCWSTR)
    k32.CreateJobObjectW.restype = wintypes.HANDLE
    k32.SetInformationJobObject.argtypes = (wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p, wintypes.DWORD)
    k32.SetInformationJobObject.restype = wintypes.BOOL
    k32.AssignProcessToJobObject.argtypes = (wintypes.HANDLE, wintypes.HANDLE)
    k32.AssignProcessToJobObject.restype = wintypes.BOOL
    k32.TerminateJobObject.argtypes = (wintypes.HANDLE, wintypes.UINT)
    k32.TerminateJobObject.restype = wintypes.BOOL
    k32.CloseHandle.argtypes = (wintypes.HANDLE,)
    k32.CloseHandle.restype = wintypes.BOOL
    return k32


def windows_kill_on_close_job(proc: subprocess.Popen) -> Optional[int]:
    """A job object holding ``proc`` (and, from then on, its children) that kills them all when
    terminated or when its last handle closes; None when Windows refuses (then taskkill /T).
    The launcher's child is started after this assignment: PythonSlicer loads its settings first."""
    try:
        import ctypes
        from ctypes import wintypes

        class BasicLimits(ctypes.Structure):
            _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                        ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                        ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", wintypes.DWORD),
                        ("Affinity", ctypes.c_size_t), ("PriorityClass", wintypes.DWORD),
                        ("SchedulingClass", wintypes.DWORD)]

        class IoCounters(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint64) for n in ("ReadOperationCount", "WriteOperationCount",
                                                       "OtherOperationCount", "ReadTransferCount",
                                                       "WriteTransferCount", "OtherTransferCount")]

        class ExtendedLimits(ctypes.Structure):
            _fields_ = [("BasicLimitInformation", BasicLimits), ("IoInfo", IoCounters),
                        ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                        ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]

        k32 = _windows_kernel32()
        job = k32.CreateJobObjectW(None, None)
        if not job:
            return None
        info = ExtendedLimits()
        info.BasicLimitInformation.LimitFlags = 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        ok = k32.SetInformationJobObject(job, 9, ctypes.byref(info), ctypes.sizeof(info))  # 9: ExtendedLimitInformation
        ok = ok and k32.AssignProcessToJobObject(job, int(proc._handle))
        if not ok:
            k32.CloseHandle(job)
            return None
        return job
    except Exception:
        return None


def _windows_terminate_job(job: int) -> bool:
    try:
        return bool(_windows_kernel32().TerminateJobObject(job, 1))
    except Exception:
        return False


def windows_close_job(job: int) -> None:
    try:
        _windows_kernel32().CloseHandle(job)
    except Exception:
        pass


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _remove(path: Union[str, os.PathLike]) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass


class Job:
    """One submitted pipeline run. ``state``: queued, running, done, failed or cancelled."""

    def __init__(self, client: WorkerClient, job_id: str, pipeline: str, output_dir: str, auto_output: bool,
                 remove_when_done: Optional[Iterable[Union[str, os.PathLike]]]) -> None:
        self._client = client
        self.id = job_id
        self.pipeline = pipeline
        self.state = "queued"
        self.progress = (0.0, "Queued")
        self.result = None
        self.error = None
        self.output_dir = output_dir
        self.submitted_at = time.monotonic()
        self.finished_at = None
        self._auto_output = auto_output
        self._remove_when_done = list(remove_when_done or ())
        self._events = collections.deque()
        self._cond = threading.Condition(client._lock)

    @property
    def done(self) -> bool:
        return self.state in _TERMINAL

    def poll(self) -> List[Dict[str, Any]]:
        """New events since the last poll (progress, log, result, error dicts); never blocks.
        Also delivers pending log lines to the client's ``log_callback``."""
        with self._client._lock:
            events = list(self._events)
            self._events.clear()
        self._client._deliver_logs([e["line"] for e in events if e["type"] == "log"])
        self._client.poll_logs()
        return events

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job ends (or ``timeout`` seconds); returns ``done``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._client._lock:
            while not self.done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(0.1 if left is None else min(left, 0.1))
            return self.done

    def cancel(self) -> None:
        """Ask the worker to stop this job; the job ends as "cancelled" (within about a second)."""
        if self.done:
            return
        self._client._send_cancel(self)

    # called with the client lock held
    def _push(self, event: Dict[str, Any]) -> None:
        self._events.append(event)
        self._cond.notify_all()

    def _finish(self, state: str, result: Optional[Dict[str, Any]] = None,
                error: Optional[Dict[str, str]] = None) -> bool:
        if self.done:
            return False
        self.state = state
        self.result = result
        self.error = error
        self.finished_at = time.monotonic()
        if error is not None:
            self._events.append({"type": "error", "error": error})
        elif result is not None:
            self._events.append({"type": "result", "result": result})
        self._cond.notify_all()
        return True

    def __repr__(self) -> str:
        return f"<Job {self.pipeline} {self.id[:8]} {self.state}>"


class _Worker:
    """One worker process and its reader threads (a crash makes a new one on the next request)."""

    def __init__(self, client: WorkerClient, python: str, env: Dict[str, str], tmp_dir: str) -> None:
        self.client = client
        self.tmp_dir = tmp_dir
        self.alive = True
        self.jobs = {}  # id -> Job not finished
        self.requests = {}  # id -> {"event", "data", "error"} for control requests
        self.unacked = collections.deque()  # request ids in send order, waiting for their ack
        self.stderr_tail = collections.deque(maxlen=40)
        self.running = None  # id of the job the worker runs now
        # --parent-pid: the worker also exits when this process dies, even if something else
        # keeps its stdin open (stdin EOF is the usual way it learns that).
        cmd = [python, "-m", "pantheon.worker", "--cache-mb", str(client.cache_budget_mb),
               "--parent-pid", str(os.getpid())]
        if client.preload:
            cmd.append("--preload")
        self.tree = _ProcessTree(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env, cwd=tmp_dir, bufsize=0)
        self.proc = self.tree.proc
        self._write_lock = threading.Lock()
        self._out_thread = threading.Thread(target=self._read_stdout, daemon=True, name="pantheon-worker-out")
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True, name="pantheon-worker-err")
        # stderr's reader first: the stdout reader joins it when the worker dies, which can happen at once
        self._err_thread.start()
        self._out_thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, data: bytes, request_id: str) -> None:
        """Send raw protocol bytes; the answer's ack is matched by order (``request_id``)."""
        try:
            with self._write_lock:  # order of ``unacked`` == order of lines on the pipe
                with self.client._lock:
                    if not self.alive:
                        raise WorkerError("crashed", "The worker is not running.")
                    self.unacked.append(request_id)
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            self._died(f"could not send to the worker ({exc})")
            raise WorkerError("crashed", self._crash_message()) from exc

    def _read_stdout(self) -> None:
        stream = self.proc.stdout
        while True:
            try:
                line = stream.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                break
            try:
                msg = json.loads(line.decode("utf-8"))
            except ValueError:
                self.client._queue_log(f"[worker] unreadable answer: {line[:200]!r}")
                continue
            try:
                self._dispatch(msg)
            except Exception as exc:  # never let a bad answer kill the reader thread
                self.client._queue_log(f"[worker] bad answer {msg!r}: {exc}")
        self._died(None)

    def _read_stderr(self) -> None:
        stream = self.proc.stderr
        while True:
            try:
                line = stream.readline()
            except (OSError, ValueError):
                break
            if not line:
                break
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.stderr_tail.append(text)
            with self.client._lock:
                job = self.jobs.get(self.running) if self.running else None
                if job is not None:
                    job._push({"type": "log", "line": text})
                else:
                    self.client._logs.append(text)

    def _dispatch(self, msg: Dict[str, Any]) -> None:
        kind, mid = msg.get("type"), msg.get("id")
        client = self.client
        with client._lock:
            if kind == "ack":
                # acks come strictly in request order (the worker acks each line before reading the next)
                rid = self.unacked.popleft() if self.unacked else mid
                if msg.get("error") is not None:
                    self._fail_request(rid, msg["error"])
                return
            if kind == "reply":
                req = self.requests.get(mid)
                if req is not None:
                    req["data"] = msg.get("data")
                    req["event"].set()
                return
            if kind == "log" and mid is None:
                client._logs.append(msg.get("line", ""))
                return
            job = self.jobs.get(mid)
            if job is None:
                return
            if kind == "started":
                job.state = "running"
                self.running = mid
                job._cond.notify_all()
            elif kind == "progress":
                job.progress = (float(msg.get("fraction", 0.0)), str(msg.get("message", "")))
                job._push({"type": "progress", "fraction": job.progress[0], "message": job.progress[1]})
            elif kind == "log":
                job._push({"type": "log", "line": msg.get("line", "")})
            elif kind == "result":
                result = msg.get("result") or {}
                result.setdefault("output_dir", job.output_dir)
                self._end_job(job, "done", result=result)
            elif kind == "error":
                err = msg.get("error") or {}
                err = {"kind": str(err.get("kind", "internal")), "message": str(err.get("message", ""))}
                self._end_job(job, "cancelled" if err["kind"] == "cancelled" else "failed", error=err)

    def _fail_request(self, rid: Optional[str], error: Dict[str, Any]) -> None:
        error = {"kind": str(error.get("kind", "protocol")), "message": str(error.get("message", ""))}
        if rid in self.jobs:
            job = self.jobs[rid]
            self._end_job(job, "cancelled" if error["kind"] == "cancelled" else "failed", error=error)
        elif rid in self.requests:
            self.requests[rid]["error"] = error
            self.requests[rid]["event"].set()
        else:
            self.client._rejected.append(error)

    def _end_job(self, job: Job, state: str, result: Optional[Dict[str, Any]] = None,
                 error: Optional[Dict[str, str]] = None) -> None:  # lock held
        self.jobs.pop(job.id, None)
        if self.running == job.id:
            self.running = None
        if not job.done:
            self.client._cleanup_job(job, state)  # before the state flips, so pollers see it done
            job._finish(state, result, error)

    def _crash_message(self) -> str:
        code = self.tree.returncode
        tail = [l for l in self.stderr_tail if l.strip()][-5:]
        how = f"exit code {code}" if code is not None else "no answer"
        if code is not None and code < 0:
            how = f"killed by signal {-code}"
        msg = f"The worker process stopped unexpectedly ({how}); the next request starts a new one."
        if tail:
            msg += " Last output: " + " | ".join(tail)
        return msg

    def _died(self, reason: Optional[str]) -> None:
        with self.client._lock:
            if not self.alive:
                return
            self.alive = False
        if not self.tree.exited.wait(2):  # stdout closed but the tree lingers: end it
            self.tree.kill()
            self.tree.exited.wait(2)
        self._err_thread.join(timeout=1)
        with self.client._lock:
            expected = self.client._closing
            message = reason or self._crash_message()
            err = {"kind": "crashed", "message": message}
            for job in list(self.jobs.values()):
                self._end_job(job, "failed", error=err)
            for req in self.requests.values():
                if not req["event"].is_set():
                    req["error"] = err
                    req["event"].set()
            if not expected:
                self.client._logs.append("[worker] " + message)
        _remove(self.tmp_dir)

    def kill(self) -> None:
        """End the worker and everything it started (launcher, interpreter, their children)."""
        self.tree.kill()


class WorkerClient:
    """Starts and talks to one worker process; see the module docstring."""

    protocol = PROTOCOL_VERSION

    def __init__(self, python: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                 startup_timeout: float = 120.0, cache_budget_mb: float = 2048,
                 log_callback: Optional[Callable[[str], None]] = None, preload: bool = True,
                 base_env: Optional[Mapping[str, str]] = None) -> None:
        self.python = python or default_python()
        self.env = dict(env or {})
        # What the worker's environment starts from (then ``env``, PYTHONPATH, TMPDIR are added):
        # None = this process's os.environ; in Slicer with another Python pass
        # worker_base_environment(True), Slicer's startup environment.
        self.base_env = None if base_env is None else dict(base_env)
        self.startup_timeout = float(startup_timeout)
        self.cache_budget_mb = cache_budget_mb
        self.log_callback = log_callback
        self.preload = preload
        self._lock = threading.RLock()
        self._logs = collections.deque(maxlen=2000)
        self._rejected = collections.deque(maxlen=100)
        self._worker = None
        self._hello = None
        self._closing = False
        self._session = None
        self._start_lock = threading.Lock()
        self.workers_started = 0

    # ------------------------------------------------------------------ temp folders
    @property
    def session_dir(self) -> str:
        """Private (0700) folder for this client's temporary files; removed by shutdown()."""
        with self._lock:
            if self._session is None or not os.path.isdir(self._session):
                self._session = tempfile.mkdtemp(prefix="pantheon-worker-", dir=fast_temp_root())
                os.chmod(self._session, 0o700)
            return self._session

    def input_dir(self) -> str:
        """A new private (0700) folder for input files; pass it in ``remove_when_done``."""
        d = tempfile.mkdtemp(prefix="in-", dir=self.session_dir)
        os.chmod(d, 0o700)
        return d

    def release(self, result_or_job: Union[Job, Dict[str, Any], None]) -> None:
        """Remove a finished job's automatic output folder (after its files were loaded)."""
        result = getattr(result_or_job, "result", result_or_job) or {}
        out = result.get("output_dir")
        if out and self._session and os.path.abspath(out).startswith(os.path.abspath(self._session) + os.sep):
            _remove(out)

    def _cleanup_job(self, job: Job, state: str) -> None:  # lock held
        for path in job._remove_when_done:
            _remove(path)
        if job._auto_output and state != "done":
            _remove(job.output_dir)

    # ------------------------------------------------------------------ worker lifetime
    def _env(self, tmp_dir: str) -> Dict[str, str]:
        env = dict(os.environ if self.base_env is None else self.base_env)
        env.update(self.env)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONIOENCODING"] = "utf-8"
        env["PYTHONUNBUFFERED"] = "1"
        for var in ("TMPDIR", "TEMP", "TMP"):
            env[var] = tmp_dir
        return env

    def _ensure(self) -> _Worker:
        """The live worker, started (with handshake) if needed."""
        with self._start_lock:
            w = self._worker
            if w is not None and w.alive:
                return w
            if self._closing:
                raise WorkerError("crashed", "The worker client was shut down.")
            tmp_dir = tempfile.mkdtemp(prefix="tmp-", dir=self.session_dir)
            os.chmod(tmp_dir, 0o700)
            try:
                w = _Worker(self, self.python, self._env(tmp_dir), tmp_dir)
            except OSError as exc:
                _remove(tmp_dir)
                raise WorkerError("crashed", f"Cannot start the worker with {self.python}: {exc}") from exc
            self.workers_started += 1
            try:
                info = self._request(w, {"op": "hello", "protocol": self.protocol, "pantheon": __version__},
                                     self.startup_timeout)
            except WorkerError as exc:
                w.kill()
                if exc.kind == "timeout":
                    raise WorkerError("timeout", f"The worker ({self.python}) did not answer within "
                                                 f"{self.startup_timeout:g} s.") from exc
                if exc.kind == "crashed":
                    raise WorkerError("crashed", "The worker could not start: " + exc.message) from exc
                raise
            if info.get("pantheon") != __version__:
                w.kill()
                raise WorkerError("version", f"The worker runs pantheon {info.get('pantheon')} but this client is "
                                             f"pantheon {__version__}; point the worker at the same installation.")
            self._hello = info
            self._worker = w
            atexit.register(self.shutdown)
            return w

    def _request(self, w: _Worker, message: Dict[str, Any], timeout: Optional[float]) -> Any:
        rid = uuid.uuid4().hex
        message = dict(message, id=rid)
        req = {"event": threading.Event(), "data": None, "error": None}
        with self._lock:
            w.requests[rid] = req
        try:
            w.send(encode(message), rid)
            if not req["event"].wait(timeout):
                raise WorkerError("timeout", f"The worker did not answer '{message['op']}' within {timeout:g} s.")
        finally:
            with self._lock:
                w.requests.pop(rid, None)
        if req["error"] is not None:
            raise WorkerError(req["error"]["kind"], req["error"]["message"])
        return req["data"]

    @property
    def pid(self) -> Optional[int]:
        """The process this client started (PythonSlicer's launcher, or the worker itself)."""
        w = self._worker
        return w.pid if w is not None and w.alive else None

    @property
    def worker_pid(self) -> Optional[int]:
        """The interpreter that runs the jobs (a child of the launcher under PythonSlicer)."""
        w = self._worker
        return (self._hello or {}).get("pid") if w is not None and w.alive else None

    def check_environment(self, timeout: float = 180.0, import_modules: bool = True) -> Dict[str, Any]:
        """What the worker's Python has, checked in a throw-away process of that Python (this
        process never imports torch). Every requirement of pyproject.toml is looked for and, with
        ``import_modules``, imported (a package that is installed but broken, e.g. built for another
        numpy, shows as broken). Returns::

            {"python", "version", "prefix", "ready": bool, "error": one sentence or None,
             "missing": [names to install], "outdated": [names older than required],
             "broken": {name: sentence}, "packages": {name: {"module", "spec", "version", "status"}},
             "torch", "torch_cuda", "cuda": bool or None, "cuda_error": sentence or None,
             "cuda_devices": [{"index", "device": "cuda:N", "name", "memory_bytes", "capability", "usable"}],
             "requirements_source"}

        Names are distribution names as pyproject.toml spells them (what pip installs). When the
        Python does not run at all, "missing" is ["python"] and "error" says why."""
        from . import requirements as reqs
        try:
            listed = reqs.worker_requirements()
            source = reqs.declared_dependencies()[1]
        except Exception as exc:  # an unreadable pyproject.toml must not break the panel
            return self._environment_failure(f"The list of requirements could not be read: {exc}")
        payload = json.dumps([dict(r._asdict()) for r in listed])
        opts = json.dumps({"import_modules": bool(import_modules)})
        script_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.py")
        # Run requirements.py by path, not as pantheon.worker.requirements: the worker's Python may
        # be too old or odd for the package, and the probe only needs the standard library.
        # One line, no double quotes, the requirement list on stdin: nothing for a launcher's or
        # Windows' command-line quoting to mangle.
        bootstrap = ("import sys; p = sys.argv[1]; sys.argv = [p] + sys.argv[2:]; "
                     "exec(compile(open(p, 'rb').read(), p, 'exec'), {'__name__': '__main__', '__file__': p})")
        cmd = [self.python, "-c", bootstrap, script_path, "--probe", "-"]
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=self._env(tempfile.gettempdir()),
                                  creationflags=flags, input=(payload + "\n" + opts + "\n").encode("utf-8"))
        except subprocess.TimeoutExpired:
            return self._environment_failure(f"The worker Python {self.python} did not finish the environment check "
                                             f"within {timeout:g} s.")
        except OSError as exc:
            return self._environment_failure(f"The worker Python {self.python} cannot be started: "
                                             f"{exc.strerror or exc}.")
        lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (ValueError, IndexError):
            err = [l.strip() for l in proc.stderr.decode("utf-8", "replace").splitlines() if l.strip()]
            why = err[-1] if err else f"exit code {proc.returncode}"
            return self._environment_failure(f"The worker Python {self.python} does not run: {why}")
        result.setdefault("error", None)
        result["requirements_source"] = source
        return result

    def _environment_failure(self, sentence: str) -> Dict[str, Any]:
        return {"python": self.python, "version": None, "prefix": None, "ready": False, "error": sentence,
                "missing": ["python"], "outdated": [], "broken": {}, "packages": {}, "torch": None,
                "torch_cuda": None, "cuda": None, "cuda_error": None, "cuda_devices": [],
                "requirements_source": None}

    def ping(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Start the worker if needed; returns its handshake info plus torch/CUDA details."""
        w = self._ensure()
        return self._request(w, {"op": "info"}, timeout or self.startup_timeout)

    def stats(self, timeout: float = 30.0) -> Dict[str, Any]:
        """The worker's cache statistics and job counters."""
        return self._request(self._ensure(), {"op": "stats"}, timeout)

    def clear_cache(self, timeout: float = 30.0) -> Dict[str, Any]:
        return self._request(self._ensure(), {"op": "clear"}, timeout)

    # ------------------------------------------------------------------ jobs
    def submit(self, pipeline: str, params: Optional[Dict[str, Any]] = None, inputs: Optional[Mapping[str, Any]] = None,
               output_dir: Optional[Union[str, os.PathLike]] = None,
               remove_when_done: Iterable[Union[str, os.PathLike]] = ()) -> Job:
        """Send a job; returns a :class:`Job` at once. Start-up or handshake failures raise WorkerError."""
        w = self._ensure()
        job_id = uuid.uuid4().hex
        auto = output_dir is None
        if auto:
            output_dir = tempfile.mkdtemp(prefix="out-", dir=self.session_dir)
            os.chmod(output_dir, 0o700)
        else:
            output_dir = os.path.abspath(output_dir)
        job = Job(self, job_id, pipeline, output_dir, auto, remove_when_done)
        message = {"op": "submit", "id": job_id, "pipeline": pipeline, "params": params or {},
                   "inputs": {k: os.path.abspath(v) if isinstance(v, str) else v for k, v in (inputs or {}).items()},
                   "output_dir": output_dir}
        try:
            data = encode(message)
        except (TypeError, ValueError) as exc:
            with self._lock:
                self._cleanup_job(job, "failed")
                job._finish("failed", error={"kind": "protocol", "message": f"Request is not JSON-serialisable: {exc}"})
            return job
        with self._lock:
            w.jobs[job_id] = job
        try:
            w.send(data, job_id)
        except WorkerError:
            pass  # the job was failed as "crashed" by the reader
        return job

    def _send_cancel(self, job: Job) -> None:
        w = self._worker
        if w is None or not w.alive:
            return
        rid = uuid.uuid4().hex
        try:
            w.send(encode({"op": "cancel", "id": rid, "job": job.id}), rid)
        except WorkerError:
            pass

    def send_raw(self, data: bytes, timeout: float = 30.0) -> Optional[Dict[str, str]]:
        """Send raw bytes as one request (diagnostics and tests); returns the worker's ack error
        dict, or None when the worker accepted it."""
        w = self._ensure()
        rid = uuid.uuid4().hex
        req = {"event": threading.Event(), "data": None, "error": None}
        with self._lock:
            w.requests[rid] = req
        try:
            w.send(data if data.endswith(b"\n") else data + b"\n", rid)
            # An accepted raw request only gets a bare ack: wait for either outcome with a stats probe.
            self._request(w, {"op": "stats"}, timeout)
        finally:
            with self._lock:
                w.requests.pop(rid, None)
        return req["error"]

    def run(self, pipeline: str, params: Optional[Dict[str, Any]] = None, inputs: Optional[Mapping[str, Any]] = None,
            output_dir: Optional[Union[str, os.PathLike]] = None,
            progress: Optional[Callable[[float, str], None]] = None, cancel: Any = None,
            timeout: Optional[float] = None,
            remove_when_done: Iterable[Union[str, os.PathLike]] = ()) -> Dict[str, Any]:
        """Blocking run: returns the result dict or raises WorkerError. ``progress(fraction, message)``;
        ``cancel`` is an object with is_set() or a callable returning True to stop."""
        job = self.submit(pipeline, params, inputs, output_dir, remove_when_done)
        deadline = None if timeout is None else time.monotonic() + timeout
        cancel_sent = False
        while True:
            job.wait(0.05)
            for ev in job.poll():
                if ev["type"] == "progress" and progress is not None:
                    progress(ev["fraction"], ev["message"])
            if job.done:
                break
            wants_cancel = cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel())
            if wants_cancel and not cancel_sent:
                job.cancel()
                cancel_sent = True
            if deadline is not None and time.monotonic() > deadline and not cancel_sent:
                job.cancel()
                cancel_sent = True
                job.wait(5.0)
                job.poll()
                if job.state != "done":
                    raise WorkerError("timeout", f"{pipeline} did not finish within {timeout:g} s and was cancelled.")
        if job.state == "done":
            return job.result
        raise WorkerError(job.error["kind"], job.error["message"])

    # ------------------------------------------------------------------ logs and shutdown
    def _queue_log(self, line: str) -> None:
        with self._lock:
            self._logs.append(line)

    def _deliver_logs(self, lines: Iterable[str]) -> None:
        if self.log_callback is not None:
            for line in lines:
                try:
                    self.log_callback(line)
                except Exception:
                    pass

    def poll_logs(self) -> List[str]:
        """Worker log lines not tied to a job (also passed to ``log_callback``)."""
        with self._lock:
            lines = list(self._logs)
            self._logs.clear()
        self._deliver_logs(lines)
        return lines

    def kill(self) -> None:
        """Kill the worker process at once (its jobs fail as "crashed"); the next request restarts it."""
        w = self._worker
        if w is not None:
            w.kill()
            w._out_thread.join(timeout=5)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the worker (cancelling its jobs) and remove this client's temporary files."""
        with self._lock:
            self._closing = True
        w = self._worker
        if w is not None and w.alive:
            try:
                self._request(w, {"op": "shutdown"}, timeout)
            except WorkerError:
                pass
            if not w.tree.exited.wait(timeout):
                w.kill()
            w.tree.exited.wait(timeout)
            w._out_thread.join(timeout=timeout)
        if self._session:
            _remove(self._session)
        with self._lock:
            self._closing = False
            self._session = None
        try:
            atexit.unregister(self.shutdown)
        except Exception:
            pass

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
