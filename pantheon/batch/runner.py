"""Running a batch: reconcile the manifest, run pending cases on an executor, write reports.

Executors are pluggable (``EXECUTORS``: name -> callable); ``"local"`` is a
``ProcessPoolExecutor`` of N spawned worker processes, each loading the model once in its
initializer and using ``max(1, cores // N)`` torch threads. A Ray executor only has to implement
the same ``execute(...)`` contract (yield one outcome dict per task, see :func:`local_executor`;
closing the generator early must stop its workers).
The parent process alone writes the manifest and moves finished case folders into place.

Signals: Ctrl-C (or SIGTERM from the command line) stops the workers at once, records the cases
they held as pending ("interrupted"), writes the reports and raises :class:`BatchInterrupted`,
whose message says what was written. Local workers die with the batch process however it ends
(see :func:`.worker.die_with_parent`), so none can race a rerun on the same case.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from ..errors import PantheonError
from ..runtime import cpu_cores
from .cases import Case, discover_cases
from .manifest import Manifest
from .pipelines import get_pipeline
from .worker import STAGE_PREFIX

TRASH_PREFIX = ".trash-"
LOCK_NAME = ".batch.lock"


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the batch; ``user_message`` says what was written and what is left.
    A KeyboardInterrupt, so callers that catch that keep working; ``original`` is what stopped it."""

    def __init__(self, user_message: str, original: Optional[BaseException] = None, counts: Optional[dict] = None):
        super().__init__(user_message)
        self.user_message = user_message
        self.original = original
        self.counts = dict(counts or {})


class _HeldSignals:
    """Hold SIGINT and SIGTERM for a critical section (main thread only; elsewhere a no-op).

    Finishing a case renames its old folder away, the new one in, and records it: a Ctrl-C between
    the renames would lose the user's earlier result. With ``redeliver`` a held signal is raised
    again on exit (its handler then runs at a safe point); without, it is dropped (the clean-up
    after a first Ctrl-C must not be cut short by a second one).
    """

    def __init__(self, redeliver: bool = True):
        self.redeliver = redeliver
        self.held: Optional[int] = None
        self.previous: dict = {}

    def _hold(self, signum, frame):
        self.held = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is None:  # installed outside Python (embedded): cannot be restored
                    continue
                try:
                    self.previous[sig] = signal.signal(sig, self._hold)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.held is not None and self.redeliver and exc[0] is None:
            signal.raise_signal(self.held)
        return False


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# ---------------------------------------------------------------------------- executors
def local_executor(pipeline: str, options: dict, tasks: List[dict], workers: int,
                   on_start: Callable[[dict], int]) -> Iterator[dict]:
    """Run ``tasks`` in ``workers`` processes; yields an outcome per task as it finishes.

    ``on_start(task)`` is called (in the parent) right before a task is submitted and returns the
    attempt number. At most ``workers`` tasks are in flight, so "running" in the manifest means
    running. A worker process that dies (killed, out of memory) fails the cases it held; the pool
    is then rebuilt and the batch goes on.
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from .worker import init_worker, process_case

    workers = max(1, int(workers))
    threads = max(1, cpu_cores() // workers)
    queue = list(tasks)
    ctx = mp.get_context("spawn")  # no fork of a parent that may hold torch/OpenMP threads
    jobs = _WindowsJobs()

    def new_pool():
        # os.getpid(): each worker watches this process and exits with it (worker.die_with_parent)
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                                   initargs=(pipeline, options, threads, os.getpid()))

    pool = new_pool()
    inflight: Dict[object, dict] = {}
    finished = False
    try:
        while queue or inflight:
            while queue and len(inflight) < workers:
                task = queue.pop(0)
                task["attempt"] = on_start(task)
                with _sigint_blocked():  # submit spawns the workers: they start with Ctrl-C blocked
                    inflight[pool.submit(process_case, dict(task))] = task
                jobs.adopt(pool)
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                task = inflight.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken = True
                    yield {"case_id": task["case_id"], "attempt": task["attempt"], "state": "failed",
                           "error": "The worker process died while running this case (out of memory or killed)."}
                except Exception as exc:  # noqa: BLE001
                    yield {"case_id": task["case_id"], "attempt": task["attempt"], "state": "failed",
                           "error": f"{type(exc).__name__}: {exc}"}
            if broken:
                for fut, task in list(inflight.items()):
                    inflight.pop(fut)
                    yield {"case_id": task["case_id"], "attempt": task["attempt"], "state": "failed",
                           "error": "The worker process died while running this case (out of memory or killed)."}
                _stop_workers(pool)
                pool = new_pool()
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:  # interrupted, or the caller stopped early: end the workers now, not after their cases
            _stop_workers(pool)
        jobs.close()


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT in this thread while it spawns workers (POSIX). A child inherits the mask, so a
    Ctrl-C sent to the terminal's process group while a worker is still starting (before
    worker.init_worker ignores it) cannot print a traceback from it; here the signal stays pending
    and is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_workers(pool) -> None:
    """Kill a pool's worker processes and wait until they are gone (so no staging folder is written
    after the parent's clean-up), then release the pool."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        try:
            p.terminate()
        except (OSError, ValueError, AttributeError):
            pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        except (OSError, ValueError, AssertionError, AttributeError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)


