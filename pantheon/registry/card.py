"""Model cards: one small JSON file per set of weights, in the spirit of MONAI bundle metadata.

A card says what a weights file is (model, task, expected input, labels), where it comes from
(``url``) and how to recognise it (``sha256``). The schema is checked by hand so that a bad card
fails with one sentence naming the card and the field, and so that the core needs no
``jsonschema`` dependency.

Example::

    {
      "id": "nemesis-demo", "version": "1.0.0", "model": "nemesis",
      "task": "masked-autoencoder reconstruction", "description": "...", "demo": true,
      "input": {"modality": "CT", "axis_order": "DHW", "intensity_window": [-175, 250]},
      "labels": [], "file": "nemesis_demo.pt", "sha256": "<64 hex>"
    }

``input`` requires ``modality`` and ``axis_order``; ``intensity_window``, ``intensity_range``,
``spacing``, ``patch_size``, ``superpatch_size`` and ``channels`` are checked when present, and
other keys are kept as they are. ``labels`` is a list of names or of ``{"value", "name"}``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from ..errors import RegistryError
from ..io.atomic import write_text_atomic

CARDS_DIR = Path(__file__).resolve().parent / "cards"
CARDS_PATH_ENV = "PANTHEON_CARDS_PATH"

# ids and versions become cache directory names, so they must be plain path components.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")

_REQUIRED = ("id", "version", "model", "task", "description", "demo", "input", "labels", "file", "sha256")
_OPTIONAL = ("url", "size_bytes", "license", "references", "extra")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class ModelCard:
    """A validated model card; build it with :meth:`from_dict` or :func:`load_card`."""

    id: str
    version: str
    model: str
    task: str
    description: str
    demo: bool
    input: Dict[str, Any]
    labels: List[Any]
    file: str
    sha256: Optional[str]
    url: Optional[str] = None
    size_bytes: Optional[int] = None
    license: Optional[str] = None
    references: Optional[List[str]] = None
    extra: Optional[Dict[str, Any]] = None
    # Where the card was read from, for error messages; not part of the JSON.
    source: Optional[Path] = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: Optional[Union[str, Path]] = None) -> "ModelCard":
        """Validate ``d`` and build a card; raises :class:`RegistryError` naming the bad field."""
        where = f" ({source})" if source else ""
        if not isinstance(d, dict):
            raise RegistryError(f"Model card{where} must be a JSON object, got {type(d).__name__}.")
        name = d.get("id") if isinstance(d.get("id"), str) else "<no id>"

        def bad(fld: str, why: str) -> RegistryError:
            return RegistryError(f"Model card '{name}'{where}: field '{fld}' {why}.")

        unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise bad(unknown[0], "is not a known card field (put free-form data under 'extra')")
        for k in _REQUIRED:
            if k not in d:
                raise bad(k, "is missing")

        if not isinstance(d["id"], str) or not _ID_RE.match(d["id"]):
            raise bad("id", "must be letters, digits, '.', '_' or '-', starting with a letter or digit")
        if not isinstance(d["version"], str) or not _VERSION_RE.match(d["version"]):
            raise bad("version", "must be a string such as \"1.0.0\" (letters, digits, '.', '_', '+', '-')")
        from ..plugins import plugin_names  # the models Pantheon has: its plug-ins
        if d["model"] not in plugin_names():
            raise bad("model", f"must be one of {', '.join(plugin_names())}, got {d['model']!r}")
        for k in ("task", "description"):
            if not isinstance(d[k], str) or (k == "task" and not d[k].strip()):
                raise bad(k, "must be a non-empty string" if k == "task" else "must be a string")
        if not isinstance(d["demo"], bool):
            raise bad("demo", "must be true or false")
        _check_input(d["input"], bad)
        _check_labels(d["labels"], bad)
        f = d["file"]
        if not isinstance(f, str) or not f or f in (".", "..") or "/" in f or "\\" in f:
            raise bad("file", "must be a plain file name without directories")

        sha = d["sha256"]
        url = d.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise bad("url", "must be an http:// or https:// address")
        if sha is None:
            # Only third-party weights we have not checksummed yet may omit the hash; demo
            # weights are ours and must always be verifiable.
            if d["demo"] or url is None:
                raise bad("sha256", "may be null only for non-demo cards with a 'url'")
        elif not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise bad("sha256", f"must be 64 hexadecimal characters or null, got {sha!r}")
        size = d.get("size_bytes")
        if size is not None and (not _is_int(size) or size < 0):
            raise bad("size_bytes", "must be a non-negative integer")
        lic = d.get("license")
        if lic is not None and not isinstance(lic, str):
            raise bad("license", "must be a string")
        refs = d.get("references")
        if refs is not None and (not isinstance(refs, list) or not all(isinstance(r, str) for r in refs)):
            raise bad("references", "must be a list of strings")
        extra = d.get("extra")
        if extra is not None and not isinstance(extra, dict):
            raise bad("extra", "must be an object")

        return cls(
            id=d["id"], version=d["version"], model=d["model"], task=d["task"],
            description=d["description"], demo=d["demo"], input=dict(d["input"]),
            labels=list(d["labels"]), file=f, sha256=sha.lower() if sha else None, url=url,
            size_bytes=size, license=lic, references=list(refs) if refs is not None else None,
            extra=dict(extra) if extra is not None else None,
            source=Path(source) if source else None,
        )

    def to_dict(self) -> Dict[str, Any]:
        """The card as JSON-ready data; optional fields that are unset are left out."""
        d = {k: getattr(self, k) for k in _REQUIRED}
        d.update({k: getattr(self, k) for k in _OPTIONAL if getattr(self, k) is not None})
        return json.loads(json.dumps(d))  # a deep copy, so callers cannot alter the card

    @property
    def label_names(self) -> List[str]:
        """Label names in card order, whichever of the two label forms the card uses."""
        return [lab if isinstance(lab, str) else lab["name"] for lab in self.labels]

    @property
    def cache_subpath(self) -> Path:
        """``<id>/<version>/<file>``: where this card's weights live under a cache directory."""
        return Path(self.id) / self.version / self.file


