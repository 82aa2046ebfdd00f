"""PNIPredict module below the Qt layer.

No Slicer application runs here. PNIPredict.py is loaded in-process with the shared stand-ins for
what PyPI ``slicer-core`` lacks (Testing/slicer_standins.py: ``qt``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``); everything else is real: the
MRML scene, segmentations, markups, ``slicer.util``, the worker subprocess with the bundled demo
NeoNet weights (being retrained: nothing here depends on what they predict) and the scene bridge.
What stays untested here is the Qt widget itself (signals, layouts, dialogs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from slicer_standins import (
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
MODULE_DIR = REPO / "PNIPredict"
MODULE_FILE = MODULE_DIR / "PNIPredict.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "PNIPredict.ui"

lib = module_lib(MODULE_DIR, "PNIPredictLib")  # pure Python
FLIP = np.diag([-1.0, -1.0, 1.0])


# ============================================================================ pure helpers


def test_weights_params(tmp_path):
    assert lib.weights_params("demo") == lib.DEMO_CARDS
    assert lib.weights_params(None, components=("neogen",)) == {"neogen": "neonet-demo-neogen"}
    f = tmp_path / "pattennet.safetensors"
    f.write_bytes(b"x")
    w = lib.weights_params("file", {"pattennet": str(f), "neoseg": ""})
    assert w == {"neoseg": "neonet-demo-neoseg", "pattennet": str(f.resolve()), "neogen": "neonet-demo-neogen"}
    with pytest.raises(ValueError, match="does not exist"):
        lib.weights_params("file", {"neogen": str(tmp_path / "missing.safetensors")})
    with pytest.raises(ValueError, match="at least one"):
        lib.weights_params("file", {})
    with pytest.raises(ValueError, match="Unknown weights choice"):
        lib.weights_params("official")


def test_build_params():
    assert lib.build_params("predict", device="cpu") == {"neoseg": "neonet-demo-neoseg",
                                                          "pattennet": "neonet-demo-pattennet", "device": "cpu"}
    s = lib.build_params("synthesize", steps=3, seed=9, pni=0, n=2)
    assert s == {"neogen": "neonet-demo-neogen", "device": "auto", "steps": 3, "seed": 9, "pni": 0, "n": 2}
    assert lib.build_params("synthesize")["steps"] == lib.DEFAULT_STEPS
    for kw, word in (({"steps": 0}, "steps"), ({"steps": 2.5}, "whole"), ({"pni": 2}, "PNI class"),
                     ({"n": 99}, "patches"), ({"seed": True}, "seed")):
        with pytest.raises(ValueError, match=word):
            lib.build_params("synthesize", **kw)
    with pytest.raises(ValueError, match="device"):
        lib.build_params("predict", device="tpu")
    with pytest.raises(ValueError, match="Unknown action"):
        lib.build_params("segment")


def test_probability_and_caveat_texts():
    assert lib.probability_text(0.7312) == \
        "PNI probability 0.73 (demo weights, synthetic training data: not for clinical use)"
    assert lib.probability_text(0.2, demo=False) == "PNI probability 0.20 (research model: not for clinical use)"
    assert lib.probability_text(None) == "PNI probability: not available"
    result = {"scalars": {"pni_probability": 0.61, "tumour_volume_ml": 12.34},
              "notes": {"warning": "Demo weights trained on synthetic phantoms: not for clinical use.",
                        "weights": "neoseg=neonet-demo-neoseg", "pni_prediction": "positive",
                        "heatmap": "pni_attention is where the classifier looked", "tumour_source": "NeoSeg",
                        "research_only": "Research software.",
                        "crop_box": '{"centre_ras": [1, 2, 3], "size_mm": [128, 128, 96]}'}}
    assert lib.prediction_text(result).startswith("PNI probability 0.61 (demo weights")
    caveats = lib.caveats_text(result)
    for words in ("untuned 0.5 threshold", "Demo weights", "where the classifier looked", "NeoSeg, 12.3 ml",
                  "Research software."):
        assert words in caveats
    assert lib.crop_box_of(result)["size_mm"] == [128, 128, 96]
    assert lib.crop_box_text(lib.crop_box_of(result)) == "Crop box 128 x 128 x 96 mm at RAS (1.0, 2.0, 3.0)"
    assert lib.crop_box_of({"notes": {}}) is None and lib.crop_box_text(None) == ""
    assert "not for clinical use" in lib.prediction_text({"scalars": {"pni_probability": 0.1}, "notes": {}})


def test_probability_html_keeps_the_caveat_under_the_number():
    html = lib.probability_html(lib.probability_text(0.734))
    assert html.startswith("PNI probability 0.73<br><span")
    assert "(demo weights, synthetic training data: not for clinical use)</span>" in html
    assert lib.probability_html("PNI probability: not computed yet") == "PNI probability: not computed yet"
    assert lib.probability_html("a <b> (c & d)").startswith("a &lt;b&gt;<br>")


def test_mask_label_values():
    assert lib.tumour_label_values("Tumor 1") == {"Tumor 1": lib.TUMOUR_VALUE}
    with pytest.raises(ValueError, match="no name"):
        lib.tumour_label_values(" ")
    assert lib.synthesis_label_values("mass", "Liver") == {"Liver": 1, "mass": 2}
    auto = lib.synthesis_label_values()
    assert auto["liver"] == 1 and auto["tumour"] == 2 and auto["108369006"] == 2


# ============================================================================ the .ui file


def test_ui_has_every_widget_the_code_uses():
    widgets, root = ui_widgets(UI_FILE)
    used = used_ui_names(MODULE_FILE)
    assert {"applyButton", "synthesizeButton", "probabilityLabel", "tumourSegmentSelector"} <= used
    assert used - set(widgets) == set(), f"missing in the .ui: {sorted(used - set(widgets))}"
    classes = {n: w.get("class") for n, w in widgets.items()}
    assert classes["inputVolumeSelector"] == "qMRMLNodeComboBox"
    assert classes["tumourSegmentSelector"] == "qMRMLSegmentSelectorWidget"
    assert classes["synthesisSegmentationSelector"] == "qMRMLNodeComboBox"
    assert classes["probabilityLabel"] == "QLabel"
    style = widgets["probabilityLabel"].findtext("property[@name='styleSheet']/string")
    assert "font-size" in style and "bold" in style  # shown prominently
    for name in ("Inputs", "Weights and device", "PNI prediction", "Synthesize", "Progress and log"):
        assert has_section(widgets, name), name
    assert custom_widgets_declared(widgets, root)
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert {n for n, c in classes.items() if c.startswith("qMRML") and n != "PNIPredict"} <= scene_receivers


def test_ui_parameter_names_are_parameter_node_fields():
    widgets, _ = ui_widgets(UI_FILE)
    fields = parameter_node_fields(MODULE_FILE, "PNIPredictParameterNode")
    bound = bound_parameters(widgets)
    assert set(bound.values()) - set(fields) == set()
    assert {"inputVolume", "useTumourSegmentation", "synthesisSegmentation", "synthesisReference", "synthesisSteps",
            "synthesisSeed", "synthesisPNIPositive"} <= set(bound.values())
    assert fields["inputVolume"] == "vtkMRMLScalarVolumeNode"
    assert fields["tumourSegmentation"] == fields["synthesisSegmentation"] == "vtkMRMLSegmentationNode"


# ============================================================================ module against real MRML


@pytest.fixture(scope="module")
def pni():
    yield from slicer_module("PNIPredict", MODULE_DIR)


@pytest.fixture
def scene(pni, mrml_scene):
    return mrml_scene


def test_module_loads_without_worker_or_torch(pni):
    logic = pni.PNIPredictLogic()
    assert logic.moduleName == "PNIPredict" and logic._client is None  # nothing started at import
    assert "torch" not in {m.split(".")[0] for m in vars(pni).keys()}
    assert logic.weightsArgument("demo")["neogen"] == "neonet-demo-neogen"


@pytest.fixture(scope="module")
def logic(pni):
    yield from worker_logic(pni.PNIPredictLogic)


GRIDS = {  # make_liver_mri_phantom grid arguments: shape (K, J, I), spacing (si, sj, sk), orientation, oblique
    "oblique-LPI-aniso": dict(shape=(24, 64, 72), spacing=(4.0, 3.5, 6.0), orientation="LPI", oblique=True),
    "RAS-aniso": dict(shape=(28, 56, 70), spacing=(4.2, 4.0, 5.5), orientation="RAS", oblique=False),
    "permuted-ASL-oblique": dict(shape=(60, 30, 64), spacing=(4.0, 5.5, 5.0), orientation="ASL", oblique=8.0),
}


def _phantom(name, seed=3):
    import slicer

    from pantheon.synth.mri_phantom import make_liver_mri_phantom
    mri, lab, info = make_liver_mri_phantom(seed, **GRIDS[name])
    arr, m = mri.to_slicer()
    node = slicer.util.addVolumeFromArray(arr, ijkToRAS=m, name=name)
    return node, mri, lab, info


def _segmentation(lab, scene, keep=((1, "liver"), (2, "tumour"))):
    """A segmentation node made from a phantom label map (as an annotator's would be)."""
    import slicer
    import vtk

    arr, m = lab.to_slicer()
    values = [v for v, _ in keep]
    remap = np.zeros(arr.shape, np.uint8)
    for n, v in enumerate(values):
        remap[arr == v] = n + 1
    labelNode = slicer.util.addVolumeFromArray(remap, ijkToRAS=m, name="labels",
                                               nodeClassName="vtkMRMLLabelMapVolumeNode")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotation")
    ids = vtk.vtkStringArray()
    for _, name in keep:
        ids.InsertNextValue(name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, seg, ids)
    scene.RemoveNode(labelNode)
    return seg


_matrix = ijk_to_ras


def _same_grid(out, node):
    import slicer
    assert slicer.util.arrayFromVolume(out).shape == slicer.util.arrayFromVolume(node).shape
    np.testing.assert_allclose(_matrix(out), _matrix(node), atol=1e-5)


@needs_worker
@pytest.mark.slow
def test_predict_with_neoseg(pni, logic, scene):
    import slicer
    node, mri, _, _ = _phantom("oblique-LPI-aniso")
    before = slicer.util.arrayFromVolume(node).copy()
    task = logic.submit(node, device="cpu")
    assert os.path.isdir(task.temp_dir) and (os.stat(task.temp_dir).st_mode & 0o777) == 0o700
    seen = []
    res = logic.wait(task, progress=lambda f, m: seen.append(f), timeout=180)
    assert not os.path.exists(task.temp_dir) and seen and all(0.0 <= f <= 1.0 for f in seen)
    assert {"tumour", "pni_attention", "crop_box"} <= set(res.nodes)
    seg = res.nodes["tumour"]
    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetSegmentation().GetSegmentIdBySegmentName("tumour")
    heat = res.nodes["pni_attention"]
    assert heat.IsA("vtkMRMLScalarVolumeNode") and heat.GetAttribute("Pantheon.Kind") == "heatmap"
    _same_grid(heat, node)
    h = slicer.util.arrayFromVolume(heat)
    assert h.min() >= 0.0 and h.max() <= 1.0 and (h == 0).any()
    p = res.scalars["pni_probability"]
    assert 0.0 <= p <= 1.0 and res.scalars["tumour_volume_ml"] > 0
    assert float(seg.GetAttribute(pni.PROBABILITY_ATTRIBUTE)) == pytest.approx(p, abs=1e-5)
    assert lib.prediction_text(res) == lib.probability_text(p, demo=True)
    assert "research_only" in res.notes and res.notes["tumour_source"] == "NeoSeg"
    roi = res.nodes["crop_box"]
    assert roi.IsA("vtkMRMLMarkupsROINode")
    from pantheon import slicerbridge as bridge
    np.testing.assert_allclose(bridge.roi_node_corners(roi), bridge.roi_corners_ras(lib.crop_box_of(res)), atol=1e-4)
    assert pni.heatInsideROI(heat, roi)  # the ROI covers every voxel the classifier attended to
    assert "crop_box" in res.tables
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)  # input unchanged


