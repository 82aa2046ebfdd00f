"""The Slicer application around the panels: ``slicer.app``, the module manager, loading a scripted
module as Slicer does, the default scene, the layout's slice views, file loading, and the modal
dialogs answered by a robot.

What is Slicer's own here and what is a stand-in:

- real: ``slicer.util`` (PyPI slicer-core), MRML and its logic classes, and, from Slicer 5.12.3's
  source (``$PANTHEON_SLICER_PYTHON``, default ``../shared/third_party/slicer-5.12.3``),
  ``slicer/ScriptedLoadableModule.py``, ``slicer/i18n.py`` and ``slicer/parameterNodeWrapper/``;
- stand-ins (Python, real Qt objects, same Qt API as the C++ classes of Slicer 5.12.3 they are
  named after): ``qSlicerApplication`` (the one ``QApplication``), ``qSlicerModuleManager``,
  ``qSlicerScriptedLoadableModule`` / ``qSlicerScriptedLoadableModuleWidget`` (loading follows
  ``Base/QTGUI/qSlicerScriptedLoadableModule*.cxx``: module class instantiated with the C++ module
  as ``parent``, widget class with the representation as ``parent``, then ``setup()``; ``enter()``
  / ``exit()`` when the module is shown / left; ``moduleAboutToBeUnloaded(QString)`` on unload),
  ``qSlicerCoreIOManager.loadNodes`` for volumes and segmentations (through MRML storage nodes,
  as the real readers do), and ``qSlicerLayoutManager`` with the Red/Yellow/Green slice views;
- the message boxes (``slicer.util.messageBox``, where ``errorDisplay``/``confirmOkCancelDisplay``
  end) are answered by :class:`DialogRobot`, which records what was shown. A confirmation nobody
  prepared an answer for fails the test.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional

from PySide6 import QtCore, QtGui, QtWidgets

from . import pythonqt as pq

REPO_ROOT = Path(__file__).resolve().parents[2]
SLICER_PYTHON_ENV = "PANTHEON_SLICER_PYTHON"
DEFAULT_SLICER_PYTHON = REPO_ROOT.parent / "shared" / "third_party" / "slicer-5.12.3"


def register_segmentation_converters() -> None:
    """What Slicer's Segmentations module does at startup: register the representation converters
    (without them a segmentation cannot even hold an empty binary-labelmap segment)."""
    import slicer
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    have = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for name in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                 "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                 "vtkFractionalLabelmapToClosedSurfaceConversionRule"):
        rule = getattr(slicer, name, None)
        if rule is not None and name not in have:
            factory.RegisterConverterRule(rule())


def slicer_python_dir() -> Path:
    """Where Slicer 5.12.3's pure-Python files are: ``$PANTHEON_SLICER_PYTHON``, else
    ``third_party/slicer-5.12.3`` of ``$PANTHEON_SHARED`` (the project's shared folder, as the
    other tests find it), else of ``../shared`` beside the checkout."""
    if os.environ.get(SLICER_PYTHON_ENV):
        return Path(os.environ[SLICER_PYTHON_ENV])
    shared = os.environ.get("PANTHEON_SHARED")
    return Path(shared) / "third_party" / "slicer-5.12.3" if shared else DEFAULT_SLICER_PYTHON


def unavailable_reason() -> Optional[str]:
    """Why the real-Qt harness cannot run here (None when it can)."""
    folder = slicer_python_dir() / "slicer"
    if not (folder / "ScriptedLoadableModule.py").is_file():
        return (f"Slicer 5.12.3's ScriptedLoadableModule.py/parameterNodeWrapper not found under {folder} "
                f"(set {SLICER_PYTHON_ENV} to a folder holding slicer/ScriptedLoadableModule.py)")
    for name, what in (("PySide6", "PySide6-Essentials (real Qt)"), ("slicer", "slicer-core (MRML)")):
        if importlib.util.find_spec(name) is None:
            return f"{what} is not installed"
    return None


# --------------------------------------------------------------------------------------- dialogs
class UnexpectedDialog(AssertionError):
    """A modal question the test did not prepare an answer for."""


class DialogRobot:
    """Answers Slicer's message boxes. ``answers`` holds what the next questions get
    (``qt.QMessageBox.Ok``/``Cancel``/``Yes``/``No`` or True/False); ``shown`` records every box as a
    dict (text, title, buttons, under_wait_cursor)."""

    def __init__(self, app):
        self.app = app
        self.answers = collections.deque()
        self.shown: List[dict] = []

    def message_box(self, text, parent=None, **kwargs):
        buttons = kwargs.get("standardButtons")
        title = kwargs.get("windowTitle", "")
        record = {"text": str(text), "title": str(title), "buttons": buttons,
                  "under_wait_cursor": QtWidgets.QApplication.overrideCursor() is not None,
                  "detail": kwargs.get("detailedText")}
        self.shown.append(record)
        Box = QtWidgets.QMessageBox
        asks = buttons is not None and bool(buttons & (Box.Cancel | Box.No))
        if not asks:
            return Box.Ok
        if not self.answers:
            raise UnexpectedDialog(f"unexpected question [{title}]: {text}")
        answer = self.answers.popleft()
        if answer is True:
            return Box.Ok if buttons & Box.Ok else Box.Yes
        if answer is False:
            return Box.Cancel if buttons & Box.Cancel else Box.No
        return answer

    def texts(self, since: int = 0) -> List[str]:
        return [d["text"] for d in self.shown[since:]]


# --------------------------------------------------------------------------------------- the application
qt_QApplication = pq.qt_class("QApplication")
qt_QObject = pq.qt_class("QObject")
qt_QWidget = pq.qt_class("QWidget")


class qSlicerModuleManager(qt_QObject):  # noqa: N801 - Slicer's class name
    """Base/QTCore/qSlicerModuleManager.h: ``module(name)``, ``modulesNames()``, and the
    ``moduleLoaded(QString)`` / ``moduleAboutToBeUnloaded(QString)`` signals."""

    _h_cpp = True
    _h_cpp_signals = ["moduleLoaded(QString)", "moduleAboutToBeUnloaded(QString)"]

    def __init__(self):
        super().__init__()
        self._h_modules: Dict[str, "qSlicerScriptedLoadableModule"] = {}

    def module(self, name):
        return self._h_modules.get(str(name))

    def modulesNames(self):  # noqa: N802
        return sorted(self._h_modules)


class qSlicerCoreIOManager(qt_QObject):  # noqa: N801
    """``loadNodes('VolumeFile'|'SegmentationFile', properties, loadedNodes, userMessages)`` as the
    real readers do it: an archetype storage node reads the volume (a label map when
    ``labelmap``), a segmentation storage node reads a segmentation."""

    _h_cpp = True

    def fileType(self, fileName):  # noqa: N802
        name = str(fileName).lower()
        return "SegmentationFile" if ".seg." in name else "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None):  # noqa: N802
        import slicer
        scene = slicer.mrmlScene
        path = str(properties["fileName"])
        stem = Path(path).name.split(".")[0]
        name = properties.get("name") or stem
        if fileType == "VolumeFile":
            labelmap = bool(properties.get("labelmap"))
            node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
                                           scene.GenerateUniqueName(name))
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        elif fileType == "SegmentationFile":
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
            storage = slicer.vtkMRMLSegmentationStorageNode()
        else:
            raise ValueError(f"harness: no reader for {fileType}")
        storage.SetFileName(path)
        scene.AddNode(storage)
        if not storage.ReadData(node):
            scene.RemoveNode(node)
            scene.RemoveNode(storage)
            if userMessages is not None:
                userMessages.AddMessage(0, f"could not read {path}")
            return False
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.CreateDefaultDisplayNodes()
        if fileType == "VolumeFile" and not properties.get("labelmap"):
            display = node.GetScalarVolumeDisplayNode()
            if display is not None:
                display.AutoWindowLevelOn()
        if properties.get("show", True) and fileType == "VolumeFile":
            slicer.util.setSliceViewerLayers(background=node)
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True


class SliceWidget:
    """What ``layoutManager().sliceWidget(name)`` offers the modules: its slice node and logic."""

    def __init__(self, logic):
        self._logic = logic

    def mrmlSliceNode(self):  # noqa: N802
        return self._logic.GetSliceNode()

    def sliceLogic(self):  # noqa: N802
        return self._logic


class qSlicerLayoutManager(qt_QObject):  # noqa: N801
    """The three slice views of Slicer's conventional layout (Red axial, Yellow sagittal, Green
    coronal), each with a real ``vtkMRMLSliceLogic`` on the scene."""

    _h_cpp = True
    VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))

    def __init__(self):
        super().__init__()
        self._h_logics = []

    def _h_setup(self, scene):
        import slicer
        import vtk
        self._h_logics = []
        for name, orientation in self.VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            node = logic.AddSliceNode(name)
            node.SetOrientation(orientation)
            self._h_logics.append(logic)
        self._h_collection = vtk.vtkCollection()
        for logic in self._h_logics:
            self._h_collection.AddItem(logic)

    def sliceViewNames(self):  # noqa: N802
        return [name for name, _o in self.VIEWS]

    def sliceWidget(self, name):  # noqa: N802
        for (view, _o), logic in zip(self.VIEWS, self._h_logics):
            if view == name:
                return SliceWidget(logic)
        return None

    def mrmlSliceLogics(self):  # noqa: N802
        return self._h_collection


class qSlicerApplication(qt_QApplication):  # noqa: N801
    """``slicer.app``: the process's QApplication with what scripted modules call on it
    (Base/QTCore/qSlicerCoreApplication.h, Base/QTGUI/qSlicerApplication.h)."""

    _h_cpp = True
    _h_cpp_signals = ["startupCompleted()"]

    def _h_init(self):
        self._h_module_manager = qSlicerModuleManager()
        self._h_io = qSlicerCoreIOManager()
        self._h_layout = qSlicerLayoutManager()
        self._h_testing = False
        self._h_settings_dir = tempfile.mkdtemp(prefix="pantheon-qt-settings-")
        self._h_restarts = 0

    def moduleManager(self):  # noqa: N802
        return self._h_module_manager

    def coreIOManager(self):  # noqa: N802
        return self._h_io

    ioManager = coreIOManager

    def layoutManager(self):  # noqa: N802
        return self._h_layout

    def testingEnabled(self):  # noqa: N802
        return self._h_testing

    def setTestingEnabled(self, value):  # noqa: N802
        self._h_testing = bool(value)

    def userSettings(self):  # noqa: N802
        return pq.qt_class("QSettings")()

    revisionUserSettings = settings = userSettings

    def mainWindow(self):  # noqa: N802
        return getattr(self, "_h_main_window", None)

    def mrmlScene(self):  # noqa: N802
        import slicer
        return slicer.mrmlScene

    def startupEnvironment(self):  # noqa: N802
        return QtCore.QProcessEnvironment.systemEnvironment()

    def restart(self):
        self._h_restarts += 1

    def moduleDocumentationUrl(self, name):  # noqa: N802
        return f"https://slicer.readthedocs.io/en/5.12/user_guide/modules/{str(name).lower()}.html"


def application() -> qSlicerApplication:
    """The one QApplication of the process, as ``qSlicerApplication`` (created offscreen on first use)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")  # the offscreen plugin's size-hint notices
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = qSlicerApplication(["PantheonPanelTests"])
        QtCore.QCoreApplication.setOrganizationName("NA-MIC")
        QtCore.QCoreApplication.setOrganizationDomain("slicer.org")
        QtCore.QCoreApplication.setApplicationName("Slicer")
    if not isinstance(app, qSlicerApplication):
        raise RuntimeError("a QApplication that is not the harness's already exists in this process")
    if not hasattr(app, "_h_module_manager"):
        app._h_init()
    QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
    QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, app._h_settings_dir)
    return app


