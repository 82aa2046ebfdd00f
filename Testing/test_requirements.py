"""One list of requirements (pyproject.toml ``[project] dependencies``) behind the environment
check and the install plan, and a scan of everything the worker's tasks import that fails when
that list misses a package."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pantheon.slicerbridge import install
from pantheon.worker import requirements as reqs
from pantheon.worker.client import WorkerClient

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pantheon"

# Imported by worker code but deliberately not required: optional extras, each guarded where used.
OPTIONAL = {
    "ray": "the 'ray' extra: batch --engine ray only (pantheon/batch/ray_executor.py)",
    "mamba_ssm": "optional CUDA selective-scan kernel; pantheon/models/ssm falls back to its own scan",
}
# Declared but never imported by name: needed by another requirement at run time.
RUNTIME_ONLY = {
    "einops": "MONAI's DiffusionModelUNet / ControlNet import it (NeoGen checks with find_spec)",
}


# ------------------------------------------------------------------------------------ the scan
def _module_file(dotted):
    rel = Path(*dotted.split("."))
    for cand in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _module_name(path):
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path):
    """(pantheon modules, third-party top-level names) imported anywhere in ``path``: module
    level, inside functions, try blocks and conditionals alike."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    internal, external = set(), set()

    def add(name):
        if name == "pantheon" or name.startswith("pantheon."):
            # "from pantheon.x import y": y may be a module too
            internal.add(name)
        else:
            external.add(name.split(".")[0])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "__future__":
                continue
            add(mod)
            if mod == "pantheon" or mod.startswith("pantheon."):
                for alias in node.names:
                    internal.add(f"{mod}.{alias.name}")
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
              and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)):
            # a package's lazy exports (pantheon.models.lazy_exports): {"name": ".submodule"}
            for value in node.value.values:
                if isinstance(value, ast.Constant) and str(value.value).startswith("."):
                    internal.add(f"{package}{value.value}")
    return internal, external


def reachable_imports(start_files):
    """Third-party top-level names imported by ``start_files`` and, recursively, by every pantheon
    module they import (with every package __init__ on the way)."""
    seen, todo, external, files = set(), list(start_files), {}, []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        files.append(path)
        internal, ext = imports_of(path)
        for name in ext:
            external.setdefault(name, []).append(str(path.relative_to(REPO)))
        for dotted in internal:
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                f = _module_file(".".join(parts[:i]))
                if f is not None and f not in seen:
                    todo.append(f)
    return external, files


def plugin_files(plugin):
    """The module of a model plug-in's worker tasks (what the worker imports of it) and its declaration."""
    modules = {plugin.worker_tasks.partition(":")[0]} if plugin.worker_tasks else set()
    return sorted(_module_file(m) for m in modules | {f"pantheon.models.{plugin.name}.plugin"})


def worker_entry_files():
    """The worker's own modules and every model plug-in's (found through pantheon.plugins at run
    time, by name, so an import scan would not see them)."""
    from pantheon.plugins import plugins
    worker = PACKAGE / "worker"
    files = [worker / "tasks.py", worker / "server.py", worker / "__main__.py"]
    return files + [f for p in plugins() for f in plugin_files(p)]


def third_party(names):
    return {n: where for n, where in names.items() if n not in sys.stdlib_module_names and n != "pantheon"}


def test_the_scan_sees_through_functions_and_relative_imports(tmp_path, monkeypatch):
    # a synthetic check that the scanner would catch what it must catch
    pkg = REPO / "pantheon"
    internal, external = imports_of(pkg / "models" / "neonet" / "tasks.py")
    assert "pantheon.pipelines.neonet" in internal  # "from ...pipelines.neonet import ..." in a function
    assert "pantheon.worker.tasks" in internal  # a relative import three levels up
    found, files = reachable_imports(worker_entry_files())
    names = third_party(found)
    for expected in ("torch", "numpy", "monai", "scipy", "SimpleITK", "sklearn", "PIL", "safetensors", "mamba_ssm"):
        assert expected in names, expected
    assert PACKAGE / "pipelines" / "nemesis.py" in files and PACKAGE / "models" / "neonet" / "tlcr.py" in files


def test_every_package_the_worker_imports_is_a_requirement():
    """Walk the worker's tasks, the pipelines/models/io they import, and so on within pantheon;
    every third-party import must be in pyproject.toml's dependencies (hence in the environment
    check and the install plan), or listed in OPTIONAL with the reason."""
    found = third_party(reachable_imports(worker_entry_files())[0])
    required = {r.module.split(".")[0] for r in reqs.worker_requirements()}
    missing = {n: sorted(set(w))[:3] for n, w in found.items() if n not in required and n not in OPTIONAL}
    assert not missing, (f"imported by worker code but not in pyproject.toml [project] dependencies: {missing}. "
                         f"Add them there (then run python -m pantheon.worker.requirements --write-bundled), "
                         f"or to OPTIONAL in this test when they are an optional extra.")


