"""Stand-ins for the parts of the Slicer application that PyPI ``slicer-core`` lacks, shared by
the module tests (test_nemesis_slicer_module.py, test_tooth_slicer_module.py).

``install_standins()`` puts small stand-ins for ``qt``, ``ctk``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` in place (everything else -
MRML, segmentations, ``slicer.util`` - stays real) and returns an undo function.
``load_module_file`` loads a module's ``<Name>.py`` with them; ``archetype_load_volume`` replaces
``slicer.util.loadVolume`` (which needs the application) with the reader Slicer uses.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from contextlib import contextmanager
from pathlib import Path
from unittest import mock


def install_standins():
    """Stand-ins for what slicer-core lacks; returns an undo function."""
    import slicer
    saved_modules = {n: sys.modules.get(n) for n in ("qt", "ctk", "slicer.i18n", "slicer.ScriptedLoadableModule",
                                                        "slicer.parameterNodeWrapper")}
    saved_attrs = {n: getattr(slicer, n, None) for n in ("i18n", "ScriptedLoadableModule", "parameterNodeWrapper")}

    qt = types.ModuleType("qt")
    qt.QTimer = mock.MagicMock
    sys.modules["qt"] = qt
    sys.modules["ctk"] = types.ModuleType("ctk")
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    class _Marker:
        def __init__(self, *args, **kwargs):
            self.args = args
    pnw.Choice, pnw.Default, pnw.WithinRange = (type(n, (_Marker,), {}) for n in ("Choice", "Default", "WithinRange"))
    pnw.parameterNodeWrapper = lambda cls: cls
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[:-len("Logic")]

        def getParameterNode(self):
            return None

    class ScriptedLoadableModuleTest(unittest.TestCase):
        messages = []

        def delayDisplay(self, message, requestedDelay=None, msec=None):
            self.messages.append(message)

    for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
              ScriptedLoadableModuleTest):
        setattr(slm, c.__name__, c)
    for name, mod in (("slicer.i18n", i18n), ("slicer.parameterNodeWrapper", pnw),
                      ("slicer.ScriptedLoadableModule", slm)):
        sys.modules[name] = mod
        setattr(slicer, name.split(".", 1)[1], mod)

    def undo():
        for n, m in saved_modules.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
        for n, v in saved_attrs.items():
            if v is None:
                if hasattr(slicer, n):
                    delattr(slicer, n)
            else:
                setattr(slicer, n, v)
    return undo


@contextmanager
def load_module_file(name: str, module_dir: Path):
    """Load ``module_dir/<name>.py`` (its Lib package importable) with the stand-ins; undone on exit."""
    undo = install_standins()
    sys.path.insert(0, str(module_dir))
    try:
        spec = importlib.util.spec_from_file_location(name, module_dir / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(module_dir))
        undo()


def archetype_load_volume(path, properties=None, returnNode=False):
    """``slicer.util.loadVolume`` without the application: the archetype storage node reads the
    file into a scalar volume node (a vector volume node for a multi-component file)."""
    import slicer
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.ResetFileNameList()
    node_class = "vtkMRMLScalarVolumeNode"
    props = properties or {}
    node = slicer.mrmlScene.AddNewNodeByClass(node_class, props.get("name", Path(str(path)).stem))
    slicer.mrmlScene.AddNode(storage)
    if not storage.ReadData(node):
        raise RuntimeError(f"could not read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def worker_unavailable():
    """Why the module tests cannot drive the real worker here (None when they can): the bridge, the
    worker client and torch (for the worker's Python, which is this one) must import."""
    try:
        import pantheon.slicerbridge  # noqa: F401
        import pantheon.worker.client  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def needs_worker(test):
    """Skip ``test`` (with the reason) when :func:`worker_unavailable` says so."""
    import pytest
    reason = worker_unavailable()
    return pytest.mark.skipif(reason is not None, reason=f"worker/bridge not importable: {reason}")(test)


def slicer_module(name: str, module_dir: Path):
    """Body of a module-scoped fixture: skip without slicer-core's MRML, else yield the loaded module::

        @pytest.fixture(scope="module")
        def mod():
            yield from slicer_module("PNIPredict", REPO / "PNIPredict")
    """
    import pytest
    slicer = pytest.importorskip("slicer", reason="slicer-core (MRML without the Slicer app) is not installed")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core lacks MRML")
    with load_module_file(name, module_dir) as mod:
        yield mod