# --------------------------------------------------------------------------------------- modules
class qSlicerScriptedLoadableModuleWidget(qt_QWidget):  # noqa: N801
    """The C++ widget representation a scripted module's Python widget lives in (a QWidget with a
    QVBoxLayout): ``isEntered`` (read-only property), ``moduleName``, ``enter()``/``exit()``,
    ``self()`` (the Python widget), ``setMRMLScene`` / ``mrmlSceneChanged(vtkMRMLScene*)``."""

    _h_cpp = True
    _h_cpp_signals = ["mrmlSceneChanged(vtkMRMLScene*)"]
    _h_cpp_slots = ["setMRMLScene(vtkMRMLScene*)"]

    def __init__(self, module):
        super().__init__()
        self._h_module, self._h_entered, self._h_self = module, False, None
        QtWidgets.QWidget.setLayout(self, pq.qt_class("QVBoxLayout")())

    def _h_is_entered(self):
        return self._h_entered

    def _h_module_name(self):
        return self._h_module._h_name

    isEntered = QtCore.Property(bool, _h_is_entered)
    moduleName = QtCore.Property(str, _h_module_name)

    def self(self):
        return self._h_self

    def module(self):
        return self._h_module

    def setMRMLScene(self, scene):  # noqa: N802
        self.mrmlSceneChanged.emit(scene)

    def enter(self):
        self._h_entered = True
        self._h_self.enter()

    def exit(self):
        self._h_entered = False
        self._h_self.exit()