@needs_worker
@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.slow
def test_predict_with_tumour_segmentation_roi_on_crop(pni, logic, scene, grid, tmp_path):
    """The ROI's 8 corners are the TLCR crop's corners computed from the image geometry."""
    import slicer

    from pantheon import slicerbridge as bridge
    from pantheon.models.neonet.tlcr import tlcr_box
    node, mri, lab, info = _phantom(grid)
    seg = _segmentation(lab, scene)
    tumourId = seg.GetSegmentation().GetSegmentIdBySegmentName("tumour")
    before = slicer.util.arrayFromVolume(node).copy()
    res = logic.process(node, seg, tumourId, device="cpu", timeout=120)
    assert res.notes["tumour_source"] == "supplied tumour mask"
    assert 0.0 <= res.scalars["pni_probability"] <= 1.0
    assert res.scalars["tumour_volume_ml"] == pytest.approx(info["tumour_volume_ml"], rel=1e-3)
    _same_grid(res.nodes["pni_attention"], node)
    box = lib.crop_box_of(res)
    grid_box = tlcr_box(bridge.volume_from_node(node).with_array(lab.array), size=box["shape_kji"][::-1],
                        spacing=box["spacing_mm"], label=2)
    np.testing.assert_allclose(bridge.roi_node_corners(res.nodes["crop_box"]), grid_box.corners_lps() @ FLIP.T,
                               atol=1e-4)
    assert pni.heatInsideROI(res.nodes["pni_attention"], res.nodes["crop_box"])
    # the tumour segment of the result is the user's tumour
    from pantheon.io import read_volume
    out = read_volume(bridge.export_segmentation(res.nodes["tumour"], node, tmp_path / "out.nrrd", {"tumour": 1}))
    np.testing.assert_array_equal(out.to_slicer()[0] > 0, lab.to_slicer()[0] == 2)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    if grid != "oblique-LPI-aniso":
        return
    # re-run (NeoSeg this time): the same nodes are updated, nothing is added
    count = scene.GetNumberOfNodes()
    again = logic.process(node, device="cpu", timeout=120)
    for name in ("tumour", "pni_attention", "crop_box"):
        assert again.nodes[name].GetID() == res.nodes[name].GetID(), name
    assert again.notes["tumour_source"] == "NeoSeg"
    assert scene.GetNumberOfNodes() == count
    sh = scene.GetSubjectHierarchyNode()
    folder = {sh.GetItemParent(sh.GetItemByDataNode(n)) for n in again.nodes.values()}
    assert len(folder) == 1 and folder.pop() != 0


