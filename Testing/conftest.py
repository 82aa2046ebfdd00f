"""Shared pytest set-up: fixture locations and a torch thread count fit for 2-core CI."""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The project's shared fixtures live beside the checkout (../shared/fixtures); PANTHEON_SHARED overrides.
SHARED = Path(os.environ.get("PANTHEON_SHARED", REPO_ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
NEMESIS_FIXTURES = FIXTURES / "nemesis"

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lets tests `from conftest import ...`

if not NEMESIS_FIXTURES.is_dir():  # fail loudly rather than skip: these fixtures are the contract
    raise RuntimeError(f"NEMESIS fixtures not found at {NEMESIS_FIXTURES}; set PANTHEON_SHARED")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
    yield


@pytest.fixture
def mrml_scene():
    """A fresh real MRML scene (PyPI slicer-core) installed as ``slicer.mrmlScene`` for one test."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    yield scene
    slicer.mrmlScene = previous
    scene.Clear(1)
