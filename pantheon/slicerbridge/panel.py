"""What every Pantheon Slicer panel needs to drive the worker, below the Qt layer.

Shared by the NemesisSlicer, ToothAnalysis and PNIPredict modules (each module's ``*Lib/core.py``
holds only its own choices and parameter building): RAS/LPS, install plans for the worker's
Python, debouncing, private temp folders, the non-blocking task handle polled from the GUI
thread, and :class:`WorkerLogicMixin`, the worker/requirements half of a module's Logic.

Runs in the Slicer process: standard library only, Python 3.9 syntax, and ``slicer`` is imported
inside the few methods that need the application (never at import).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

__all__ = [
    "ras_to_lps", "lps_to_ras", "REQUIREMENT_SPECS", "TORCH_CPU_INDEX", "TORCH_CUDA_INDEX",
    "InstallStep", "InstallPlan", "install_plan", "Debouncer", "private_temp_dir", "remove_tree",
    "WorkerTask", "ThreadTask", "TaskError", "environment_text", "WorkerLogicMixin", "run_worker_python",
    "poll_task", "PanelWidgetMixin", "selftest_skip_reason", "check_device",
]

# ------------------------------------------------------------------------------------ points
def ras_to_lps(point) -> List[float]:
    """Slicer world coordinates (RAS) -> the worker's (LPS): negate x and y."""
    x, y, z = (float(v) for v in point[:3])
    return [-x, -y, z]


lps_to_ras = ras_to_lps  # the same flip both ways

# ------------------------------------------------------------------------------------ install
# Install plans live in pantheon.slicerbridge.install (requirements from pyproject.toml, torch index
# for the NVIDIA driver); re-exported here because the modules' Lib/core.py import them from panel.
from .install import (  # noqa: E402,F401
    REQUIREMENT_SPECS,
    TORCH_CPU_INDEX,
    TORCH_CUDA_INDEX,
    InstallPlan,
    InstallStep,
    detect_nvidia_driver,
    install_plan,
    torch_index_for_driver,
)


# ------------------------------------------------------------------------------------ devices
def check_device(device) -> str:
    """A device the worker understands ("auto", "cpu", "cuda", "cuda:N"), else one clear sentence."""
    text = str(device or "").strip().lower()
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N (a GPU number), got {device!r}")


# ------------------------------------------------------------------------------------ debouncing
class Debouncer:
    """Coalesce a burst of requests into one call after ``delay_s`` of quiet.

    ``request(value)`` stores the newest value; ``due(now)`` says whether it should run now;
    ``take()`` returns it and clears. Time comes from ``clock`` so tests need not sleep.
    """

    def __init__(self, delay_s: float = 0.3, clock: Callable[[], float] = time.monotonic):
        self.delay_s, self.clock = float(delay_s), clock
        self._value, self._at, self._pending = None, 0.0, False

    @property
    def pending(self) -> bool:
        return self._pending

    def request(self, value, immediate: bool = False) -> None:
        self._value, self._pending = value, True
        self._at = float("-inf") if immediate else self.clock()

    def due(self, now: Optional[float] = None) -> bool:
        now = self.clock() if now is None else now
        return self._pending and now - self._at >= self.delay_s

    def take(self):
        value, self._value, self._pending = self._value, None, False
        return value

    def cancel(self) -> None:
        self._value, self._pending = None, False