@needs_worker
@pytest.mark.slow
def test_segment_choice_and_input_errors(pni, logic, scene):
    import slicer
    node, mri, lab, _ = _phantom("RAS-aniso")
    seg = _segmentation(lab, scene)
    with pytest.raises(ValueError, match="Choose the tumour segment"):
        logic.submit(node, seg, None, device="cpu")
    with pytest.raises(ValueError, match="not in"):
        logic.submit(node, seg, "no-such-segment", device="cpu")
    seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("liver")).SetName("tumour")
    with pytest.raises(ValueError, match="Several segments"):
        logic.submit(node, seg, seg.GetSegmentation().GetNthSegmentID(1), device="cpu")
    with pytest.raises(ValueError, match="Choose an input MRI"):
        logic.submit(None)
    ct = slicer.util.addVolumeFromArray(lab.to_slicer()[0].astype(np.float32) * 0 - 1000.0 +
                                        np.random.default_rng(0).normal(0, 50, lab.shape).astype(np.float32),
                                        ijkToRAS=_matrix(node), name="ct")
    with pytest.raises(lib.TaskError) as err:
        logic.process(ct, device="cpu", timeout=120)
    assert err.value.kind == "input" and "CT" in err.value.message
    from pantheon import slicerbridge as bridge
    assert bridge.outputs_of(ct) == []  # a failed job changes nothing in the scene


