"""Build and install the Slicer extension without Slicer, for tests.

The extension's CMake files are configured against the stand-in "Slicer" package in
``Testing/cmake_slicer_standin`` (same macros, variables and copy/install behaviour as a Slicer
build tree), built and installed into a temporary prefix with the machine's CMake. The result is
the folder layout an installed extension has inside Slicer::

    <prefix>/lib/Slicer-5.10/qt-scripted-modules/   <- on sys.path in Slicer (modules_dir)
        NemesisSlicer.py  NemesisSlicerLib/  ...  Resources/UI/*.ui  Resources/Icons/*.png
        pantheon/                                  <- the core package, cards and demo weights
    <prefix>/share/Slicer-5.10/Pantheon.s4ext

Session fixtures (registered in conftest.py, so any test can ask for them):

- ``extension_install``: an :class:`ExtensionInstall` (source, build and install folders).
- ``installed_modules_dir``: just ``extension_install.modules_dir``, the folder to put on
  ``sys.path`` (or give Slicer as an additional module path) to load the installed modules.

Without cmake, make/ninja or a C/C++ compiler (``project()`` enables C and CXX, as a real
extension build does) the fixtures skip with the reason, unless ``PANTHEON_REQUIRE_EXTENSION_BUILD``
is set (CI sets it), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
STANDIN_DIR = Path(__file__).resolve().parent / "cmake_slicer_standin"
REQUIRE_ENV = "PANTHEON_REQUIRE_EXTENSION_BUILD"
SLICER_LIB_DIR = "lib/Slicer-5.10"  # Slicer_LIB_DIR of the stand-in (SlicerConfig.cmake)
MODULES_SUBDIR = f"{SLICER_LIB_DIR}/qt-scripted-modules"
SHARE_SUBDIR = "share/Slicer-5.10"


@dataclass(frozen=True)
class ExtensionInstall:
    source_dir: Path
    build_dir: Path
    prefix: Path

    @property
    def modules_dir(self) -> Path:
        """``<prefix>/lib/Slicer-5.10/qt-scripted-modules``: the modules and ``pantheon``."""
        return self.prefix / MODULES_SUBDIR

    @property
    def description_file(self) -> Path:
        return self.prefix / SHARE_SUBDIR / "Pantheon.s4ext"


def missing_tools() -> List[str]:
    """What a CMake build of the extension needs and this machine lacks."""
    missing = []
    if not shutil.which("cmake"):
        missing.append("cmake")
    if not (shutil.which("make") or shutil.which("ninja")):
        missing.append("make or ninja")
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        missing.append("a C compiler")
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        missing.append("a C++ compiler")
    return missing


def skip_or_fail_without_tools() -> None:
    missing = missing_tools()
    if not missing:
        return
    why = f"building the Slicer extension needs {', '.join(missing)}, not found on PATH"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{why} ({REQUIRE_ENV} is set)")
    pytest.skip(why)


def cmake(args: Sequence, cwd: Optional[Path] = None, timeout: float = 600,
          check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["cmake", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cmake {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def configure(source: Path, build: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """Configure ``source`` against the stand-in Slicer, byte-compiling with this Python."""
    generator = ["-G", "Ninja"] if shutil.which("ninja") and not shutil.which("make") else []
    return cmake([*generator, "-S", source, "-B", build, f"-DSlicer_DIR={STANDIN_DIR}",
                  f"-DPYTHON_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release", *extra], check=check)


def build_and_install(source: Path, build: Path, prefix: Path, *extra: str) -> ExtensionInstall:
    configure(source, build, f"-DCMAKE_INSTALL_PREFIX={prefix}", *extra)
    cmake(["--build", build, "--parallel", str(max(1, min(4, os.cpu_count() or 1)))])
    cmake(["--install", build])
    return ExtensionInstall(source_dir=source, build_dir=build, prefix=prefix)


@pytest.fixture(scope="session")
def extension_install(tmp_path_factory) -> ExtensionInstall:
    """The extension of this checkout, configured, built and installed once per session."""
    skip_or_fail_without_tools()
    root = tmp_path_factory.mktemp("extension")
    return build_and_install(REPO, root / "build", root / "install")


@pytest.fixture(scope="session")
def installed_modules_dir(extension_install) -> Path:
    """The installed ``qt-scripted-modules`` folder (what Slicer puts on ``sys.path``)."""
    return extension_install.modules_dir
