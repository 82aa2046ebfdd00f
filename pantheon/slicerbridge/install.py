"""Install plans for the worker's Python: what to install there, from which index, and how.

What is needed comes from one list, pyproject.toml's ``[project] dependencies``
(:mod:`pantheon.worker.requirements`). torch is installed the way the Slicer PyTorch extension
(SlicerPyTorch's PyTorchUtils, through light-the-torch) installs it: the CUDA wheel index that
matches the machine's NVIDIA driver, read from ``nvidia-smi`` (never by importing torch), the CPU
index without a usable driver, plain PyPI on macOS.

Runs in the Slicer process: standard library only, Python 3.9 syntax, no Slicer import.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from ..worker.requirements import normalize, requirement_specs, version_tuple

__all__ = [
    "REQUIREMENT_SPECS", "TORCH_INDEX_ROOT", "TORCH_CPU_INDEX", "TORCH_CUDA_INDEX", "CUDA_WHEEL_DRIVERS",
    "InstallStep", "InstallPlan", "install_plan", "torch_index_for_driver", "detect_nvidia_driver", "cuda_advice",
]

# Name (distribution, normalised or import name) -> requirement line, e.g. "sklearn" -> "scikit-learn>=1.3".
REQUIREMENT_SPECS = requirement_specs()

TORCH_INDEX_ROOT = "https://download.pytorch.org/whl/"
TORCH_CPU_INDEX = TORCH_INDEX_ROOT + "cpu"
# A CUDA build when the driver version is unknown and PyPI has none (Windows: PyPI's torch is CPU-only).
TORCH_CUDA_INDEX = TORCH_INDEX_ROOT + "cu128"

# PyTorch CUDA wheel tag -> the oldest NVIDIA driver that runs it (Linux, Windows), newest first.
# A driver runs every toolkit of one CUDA major release from the version below on ("minor version
# compatibility"; NVIDIA, CUDA Compatibility guide, table "CUDA Toolkit and Minimum Required Driver
# Version for Minor Version Compatibility": 13.x >= 580, 12.x >= 525.60.13 / 528.33, 11.x >=
# 450.80.02 / 452.39; 13.0 GA driver 580.65.06 on Linux). light-the-torch, which PyTorchUtils uses,
# decides with the same table. Per major release the tag is the one PyTorch keeps building for
# current releases (cu128 for 12.x; cu118 stopped at torch 2.7, still >= our torch>=2.1).
CUDA_WHEEL_DRIVERS: Tuple[Tuple[str, str, str], ...] = (
    ("cu130", "580.65.06", "580.88"),
    ("cu128", "525.60.13", "528.33"),
    ("cu118", "450.80.02", "452.39"),
)


def torch_index_for_driver(driver_version: Optional[str], platform: str = sys.platform) -> Optional[str]:
    """The pip index for torch on a machine with this NVIDIA driver (e.g. "550.54.14"):
    ``https://download.pytorch.org/whl/cuXYZ`` for the newest CUDA build the driver runs, the CPU
    index without a driver (None) or with one too old for any, and None on macOS (plain PyPI,
    whose macOS wheels are the only ones and use Apple's GPU)."""
    if platform == "darwin":
        return None
    if not driver_version:
        return TORCH_CPU_INDEX
    have = version_tuple(driver_version)
    column = 2 if platform.startswith("win") else 1
    for row in CUDA_WHEEL_DRIVERS:
        if have >= version_tuple(row[column]):
            return TORCH_INDEX_ROOT + row[0]
    return TORCH_CPU_INDEX


def _nvidia_smi() -> str:
    found = shutil.which("nvidia-smi")
    if found:
        return found
    if os.name == "nt":  # drivers before R450 put it here, not in System32
        legacy = os.path.join(os.environ.get("ProgramFiles", r"C:\Program Files"), "NVIDIA Corporation", "NVSMI",
                              "nvidia-smi.exe")
        if os.path.isfile(legacy):
            return legacy
    return "nvidia-smi"


def _run(cmd: List[str]) -> Tuple[int, str]:
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, creationflags=flags)
    return proc.returncode, proc.stdout


