"""Import rules of the core package ``pantheon/`` (see docs: architecture, "Layers").

Rules enforced here:

1. Nothing in ``pantheon/`` imports ``slicer``, ``qt``, ``ctk``, ``vtk`` (or Slicer's other
   application-only modules) at module level. Module level means everything that runs when the
   module is imported: top-level statements, including the bodies of top-level ``if``/``try``/
   ``with``/``for`` blocks and class bodies. Only ``pantheon/slicerbridge`` may import them,
   and only inside function bodies.
2. Every submodule of ``pantheon`` imports in a plain Python where those modules do not exist
   (checked in a subprocess whose import system refuses them), and none of them even tries to
   import them at import time.
3. The modules the Slicer process loads (``pantheon.worker.client``, ``pantheon.slicerbridge``)
   import without torch or MONAI.

The scanner and the import blocker are checked against synthetic code first, so a passing
test means something.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "pantheon"
BRIDGE_DIR = PACKAGE_DIR / "slicerbridge"

# Top-level names that only exist inside the Slicer application (or that drag VTK in).
SLICER_ONLY = ("slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt", "sitkUtils")
# What the Slicer process must never load.
HEAVY = ("torch", "monai", "torchvision", "safetensors")
# Modules that run inside the Slicer process (must import without torch/MONAI).
SLICER_SIDE_MODULES = ("pantheon.worker.client", "pantheon.slicerbridge")

_IMPORT_FUNCS = {"import_module", "__import__"}  # importlib.import_module("x"), __import__("x")


# --------------------------------------------------------------------------------------------
# AST scanner
# --------------------------------------------------------------------------------------------


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _imported_names(node: ast.AST) -> list[str]:
    """Absolute module names imported by one node (relative imports are package-internal)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level == 0 and node.module:
            return [node.module]
        return []
    if isinstance(node, ast.Call):
        func = node.func
        fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if fname in _IMPORT_FUNCS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                return [arg.value]
    return []


def _walk_module_level(nodes):
    """Yield every node that executes at import time: descends into compound statements and
    class bodies, but not into function bodies or lambdas (those run only when called)."""
    stack = list(reversed(list(nodes)))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            # Decorators and default values do run at import time.
            if not isinstance(node, ast.Lambda):
                stack.extend(reversed(node.decorator_list))
            stack.extend(reversed([d for d in node.args.defaults + node.args.kw_defaults if d]))
            continue
        yield node
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _walk_all(tree: ast.AST):
    yield from ast.walk(tree)


def find_import_violations(source: str, filename: str = "<string>", *, allow_in_functions: bool,
                           forbidden=SLICER_ONLY) -> list[str]:
    """Return "file:line: message" strings for imports of ``forbidden`` top-level names.

    Module-level imports are always violations. Imports inside function bodies are violations
    unless ``allow_in_functions`` is true.
    """
    tree = ast.parse(source, filename=filename)
    forbidden = set(forbidden)
    module_level_ids = set()
    problems = []
    for node in _walk_module_level(tree.body):
        module_level_ids.add(id(node))
        for name in _imported_names(node):
            if _top(name) in forbidden:
                problems.append(f"{filename}:{node.lineno}: module-level import of {name!r}")
    if not allow_in_functions:
        for node in _walk_all(tree):
            if id(node) in module_level_ids:
                continue
            for name in _imported_names(node):
                if _top(name) in forbidden:
                    problems.append(
                        f"{filename}:{node.lineno}: import of {name!r} (only pantheon/slicerbridge "
                        "may import Slicer modules, and only inside functions)")
    return problems


def _package_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


# --- self-checks: the scanner must be able to fail ------------------------------------------


@pytest.mark.parametrize("snippet", [
    "import vtk\n",
    "import vtk.util.numpy_support\n",
    "from vtkmodules.vtkCommonCore import vtkPoints\n",
    "import numpy, slicer\n",
    "from slicer.util import arrayFromVolume\n",
    "import qt as QtGui\n",
    "if True:\n    import ctk\n",
    "try:\n    import slicer\nexcept ImportError:\n    slicer = None\n",
    "try:\n    pass\nexcept ImportError:\n    pass\nelse:\n    import vtk\n",
    "with open(__file__):\n    import vtk\n",
    "class A:\n    import vtk\n",
    "import importlib\nvtk = importlib.import_module('vtk')\n",
    "qt = __import__('qt')\n",
    "def f(x=__import__('vtk')):\n    pass\n",
])
def test_scanner_flags_module_level_imports(snippet):
    assert find_import_violations(snippet, allow_in_functions=True), snippet
    assert find_import_violations(snippet, allow_in_functions=False), snippet


