"""The model plug-in point: one declared :class:`ModelPlugin` per model, and the registry every
layer loops over (command line, worker, batch runner, model cards, requirements, Slicer modules).

A model lives in one package, ``pantheon/models/<name>/``, whose ``plugin.py`` defines ``PLUGIN``;
nothing else in Pantheon lists the models. A model shipped in another distribution registers
the same object under the entry-point group ``pantheon.models``::

    [project.entry-points."pantheon.models"]
    toymodel = "toymodel.plugin:PLUGIN"

The shape follows timm's ``register_model`` / ``create_model`` (a registry filled by
declarations, looked up by name) and MONAI bundles' ``metadata.json`` (what a model is, what it
needs, where its weights are). A plug-in names its parts as ``"module:attribute"`` strings that
are imported only when used, so listing the plug-ins never loads PyTorch: the Slicer process and
the batch parent import this module.
"""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import PantheonError

ENTRY_POINT_GROUP = "pantheon.models"


@dataclass(frozen=True)
class ModelPlugin:
    """What a model brings to Pantheon. Every ``"module:attribute"`` field is optional.

    - ``name``: the model's key: model cards' ``"model"`` field, the worker tasks' prefix
      (``<name>.<action>``), the batch pipelines' prefix (``<name>-<action>``);
    - ``title`` / ``paper``: for help texts and listings;
    - ``slicer_module``: the Slicer module folder at the repository root that shows the model;
    - ``cards``: the model-card ids the package ships (``pantheon/registry/cards``);
    - ``requirements``: the distributions (as pyproject.toml spells them) the model's code imports;
    - ``worker_tasks``: a ``{task name: callable(JobContext) -> result document}`` mapping;
    - ``batch_pipelines``: a callable returning the model's :class:`pantheon.batch.adapter.BatchPipeline` list;
    - ``cli``: ``add_commands(subparsers)``, adding the model's sub-commands to ``pantheon``;
    - ``batch_cli``: ``add_batch_options(parser)``, the options its batch pipelines read;
    - ``demo_weights``: ``build(output_dir, ...)``, retraining the bundled demo weights;
    - ``resources``: a package whose ``cards/`` and ``weights/`` folders hold the model's cards and
      bundled weights (the built-in models keep theirs in ``pantheon/registry``);
    - ``order``: position in listings (help, batch choices).
    """

    name: str
    title: str
    paper: str = ""
    slicer_module: Optional[str] = None
    cards: Tuple[str, ...] = ()
    requirements: Tuple[str, ...] = ()
    worker_tasks: Optional[str] = None
    batch_pipelines: Optional[str] = None
    cli: Optional[str] = None
    batch_cli: Optional[str] = None
    demo_weights: Optional[str] = None
    resources: Optional[str] = None
    order: int = 100

    def load(self, part: str) -> Any:
        """The object one of the ``"module:attribute"`` fields names (imported now), or None."""
        ref = getattr(self, part)
        if ref is None:
            return None
        module, _, attribute = ref.partition(":")
        obj = import_module(module)
        for name in attribute.split("."):
            obj = getattr(obj, name)
        return obj

    def tasks(self) -> Dict[str, Callable]:
        return dict(self.load("worker_tasks") or {})

    def batch(self) -> List[Any]:
        make = self.load("batch_pipelines")
        return list(make()) if make is not None else []


_registered: Dict[str, ModelPlugin] = {}
_discovered = False


def _builtin_plugins() -> List[ModelPlugin]:
    """``PLUGIN`` of every ``pantheon/models/<name>/plugin.py``."""
    from . import models
    found = []
    for info in pkgutil.iter_modules(models.__path__):
        if info.ispkg and (Path(models.__path__[0]) / info.name / "plugin.py").is_file():
            found.append(import_module(f"{models.__name__}.{info.name}.plugin").PLUGIN)
    return found


def _entry_point_plugins() -> List[ModelPlugin]:
    from importlib import metadata
    try:
        points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python < 3.10: entry_points() is a dict of groups
        points = metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    found = []
    for point in points:
        try:
            plugin = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken third-party plug-in must not break Pantheon
            import warnings
            warnings.warn(f"The model plug-in {point.name!r} ({point.value}) cannot be loaded and is left out: "
                          f"{type(exc).__name__}: {exc}")
            continue
        if not isinstance(plugin, ModelPlugin):
            import warnings
            warnings.warn(f"The entry point {point.name!r} ({point.value}) is not a pantheon.plugins.ModelPlugin "
                          "and is left out.")
            continue
        found.append(plugin)
    return found


def register(plugin: ModelPlugin) -> ModelPlugin:
    """Add a plug-in (built-ins and entry points are found by themselves; this is for tests and
    interactive use). A second plug-in of the same name is refused."""
    _discover()
    if plugin.name in _registered and _registered[plugin.name] is not plugin:
        raise PantheonError(f"Two model plug-ins are named {plugin.name!r} ({_registered[plugin.name].title} and "
                            f"{plugin.title}).")
    _registered[plugin.name] = plugin
    return plugin


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for plugin in _builtin_plugins() + _entry_point_plugins():
        if plugin.name in _registered:
            import warnings
            warnings.warn(f"The model plug-in {plugin.name!r} ({plugin.title}) is declared twice; the first is kept.")
            continue
        _registered[plugin.name] = plugin


def plugins() -> Tuple[ModelPlugin, ...]:
    """Every registered model, in listing order."""
    _discover()
    return tuple(sorted(_registered.values(), key=lambda p: (p.order, p.name)))


def plugin_names() -> Tuple[str, ...]:
    return tuple(p.name for p in plugins())


def get_plugin(name: str) -> ModelPlugin:
    _discover()
    if name not in _registered:
        raise PantheonError(f"Unknown model {name!r}; Pantheon has {', '.join(plugin_names()) or 'none'}.")
    return _registered[name]


def worker_tasks() -> Dict[str, Callable]:
    """Every model's worker tasks by name; a name two models claim is refused."""
    tasks: Dict[str, Callable] = {}
    for plugin in plugins():
        for name, task in plugin.tasks().items():
            if name in tasks:
                raise PantheonError(f"The worker task {name!r} is declared by two models.")
            tasks[name] = task
    return tasks


def resource_dirs(kind: str) -> List[Path]:
    """The ``<kind>`` folders ("cards" or "weights") of the plug-ins that declare ``resources``."""
    from importlib.util import find_spec
    found = []
    for plugin in plugins():
        spec = find_spec(plugin.resources) if plugin.resources else None
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            if (Path(location) / kind).is_dir():
                found.append(Path(location) / kind)
    return found
