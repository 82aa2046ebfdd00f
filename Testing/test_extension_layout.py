"""Layout of the Slicer extension: CMake files, module files, resources, UI, icons.

No Slicer is needed: CMakeLists.txt files are parsed with a small CMake tokenizer, module files
are checked with ``ast`` and ``py_compile``, ``.ui`` files with ``xml.etree``. One test runs each
module file in a subprocess against stand-ins for ``slicer``/``qt``/``ctk``/``vtk`` (with torch
and MONAI made unavailable) to check that it imports, declares itself, and that its self-test
and widget setup run.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

from extension_layout import MODULES, Command, find, keyword_args, png_size, read_cmake

from pantheon.plugins import plugins  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER_IDS = {p.slicer_module: re.search(r"\d{4}\.\d{4,5}", p.paper).group(0) for p in plugins() if p.slicer_module}
EXTENSION_VARS = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                  "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                  "EXTENSION_DEPENDS")
# Never imported by a module file (the Slicer process does not load torch).
HEAVY = ("torch", "monai", "torchvision", "safetensors")
# Parts of the core package that need torch; the Slicer side talks to them through the worker.
HEAVY_CORE = ("pantheon.models", "pantheon.pipelines", "pantheon.train", "pantheon.synth")


# --- self-checks for the reader ----------------------------------------------------------


def test_cmake_reader(tmp_path):
    f = tmp_path / "CMakeLists.txt"
    f.write_text(
        '# comment (with parens)\n'
        'set(MODULE_NAME Foo)\n'
        'set(FILES ${MODULE_NAME}.py  # trailing comment\n  Resources/UI/${MODULE_NAME}.ui\n  )\n'
        'message(STATUS "text (with parens) and # not a comment")\n'
        'if(BUILD_TESTING AND (A OR B))\n  slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)\nendif()\n'
        'slicerMacroBuildScriptedModule(NAME ${MODULE_NAME} SCRIPTS ${FILES} WITH_GENERIC_TESTS)\n')
    cmds = read_cmake(f)
    assert [c.name for c in cmds] == ["set", "set", "message", "if",
                                      "slicer_add_python_unittest", "endif",
                                      "slicermacrobuildscriptedmodule"]
    assert cmds[1].args == ["FILES", "Foo.py", "Resources/UI/Foo.ui"]
    assert cmds[2].args == ["STATUS", "text (with parens) and # not a comment"]
    assert cmds[4].conditions == ("BUILD_TESTING AND (A OR B)",)
    kw = keyword_args(cmds[6].args, {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS"})
    assert kw == {"NAME": ["Foo"], "SCRIPTS": ["Foo.py", "Resources/UI/Foo.ui"], "WITH_GENERIC_TESTS": []}


# --------------------------------------------------------------------------------------------
# Root CMakeLists.txt
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root_cmds():
    path = REPO / "CMakeLists.txt"
    assert path.is_file(), "root CMakeLists.txt is missing"
    return read_cmake(path)


def test_root_cmake_is_a_slicer_extension(root_cmds):
    names = [c.name for c in root_cmds]
    assert names[0] == "cmake_minimum_required"
    assert find(root_cmds, "project")[0].args[0] == "Pantheon"
    assert any(c.args[:2] == ["Slicer", "REQUIRED"] for c in find(root_cmds, "find_package"))
    includes = [c.args[0] for c in find(root_cmds, "include")]
    assert includes[0] == "${Slicer_USE_FILE}"
    assert includes[-2:] == ["${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"]
    # The generate-config / cpack includes come last, after every module.
    last_subdir = max(i for i, c in enumerate(root_cmds) if c.name == "add_subdirectory")
    first_pkg_include = next(i for i, c in enumerate(root_cmds)
                             if c.name == "include" and "EXTENSION_GENERATE_CONFIG" in c.args[0])
    assert last_subdir < first_pkg_include
    use_file = next(i for i, c in enumerate(root_cmds) if c.name == "include")
    assert use_file < min(i for i, c in enumerate(root_cmds) if c.name == "add_subdirectory")


def test_root_cmake_metadata(root_cmds):
    values = {c.args[0]: c.args[1:] for c in find(root_cmds, "set") if c.args}
    for var in EXTENSION_VARS:
        assert values.get(var) and values[var][0].strip(), f"{var} is not set"
    assert values["EXTENSION_DEPENDS"] == ["NA"]
    assert values["EXTENSION_CATEGORY"][0] in ("Segmentation", "Machine Learning")
    icon_url = values["EXTENSION_ICONURL"][0]
    assert icon_url.endswith("Resources/Icons/Pantheon.png")
    assert png_size(REPO / "Resources" / "Icons" / "Pantheon.png") == (128, 128)


def module_folders(root: Path = REPO) -> set[str]:
    """What the root CMakeLists.txt builds: folders <Name>/ with <Name>.py and a CMakeLists.txt."""
    return {p.name for p in root.iterdir() if p.is_dir() and (p / f"{p.name}.py").is_file()
            and (p / "CMakeLists.txt").is_file()}


def test_root_cmake_adds_every_module_folder(root_cmds):
    """The root adds module folders by a glob (a new model edits nothing there); the folders it
    finds are exactly the plug-ins' Slicer modules and the tool modules. The extension build
    (test_extension_build.py) runs the glob in CMake itself."""
    globs = [c for c in find(root_cmds, "file") if c.args and c.args[0] == "GLOB"]
    assert any(a.endswith("/*/CMakeLists.txt") for c in globs for a in c.args), "no glob over module folders"
    loops = find(root_cmds, "foreach")
    assert loops, "no loop over the globbed module folders"
    subdirs = [c.args[0] for c in find(root_cmds, "add_subdirectory")]
    assert subdirs == ["${module_name}"], f"modules must not be listed by hand: {subdirs}"
    conditions = [c.conditions for c in find(root_cmds, "add_subdirectory")][0]
    assert any("${module_name}.py" in cond for cond in conditions)
    assert module_folders() == set(MODULES), "module folders and the plug-ins' and tool Slicer modules differ"
    for stray in ("Testing", "docs", "Resources", "pantheon", "ExtensionsIndex"):
        assert stray not in module_folders()


def test_root_cmake_ships_core_package(root_cmds):
    calls = find(root_cmds, "ctkMacroCompilePythonScript")
    assert len(calls) == 1, "the pantheon package must be installed next to the modules"
    kw = keyword_args(calls[0].args, {"TARGET_NAME", "SCRIPTS", "RESOURCES", "SOURCE_DIR",
                                      "DESTINATION_DIR", "INSTALL_DIR", "NO_INSTALL_SUBDIR"})
    assert kw["DESTINATION_DIR"][0].endswith("${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/pantheon")
    assert kw["INSTALL_DIR"][0] == "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/pantheon"
    assert "NO_INSTALL_SUBDIR" in kw
    globs = [c for c in find(root_cmds, "file") if c.args and c.args[0] == "GLOB_RECURSE"]
    patterns = [a for c in globs for a in c.args]
    assert any(p.endswith("pantheon/*.py") for p in patterns)
    # Package data declared in pyproject.toml must be shipped too.
    if tomllib is None:
        pytest.skip("tomllib needs Python >= 3.11")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    data = pyproject.get("tool", {}).get("setuptools", {}).get("package-data", {}).get("pantheon", [])
    for pattern in data:
        assert any(p.endswith("pantheon/" + pattern) for p in patterns), \
            f"package data {pattern!r} (pyproject.toml) is not installed by CMakeLists.txt"
        assert list((REPO / "pantheon").glob(pattern)), f"package data {pattern!r} matches no file"
    for needed in ("registry/cards/*.json", "registry/weights/*.safetensors", "py.typed"):
        assert needed in data, f"{needed} must be package data (pyproject.toml)"


def test_every_add_subdirectory_has_a_cmakelists():
    """Every folder added (the root's globbed module folders, then their own add_subdirectory
    calls) has a CMakeLists.txt, down to each module's Testing/Python."""
    todo, seen = [REPO / m for m in sorted(module_folders())], set()
    while todo:
        d = todo.pop()
        seen.add(d)
        f = d / "CMakeLists.txt"
        assert f.is_file(), f"{f.relative_to(REPO)} missing (referenced by add_subdirectory)"
        for c in find(read_cmake(f), "add_subdirectory"):
            todo.append((d / c.args[0]).resolve())
    for module in MODULES:
        assert (REPO / module / "Testing" / "Python").resolve() in seen