# ------------------------------------------------------------------------------------ temp files
def private_temp_dir(prefix: str = "pantheon-") -> str:
    """A fresh directory only the current user can read (mkdtemp creates it 0700)."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o700)
    return d


def remove_tree(path) -> None:
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)

# ------------------------------------------------------------------------------------ task handle
class WorkerTask:
    """A submitted worker job plus what to do with its result; polled from the GUI thread.

    ``poll()`` forwards the worker's events, and when the job is finished calls ``on_result``
    (import into the scene; must run on the main thread, which is where the widget's timer polls)
    and removes the task's private temp folder. Afterwards ``state`` is ``done``, ``failed`` or
    ``cancelled``; ``imported`` holds what ``on_result`` returned, ``error`` a dict ``kind``/``message``.
    """

    FINISHED = ("done", "failed", "cancelled")

    def __init__(self, action: str, job, temp_dir: Optional[str], on_result: Callable[[dict], object],
                 on_finish: Optional[Callable[["WorkerTask"], None]] = None, context=None):
        self.action, self.job, self.temp_dir = action, job, temp_dir
        self.on_result, self.on_finish, self.context = on_result, on_finish, context
        self.state = "running"
        self.progress = (0.0, "Queued")
        self.messages: List[str] = []
        self.imported = None
        self.result: Optional[dict] = None
        self.error: Optional[dict] = None
        self.cancel_requested = False

    @property
    def done(self) -> bool:
        return self.state in self.FINISHED

    def cancel(self) -> None:
        if not self.done and not self.cancel_requested:
            self.cancel_requested = True
            self.messages.append("Cancelling...")
            try:
                self.job.cancel()
            except Exception as exc:  # the job may have just finished
                self.messages.append(f"Cancel: {exc}")

    def poll(self) -> List[dict]:
        if self.done:
            return []
        events = list(self.job.poll() or [])
        for ev in events:
            kind = ev.get("type")
            if kind == "progress":
                self.progress = (float(ev.get("fraction", self.progress[0]) or 0.0),
                                 str(ev.get("message", "") or self.progress[1]))
            elif kind == "log":
                self.messages.append(str(ev.get("message", ev.get("line", ""))))
        if getattr(self.job, "done", False):
            self._finish()
        return events

    def _finish(self) -> None:
        try:
            state = getattr(self.job, "state", "done")
            if state == "done":
                self.result = self.job.result
                try:
                    self.imported = self.on_result(self.result)
                    self.state = "done"
                    self.progress = (1.0, "Done")
                except Exception as exc:  # import failed: report it like a worker error
                    self.state = "failed"
                    self.error = {"kind": "import", "message": f"Importing the results failed: {exc}"}
            else:
                err = getattr(self.job, "error", None) or {}
                if state == "cancelled" or err.get("kind") == "cancelled" or self.cancel_requested:
                    self.state = "cancelled"
                    self.error = {"kind": "cancelled", "message": err.get("message") or "Cancelled."}
                else:
                    self.state = "failed"
                    self.error = {"kind": err.get("kind", "internal"),
                                  "message": err.get("message", "The worker failed without a message.")}
        finally:
            remove_tree(self.temp_dir)
            if self.on_finish is not None:
                self.on_finish(self)

def poll_task(task, log: Optional[Callable[[str], None]] = None):
    """One tick of a panel's poll timer for a :class:`WorkerTask` / :class:`ThreadTask`: poll it (an
    exception while polling fails the task instead of escaping into Qt), hand its new log lines to
    ``log``; returns ``(fraction clamped to [0, 1], message)`` for the progress bar."""
    try:
        task.poll()
    except Exception as exc:  # protocol trouble: the task ends as failed, the panel stays usable
        task.state, task.error = "failed", {"kind": "internal", "message": str(exc)}
        remove_tree(getattr(task, "temp_dir", None))
    for line in task.messages:
        if log is not None:
            log(line)
    task.messages.clear()
    fraction, message = task.progress
    return max(0.0, min(1.0, float(fraction or 0.0))), str(message or "")

# ------------------------------------------------------------------------------------ messages
class TaskError(RuntimeError):
    """A job that did not finish: ``kind`` (input, checkpoint, cancelled, crashed, ...) and ``message``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message

def environment_text(env: dict) -> str:
    """The environment check in one or two sentences: interpreter, torch, the GPUs the worker can use."""
    missing = list(env.get("missing") or []) + list(env.get("outdated") or [])
    torch = env.get("torch") or "not installed"
    devices = [d for d in env.get("cuda_devices") or [] if d.get("usable", True)]
    if devices:
        gpus = "; ".join(f"{d.get('device', 'cuda')}: {d.get('name', 'GPU')}" for d in devices)
        cuda = f"GPU: {gpus}"
    else:
        cuda = {True: "CUDA available", False: "no usable GPU (jobs run on the CPU)",
                None: "CUDA unknown"}.get(env.get("cuda"), "CUDA unknown")
    text = f"Worker Python {env.get('version') or '?'} at {env.get('python') or '?'}; torch {torch}; {cuda}."
    if missing:
        text += f" Missing: {', '.join(missing)}."
    return text


class ThreadTask:
    """Runs ``fn(progress, cancel_event)`` on a background thread (no Slicer calls in ``fn``) with the
    same polling interface as :class:`WorkerTask`: the weights download, the check of the worker's
    Python with the worker's start, and installing packages. ``progress(fraction, message)``
    reports progress and ``progress.log(line)`` a log line. ``kind`` tells the panel what finished;
    with ``abandon_on_cancel`` a cancelled task ends at once (its thread runs out unheeded: e.g.
    an environment check that cannot be interrupted)."""

    FINISHED = WorkerTask.FINISHED

    def __init__(self, action: str, fn: Callable, follow_up: Optional[str] = None, kind: str = "download",
                 abandon_on_cancel: bool = False):
        import threading
        self.action, self.follow_up, self.kind = action, follow_up, kind
        self.abandon_on_cancel = abandon_on_cancel
        self.state, self.progress, self.messages = "running", (0.0, "Starting"), []
        self.imported = self.result = self.error = None
        self.cancel_requested = False
        self.context = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._pending: List[dict] = []
        self._finished: Optional[tuple] = None

        def progress(fraction, message=""):
            with self._lock:
                self._pending.append({"type": "progress", "fraction": float(fraction), "message": str(message)})

        def log(line):
            with self._lock:
                self._pending.append({"type": "log", "message": str(line)})

        progress.log = log

        def target():
            try:
                out = fn(progress, self._cancel)
                fin = ("done", out, None)
            except Exception as exc:
                cancelled = self._cancel.is_set() or type(exc).__name__ == "Cancelled"
                fin = ("cancelled" if cancelled else "failed", None,
                       {"kind": "cancelled" if cancelled else getattr(exc, "kind", kind), "message": str(exc)})
            with self._lock:
                self._finished = fin

        self._thread = threading.Thread(target=target, name=f"pantheon-{action}", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self.state in self.FINISHED

    def cancel(self) -> None:
        if not self.done:
            self.cancel_requested = True
            self._cancel.set()

    def poll(self) -> List[dict]:
        if self.done:
            return []
        with self._lock:
            events, self._pending = self._pending, []
            fin = self._finished
        for ev in events:
            if ev["type"] == "log":
                self.messages.append(ev["message"])
            else:
                self.progress = (ev["fraction"], ev["message"])
        if fin is None and self.cancel_requested and self.abandon_on_cancel:
            fin = ("cancelled", None, {"kind": "cancelled", "message": "Cancelled."})
        if fin is not None:
            self.state, self.result, self.error = fin
            self.imported = self.result
        return events

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)


