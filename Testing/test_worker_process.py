"""The worker process as a whole: it dies whole (launcher, interpreter and their children) on
kill, shutdown, crash and when its client dies, and another interpreter starts from Slicer's
startup environment, not the launcher's. Real processes throughout (POSIX: /proc is read to see
which processes are left)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pantheon.worker.client import WorkerClient, WorkerError, is_slicer_python, worker_base_environment
from pantheon.worker.protocol import TEST_PIPELINES_ENV

ENV = {TEST_PIPELINES_ENV: "1"}
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to see which processes are left")


# ------------------------------------------------------------------------------------ helpers
def _stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0].decode(), int(fields[2])  # state, process group


def alive(pid):
    """Running (a zombie waiting to be reaped counts as dead: it holds no memory, GPU or pipe)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid):
    """Live processes of process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
                out.append(int(entry))
    return sorted(out)


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def wait_state(job, state, timeout=20.0):
    return wait_until(lambda: job.state == state, timeout)


@pytest.fixture
def launcher(tmp_path):
    """A stand-in for PythonSlicer: a launcher that starts the real interpreter as a child with
    the same arguments and waits for it; it also starts one more child (``sleep``), as any
    process tree may hold, which shares the launcher's pipes."""
    path = tmp_path / "PythonSlicer"
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys
        subprocess.Popen(["sleep", "600"])
        code = subprocess.Popen([{sys.executable!r}] + sys.argv[1:]).wait()
        sys.exit(code if code >= 0 else 128 - code)
        """))
    path.chmod(0o755)
    return str(path)


def start_tree(client):
    """Start a long job; returns (job, launcher pid, worker pid, every process of the tree)."""
    job = client.submit("system.sleep", {"seconds": 60, "steps": 60}, {})
    assert wait_state(job, "running"), job.error
    launcher_pid, worker_pid = client.pid, client.worker_pid
    assert launcher_pid != worker_pid and alive(worker_pid)
    members = group_members(launcher_pid)
    assert launcher_pid in members and worker_pid in members and len(members) >= 3  # + the sleep child
    return job, launcher_pid, worker_pid, members


# ------------------------------------------------------------------------------------ A: dies whole
@pytest.mark.slow
def test_kill_ends_launcher_interpreter_and_children_at_once(launcher):
    c = WorkerClient(python=launcher, env=ENV, preload=False)
    try:
        job, pgid, worker, members = start_tree(c)
        t0 = time.monotonic()
        c.kill()
        assert job.wait(3) and job.state == "failed" and job.error["kind"] == "crashed"
        assert time.monotonic() - t0 < 3  # the client noticed at once, no timeout was waited out
        assert wait_until(lambda: not any(alive(p) for p in members), 3), [p for p in members if alive(p)]
        assert group_members(pgid) == []
        assert c.run("system.sleep", {"seconds": 0.01, "steps": 1}, {}, timeout=60)["scalars"]["seconds"] == 0.01
    finally:
        c.shutdown()


def test_shutdown_ends_the_whole_tree(launcher):
    c = WorkerClient(python=launcher, env=ENV, preload=False)
    job, pgid, worker, members = start_tree(c)
    t0 = time.monotonic()
    c.shutdown()
    assert time.monotonic() - t0 < 5
    assert job.done  # cancelled or failed, never left running
    assert wait_until(lambda: group_members(pgid) == [], 3), group_members(pgid)
    assert not any(alive(p) for p in members)


@pytest.mark.slow
def test_interpreter_crash_is_noticed_and_its_tree_ended(launcher):
    c = WorkerClient(python=launcher, env=ENV, preload=False)
    try:
        job, pgid, worker, members = start_tree(c)
        t0 = time.monotonic()
        os.kill(worker, signal.SIGKILL)  # the real interpreter dies; the launcher exits with it
        assert job.wait(3) and job.state == "failed" and job.error["kind"] == "crashed"
        assert time.monotonic() - t0 < 3
        assert "stopped unexpectedly" in job.error["message"]
        # the launcher's other child held the pipes open: only ending the group let the reader see EOF
        assert wait_until(lambda: group_members(pgid) == [], 3), group_members(pgid)
        assert c.run("system.sleep", {"seconds": 0.01, "steps": 1}, {}, timeout=60)["scalars"]["seconds"] == 0.01
        assert c.workers_started == 2
    finally:
        c.shutdown()


def test_killing_only_the_launcher_does_not_orphan_the_interpreter(launcher):
    c = WorkerClient(python=launcher, env=ENV, preload=False)
    try:
        job, pgid, worker, members = start_tree(c)
        t0 = time.monotonic()
        os.kill(pgid, signal.SIGKILL)  # e.g. the user ends PythonSlicer in a task manager
        assert job.wait(3) and job.state == "failed" and job.error["kind"] == "crashed"
        assert time.monotonic() - t0 < 3
        assert wait_until(lambda: not alive(worker), 3)
        assert wait_until(lambda: group_members(pgid) == [], 3), group_members(pgid)
    finally:
        c.shutdown()


OWNER = textwrap.dedent("""\
    import json, os, subprocess, sys, time
    from pantheon.worker.client import WorkerClient
    c = WorkerClient(python=sys.argv[1], env={"PANTHEON_WORKER_TEST_PIPELINES": "1"}, preload=False)
    job = c.submit("system.sleep", {"seconds": 600, "steps": 600}, {})
    while job.state != "running":
        time.sleep(0.02)
    holder = None
    if sys.argv[2] == "leak-stdin":
        # another process inherits the worker's stdin pipe, so the worker never sees EOF on it
        fd = c._worker.proc.stdin.fileno()
        holder = subprocess.Popen(["sleep", "600"], pass_fds=(fd,))
    print(json.dumps({"launcher": c.pid, "worker": c.worker_pid, "holder": holder and holder.pid}), flush=True)
    time.sleep(600)
    """)


@pytest.mark.parametrize("how", ["stdin-eof", "leak-stdin"])
def test_client_process_killed_leaves_no_worker(launcher, how):
    """Slicer killed -9: the worker notices (stdin EOF, or the parent-pid watchdog when its stdin
    stays open) and ends its whole tree within seconds."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, launcher, how], stdout=subprocess.PIPE, text=True,
                             cwd=str(REPO))
    holder = pgid = None
    try:
        info = json.loads(owner.stdout.readline())
        holder, pgid, worker = info["holder"], info["launcher"], info["worker"]
        members = group_members(pgid)
        assert worker in members and len(members) >= 3
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        t0 = time.monotonic()
        assert wait_until(lambda: group_members(pgid) == [], 5), group_members(pgid)
        assert not any(alive(p) for p in members)
        assert time.monotonic() - t0 < 5
        if holder:
            assert alive(holder)  # the pipe really stayed open: the watchdog did it
    finally:
        if owner.poll() is None:
            owner.kill()
        if holder and alive(holder):
            os.kill(holder, signal.SIGKILL)
        for p in group_members(pgid) if pgid else []:  # leave nothing behind even when the test fails
            os.kill(p, signal.SIGKILL)