# --------------------------------------------------------------------------------------------
# Module folders
# --------------------------------------------------------------------------------------------


def module_build(module: str) -> tuple[list[Command], dict[str, list[str]]]:
    cmds = read_cmake(REPO / module / "CMakeLists.txt")
    calls = find(cmds, "slicerMacroBuildScriptedModule")
    assert len(calls) == 1, f"{module}/CMakeLists.txt must call slicerMacroBuildScriptedModule once"
    kw = keyword_args(calls[0].args, {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS",
                                      "WITH_SUBDIR", "VERBOSE"})
    return cmds, kw


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake(module):
    cmds, kw = module_build(module)
    assert kw["NAME"] == [module]
    assert "WITH_GENERIC_TESTS" in kw
    assert f"{module}.py" in kw["SCRIPTS"]
    tests = find(cmds, "slicer_add_python_unittest")
    assert any(c.args == ["SCRIPT", f"{module}.py"] and any("BUILD_TESTING" in cond for cond in c.conditions)
               for c in tests), f"{module}: slicer_add_python_unittest(SCRIPT {module}.py) under BUILD_TESTING"


@pytest.mark.parametrize("module", MODULES)
def test_module_files_named_in_cmake_exist(module):
    _, kw = module_build(module)
    base = REPO / module
    for script in kw["SCRIPTS"]:
        assert (base / script).is_file() or (base / (script + ".py")).is_file(), f"{module}: {script} missing"
    for res in kw.get("RESOURCES", []):
        assert (base / res).is_file(), f"{module}: resource {res} missing"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_script_is_listed(module):
    """A module .py file that CMake does not list is silently missing from the built extension."""
    _, kw = module_build(module)
    listed = {s if s.endswith(".py") else s + ".py" for s in kw["SCRIPTS"]}
    on_disk = {p.relative_to(REPO / module).as_posix() for p in (REPO / module).rglob("*.py")
               if "Testing" not in p.relative_to(REPO / module).parts and "__pycache__" not in p.parts}
    assert on_disk - listed == set(), f"{module}: not listed in MODULE_PYTHON_SCRIPTS: {on_disk - listed}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_resource_is_listed(module):
    """A file under Resources/ that CMake does not list is silently missing from the package."""
    _, kw = module_build(module)
    listed = set(kw.get("RESOURCES", []))
    on_disk = {p.relative_to(REPO / module).as_posix()
               for p in (REPO / module / "Resources").rglob("*")
               if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.parts)}
    assert on_disk - listed == set(), f"{module}: not listed in MODULE_PYTHON_RESOURCES: {on_disk - listed}"
    assert f"Resources/UI/{module}.ui" in listed
    assert f"Resources/Icons/{module}.png" in listed