class WorkerLogicMixin:
    """The worker half of a panel's Logic: one long-lived worker client (created on first use,
    never at import), the worker's Python and its missing packages, installing them with consent,
    and waiting for a task. A module's Logic inherits this next to ``ScriptedLoadableModuleLogic``,
    calls :meth:`initWorker` in ``__init__`` and sets :attr:`modelName`.
    """

    modelName = "Pantheon"
    logger = logging.getLogger("Pantheon")

    def initWorker(self, workerPython: Optional[str] = None, clientFactory=None) -> None:
        self.workerPython = workerPython  # None: Slicer's own Python
        self.clientFactory = clientFactory  # for tests; default pantheon.worker.client.WorkerClient
        self.logCallback = None
        self.confirmCallback = None  # text -> bool; default slicer.util.confirmOkCancelDisplay
        self.pipRunner = None  # command list -> return code; default subprocess (custom worker Python)
        self._client = None
        self._environment = None

    def log(self, text) -> None:
        self.logger.info(text)
        if self.logCallback is not None:
            self.logCallback(text)

    def workerPythonExecutable(self) -> Optional[str]:
        """The worker's interpreter: the chosen one, else Slicer's PythonSlicer (None outside Slicer:
        the client then uses the current interpreter)."""
        if self.workerPython:
            return self.workerPython
        import slicer
        if hasattr(slicer, "app"):
            return shutil.which("PythonSlicer") or None
        return None

    @property
    def client(self):
        if self._client is None:
            factory = self.clientFactory
            kwargs = dict(python=self.workerPythonExecutable(), log_callback=self.log)
            if factory is None:
                from pantheon.worker.client import WorkerClient
                factory = WorkerClient
                kwargs["base_env"] = self.workerBaseEnvironment()
            self._client = factory(**kwargs)
        return self._client

    def workerBaseEnvironment(self) -> dict:
        """What the worker (and pip for it) starts from: Slicer's startup environment for another
        interpreter (Slicer's launcher variables would break, e.g., a conda Python), the current one
        for Slicer's own Python."""
        from pantheon.worker.client import is_slicer_python, worker_base_environment
        custom = bool(self.workerPython) and not is_slicer_python(self.workerPython)
        return worker_base_environment(custom)

    def setWorkerPython(self, python: Optional[str]) -> None:
        """Use another interpreter for the worker (the current worker is stopped)."""
        self.workerPython = python or None
        self.shutdown()

    def shutdown(self) -> None:
        if self._client is not None:
            try:
                self._client.shutdown()
            finally:
                self._client = None
        self._environment = None

    # ------------------------------------------------------------------ requirements
    def workerEnvironment(self, refresh: bool = False) -> dict:
        """The check of the worker's Python (blocking, up to a minute: the panel runs it on a
        thread, see :meth:`prepareWorkerAsync`); cached until the Python changes or packages are
        installed."""
        if self._environment is None or refresh:
            self._environment = self.client.check_environment()
        return self._environment

    def missingRequirements(self, refresh: bool = False) -> list:
        """Packages the worker's Python lacks or has too old (e.g. ["torch", "monai"]); empty when ready."""
        env = self.workerEnvironment(refresh)
        return list(dict.fromkeys(list(env.get("missing") or []) + list(env.get("outdated") or [])))

    def environmentReady(self) -> bool:
        """The worker's Python was checked and has everything, and the worker has been started: an
        action can be submitted without waiting."""
        env = self._environment
        return bool(env is not None and env.get("ready", not env.get("missing")) and not env.get("outdated")
                    and self._client is not None and getattr(self._client, "pid", None) is not None)

    def nvidiaDriver(self) -> Optional[str]:
        """The NVIDIA driver version (from nvidia-smi, never by importing torch), checked once."""
        if getattr(self, "_nvidiaDriver", None) is None:
            try:
                self._nvidiaDriver = detect_nvidia_driver() or ""
            except Exception:  # no nvidia-smi, or it hangs: no GPU to speak of
                self._nvidiaDriver = ""
        return self._nvidiaDriver or None

    def prepareWorker(self, progress=None, cancel=None, refresh: bool = False) -> dict:
        """Blocking: check the worker's Python (once) and, when it has what the models need, start
        the worker (its handshake imports PyTorch). Returns the environment check."""
        if progress is not None:
            progress(0.05, "Checking the worker's Python...")
        env = self.workerEnvironment(refresh)
        self.nvidiaDriver()
        if cancel is not None and cancel.is_set():
            raise RuntimeError("Cancelled.")
        if env.get("ready", not env.get("missing")) and not env.get("outdated"):
            if progress is not None:
                progress(0.5, "Starting the worker (loading PyTorch)...")
            self.client.ping()
        return env

    def prepareWorkerAsync(self, followUp: Optional[str] = None, refresh: bool = False) -> "ThreadTask":
        """:meth:`prepareWorker` on a thread; the panel polls it (progress, Cancel) and then runs
        ``followUp``."""
        return ThreadTask(followUp or "environment",
                          lambda progress, cancel: self.prepareWorker(progress, cancel, refresh),
                          followUp, kind="prepare", abandon_on_cancel=True)

    def installPlan(self, missing=None, cuda: Optional[bool] = None) -> InstallPlan:
        """What installing ``missing`` means: torch from the index that fits this machine's GPU
        driver (CPU when the user chose the CPU or there is no usable driver), the rest from PyPI."""
        missing = self.missingRequirements() if missing is None else missing
        driver = self.nvidiaDriver()
        if cuda is None:
            device = str(self._parameterNodeValue("device") or "auto")
            cuda = bool(driver) and device != "cpu"
        return install_plan(missing, python=self.workerPython, cuda=cuda, have_pytorch_extension=False,
                            model=self.modelName, driver_version=driver)

    def ensureRequirements(self, confirm=None, cuda: Optional[bool] = None) -> bool:
        """Blocking (scripts and the Python console): True when the worker's Python has what the
        models need; otherwise say what will be installed and where, ask, and install only if the
        user agrees. The panel does the same without blocking (:meth:`prepareWorkerAsync`,
        :meth:`installAsync`). Never called at import time."""
        missing = self.missingRequirements()
        if not missing:
            return True
        plan = self.installPlan(missing, cuda)
        if confirm is None:
            confirm = self.confirmCallback
        if confirm is None:
            import slicer
            title = f"Install {self.modelName} requirements"
            confirm = lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle=title)  # noqa: E731
        if not confirm(plan.describe()):
            self.log("Installation declined: " + ", ".join(plan.requirements))
            return False
        self.installRequirements(plan)
        self.shutdown()  # the next job starts a fresh worker that sees the new packages
        return not self.missingRequirements(refresh=True)

    def installRequirements(self, plan, log=None, cancel=None) -> None:
        """pip-install ``plan`` into the worker's Python (``python -m pip``: Slicer's PythonSlicer
        or the chosen interpreter), one step at a time, each line of pip's output to ``log``."""
        python = plan.python or self.workerPythonExecutable() or sys.executable
        for step in plan.steps:
            self.log(f"Installing {', '.join(step.requirements)} into {plan.target}...")
            cmd = step.pip_command(python)
            code = (self.pipRunner or (lambda c: self._runPip(c, log, cancel)))(cmd)
            if cancel is not None and cancel.is_set():
                raise RuntimeError("Installation cancelled; what pip had finished stays installed.")
            if code != 0:
                raise RuntimeError(f"pip failed (exit code {code}) installing {', '.join(step.requirements)}; "
                                   "see the log.")

    def installAsync(self, plan, followUp: Optional[str] = None) -> "ThreadTask":
        """:meth:`installRequirements` on a thread, its output in the panel's log, Cancel stops pip."""
        def run(progress, cancel):
            progress(0.02, "Installing " + ", ".join(plan.requirements) + "...")
            self.installRequirements(plan, log=progress.log, cancel=cancel)
            return plan.requirements
        return ThreadTask(followUp or "install", run, followUp, kind="install")

    def _runPip(self, cmd, log=None, cancel=None) -> int:
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.workerBaseEnvironment(), creationflags=flags)
        for line in proc.stdout:
            (log or self.log)(line.rstrip())
            if cancel is not None and cancel.is_set():
                proc.kill()
                break
        return proc.wait()

    def _parameterNodeValue(self, name):
        try:
            return getattr(self.getParameterNode(), name)
        except Exception:
            return None

    # ------------------------------------------------------------------ running jobs
    def startJob(self, action: str, pipeline: str, params: dict, inputs: Dict[str, str], temp_dir: str,
                 on_result: Callable[[dict], object], context=None) -> WorkerTask:
        """Submit ``pipeline`` with files already written under ``temp_dir`` (removed when the task
        ends, or now if submitting fails); returns the task to poll."""
        try:
            job = self.client.submit(pipeline, params, inputs, output_dir=os.path.join(temp_dir, "output"))
        except Exception:
            remove_tree(temp_dir)
            raise
        self.log(f"Started {action} ({pipeline})")
        return WorkerTask(action, job, temp_dir, on_result, context=context)

    def wait(self, task, progress=None, cancel=None, timeout: Optional[float] = None, interval: float = 0.05):
        """Poll ``task`` until it ends; raise :class:`TaskError` on failure, return what was imported."""
        start = time.monotonic()
        while not task.done:
            task.poll()
            for line in task.messages:
                self.log(line)
            task.messages.clear()
            if progress is not None:
                progress(*task.progress)
            if cancel is not None and cancel():
                task.cancel()
            if timeout is not None and time.monotonic() - start > timeout and not task.cancel_requested:
                task.cancel()
            if not task.done:
                time.sleep(interval)
        if task.state != "done":
            raise TaskError(task.error.get("kind", "internal"), task.error.get("message", ""))
        return task.imported


