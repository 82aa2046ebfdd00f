"""The Slicer extension as CMake builds and installs it (stand-in Slicer, see extension_build.py).

What an installed extension must hold: the modules (scripts, Lib packages, UI, icons) and,
next to them, the ``pantheon`` package with its cards and demo weights; and from that folder alone,
as Slicer puts it on ``sys.path``, the Slicer side must import and find every bundled weights file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from extension_build import build_and_install, configure, skip_or_fail_without_tools
from extension_layout import MODEL_MODULES, MODULES, read_cmake

REPO = Path(__file__).resolve().parents[1]


def _source_files(folder: Path, skip_dirs=("Testing",)) -> dict[str, Path]:
    """Files that belong in the install tree, by path relative to ``folder``."""
    out = {}
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if not p.is_file() or rel.parts[0] in skip_dirs or rel.name == "CMakeLists.txt":
            continue
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or p.suffix == ".pyc":
            continue
        out[rel.as_posix()] = p
    return out


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.slow
def test_install_tree_has_every_module_file(extension_install, module):
    installed = extension_install.modules_dir
    expected = _source_files(REPO / module)
    assert f"{module}.py" in expected and f"Resources/UI/{module}.ui" in expected
    assert f"Resources/Icons/{module}.png" in expected and f"{module}Lib/__init__.py" in expected
    for rel, src in expected.items():
        dest = installed / rel
        assert dest.is_file(), f"{module}/{rel} is not installed (list it in {module}/CMakeLists.txt)"
        assert dest.read_bytes() == src.read_bytes(), f"installed {rel} differs from {module}/{rel}"
    assert (installed / f"{module}.pyc").is_file(), "scripts are byte-compiled as Slicer does"


@pytest.mark.slow
def test_install_tree_has_the_pantheon_package_with_cards_and_weights(extension_install):
    installed = extension_install.modules_dir / "pantheon"
    expected = _source_files(REPO / "pantheon", skip_dirs=())
    rels = set(expected)
    assert {"__init__.py", "py.typed", "registry/cards/nemesis-demo.json",
            "registry/weights/nemesis-demo.safetensors"} <= rels
    for rel, src in expected.items():
        dest = installed / rel
        assert dest.is_file(), f"pantheon/{rel} is not installed (a .py file, or package data " \
                               f"missing from CMakeLists.txt and pyproject.toml)"
        assert dest.read_bytes() == src.read_bytes(), f"installed pantheon/{rel} differs from the source"


@pytest.mark.slow
def test_install_tree_holds_nothing_else(extension_install):
    """Every installed file comes from a module folder or the package (plus the .pyc and the
    extension description), so no build or test file leaks into the package."""
    known = {rel for m in MODULES for rel in _source_files(REPO / m)}
    known |= {f"pantheon/{rel}" for rel in _source_files(REPO / "pantheon", skip_dirs=())}
    prefix = extension_install.prefix
    stray = []
    for p in prefix.rglob("*"):
        if not p.is_file() or p == extension_install.description_file:
            continue
        rel = p.relative_to(extension_install.modules_dir).as_posix() \
            if p.is_relative_to(extension_install.modules_dir) else None
        if rel is None or (rel not in known and not (rel.endswith(".pyc") and rel[:-1] in known)):
            stray.append(p.relative_to(prefix).as_posix())
    assert stray == []


_SLICER_SIDE = r'''
import json, os, sys
modules_dir, site_packages, repo = sys.argv[1:4]
# What Slicer's Python sees: the extension's module folder (appended by Slicer's scripted-module
# factory) and the application's own packages (numpy...), read without running their .pth files.
sys.path.insert(0, modules_dir)
sys.path.append(site_packages)
import pantheon, pantheon.slicerbridge, pantheon.worker.client
from pantheon.errors import RegistryError
from pantheon.registry import list_cards, resolve_weights
weights, errors = {}, {}
for card in list_cards():
    try:
        weights[card.id] = str(resolve_weights(card))
    except RegistryError as e:
        errors[card.id] = str(e)
def _from_repo(f):
    return f.startswith(repo + os.sep) and not f.startswith(site_packages + os.sep)
from_repo = sorted(m.__name__ for m in list(sys.modules.values()) if _from_repo(getattr(m, "__file__", None) or ""))
print(json.dumps({"pantheon": pantheon.__file__, "demo": [c.id for c in list_cards() if c.demo],
                  "weights": weights, "errors": errors, "from_repo": from_repo,
                  "heavy": sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "monai"))}))
'''


@pytest.mark.slow
def test_slicer_side_imports_and_finds_weights_from_the_install_tree(installed_modules_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANTHEON_", "PYTHON"))}
    env.update(PANTHEON_CACHE_DIR=str(tmp_path / "empty-cache"), HOME=str(tmp_path))
    # -I -S: no current folder, no PYTHONPATH, no site (so not this venv's editable pantheon).
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _SLICER_SIDE, str(installed_modules_dir),
                           sysconfig.get_paths()["purelib"], str(REPO)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(got["pantheon"]).is_relative_to(installed_modules_dir)
    assert got["from_repo"] == [], "modules were imported from the source checkout"
    assert got["heavy"] == [], "the Slicer side must not import torch or MONAI"
    assert len(got["demo"]) >= 7
    for card_id in got["demo"]:
        assert card_id in got["weights"], f"{card_id}: {got['errors'].get(card_id)}"
        path = Path(got["weights"][card_id])
        assert path.is_relative_to(installed_modules_dir / "pantheon" / "registry" / "weights"), path
    # Cards whose weights are downloaded on request say so in one sentence, not a traceback.
    for card_id, message in got["errors"].items():
        assert card_id not in got["demo"] and "not available locally" in message


@pytest.mark.slow
def test_module_tests_are_registered_with_ctest(extension_install):
    proc = subprocess.run(["ctest", "-N"], cwd=extension_install.build_dir, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for module in MODULES:
        assert f"py_{module}\n" in proc.stdout
        assert f"py_nomainwindow_qSlicer{module}ModuleGenericTest\n" in proc.stdout


def _s4ext(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


@pytest.mark.slow
def test_extension_description_carries_the_cmake_metadata(extension_install):
    values = {c.args[0]: c.args[1:] for c in read_cmake(REPO / "CMakeLists.txt") if c.name == "set" and c.args}
    desc = _s4ext(extension_install.description_file)
    for key in ("homepage", "category", "iconurl", "description", "contributors", "screenshoturls", "depends"):
        assert desc[key] == " ".join(values[f"EXTENSION_{key.upper()}"]), key
    assert len(desc["screenshoturls"].split()) == len(MODEL_MODULES)  # one per model panel


def test_slicer_with_an_older_python_is_refused(tmp_path):
    skip_or_fail_without_tools()
    proc = configure(REPO, tmp_path / "build", "-DSlicer_REQUIRED_PYTHON_VERSION=3.9.10", check=False)
    assert proc.returncode != 0
    assert "requires a Slicer built with Python >= 3.10" in proc.stderr


# --- the stand-in itself: what is not listed is not installed, what is listed must exist ---------

_MINI_ROOT = """cmake_minimum_required(VERSION 3.20)
project(Mini LANGUAGES NONE)
find_package(Slicer REQUIRED)
include(${Slicer_USE_FILE})
add_subdirectory(Mod)
include(${Slicer_EXTENSION_GENERATE_CONFIG})
include(${Slicer_EXTENSION_CPACK})
"""
_MINI_MODULE = """slicerMacroBuildScriptedModule(
  NAME Mod
  SCRIPTS Mod.py ModLib/__init__
  RESOURCES Resources/listed.txt ${MINI_EXTRA}
  WITH_GENERIC_TESTS
  )