@pytest.mark.parametrize("module", MODULES)
def test_module_icon(module):
    w, h = png_size(REPO / module / "Resources" / "Icons" / f"{module}.png")
    assert (w, h) == (128, 128)


def test_module_icons_differ():
    blobs = {m: (REPO / m / "Resources" / "Icons" / f"{m}.png").read_bytes() for m in MODULES}
    blobs["Pantheon"] = (REPO / "Resources" / "Icons" / "Pantheon.png").read_bytes()
    assert len(set(blobs.values())) == len(blobs)


@pytest.mark.parametrize("module", MODULES)
def test_module_ui(module):
    ui = REPO / module / "Resources" / "UI" / f"{module}.ui"
    root = ET.parse(ui).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == module
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == module
    layout = top.find("layout")
    assert layout is not None and layout.get("class") == "QVBoxLayout"
    labels = [w for w in top.iter("widget") if w.get("class") == "QLabel"]
    assert labels, "the panel shows at least one QLabel"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique (childWidgetVariables)"
    declared = {cw.findtext("class") for cw in root.iter("customwidget")}
    used_custom = {w.get("class") for w in root.iter("widget") if not w.get("class", "").startswith("Q")}
    assert used_custom <= declared, f"custom widgets not declared: {used_custom - declared}"


# --- module .py: compiles, defines the 4 classes, no heavy imports ---------------------------


def _parse(module: str) -> ast.Module:
    path = REPO / module / f"{module}.py"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _base_names(cls: ast.ClassDef) -> list[str]:
    return [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "?") for b in cls.bases]