def run_worker_python(script: str, args: Sequence[str], python: Optional[str] = None, env: Optional[dict] = None,
                      timeout: float = 300.0, what: str = "The worker script") -> str:
    """Run ``script`` (Python source) with the worker's interpreter and return its stdout.

    The panels' self-tests make their phantoms this way: the Slicer process itself never imports
    pantheon.synth (numpy/scipy models code belongs to the worker's Python).
    """
    cmd = [python or sys.executable, "-c", script, *[str(a) for a in args]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


# ------------------------------------------------------------------------------------ widget half
class PanelWidgetMixin:
    """The Qt-free half of a panel widget: the idle/running/cancelling state machine of its action
    buttons (Apply becomes Cancel while its task runs), polling the task from the widget's timer,
    the log box and error label, the worker-Python choice and the environment check, and the
    parameter node's binding and its weights / paths / device widgets.

    It only reads and writes attributes of the widgets (``text``, ``enabled``, ``visible``, ...), so
    it needs no ``qt`` import; the module's widget creates the ``QTimer``. The widget class lists it
    before ``ScriptedLoadableModuleWidget`` and provides:

    - ``self.ui`` with ``progressBar``, ``statusLabel``, ``errorLabel``, ``logTextEdit`` and, when it
      has them, ``checkEnvironmentButton``, ``environmentLabel``, ``workerCustomPythonRadioButton``,
      ``workerPythonLineEdit``; ``self.logic`` (a :class:`WorkerLogicMixin`); ``self.timer``;
    - ``self.actionButtons`` {action: button} and ``self.buttonTexts`` {action: idle text};
    - ``_canRun(action) -> bool``, ``startAction(action) -> task``, ``setParameterNode(node)`` (usually
      :meth:`bindParameterNode` + :meth:`syncSettingsWidgets`), and optionally ``onTaskDone(task)``
      (success) / ``onTaskEnded(task)`` (any outcome, after the state is idle) / ``onIdlePoll()``
      (timer ticks without a task).

    Call :meth:`initPanelState` in ``__init__``, :meth:`connectPanel` and :meth:`connectSettings` in
    ``setup``; ``initializeParameterNode``, ``cleanup``, ``enter``, ``exit`` and the scene-close
    handlers are provided.
    """

    panelTitle = "Pantheon"
    LOG_LIMIT = 200000  # characters kept in the log box
    POLL_MS = 100
    acceptLabelMapInput = True  # initializeParameterNode may pick a label map as the input volume
    WEIGHTS_FILE = "file"  # the weights choice that enables the weights path line edits

    def initPanelState(self) -> None:
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False  # True while parameter values are written into the widgets
        self.task = None
        self.state = "idle"  # idle | running | cancelling
        self.timer = None
        self.actionButtons: Dict[str, object] = {}
        self.buttonTexts: Dict[str, str] = {}
        self.weightsRadioButtons: Dict[str, object] = {}  # weights choice -> radio button (first: default)
        self.pathEdits: Dict[str, object] = {}  # parameter node field -> path line edit
        self.weightsFileEdits: Sequence[object] = ()  # enabled only with the file weights choice

    def connectPanel(self, timer, scene, singleShot=None) -> None:
        """Wire what every panel has, after ``self.actionButtons`` is set: each action button ->
        :meth:`onActionButton` (its idle text is remembered), the environment / clear-log buttons and
        the worker-Python radio button when the .ui has them, ``timer`` (a ``qt.QTimer``) -> :meth:`onPoll`
        every :attr:`POLL_MS`, the scene's close events (the widget must be a VTKObservationMixin) and,
        with ``singleShot`` (``qt.QTimer.singleShot``), added nodes: a volume loaded while the panel
        has no input becomes its input when it is one the panel can use."""
        self.buttonTexts = {action: button.text for action, button in self.actionButtons.items()}
        for action, button in self.actionButtons.items():
            button.connect("clicked(bool)", lambda checked=False, a=action: self.onActionButton(a))
        ui = self.ui
        if hasattr(ui, "checkEnvironmentButton"):
            ui.checkEnvironmentButton.connect("clicked(bool)", self.onCheckEnvironment)
        if hasattr(ui, "clearLogButton"):
            ui.clearLogButton.connect("clicked(bool)", lambda checked=False: ui.logTextEdit.clear())
        if hasattr(ui, "workerSlicerPythonRadioButton"):
            ui.workerSlicerPythonRadioButton.connect("toggled(bool)", self.onWorkerPythonChoiceChanged)
        self.timer = timer
        timer.setInterval(self.POLL_MS)
        timer.connect("timeout()", self.onPoll)
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneEndClose)
        if singleShot is not None:
            # a reader adds the node before it has read the image: look once the event loop is back
            self.addObserver(scene, scene.NodeAddedEvent,
                             lambda caller, event: singleShot(0, self.pickInputIfNone))

    def pickInputIfNone(self) -> None:
        """Choose the scene's first usable volume as the input when none is chosen (e.g. the sample
        data a presenter just loaded)."""
        p = self._parameterNode
        if p is None or p.inputVolume or self.task is not None:
            return
        node = self.firstUsableInput()
        if node is not None:
            p.inputVolume = node

    def connectSettings(self, devices, weights: Dict[str, object], paths: Dict[str, object],
                        fileEdits: Optional[Sequence[object]] = None) -> None:
        """Wire the "Weights and device" widgets to the parameter node: fill the device combo box with
        ``devices``; ``weights`` {choice: radio button} (the first choice is the default),
        ``paths`` {parameter node field: path line edit}, ``fileEdits`` the line edits enabled only
        with the file choice (default: all of ``paths``). The worker-Python line edit is wired too."""
        ui = self.ui
        self.weightsRadioButtons, self.pathEdits = dict(weights), dict(paths)
        self.weightsFileEdits = tuple(self.pathEdits.values() if fileEdits is None else fileEdits)
        ui.deviceComboBox.clear()
        for device in devices:
            ui.deviceComboBox.addItem(device)
        for button in self.weightsRadioButtons.values():
            button.connect("toggled(bool)", self.onWeightsChoiceChanged)
        for edit in list(self.pathEdits.values()) + [ui.workerPythonLineEdit]:
            edit.connect("currentPathChanged(QString)", self.onPathsChanged)
        ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)

    # ------------------------------------------------------------------ module life cycle
    def cleanup(self) -> None:
        self.removeObservers()
        if self.timer is not None:
            self.timer.stop()
        if getattr(self, "logic", None) is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        node, tag = getattr(self, "_parameterNode", None), getattr(self, "_parameterNodeGuiTag", None)
        if node is not None and tag is not None:
            node.disconnectGui(tag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller=None, event=None) -> None:
        if self.task is not None:
            self.task.cancel()
        self.setParameterNode(None)
        self.updateButtons()  # nothing to run on until a scene is there again

    def onSceneEndClose(self, caller=None, event=None) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.updateButtons()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        """Bind the logic's parameter node; an empty ``inputVolume`` gets the scene's first volume
        this panel can use (:meth:`inputProblem` is None for it)."""
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            node = self.firstUsableInput()
            if node is not None:
                p.inputVolume = node

    def firstUsableInput(self):
        """The scene's first volume this panel can use as its input (None if there is none)."""
        import slicer
        scene = slicer.mrmlScene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLVolumeNode")
            if self.isInputType(node) and self.inputProblem(node) is None:
                return node
        return None

    def isInputType(self, node) -> bool:
        """``node`` is of a class the input selector offers (a scalar volume; a label map only with
        :attr:`acceptLabelMapInput`)."""
        return bool(node is not None and node.IsA("vtkMRMLScalarVolumeNode")
                    and (self.acceptLabelMapInput or not node.IsA("vtkMRMLLabelMapVolumeNode")))

    def inputProblem(self, node) -> Optional[str]:
        """Why ``node`` cannot be this panel's input, in one sentence (None when it can). The
        module overrides this (e.g. a 2D X-ray panel refuses a CT)."""
        if node is not None and node.GetImageData() is None:
            return f"{node.GetName()} has no image data."
        return None

    def bindParameterNode(self, node, observe: bool = True) -> bool:
        """The common half of ``setParameterNode``: disconnect the old node from the GUI, connect
        ``node`` (with ``observe``: :meth:`updateButtons` on each of its changes); True when a node is bound."""
        old = self._parameterNode
        if old is not None:
            if self._parameterNodeGuiTag is not None:
                old.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            if observe:
                import vtk
                self.removeObserver(old, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = node
        if node is None:
            return False
        self._parameterNodeGuiTag = node.connectGui(self.ui)
        if observe:
            import vtk
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        return True

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """The bound parameter node changed (through a widget, a script or a scene reload):
        :meth:`parameterNodeChanged`, then the buttons.

        A module reacts to its inputs here, not in a slot on a bound widget's signal: such a slot
        is connected before ``connectGui``, so it runs while the node still holds the previous
        value, and anything it writes to the node makes the wrapper write that previous value back
        into the widget the user just changed."""
        if getattr(self, "_inParameterChange", False):
            return
        self._inParameterChange = True
        try:
            self.parameterNodeChanged()
        finally:
            self._inParameterChange = False
        self.updateButtons()

    def parameterNodeChanged(self) -> None:  # the module overrides this
        pass

    def syncSettingsWidgets(self) -> None:
        """Show the bound parameter node's weights choice, paths, worker Python and device in the
        widgets of :meth:`connectSettings`. Every value is read first: each widget update fires a
        handler that writes back."""
        p, ui = self._parameterNode, self.ui
        choice = p.weightsChoice
        paths = {name: getattr(p, name) or "" for name in self.pathEdits}
        python, device = p.workerPython or "", p.device or "auto"
        self._updatingGui = True
        try:
            for name, edit in self.pathEdits.items():
                edit.currentPath = paths[name]
            ui.workerPythonLineEdit.currentPath = python
            ui.workerSlicerPythonRadioButton.checked = not python
            ui.workerCustomPythonRadioButton.checked = bool(python)
            if ui.deviceComboBox.findText(device) < 0:  # e.g. cuda:1 saved with the scene
                ui.deviceComboBox.addItem(device)
            ui.deviceComboBox.setCurrentText(device)
        finally:
            self._updatingGui = False
        for value, button in self.weightsRadioButtons.items():
            button.checked = choice == value
        self.onWeightsChoiceChanged()
        self.onWorkerPythonChoiceChanged()

    def onWeightsChoiceChanged(self, checked=True) -> None:
        p = self._parameterNode
        if p is None:
            return
        choices = list(self.weightsRadioButtons)
        chosen = [c for c in choices[1:] if self.weightsRadioButtons[c].checked]
        p.weightsChoice = chosen[0] if chosen else choices[0]
        fileButton = self.weightsRadioButtons.get(self.WEIGHTS_FILE)
        fromFiles = bool(fileButton is not None and fileButton.checked)
        for edit in self.weightsFileEdits:
            edit.enabled = fromFiles

    def onPathsChanged(self, path="") -> None:
        p = self._parameterNode
        if p is None or self._updatingGui:
            return
        for name, edit in self.pathEdits.items():
            setattr(p, name, edit.currentPath)
        self.onWorkerPythonChoiceChanged()

    def onDeviceChanged(self, index=0) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.device = self.ui.deviceComboBox.currentText or "auto"

    @staticmethod
    def tr(text: str) -> str:
        try:
            from slicer.i18n import tr
        except ImportError:
            return text
        return tr(text)

    # ------------------------------------------------------------------ log and errors
    def appendLog(self, text) -> None:
        if getattr(self, "ui", None) is None:
            return
        box = self.ui.logTextEdit
        box.appendPlainText(str(text))
        if len(box.toPlainText()) > self.LOG_LIMIT:
            box.setPlainText(box.toPlainText()[-self.LOG_LIMIT // 2:])

    def showError(self, message, popup: bool = False) -> None:
        self.ui.errorLabel.text = message
        self.ui.errorLabel.visible = bool(message)
        if message:
            self.appendLog("ERROR: " + message)
            if popup:
                import slicer
                slicer.util.errorDisplay(message, windowTitle=self.panelTitle)

    # ------------------------------------------------------------------ state machine
    def setState(self, state: str) -> None:
        self.state = state
        self.updateButtons()

    def updateButtons(self, *args) -> None:
        running = self.task is not None
        for action, button in self.actionButtons.items():
            mine = running and self.task.action == action
            if mine:
                button.text = self.tr("Cancelling...") if self.state == "cancelling" else self.tr("Cancel")
            else:
                button.text = self.buttonTexts[action]
            button.enabled = (mine and self.state == "running") or (not running and bool(self._canRun(action)))
        if hasattr(self.ui, "checkEnvironmentButton"):
            self.ui.checkEnvironmentButton.enabled = not running
        self.ui.progressBar.visible = running
        if not running:
            self.showInputHint()

    def showInputHint(self) -> None:
        """While idle, the status line says why the chosen input cannot be used (a disabled button
        alone does not tell the user anything); the hint goes when the input is fixed."""
        p = self._parameterNode
        node = getattr(p, "inputVolume", None) if p is not None else None
        hint = self.inputProblem(node) if node is not None else None
        shown = getattr(self, "_inputHint", None)
        if hint:
            self.ui.statusLabel.text = hint
        elif shown and self.ui.statusLabel.text == shown:
            self.ui.statusLabel.text = self.tr("Idle")
        self._inputHint = hint

    def _canRun(self, action) -> bool:  # the module overrides this
        return True

    def noteLine(self, key, value) -> Optional[str]:
        """The log line for one note of a result (a module words structured notes; None: skip it)."""
        return f"{key}: {value}"

    def onActionButton(self, action) -> None:
        """Apply (start ``action``) or, while that action runs, Cancel.

        Nothing long runs on the GUI thread: the first time, the worker's Python is checked and the
        worker started on a thread (progress and Cancel in the panel); missing packages are offered
        for installation (asked before anything waits), installed on a thread, and then the
        action runs."""
        if self.task is not None:
            if self.task.action == action and self.state == "running":
                self.task.cancel()
                self.setState("cancelling")
            return
        self.showError("")
        if not self.logic.environmentReady():
            self.track(self.logic.prepareWorkerAsync(followUp=action))
            return
        self.runAction(action)

    def runAction(self, action) -> None:
        """Ask what the action needs answered (:meth:`confirmAction`, no wait cursor over a question),
        then export the inputs and submit the job under the wait cursor."""
        import slicer
        try:
            if not self.confirmAction(action):
                return
            with slicer.util.tryWithErrorDisplay(self.tr(f"{self.panelTitle} could not start."), waitCursor=True):
                task = self.startAction(action)
        except Exception as exc:
            self.showError(str(exc))
            return
        if task is not None:
            self.track(task)

    def confirmAction(self, action) -> bool:
        """Questions to ask before ``action`` starts (the module overrides this); False: run nothing."""
        return True

    def track(self, task) -> None:
        self.task = task
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = self.tr("Starting...")
        self.setState("running")
        self.timer.start()

    def onIdlePoll(self) -> bool:
        """A timer tick without a task (the module may start one and :meth:`track` it); True keeps
        the timer running."""
        return False

    def onPoll(self) -> None:
        if self.task is None:
            if not self.onIdlePoll():
                self.timer.stop()
            return
        fraction, message = poll_task(self.task, self.appendLog)
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        if self.task.done:
            self.timer.stop()
            self.onTaskFinished(self.task)

    def onTaskFinished(self, task) -> None:
        self.task = None
        self.setState("idle")
        if getattr(task, "kind", None) in ("prepare", "install"):
            self.onPreparationFinished(task)
            return
        if task.state == "done":
            self.ui.statusLabel.text = self.tr("Done: {action}").format(action=task.action)
            notes = getattr(task.imported, "notes", None)
            if notes is None and isinstance(task.imported, dict):
                notes = task.imported.get("notes")
            for key, value in (notes or {}).items():
                line = self.noteLine(key, value)
                if line:
                    self.appendLog(line)
            if hasattr(self, "onTaskDone"):
                self.onTaskDone(task)
        elif task.state == "cancelled":
            self.ui.statusLabel.text = self.tr("Cancelled")
        else:
            self.ui.statusLabel.text = self.tr("Failed")
            self.showError((task.error or {}).get("message", ""), popup=True)
        if hasattr(self, "onTaskEnded"):
            self.onTaskEnded(task)

    # ------------------------------------------------------------------ worker Python and environment
    def onWorkerPythonChoiceChanged(self, checked=True) -> None:
        p = getattr(self, "_parameterNode", None)
        if p is None:
            return
        custom = self.ui.workerCustomPythonRadioButton.checked
        self.ui.workerPythonLineEdit.enabled = custom
        python = self.ui.workerPythonLineEdit.currentPath if custom else ""
        if python != p.workerPython:
            p.workerPython = python
        if (python or None) != self.logic.workerPython and self.task is None:
            self.logic.setWorkerPython(python or None)

    def onCheckEnvironment(self, checked=False) -> None:
        """Check the worker's Python again, on a thread (the result shows under the button)."""
        if self.task is not None:
            return
        self.showError("")
        self.track(self.logic.prepareWorkerAsync(refresh=True))

    def onPreparationFinished(self, task) -> None:
        """The check of the worker's Python (and the worker's start) or an installation ended:
        offer to install what is missing, or run the action it was for."""
        import slicer
        if task.state == "cancelled":
            self.ui.statusLabel.text = self.tr("Cancelled")
            return
        if task.state != "done":
            self.ui.statusLabel.text = self.tr("Failed")
            self.showError((task.error or {}).get("message", ""), popup=True)
            return
        if task.kind == "install":
            self.appendLog(self.tr("Installed: {what}").format(what=", ".join(task.result or [])))
            self.logic.shutdown()  # a fresh worker sees the new packages
            self.track(self.logic.prepareWorkerAsync(followUp=task.follow_up))
            return
        env = task.result or {}
        self.showEnvironment(env)
        if env.get("missing") == ["python"] or (env.get("error") and not env.get("missing")):
            self.ui.statusLabel.text = self.tr("Failed")
            self.showError(env.get("error") or self.tr("The worker's Python cannot be used."))
            return
        missing = list(dict.fromkeys(list(env.get("missing") or []) + list(env.get("outdated") or [])))
        if missing:
            plan = self.logic.installPlan(missing)
            if not slicer.util.confirmOkCancelDisplay(plan.describe(),
                                                      windowTitle=f"Install {self.logic.modelName} requirements"):
                self.logic.log("Installation declined: " + ", ".join(plan.requirements))
                self.ui.statusLabel.text = self.tr("Idle")
                self.showError(self.tr("The worker's Python lacks {what}; nothing was run.").format(
                    what=", ".join(missing)))
                return
            self.track(self.logic.installAsync(plan, followUp=task.follow_up))
            return
        broken = env.get("broken") or {}
        if broken:
            self.showError(" ".join(str(v) for v in broken.values()))
            return
        self.ui.statusLabel.text = self.tr("Idle")
        if task.follow_up:
            self.runAction(task.follow_up)

    def showEnvironment(self, env) -> None:
        """What the check found, under the environment button and in the log; a GPU the worker
        cannot use is said before jobs silently run on the CPU."""
        from .install import cuda_advice
        text = environment_text(env)
        advice = cuda_advice(env, self.logic.nvidiaDriver())
        if advice:
            text += " " + advice
        if hasattr(self.ui, "environmentLabel"):
            self.ui.environmentLabel.text = text
        self.appendLog(text)
        from pantheon.worker.requirements import device_choices
        self.offerDevices(device_choices(env))

    def offerDevices(self, devices) -> None:
        """The device list: auto, cpu and each GPU the worker's PyTorch can use (cuda:0, cuda:1...);
        the chosen device stays chosen (and listed) even if it is not among them."""
        combo = self.ui.deviceComboBox
        current = ((self._parameterNode.device if self._parameterNode is not None else None)
                   or combo.currentText or "auto")
        items = list(dict.fromkeys(list(devices) + [current]))
        self._updatingGui = True
        try:
            combo.clear()
            for device in items:
                combo.addItem(device)
            combo.setCurrentText(current)
        finally:
            self._updatingGui = False


# ------------------------------------------------------------------------------------ self-tests
SELFTEST_REQUIRE_WORKER_ENV = "PANTHEON_SELFTEST_REQUIRE_WORKER"


def selftest_skip_reason(logic, scene) -> Optional[str]:
    """Why a panel self-test skips its end-to-end part, in words (None: run it).

    Skipped without a real MRML scene (stand-ins) or when the worker's Python lacks packages; with
    ``PANTHEON_SELFTEST_REQUIRE_WORKER=1`` missing packages fail the test instead of skipping it.
    """
    if not isinstance(getattr(scene, "GetNumberOfNodes", lambda: None)(), int):
        return "No MRML scene here: end-to-end test skipped"
    missing = logic.missingRequirements()
    if missing and os.environ.get(SELFTEST_REQUIRE_WORKER_ENV) != "1":
        return f"The worker's Python lacks {', '.join(missing)}: end-to-end test skipped"
    if missing:
        raise AssertionError(f"The worker's Python lacks {', '.join(missing)} ({SELFTEST_REQUIRE_WORKER_ENV}=1).")
    return None
