"""NemesisSlicer module below the Qt layer.

No Slicer application runs here. NemesisSlicer.py is loaded in-process with small stand-ins for
the parts PyPI ``slicer-core`` lacks (``qt``, ``slicer.i18n``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``); everything else is real: the MRML scene, markups,
segmentations, ``slicer.util``, the worker subprocess with the bundled demo weights and the
scene bridge. What stays untested here is the Qt widget itself (signals, layouts, dialogs).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from slicer_standins import (
    ScriptedJob,
    archetype_load_volume,
    bound_parameters,
    custom_widgets_declared,
    has_section,
    ijk_to_ras,
    module_lib,
    needs_worker,
    parameter_node_fields,
    slicer_module,
    ui_widgets,
    used_ui_names,
    worker_logic,
)

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "NemesisSlicer"
MODULE_FILE = MODULE_DIR / "NemesisSlicer.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "NemesisSlicer.ui"

lib = module_lib(MODULE_DIR, "NemesisSlicerLib")  # pure Python


# ============================================================================ pure helpers


def test_ras_lps():
    assert lib.ras_to_lps([1.5, -2.0, 3.0]) == [-1.5, 2.0, 3.0]
    assert lib.lps_to_ras(lib.ras_to_lps((4, 5, 6))) == [4.0, 5.0, 6.0]


def test_weights_choice_mapping(tmp_path):
    assert lib.weights_params("demo") == {"weights": "nemesis-demo"}
    assert lib.weights_params(None) == {"weights": "nemesis-demo"}
    assert lib.weights_params("official") == {"weights": "nemesis-mae-768"}
    assert lib.weights_params("official", allow_download=True) == {
        "weights": "nemesis-mae-768", "allow_download": True, "trust_unverified": True}
    ckpt = tmp_path / "my.pt"
    ckpt.write_bytes(b"x")
    assert lib.weights_params("file", str(ckpt)) == {"weights": str(ckpt.resolve())}
    with pytest.raises(ValueError, match="does not exist"):
        lib.weights_params("file", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="Choose"):
        lib.weights_params("file", "")
    with pytest.raises(ValueError, match="Unknown weights choice"):
        lib.weights_params("best")
    assert lib.probe_params("") == {"probe": "nemesis-demo-probe"}


def test_build_params():
    p = lib.build_params("organs", organs=["liver"], device="cpu")
    assert p == {"weights": "nemesis-demo", "device": "cpu", "precision": "fp32", "organs": ["liver"],
                 "probe": "nemesis-demo-probe"}
    assert lib.build_params("organs")["organs"] == lib.ORGAN_NAMES
    r = lib.build_params("reconstruct", point_lps=(1, 2, 3), mask_ratio=(0.25, 0.75), noise_std=0.1, seed=4)
    assert r["point_lps"] == [1.0, 2.0, 3.0] and r["mask_ratio"] == [0.25, 0.75]
    assert r["noise_std"] == 0.1 and r["seed"] == 4
    with pytest.raises(ValueError, match="Unknown organ"):
        lib.build_params("organs", organs=["heart"])
    with pytest.raises(ValueError, match="needs a point"):
        lib.build_params("similarity")
    with pytest.raises(ValueError, match="mask ratios"):
        lib.build_params("reconstruct", point_lps=(0, 0, 0), mask_ratio=(1.0, 0.5))
    with pytest.raises(ValueError, match="device"):
        lib.build_params("pca", device="tpu")
    with pytest.raises(ValueError, match="Unknown action"):
        lib.build_params("segment")


def test_organ_list_matches_the_probe():
    torch = pytest.importorskip("torch")  # noqa: F841
    from pantheon.models.nemesis.probe import ORGAN_NAMES
    assert lib.ORGAN_NAMES == list(ORGAN_NAMES)


def test_install_plan():
    cpu = lib.install_plan(["torch", "monai", "nibabel"], python=None, platform="linux")
    assert [s.via for s in cpu.steps] == ["pip", "pip"]
    assert cpu.steps[0].requirements == ["torch>=2.1"]
    assert cpu.steps[0].pip_args == ["--index-url", lib.TORCH_CPU_INDEX]
    assert cpu.steps[1].requirements == ["monai>=1.3", "nibabel>=5.0"]
    assert "Slicer's own Python" in cpu.describe() and "torch>=2.1" in cpu.describe()
    cuda = lib.install_plan(["torch"], python="/opt/env/bin/python", cuda=True, platform="linux")
    assert cuda.steps[0].pip_args == [] and "/opt/env/bin/python" in cuda.describe()
    assert cuda.steps[0].pip_command("/opt/env/bin/python")[:4] == ["/opt/env/bin/python", "-m", "pip", "install"]
    win = lib.install_plan(["torch"], cuda=True, platform="win32")
    assert win.steps[0].pip_args == ["--index-url", lib.TORCH_CUDA_INDEX]
    ext = lib.install_plan(["torch", "monai"], python=None, have_pytorch_extension=True)
    assert ext.steps[0].via == "pytorchutils"
    # the PyTorch extension installs into Slicer's Python only, not into another interpreter
    assert lib.install_plan(["torch"], python="/x/python", have_pytorch_extension=True).steps[0].via == "pip"
    assert lib.install_plan([]).steps == []


def test_debouncer():
    now = [100.0]
    d = lib.Debouncer(0.3, clock=lambda: now[0])
    assert not d.pending and not d.due()
    d.request([1, 2, 3])
    now[0] += 0.1
    d.request([4, 5, 6])  # a burst: only the newest value, timer restarted
    now[0] += 0.2
    assert not d.due()
    now[0] += 0.11
    assert d.due() and d.take() == [4, 5, 6] and not d.pending
    d.request([7, 8, 9], immediate=True)
    assert d.due()
    d.cancel()
    assert not d.pending


def test_stroke_map_and_default_segments():
    fg, bg = np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), bool)
    fg[0, :, :2] = True
    bg[0, :, 1:3] = True  # column 1 is painted as both: unlabelled
    strokes = lib.stroke_label_map(fg, bg, "liver", "outside")
    assert strokes.dtype == np.uint8 and strokes[0, 0].tolist() == [1, 0, 2, 0] and not strokes[1].any()
    with pytest.raises(lib.StrokesProblem, match=r"^The background segment 'outside' is empty; .*Editor\.$"):
        lib.stroke_label_map(fg, np.zeros_like(bg), "liver", "outside")
    with pytest.raises(ValueError, match="also in the 'outside' segment .*unlabelled"):
        lib.stroke_label_map(fg & bg, bg, "liver", "outside")
    # a segment named like background is the background, another one the foreground
    assert lib.default_stroke_segments([("s1", "Background"), ("s2", "liver")]) == ("s2", "s1")
    assert lib.default_stroke_segments([("s1", "Segment_1"), ("s2", "Segment_2")]) == ("s1", "s2")
    assert lib.default_stroke_segments([("s1", "liver")]) == ("s1", "")
    # choices that still exist are kept; a background equal to the foreground is not
    assert lib.default_stroke_segments([("a", "x"), ("b", "bg"), ("c", "y")], "c", "a") == ("c", "a")
    assert lib.default_stroke_segments([("a", "x"), ("b", "bg")], "a", "a") == ("a", "b")
    assert lib.default_stroke_segments([("a", "x")], "gone", "gone") == ("a", "")
    assert lib.build_params("strokes", stride=8, probability=False)["probability"] is False
    assert lib.ACTIONS["strokes"] == "nemesis.strokes"


def test_atypicality_params_and_log_line():
    params = lib.build_params("atypicality", draws=6, seed=2)
    assert lib.ACTIONS["atypicality"] == "nemesis.atypicality"
    assert params["draws"] == 6 and params["seed"] == 2 and params["mask_ratio"] == list(lib.DEFAULT_MASK_RATIO)
    assert "noise_std" not in params and "point_lps" not in params
    assert lib.build_params("atypicality")["draws"] == lib.DEFAULT_ATYPICALITY_DRAWS == 4
    with pytest.raises(ValueError, match="at least 1, got 0"):
        lib.build_params("atypicality", draws=0)
    with pytest.raises(ValueError, match=r"mask ratios must be in \[0, 1\)"):
        lib.build_params("atypicality", mask_ratio=(0.5, 1.0))
    text = lib.atypicality_text({"mask_draws": 4.0, "mean_error_in_body_hu": 61.26, "voxels_never_hidden": 12.0})
    assert text == ("Atypicality map over 4 mask draws: mean reconstruction error in the body 61.3 HU; 12 voxels "
                    "no draw hid are 0. Bright = unlike what the model learnt to fill in; not a diagnosis.")
    assert lib.atypicality_text({"mask_draws": 1.0}).startswith("Atypicality map over 1 mask draw. ")
    assert lib.atypicality_text({}).startswith("Atypicality map. ")


def FakeJob(events, state="done", result=None, error=None):
    return ScriptedJob(state, result, error, events=events)


def test_task_states(tmp_path):
    def run(job, on_result=lambda r: ("imported", r)):
        d = lib.private_temp_dir()
        assert (os.stat(d).st_mode & 0o777) == 0o700
        finished = []
        task = lib.NemesisTask("pca", job, d, on_result, on_finish=finished.append)
        for _ in range(10):
            task.poll()
        assert task.done and not os.path.exists(d) and finished == [task]
        return task

    ok = run(FakeJob([{"type": "progress", "fraction": 0.5, "message": "half"}, {"type": "log", "line": "hello"}],
                     result={"notes": {}}))
    assert ok.state == "done" and ok.imported == ("imported", {"notes": {}}) and ok.progress == (1.0, "Done")
    assert ok.messages == ["hello"]
    bad = run(FakeJob([], state="failed", error={"kind": "input", "message": "not a CT"}))
    assert bad.state == "failed" and bad.error == {"kind": "input", "message": "not a CT"}

    def broken(result):
        raise RuntimeError("disk full")
    imp = run(FakeJob([], result={}), broken)
    assert imp.state == "failed" and imp.error["kind"] == "import" and "disk full" in imp.error["message"]

    job = FakeJob([{"type": "progress", "fraction": 0.1, "message": "x"}] * 3, state="failed",
                  error={"kind": "cancelled", "message": "Cancelled by the user."})
    task = lib.NemesisTask("pca", job, None, lambda r: r)
    task.poll()
    task.cancel()
    while not task.done:
        task.poll()
    assert job.cancelled and task.state == "cancelled"


def test_thread_task():
    def fn(progress, cancel):
        progress(0.5, "half")
        return "/cache/file.pt"
    t = lib.ThreadTask("organs", fn, follow_up="organs")
    t.join(5)
    t.poll()
    assert t.state == "done" and t.result == "/cache/file.pt" and t.progress == (0.5, "half")

    def slow(progress, cancel):
        while not cancel.wait(0.01):
            pass
        raise RuntimeError("stopped")
    t = lib.ThreadTask("download", slow)
    t.cancel()
    t.join(5)
    t.poll()
    assert t.state == "cancelled" and t.error["kind"] == "cancelled"


def test_messages():
    assert lib.metrics_text({"psnr_db": 31.234, "ssim": 0.9, "masked_fraction": 0.5}) == \
        "PSNR 31.23 dB, SSIM 0.900, masked 50%"
    assert lib.metrics_text({"psnr_db": 16.0, "psnr_masked_db": 14.78, "ssim": 0.39}) == \
        "PSNR 16.00 dB (hidden patches 14.78 dB), SSIM 0.390"
    text = lib.environment_text({"python": "/p", "version": "3.11", "missing": ["torch"], "torch": None, "cuda": None})
    assert "Missing: torch" in text
    assert lib.probe_path_from_result({"notes": {"probe": "/x/probe.safetensors"}}) == "/x/probe.safetensors"


# ============================================================================ the .ui file


def test_ui_has_every_widget_the_code_uses():
    widgets, root = ui_widgets(UI_FILE)
    used = used_ui_names(MODULE_FILE)
    assert used, "the widget code uses no ui names?"
    assert used - set(widgets) == set(), f"missing in the .ui: {sorted(used - set(widgets))}"
    for _organ, box in lib.ORGANS:
        assert widgets[box].get("class") == "QCheckBox"
    assert widgets["inputVolumeSelector"].get("class") == "qMRMLNodeComboBox"
    for name in ("Inputs", "Weights and device", "Organ maps", "Reconstruction explorer", "Feature PCA",
                 "Similarity", "Train probe", "Progress and log"):
        assert has_section(widgets, name), name
    assert custom_widgets_declared(widgets, root)


def test_ui_parameter_names_are_parameter_node_fields():
    widgets, _ = ui_widgets(UI_FILE)
    types_ = parameter_node_fields(MODULE_FILE, "NemesisSlicerParameterNode")
    fields = set(types_)
    bound = bound_parameters(widgets)
    assert bound, "no widget is bound to the parameter node"
    assert set(bound.values()) - fields == set()
    assert {"inputVolume", "maskRatioPlane", "maskRatioAxis", "noiseStd", "similarityPoint"} <= set(bound.values())
    assert types_["inputVolume"] == "vtkMRMLScalarVolumeNode"
    assert types_["similarityPoint"] == "vtkMRMLMarkupsFiducialNode"


# ============================================================================ module against real MRML

slicer_core = None


@pytest.fixture(scope="module")
def nem():
    yield from slicer_module("NemesisSlicer", MODULE_DIR)


@pytest.fixture
def scene(nem, mrml_scene):
    return mrml_scene


def test_module_loads_without_worker_or_torch(nem):
    logic = nem.NemesisSlicerLogic()
    assert logic.moduleName == "NemesisSlicer" and logic._client is None  # nothing started at import
    assert "torch" not in {m.split(".")[0] for m in vars(nem).keys()}


def test_points_from_crosshair_and_markups(nem, scene):
    import slicer
    logic = nem.NemesisSlicerLogic()
    with pytest.raises(ValueError, match="crosshair"):
        logic.pointLPSFromCrosshair()
    crosshair = slicer.vtkMRMLCrosshairNode()
    scene.AddNode(crosshair)
    crosshair.SetCrosshairRAS(10.0, -20.0, 30.0)
    assert logic.pointLPSFromCrosshair() == [-10.0, 20.0, 30.0]
    fid = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    with pytest.raises(ValueError, match="Place a point"):
        logic.pointLPSFromMarkups(fid)
    fid.AddControlPoint(1.0, 2.0, -3.0)
    assert logic.pointLPSFromMarkups(fid) == [-1.0, -2.0, -3.0]
    assert logic.weightsArgument("official", allowDownload=True)["allow_download"] is True


class FakeClient:
    """Stands in for WorkerClient where only the environment check matters."""

    environments = []
    instances = []

    def __init__(self, python=None, log_callback=None, **kw):
        self.python = python
        FakeClient.instances.append(self)

    def check_environment(self):
        return FakeClient.environments[0]

    def shutdown(self):
        pass


def test_missing_requirements_and_install(nem, monkeypatch):
    import slicer
    FakeClient.instances = []
    FakeClient.environments = [{"python": "/slicer/PythonSlicer", "version": "3.12", "missing": ["torch", "monai"],
                                "torch": None, "cuda": None}]
    logic = nem.NemesisSlicerLogic(clientFactory=FakeClient)
    logic._nvidiaDriver = ""  # no NVIDIA driver on this machine: the CPU build of torch
    commands = []
    logic.pipRunner = lambda cmd: commands.append(cmd) or 0
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: pytest.fail("pip into Slicer's process"),
                        raising=False)
    assert logic.missingRequirements() == ["torch", "monai"]
    asked = []
    assert logic.ensureRequirements(confirm=lambda text: asked.append(text) or False) is False
    assert commands == [] and "Slicer's own Python" in asked[0] and "torch>=2.1" in asked[0]

    def agree(text):
        FakeClient.environments[0] = dict(FakeClient.environments[0], missing=[])  # as after a real install
        return True
    FakeClient.environments[0]["missing"] = ["torch", "monai"]
    logic._environment = None
    assert logic.ensureRequirements(confirm=agree) is True
    # pip of the worker's interpreter (here, outside Slicer, this one), never Slicer's in-process pip
    python = logic.workerPythonExecutable() or sys.executable
    assert commands == [[python, "-m", "pip", "install", "torch>=2.1", "--index-url", lib.TORCH_CPU_INDEX],
                        [python, "-m", "pip", "install", "monai>=1.3"]]
    assert len(FakeClient.instances) >= 2  # the worker is restarted after installing

    # another interpreter: pip runs with that interpreter
    FakeClient.environments[0] = {"python": "/env/bin/python", "missing": ["monai"], "torch": "2.5", "cuda": True}
    logic = nem.NemesisSlicerLogic(workerPython="/env/bin/python", clientFactory=FakeClient)
    commands.clear()
    logic.pipRunner = lambda cmd: commands.append(cmd) or 0
    logic.ensureRequirements(confirm=lambda text: "/env/bin/python" in text)
    assert commands == [["/env/bin/python", "-m", "pip", "install", "monai>=1.3"]]
    assert FakeClient.instances[-1].python == "/env/bin/python"


# ---------------------------------------------------------------------------- with the real worker


@pytest.fixture(scope="module")
def logic(nem):
    yield from worker_logic(nem.NemesisSlicerLogic)


def _phantom_node(seed, oblique=True, shape=(40, 56, 56), name="phantom"):
    import slicer

    from pantheon.synth import make_abdomen_phantom
    ct, lab = make_abdomen_phantom(seed, shape=shape, oblique=12.0 if oblique else False)
    arr, m = ct.to_slicer()
    node = slicer.util.addVolumeFromArray(arr, ijkToRAS=m, name=name)
    return node, ct, lab


_matrix = ijk_to_ras


@needs_worker
@pytest.mark.slow
def test_process_organs_on_oblique_volume(nem, logic, scene):
    import slicer
    node, ct, _ = _phantom_node(0)
    m = _matrix(node)
    assert abs(abs(m[0, 0]) / np.linalg.norm(m[:3, 0]) - 1) > 1e-3, "the phantom grid should be oblique"
    task = logic.submit("organs", node, organs=["liver", "spleen"], device="cpu")
    assert os.path.isdir(task.temp_dir) and (os.stat(task.temp_dir).st_mode & 0o777) == 0o700
    seen = []
    imported = logic.wait(task, progress=lambda f, msg: seen.append((f, msg)), timeout=120)
    assert not os.path.exists(task.temp_dir), "the private temp folder is removed"
    assert seen and all(0.0 <= f <= 1.0 for f, _ in seen)
    assert set(imported.nodes) == {"liver", "spleen"}
    for name, out in imported.nodes.items():
        assert out.IsA("vtkMRMLScalarVolumeNode") and out.GetScene() is scene
        np.testing.assert_allclose(_matrix(out), m, atol=1e-5)
        heat = slicer.util.arrayFromVolume(out)
        assert heat.shape == slicer.util.arrayFromVolume(node).shape
        assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert "warning" in imported.notes  # demo weights are labelled as such
    # errors come back as TaskError with the worker's kind
    with pytest.raises(lib.TaskError) as err:
        logic.process("organs", node, params={"weights": "no-such-card", "device": "cpu"}, timeout=60)
    assert err.value.kind in ("checkpoint", "input", "internal") and err.value.message


@needs_worker
@pytest.mark.slow
def test_similarity_point_moves_reuse_cached_features(nem, logic, scene):
    import slicer
    node, ct, _ = _phantom_node(1, shape=(40, 48, 48))
    centre = ct.ijk_to_world(np.array(ct.size_ijk) / 2.0, ras=True)[0]
    fid = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    fid.AddControlPoint(*centre)
    first = logic.process("similarity", node, point_lps=logic.pointLPSFromMarkups(fid), device="cpu", timeout=120)
    heat = first.nodes["similarity"]
    before = slicer.util.arrayFromVolume(heat).copy()
    assert first.notes.get("feature_cache") == "miss"

    logic.observeSimilarityPoint(fid, node, params={"device": "cpu"}, delay_s=0.2)
    assert logic.pumpSimilarity() is None  # nothing moved yet
    fid.SetNthControlPointPosition(0, centre[0] + 15.0, centre[1] - 10.0, centre[2])
    fid.SetNthControlPointPosition(0, centre[0] + 20.0, centre[1] - 10.0, centre[2])  # a burst: one job
    assert logic.similarityPending()
    assert logic.pumpSimilarity(now=time.monotonic()) is None  # debounced: not yet due
    task = logic.pumpSimilarity(now=time.monotonic() + 1.0)
    assert task is not None and not logic.similarityPending()
    second = logic.wait(task, timeout=60)
    assert second.notes.get("feature_cache") == "hit", "moving the point must not recompute features"
    assert second.nodes["similarity"].GetID() == heat.GetID()  # the same node, updated in place
    assert not np.allclose(slicer.util.arrayFromVolume(heat), before)
    logic.stopObservingSimilarityPoint()
    fid.SetNthControlPointPosition(0, *centre)
    assert not logic.similarityPending()


@needs_worker
@pytest.mark.slow
def test_reconstruct_at_crosshair(nem, logic, scene):
    node, ct, _ = _phantom_node(1, shape=(40, 48, 48))
    crosshair = scene.AddNewNodeByClass("vtkMRMLCrosshairNode")
    centre = ct.ijk_to_world(np.array(ct.size_ijk) / 2.0, ras=True)[0]
    crosshair.SetCrosshairRAS(*centre)
    res = logic.process("reconstruct", node, point_lps=logic.pointLPSFromCrosshair(), mask_ratio=(0.5, 0.5),
                        noise_std=0.0, device="cpu", timeout=120)
    assert {"masked_input", "reconstruction", "error"} <= set(res.nodes)
    assert np.isfinite(res.scalars["psnr_db"]) and -1.0 <= res.scalars["ssim"] <= 1.0
    assert lib.metrics_text(res.scalars).startswith("PSNR")


@needs_worker
@pytest.mark.slow
def test_cancel_leaves_no_files(nem, logic, scene):
    node, _, _ = _phantom_node(5, shape=(64, 80, 80))
    task = logic.submit("pca", node, device="cpu")
    task.cancel()
    with pytest.raises(lib.TaskError) as err:
        logic.wait(task, timeout=60)
    assert err.value.kind == "cancelled" and task.state == "cancelled"
    assert not os.path.exists(task.temp_dir)
    assert logic.client.ping()  # the worker survives a cancel


@needs_worker
@pytest.mark.slow
def test_train_probe_from_segmentations(nem, logic, scene, tmp_path):
    import slicer
    import vtk

    from pantheon.synth import BTCV_LABELS
    names = BTCV_LABELS if isinstance(BTCV_LABELS, dict) else dict(enumerate(BTCV_LABELS))
    pairs = []
    for seed in (2, 3):
        node, ct, lab = _phantom_node(seed, oblique=False, shape=(32, 48, 48), name=f"case{seed}")
        arr, m = lab.to_slicer()
        # annotators label the probe's organs only (the phantom also has e.g. the oesophagus)
        keep = [v for v, n in names.items() if n.replace("_", " ") in lib.ORGAN_NAMES]
        arr = np.where(np.isin(arr, keep), arr, 0)
        labelNode = slicer.util.addVolumeFromArray(arr.astype(np.int16), ijkToRAS=m, name=f"labels{seed}",
                                                   nodeClassName="vtkMRMLLabelMapVolumeNode")
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        values = [int(v) for v in np.unique(arr) if v > 0]
        ids = vtk.vtkStringArray()
        for v in values:
            ids.InsertNextValue(str(names[v]))
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, seg, ids)
        assert seg.GetSegmentation().GetNumberOfSegments() == len(values)
        scene.RemoveNode(labelNode)
        pairs.append((node, seg))
    result = logic.trainProbe(pairs, device="cpu", epochs=5, holdout_fraction=0.5, outputFolder=str(tmp_path / "probe"))
    assert logic.lastProbePath and os.path.isfile(logic.lastProbePath)
    assert Path(logic.lastProbePath).parent == tmp_path / "probe"
    assert "mean_auroc_held_out" in result["scalars"]
    # the trained probe is used for organ maps
    out = logic.process("organs", pairs[0][0], organs=["liver"], probe=logic.lastProbePath, device="cpu", timeout=120)
    assert set(out.nodes) == {"liver"}


@needs_worker
@pytest.mark.slow
def test_self_test_runs_against_the_real_scene(nem, scene, monkeypatch):
    """NemesisSlicerTest with the demo weights; loadVolume is the one slicer.util call that needs
    the application, so it is replaced by the same reader Slicer uses (archetype storage node)."""
    import slicer

    monkeypatch.setattr(slicer.util, "loadVolume", archetype_load_volume)
    monkeypatch.setenv("PANTHEON_SELFTEST_REQUIRE_WORKER", "1")
    test = nem.NemesisSlicerTest()
    test.messages = []
    test.runTest()
    assert "Test passed" in test.messages and "Feature PCA map" in test.messages