@pytest.mark.parametrize("module", MODULES)
def test_module_py_compiles(module, tmp_path):
    py_compile.compile(str(REPO / module / f"{module}.py"), cfile=str(tmp_path / "m.pyc"), doraise=True)


@pytest.mark.parametrize("module", MODULES)
def test_module_py_defines_the_four_classes(module):
    tree = _parse(module)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    expected = {module: "ScriptedLoadableModule",
                f"{module}Widget": "ScriptedLoadableModuleWidget",
                f"{module}Logic": "ScriptedLoadableModuleLogic",
                f"{module}Test": "ScriptedLoadableModuleTest"}
    for name, base in expected.items():
        assert name in classes, f"{module}.py: class {name} missing"
        assert base in _base_names(classes[name]), f"{module}.py: {name} must derive from {base}"
    test_methods = {n.name for n in classes[f"{module}Test"].body if isinstance(n, ast.FunctionDef)}
    assert "runTest" in test_methods and any(m.startswith("test") for m in test_methods)
    assert "setup" in {n.name for n in classes[f"{module}Widget"].body if isinstance(n, ast.FunctionDef)}


def _parent_assignments(module: str) -> dict[str, ast.expr]:
    cls = next(n for n in _parse(module).body if isinstance(n, ast.ClassDef) and n.name == module)
    out = {}
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Attribute)
                        and t.value.attr == "parent"):
                    out[t.attr] = node.value
    return out


def _strings(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata(module):
    attrs = _parent_assignments(module)
    for attr in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert attr in attrs, f"{module}: self.parent.{attr} is not set"
    assert ast.literal_eval(attrs["categories"]) == ["Pantheon"]
    assert _strings(attrs["title"]).strip()
    if module in PAPER_IDS:  # a model module; tool modules have no paper
        assert PAPER_IDS[module] in _strings(attrs["helpText"]), f"{module}: help text must cite the paper"


@pytest.mark.parametrize("module", MODULES)
def test_module_ui_paths_exist(module):
    """Every resourcePath("...") string in the module file names a listed resource."""
    _, kw = module_build(module)
    listed = set(kw.get("RESOURCES", []))
    used = [n.args[0].value for n in ast.walk(_parse(module))
            if isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) == "resourcePath"
            and n.args and isinstance(n.args[0], ast.Constant)]
    assert f"UI/{module}.ui" in used
    for rel in used:
        assert f"Resources/{rel}" in listed, f"{module}: resourcePath({rel!r}) not in MODULE_PYTHON_RESOURCES"


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            out.append((node.lineno, str(node.args[0].value)))
    return out


def _forbidden_in_module_file(tree: ast.AST) -> list[str]:
    bad = []
    for line, name in _imports(tree):
        if name.split(".")[0] in HEAVY:
            bad.append(f"line {line}: imports {name}")
        elif any(name == h or name.startswith(h + ".") for h in HEAVY_CORE):
            bad.append(f"line {line}: imports {name} (needs torch; use the worker)")
    return bad


def test_forbidden_import_check_can_fail():
    for snippet in ("import torch", "def f():\n    import monai.networks",
                    "from pantheon.models.nemesis import mae", "from pantheon import models",
                    "import importlib\nimportlib.import_module('torch')"):
        assert _forbidden_in_module_file(ast.parse(snippet)), snippet
    assert _forbidden_in_module_file(ast.parse(
        "import numpy\nimport slicer\nfrom pantheon.worker import client\nimport pantheon.slicerbridge")) == []


@pytest.mark.parametrize("module", MODULES)
def test_module_py_never_imports_torch(module):
    bad = _forbidden_in_module_file(_parse(module))
    assert not bad, f"{module}.py: " + "; ".join(bad)


# --- module .py runs against Slicer stand-ins ------------------------------------------------

