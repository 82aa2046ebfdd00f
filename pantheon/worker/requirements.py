"""What the worker's Python needs, from one list: ``[project] dependencies`` of pyproject.toml.

Standard library only, Python 3.9 syntax: the Slicer process imports this (install plans, the
environment check), and :func:`probe` also runs as a *script* inside the worker's Python, which
may be any interpreter (``python requirements.py --probe JSON``), so nothing here may import
pantheon or anything outside the standard library at module level.

Where the list comes from, first found wins:

1. ``pyproject.toml`` beside the package (a source checkout, editable install or not): the
   checked-in file is the truth, while an editable install's metadata is a snapshot taken at
   install time and goes stale when a dependency is added;
2. the installed distribution's metadata (``importlib.metadata``, a wheel install);
3. :mod:`pantheon.worker._bundled_requirements`, a generated copy for the Slicer extension build
   (no dist-info, no pyproject.toml). ``python -m pantheon.worker.requirements --write-bundled``
   regenerates it; Testing/test_requirements.py fails when it differs from pyproject.toml.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import re
import sys
from collections import namedtuple
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["Requirement", "IMPORT_NAMES", "normalize", "import_name", "parse_requirement", "worker_requirements",
           "requirement_specs", "declared_dependencies", "pyproject_dependencies", "probe", "torch_report",
           "device_choices", "version_tuple"]

DISTRIBUTION = "pantheon"

# Distribution name (normalised) -> top-level import name, where they differ; otherwise the import
# name is the distribution name with "-" replaced by "_".
IMPORT_NAMES = {
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "pillow": "PIL",
    "simpleitk": "SimpleITK",
    "pynrrd": "nrrd",
    "pyyaml": "yaml",
    "pydicom": "pydicom",
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "beautifulsoup4": "bs4",
}

Requirement = namedtuple("Requirement", "name spec module minimum")
Requirement.__doc__ = ("One dependency: ``name`` as pyproject spells it (pip accepts it), ``spec`` the whole "
                       "requirement line (what pip installs), ``module`` the top-level import name, ``minimum`` "
                       "the version after >=, ~= or == (or None).")


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def import_name(dist_name: str) -> str:
    key = normalize(dist_name)
    return IMPORT_NAMES.get(key, key.replace("-", "_"))


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(\(?[^;]*?\)?)\s*(?:;\s*(.*))?$")


def parse_requirement(line: str) -> Optional[Requirement]:
    """A PEP 508 line -> Requirement, or None for a line that does not apply here (an extra's
    requirement, or a marker for another platform/Python)."""
    m = _REQ.match(line)
    if not m:
        raise ValueError("not a requirement: %r" % line)
    name, _extras, version, marker = m.groups()
    if marker and not _marker_applies(marker):
        return None
    minimum = None
    v = re.search(r"(>=|~=|==)\s*([0-9][^,\s)]*)", version or "")
    if v:
        minimum = v.group(2).rstrip("*").rstrip(".")
    spec = line.split(";")[0].strip() if marker is None else line.strip()
    return Requirement(name, spec, import_name(name), minimum)


def _marker_applies(marker: str) -> bool:
    """A small evaluator for environment markers (``and``/``or`` of ``name op "value"``);
    ``extra == ...`` never applies (extras are optional). Unknown forms count as applying."""
    env = {"python_version": "%d.%d" % sys.version_info[:2], "python_full_version": _platform.python_version(),
           "sys_platform": sys.platform, "platform_system": _platform.system(), "os_name": os.name,
           "platform_machine": _platform.machine(), "implementation_name": sys.implementation.name}
    if re.search(r"\bextra\b", marker):
        return False

    def atom(text: str) -> bool:
        m = re.match(r"^\s*(\w+)\s*(==|!=|<=|>=|<|>)\s*['\"]([^'\"]*)['\"]\s*$", text)
        if not m or m.group(1) not in env:
            return True
        left, op, right = env[m.group(1)], m.group(2), m.group(3)
        if m.group(1).startswith("python"):
            left, right = version_tuple(left), version_tuple(right)
        return {"==": left == right, "!=": left != right, "<=": left <= right, ">=": left >= right,
                "<": left < right, ">": left > right}[op]
    return any(all(atom(a) for a in re.split(r"\band\b", part)) for part in re.split(r"\bor\b", marker))


def version_tuple(text: object) -> Tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); the leading dotted numbers only (enough for >= checks)."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text or ""))
    parts = tuple(int(p) for p in m.group(1).split(".")) if m else ()
    while parts and parts[-1] == 0:  # 1.3 == 1.3.0
        parts = parts[:-1]
    return parts


# ----------------------------------------------------------------------------------- sources
def _package_root() -> str:
    """The folder holding the ``pantheon`` package (a checkout's root, site-packages, or the
    Slicer extension's qt-scripted-modules folder)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pyproject_dependencies(path: Union[str, os.PathLike]) -> Optional[List[str]]:
    """``[project] dependencies`` of the pyproject.toml at ``path`` (None when it is not pantheon's)."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        tomllib = None
    if tomllib is not None:
        project = tomllib.loads(text).get("project", {})
        if project.get("name") != DISTRIBUTION:
            return None
        return [str(d) for d in project.get("dependencies", [])]
    return _scan_pyproject(text)


def _scan_pyproject(text: str) -> Optional[List[str]]:
    """Enough TOML for ``[project] name`` and ``dependencies`` (an array of strings) on Pythons
    without tomllib (Slicer's Python may be 3.9/3.10)."""
    m = re.search(r"(?m)^\[project\]\s*$", text)
    if not m:
        return None
    body = text[m.end():]
    nxt = re.search(r"(?m)^\[", body)
    body = body[:nxt.start()] if nxt else body
    name = re.search(r"(?m)^name\s*=\s*[\"']([^\"']+)[\"']", body)
    if not name or name.group(1) != DISTRIBUTION:
        return None
    dep = re.search(r"(?m)^dependencies\s*=\s*\[", body)
    if not dep:
        return []
    out, i, s = [], dep.end(), body
    while i < len(s):
        c = s[i]
        if c == "]":
            return out
        if c == "#":
            i = s.find("\n", i)
            i = len(s) if i < 0 else i
            continue
        if c in "\"'":
            j = i + 1
            buf = []
            while j < len(s) and s[j] != c:
                if c == '"' and s[j] == "\\" and j + 1 < len(s):
                    j += 1
                buf.append(s[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
            continue
        i += 1
    raise ValueError("unterminated dependencies array in pyproject.toml")


def _metadata_dependencies() -> Optional[List[str]]:
    try:
        from importlib import metadata
        dist = metadata.distribution(DISTRIBUTION)
    except Exception:  # not installed (the Slicer extension), or no importlib.metadata
        return None
    return list(dist.requires or [])


def declared_dependencies() -> Tuple[List[str], str]:
    """(requirement lines, where they came from): see the module docstring for the order."""
    path = os.path.join(_package_root(), "pyproject.toml")
    if os.path.isfile(path):
        deps = pyproject_dependencies(path)
        if deps is not None:
            return deps, path
    deps = _metadata_dependencies()
    if deps is not None:
        return deps, "installed metadata of %s" % DISTRIBUTION
    from ._bundled_requirements import DEPENDENCIES
    return list(DEPENDENCIES), "pantheon/worker/_bundled_requirements.py"


def worker_requirements(lines: Optional[Iterable[str]] = None) -> List[Requirement]:
    """Requirements of the worker (optional extras such as ray excluded), in declared order."""
    if lines is None:
        lines, _ = declared_dependencies()
    out, seen = [], set()
    for line in lines:
        req = parse_requirement(line)
        if req is not None and normalize(req.name) not in seen:
            seen.add(normalize(req.name))
            out.append(req)
    return out


def requirement_specs(requirements: Optional[Iterable[Requirement]] = None) -> Dict[str, str]:
    """Name -> what pip installs, looked up by distribution name (as declared and normalised)
    or by import name: {"scikit-learn": "scikit-learn>=1.3", "sklearn": ..., "torch": "torch>=2.1"}."""
    specs = {}
    for req in requirements if requirements is not None else worker_requirements():
        for key in (req.name, normalize(req.name), req.module):
            specs.setdefault(key, req.spec)
    return specs


# ----------------------------------------------------------------------------------- probe
def _one_line(exc: BaseException) -> str:
    text = ("%s" % exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[-1] if text else "")


def torch_report(check_kernels: bool = False) -> Dict[str, Any]:
    """What the running Python's torch can do, without raising: torch version, the CUDA version
    it was built for, whether CUDA is usable, every CUDA device (index, name, memory, compute
    capability) and, when CUDA is not usable, one sentence saying why. ``check_kernels`` runs a
    tiny kernel on every GPU (catches a GPU too new for this torch build); it makes a CUDA context
    on each GPU, so only the throw-away probe process does it."""
    rep = {"torch": None, "torch_cuda": None, "cuda": False, "cuda_devices": [], "cuda_error": None}
    try:
        import torch
    except Exception as exc:
        rep["torch_error"] = "torch does not import: " + _one_line(exc)
        rep["cuda"] = None
        rep["cuda_error"] = "PyTorch is not usable in this Python, so neither is CUDA."
        return rep
    rep["torch"] = str(torch.__version__)
    built = getattr(getattr(torch, "version", None), "cuda", None)
    rep["torch_cuda"] = built
    if not built:
        rep["cuda_error"] = ("This PyTorch (%s) is a CPU-only build, so it cannot use an NVIDIA GPU (a CUDA build "
                             "of PyTorch is needed)." % rep["torch"])
        return rep
    try:
        available = bool(torch.cuda.is_available())
        count = int(torch.cuda.device_count()) if available else 0
    except Exception as exc:
        rep["cuda_error"] = "PyTorch cannot initialise CUDA (%s)." % _one_line(exc)
        return rep
    if not available or count == 0:
        rep["cuda_error"] = ("PyTorch (built for CUDA %s) finds no usable NVIDIA GPU: there is none, or its driver "
                             "is missing or too old for this build." % built)
        return rep
    problems = []
    for i in range(count):
        dev = {"index": i, "device": "cuda:%d" % i, "name": None, "memory_bytes": None, "capability": None,
               "usable": True}
        try:
            props = torch.cuda.get_device_properties(i)
            dev["name"] = str(props.name)
            dev["memory_bytes"] = int(props.total_memory)
            dev["capability"] = "%d.%d" % (props.major, props.minor)
            if check_kernels:
                (torch.ones(1, device="cuda:%d" % i) + 1).item()
        except Exception as exc:
            dev["usable"] = False
            dev["error"] = _one_line(exc)
            problems.append("cuda:%d (%s): %s" % (i, dev["name"] or "?", dev["error"]))
        rep["cuda_devices"].append(dev)
    rep["cuda"] = any(d["usable"] for d in rep["cuda_devices"])
    if problems:
        rep["cuda_error"] = "PyTorch cannot run on " + "; ".join(problems) + "."
    return rep


def probe(requirements: Sequence[Mapping[str, Any]], import_modules: bool = True,
          check_kernels: bool = True) -> Dict[str, Any]:
    """The environment check, run *inside* the worker's Python (any interpreter, see the module
    docstring). ``requirements``: list of dicts {name, spec, module, minimum}. Returns::

        {"python", "version", "prefix",
         "packages": {name: {"module", "spec", "version", "status": ok|missing|outdated|broken, "message"?}},
         "missing": [names not installed], "outdated": [names older than required],
         "broken": {name: one sentence}, "ready": bool,
         "torch", "torch_cuda", "cuda", "cuda_devices": [{index, device, name, memory_bytes, capability, usable}],
         "cuda_error"} (see :func:`torch_report`; "torch_error" when torch does not import)
    """
    import importlib
    import importlib.util
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        metadata = None
    out = {"python": sys.executable, "version": _platform.python_version(), "prefix": sys.prefix,
           "packages": {}, "missing": [], "outdated": [], "broken": {}}
    for req in requirements:
        name, module = req["name"], req["module"]
        entry = {"module": module, "spec": req.get("spec", name), "version": None, "status": "ok"}
        try:
            found = importlib.util.find_spec(module) is not None
        except Exception:
            found = False
        if not found:
            entry["status"] = "missing"
            out["missing"].append(name)
            out["packages"][name] = entry
            continue
        if metadata is not None:
            try:
                entry["version"] = metadata.version(name)
            except Exception:
                pass
        if import_modules and module != "torch":  # torch: torch_report() imports it
            try:
                mod = importlib.import_module(module)
                # the module that really imports may not be the one the metadata describes
                # (e.g. another copy earlier on PYTHONPATH): its own version wins
                entry["version"] = str(getattr(mod, "__version__", "") or "") or entry["version"]
            except BaseException as exc:  # noqa: B902 - a package that kills the import is broken, not fatal
                entry["status"] = "broken"
                entry["message"] = "%s is installed but does not import (%s)" % (name, _one_line(exc))
                out["broken"][name] = entry["message"]
        minimum = req.get("minimum")
        if entry["status"] == "ok" and minimum and entry["version"] and \
                version_tuple(entry["version"]) < version_tuple(minimum):
            entry["status"] = "outdated"
            entry["message"] = "%s %s is installed; %s is needed" % (name, entry["version"], req.get("spec"))
            out["outdated"].append(name)
        out["packages"][name] = entry
    torch_req = next((r for r in requirements if r["module"] == "torch"), None)
    if torch_req is not None and torch_req["name"] not in out["missing"]:
        rep = torch_report(check_kernels=check_kernels)
        if rep.get("torch_error"):
            out["broken"][torch_req["name"]] = rep["torch_error"]
            out["packages"][torch_req["name"]].update(status="broken", message=rep["torch_error"])
        out.update(rep)
    else:
        out.update({"torch": None, "torch_cuda": None, "cuda": None, "cuda_devices": [],
                    "cuda_error": "PyTorch is not installed in this Python."})
    out["ready"] = not (out["missing"] or out["outdated"] or out["broken"])
    return out


def device_choices(environment: Optional[Mapping[str, Any]]) -> List[str]:
    """Devices a panel can offer from an environment check / ``info`` answer:
    ["auto", "cpu", "cuda:0", "cuda:1", ...] (only the usable GPUs)."""
    gpus = [d["device"] for d in (environment or {}).get("cuda_devices") or [] if d.get("usable", True)]
    return ["auto", "cpu"] + gpus


# ----------------------------------------------------------------------------------- command line
def _write_bundled(path: Optional[str] = None) -> Tuple[str, str]:
    lines, source = declared_dependencies()
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bundled_requirements.py")
    body = "".join("    %s,\n" % json.dumps(line) for line in lines)
    with open(path, "w", encoding="utf-8") as f:
        f.write('"""Generated by ``python -m pantheon.worker.requirements --write-bundled`` from pyproject.toml\n'
                "``[project] dependencies``; do not edit. The Slicer extension build has neither pyproject.toml nor\n"
                'dist-info, so this copy is where it reads the worker\'s requirements."""\n\n'
                "DEPENDENCIES = [\n%s]\n" % body)
    return path, source


def _main(argv: List[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--probe":
        # argv[1]: JSON list of requirement dicts, or "-": that list, then an options object, one
        # per line on stdin. The answer is the last line of stdout (imports may print before it).
        if argv[1] == "-":
            lines = sys.stdin.read().splitlines()
            wanted, opts = json.loads(lines[0]), json.loads(lines[1]) if len(lines) > 1 and lines[1].strip() else {}
        else:
            wanted, opts = json.loads(argv[1]), json.loads(argv[2]) if len(argv) > 2 else {}
        result = probe(wanted, **opts)
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        return 0
    if argv[:1] == ["--write-bundled"]:
        path, source = _write_bundled(argv[1] if len(argv) > 1 else None)
        print("wrote %s from %s" % (path, source))
        return 0
    for req in worker_requirements():
        print("%-16s %-24s import %s" % (req.name, req.spec, req.module))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