def test_worker_without_parent_watch_still_exits_on_stdin_eof():
    proc = subprocess.Popen([sys.executable, "-m", "pantheon.worker", "--parent-pid", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.close()
    assert proc.wait(20) == 0  # not in a session of its own: exits alone, kills no group


# ------------------------------------------------------------------------------------ B: environment
@pytest.fixture(scope="module")
def other_python(tmp_path_factory):
    """A second interpreter standing in for a conda env: a fresh venv (no pantheon installed) that
    sees this venv's packages through a .pth file."""
    root = tmp_path_factory.mktemp("conda-env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True, timeout=120)
    py = root / "env" / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed.pth").write_text(ours + "\n")
    return str(py)


@pytest.fixture
def launcher_env(tmp_path):
    """What Slicer's launcher puts into Slicer's own environment, pointing at Slicer's Python."""
    bogus_home = tmp_path / "Slicer-5.10" / "lib" / "Python"
    bogus_site = bogus_home / "lib" / "python3.12" / "site-packages"
    (bogus_site / "numpy").mkdir(parents=True)
    (bogus_site / "numpy" / "__init__.py").write_text(
        "raise ImportError('numpy of Slicer, built for another Python')\n")
    startup = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    launched = dict(startup, PYTHONHOME=str(bogus_home), PYTHONPATH=str(bogus_site),
                    LD_LIBRARY_PATH=str(tmp_path / "Slicer-5.10" / "lib"), SLICER_HOME=str(tmp_path / "Slicer-5.10"),
                    QT_PLUGIN_PATH=str(tmp_path / "Slicer-5.10" / "plugins"))
    return startup, launched


@pytest.mark.slow
def test_other_python_fails_with_the_launcher_environment(other_python, launcher_env):
    _, launched = launcher_env
    c = WorkerClient(python=other_python, env=ENV, preload=False, base_env=launched, startup_timeout=60)
    try:
        with pytest.raises(WorkerError) as e:
            c.stats()
        assert e.value.kind == "crashed"
        env = c.check_environment(import_modules=False)
        assert env["missing"] == ["python"] and env["ready"] is False and "does not run" in env["error"]
        # without PYTHONHOME it starts, but picks up Slicer's packages through PYTHONPATH
        c2 = WorkerClient(python=other_python, base_env={k: v for k, v in launched.items() if k != "PYTHONHOME"})
        env = c2.check_environment()
        assert "numpy" in env["broken"] and "another Python" in env["broken"]["numpy"] and env["ready"] is False
    finally:
        c.shutdown()


@pytest.mark.slow
def test_other_python_runs_with_the_startup_environment(other_python, launcher_env):
    startup, _ = launcher_env
    c = WorkerClient(python=other_python, env=ENV, preload=False, base_env=startup, startup_timeout=60)
    try:
        result = c.run("system.sleep", {"seconds": 0.01, "steps": 1}, {}, timeout=60)
        assert result["scalars"]["seconds"] == 0.01
        assert c._hello["python"] == other_python  # really the other interpreter
        env = c.check_environment()
        assert env["python"] == other_python and env["ready"] is True, env
        assert env["packages"]["numpy"]["status"] == "ok"
    finally:
        c.shutdown()


def test_worker_base_environment(monkeypatch):
    import types
    startup = {"PATH": "/usr/bin", "HOME": "/home/u"}
    util = types.ModuleType("slicer.util")
    util.startupEnvironment = lambda: dict(startup)
    slicer = types.ModuleType("slicer")
    slicer.util = util
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.setitem(sys.modules, "slicer.util", util)
    assert worker_base_environment(True) == startup
    assert worker_base_environment(False) == dict(os.environ)

    def broken():
        raise AttributeError("module 'slicer' has no attribute 'app'")  # slicer importable, no application
    util.startupEnvironment = broken
    assert worker_base_environment(True) == dict(os.environ)
    assert is_slicer_python("/opt/Slicer/bin/PythonSlicer") and is_slicer_python(r"C:\\Slicer\\bin\\PythonSlicer.exe")
    assert not is_slicer_python("/opt/conda/envs/x/bin/python")


def test_package_root_is_on_the_worker_pythonpath(tmp_path):
    c = WorkerClient(base_env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/somewhere"})
    env = c._env(str(tmp_path))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/somewhere"]  # pantheon first: same code
    assert set(env) == {"PATH", "PYTHONPATH", "PYTHONIOENCODING", "PYTHONUNBUFFERED", "TMPDIR", "TEMP", "TMP"}
    assert env["TMPDIR"] == str(tmp_path)


@pytest.mark.slow
def test_info_reports_the_cuda_devices():
    c = WorkerClient(env=ENV, preload=False)
    try:
        info = c.ping()
        import torch
        assert info["torch"] == torch.__version__
        if torch.cuda.is_available():
            assert [d["device"] for d in info["cuda_devices"]] == [f"cuda:{i}"
                                                                   for i in range(torch.cuda.device_count())]
            assert info["cuda"] is True and all(d["memory_bytes"] > 0 and d["name"] for d in info["cuda_devices"])
        else:
            assert info["cuda"] is False and info["cuda_devices"] == [] and info["device_names"] == ["cpu"]
            assert info["cuda_error"]
    finally:
        c.shutdown()