@pytest.mark.parametrize("snippet", [
    "def f():\n    import vtk\n    return vtk\n",
    "def f():\n    from slicer.util import arrayFromVolume\n",
    "async def f():\n    import qt\n",
    "class A:\n    def m(self):\n        import slicer\n",
    "f = lambda: __import__('vtk')\n",
])
def test_scanner_accepts_imports_inside_functions_only_where_allowed(snippet):
    assert find_import_violations(snippet, allow_in_functions=True) == []
    assert find_import_violations(snippet, allow_in_functions=False), snippet


@pytest.mark.parametrize("snippet", [
    "import vtkfoo\nimport qtpy\nimport slicerio\nimport numpy as np\n",
    "from . import vtk\nfrom .qt import x\n",
    "import os\nname = 'import vtk'\n",
])
def test_scanner_ignores_other_names(snippet):
    assert find_import_violations(snippet, allow_in_functions=False) == []


# --- the rule on the real package -----------------------------------------------------------


def test_package_exists():
    assert (PACKAGE_DIR / "__init__.py").is_file()


def test_no_slicer_imports_in_core_package():
    problems = []
    for path in _package_files():
        rel = path.relative_to(REPO).as_posix()
        in_bridge = BRIDGE_DIR in path.parents
        try:
            source = path.read_text(encoding="utf-8")
            problems += find_import_violations(source, rel, allow_in_functions=in_bridge)
        except SyntaxError as exc:
            problems.append(f"{rel}:{exc.lineno}: cannot parse: {exc.msg}")
    assert not problems, "Import rule violations:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# Runtime check in a subprocess: import everything with Slicer's modules made unavailable
# --------------------------------------------------------------------------------------------

_CHILD = r'''
import importlib, importlib.abc, json, pkgutil, sys, traceback

package, blocked, targets = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3]
attempts = []  # [blocked name, module whose code asked for it]

def importer():
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if not (fn.startswith("<frozen importlib") or "importlib" in fn.replace("\\", "/").split("/")[-2:-1]):
            return f.f_globals.get("__name__")
        f = f.f_back
    return None

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".", 1)[0] in blocked:
            attempts.append([fullname, importer()])
            raise ImportError(f"{fullname} is not available (blocked by test_import_rules)")
        return None

for name in list(sys.modules):
    if name.split(".", 1)[0] in blocked:
        del sys.modules[name]
sys.meta_path.insert(0, Blocker())

imported, failures = [], {}

def try_import(name):
    try:
        mod = importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-6)
        return None
    imported.append(name)
    return mod

def walk(name):
    # Like pkgutil.walk_packages, but every module is imported by name and errors are kept.
    mod = try_import(name)
    if mod is not None and hasattr(mod, "__path__"):
        for info in pkgutil.iter_modules(mod.__path__, name + "."):
            if info.name.endswith(".__main__"):
                continue  # runs the program when imported (python -m); still AST-scanned
            walk(info.name)

if targets == "*":
    walk(package)
else:
    for name in targets.split(","):
        try_import(name)

leaked = sorted(n for n in sys.modules if n.split(".", 1)[0] in blocked)
print(json.dumps({"imported": imported, "failures": failures, "attempts": attempts, "leaked": leaked}))
'''


