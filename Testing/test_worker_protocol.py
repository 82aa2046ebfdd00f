"""Reliability of the background worker with a real worker subprocess (no model compute:
the ``system.sleep`` test pipeline). See docs/worker-protocol.md."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pantheon.worker.client import Job, WorkerClient, WorkerError, default_python
from pantheon.worker.protocol import MAX_REQUEST_BYTES, TEST_PIPELINES_ENV

ENV = {TEST_PIPELINES_ENV: "1"}


@pytest.fixture(scope="module")
def client():
    c = WorkerClient(env=ENV, preload=False)
    yield c
    c.shutdown()


def _wait_state(job, state, timeout=5.0):
    deadline = time.monotonic() + timeout
    while job.state != state and time.monotonic() < deadline:
        time.sleep(0.01)
    return job.state == state


def test_client_module_does_not_import_torch_or_numpy():
    code = ("import sys, pantheon.worker.client as c; "
            "print(sorted(m for m in ('torch', 'numpy', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_client_source_is_python39_syntax():
    import ast
    src = Path(__file__).resolve().parents[1] / "pantheon" / "worker" / "client.py"
    ast.parse(src.read_text(), feature_version=(3, 9))
    ast.parse((src.parent / "protocol.py").read_text(), feature_version=(3, 9))
    ast.parse((src.parent / "requirements.py").read_text(), feature_version=(3, 9))  # the probe runs anywhere


def test_default_python_finds_pythonslicer(tmp_path, monkeypatch):
    app = tmp_path / "Slicer"
    app.write_text("")
    (tmp_path / "bin").mkdir()
    ps = tmp_path / "bin" / "PythonSlicer"
    ps.write_text("")
    monkeypatch.delenv("PANTHEON_WORKER_PYTHON", raising=False)
    monkeypatch.setattr(sys, "executable", str(app))
    assert default_python() == str(ps)
    monkeypatch.setenv("PANTHEON_WORKER_PYTHON", "/opt/conda/bin/python")
    assert default_python() == "/opt/conda/bin/python"


def test_handshake_and_stats(client):
    stats = client.stats()
    assert stats["pid"] == client.pid
    assert client._hello["protocol"] == 1
    assert stats["cache"]["budget_bytes"] == 2048 * 1024 * 1024


def test_progress_arrives_in_order_and_result(client):
    seen = []
    result = client.run("system.sleep", {"seconds": 0.4, "steps": 8}, {}, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert [m for _, m in seen][:3] == ["step 0/8", "step 1/8", "step 2/8"]
    assert result["scalars"]["seconds"] == 0.4
    assert os.path.isdir(result["output_dir"])
    client.release(result)
    assert not os.path.exists(result["output_dir"])


def test_nonblocking_poll_api(client):
    job = client.submit("system.sleep", {"seconds": 0.3, "steps": 3}, {})
    assert isinstance(job, Job) and job.state in ("queued", "running")
    events = []
    deadline = time.monotonic() + 10
    while not job.done and time.monotonic() < deadline:
        events += job.poll()
        time.sleep(0.02)
    events += job.poll()
    assert job.state == "done" and job.done and job.error is None
    assert [e["type"] for e in events].count("result") == 1 and events[-1]["type"] == "result"
    assert job.progress[0] == 1.0
    client.release(job)


def test_cancel_within_one_second_and_worker_stays_usable(client, tmp_path):
    in_dir = client.input_dir()
    Path(in_dir, "x.txt").write_text("x")
    job = client.submit("system.sleep", {"seconds": 30, "steps": 3}, {}, remove_when_done=[in_dir])
    assert _wait_state(job, "running")
    time.sleep(0.2)
    t0 = time.monotonic()
    job.cancel()
    assert _wait_state(job, "cancelled", 2.0)
    assert time.monotonic() - t0 < 1.0
    assert job.error["kind"] == "cancelled"
    assert not os.path.exists(job.output_dir) and not os.path.exists(in_dir)  # temp files gone after cancel
    with pytest.raises(WorkerError) as e:
        client.run("system.sleep", {"seconds": 30}, {}, cancel=lambda: True)
    assert e.value.kind == "cancelled"
    assert client.run("system.sleep", {"seconds": 0.01, "steps": 1}, {})["scalars"]["seconds"] == 0.01


def test_cancel_queued_job(client):
    first = client.submit("system.sleep", {"seconds": 0.5, "steps": 5}, {})
    second = client.submit("system.sleep", {"seconds": 0.5, "steps": 5}, {})
    assert second.state == "queued"
    second.cancel()
    assert _wait_state(second, "cancelled", 2.0)
    assert first.wait(5) and first.state == "done"
    assert second.state == "cancelled"


def test_several_requests_in_a_row(client):
    pid = client.pid
    jobs = [client.submit("system.sleep", {"seconds": 0.05 * i, "steps": 2}, {}) for i in range(6)]
    for i, job in enumerate(jobs):
        assert job.wait(10) and job.state == "done", job.error
        assert job.result["scalars"]["seconds"] == pytest.approx(0.05 * i)
    assert len({j.output_dir for j in jobs}) == 6
    assert client.pid == pid


def test_malformed_requests_get_error_answers(client):
    pid = client.pid
    assert client.send_raw(b"this is not json")["kind"] == "protocol"
    assert client.send_raw(b"[1, 2, 3]")["kind"] == "protocol"
    assert client.send_raw(b'{"op": "submit"}')["kind"] == "protocol"  # no id
    assert client.send_raw(b'{"op": "explode", "id": "a"}')["kind"] == "protocol"
    assert client.send_raw(b'{"op": "submit", "id": "b", "pipeline": "x", "params": 3, '
                           b'"output_dir": "/tmp"}')["kind"] == "input"
    assert client.send_raw(b'{"op": "submit", "id": "c", "pipeline": "system.sleep", "params": [], '
                           b'"output_dir": "/tmp"}')["kind"] == "protocol"
    assert client.send_raw(b"\xff\xfe garbage")["kind"] == "protocol"
    err = client.send_raw(b'{"op": "hello", "id": "d", "pad": "' + b"x" * (MAX_REQUEST_BYTES + 10) + b'"}')
    assert err["kind"] == "protocol" and "limit" in err["message"]
    # oversized through the normal API: the job fails with a protocol error
    job = client.submit("system.sleep", {"blob": "y" * (MAX_REQUEST_BYTES + 1)}, {})
    assert job.wait(10) and job.state == "failed" and job.error["kind"] == "protocol"
    with pytest.raises(WorkerError) as e:
        client.run("no.such.pipeline", {}, {})
    assert e.value.kind == "input" and "system.sleep" in e.value.message
    assert client.pid == pid  # same worker, still answering
    assert client.run("system.sleep", {"seconds": 0.01, "steps": 1}, {})["scalars"]["seconds"] == 0.01


def test_pipeline_errors_are_structured_and_temp_removed(client):
    in_dir = client.input_dir()
    with pytest.raises(WorkerError) as e:
        client.run("system.sleep", {"seconds": 0.01, "steps": 1, "fail": "input"}, {}, remove_when_done=[in_dir])
    assert e.value.kind == "input" and "Requested failure" in e.value.message
    assert not os.path.exists(in_dir)
    logs = []
    client.log_callback = logs.append
    try:
        job = client.submit("system.sleep", {"seconds": 0.01, "steps": 1, "fail": "internal", "write": True}, {})
        assert job.wait(10) and job.state == "failed"
        lines = [ev["line"] for ev in job.poll() if ev["type"] == "log"]
    finally:
        client.log_callback = None
    assert job.error["kind"] == "internal" and "RuntimeError" in job.error["message"]
    assert any("Traceback" in line for line in lines) and any("Traceback" in line for line in logs)
    assert not os.path.exists(job.output_dir)  # failed job: its automatic output folder is gone


def test_two_clients(tmp_path):
    a = WorkerClient(env=ENV, preload=False)
    b = WorkerClient(env=ENV, preload=False)
    try:
        results = {}

        def go(name, c):
            results[name] = c.run("system.sleep", {"seconds": 0.3, "steps": 3, "write": True}, {},
                                  output_dir=str(tmp_path / name), timeout=30)
        threads = [threading.Thread(target=go, args=(n, c)) for n, c in (("a", a), ("b", b))]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        assert set(results) == {"a", "b"}
        assert a.pid != b.pid
        assert results["a"]["output_dir"] == str(tmp_path / "a")
    finally:
        a.shutdown()
        b.shutdown()
    assert (tmp_path / "a" / "result.json").is_file()  # caller-given output folders are never removed


@pytest.mark.slow
def test_kill_9_mid_job_reports_crash_then_restarts():
    logs = []
    c = WorkerClient(env=ENV, preload=False, log_callback=logs.append)
    try:
        job = c.submit("system.sleep", {"seconds": 30, "steps": 30}, {})
        assert _wait_state(job, "running")
        old = c.pid
        os.kill(old, signal.SIGKILL)
        assert job.wait(5) and job.state == "failed"
        assert job.error["kind"] == "crashed" and "signal 9" in job.error["message"]
        assert not os.path.exists(job.output_dir)
        with pytest.raises(WorkerError) as e:  # blocking API also reports the crash
            j2 = c.submit("system.sleep", {"seconds": 30, "steps": 30}, {})
            assert _wait_state(j2, "running")
            threading.Timer(0.2, os.kill, (c.pid, signal.SIGKILL)).start()
            c.run("system.sleep", {"seconds": 0.01, "steps": 1}, {}, timeout=10)
        assert e.value.kind == "crashed"
        result = c.run("system.sleep", {"seconds": 0.01, "steps": 1}, {}, timeout=30)
        assert result["scalars"]["seconds"] == 0.01
        assert c.pid not in (None, old) and c.workers_started == 3
        c.poll_logs()
        assert any("stopped unexpectedly" in line for line in logs)
    finally:
        session = c._session
        c.shutdown()
    assert session is None or not os.path.exists(session)


def test_temp_files_private_and_removed_on_shutdown():
    c = WorkerClient(env=ENV, preload=False)
    result = c.run("system.sleep", {"seconds": 0.01, "steps": 1, "write": True}, {})
    session = c.session_dir
    assert os.stat(session).st_mode & 0o777 == 0o700
    assert os.stat(result["output_dir"]).st_mode & 0o777 == 0o700
    assert sorted(os.listdir(result["output_dir"])) == ["result.json"]  # no staging leftovers
    assert json.loads(Path(result["output_dir"], "result.json").read_text())["scalars"] == {"seconds": 0.01}
    pid = c.pid
    c.shutdown()
    assert not os.path.exists(session)
    time.sleep(0.2)
    with pytest.raises(OSError):
        os.kill(pid, 0)


def test_worker_exits_when_client_disappears():
    proc = subprocess.Popen([sys.executable, "-m", "pantheon.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.close()
    assert proc.wait(20) == 0


def test_version_mismatch_detected():
    c = WorkerClient(env=ENV, preload=False)
    c.protocol = 999
    try:
        with pytest.raises(WorkerError) as e:
            c.stats()
        assert e.value.kind == "version" and "protocol 1" in e.value.message and "999" in e.value.message
    finally:
        c.shutdown()


def test_broken_python_is_reported(tmp_path):
    c = WorkerClient(python=str(tmp_path / "no-python"), env=ENV)
    with pytest.raises(WorkerError) as e:
        c.stats()
    assert e.value.kind == "crashed" and "no-python" in e.value.message
    env = c.check_environment()
    assert env["missing"] == ["python"] and env["ready"] is False
    assert "no-python" in env["error"] and "Traceback" not in env["error"]  # one sentence for the panel
    c.shutdown()