class qSlicerScriptedLoadableModule(qt_QObject):  # noqa: N801
    """The C++ module object a scripted module's class gets as ``parent`` (properties of
    qSlicerScriptedLoadableModule.h / qSlicerAbstractCoreModule.h)."""

    _h_cpp = True

    def __init__(self, name: str, path: str, harness: "SlicerHarness"):
        super().__init__()
        self._h_name, self._h_path, self._h_harness = name, path, harness
        self._h_values = {"title": "", "categories": [], "contributors": [], "associatedNodeTypes": [],
                          "helpText": "", "acknowledgementText": "", "icon": QtGui.QIcon(), "hidden": False,
                          "dependencies": [], "index": -1}
        self._h_widget = None
        self._h_python = None

    def _h_prop(name, kind):  # noqa: N805 - class-body helper
        def get(self):
            return self._h_values[name]

        def set_(self, value):
            self._h_values[name] = value
        return QtCore.Property(kind, get, set_)

    title = _h_prop("title", str)
    categories = _h_prop("categories", "QStringList")
    contributors = _h_prop("contributors", "QStringList")
    associatedNodeTypes = _h_prop("associatedNodeTypes", "QStringList")
    helpText = _h_prop("helpText", str)
    acknowledgementText = _h_prop("acknowledgementText", str)
    icon = _h_prop("icon", QtGui.QIcon)
    hidden = _h_prop("hidden", bool)
    dependencies = _h_prop("dependencies", "QStringList")
    index = _h_prop("index", int)
    del _h_prop
    path = QtCore.Property(str, lambda self: self._h_path)

    def widgetRepresentation(self):  # noqa: N802
        if self._h_widget is None:
            self._h_widget = self._h_harness._create_widget(self)
        return self._h_widget

    def logic(self):
        return None  # scripted modules: the logic lives in the Python widget (slicer.util.getModuleLogic)

    def mrmlScene(self):  # noqa: N802
        import slicer
        return slicer.mrmlScene