"""


def _mini_extension(root: Path) -> Path:
    (root / "Mod" / "ModLib").mkdir(parents=True)
    (root / "Mod" / "Resources").mkdir()
    (root / "CMakeLists.txt").write_text(_MINI_ROOT)
    (root / "Mod" / "CMakeLists.txt").write_text(_MINI_MODULE)
    (root / "Mod" / "Mod.py").write_text("X = 1\n")
    (root / "Mod" / "ModLib" / "__init__.py").write_text("")
    (root / "Mod" / "Resources" / "listed.txt").write_text("listed\n")
    (root / "Mod" / "Resources" / "unlisted.txt").write_text("unlisted\n")
    return root


def test_standin_installs_only_listed_files(tmp_path):
    skip_or_fail_without_tools()
    src = _mini_extension(tmp_path / "src")
    inst = build_and_install(src, tmp_path / "build", tmp_path / "install")
    mods = inst.modules_dir
    assert (mods / "Mod.py").is_file() and (mods / "Mod.pyc").is_file()
    assert (mods / "ModLib" / "__init__.py").is_file()  # ".py" appended, as CTK does
    assert (mods / "Resources" / "listed.txt").is_file()
    assert not (mods / "Resources" / "unlisted.txt").exists()
    assert (inst.prefix / "share" / "Slicer-5.10" / "Mini.s4ext").is_file()
    assert (inst.build_dir / "MiniConfig.cmake").is_file()


def test_standin_refuses_a_listed_file_that_does_not_exist(tmp_path):
    skip_or_fail_without_tools()
    src = _mini_extension(tmp_path / "src")
    proc = configure(src, tmp_path / "build", "-DMINI_EXTRA=Resources/missing.png", check=False)
    assert proc.returncode != 0
    assert "given nonexistent file or directory 'Resources/missing.png'" in " ".join(proc.stderr.split())
