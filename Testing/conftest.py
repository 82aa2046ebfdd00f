"""Shared pytest set-up: fixture locations and a torch thread count fit for 2-core CI."""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The NEMESIS reference fixtures are part of the repository (see fixtures/nemesis/README.md), so a
# fresh clone tests itself.
NEMESIS_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nemesis"
# Optional data beside the checkout (../shared); PANTHEON_SHARED overrides. Tests that need it skip
# with a reason when it is absent.
SHARED = Path(os.environ.get("PANTHEON_SHARED", REPO_ROOT.parent / "shared"))

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lets tests `from conftest import ...`

# The built-and-installed Slicer extension, for any test that asks (see extension_build.py).
from extension_build import extension_install, installed_modules_dir  # noqa: E402,F401

# The real-Qt panel harness's fixtures (harness, harness_checks), see qt_harness/fixtures.py.
pytest_plugins = ["qt_harness.fixtures"]


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
    yield


@pytest.fixture(scope="module")
def four_phantom_cts(tmp_path_factory):
    """A batch input folder: four small abdominal CT phantoms, ct00.nii.gz ... ct03.nii.gz."""
    from pantheon.io import write_volume
    from pantheon.synth import make_abdomen_phantom
    folder = tmp_path_factory.mktemp("four")
    for s in range(4):
        ct, _ = make_abdomen_phantom(s, shape=(32, 48, 48))
        write_volume(ct, folder / f"ct{s:02d}.nii.gz")
    return folder


@pytest.fixture
def mrml_scene():
    """A fresh real MRML scene (PyPI slicer-core) installed as ``slicer.mrmlScene`` for one test, with
    the segmentation converters registered, as Slicer's Segmentations module does at startup
    (without them a test passed only when an earlier one had registered them)."""
    slicer = pytest.importorskip("slicer")
    from pantheon.slicerbridge.scene import ensure_converters
    ensure_converters()
    scene = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    yield scene
    slicer.mrmlScene = previous
    scene.Clear(1)