def detect_nvidia_driver(runner: Optional[Callable[[List[str]], Tuple[int, str]]] = None) -> Optional[str]:
    """The NVIDIA driver version ("550.54.14") from ``nvidia-smi``, or None (no NVIDIA GPU, no
    driver, nvidia-smi failing). ``runner(cmd) -> (exit code, stdout)`` is injectable for tests."""
    cmd = [_nvidia_smi(), "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        code, out = (runner or _run)(cmd)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if code != 0:
        return None
    for line in (out or "").splitlines():  # one line per GPU; they share the driver
        line = line.strip()
        if re.fullmatch(r"\d+(\.\d+)+", line):
            return line
    return None


def cuda_advice(environment: dict, driver_version: Optional[str], platform: str = sys.platform) -> Optional[str]:
    """One sentence for the panel when this machine has an NVIDIA GPU (``driver_version`` from
    :func:`detect_nvidia_driver`) that the worker's PyTorch cannot use, so jobs would fall back to
    the CPU; None when there is nothing to say (no GPU, CUDA usable, or torch not installed yet:
    then the install plan picks the CUDA build)."""
    if not driver_version or not environment or environment.get("cuda") or not environment.get("torch"):
        return None
    why = (environment.get("cuda_error") or "PyTorch cannot use it.").rstrip(".")
    index = torch_index_for_driver(driver_version, platform)
    fix = (f" Reinstall torch from {index} to use the GPU." if index and index != TORCH_CPU_INDEX else
           " Update the NVIDIA driver to use the GPU.")
    return f"This machine has an NVIDIA GPU (driver {driver_version}) but jobs will run on the CPU: {why}.{fix}"


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
    model: str = "Pantheon"  # who needs the packages, in the question to the user
    notes: List[str] = field(default_factory=list)  # sentences for the user (e.g. driver too old)

    @property
    def requirements(self) -> List[str]:
        return [r for s in self.steps for r in s.requirements]

    def describe(self) -> str:
        lines = [f"{self.model} runs in a separate worker process. Its Python ({self.target}) lacks "
                 "packages it needs. These will be installed there:", ""]
        for s in self.steps:
            how = "with the PyTorch extension (it picks the build for your GPU driver)" if s.via == "pytorchutils" \
                else ("with pip " + " ".join(s.pip_args)).strip()
            lines.append(f"  - {', '.join(s.requirements)} ({how})")
        if self.notes:
            lines += [""] + self.notes
        lines += ["", "This downloads several hundred MB to a few GB and can take minutes. "
                  "Nothing is installed into Slicer itself unless the worker uses Slicer's own Python.",
                  "Install now?"]
        return "\n".join(lines)


def install_plan(missing: Sequence[str], python: Optional[str] = None, cuda: bool = False,
                 have_pytorch_extension: bool = False, platform: str = sys.platform,
                 model: str = "Pantheon", driver_version: Optional[str] = None) -> InstallPlan:
    """What to install for ``missing`` names (distribution or import names), and how.

    torch is installed on its own: through the PyTorch extension when the worker is Slicer's own
    Python and the extension is present; otherwise with pip. Without ``cuda``: the CPU wheel index
    (PyPI on macOS). With ``cuda`` and the NVIDIA ``driver_version`` (:func:`detect_nvidia_driver`):
    the CUDA index for that driver (:func:`torch_index_for_driver`), or the CPU index with a note
    when the driver is too old. With ``cuda`` and no driver version: PyPI on Linux (its torch is a
    CUDA build), :data:`TORCH_CUDA_INDEX` on Windows (PyPI's is CPU-only).
    """
    missing = list(dict.fromkeys(missing))
    steps: List[InstallStep] = []
    notes: List[str] = []
    torch_names = [m for m in missing if normalize(m) == "torch"]
    torch_spec = REQUIREMENT_SPECS.get("torch", "torch")
    if torch_names:
        if python is None and have_pytorch_extension:
            steps.append(InstallStep([torch_spec], via="pytorchutils"))
        elif platform == "darwin":
            steps.append(InstallStep([torch_spec]))
        elif not cuda:
            steps.append(InstallStep([torch_spec], pip_args=["--index-url", TORCH_CPU_INDEX]))
        elif driver_version:
            index = torch_index_for_driver(driver_version, platform)
            if index == TORCH_CPU_INDEX:
                oldest = CUDA_WHEEL_DRIVERS[-1][2 if platform.startswith("win") else 1]
                notes.append(f"The NVIDIA driver {driver_version} is too old for PyTorch's CUDA builds (they need "
                             f"{oldest} or newer), so the CPU build is installed; update the driver to use the GPU.")
            steps.append(InstallStep([torch_spec], pip_args=["--index-url", index]))
        else:
            args = ["--index-url", TORCH_CUDA_INDEX] if platform.startswith("win") else []
            steps.append(InstallStep([torch_spec], pip_args=args))
    rest = [REQUIREMENT_SPECS.get(m, m) for m in missing if m not in torch_names]
    if rest:
        steps.append(InstallStep(list(dict.fromkeys(rest))))
    target = "Slicer's own Python" if python is None else f"the Python at {python}"
    return InstallPlan(steps, target, python, model, notes)
