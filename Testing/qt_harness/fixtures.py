"""pytest glue for the real-Qt harness (a plugin of Testing/conftest.py): ``harness``, installed
once per test module (skipped with the reason when Slicer's Python or PySide6 is missing), and
``harness_checks``, which a panel test module applies to every test
(``pytestmark = pytest.mark.usefixtures("harness_checks")``): no slot raised, no question left
unanswered or shown under the wait cursor. Plus fixture factories and helpers for panel tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# PySide6 and the harness are imported inside the fixtures: this module is loaded by conftest.py
# for every test run, also where PySide6 is not installed.

SCREENSHOT_DIR_ENV = "PANTHEON_SCREENSHOT_DIR"
REQUIRE_ENV = "PANTHEON_REQUIRE_PANEL_HARNESS"  # CI sets it: the panel tests must run, not skip


def skip_without_harness() -> None:
    import importlib.util
    if importlib.util.find_spec("PySide6") is None:
        reason = "PySide6-Essentials (real Qt) is not installed"
    else:
        from .application import unavailable_reason
        reason = unavailable_reason()
    if not reason:
        return
    why = f"real-Qt panel harness unavailable: {reason}"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{why} ({REQUIRE_ENV} is set)")
    pytest.skip(why)


def harness_or_skip():
    """Body of a module-scoped fixture: an installed :class:`SlicerHarness`, uninstalled afterwards."""
    skip_without_harness()
    from .application import SlicerHarness
    harness = SlicerHarness().install()
    try:
        yield harness
    finally:
        harness.uninstall()


@pytest.fixture(scope="module")
def harness():
    """The installed harness, for one test module."""
    yield from harness_or_skip()


@pytest.fixture
def harness_checks(harness):
    """After a test: no slot raised, no dialog left unanswered or shown under the wait cursor."""
    yield from check_after_test(harness)


def panel_fixture(module: str):
    """A module-scoped ``panel`` fixture: ``module`` loaded from the source tree as Slicer loads it,
    startup completed, shown (its Python widget is the value)."""
    @pytest.fixture(scope="module")
    def panel(harness):
        harness.load_module(REPO_ROOT / module)
        harness.finish_startup()
        return harness.show_module(module)
    return panel


def lib_fixture(module: str):
    """A module-scoped ``lib`` fixture: the module's ``<module>Lib.core`` as the module imported it."""
    @pytest.fixture(scope="module")
    def lib(panel):
        import sys
        return sys.modules[f"{module}Lib.core"]
    return lib


def wait_idle(harness, panel, timeout: float = 300.0) -> None:
    """Run the event loop until the panel's task (job, check, installation, download) has ended."""
    harness.wait_until(lambda: panel.task is None, timeout, "the panel's task to end")


def check_after_test(harness):
    """Body of a function-scoped autouse fixture: fail on a slot exception or an unanswered dialog."""
    from . import pythonqt as pq
    pq.SLOT_ERRORS.clear()
    harness.dialogs.answers.clear()
    first_dialog = len(harness.dialogs.shown)
    yield
    pq.raise_slot_errors()
    left = list(harness.dialogs.answers)
    harness.dialogs.answers.clear()
    assert not left, f"answers prepared for dialogs that never came: {left}"
    under_wait = [d["text"] for d in harness.dialogs.shown[first_dialog:] if d["under_wait_cursor"]]
    assert not under_wait, f"a dialog was shown under the wait cursor: {under_wait}"


def worker_pids(logic) -> list:
    """The processes of a panel logic's worker (the one started, and the interpreter running jobs)."""
    client = getattr(logic, "_client", None)
    if client is None:
        return []
    return [pid for pid in (getattr(client, "pid", None), getattr(client, "worker_pid", None)) if pid]


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its parent's wait counts as ended)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def assert_unload_ends_the_worker(harness, module: str, logic) -> None:
    """Unloading the module (Slicer exit or module unload) shuts its worker down: no process left."""
    import time
    logic.prepareWorker()  # a running worker (started by an earlier test, or now)
    pids = worker_pids(logic)
    assert pids, "no worker process to end"
    harness.unload_module(module)
    assert logic._client is None
    deadline = time.monotonic() + 10
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if process_alive(p)], f"worker processes left after unload: {pids}"


def screenshot_dir() -> Path:
    """Where panel screenshots go: ``$PANTHEON_SCREENSHOT_DIR`` or Testing/screenshots-out (ignored by git)."""
    return Path(os.environ.get(SCREENSHOT_DIR_ENV) or REPO_ROOT / "Testing" / "screenshots-out")