def test_each_model_declares_what_its_code_imports():
    """A model plug-in's ``requirements`` name what its modules import beyond the worker's own
    (reading, writing, the worker loop), and every one of them is a declared dependency."""
    from pantheon.plugins import plugins
    worker = PACKAGE / "worker"
    core = set(third_party(reachable_imports([worker / "tasks.py", worker / "server.py"])[0]))
    declared = {r.module.split(".")[0]: r.name for r in reqs.worker_requirements()}
    for plugin in plugins():
        found = set(third_party(reachable_imports(plugin_files(plugin))[0])) - set(OPTIONAL)
        mine = {reqs.import_name(n) for n in plugin.requirements}
        assert found - core <= mine, f"{plugin.name} imports {sorted(found - core - mine)} without declaring them"
        assert {reqs.normalize(n) for n in plugin.requirements} <= {reqs.normalize(n) for n in declared.values()}, \
            f"{plugin.name} requires something pyproject.toml does not declare: {plugin.requirements}"
        unused = mine - found - {reqs.import_name(n) for n in RUNTIME_ONLY}
        assert not unused, f"{plugin.name} declares {sorted(unused)} but none of its modules imports them"


@pytest.mark.slow
def test_no_requirement_is_left_unused():
    """The other direction, over the whole package (the command line and batch export need some,
    e.g. highdicom): a declared requirement nothing imports is stale, unless RUNTIME_ONLY says why."""
    found = third_party(reachable_imports(sorted(PACKAGE.rglob("*.py")))[0])
    unused = [r.name for r in reqs.worker_requirements() if r.module not in found and r.name not in RUNTIME_ONLY]
    assert unused == []


# ------------------------------------------------------------------------------------ the list
def test_requirements_come_from_pyproject_in_a_checkout():
    lines, source = reqs.declared_dependencies()
    assert source == str(REPO / "pyproject.toml")
    import tomllib
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert lines == declared
    assert [r.spec for r in reqs.worker_requirements()] == declared


def test_bundled_copy_matches_pyproject():
    """The Slicer extension has neither pyproject.toml nor dist-info; its copy must not go stale."""
    from pantheon.worker._bundled_requirements import DEPENDENCIES
    lines, _ = reqs.declared_dependencies()
    assert DEPENDENCIES == lines, ("pantheon/worker/_bundled_requirements.py is out of date: run "
                                   "python -m pantheon.worker.requirements --write-bundled")


def test_sources_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(reqs, "_package_root", lambda: str(tmp_path))  # no pyproject.toml beside
    monkeypatch.setattr(reqs, "_metadata_dependencies", lambda: ["numpy>=1.24", 'pytest>=7; extra == "dev"'])
    lines, source = reqs.declared_dependencies()
    assert "metadata" in source and [r.name for r in reqs.worker_requirements(lines)] == ["numpy"]
    monkeypatch.setattr(reqs, "_metadata_dependencies", lambda: None)  # the Slicer extension
    lines, source = reqs.declared_dependencies()
    assert source.endswith("_bundled_requirements.py") and "torch>=2.1" in lines
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\ndependencies = ["x"]\n')
    assert reqs.declared_dependencies()[1].endswith("_bundled_requirements.py")  # not pantheon's pyproject


def test_installed_metadata_is_read(monkeypatch):
    monkeypatch.setattr(reqs, "_package_root", lambda: "/nonexistent")
    lines, source = reqs.declared_dependencies()
    assert "metadata" in source and any(l.startswith("torch") for l in lines)
    assert "ray" not in [r.name for r in reqs.worker_requirements(lines)]  # extras are not requirements


def test_pyproject_scanner_without_tomllib_agrees_with_tomllib():
    import tomllib
    text = (REPO / "pyproject.toml").read_text()
    assert reqs._scan_pyproject(text) == tomllib.loads(text)["project"]["dependencies"]
    tricky = ('[build-system]\nrequires = ["setuptools"]\n[project]\nname = "pantheon"\n'
              'dependencies = [\n  "a[x,y]>=1",  # comment with ] and "quotes"\n'
              "  'b; python_version < \"3.11\"',\n  \"c \\\"q\\\"\",\n]\n"
              "[project.optional-dependencies]\nz = [\"z\"]\n")
    assert reqs._scan_pyproject(tricky) == tomllib.loads(tricky)["project"]["dependencies"]
    assert reqs._scan_pyproject('[project]\nname = "other"\ndependencies = ["x"]\n') is None