_STUB_RUNNER = (r'''
import importlib.abc, importlib.util, json, os, sys, types, unittest
from unittest import mock

module_name, module_path = sys.argv[1], sys.argv[2]
HEAVY = {"torch", "monai", "torchvision", "safetensors"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in HEAVY:
            raise ImportError(f"{fullname} must not be imported by a Slicer module file")
        return None
sys.meta_path.insert(0, Blocker())

class StubModule(types.ModuleType):
    """Permissive stand-in: unknown attributes are MagicMocks."""
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value

def stub(name):
    m = StubModule(name)
    m.__path__ = []  # allow submodules
    sys.modules[name] = m
    return m

for name in ("qt", "ctk", "vtk", "slicer.parameterNodeWrapper", "slicer.packaging"):
    stub(name)
slicer = stub("slicer")
slicer.mrmlScene = mock.MagicMock(name="mrmlScene")
i18n = stub("slicer.i18n")
i18n.tr = lambda text: text
i18n.translate = lambda context, text: text
util = stub("slicer.util")
loaded_ui = []

def loadUI(path):
    if not os.path.isfile(path):
        raise RuntimeError(f"Could not load UI file: {path}")
    loaded_ui.append(path)
    return mock.MagicMock(name="uiWidget")
util.loadUI = loadUI
util.childWidgetVariables = lambda widget: mock.MagicMock(name="ui")

class VTKObservationMixin:
    def __init__(self): self.Observations = []
    def addObserver(self, *a, **k): pass
    def removeObserver(self, *a, **k): pass
    def removeObservers(self, *a, **k): pass
util.VTKObservationMixin = VTKObservationMixin
slicer.util, slicer.i18n = util, i18n

def _module_dir(obj):
    return os.path.dirname(sys.modules[type(obj).__module__].__file__)

slm = stub("slicer.ScriptedLoadableModule")
class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent, self.moduleName = parent, type(self).__name__
    def resourcePath(self, filename):
        return os.path.join(_module_dir(self), "Resources", filename)
class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[:-len("Widget")]
        self.parent, self.layout, self.developerMode = parent or mock.MagicMock(), mock.MagicMock(), False
    def setup(self): pass
    def cleanup(self): pass
    def resourcePath(self, filename):
        return os.path.join(_module_dir(self), "Resources", filename)
class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        name = type(self).__name__
        self.moduleName = name[:-len("Logic")] if name.endswith("Logic") else name
        self.isSingletonParameterNode = True
    def getParameterNode(self):
        return mock.MagicMock(name="parameterNode")
class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None): pass
    def takeScreenshot(self, *a, **k): pass
for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, '''
                r'''ScriptedLoadableModuleTest):
    setattr(slm, cls.__name__, cls)
slm.__all__ = [c.__name__ for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                    ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)]
slicer.ScriptedLoadableModule = slm

sys.path.insert(0, os.path.dirname(module_path))
spec = importlib.util.spec_from_file_location(module_name, module_path)
mod = importlib.util.module_from_spec(spec)
sys.modules[module_name] = mod
spec.loader.exec_module(mod)

parent = types.SimpleNamespace()
getattr(mod, module_name)(parent)
logic = getattr(mod, module_name + "Logic")()
test = getattr(mod, module_name + "Test")()
test.runTest()
# the widget's setup() runs in a real Qt, not against MagicMocks: Testing/test_panel_*.py

print(json.dumps({
    "title": parent.title, "categories": list(parent.categories),
    "helpText": parent.helpText, "logicModuleName": logic.moduleName,
    "sceneCleared": slicer.mrmlScene.Clear.called, "loadedUI": loaded_ui,
    "heavyLoaded": sorted(n for n in sys.modules if n.split(".")[0] in HEAVY),
}))
''')


@pytest.mark.parametrize("module", MODULES)
def test_module_runs_against_slicer_stubs(module):
    path = REPO / module / f"{module}.py"
    proc = subprocess.run([sys.executable, "-B", "-c", _STUB_RUNNER, module, str(path)],
                          cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{module}.py failed against Slicer stand-ins:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["title"].strip()
    assert report["categories"] == ["Pantheon"]
    assert PAPER_IDS[module] in report["helpText"] if module in PAPER_IDS else report["helpText"].strip()
    assert report["logicModuleName"] == module
    assert report["sceneCleared"], "the self-test's setUp clears the scene"
    assert report["heavyLoaded"] == []


def test_stub_runner_can_fail(tmp_path):
    bad = tmp_path / "Bad.py"
    bad.write_text("import torch\n")
    proc = subprocess.run([sys.executable, "-B", "-c", _STUB_RUNNER, "Bad", str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "must not be imported" in proc.stderr
