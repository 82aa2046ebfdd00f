"""Progress reporting and cancellation, the contract between pipelines and their callers.

A pipeline takes ``progress`` (a callable ``(fraction in [0, 1], message)``) and ``cancel``
(a ``threading.Event``-like object with ``is_set()``, or a zero-argument callable returning bool).
Pipelines call :meth:`Reporter.check` between units of work so that a cancel lands quickly.

A command that writes files gives writing its share of the bar (:func:`run_and_write`): the bar
reaches 100 % when the last file is written, not when the computation ends.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

from .errors import Cancelled

ProgressCallback = Callable[[float, str], None]
CancelFlag = Union[Callable[[], bool], "object", None]


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


class Reporter:
    """Maps a sub-task's progress into a slice [start, stop] of the caller's progress bar."""

    def __init__(self, progress: Optional[ProgressCallback] = None, cancel: CancelFlag = None,
                 start: float = 0.0, stop: float = 1.0):
        self.progress = progress
        self.cancel = cancel
        self.start = start
        self.stop = stop

    def check(self) -> None:
        if _is_cancelled(self.cancel):
            raise Cancelled("Cancelled by the user.")

    def __call__(self, fraction: float, message: str = "") -> None:
        self.check()
        if self.progress is not None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            self.progress(self.start + (self.stop - self.start) * fraction, message)

    def sub(self, start: float, stop: float) -> "Reporter":
        """A reporter for a part of this job, ``start``..``stop`` given as fractions of it."""
        span = self.stop - self.start
        return Reporter(self.progress, self.cancel, self.start + span * start, self.start + span * stop)


#: The part of a command's bar that writing its outputs takes. Writing a NEMESIS result (compact
#: maps, result.json, preview.png) is 5-10 % of a run on a 512x512x200 CT (benchmarks/heatmap_writing.py).
WRITE_SHARE = 0.1


def run_and_write(progress: Optional[ProgressCallback] = None, cancel: CancelFlag = None,
                  write_share: float = WRITE_SHARE) -> Tuple[Reporter, Reporter]:
    """Reporters for the computation (0 .. 1 - ``write_share``) and the writing (the rest)."""
    rep = Reporter(progress, cancel)
    return rep.sub(0.0, 1.0 - write_share), rep.sub(1.0 - write_share, 1.0)
