"""``pantheon batch`` under signals, end to end (a real batch in a subprocess, spawned workers):
Ctrl-C says what was written and leaves a resumable folder, a killed batch takes its workers with
it, and the exit status says whether cases failed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
              pytest.mark.timeout(300),
              pytest.mark.slow]  # every test runs whole batches in child processes (9-15 s each)
PANTHEON = [sys.executable, "-m", "pantheon"]


def _manifest(out: Path) -> dict:
    try:
        return {c["case_id"]: c for c in json.loads((out / "manifest.json").read_text())["cases"]}
    except (OSError, ValueError, KeyError):
        return {}


def _stat(pid: int):
    """(ppid, state, start time) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], fields[19]


def _descendants(pid: int) -> dict:
    """{pid: start time} of every live descendant of ``pid``."""
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            table[int(d.name)] = st
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for p, (ppid, state, start) in table.items():
            if ppid == parent and p not in found and state not in ("Z", "X"):
                found[p] = start
                frontier.append(p)
    return found


def _alive(procs: dict) -> list:
    alive = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] not in ("Z", "X"):
            alive.append(pid)
    return alive


def _wait_until(cond, timeout, proc, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"the batch ended before {what}: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _start(four_phantom_cts, out, workers, delay):
    env = dict(os.environ, PANTHEON_BATCH_TEST_CASE_DELAY=str(delay))  # each case pauses half-written
    cmd = PANTHEON + ["batch", "nemesis-organs", "--input", str(four_phantom_cts), "--output", str(out), "--workers",
                      str(workers), "--quiet"]
    return cmd, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)


@pytest.mark.parametrize("target", ["terminal", "parent"])
def test_ctrl_c_says_what_was_written_and_the_folder_resumes(four_phantom_cts, tmp_path, target):
    out = tmp_path / "out"
    cmd, proc = _start(four_phantom_cts, out, workers=1, delay=1.0)
    _wait_until(lambda: sum(c["state"] == "done" for c in _manifest(out).values()) >= 2
                and any(c["state"] == "running" for c in _manifest(out).values()), 180, proc, "two cases finished")
    workers = _descendants(proc.pid)
    assert workers
    time.sleep(0.3)  # inside the next case, which is being written
    if target == "terminal":  # Ctrl-C in a terminal: SIGINT to the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    line = stderr.strip()
    doc = _manifest(out)
    done = sorted(cid for cid, c in doc.items() if c["state"] == "done")
    pending = sorted(cid for cid, c in doc.items() if c["state"] == "pending")
    assert len(done) >= 2 and pending and len(done) + len(pending) == 4, doc
    assert "no output was written" not in line
    assert f"{len(done)} of 4" in line and str(out) in line and "rerun" in line, line
    for cid in done:
        assert json.loads((out / cid / "case.json").read_text())["attempt"] == 1
    interrupted = [cid for cid in pending if doc[cid]["history"]]
    assert len(interrupted) == 1 and doc[interrupted[0]]["history"][-1]["state"] == "interrupted"
    assert not (out / interrupted[0]).exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".batch.lock"] == []
    assert (out / "summary.csv").read_text().count("\n") == 5
    deadline = time.monotonic() + 5
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(workers) == []

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["done"] == 4 and summary["skipped"] == len(done)
    for cid, c in _manifest(out).items():
        assert [h["state"] for h in c["history"]].count("done") == 1


def test_killing_the_batch_kills_its_workers(four_phantom_cts, tmp_path):
    out = tmp_path / "out"
    cmd, proc = _start(four_phantom_cts, out, workers=2, delay=4.0)

    def both_working():
        logs = list((out / "logs").glob("*.log")) if (out / "logs").is_dir() else []
        return sum("=== case" in p.read_text() for p in logs) >= 2
    _wait_until(both_working, 180, proc, "both workers started a case")
    workers = _descendants(proc.pid)
    assert len(workers) >= 2
    os.kill(proc.pid, signal.SIGKILL)  # the batch only, as an OOM killer or `kill -9 PID` would
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _alive(workers)
    for pid in survivors:  # leave nothing behind for the next test, then fail
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], "worker processes outlived their batch"

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)  # no old worker races the rerun
    assert r.returncode == 0, r.stderr
    for cid, c in _manifest(out).items():
        assert c["state"] == "done" and [h["state"] for h in c["history"]].count("done") == 1
        assert json.loads((out / cid / "case.json").read_text())["attempt"] == c["attempts"]


def test_exit_status_says_whether_cases_failed(four_phantom_cts, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        (src / f"{name}.nii.gz").write_bytes((four_phantom_cts / "ct00.nii.gz").read_bytes()[:2000])  # truncated
    out = tmp_path / "out"
    cmd = PANTHEON + ["batch", "nemesis-pca", "--input", str(src), "--output", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    line = r.stderr.strip()
    assert line.startswith("pantheon: error:") and "2 of 2" in line and "failed" in line
    assert str(out / "summary.csv") in line

    (src / "c.nii.gz").write_bytes((four_phantom_cts / "ct00.nii.gz").read_bytes())  # one good case
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stderr  # some failed, the rest written
    assert len(r.stderr.splitlines()) == 1 and "2 of 3" in r.stderr and str(out) in r.stderr, r.stderr
    assert json.loads(r.stdout)["done"] == 1
