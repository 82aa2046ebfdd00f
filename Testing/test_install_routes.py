"""The two ways a user gets the modules into Slicer, each loaded in the real-Qt harness in a Python
where ``pantheon`` is importable only as Slicer would find it (``python -S``: the test process's
editable install is not active), then Analyze run once with the bundled demo weights:

- the built extension: modules and the ``pantheon`` package installed by CMake side by side in
  qt-scripted-modules (Testing/extension_build.py builds it against a stand-in Slicer);
- the no-build route: the source tree's module folders added to Slicer's additional module paths,
  each module's own folder only on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from extension_layout import MODULES
from qt_harness.fixtures import skip_without_harness

from pantheon.registry import list_cards

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "qt_harness" / "isolated.py"

pytestmark = pytest.mark.slow


def _run_isolated(*folders: Path, cwd: Path) -> dict:
    skip_without_harness()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    cmd = [sys.executable, "-S", str(RUNNER), sysconfig.get_paths()["purelib"], ",".join(MODULES),
           *map(str, folders)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert proc.returncode == 0, f"isolated harness run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(report: dict, pantheon_dir: Path) -> None:
    assert report["pantheon_importable_before"] is False, "pantheon leaked in before the modules were loaded"
    assert Path(report["pantheon"]) == pantheon_dir.resolve()
    assert sorted(report["weights"]) == sorted(c.id for c in list_cards() if c.demo)  # every demo card resolved
    for card, path in report["weights"].items():
        assert Path(path).resolve().is_relative_to(pantheon_dir.resolve()), f"{card} came from {path}"
    assert report["modules"] == sorted(MODULES)  # every module the extension has: each model's and the tools
    assert report["panels"] == {name: f"{name}Widget" for name in MODULES}
    assert report["status"] == "Done: analyze", report["error"]
    assert report["rows"] > 0
    assert report["heavy"] == [], "the Slicer process imported the deep-learning stack"


def test_source_tree_module_paths(tmp_path):
    report = _run_isolated(*(REPO / name for name in MODULES), cwd=tmp_path)
    _check(report, REPO / "pantheon")


def test_built_extension(installed_modules_dir, tmp_path):
    report = _run_isolated(installed_modules_dir, cwd=tmp_path)
    _check(report, installed_modules_dir / "pantheon")
