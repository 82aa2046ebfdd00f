"""Pure-Python pieces of NemesisSlicer: choices, parameter building, RAS/LPS, install plans,
debouncing and the non-blocking task handle.

No ``slicer``, ``qt``, ``vtk`` or ``torch`` import happens here, so this file is unit-tested in a
plain Python; the module file passes the Slicer-specific callables in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

__all__ = [
    "ACTIONS", "ORGANS", "ORGAN_NAMES", "DEVICES", "PRECISIONS",
    "WEIGHTS_DEMO", "WEIGHTS_OFFICIAL", "WEIGHTS_FILE", "WEIGHTS_CHOICES",
    "DEMO_CARD", "DEMO_PROBE_CARD", "OFFICIAL_CARD", "OFFICIAL_SIZE_TEXT",
    "ras_to_lps", "lps_to_ras", "weights_params", "probe_params", "build_params",
    "REQUIREMENT_SPECS", "TORCH_CPU_INDEX", "TORCH_CUDA_INDEX", "InstallStep", "InstallPlan",
    "install_plan", "Debouncer", "NemesisTask", "private_temp_dir", "remove_tree",
    "PHANTOM_SCRIPT", "make_phantom_files", "TaskError", "metrics_text", "environment_text",
    "probe_path_from_result", "ThreadTask",
]

# ------------------------------------------------------------------------------------ choices
# UI action -> worker pipeline.
ACTIONS: Dict[str, str] = {
    "features": "nemesis.features",
    "organs": "nemesis.organs",
    "pca": "nemesis.pca",
    "similarity": "nemesis.similarity",
    "reconstruct": "nemesis.reconstruct",
    "train_probe": "nemesis.train_probe",
}

# BTCV organs of the NEMESIS organ probe (same order and names as
# pantheon.models.nemesis.probe.BTCV_ORGANS, which needs torch and is not imported here),
# with the name of the check box that selects each one in the panel.
ORGANS = [
    ("aorta", "organAortaCheckBox"),
    ("gallbladder", "organGallbladderCheckBox"),
    ("spleen", "organSpleenCheckBox"),
    ("left kidney", "organLeftKidneyCheckBox"),
    ("right kidney", "organRightKidneyCheckBox"),
    ("liver", "organLiverCheckBox"),
    ("stomach", "organStomachCheckBox"),
    ("pancreas", "organPancreasCheckBox"),
]
ORGAN_NAMES = [name for name, _ in ORGANS]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")

WEIGHTS_DEMO = "demo"
WEIGHTS_OFFICIAL = "official"
WEIGHTS_FILE = "file"
WEIGHTS_CHOICES = (WEIGHTS_DEMO, WEIGHTS_OFFICIAL, WEIGHTS_FILE)

DEMO_CARD = "nemesis-demo"
DEMO_PROBE_CARD = "nemesis-demo-probe"
OFFICIAL_CARD = "nemesis-mae-768"
OFFICIAL_SIZE_TEXT = "about 1.3 GB"


# ------------------------------------------------------------------------------------ points
def ras_to_lps(point) -> List[float]:
    """Slicer world coordinates (RAS) -> the worker's (LPS): negate x and y."""
    x, y, z = (float(v) for v in point[:3])
    return [-x, -y, z]


lps_to_ras = ras_to_lps  # the same flip both ways


# ------------------------------------------------------------------------------------ params
def weights_params(choice: str, path: Optional[str] = None, allow_download: bool = False) -> Dict[str, object]:
    """Map the panel's weights choice to worker parameters.

    ``demo`` -> the bundled demo encoder card; ``official`` -> the published NEMESIS checkpoint card,
    downloadable only when ``allow_download`` (the user agreed; its sha256 is not published, so the
    computed checksum is recorded next to the cached file: ``trust_unverified``); ``file`` -> a local
    checkpoint path, which must exist.
    """
    choice = (choice or WEIGHTS_DEMO).lower()
    if choice == WEIGHTS_DEMO:
        return {"weights": DEMO_CARD}
    if choice == WEIGHTS_OFFICIAL:
        out: Dict[str, object] = {"weights": OFFICIAL_CARD}
        if allow_download:
            out.update(allow_download=True, trust_unverified=True)
        return out
    if choice == WEIGHTS_FILE:
        if not path or not str(path).strip():
            raise ValueError("Choose a NEMESIS checkpoint file (weights: file).")
        p = os.path.abspath(os.path.expanduser(str(path).strip()))
        if not os.path.isfile(p):
            raise ValueError(f"The checkpoint file {p} does not exist.")
        return {"weights": p}
    raise ValueError(f"Unknown weights choice {choice!r}; use one of {', '.join(WEIGHTS_CHOICES)}.")