def _check_input(inp, bad) -> None:
    if not isinstance(inp, dict):
        raise bad("input", "must be an object")
    for k in ("modality", "axis_order"):
        if not isinstance(inp.get(k), str) or not inp[k]:
            raise bad(f"input.{k}", "must be a non-empty string")
    for k in ("intensity_window", "intensity_range"):
        if k in inp:
            v = inp[k]
            if not (isinstance(v, list) and len(v) == 2 and all(map(_is_num, v)) and v[0] < v[1]):
                raise bad(f"input.{k}", "must be [low, high] numbers with low < high")
    if "spacing" in inp:
        v = inp["spacing"]
        if not (isinstance(v, list) and v and all(_is_num(x) and x > 0 for x in v)):
            raise bad("input.spacing", "must be a list of positive numbers (mm)")
    for k in ("patch_size", "superpatch_size", "channels"):
        if k in inp:
            v = inp[k]
            ok = (_is_int(v) and v > 0) or (k != "channels" and isinstance(v, list) and v
                                            and all(_is_int(x) and x > 0 for x in v))
            if not ok:
                raise bad(f"input.{k}",
                          "must be a positive integer" + ("" if k == "channels" else " or a list of them"))


def _check_labels(labels, bad) -> None:
    if not isinstance(labels, list):
        raise bad("labels", "must be a list")
    if all(isinstance(x, str) for x in labels):
        names = labels
    elif all(isinstance(x, dict) for x in labels):
        for x in labels:
            if set(x) - {"value", "name", "color", "code"} or not _is_int(x.get("value")) \
                    or not isinstance(x.get("name"), str):
                raise bad("labels", "entries must be {\"value\": int, \"name\": str} "
                                    "(optionally \"color\", \"code\")")
        values = [x["value"] for x in labels]
        if len(set(values)) != len(values):
            raise bad("labels", "has a repeated value")
        names = [x["name"] for x in labels]
    else:
        raise bad("labels", "must be all names or all {value, name} objects")
    if not all(names) or len(set(names)) != len(names):
        raise bad("labels", "names must be non-empty and distinct")


def load_card(path: Union[str, Path]) -> ModelCard:
    """Read and validate one card file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RegistryError(f"Cannot read model card {path}: {e.strerror or e}.") from e
    except ValueError as e:
        raise RegistryError(f"Model card {path} is not valid JSON: {e}.") from e
    return ModelCard.from_dict(data, source=path)


def save_card(card: ModelCard, path: Union[str, Path]) -> Path:
    """Write a card atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(card.to_dict(), indent=2) + "\n")


def card_dirs(extra_dirs: Optional[Iterable[Union[str, Path]]] = None) -> List[Path]:
    """Directories searched for cards, highest precedence first: ``extra_dirs``, then
    ``$PANTHEON_CARDS_PATH`` (``os.pathsep`` separated), then the built-in cards, then those of
    model plug-ins that bring their own (:func:`pantheon.plugins.resource_dirs`).

    A named directory that does not exist is an error rather than silently ignored, so a
    typo in the environment variable does not hide the user's cards.
    """
    if isinstance(extra_dirs, (str, Path)):
        extra_dirs = [extra_dirs]
    dirs = []
    for d in extra_dirs or ():
        dirs.append((Path(d).expanduser(), "argument"))
    for d in os.environ.get(CARDS_PATH_ENV, "").split(os.pathsep):
        if d.strip():
            dirs.append((Path(d.strip()).expanduser(), CARDS_PATH_ENV))
    out = []
    for d, origin in dirs:
        if not d.is_dir():
            raise RegistryError(f"Model card directory {d} (from {origin}) is not a directory.")
        out.append(d)
    out.append(CARDS_DIR)
    from ..plugins import resource_dirs
    return out + resource_dirs("cards")


def list_cards(extra_dirs: Optional[Iterable[Union[str, Path]]] = None) -> List[ModelCard]:
    """Every card (``*.json``) in :func:`card_dirs`, sorted by id.

    A card in a higher-precedence directory replaces one with the same id further down (so a
    user can supply, say, a checksummed version of a built-in card); two cards with the same
    id in one directory are an error. An invalid card raises rather than being skipped.
    """
    found: Dict[str, ModelCard] = {}
    for d in card_dirs(extra_dirs):
        here: Dict[str, ModelCard] = {}
        for p in sorted(d.glob("*.json")):
            c = load_card(p)
            if c.id in here:
                raise RegistryError(f"Model card id '{c.id}' is defined twice in {d}: "
                                    f"{here[c.id].source.name} and {p.name}.")
            here[c.id] = c
        for cid, c in here.items():
            found.setdefault(cid, c)
    return [found[k] for k in sorted(found)]


def get_card(card_id: str, extra_dirs: Optional[Iterable[Union[str, Path]]] = None) -> ModelCard:
    """The card with this id; raises :class:`RegistryError` listing the known ids."""
    cards = list_cards(extra_dirs)
    for c in cards:
        if c.id == card_id:
            return c
    known = ", ".join(c.id for c in cards) or "none"
    raise RegistryError(f"Unknown model card '{card_id}' (known: {known}).")