def test_parse_requirement_and_import_names():
    r = reqs.parse_requirement("scikit-learn>=1.3")
    assert (r.name, r.spec, r.module, r.minimum) == ("scikit-learn", "scikit-learn>=1.3", "sklearn", "1.3")
    assert reqs.parse_requirement("pillow>=10.0").module == "PIL"
    assert reqs.parse_requirement("SimpleITK>=2.3").module == "SimpleITK"
    assert reqs.parse_requirement("highdicom>=0.28.2").minimum == "0.28.2"
    assert reqs.parse_requirement("torch").minimum is None
    assert reqs.parse_requirement("numpy~=1.24,<3").minimum == "1.24"
    assert reqs.parse_requirement('ray>=2.9; extra == "ray"') is None
    assert reqs.parse_requirement('pywin32>=300; sys_platform == "win32"') is (
        None if sys.platform != "win32" else reqs.parse_requirement('pywin32>=300; sys_platform == "win32"'))
    assert reqs.parse_requirement('tomli>=2; python_version < "3.11"') is (
        None if sys.version_info >= (3, 11) else reqs.parse_requirement('tomli>=2; python_version < "3.11"'))
    assert reqs.version_tuple("2.13.0+cpu") == (2, 13) and reqs.version_tuple("1.3") == reqs.version_tuple("1.3.0")


def test_install_plan_and_specs_cover_every_requirement():
    listed = reqs.worker_requirements()
    for r in listed:
        assert install.REQUIREMENT_SPECS[r.name] == r.spec
        assert install.REQUIREMENT_SPECS[r.module] == r.spec  # the check may say sklearn or scikit-learn
    plan = install.install_plan([r.name for r in listed], python="/env/bin/python")
    assert sorted(plan.requirements) == sorted(r.spec for r in listed)
    assert plan.steps[0].requirements == [install.REQUIREMENT_SPECS["torch"]]  # torch on its own, first


def test_requirements_module_is_python39_stdlib_only():
    for path in (PACKAGE / "worker" / "requirements.py", PACKAGE / "worker" / "_bundled_requirements.py",
                 PACKAGE / "slicerbridge" / "install.py"):
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for n in names:
                assert n.split(".")[0] in sys.stdlib_module_names or n.split(".")[0] == "torch", (path, n)


# ------------------------------------------------------------------------------------ the check
def test_probe_runs_as_a_script_and_tells_missing_outdated_broken(tmp_path):
    """The probe runs inside the worker's Python by file path; it sorts every requirement."""
    (tmp_path / "brokenpkg_pantheon_test").mkdir()
    (tmp_path / "brokenpkg_pantheon_test" / "__init__.py").write_text("raise OSError('libfoo.so: cannot open')\n")
    wanted = [{"name": "numpy", "spec": "numpy>=1.0", "module": "numpy", "minimum": "1.0"},
              {"name": "numpy-future", "spec": "numpy>=999", "module": "numpy", "minimum": "999"},
              {"name": "no-such-dist", "spec": "no-such-dist", "module": "no_such_mod_pantheon", "minimum": None},
              {"name": "brokenpkg", "spec": "brokenpkg", "module": "brokenpkg_pantheon_test", "minimum": None}]
    script = PACKAGE / "worker" / "requirements.py"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, str(script), "--probe", json.dumps(wanted)], capture_output=True,
                         text=True, env=env, timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    import numpy
    assert got["packages"]["numpy"] == {"module": "numpy", "spec": "numpy>=1.0", "version": numpy.__version__,
                                        "status": "ok"}
    assert got["outdated"] == ["numpy-future"] and got["missing"] == ["no-such-dist"]
    assert list(got["broken"]) == ["brokenpkg"] and "libfoo.so" in got["broken"]["brokenpkg"]
    assert got["ready"] is False and got["torch"] is None and got["cuda"] is None  # torch was not asked for


@pytest.mark.slow
def test_check_environment_probes_every_requirement():
    c = WorkerClient()
    env = c.check_environment(import_modules=False)
    names = [r.name for r in reqs.worker_requirements()]
    assert list(env["packages"]) == names
    assert all(env["packages"][n]["version"] for n in names)  # versions reported
    assert env["ready"] is True and env["missing"] == [] and env["error"] is None
    import torch
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.cuda.is_available()
    assert env["requirements_source"] == str(REPO / "pyproject.toml")
    for key in ("python", "version", "outdated", "broken", "torch_cuda", "cuda_devices", "cuda_error"):
        assert key in env


def test_check_environment_of_a_python_that_does_not_start(tmp_path):
    env = WorkerClient(python=str(tmp_path / "no-python")).check_environment()
    assert env["missing"] == ["python"] and env["ready"] is False and "cannot be started" in env["error"]


def test_device_choices():
    env = {"cuda_devices": [{"device": "cuda:0", "usable": True}, {"device": "cuda:1", "usable": False}]}
    assert reqs.device_choices(env) == ["auto", "cpu", "cuda:0"]
    assert reqs.device_choices({}) == ["auto", "cpu"]
