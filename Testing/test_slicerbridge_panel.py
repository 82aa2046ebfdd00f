"""Shared panel plumbing (pantheon.slicerbridge.panel): the parts every module's Logic inherits."""

import sys

import pytest

from pantheon.slicerbridge import panel


class FakeClient:
    def __init__(self, python=None, log_callback=None, missing=()):
        self.python, self.log_callback = python, log_callback
        self.missing = list(missing)
        self.submitted, self.shut = [], False

    def check_environment(self):
        return {"missing": list(self.missing), "torch": None if "torch" in self.missing else "2.13.0"}

    def submit(self, pipeline, params, inputs, output_dir=None):
        if pipeline == "broken":
            raise RuntimeError("worker refused")
        self.submitted.append((pipeline, params, inputs, output_dir))
        return FakeJob()

    def shutdown(self):
        self.shut = True


class FakeJob:
    state, done, result, error = "done", True, {"outputs": {}}, None

    def poll(self):
        return [{"type": "progress", "fraction": 0.5, "message": "half"}]

    def cancel(self):
        pass


class Logic(panel.WorkerLogicMixin):
    modelName = "MATHENA"

    def __init__(self, missing=(), python="/opt/worker/python"):
        self.initWorker(python, lambda python, log_callback: FakeClient(python, log_callback, missing))


def test_install_plan_names_the_model_and_the_python():
    logic = Logic(missing=["torch", "monai"])
    plan = logic.installPlan()
    text = plan.describe()
    assert text.startswith("MATHENA runs in a separate worker process")
    assert "/opt/worker/python" in text and plan.requirements == ["torch>=2.1", "monai>=1.3"]
    assert plan.steps[0].pip_command("/opt/worker/python")[:4] == ["/opt/worker/python", "-m", "pip", "install"]


def test_ensure_requirements_asks_and_respects_a_refusal():
    logic = Logic(missing=["monai"])
    asked = []
    assert logic.ensureRequirements(confirm=lambda text: asked.append(text) or False) is False
    assert len(asked) == 1 and "monai>=1.3" in asked[0]
    assert Logic(missing=[]).ensureRequirements(confirm=lambda text: pytest.fail("asked needlessly")) is True


def test_start_job_removes_the_temp_folder_when_submitting_fails(tmp_path):
    logic = Logic()
    tmp = panel.private_temp_dir("panel-test-")
    with pytest.raises(RuntimeError, match="worker refused"):
        logic.startJob("analyze", "broken", {}, {}, tmp, lambda r: r)
    import os
    assert not os.path.exists(tmp)


def test_start_job_and_wait_import_on_finish():
    logic = Logic()
    tmp = panel.private_temp_dir("panel-test-")
    seen = []
    task = logic.startJob("analyze", "mathena.analyze", {"x": 1}, {"volume": "/in.nrrd"}, tmp,
                          lambda result: seen.append(result) or "imported")
    progress = []
    assert logic.wait(task, progress=lambda f, m: progress.append((f, m))) == "imported"
    assert seen == [{"outputs": {}}] and task.state == "done"
    pipeline, params, inputs, out = logic.client.submitted[0]
    assert (pipeline, params, inputs) == ("mathena.analyze", {"x": 1}, {"volume": "/in.nrrd"})
    assert out.startswith(tmp)
    import os
    assert not os.path.exists(tmp)  # removed when the task finished


def test_wait_raises_task_error_with_the_worker_kind():
    logic = Logic()

    class Failed(FakeJob):
        state, error = "failed", {"kind": "input", "message": "The image is 3D."}

    task = panel.WorkerTask("analyze", Failed(), None, lambda r: r)
    with pytest.raises(panel.TaskError, match="The image is 3D.") as info:
        logic.wait(task)
    assert info.value.kind == "input"


def test_run_worker_python_returns_stdout_and_reports_stderr():
    assert panel.run_worker_python("import sys; print(sys.argv[1:])", ["a", 2]).strip() == "['a', '2']"
    with pytest.raises(RuntimeError, match="Making the OPG failed: .*boom"):
        panel.run_worker_python("raise SystemExit('boom')", [], python=sys.executable, what="Making the OPG")
