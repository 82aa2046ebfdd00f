"""Writing a file so that a reader, a crash or a full disk never sees half of it: the content goes
to a hidden temporary file beside the target (same folder, so same file system) and
``os.replace`` puts it in place in one step; on any error the temporary file is removed and the
target keeps what it had.

Hidden temporary names start with ``.`` and end with ``.tmp`` (``.<name>.<random>.tmp``): the
output folders and the batch runner treat such files as leftovers, never as results.

The file gets the permissions a plain ``open(target, "w")`` would give it (0666 less the umask), not
``mkstemp``'s private 0600: outputs, caches and weights are read by other tools and users. ``mode``
sets them explicitly instead.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _create_beside(target: Path) -> Path:
    """A new empty hidden file ``.<name>.<random>.tmp`` in ``target``'s folder. Created like
    ``mkstemp`` (exclusive, so never someone else's file) but with mode 0666 for the umask to trim,
    as ``open()`` would: ``mkstemp``'s 0600 would make every result private."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"No free temporary name for {target} in {target.parent}.")


@contextmanager
def atomic_path(target: PathLike, mode: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; write it in the ``with`` block (any writer that takes
    a path: torch.save, safetensors, numpy with an open file, SimpleITK); on success it replaces
    ``target``. ``mode`` (e.g. 0o644): exact permissions, whatever the umask."""
    target = Path(target)
    tmp = _create_beside(target)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(target: PathLike, data: bytes, mode: Optional[int] = None) -> Path:
    """``target`` holds ``data`` afterwards, or (on an error) what it held before."""
    with atomic_path(target, mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(target)


def write_text_atomic(target: PathLike, text: str, encoding: str = "utf-8", mode: Optional[int] = None) -> Path:
    """:func:`write_bytes_atomic` of ``text`` encoded; newlines are written as given (no translation)."""
    return write_bytes_atomic(target, text.encode(encoding), mode)
