"""What runs inside a batch worker process: load the pipeline once, then process cases.

Each case is written into ``<output>/.partial-<case>-<attempt>-<pid>/`` (hidden staging folder);
the parent moves it to ``<output>/<case>/`` only when it is complete. The per-case log is
``<output>/logs/<case>.log`` (appended, one section per attempt).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

STAGE_PREFIX = ".partial-"
CASE_DELAY_ENV = "PANTHEON_BATCH_TEST_CASE_DELAY"  # seconds to pause mid-write (tests only)
_STATE = {}


def init_worker(pipeline_name: str, options: dict, threads: int, parent_pid: Optional[int] = None) -> None:
    """ProcessPool initializer: bound to the parent's life, thread count, then the model, ONCE per process.

    ``parent_pid`` (the local engine's batch process): this worker exits when that process does and
    ignores Ctrl-C, which the parent handles for the whole batch (it stops the workers itself).
    Ray actors pass none: Ray ends an actor whose driver is gone.
    """
    if parent_pid:
        die_with_parent(parent_pid)
        try:  # Ctrl-C in a terminal reaches the whole process group; only the parent acts on it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch
    torch.set_num_threads(max(1, int(threads)))
    from .pipelines import get_pipeline
    pipe = get_pipeline(pipeline_name)
    t0 = time.perf_counter()
    _STATE.clear()
    _STATE.update(pipeline=pipe, options=dict(options), threads=threads, context=None, load_error=None)
    try:
        _STATE["context"] = pipe.load(dict(options))
    except Exception as exc:  # reported per case: every case then fails with this sentence
        _STATE["load_error"] = one_sentence(exc)
    _STATE["load_seconds"] = time.perf_counter() - t0


def die_with_parent(parent_pid: int) -> None:
    """Exit when process ``parent_pid`` (the batch) exits, however it ends (kill -9, OOM killer).

    An orphaned worker would hold its RAM and GPU memory forever and race a rerun on the same case.
    Linux: the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG), immune to a wedged
    Python. Everywhere: the worker's parent watchdog thread (pantheon.worker.server.watch_parent)
    as well; Windows also puts each worker in a kill-on-close job object (runner._WindowsJobs).
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    from ..worker.server import watch_parent
    watch_parent(parent_pid, on_gone=lambda code: os._exit(1))


def one_sentence(exc: BaseException) -> str:
    from ..errors import PantheonError
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if msg and ("weights_only" in msg or "torch.load" in msg):  # never PyTorch's advice to run a file's code
        from ..models.checkpoints import without_torch_advice
        msg = without_torch_advice(msg)
    if isinstance(exc, (PantheonError, ValueError, OSError)) and msg:
        return msg
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class _Log:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")
        self.last = 0.0

    def __call__(self, msg: str) -> None:
        self.f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        self.f.flush()

    def progress(self, fraction: float, message: str = "") -> None:
        t = time.monotonic()
        if fraction >= 1.0 or t - self.last > 1.0:
            self.last = t
            self(f"  {100 * fraction:5.1f}% {message}")

    def close(self):
        self.f.close()


def is_dicom_series(path) -> bool:
    """A folder (or a single .dcm file) read as a DICOM series."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() == ".dcm"


def process_case(task: dict) -> dict:
    """Run one case; never raises for a case's own failure (returns state "failed")."""
    from ..io import read_volume
    from ..outputs import json_safe, write_result
    from ..progress import run_and_write
    out = Path(task["output"])
    cid, attempt = task["case_id"], task["attempt"]
    pipe, options = _STATE["pipeline"], _STATE["options"]
    log = _Log(out / "logs" / f"{cid}.log")
    stage = out / f"{STAGE_PREFIX}{cid}-{attempt}-{os.getpid()}"
    t0 = time.perf_counter()
    res = {"case_id": cid, "pid": os.getpid(), "attempt": attempt}
    log(f"=== case {cid}, attempt {attempt}, pipeline {pipe.name}, pid {os.getpid()}, "
        f"{_STATE['threads']} torch thread(s)")
    log(f"input: {task['input']}")
    try:
        if _STATE.get("load_error"):
            raise RuntimeError(_STATE["load_error"])
        vol = read_volume(task["input"], max_pixels=pipe.max_pixels(options))
        log(f"read: shape (K, J, I) {vol.shape}, spacing {tuple(round(s, 4) for s in vol.spacing)}, "
            f"{vol.array.dtype}, {time.perf_counter() - t0:.2f} s")
        t1 = time.perf_counter()
        run, write = run_and_write(log.progress)  # the log's 100 % is when the files are written
        result = pipe.run(vol, _STATE["context"], options, progress=run)
        pipeline_seconds = time.perf_counter() - t1
        log(f"pipeline: {pipeline_seconds:.2f} s")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        t2 = time.perf_counter()
        write_result(result, stage, task.get("format") or "nii.gz", preview=False, progress=write)
        log(f"written: {time.perf_counter() - t2:.2f} s")
        if task.get("seg_nrrd", True) and result.labels:
            from ..io.segnrrd import write_seg_nrrd
            for name, lab in result.labels.items():
                write_seg_nrrd(lab, stage / f"{name}.seg.nrrd")
        notes = []
        if result.labels and is_dicom_series(task["input"]):
            # PACS tools read DICOM SEG, not NRRD. A side output: a SEG that cannot be written is
            # skipped with a one-sentence note and never costs the case its other outputs.
            from ..export import write_dicom_seg_side_output
            for name, lab in result.labels.items():
                note = write_dicom_seg_side_output(lab, task["input"], stage / f"{name}.seg.dcm", log=log)
                if note:
                    notes.append(note)
                    log(f"note: {note}")
        delay = float(os.environ.get(CASE_DELAY_ENV) or 0)
        if delay > 0:  # test hook: widen the window in which a case is half written
            time.sleep(delay)
        findings = json_safe(pipe.findings(result))
        try:
            from .report import save_thumbnail
            save_thumbnail(vol, pipe.main_map(result), stage / "thumbnail.png")
        except Exception as exc:  # a missing picture must not fail the case
            log(f"thumbnail skipped: {one_sentence(exc)}")
        outputs = sorted(p.name for p in stage.iterdir()) + ["case.json"]
        seconds = time.perf_counter() - t0
        doc = {"case_id": cid, "input": task["input"], "attempt": attempt, "pipeline": pipe.name,
               "seconds": round(seconds, 3), "pipeline_seconds": round(pipeline_seconds, 3),
               "outputs": outputs, "findings": findings, "notes": notes}
        (stage / "case.json").write_text(json.dumps(doc, indent=1) + "\n")  # written last: marks completeness
        log(f"done in {seconds:.2f} s: {', '.join(outputs)}")
        res.update(state="done", stage=stage.name, seconds=round(seconds, 3),
                   pipeline_seconds=round(pipeline_seconds, 3), outputs=outputs, findings=findings, error=None,
                   notes=notes)
    except BaseException as exc:  # noqa: BLE001 - one case's failure is recorded, the batch goes on
        shutil.rmtree(stage, ignore_errors=True)
        msg = one_sentence(exc)
        log(f"FAILED: {msg}")
        log(traceback.format_exc().rstrip())
        res.update(state="failed", error=msg, seconds=round(time.perf_counter() - t0, 3))
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        log.close()
    return res