# --------------------------------------------------------------------------------------- the harness
class SlicerHarness:
    """Installs the application (``install``) and loads modules as Slicer does.

    ``load_module(module_dir, name)`` imports ``<module_dir>/<name>.py`` with only ``module_dir``
    added to ``sys.path`` (as Slicer does for each module folder) and instantiates the module;
    ``show_module(name)`` creates the widget (``setup()``) on first use and enters it;
    ``leave_module()`` exits; ``unload_module(name)`` emits ``moduleAboutToBeUnloaded``.
    """

    def __init__(self):
        self.app = application()
        self.dialogs = DialogRobot(self.app)
        self.current: Optional[str] = None
        self._undo: List[Callable[[], None]] = []
        self.messages: List[str] = []  # delayDisplay texts

    # ------------------------------------------------------------ install / uninstall
    def install(self) -> "SlicerHarness":
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        import slicer
        import slicer.util

        from . import standins  # noqa: F401 - registers the widget stand-ins

        saved_modules = {n: sys.modules.get(n) for n in ("qt", "ctk")}
        sys.modules["qt"] = qt_module()
        sys.modules["ctk"] = standins.ctk_module()
        # Slicer's own pure-Python parts, imported from its source (fresh: they bind qt/ctk at import)
        extra_path = str(slicer_python_dir() / "slicer")
        owned = [n for n in list(sys.modules) if n in ("slicer.ScriptedLoadableModule", "slicer.i18n")
                 or n.startswith("slicer.parameterNodeWrapper")]
        for n in owned:
            sys.modules.pop(n)
        slicer.__path__.insert(0, extra_path)
        saved_attrs = {n: getattr(slicer, n, _ABSENT) for n in ("app", "modules", "mrmlScene", "selfTests",
                                                                  "ScriptedLoadableModule", "i18n",
                                                                  "parameterNodeWrapper", *standins.SLICER_CLASSES,
                                                                  "qSlicerScriptedLoadableModule",
                                                                  "qSlicerScriptedLoadableModuleWidget")}
        for n, cls in standins.SLICER_CLASSES.items():
            setattr(slicer, n, cls)
        slicer.qSlicerScriptedLoadableModule = qSlicerScriptedLoadableModule
        slicer.qSlicerScriptedLoadableModuleWidget = qSlicerScriptedLoadableModuleWidget
        slicer.app = self.app
        slicer.modules = types.SimpleNamespace()
        slicer.selfTests = {}
        self.new_scene()
        util_saved = {n: getattr(slicer.util, n) for n in ("messageBox", "delayDisplay", "pip_install",
                                                           "pip_uninstall")}
        slicer.util.messageBox = self.dialogs.message_box
        slicer.util.delayDisplay = self._delay_display
        slicer.util.pip_install = slicer.util.pip_uninstall = _no_pip
        # a (never shown) main window: slicer.util.mainWindow() finds it by objectName, and
        # errorDisplay only shows its box when there is one
        window = pq.qt_class("QMainWindow")()
        window.objectName = "qSlicerMainWindow"
        self.app._h_main_window = window
        for n in ("ScriptedLoadableModule", "i18n", "parameterNodeWrapper"):
            setattr(slicer, n, importlib.import_module(f"slicer.{n}"))

        def undo():
            window = getattr(self.app, "_h_main_window", None)
            if window is not None:
                self.app._h_main_window = None
                window.deleteLater()
            for name, value in util_saved.items():
                setattr(slicer.util, name, value)
            for name, value in saved_attrs.items():
                if value is _ABSENT:
                    if hasattr(slicer, name):
                        delattr(slicer, name)
                else:
                    setattr(slicer, name, value)
            if extra_path in slicer.__path__:
                slicer.__path__.remove(extra_path)
            for n in [m for m in list(sys.modules) if m in ("slicer.ScriptedLoadableModule", "slicer.i18n")
                      or m.startswith("slicer.parameterNodeWrapper")]:
                sys.modules.pop(n)
            for n, m in saved_modules.items():
                if m is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = m
        self._undo.append(undo)
        return self

    def uninstall(self) -> None:
        for name in list(self.app._h_module_manager._h_modules):
            self.unload_module(name)
        while self._undo:
            self._undo.pop()()

    # ------------------------------------------------------------ scene
    def new_scene(self):
        """A scene as Slicer starts with: selection/interaction/crosshair singletons and the three
        slice views with their composite nodes."""
        import slicer
        register_segmentation_converters()
        scene = slicer.vtkMRMLScene()
        self._app_logic = slicer.vtkMRMLApplicationLogic()
        self._app_logic.SetMRMLScene(scene)
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetSingletonTag("default")
        scene.AddNode(crosshair)
        slicer.mrmlScene = scene
        self.app._h_layout._h_setup(scene)
        segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        segmentations.SetMRMLScene(scene)
        slicer.modules.segmentations = types.SimpleNamespace(logic=lambda: segmentations)
        return scene

    def close_scene(self) -> None:
        """File > Close Scene (``qSlicerCoreIOManager``/``qSlicerIOManager::closeScene`` ->
        ``vtkMRMLScene::Clear(false)``: singletons stay)."""
        import slicer
        slicer.mrmlScene.Clear(0)
        self.process_events()

    # ------------------------------------------------------------ modules
    def load_module(self, module_dir, name: Optional[str] = None) -> qSlicerScriptedLoadableModule:
        import slicer
        module_dir = Path(module_dir)
        name = name or module_dir.name
        path = module_dir / f"{name}.py"
        if str(module_dir) not in sys.path:
            sys.path.insert(0, str(module_dir))
            self._undo.append(lambda d=str(module_dir): d in sys.path and sys.path.remove(d))
        for stale in [m for m in sys.modules if m == name or m.startswith(f"{name}Lib")]:
            sys.modules.pop(stale)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        cpp = qSlicerScriptedLoadableModule(name, str(path), self)
        QtCore.QObject.setObjectName(cpp, name)
        cpp._h_python = getattr(module, name)(cpp)
        setattr(slicer.modules, name.lower(), cpp)
        setattr(slicer.modules, f"{name}Instance", cpp._h_python)
        self.app._h_module_manager._h_modules[name] = cpp
        self.app._h_module_manager.moduleLoaded.emit(name)
        self.process_events()
        return cpp

    def _create_widget(self, cpp: qSlicerScriptedLoadableModule):
        import slicer
        module = sys.modules[cpp._h_name]
        representation = qSlicerScriptedLoadableModuleWidget(cpp)
        representation._h_self = getattr(module, f"{cpp._h_name}Widget")(representation)
        setattr(slicer.modules, f"{cpp._h_name}Widget", representation._h_self)
        representation.resize(420, 900)
        representation._h_self.setup()
        # qSlicerAbstractCoreModule::createNewWidgetRepresentation: the scene is set after setup()
        representation.setMRMLScene(slicer.mrmlScene)
        pq.raise_slot_errors()
        return representation

    def show_module(self, name: str):
        """Select ``name`` in the module panel: the current module exits, ``name`` enters. Returns
        the Python widget."""
        if self.current == name:
            return self.widget(name)
        self.leave_module()
        representation = self.app._h_module_manager.module(name).widgetRepresentation()
        representation.show()
        representation.enter()
        self.current = name
        self.process_events()
        return representation._h_self

    def leave_module(self) -> None:
        if self.current is None:
            return
        representation = self.app._h_module_manager.module(self.current).widgetRepresentation()
        representation.exit()
        representation.hide()
        self.current = None
        self.process_events()

    def widget(self, name: str):
        return self.app._h_module_manager.module(name).widgetRepresentation()._h_self

    def unload_module(self, name: str) -> None:
        """What Slicer does on exit or module unload: ``moduleAboutToBeUnloaded(name)``."""
        import slicer
        if self.current == name:
            self.leave_module()
        manager = self.app._h_module_manager
        cpp = manager._h_modules.get(name)
        if cpp is None:
            return
        manager.moduleAboutToBeUnloaded.emit(name)
        self.process_events()
        manager._h_modules.pop(name)
        for attr in (name.lower(), f"{name}Instance", f"{name}Widget"):
            if hasattr(slicer.modules, attr):
                delattr(slicer.modules, attr)
        if cpp._h_widget is not None:
            cpp._h_widget.hide()
            cpp._h_widget.deleteLater()
        self.process_events()

    # ------------------------------------------------------------ event loop
    def process_events(self) -> None:
        QtWidgets.QApplication.processEvents()
        QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.DeferredDelete)
        pq.raise_slot_errors()

    def pump(self, seconds: float) -> None:
        """Run the event loop (timers fire) for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.process_events()
            time.sleep(0.005)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        """Run the event loop until ``condition()`` holds; fail after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.process_events()
            time.sleep(0.01)
        self.process_events()

    def finish_startup(self) -> None:
        """What Slicer does once every module is loaded: ``startupCompleted()`` (emitted through a
        zero-delay timer when there is no main window shown, qSlicerApplicationHelper.hxx)."""
        self.app.startupCompleted.emit()
        self.process_events()

    def _delay_display(self, message, autoCloseMsec=1000, parent=None, **kwargs):
        self.messages.append(str(message))
        self.process_events()

    # ------------------------------------------------------------ pictures
    def screenshot(self, name: str, path, width: int = 460) -> Path:
        """A PNG of the module's panel as it is drawn now."""
        representation = self.app._h_module_manager.module(name).widgetRepresentation()
        self.process_events()
        # the whole panel, as tall as its contents at this width (Slicer's module panel scrolls);
        # twice, as word-wrapped labels only know their height once they have their width
        for child in QtCore.QObject.findChildren(representation, QtWidgets.QWidget):
            child.updateGeometry()  # texts set since the last layout may have changed heights
        self.process_events()
        for _ in range(3):
            layout = QtWidgets.QWidget.layout(representation)
            actual = max(width, QtWidgets.QWidget.minimumSizeHint(representation).width())
            height = layout.heightForWidth(actual) if layout is not None and layout.hasHeightForWidth() else -1
            height = height if height > 0 else QtWidgets.QWidget.sizeHint(representation).height()
            representation.resize(width, max(400, min(1800, height)))
            self.process_events()
        pixmap = representation.grab()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not pixmap.save(str(path)):
            raise RuntimeError(f"could not write {path}")
        return path


_ABSENT = object()


def _no_pip(*args, **kwargs):
    raise AssertionError("a panel tried to pip-install into Slicer's Python during a test")


_QT_MODULE = None


def qt_module():
    """The ``qt`` module (one per process: classes must stay the same objects)."""
    global _QT_MODULE
    if _QT_MODULE is None:
        from . import standins  # noqa: F401 - registers the Slicer/CTK widgets with the loader
        from .uiloader import QUiLoader
        _QT_MODULE = pq.make_qt_module()
        pq.register_class("QUiLoader", QUiLoader)
        pq.register_class("QTimer", QTimer)
    return _QT_MODULE


class QTimer(pq.qt_class("QTimer")):
    """``qt.QTimer``; ``singleShot(msec, callable)`` reports a raising callable like a slot."""

    _h_cpp = True

    @staticmethod
    def singleShot(msec, *args):  # noqa: N802
        if len(args) == 1 and callable(args[0]):
            fn = args[0]
            QtCore.QTimer.singleShot(int(msec), pq.wrap_slot(fn, f"QTimer.singleShot -> {pq._slot_name(fn)}"))
            return
        QtCore.QTimer.singleShot(int(msec), *args)
