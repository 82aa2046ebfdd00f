"""Checksums and downloads of weights files, with the standard library only.

A download never leaves a half-written file where the registry would pick it up: bytes go to a
``.part`` file with a per-process unique name next to the destination, are hashed while they
stream, and only a complete, verified file is renamed into place (``os.replace`` is atomic on
one file system, so two processes downloading the same file cannot corrupt each other).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from .. import __version__
from ..errors import DownloadError, PantheonError
from ..progress import CancelFlag, ProgressCallback, Reporter

_hash_cache: Dict[Tuple, str] = {}
_hash_lock = threading.Lock()


def _stat_key(path: Path) -> Tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def sha256_file(path: Union[str, Path], use_cache: bool = True) -> str:
    """Hex SHA-256 of a file.

    Results are remembered in-process by (path, size, mtime, inode, ctime): bundled weights are
    verified every time a model is resolved and hashing hundreds of MB each time would be slow.
    A file rewritten in place with the same size within the file system's timestamp granularity
    could be missed; pass ``use_cache=False`` where that matters.
    """
    path = Path(path)
    key = _stat_key(path)
    if use_cache:
        with _hash_lock:
            if key in _hash_cache:
                return _hash_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def remember_hash(path: Union[str, Path], digest: str) -> None:
    """Record a hash computed elsewhere (e.g. while downloading) so it is not recomputed."""
    with _hash_lock:
        _hash_cache[_stat_key(Path(path))] = digest


def clear_hash_cache() -> None:
    with _hash_lock:
        _hash_cache.clear()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def download(url: str, dest: Union[str, Path], sha256: Optional[str] = None,
             progress: Optional[ProgressCallback] = None, timeout: float = 30,
             chunk: int = 1 << 20, cancel: CancelFlag = None, size: Optional[int] = None) -> str:
    """Download ``url`` to ``dest`` and return the file's hex SHA-256.

    The size is checked against ``Content-Length`` (and ``size`` when given) and the content
    against ``sha256`` when given. On any failure the partial file is removed and
    :class:`DownloadError` raised (:class:`Cancelled` when ``cancel`` is set); ``dest`` is only
    ever created complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    report = Reporter(progress, cancel)
    expected = sha256.lower() if sha256 else None
    try:
        report.check()
        req = urllib.request.Request(url, headers={"User-Agent": f"pantheon/{__version__}"})
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"Download of {url} failed: HTTP {e.code} {e.reason}.") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"Could not connect to {url}: {reason}.") from e
        with resp, open(part, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else size
            h = hashlib.sha256()
            received = 0
            while True:
                report.check()
                block = resp.read(chunk)
                if not block:
                    break
                out.write(block)
                h.update(block)
                received += len(block)
                msg = f"Downloading {dest.name}: {_mb(received)}" + (f" of {_mb(total)}" if total else "")
                report(received / total if total else 0.0, msg)
            out.flush()
            os.fsync(out.fileno())
        for want in {total, size} - {None}:
            if received != want:
                raise DownloadError(f"Download of {url} was incomplete: received {received} of "
                                    f"{want} bytes.")
        digest = h.hexdigest()
        if expected and digest != expected:
            raise DownloadError(f"Checksum mismatch for {url}: expected sha256 {expected}, got {digest}.")
        os.replace(part, dest)
    except PantheonError:
        part.unlink(missing_ok=True)
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"Download of {url} failed: {e}.") from e
    except BaseException:  # KeyboardInterrupt and the like: clean up, do not rewrap
        part.unlink(missing_ok=True)
        raise
    remember_hash(dest, digest)
    return digest

