"""Finding the weights file for a model card: explicit path > cache > bundled > download.

Every file found in the cache or a bundled directory is checked against the card's sha256 before
use, so a truncated download or a stale bundled file is never loaded as if it were right. Network
access happens only when the caller asks for it (``allow_download`` / ``--allow-download``):
clinical workstations are often offline, and a silent download of hundreds of MB is a surprise.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, List, Optional, Union

from ..errors import CheckpointError, RegistryError
from ..io.atomic import write_text_atomic
from ..progress import CancelFlag, ProgressCallback
from .card import ModelCard, get_card
from .download import download, sha256_file

log = logging.getLogger(__name__)

CACHE_ENV = "PANTHEON_CACHE_DIR"
BUNDLED_ENV = "PANTHEON_BUNDLED_DIR"
# The demo weights are package data next to the cards, so that a wheel, an installed Slicer
# extension and a source checkout all carry them at the same place relative to this file.
BUNDLED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

PathLike = Union[str, Path]


def default_cache_dir() -> Path:
    """``$PANTHEON_CACHE_DIR``, else ``~/.cache/pantheon/weights``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pantheon" / "weights"


def cached_path(card: ModelCard, cache_dir: Optional[PathLike] = None) -> Path:
    """Where ``card``'s weights live in the cache: ``<cache>/<id>/<version>/<file>``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / card.cache_subpath


def bundled_weight_dirs(extra: Optional[Iterable[PathLike]] = None) -> List[Path]:
    """Directories searched for bundled (demo) weights: ``extra``, ``$PANTHEON_BUNDLED_DIR``
    (``os.pathsep`` separated), the package's own ``pantheon/registry/weights`` and the ``weights/``
    of model plug-ins that bring their own; missing ones skipped."""
    if isinstance(extra, (str, Path)):
        extra = [extra]
    dirs = [Path(d).expanduser() for d in extra or ()]
    dirs += [Path(d).expanduser() for d in os.environ.get(BUNDLED_ENV, "").split(os.pathsep) if d.strip()]
    dirs.append(BUNDLED_WEIGHTS_DIR)
    from ..plugins import resource_dirs
    dirs += resource_dirs("weights")
    return [d for d in dirs if d.is_dir()]


def sidecar_path(weights: Path) -> Path:
    """``<file>.sha256``: the checksum we computed for weights whose card has none."""
    return weights.with_name(weights.name + ".sha256")


def _write_sidecar(weights: Path, digest: str) -> None:
    write_text_atomic(sidecar_path(weights), f"{digest}  {weights.name}\n")  # sha256sum format


def _read_sidecar(weights: Path) -> Optional[str]:
    try:
        text = sidecar_path(weights).read_text().split()
    except OSError:
        return None
    return text[0].lower() if text else None


def _mismatch(card: ModelCard, f: Path, expected: str) -> Optional[str]:
    """Why ``f`` is not the file the card describes, or None when it is (size first: cheap)."""
    size = f.stat().st_size
    if card.size_bytes is not None and size != card.size_bytes:
        return f"{size} bytes, expected {card.size_bytes}"
    digest = sha256_file(f)
    return None if digest == expected else f"sha256 {digest}, expected {expected}"


def _tell(progress: Optional[ProgressCallback], fraction: float, msg: str) -> None:
    log.warning(msg)
    if progress is not None:
        progress(fraction, msg)


def _from_cache(card: ModelCard, f: Path, trust_unverified: bool, progress, notes: List[str]) -> bool:
    """Whether the cached file may be used. A cached file that fails its check is removed:
    the cache is ours, and leaving it would only make the next download land on top of it."""
    expected = card.sha256 or _read_sidecar(f)
    if expected is None:
        # A file the user put in the cache for a card without a checksum: only on request.
        if not trust_unverified:
            notes.append(f"{f} exists but its checksum is unknown, so it is only used with "
                         f"trust_unverified=True (--trust-unverified)")
            return False
        digest = sha256_file(f)
        _write_sidecar(f, digest)
        _tell(progress, 0.0, f"Using unverified weights {f} (sha256 {digest}, recorded in "
                             f"{sidecar_path(f).name}).")
        return True
    why = _mismatch(card, f, expected)
    if why is None:
        return True
    f.unlink(missing_ok=True)
    sidecar_path(f).unlink(missing_ok=True)
    _tell(progress, 0.0, f"Removed corrupted cached weights {f} ({why}).")
    notes.append(f"removed corrupted cached {f} ({why})")
    return False


def _not_found(card: ModelCard, dest: Path, notes: List[str]) -> RegistryError:
    if card.url:
        unverified = card.sha256 is None
        flags = "--allow-download" + (" --trust-unverified" if unverified else "")
        kwargs = "allow_download=True" + (", trust_unverified=True" if unverified else "")
        how = (f"download them from {card.url} by passing {flags} ({kwargs}), "
               f"or put {card.file} at {dest}, or pass the file's path explicitly")
    else:
        how = (f"put {card.file} at {dest} or in {BUNDLED_WEIGHTS_DIR}, "
               f"or pass the file's path explicitly")
    msg = f"Weights for model card '{card.id}' ({card.file}) are not available locally: {how}."
    if notes:
        msg += " Note: " + "; ".join(notes) + "."
    return RegistryError(msg)


def resolve_weights(card_or_id: Union[ModelCard, str], path: Optional[PathLike] = None,
                    cache_dir: Optional[PathLike] = None,
                    bundled_dirs: Optional[Iterable[PathLike]] = None,
                    allow_download: bool = False, progress: Optional[ProgressCallback] = None,
                    trust_unverified: bool = False, cancel: CancelFlag = None) -> Path:
    """The weights file for a card, looked up in this order:

    1. ``path``: used as is (the user chose it; only its existence is checked).
    2. The cache, ``<cache_dir>/<id>/<version>/<file>``, verified by sha256; a bad file is removed.
    3. Bundled directories (see :func:`bundled_weight_dirs`), verified by sha256.
    4. A download into the cache, only with ``allow_download``.

    Cards without a sha256 (third-party weights not yet checksummed) are downloaded only with
    ``trust_unverified``; the computed hash is then written to ``<file>.sha256`` next to the
    cached file and reported through ``progress`` and the log, and later runs verify against it.
    """
    card = card_or_id if isinstance(card_or_id, ModelCard) else get_card(card_or_id)
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise CheckpointError(f"Weights file {p} given for model card '{card.id}' does not exist.")
        return p.resolve()

    notes: List[str] = []
    dest = cached_path(card, cache_dir)
    if dest.is_file() and _from_cache(card, dest, trust_unverified, progress, notes):
        return dest

    bundled = bundled_weight_dirs(bundled_dirs)
    for d in bundled:
        f = d / card.file
        if not f.is_file():
            continue
        if card.sha256 is None:
            if trust_unverified:
                _tell(progress, 0.0, f"Using unverified bundled weights {f} (sha256 {sha256_file(f)}).")
                return f
            notes.append(f"{f} exists but its checksum is unknown (use --trust-unverified)")
            continue
        why = _mismatch(card, f, card.sha256)
        if why is None:
            return f
        notes.append(f"ignored bundled {f} ({why})")
        log.warning("Ignoring bundled weights %s: %s.", f, why)

    if not allow_download or not card.url:
        raise _not_found(card, dest, notes)
    if card.sha256 is None and not trust_unverified:
        raise RegistryError(
            f"The checksum of the weights for model card '{card.id}' is not known, so a download "
            f"from {card.url} cannot be verified: pass --trust-unverified (trust_unverified=True) "
            f"to download it anyway, or put {card.file} at {dest}.")
    digest = download(card.url, dest, sha256=card.sha256, progress=progress, cancel=cancel,
                      size=card.size_bytes)
    if card.sha256 is None:
        _write_sidecar(dest, digest)
        _tell(progress, 1.0, f"Downloaded unverified weights for '{card.id}': sha256 {digest} "
                             f"(recorded in {sidecar_path(dest)}); add it to the card to verify later downloads.")
    return dest
