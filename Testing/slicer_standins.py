"""Stand-ins for the parts of the Slicer application that PyPI ``slicer-core`` lacks, and what the
module and worker tests share (test_nemesis_slicer_module.py, test_tooth_slicer_module.py,
test_pni_slicer_module.py, test_worker_*.py).

``install_standins()`` puts small stand-ins for ``qt``, ``ctk``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` in place (everything else -
MRML, segmentations, ``slicer.util`` - stays real) and returns an undo function.
``load_module_file`` / ``slicer_module`` load a module's ``<Name>.py`` with them; ``archetype_load_volume``
replaces ``slicer.util.loadVolume`` (which needs the application) with the reader Slicer uses.
Also here: the worker-availability skip marker (``needs_worker``), fixture bodies (``worker_logic``,
``worker_client``), .ui-file readers and a scripted worker job (``ScriptedJob``). The panels
themselves (widgets, signals, the parameter node wrapper) are tested in a real Qt: Testing/qt_harness.
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
        import torch  # noqa: F401

        import pantheon.slicerbridge  # noqa: F401
        import pantheon.worker.client  # noqa: F401
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


@contextmanager
def _on_path(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def module_lib(module_dir: Path, package: str):
    """A module's pure-Python ``<package>.core`` (``NemesisSlicerLib`` ...), imported from ``module_dir``."""
    with _on_path(module_dir):
        return importlib.import_module(f"{package}.core")


def worker_logic(logic_class, *cleanup: str):
    """Body of a module-scoped ``logic`` fixture: a Logic whose log lines collect in ``logLines``;
    afterwards its worker is shut down and the named methods (e.g. ``removeCharts``) are called."""
    lg = logic_class()
    lg.logLines = []
    lg.logCallback = lg.logLines.append
    yield lg
    lg.shutdown()
    for name in cleanup:
        getattr(lg, name)()


def ijk_to_ras(node):
    """A volume node's IJKToRAS matrix as a 4x4 numpy array."""
    import slicer
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


# ------------------------------------------------------------------------------------ the .ui file and the code
# What pantheon.slicerbridge.panel.PanelWidgetMixin uses of every panel's ``ui`` (besides the module's own code).
PANEL_UI_NAMES = frozenset({"progressBar", "statusLabel", "errorLabel", "logTextEdit", "deviceComboBox",
                            "workerPythonLineEdit", "workerSlicerPythonRadioButton", "workerCustomPythonRadioButton"})


def ui_widgets(ui_file: Path):
    """``({widget name: element}, root)`` of a Qt Designer file."""
    import xml.etree.ElementTree as ET
    root = ET.parse(ui_file).getroot()
    return {w.get("name"): w for w in root.iter("widget")}, root


def used_ui_names(module_file: Path):
    """The ``self.ui.<name>`` widgets a module file uses, and those the shared panel mixin uses."""
    import re
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", module_file.read_text(encoding="utf-8")))
    return used | (PANEL_UI_NAMES if used else set())


def parameter_node_fields(module_file: Path, class_name: str):
    """``{field: annotation source}`` of a module's parameter node class."""
    import ast
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def bound_parameters(widgets):
    """``{widget name: parameter name}`` of the widgets bound through SlicerParameterName."""
    return {name: p.findtext("string") for name, w in widgets.items() for p in w.findall("property")
            if p.get("name") == "SlicerParameterName"}


def custom_widgets_declared(widgets, root) -> bool:
    """Every non-Qt widget class of the .ui file is declared as a custom widget."""
    declared = {cw.findtext("class") for cw in root.iter("customwidget")}
    return {w.get("class") for w in widgets.values() if not w.get("class").startswith("Q")} <= declared


def has_section(widgets, title: str) -> bool:
    """The .ui file has a collapsible section with this title."""
    return any(w.get("class") == "ctkCollapsibleButton" and w.findtext("property[@name='text']/string") == title
               for w in widgets.values())


# ------------------------------------------------------------------------------------ scripted jobs
class ScriptedJob:
    """A worker job that reports ``events`` (default: one progress event) one per poll, then ends as told."""

    def __init__(self, state="done", result=None, error=None, events=None):
        self.events = [{"type": "progress", "fraction": 0.5, "message": "half way"}] if events is None \
            else list(events)
        self.final, self.result, self.error, self.state, self.cancelled = state, result, error, "running", False

    @property
    def done(self):
        return self.state in ("done", "failed", "cancelled")

    def poll(self):
        if self.events:
            return [self.events.pop(0)]
        self.state = "cancelled" if self.cancelled else self.final
        return []

    def cancel(self):
        self.cancelled = True


def worker_client(**kwargs):
    """Body of a module-scoped ``client`` fixture: a real worker process (``WorkerClient(**kwargs)``),
    shut down afterwards::

        @pytest.fixture(scope="module")
        def client():
            yield from worker_client(preload=True, cache_budget_mb=512)
    """
    from pantheon.worker.client import WorkerClient
    c = WorkerClient(**kwargs)
    yield c
    c.shutdown()
