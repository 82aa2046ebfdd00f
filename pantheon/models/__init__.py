"""Model definitions, one sub-package per paper; each declares its plug-in in ``plugin.py``
(:mod:`pantheon.plugins`).

The sub-packages export their names lazily (:func:`lazy_exports`): importing a model's
``plugin`` module to list what it offers must not load PyTorch, and the Slicer process and the
batch parent never do.
"""

from importlib import import_module
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str]) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``exports[name]`` (a submodule
    name relative to the package, e.g. ``".mae"``) on first use of ``name`` (PEP 562)."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name], package), name)

    def __dir__() -> List[str]:
        return sorted(exports)
    return __getattr__, __dir__