def probe_params(path: Optional[str]) -> Dict[str, object]:
    """Organ probe: a trained probe file, or (empty) the demo probe that matches the demo encoder."""
    if path and str(path).strip():
        p = os.path.abspath(os.path.expanduser(str(path).strip()))
        if not os.path.isfile(p):
            raise ValueError(f"The probe file {p} does not exist.")
        return {"probe": p}
    return {"probe": DEMO_PROBE_CARD}


def build_params(action: str, *, weights: Optional[Dict[str, object]] = None, device: str = "auto",
                 precision: str = "fp32", stride: Optional[int] = None, organs: Optional[Sequence[str]] = None,
                 probe: Optional[str] = None, point_lps=None, mask_ratio=(0.5, 0.5), noise_std: float = 0.0,
                 seed: int = 0, **extra) -> Dict[str, object]:
    """Worker parameters for one action (only the keys that pipeline takes)."""
    if action not in ACTIONS:
        raise ValueError(f"Unknown action {action!r}; use one of {', '.join(ACTIONS)}.")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    params: Dict[str, object] = dict(weights or {"weights": DEMO_CARD})
    params["device"] = device
    if action != "train_probe":
        params["precision"] = precision
    if stride and action in ("features", "organs", "pca", "similarity"):
        params["stride"] = int(stride)
    if action == "organs":
        chosen = list(organs) if organs else list(ORGAN_NAMES)
        unknown = [o for o in chosen if o not in ORGAN_NAMES]
        if unknown:
            raise ValueError(f"Unknown organ(s) {', '.join(unknown)}; choose from {', '.join(ORGAN_NAMES)}.")
        params["organs"] = chosen
        params.update(probe_params(probe))
    if action in ("similarity", "reconstruct"):
        if point_lps is None:
            raise ValueError(f"{action} needs a point (LPS mm).")
        params["point_lps"] = [float(v) for v in point_lps[:3]]
    if action == "reconstruct":
        plane, axis = (float(v) for v in mask_ratio)
        for v in (plane, axis):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"mask ratios must be in [0, 1), got {mask_ratio}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        params.update(mask_ratio=[plane, axis], noise_std=float(noise_std), seed=int(seed))
    params.update({k: v for k, v in extra.items() if v is not None})
    return params


# ------------------------------------------------------------------------------------ install
REQUIREMENT_SPECS = {
    "torch": "torch>=2.1",
    "monai": "monai>=1.3",
    "numpy": "numpy>=1.24",
    "SimpleITK": "SimpleITK>=2.3",
    "simpleitk": "SimpleITK>=2.3",
    "nibabel": "nibabel>=5.0",
    "safetensors": "safetensors>=0.4",
    "scikit-learn": "scikit-learn>=1.3",
    "sklearn": "scikit-learn>=1.3",
    "pillow": "pillow>=10.0",
    "PIL": "pillow>=10.0",
    "tqdm": "tqdm>=4.60",
    "scipy": "scipy",
    "pynrrd": "pynrrd>=1.0",
    "nrrd": "pynrrd>=1.0",
}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"  # Windows: PyPI torch is CPU-only


@dataclass
class InstallStep:
    requirements: List[str]
    via: str = "pip"  # "pip" (slicer.util.pip_install / python -m pip) or "pytorchutils"
    pip_args: List[str] = field(default_factory=list)  # e.g. ["--index-url", TORCH_CPU_INDEX]

    def pip_command(self, python: str) -> List[str]:
        return [python, "-m", "pip", "install", *self.requirements, *self.pip_args]


