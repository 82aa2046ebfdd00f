"""The wheel: built from the source tree, installed (not editable) into a fresh venv, and run.

What this guards: everything ``pantheon demo`` needs at run time, the model cards and the demo
weights included, travels inside the package, so that an installed copy works without the source
checkout next to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What setuptools needs to build the wheel; copied so the build leaves nothing in the checkout.
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE.txt", "pantheon")
DEMO_CARDS = ("nemesis-demo", "nemesis-demo-probe", "mathena-demo-detector", "mathena-demo-hena",
              "neonet-demo-neoseg", "neonet-demo-neogen", "neonet-demo-pattennet")


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env(tmp: Path) -> dict:
    """No variable that could point the installed copy back at the checkout or a shared cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PANTHEON_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp / "home"), PANTHEON_CACHE_DIR=str(tmp / "empty-cache"), OMP_NUM_THREADS="2",
               PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("wheel-src")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: the build uses this venv's setuptools instead of fetching one.
    proc = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                 "--no-index", "-w", dist, src], timeout=300)
    assert "SetuptoolsDeprecationWarning" not in proc.stdout + proc.stderr, proc.stdout[-4000:]
    wheels = list(dist.glob("pantheon-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel's pantheon; its dependencies come from this venv through a
    plain ``.pth`` line. That line adds the folder to sys.path without processing the ``.pth``
    files in it, so this venv's editable pantheon (a finder hook set up by such a file) stays out."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    py = venv / "bin" / "python"
    # Installed before the .pth exists, so pip sees no other pantheon to replace.
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel], timeout=300)
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "zz_pantheon_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow  # builds the wheel
def test_wheel_carries_cards_weights_license_and_typing(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pantheon/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE.txt") for n in names)
    assert "pantheon/registry/cards/nemesis-demo.json" in names
    assert "pantheon/registry/weights/nemesis-demo.safetensors" in names
    # Every file of the package, code or data: what is not declared as package data is missing.
    for f in (REPO / "pantheon").rglob("*"):
        rel = f.relative_to(REPO).as_posix()
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc" \
                and not any(part.startswith(".") for part in f.relative_to(REPO).parts):
            assert rel in names, f"{rel} is not in the wheel (package data in pyproject.toml?)"
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_with_its_own_weights(installed, tmp_path):
    env = _clean_env(tmp_path)
    py, exe = installed / "bin" / "python", installed / "bin" / "pantheon"
    where = json.loads(_run([py, "-c", (
        "import json, pantheon, numpy\n"
        "from pantheon.registry import resolve_weights\n"
        f"cards = {list(DEMO_CARDS)!r}\n"
        "print(json.dumps({'pantheon': pantheon.__file__, 'numpy': numpy.__file__,\n"
        "                  'weights': [str(resolve_weights(c)) for c in cards]}))")],
        cwd=tmp_path, env=env, timeout=120).stdout)
    root = installed.resolve()
    assert Path(where["pantheon"]).resolve().is_relative_to(root), where["pantheon"]
    assert not Path(where["numpy"]).resolve().is_relative_to(root)  # dependencies really are shared
    for w in where["weights"]:
        assert Path(w).resolve().is_relative_to(root / "lib"), f"weights resolved outside the install: {w}"

    out = tmp_path / "demo"
    proc = _run([exe, "demo", "-o", out, "--quiet"], cwd=tmp_path, env=env, timeout=300)
    summary = json.loads(proc.stdout)
    assert summary["weights"] == "nemesis-demo"
    for name in ("liver.nii.gz", "pca.nii.gz", "phantom_ct.nii.gz", "preview.png", "result.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "result.json").read_text())["notes"]["weights"] == "nemesis-demo"

    # Control: without the installed package's weights folder the same command cannot run, so
    # the demo above read its weights from there and from nowhere else.
    weights_dir = Path(where["weights"][0]).parent
    hidden = weights_dir.with_name("weights-hidden")
    weights_dir.rename(hidden)
    try:
        proc = subprocess.run([str(exe), "demo", "-o", str(tmp_path / "demo2"), "--quiet"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
    finally:
        hidden.rename(weights_dir)
    assert proc.returncode == 2, proc.stderr
    assert "not available locally" in proc.stderr
    assert not (tmp_path / "demo2").exists() or not any((tmp_path / "demo2").iterdir())