@needs_worker
@pytest.mark.slow
def test_synthesize_puts_a_patch_on_the_mask_grid(pni, logic, scene):
    import slicer
    node, mri, lab, _ = _phantom("permuted-ASL-oblique")
    seg = _segmentation(lab, scene)
    res = logic.synthesize(seg, node, device="cpu", steps=2, seed=5, timeout=240)
    patch = res.nodes["synthetic_mri_1"]
    assert patch.IsA("vtkMRMLScalarVolumeNode") and patch.GetAttribute("Pantheon.Kind") == "volume"
    _same_grid(patch, node)
    a = slicer.util.arrayFromVolume(patch)
    assert np.isfinite(a).all() and (a != 0).any() and (a == 0).any()
    assert res.scalars["steps"] == 2 and res.scalars["seed"] == 5
    assert res.nodes["crop_box"].IsA("vtkMRMLMarkupsROINode")
    # the patch is inside its crop box ROI
    assert pni.heatInsideROI(patch, res.nodes["crop_box"])
    # same seed: same patch, same node; a segmentation without liver/tumour segments is refused
    first = a.copy()
    again = logic.synthesize(seg, node, device="cpu", steps=2, seed=5, timeout=240)
    assert again.nodes["synthetic_mri_1"].GetID() == patch.GetID()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(patch), first)
    other = _segmentation(lab, scene, keep=((3, "duct"),))
    with pytest.raises(ValueError, match="No liver or tumour segment"):
        logic.submitSynthesis(other, node, device="cpu", steps=2)
    liver_only = _segmentation(lab, scene, keep=((1, "liver"),))
    with pytest.raises(ValueError, match="needs a tumour segment"):
        logic.submitSynthesis(liver_only, node, device="cpu", steps=2)
    with pytest.raises(ValueError, match="reference volume"):
        logic.submitSynthesis(seg, None)


@needs_worker
@pytest.mark.slow
def test_cancel_synthesis_leaves_no_files(pni, logic, scene):
    node, mri, lab, _ = _phantom("RAS-aniso")
    seg = _segmentation(lab, scene)
    task = logic.submitSynthesis(seg, node, device="cpu", steps=1000)
    task.cancel()
    with pytest.raises(lib.TaskError) as err:
        logic.wait(task, timeout=120)
    assert err.value.kind == "cancelled" and task.state == "cancelled"
    assert not os.path.exists(task.temp_dir)
    assert logic.client.ping()  # the worker survives a cancel


@needs_worker
@pytest.mark.slow
def test_self_test_runs_against_the_real_scene(pni, scene, monkeypatch):
    """PNIPredictTest with the demo weights; loadVolume (which needs the application) is replaced
    by the reader Slicer uses (archetype storage node)."""
    import slicer
    monkeypatch.setattr(slicer.util, "loadVolume", archetype_load_volume)
    monkeypatch.setenv("PANTHEON_SELFTEST_REQUIRE_WORKER", "1")
    test = pni.PNIPredictTest()
    test.messages = []
    test.runTest()
    assert "Test passed" in test.messages and "Synthesizing a patch (2 DDIM steps)" in test.messages