class _WindowsJobs:
    """Windows: every worker process goes into a kill-on-close job object held by this process, so
    Windows ends them when the batch dies however it dies (POSIX: see worker.die_with_parent). The
    job object code is the worker client's (pantheon.worker.client), not written twice."""

    def __init__(self):
        self.jobs: list = []
        self.seen: set = set()

    def adopt(self, pool) -> None:
        if os.name != "nt":
            return
        from ..worker.client import windows_kill_on_close_job
        for pid, proc in list((getattr(pool, "_processes", None) or {}).items()):
            popen = getattr(proc, "_popen", None)
            if pid in self.seen or popen is None or getattr(popen, "_handle", None) is None:
                continue
            self.seen.add(pid)
            job = windows_kill_on_close_job(popen)
            if job is not None:
                self.jobs.append(job)

    def close(self) -> None:
        if os.name != "nt":
            return
        from ..worker.client import windows_close_job
        for job in self.jobs:
            windows_close_job(job)  # KILL_ON_JOB_CLOSE: also ends a worker that is somehow still there
        self.jobs.clear()


from .ray_executor import ray_executor  # noqa: E402 - imports Ray only when it runs

EXECUTORS: Dict[str, Callable] = {"local": local_executor, "ray": ray_executor}


# ---------------------------------------------------------------------------- helpers
def _clean_leftovers(out: Path) -> None:
    """Remove staging folders and temporary files a killed batch left behind (we hold the lock)."""
    for p in out.iterdir():
        if p.name.startswith((STAGE_PREFIX, TRASH_PREFIX, ".pantheon-partial-")) or \
                (p.name.startswith(".") and p.name.endswith(".tmp")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _case_complete(out: Path, c: dict, attempt: Optional[int] = None) -> Optional[dict]:
    """case.json of a complete case folder (for ``attempt`` if given), else None."""
    f = out / c["case_id"] / "case.json"
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if attempt is not None and doc.get("attempt") != attempt:
        return None
    if not all((out / c["case_id"] / o).exists() for o in doc.get("outputs", [])):
        return None
    return doc


def _move_into_place(out: Path, stage_name: str, case_id: str) -> None:
    stage, final = out / stage_name, out / case_id
    trash = None
    if final.exists():
        trash = out / f"{TRASH_PREFIX}{case_id}-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
    os.replace(stage, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


class _Lock:
    def __init__(self, out: Path):
        self.path = out / LOCK_NAME
        self.f = None

    def __enter__(self):
        import fcntl
        self.f = open(self.path, "a")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.close()
            raise PantheonError(f"Another batch is writing to {self.path.parent}; wait for it or use another folder.")
        return self

    def __exit__(self, *exc):
        self.f.close()


# ---------------------------------------------------------------------------- the batch
def reconcile(manifest: Manifest, cases: List[Case], out: Path, retry_failed: bool = True) -> List[str]:
    """Bring the manifest up to date with the input and the disk; returns the case ids to run."""
    for case in cases:
        if case.case_id not in manifest.cases:
            manifest.cases[case.case_id] = Manifest.new_case(case.case_id, case.input)
        else:
            manifest.cases[case.case_id]["input"] = case.input
    todo = []
    for case in cases:
        c = manifest.cases[case.case_id]
        if c["state"] == "running":
            doc = _case_complete(out, c, c["attempts"])
            if doc is not None:  # finished and moved into place, but not recorded: adopt it
                c.update(state="done", error=None, seconds=doc["seconds"], pipeline_seconds=doc["pipeline_seconds"],
                         outputs=doc["outputs"], findings=doc["findings"], finished=c.get("finished") or c["started"])
                if c["history"]:
                    c["history"][-1]["state"] = "done"
                continue
            c["state"] = "pending"
            if c["history"]:
                c["history"][-1]["state"] = "interrupted"
        elif c["state"] == "done" and _case_complete(out, c) is None:
            c["state"] = "pending"
        elif c["state"] == "failed" and retry_failed:
            c["state"] = "pending"
        if c["state"] == "pending":
            todo.append(case.case_id)
    manifest.save()
    return todo


def _interrupted_message(manifest: Manifest, ids: List[str], out: Path) -> str:
    """What an interrupted batch wrote and what is left, in one sentence."""
    n = {s: sum(1 for i in ids if manifest.cases[i]["state"] == s) for s in ("done", "failed", "pending")}
    msg = f"{n['done']} of {len(ids)} cases are done and written in {out}"
    if n["failed"]:
        msg += f", {n['failed']} failed"
    if n["pending"]:
        one = n["pending"] == 1
        msg += (f"; {n['pending']} {'is' if one else 'are'} not finished and left no case folder: rerun the same "
                f"command to finish {'it' if one else 'them'}")
    return msg + f" (see {out / 'summary.csv'})."


def run_batch(pipeline: str, source, output, workers: int = 1, options: Optional[dict] = None,
              fmt: str = "nii.gz", seg_nrrd: bool = True, retry_failed: bool = True, engine: str = "local",
              quiet: bool = False, log: Callable[[str], None] = None) -> dict:
    """Run ``pipeline`` over every case of ``source`` (folder or CSV) into ``output``; see the package doc."""
    pipe = get_pipeline(pipeline)
    if engine not in EXECUTORS:
        raise PantheonError(f"Unknown batch engine {engine!r}; available: {', '.join(EXECUTORS)}.")
    if workers < 1:
        raise PantheonError("--workers must be at least 1.")
    if fmt not in ("nii.gz", "nii", "nrrd"):
        raise PantheonError(f"--format must be nii.gz, nii or nrrd, not {fmt!r}.")
    options = {k: options.get(k, v) for k, v in pipe.options.items()} if options else dict(pipe.options)
    device = str(options.get("device") or "auto").strip().lower()
    if engine == "local" and device not in ("auto", "cpu"):
        # a GPU that is not there: one sentence now, not the same failure once per case per worker
        # (Ray checks its cluster's GPUs itself, see ray_executor.plan_resources)
        from ..runtime import pick_device
        pick_device(device)
    cases = discover_cases(source)
    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    result_options = {k: v for k, v in options.items() if k not in ("device", "max_pixels")}  # no effect on results
    result_options.update(format=fmt, seg_nrrd=bool(seg_nrrd))
    t0 = time.perf_counter()
    with _Lock(out):
        _clean_leftovers(out)
        manifest = Manifest.open(out, pipeline, result_options)
        todo = reconcile(manifest, cases, out, retry_failed)
        ids = [c.case_id for c in cases]
        bar = None
        if not quiet and _is_terminal(sys.stderr):  # a bar in a log file is only carriage returns
            from tqdm import tqdm
            bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc=f"batch {pipeline}", unit="case",
                       file=sys.stderr, dynamic_ncols=True)
        tasks = [{"case_id": i, "input": manifest.cases[i]["input"], "output": str(out), "format": fmt,
                  "seg_nrrd": bool(seg_nrrd)} for i in todo]
        executor = EXECUTORS[engine]
        interrupted: Optional[BaseException] = None
        outcomes = executor(pipeline, options, tasks, workers, lambda t: manifest.start(t["case_id"]))
        try:
            for res in outcomes:
                cid = res["case_id"]
                with _HeldSignals():  # moved into place and recorded, or neither
                    if res["state"] == "done":
                        try:
                            _move_into_place(out, res["stage"], cid)
                        except OSError as exc:
                            res = dict(res, state="failed", error=f"Could not move the outputs into place: {exc}")
                    if res["state"] == "done":
                        manifest.finish(cid, "done", None, seconds=res["seconds"],
                                        pipeline_seconds=res["pipeline_seconds"], outputs=res["outputs"],
                                        findings=res["findings"], pid=res.get("pid"))
                    else:
                        manifest.finish(cid, "failed", res.get("error"), seconds=res.get("seconds"),
                                        pipeline_seconds=None, outputs=[], findings={}, pid=res.get("pid"))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{cid} {res['state']}; failed {manifest.counts()['failed']}", refresh=True)
        except KeyboardInterrupt as exc:  # Ctrl-C, or the command line's SIGTERM
            interrupted = exc
        finally:
            with _HeldSignals(redeliver=False):
                outcomes.close()  # stops the workers (and their half-written cases) before the clean-up
                if interrupted is not None:
                    for c in manifest.cases.values():
                        if c["state"] == "running":
                            manifest.finish(c["case_id"], "pending", "Interrupted by the user.")
                if bar is not None:
                    bar.close()
                _clean_leftovers(out)
                from .report import write_index_html, write_summary_csv
                ordered = manifest.ordered(ids)
                write_summary_csv(out, ordered)
                write_index_html(out, ordered, pipeline, manifest.counts())
    if interrupted is not None:
        raise BatchInterrupted(_interrupted_message(manifest, ids, out), interrupted,
                               {s: sum(1 for i in ids if manifest.cases[i]["state"] == s)
                                for s in ("done", "failed", "pending")}) from interrupted
    counts = {s: sum(1 for i in ids if manifest.cases[i]["state"] == s) for s in ("done", "failed", "pending")}
    failed = [{"case_id": i, "error": manifest.cases[i]["error"]}
              for i in ids if manifest.cases[i]["state"] == "failed"]
    return {"output": str(out), "cases": len(ids), "ran": len(todo), "skipped": len(ids) - len(todo),
            **counts, "failed_cases": failed, "seconds": round(time.perf_counter() - t0, 2),
            "manifest": str(out / "manifest.json"), "summary": str(out / "summary.csv"),
            "index": str(out / "index.html")}
