"""Pantheon's synthetic cases in Slicer's Sample Data module, category "Pantheon".

Each module connects :func:`register_sample_data` to ``slicer.app``'s ``startupCompleted()``
signal, as Slicer's scripted-module template does (Utilities/Templates/Modules/Scripted/
TemplateKey.py, line 50 in v5.10.0 and v5.12.3). Registering is idempotent, so all three modules
may do it; it logs and does nothing when the Sample Data module is not there.

How Slicer's Sample Data works (Modules/Scripted/SampleData/SampleData.py; line numbers for
v5.12.3, 9034c71, then v5.10.0, c01481f):

- ``SampleDataLogic.registerCustomSampleDataSource(category, sampleName, uris, fileNames,
  nodeNames, customDownloader, thumbnailFileName, loadFileTypes, loadFiles, loadFileProperties,
  checksums, loadFileType)`` (l. 553 / 510) appends a ``SampleDataSource`` to
  ``slicer.modules.sampleDataSources[category]`` unless an *equal* one is there (``__eq__``
  compares ``str()``, l. 217). ``registerCustomSampleDataCategory(category, title)`` exists from
  5.12 only (l. 532).
- A click, or ``SampleData.downloadSample(name)``, runs ``downloadFromSource`` (l. 850 / 796):
  ``downloadFile`` (l. 1133 / 1079) copies the URI into Slicer's cache as ``fileName`` with
  ``urllib.request.urlretrieve`` unless it is cached already, then checks the ``SHA256:<hex>``
  checksum (a cached file that fails it is fetched again), then ``loadNode`` reads it with the
  given IO file type. ``urlretrieve`` reads ``file://`` URIs (Slicer's own SampleDataTest loads
  ``file:`` URIs, ``path2uri``, l. 1273 / 1219), so the package's files take that standard path and
  ``downloadSample`` works in scripts and self-tests. A ``customDownloader`` would not: only the
  button calls it (l. 455 / 446), ``downloadSamples`` (l. 1047 / 993) never does.
- The button's text is ``source.sampleDescription``, which ``registerCustomSampleDataSource``
  leaves equal to ``sampleName``; it is set to the case's title afterwards (Slicer's built-in
  "CTA abdomen\\n(Panoramix)" does the same through the constructor). Because that makes the source
  differ from a freshly built one, idempotence is by ``sampleName`` here, not by Slicer's equality.

The Slicer process runs this: no torch, Python 3.9 syntax, ``SampleData`` imported inside the
function. The file list comes from :mod:`pantheon.sampledata` (standard library only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Union

log = logging.getLogger("pantheon.sampledata")

__all__ = ["register_sample_data", "sample_data_sources"]


def sample_data_sources(data_dir: Union[str, Path, None] = None) -> List[dict]:
    """One dict per case whose files are all present: ``{"title": ..., "kwargs": {...}}`` where
    ``kwargs`` are the keyword arguments of ``registerCustomSampleDataSource``. Plain Python.

    Raises OSError / ValueError when the manifest is missing or unreadable.
    """
    from .. import sampledata as sd
    folder = sd.data_dir(data_dir).resolve()
    manifest = sd.load_manifest(folder)
    out = []
    for case in sd.CASES:
        paths = [folder / f.file_name for f in case.files]
        missing = [str(p) for p in paths + [folder / case.thumbnail] if not p.is_file()]
        if missing:
            log.warning("Pantheon sample %s is not registered: missing %s", case.sample_name, ", ".join(missing))
            continue
        kwargs = dict(
            category=sd.CATEGORY,
            sampleName=case.sample_name,
            uris=[p.as_uri() for p in paths],  # file:// (urlretrieve copies it into the cache)
            fileNames=[f.file_name for f in case.files],  # names in Slicer's shared cache: prefixed "Pantheon"
            nodeNames=[f.node_name for f in case.files],
            thumbnailFileName=str(folder / case.thumbnail),
            loadFileTypes=[f.load_file_type for f in case.files],
            checksums=[sd.checksum_of(f.file_name, manifest) for f in case.files],
        )
        out.append({"title": case.title, "kwargs": kwargs})
    return out


def _same_source(source, kwargs: dict) -> bool:
    """True when a registered SampleDataSource already points at these files with these checksums."""
    fields = ("uris", "fileNames", "nodeNames", "checksums", "loadFileTypes")
    try:
        return (all(list(getattr(source, f)) == list(kwargs[f]) for f in fields)
                and getattr(source, "thumbnailFileName", None) == kwargs["thumbnailFileName"])
    except (AttributeError, TypeError):
        return False


def register_sample_data(data_dir: Union[str, Path, None] = None, sample_data=None) -> List[str]:
    """Register Pantheon's cases with Slicer's Sample Data module; returns their sample names.

    ``data_dir``: the folder with the files and ``manifest.json`` (default: the ``pantheon``
    package's own ``sampledata/data``, right in a checkout and in the built extension).
    ``sample_data``: the ``SampleData`` module (default: imported; tests pass a stand-in).
    Idempotent: a case already registered with the same files is left alone; one registered from
    another folder (a reloaded or updated extension) is replaced. Without the Sample Data module,
    or without the data files, it logs why and returns what it could register (possibly nothing).
    """
    if sample_data is None:
        try:
            import SampleData as sample_data
        except ImportError as exc:
            log.info("Slicer's Sample Data module is not loaded (%s); Pantheon's sample cases are not "
                     "registered.", exc)
            return []
    try:
        sources = sample_data_sources(data_dir)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("Pantheon's sample data is not registered: %s", exc)
        return []

    from .. import sampledata as sd
    logic = sample_data.SampleDataLogic
    if hasattr(logic, "registerCustomSampleDataCategory"):  # Slicer >= 5.12: the category's title
        try:
            logic.registerCustomSampleDataCategory(sd.CATEGORY, title=sd.CATEGORY_TITLE)
        except Exception:  # only the title; the cases still show under the category's key
            log.warning("Could not set the title of the %s sample data category.", sd.CATEGORY, exc_info=True)
    registered = []
    for entry in sources:
        kwargs, name = entry["kwargs"], entry["kwargs"]["sampleName"]
        try:
            current = [s for s in logic.sampleDataSourcesByCategory(sd.CATEGORY)
                       if getattr(s, "sampleName", None) == name]
            if len(current) == 1 and _same_source(current[0], kwargs):
                registered.append(name)
                continue
            live = logic.sampleDataSourcesByCategory(sd.CATEGORY)  # the registry's own list
            for s in current:
                live.remove(s)
            logic.registerCustomSampleDataSource(**kwargs)
            for s in logic.sampleDataSourcesByCategory(sd.CATEGORY):
                if getattr(s, "sampleName", None) == name:
                    s.sampleDescription = entry["title"]
            registered.append(name)
        except Exception:  # a Sample Data API change must not break the module's start-up
            log.error("Could not register Pantheon sample %s with Sample Data.", name, exc_info=True)
    return registered