def run_blocked_import(package: str, blocked, *, targets="*", path_entries=(REPO,), timeout=600):
    """Import ``package`` (all submodules when targets == "*") in a fresh interpreter where the
    ``blocked`` top-level names raise ImportError. Returns the child's JSON report."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in path_entries]
                                        + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, package, ",".join(blocked),
         targets if isinstance(targets, str) else ",".join(targets)],
        cwd=str(path_entries[0]), env=env, capture_output=True, text=True, timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"import subprocess failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1])


def _format_report(report, what: str) -> str:
    out = []
    for name, tb in sorted(report["failures"].items()):
        out.append(f"--- {name} failed to import:\n{tb}")
    for name, importer in dict.fromkeys(map(tuple, report["attempts"])):
        out.append(f"--- {importer or '?'} tried to import {name!r} {what}")
    if report["leaked"]:
        out.append(f"--- blocked modules ended up in sys.modules: {report['leaked']}")
    return "\n".join(out)


def _assert_clean(report, what: str):
    bad = report["failures"] or report["attempts"] or report["leaked"]
    assert not bad, _format_report(report, what)


# --- self-check: the blocker must be able to fail -------------------------------------------


def test_blocker_detects_forbidden_imports(tmp_path):
    pkg = tmp_path / "fakepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ok.py").write_text("import json\n")
    (pkg / "bad.py").write_text("import vtk\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "sneaky.py").write_text(
        "try:\n    import slicer\nexcept ImportError:\n    slicer = None\n")
    (pkg / "sub" / "lazy.py").write_text("def f():\n    import qt\n")
    (pkg / "__main__.py").write_text("raise SystemExit(3)\n")  # never imported by the walk
    report = run_blocked_import("fakepkg", SLICER_ONLY, path_entries=(tmp_path,))
    assert set(report["failures"]) == {"fakepkg.bad"}
    assert "ImportError" in report["failures"]["fakepkg.bad"]
    assert ["slicer", "fakepkg.sub.sneaky"] in report["attempts"]
    assert {"fakepkg", "fakepkg.ok", "fakepkg.sub", "fakepkg.sub.lazy"} <= set(report["imported"])
    assert report["leaked"] == []


# --- the rule on the real package -----------------------------------------------------------


def test_every_pantheon_module_imports_without_slicer():
    """Every pantheon submodule (pkgutil.walk_packages) imports when slicer/qt/ctk/vtk/PythonQt
    are unavailable, and none of them asks for those modules at import time."""
    report = run_blocked_import("pantheon", SLICER_ONLY)
    assert "pantheon" in report["imported"]
    _assert_clean(report, "at import time (Slicer-only module; import it inside a function "
                          "in pantheon/slicerbridge instead)")


def _module_exists(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (REPO / rel.with_suffix(".py")).is_file() or (REPO / rel / "__init__.py").is_file()


@pytest.mark.parametrize("module", SLICER_SIDE_MODULES)
def test_slicer_side_modules_import_without_torch(module):
    """What the Slicer process imports must not need torch/MONAI (architecture: the Slicer
    process never imports torch)."""
    if not _module_exists(module):
        pytest.skip(f"{module} does not exist yet")
    targets = [module]
    if module == "pantheon.slicerbridge":
        targets += sorted(
            "pantheon.slicerbridge." + p.stem for p in BRIDGE_DIR.glob("*.py") if p.stem != "__init__")
    report = run_blocked_import("pantheon", HEAVY + SLICER_ONLY, targets=targets)
    _assert_clean(report, "at import time (the Slicer process must not load torch/MONAI or "
                          "Slicer modules at module level)")


def test_child_script_is_valid_python():
    compile(textwrap.dedent(_CHILD), "<child>", "exec")


# --------------------------------------------------------------------------------------------
# Layering: no import cycles, no private names across modules
# --------------------------------------------------------------------------------------------


def _module_name(path: Path, top: Path) -> str:
    parts = list(path.relative_to(top).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for type hints only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _pantheon_imports(path: Path, top: Path):
    """(imported pantheon module, imported names) pairs of one file, wherever the import statement
    is (module level or inside a function: a lazy import is still a dependency)."""
    me = _module_name(path, top)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "pantheon" or target.startswith("pantheon."):
                yield target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pantheon"):
                    yield alias.name, []


def import_graph(root: Path = PACKAGE_DIR):
    modules = {_module_name(p, root.parent): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    graph, private = {m: set() for m in modules}, []
    for module, path in modules.items():
        for target, names in _pantheon_imports(path, root.parent):
            for name in names or [None]:
                full = f"{target}.{name}" if name else target
                dep = full if full in modules else target
                if dep in modules and dep != module:
                    graph[module].add(dep)
                if name and name.startswith("_") and not name.startswith("__") and dep != module:
                    private.append(f"{module} imports {name} from {target}")
    return graph, private


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    pkg = tmp_path / "pantheon"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "y.py").write_text("from . import x\nfrom ..a.x import _hidden\n")
    (pkg / "a" / "z.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import f\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from .y import g\n    from .z import h\n")
    graph, private = import_graph(pkg)
    graph = {k.split("pantheon.", 1)[-1]: {d.split("pantheon.", 1)[-1] for d in v} for k, v in graph.items()}
    assert cycles(graph) == [["a.x", "a.y"]]
    assert private and "_hidden" in private[0]


def test_no_import_cycles_and_no_private_names_across_modules():
    """A module imports another's public names only, and no two modules need each other, even
    through imports inside functions: the layers run one way (io < models < pipelines < train,
    worker, batch, cli), and a model's plug-in is reached by name (pantheon.plugins)."""
    graph, private = import_graph()
    assert cycles(graph) == []
    assert private == []