@dataclass
class InstallPlan:
    steps: List[InstallStep]
    target: str  # where it goes, in words
    python: Optional[str]  # None: Slicer's own Python

    @property
    def requirements(self) -> List[str]:
        return [r for s in self.steps for r in s.requirements]

    def describe(self) -> str:
        lines = [f"NEMESIS runs in a separate worker process. Its Python ({self.target}) lacks "
                 "packages it needs. These will be installed there:", ""]
        for s in self.steps:
            how = "with the PyTorch extension (it picks the build for your GPU driver)" if s.via == "pytorchutils" \
                else ("with pip " + " ".join(s.pip_args)).strip()
            lines.append(f"  - {', '.join(s.requirements)} ({how})")
        lines += ["", "This downloads several hundred MB to a few GB and can take minutes. "
                  "Nothing is installed into Slicer itself unless the worker uses Slicer's own Python.",
                  "Install now?"]
        return "\n".join(lines)


def install_plan(missing: Sequence[str], python: Optional[str] = None, cuda: bool = False,
                 have_pytorch_extension: bool = False, platform: str = sys.platform) -> InstallPlan:
    """What to install for ``missing`` package names, and how.

    torch is installed on its own: through the PyTorch extension when the worker is Slicer's own
    Python and the extension is present; otherwise with pip, pinned to the CPU wheel index unless a
    CUDA build is wanted (PyPI's Linux torch is the CUDA build; on Windows PyPI has only CPU wheels).
    """
    missing = list(dict.fromkeys(missing))
    steps: List[InstallStep] = []
    if "torch" in missing:
        if python is None and have_pytorch_extension:
            steps.append(InstallStep([REQUIREMENT_SPECS["torch"]], via="pytorchutils"))
        elif not cuda:
            args = [] if platform == "darwin" else ["--index-url", TORCH_CPU_INDEX]
            steps.append(InstallStep([REQUIREMENT_SPECS["torch"]], pip_args=args))
        else:
            args = ["--index-url", TORCH_CUDA_INDEX] if platform.startswith("win") else []
            steps.append(InstallStep([REQUIREMENT_SPECS["torch"]], pip_args=args))
    rest = [REQUIREMENT_SPECS.get(m, m) for m in missing if m != "torch"]
    if rest:
        steps.append(InstallStep(list(dict.fromkeys(rest))))
    target = "Slicer's own Python" if python is None else f"the Python at {python}"
    return InstallPlan(steps, target, python)


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
def private_temp_dir(prefix: str = "nemesis-") -> str:
    """A fresh directory only the current user can read (mkdtemp creates it 0700)."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o700)
    return d


def remove_tree(path) -> None:
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------ task handle
class NemesisTask:
    """A submitted worker job plus what to do with its result; polled from the GUI thread.

    ``poll()`` forwards the worker's events, and when the job is finished calls ``on_result``
    (import into the scene; must run on the main thread, which is where the widget's timer polls)
    and removes the task's private temp folder. Afterwards ``state`` is ``done``, ``failed`` or
    ``cancelled``; ``imported`` holds what ``on_result`` returned, ``error`` a dict ``kind``/``message``.
    """

    FINISHED = ("done", "failed", "cancelled")

    def __init__(self, action: str, job, temp_dir: Optional[str], on_result: Callable[[dict], object],
                 on_finish: Optional[Callable[["NemesisTask"], None]] = None, context=None):
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


# ------------------------------------------------------------------------------------ phantom
# Run by the worker's Python (which has numpy/scipy and the pantheon package): the Slicer process
# itself does not import pantheon.synth.
PHANTOM_SCRIPT = r"""
import sys
from pantheon.io import write_volume
from pantheon.synth import make_abdomen_phantom
out, seed, oblique = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ct, lab = make_abdomen_phantom(seed, shape=tuple(int(v) for v in sys.argv[4].split(",")) if len(sys.argv) > 4 else None,
                               oblique=oblique if oblique > 0 else False)
write_volume(ct, out + "/phantom.nrrd")
write_volume(lab, out + "/phantom-label.nrrd")
"""


def make_phantom_files(out_dir: str, python: Optional[str] = None, seed: int = 0, oblique: float = 0.0,
                       shape: Optional[Sequence[int]] = None, env: Optional[dict] = None,
                       timeout: float = 300.0) -> tuple:
    """Write a synthetic abdominal CT and its BTCV label map (NRRD) with ``python`` (the worker's)."""
    cmd = [python or sys.executable, "-c", PHANTOM_SCRIPT, str(out_dir), str(int(seed)), str(float(oblique))]
    if shape:
        cmd.append(",".join(str(int(v)) for v in shape))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"Making the phantom failed: {proc.stderr.strip()[-2000:]}")
    return os.path.join(out_dir, "phantom.nrrd"), os.path.join(out_dir, "phantom-label.nrrd")


# ------------------------------------------------------------------------------------ messages
class TaskError(RuntimeError):
    """A job that did not finish: ``kind`` (input, checkpoint, cancelled, crashed, ...) and ``message``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def metrics_text(scalars: dict) -> str:
    parts = []
    if "psnr_db" in scalars:
        parts.append(f"PSNR {float(scalars['psnr_db']):.2f} dB")
    if "ssim" in scalars:
        parts.append(f"SSIM {float(scalars['ssim']):.3f}")
    if "masked_fraction" in scalars:
        parts.append(f"masked {100 * float(scalars['masked_fraction']):.0f}%")
    return ", ".join(parts)


def environment_text(env: dict) -> str:
    missing = env.get("missing") or []
    torch = env.get("torch") or "not installed"
    cuda = {True: "CUDA available", False: "no CUDA", None: "CUDA unknown"}.get(env.get("cuda"))
    text = f"Worker Python {env.get('version', '?')} at {env.get('python', '?')}; torch {torch}; {cuda}."
    if missing:
        text += f" Missing: {', '.join(missing)}."
    return text


def probe_path_from_result(result: dict) -> Optional[str]:
    """Where the trained probe was written, from a train_probe result."""
    for key in ("probe", "probe_path", "weights"):
        value = result.get(key) if isinstance(result, dict) else None
        if isinstance(value, str) and value:
            return value
    for sub in ("files", "outputs", "notes", "scalars"):
        d = result.get(sub) if isinstance(result, dict) else None
        if isinstance(d, dict):
            for key in ("probe", "probe_path"):
                if isinstance(d.get(key), str):
                    p = d[key]
                    return p if os.path.isabs(p) else os.path.join(result.get("output_dir", ""), p)
    out = result.get("output_dir") if isinstance(result, dict) else None
    if out and os.path.isdir(out):
        for name in sorted(os.listdir(out)):
            if name.endswith((".pt", ".safetensors")):
                return os.path.join(out, name)
    return None


class ThreadTask:
    """Runs ``fn(progress, cancel_event)`` on a background thread (no Slicer calls in ``fn``) with the
    same polling interface as :class:`NemesisTask`; used for the weights download."""

    FINISHED = NemesisTask.FINISHED

    def __init__(self, action: str, fn: Callable, follow_up: Optional[str] = None):
        import threading
        self.action, self.follow_up = action, follow_up
        self.state, self.progress, self.messages = "running", (0.0, "Starting"), []
        self.imported = self.result = self.error = None
        self.cancel_requested = False
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._pending: List[dict] = []
        self._finished: Optional[tuple] = None

        def progress(fraction, message=""):
            with self._lock:
                self._pending.append({"type": "progress", "fraction": float(fraction), "message": str(message)})

        def target():
            try:
                out = fn(progress, self._cancel)
                fin = ("done", out, None)
            except Exception as exc:
                cancelled = self._cancel.is_set() or type(exc).__name__ == "Cancelled"
                fin = ("cancelled" if cancelled else "failed", None,
                       {"kind": "cancelled" if cancelled else getattr(exc, "kind", "download"), "message": str(exc)})
            with self._lock:
                self._finished = fin

        self._thread = threading.Thread(target=target, name=f"nemesis-{action}", daemon=True)
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
            self.progress = (ev["fraction"], ev["message"])
        if fin is not None:
            self.state, self.result, self.error = fin
            self.imported = self.result
        return events

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)
