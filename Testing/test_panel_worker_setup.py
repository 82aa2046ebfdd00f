"""The worker's Python as a panel user meets it, in the real-Qt harness: the first click checks it
and starts the worker on a thread (progress and Cancel in the panel, nothing long on the GUI
thread), missing packages are offered before anything waits and installed on a thread with pip's
output in the log, the GPUs the worker sees become device choices, and a GPU the worker cannot
use is said before jobs run on the CPU.

The worker client is a scripted stand-in here (its real behaviour is tested in
test_worker_process.py / test_worker_protocol.py); everything else is the real panel.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from extension_layout import MODEL_MODULES

REPO = Path(__file__).resolve().parents[1]
MODULE = "ToothAnalysis"

pytestmark = pytest.mark.usefixtures("harness_checks")


class ScriptedClient:
    """Answers the environment check from ``environments`` (one per check, the last one repeats);
    ``ping`` is the worker's start."""

    environments = []
    checks = 0
    pings = 0
    check_seconds = 0.0

    def __init__(self, python=None, log_callback=None, **kwargs):
        self.python, self.pid = python, None

    def check_environment(self, timeout=180.0, import_modules=True):
        cls = type(self)
        time.sleep(cls.check_seconds)
        env = cls.environments[min(cls.checks, len(cls.environments) - 1)]
        cls.checks += 1
        return dict(env, python=self.python or "/slicer/PythonSlicer", version="3.12")

    def ping(self, timeout=None):
        type(self).pings += 1
        self.pid = 4242
        return {"ok": True}

    def shutdown(self):
        self.pid = None


READY = {"missing": [], "outdated": [], "broken": {}, "ready": True, "torch": "2.13.0", "cuda": True,
         "cuda_devices": [{"index": 0, "device": "cuda:0", "name": "NVIDIA H200", "usable": True},
                          {"index": 1, "device": "cuda:1", "name": "NVIDIA H200", "usable": True}]}
MISSING = {"missing": ["einops"], "outdated": [], "broken": {}, "ready": False, "torch": "2.13.0", "cuda": False,
           "cuda_devices": []}


@pytest.fixture
def panel(harness, monkeypatch):
    harness.load_module(REPO / MODULE)
    widget = harness.show_module(MODULE)
    ScriptedClient.checks = ScriptedClient.pings = 0
    ScriptedClient.check_seconds = 0.0
    widget.logic.shutdown()
    widget.logic.clientFactory = ScriptedClient
    widget.logic._nvidiaDriver = ""
    started = []
    monkeypatch.setattr(type(widget), "startAction", lambda self, action: started.append(action))
    widget.started = started
    yield widget
    harness.unload_module(MODULE)


def _opg(harness):
    import numpy as np
    import slicer
    harness.close_scene()
    return slicer.util.addVolumeFromArray(np.zeros((1, 64, 128), np.uint8), name="OPG")


def test_missing_package_is_offered_installed_and_then_the_action_runs(harness, panel):
    ui = panel.ui
    _opg(harness)
    harness.process_events()
    ScriptedClient.environments = [MISSING, READY]
    pip = []
    panel.logic.pipRunner = lambda cmd: pip.append((cmd, threading.current_thread() is threading.main_thread())) or 0
    harness.dialogs.answers.append(True)
    ui.applyButton.click()
    assert panel.task is not None and panel.task.kind == "prepare" and ui.applyButton.text == "Cancel"
    harness.wait_until(lambda: panel.started, 20, "the action after the installation")
    question = harness.dialogs.shown[-1]
    assert "einops" in question["text"] and "Install now?" in question["text"]
    assert not question["under_wait_cursor"]
    # off the GUI thread
    assert [cmd[-1] for cmd, _main in pip] == ["einops>=0.7"] and not any(main for _cmd, main in pip)
    assert panel.started == ["analyze"] and ScriptedClient.pings == 1
    # the check found two GPUs: they are the device choices, and picking one reaches the parameter node
    items = [ui.deviceComboBox.itemText(i) for i in range(ui.deviceComboBox.count)]
    assert items == ["auto", "cpu", "cuda:0", "cuda:1"]
    ui.deviceComboBox.setCurrentIndex(3)
    assert panel._parameterNode.device == "cuda:1"
    assert "cuda:1: NVIDIA H200" in ui.environmentLabel.text
    panel.started.clear()
    ui.applyButton.click()  # ready now: no second check, the action starts at once
    assert panel.started == ["analyze"] and ScriptedClient.checks == 2


def test_declining_the_installation_runs_nothing(harness, panel):
    ui = panel.ui
    _opg(harness)
    harness.process_events()
    ScriptedClient.environments = [MISSING]
    panel.logic.pipRunner = lambda cmd: pytest.fail("installed without consent")
    harness.dialogs.answers.append(False)
    ui.applyButton.click()
    harness.wait_until(lambda: panel.task is None, 20, "the check to end")
    assert panel.started == [] and "lacks einops; nothing was run" in ui.errorLabel.text
    assert ui.applyButton.text == "Analyze" and ui.applyButton.enabled


def test_the_check_can_be_cancelled_and_says_a_gpu_would_go_unused(harness, panel):
    ui = panel.ui
    _opg(harness)
    harness.process_events()
    ScriptedClient.check_seconds = 2.0
    ScriptedClient.environments = [dict(READY, cuda=False, cuda_devices=[], cuda_error="CUDA driver too old.")]
    ui.applyButton.click()
    harness.pump(0.3)
    assert panel.task.kind == "prepare" and ui.statusLabel.text == "Checking the worker's Python..."
    ui.applyButton.click()  # Cancel
    harness.wait_until(lambda: panel.task is None, 5, "the cancelled check to end")
    assert ui.statusLabel.text == "Cancelled" and panel.started == []
    # the environment button: on a thread too; this machine's GPU is not usable by the worker's torch
    panel.logic._nvidiaDriver = "550.54.14"
    ScriptedClient.check_seconds = 0.0
    ui.checkEnvironmentButton.click()
    harness.wait_until(lambda: panel.task is None, 10, "the check")
    assert "jobs will run on the CPU" in ui.environmentLabel.text and "driver 550.54.14" in ui.environmentLabel.text
    assert [ui.deviceComboBox.itemText(i) for i in range(ui.deviceComboBox.count)] == ["auto", "cpu"]


def test_modules_register_the_sample_data_at_startup(harness, monkeypatch):
    """Each module connects to startupCompleted(); together they register Pantheon's cases once."""
    import sys

    from test_sampledata import make_sample_data_standin
    sample_data = make_sample_data_standin()
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    for name in MODEL_MODULES:
        harness.load_module(REPO / name)
    try:
        harness.finish_startup()
        names = [s.sampleName for s in sample_data.registry.get("Pantheon", [])]
        assert sorted(names) == ["PantheonAbdominalCTPhantom", "PantheonLiverHCCMRIPhantom", "PantheonLiverMRIPhantom",
                                 "PantheonPanoramicXrayPhantom"]
    finally:
        for name in MODEL_MODULES:
            harness.unload_module(name)
