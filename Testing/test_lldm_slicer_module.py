"""LiverSynthesis module below the Qt layer.

No Slicer application runs here. LiverSynthesis.py is loaded in-process with the shared stand-ins
for what PyPI ``slicer-core`` lacks (Testing/slicer_standins.py); everything else is real: the MRML
scene, segmentations, markups, transforms, ``slicer.util``, the worker subprocess with the bundled
demo 3D-LLDM, and the scene bridge. The pure helpers (LiverSynthesisLib) are tested in plain Python,
against the core where both decide the same thing (segment names, limits, defaults). The Qt panel
itself is tested in Testing/test_panel_lldm.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
MODULE_DIR = REPO / "LiverSynthesis"
MODULE_FILE = MODULE_DIR / "LiverSynthesis.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LiverSynthesis.ui"

lib = module_lib(MODULE_DIR, "LiverSynthesisLib")  # pure Python
FLIP = np.array([-1.0, -1.0, 1.0])


# ============================================================================ segment names


@pytest.mark.parametrize("name, value", [
    ("liver", 1), ("Liver", 1), ("LIVER", 1), ("liver_1", 1), ("Liver (whole)", 1), ("liver parenchyma", 1),
    ("portal vein", 2), ("Portal vein", 2), ("portal_vein", 2), ("PortalVein", 2), ("portal veins", 2), ("PV", 2),
    ("hepatic vein", 3), ("hepatic veins", 3), ("Hepatic_Veins", 3), ("right hepatic vein", 3), ("HV", 3),
    ("HCC", 4), ("hcc_2", 4), ("HCC #1", 4), ("HCC1", 4), ("tumour", 4), ("Tumor 3", 4), ("tumours", 4),
    ("hepatocellular carcinoma", 4), ("lesion", 4), ("nodule", 4),
    ("spleen", None), ("bile duct", None), ("hepatic artery", None), ("inferior vena cava", None), ("", None),
    ("Segment_1", None), ("veins", None),
])
def test_segment_names_are_matched_tolerantly(name, value):
    assert lib.segment_label(name) == value


def test_segment_names_agree_with_the_core():
    """Where the core reads a named label map (a .seg.nrrd), it gives every name the panel knows the same label."""
    from pantheon.io.volume import Volume
    from pantheon.models.lldm.synthesis import lldm_labels
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[1:3, 1:3, 1:3] = 1
    arr[0, 0, 0] = 2
    for name in ("portal vein", "Portal_Vein", "portal veins", "hepatic vein", "hepatic veins", "Hepatic Veins", "HCC",
                 "hepatocellular carcinoma", "tumour", "tumor", "lesion", "liver lesion", "neoplasm", "mass", "PV",
                 "HV"):
        vol = Volume(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), metadata={"segments": {1: "liver", 2: name}})
        assert int(lldm_labels(vol)[0, 0, 0]) == lib.segment_label(name), name


def test_terminology_codes_name_a_segment_its_name_does_not():
    from pantheon.slicerbridge.terms import terminology_string
    liver = terminology_string(("SCT", "10200004", "Liver"))
    neoplasm = terminology_string(("SCT", "108369006", "Neoplasm"))
    assert lib.segment_label("Segment_1", liver) == lib.LIVER
    assert lib.segment_label("Segment_2", neoplasm) == lib.HCC
    assert lib.segment_label("portal vein", liver) == lib.PORTAL_VEIN  # the name decides first
    assert lib.segment_label("Segment_3", terminology_string(("SCT", "78961009", "Spleen"))) is None


def test_plan_paints_the_liver_first_and_lists_the_rest():
    plan = lib.plan_labels([("h2", "HCC 2", None), ("l", "Liver", None), ("s", "spleen", None),
                            ("p", "Portal vein", None), ("h1", "tumour_1", None)], "annotation")
    assert plan.order == ["l", "p", "h2", "h1"]  # liver under everything, HCCs over everything
    assert plan.values == {"l": 1, "p": 2, "h2": 4, "h1": 4} and plan.ignored == ["spleen"]
    assert lib.plan_text(plan) == ("Segments used: 'Liver' as liver; 'Portal vein' as portal vein; 'HCC 2', 'tumour_1' "
                                   "as HCC. No hepatic veins. Not used: 'spleen'.")
    only = lib.plan_labels([("l", "liver", None)])
    assert lib.plan_text(only) == "Segments used: 'liver' as liver. No portal vein, hepatic veins, HCC."


def test_no_liver_is_refused_in_one_sentence():
    with pytest.raises(ValueError) as err:
        lib.plan_labels([("a", "HCC", None), ("b", "spleen", None)], "tumours")
    assert str(err.value) == ("No liver segment in 'tumours' (segments: 'HCC', 'spleen'); 3D-LLDM synthesises the MRI "
                              "around a liver, so name the liver's segment 'liver'.")
    with pytest.raises(ValueError, match=r"\(segments: none\)"):
        lib.plan_labels([], "empty")


# ============================================================================ edits and parameters


def test_hcc_numbers():
    assert lib.parse_hcc_numbers("1, 3") == lib.parse_hcc_numbers(" 1 3 ") == lib.parse_hcc_numbers("1;3,1") == [1, 3]
    assert lib.parse_hcc_numbers("") == lib.parse_hcc_numbers(None) == []
    for bad in ("0", "-1", "1.5", "first", "1, x"):
        with pytest.raises(ValueError, match="whole numbers from 1"):
            lib.parse_hcc_numbers(bad)


def test_edit_params_and_their_words():
    assert lib.edit_params() == {}
    e = lib.edit_params("2, 1", 5, [[-10.0, 20.0, 30.0], (1, 2, 3)], 15)
    assert e == {"remove_hcc": [2, 1], "grow_hcc_mm": 5.0,
                 "add_hcc": [[-10.0, 20.0, 30.0, 15.0], [1.0, 2.0, 3.0, 15.0]]}
    assert lib.edits_text(e) == "Edits: removed HCC 2, 1; every other HCC grown by 5 mm; 2 new HCCs of 15 mm."
    assert lib.edits_text(lib.edit_params(grow_mm=-2.5)) == "Edits: every HCC shrunk by 2.5 mm."
    assert lib.edits_text({}) == ""
    with pytest.raises(ValueError, match=r"The HCC growth must be between -100 and 100 mm, got 150 mm\."):
        lib.edit_params(grow_mm=150)
    with pytest.raises(ValueError, match=r"diameter must be between 2 and 200 mm, got 1 mm"):
        lib.edit_params(add_lps=[[0, 0, 0]], add_diameter_mm=1)
    with pytest.raises(ValueError, match="three coordinates"):
        lib.edit_params(add_lps=[[0, 0]])
    assert lib.edit_params(add_diameter_mm=1) == {}  # a diameter without points adds nothing


def test_which_labels_steer_and_their_words():
    """The panel's names are the core's (``check_use`` accepts them); all checked sends nothing."""
    from pantheon.models.lldm.synthesis import check_use
    assert lib.steer_params() == {} and lib.steer_text({}) == ""
    vessels_free = lib.steer_params(portal_vein=False, hepatic_vein=False)
    assert vessels_free == {"use": ["liver", "hcc"]} and check_use(vessels_free["use"]) == ("liver", "hcc")
    assert lib.steer_text(vessels_free) == ("Steered by liver, HCC; the model drew the portal vein and hepatic "
                                            "veins itself.")
    assert lib.steer_text(lib.steer_params(hcc=False)) == ("Steered by liver, portal vein, hepatic veins; the HCC "
                                                           "was synthesised as liver.")
    assert lib.build_params("synthesize", steer=vessels_free)["use"] == ["liver", "hcc"]
    assert "use" not in lib.build_params("synthesize", steer={})
    with pytest.raises(ValueError, match="The labels that steer must be the liver and any of"):
        lib.build_params("synthesize", steer={"use": ["hcc"]})


def test_core_limits_are_the_panels():
    """The worker refuses what the panel refuses, at the same limits (the panel says it first)."""
    from pantheon.errors import InputError
    from pantheon.io.volume import Volume
    from pantheon.models.foscu import tasks as foscu_tasks
    from pantheon.models.lldm.edits import add_hcc, grow_hcc
    vol = Volume(np.ones((8, 8, 8), np.uint8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    labels = vol.array.copy()
    labels[3:5, 3:5, 3:5] = 4
    grow_hcc(vol, labels, lib.MAX_GROW_MM)
    with pytest.raises(InputError):
        grow_hcc(vol, labels, lib.MAX_GROW_MM + 1)
    lo, hi = lib.HCC_DIAMETER_RANGE
    add_hcc(vol, labels, (4.0, 4.0, 4.0), lo)
    with pytest.raises(InputError):
        add_hcc(vol, labels, (4.0, 4.0, 4.0), hi + 1)
    assert lib.MAX_PAIRS == foscu_tasks.MAX_PAIRS


def test_weights_params(tmp_path):
    assert lib.weights_params("demo") == lib.DEMO_CARDS == {"lldm": "lldm-demo", "labelgen": "foscu-demo-labelgen"}
    f = tmp_path / "labelgen.safetensors"
    f.write_bytes(b"x")
    assert lib.weights_params("file", {"labelgen": str(f), "lldm": " "}) == {"lldm": "lldm-demo",
                                                                             "labelgen": str(f.resolve())}
    with pytest.raises(ValueError, match=r"The 3D-LLDM weights file .*missing.safetensors does not exist\."):
        lib.weights_params("file", {"lldm": str(tmp_path / "missing.safetensors")})
    with pytest.raises(ValueError, match="or use the demo weights"):
        lib.weights_params("file", {})
    with pytest.raises(ValueError, match="Unknown weights choice"):
        lib.weights_params("official")
    assert lib.weights_warning("demo", "/w/lldm.safetensors") == lib.weights_warning("file") == lib.DEMO_WARNING
    assert lib.weights_warning("file", "/w/lldm.safetensors") == lib.FILE_WARNING
    assert "never for diagnosis" in lib.DEMO_WARNING and "never for diagnosis" in lib.FILE_WARNING


def test_build_params(tmp_path):
    s = lib.build_params("synthesize", steps=3, seed=9, device="cpu")
    assert s == {"device": "cpu", "seed": 9, "weights": "lldm-demo", "steps": 3}
    s = lib.build_params("synthesize", weights={"lldm": "/w/lldm.safetensors", "labelgen": "x"}, scale=1.5,
                         edits=lib.edit_params("1", 2))
    assert s == {"device": "auto", "seed": 0, "weights": "/w/lldm.safetensors", "steps": lib.DEFAULT_STEPS,
                 "scale": 1.5, "remove_hcc": [1], "grow_hcc_mm": 2.0}
    out = tmp_path / "pairs"
    g = lib.build_params("generate", output=str(out), n=3, seed=4, label_steps=5, image_steps=6)
    assert g == {"device": "auto", "seed": 4, "output": str(out), "n": 3, "label_steps": 5, "image_steps": 6,
                 "labelgen": "foscu-demo-labelgen", "lldm": "lldm-demo"}
    assert not out.exists()  # checking a folder creates nothing
    for action, kw, words in (
            ("synthesize", {"steps": 0}, "DDIM steps must be between 1 and 1000, got 0."),
            ("synthesize", {"steps": 2.5}, "DDIM steps must be a whole number, got 2.5."),
            ("synthesize", {"seed": -1}, "The seed must be between 0 and 2147483647, got -1."),
            ("synthesize", {"seed": True}, "The seed must be a whole number, got True."),
            ("synthesize", {"scale": 11}, "The ControlNet scale must be between 0 and 10, got 11."),
            ("synthesize", {"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
            ("generate", {"output": str(out), "n": 0}, "The number of pairs must be between 1 and 1000, got 0."),
            ("generate", {"output": str(out), "n": 1001}, "The number of pairs must be between 1 and 1000, got 1001."),
            ("generate", {"output": ""}, "Choose the folder the new pairs are written into."),
            ("segment", {}, "Unknown action 'segment'; use one of synthesize, generate.")):
        with pytest.raises(ValueError) as err:
            lib.build_params(action, **kw)
        assert str(err.value).startswith(words), (action, kw, str(err.value))


def test_output_folder_checks(tmp_path, monkeypatch):
    assert lib.check_output_folder(tmp_path) == str(tmp_path)
    assert lib.check_output_folder(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lib.check_output_folder("~/pairs") == str(tmp_path / "pairs")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"file.txt is a file, not a folder; choose a folder for the pairs\."):
        lib.check_output_folder(f)
    with pytest.raises(ValueError, match=r"Pantheon cannot write into .*file.txt; choose another folder"):
        lib.check_output_folder(f / "pairs")
    with pytest.raises(ValueError, match="Choose the folder"):
        lib.check_output_folder("  ")


# ============================================================================ results


def test_result_texts():
    result = {"scalars": {"liver_ml": 1436.2, "portal_vein_ml": 17.64, "hepatic_vein_ml": 16.1, "hcc_ml": 7.61,
                          "steps": 2.0}}
    assert lib.volumes_text(result) == ("Conditioned on: liver 1436 ml, portal vein 17.6 ml, hepatic veins 16.1 ml, "
                                        "HCC 7.6 ml.")
    assert lib.volumes_text({"scalars": {}}) == ""
    summary = {"folder": "/d/pairs", "pairs": 5, "made_now": 3, "csv": "/d/pairs/cases.csv",
               "index": "/d/pairs/index.html"}
    assert lib.generation_text(summary) == ("Made 3 new pairs (5 in /d/pairs, 2 kept from before): images/, labels/, "
                                            "cases.csv, index.html.")
    assert lib.generation_text(dict(summary, pairs=1, made_now=1)) == ("Made 1 new pair (1 in /d/pairs): images/, "
                                                                        "labels/, cases.csv, index.html.")
    assert lib.generation_text(dict(summary, anatomy_flagged=2)).endswith(
        "cases.csv, index.html. 2 pairs failed the anatomy check on every draw (see anatomy_problem in cases.csv).")
    assert lib.generation_text(dict(summary, made_now=0)).startswith(
        "Made no new pair: /d/pairs already holds pairs 1 to 5 (a rerun only adds missing pairs)")
    assert lib.summary_of({"summary": summary}) == summary
    with pytest.raises(ValueError, match="no summary"):
        lib.summary_of({"outputs": {}})


def test_pair_files(tmp_path):
    summary = {"folder": str(tmp_path), "pairs": 2, "csv": str(tmp_path / "cases.csv")}
    with pytest.raises(ValueError, match=r"cases.csv cannot be read"):
        lib.pair_files(summary)
    (tmp_path / "cases.csv").write_text("image,label,case_id,seed\nimages/pair-00000.nii.gz,labels/pair-00000.nii.gz,"
                                        "pair-00000,3\n")
    with pytest.raises(ValueError, match=r"pair-00000.nii.gz is missing from the folder of pairs"):
        lib.pair_files(summary)
    for rel in ("images/pair-00000.nii.gz", "labels/pair-00000.nii.gz"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert lib.pair_files(summary) == ("pair-00000", str(tmp_path / "images/pair-00000.nii.gz"),
                                       str(tmp_path / "labels/pair-00000.nii.gz"))
    (tmp_path / "labels/pair-00000.seg.nrrd").write_bytes(b"x")  # names and colours: preferred
    assert lib.pair_files(summary)[2] == str(tmp_path / "labels/pair-00000.seg.nrrd")
    with pytest.raises(ValueError, match="lists 1 pair; there is no pair 2"):
        lib.pair_files(summary, 1)


def test_lib_imports_nothing_heavy():
    """LiverSynthesisLib runs in the Slicer process and in plain Python: no torch, MONAI, slicer, qt or vtk at
    import (numpy comes with the scene bridge, as Slicer's Python has it)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import LiverSynthesisLib; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'monai', 'slicer', 'qt', 'ctk', 'vtk', 'vtkmodules', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, check=True,
                         cwd=str(REPO))
    assert out.stdout.strip() == "[]"


# ============================================================================ the .ui file and defaults


def test_ui_has_every_widget_the_code_uses():
    widgets, root = ui_widgets(UI_FILE)
    used = used_ui_names(MODULE_FILE)
    assert {"synthesizeButton", "generateButton", "segmentsLabel", "warningLabel", "openIndexButton"} <= used
    assert used - set(widgets) == set(), f"missing in the .ui: {sorted(used - set(widgets))}"
    classes = {n: w.get("class") for n, w in widgets.items()}
    assert classes["segmentationSelector"] == classes["referenceVolumeSelector"] == "qMRMLNodeComboBox"
    assert classes["addHCCPlaceWidget"] == "qSlicerMarkupsPlaceWidget"
    assert classes["pairsFolderPathLineEdit"] == "ctkPathLineEdit"
    filters = widgets["pairsFolderPathLineEdit"].findtext("property[@name='filters']/set")
    assert filters == "ctkPathLineEdit::Dirs"  # a folder, as the other modules choose folders
    style = widgets["warningLabel"].findtext("property[@name='styleSheet']/string")
    assert "bold" in style and "color" in style  # the demo caveat stands out
    for name in ("Inputs", "Weights and device", "Synthesize MRI", "Generate pairs (FOSCU)", "Progress and log"):
        assert has_section(widgets, name), name
    assert custom_widgets_declared(widgets, root)
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert {n for n, c in classes.items() if c.startswith(("qMRML", "qSlicer")) and n != "LiverSynthesis"} \
        <= scene_receivers


def test_ui_parameter_names_are_parameter_node_fields():
    widgets, _ = ui_widgets(UI_FILE)
    fields = parameter_node_fields(MODULE_FILE, "LiverSynthesisParameterNode")
    bound = bound_parameters(widgets)
    assert set(bound.values()) - set(fields) == set()
    assert {"segmentation", "referenceVolume", "synthesisSteps", "synthesisSeed", "useControlNetScale",
            "controlNetScale", "removeHCC", "growHCCmm", "addHCCPoints", "addHCCDiameter", "pairsCount", "pairsSeed",
            "pairsLabelSteps", "pairsImageSteps"} <= set(bound.values())
    assert fields["segmentation"] == "vtkMRMLSegmentationNode"
    assert fields["addHCCPoints"] == "vtkMRMLMarkupsFiducialNode"
    # synced in code (PanelWidgetMixin.connectSettings), not bound
    assert {"weightsChoice", "lldmPath", "labelgenPath", "pairsFolder", "device", "workerPython"} <= set(fields)


def test_panel_offers_the_cores_defaults():
    import re

    from pantheon.defaults import FOSCU_DEMO_LABELGEN_CARD as DEMO_LABELGEN
    from pantheon.models.lldm import tasks
    from pantheon.models.lldm.synthesis import DEMO_CARD
    from pantheon.plugins import get_plugin
    assert get_plugin("lldm").slicer_module == "LiverSynthesis"
    assert lib.DEMO_CARDS == {"lldm": DEMO_CARD, "labelgen": DEMO_LABELGEN}
    assert lib.DEFAULT_STEPS == tasks.NEOGEN_DDIM_STEPS and lib.MAX_STEPS == tasks.NEOGEN_MAX_DDIM_STEPS
    ui = UI_FILE.read_text()
    for spin in ("synthesisStepsSpinBox", "pairsLabelStepsSpinBox", "pairsImageStepsSpinBox"):
        found = re.search(rf'name="{spin}">.*?<property name="value">\s*<number>(\d+)</number>', ui, re.S)
        assert int(found.group(1)) == lib.DEFAULT_STEPS, spin
    assert set(lib.ACTIONS.values()) <= set(get_plugin("lldm").tasks()) | set(get_plugin("foscu").tasks())


# ============================================================================ module against real MRML


@pytest.fixture(scope="module")
def mod():
    yield from slicer_module("LiverSynthesis", MODULE_DIR)


@pytest.fixture
def scene(mod, mrml_scene):
    return mrml_scene


def test_module_loads_without_worker_or_torch(mod):
    logic = mod.LiverSynthesisLogic()
    assert logic.moduleName == "LiverSynthesis" and logic._client is None  # nothing started at import
    assert "torch" not in {m.split(".")[0] for m in vars(mod).keys()}
    assert logic.weightsArgument("demo")["lldm"] == "lldm-demo"


@pytest.fixture(scope="module")
def phantom():
    """An oblique HBP liver MRI with two HCCs and its 3D-LLDM labels (pantheon Volumes)."""
    from pantheon.synth.hcc_mri_phantom import make_hcc_mri_phantom
    mri, labels, info = make_hcc_mri_phantom(7, shape=(24, 64, 72), orientation="PIL", oblique=12.0, n_hcc=2)
    return mri, labels


def _volume(vol, name):
    import slicer
    arr, m = vol.to_slicer()
    return slicer.util.addVolumeFromArray(arr, ijkToRAS=m, name=name)


def _segmentation(labels, scene, segments=(("Liver", (1, 4)), ("portal vein", (2,)), ("Hepatic_Veins", (3,)),
                                            ("HCC", (4,))), extra=("spleen",), name="annotation", reference=None):
    """A segmentation as an annotator draws one: each segment the union of some phantom labels
    (by default the liver segment includes the HCCs, drawn over it), plus empty ``extra`` segments."""
    import slicer
    import vtk

    arr, m = labels.to_slicer()
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    for segment_name, values in segments:
        node = slicer.util.addVolumeFromArray(np.isin(arr, values).astype(np.uint8), ijkToRAS=m, name="tmp",
                                              nodeClassName="vtkMRMLLabelMapVolumeNode")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_name)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(node, seg, ids)
        scene.RemoveNode(node)
    for segment_name in extra:
        seg.GetSegmentation().AddEmptySegment(segment_name, segment_name)
    if reference is not None:
        seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return seg


def test_export_lands_on_the_reference_grid_with_hccs_over_the_liver(mod, scene, phantom, tmp_path):
    import slicer

    from pantheon.io import read_volume
    mri, labels = phantom
    node = _volume(mri, "oblique MRI")
    seg = _segmentation(labels, scene)
    logic = mod.LiverSynthesisLogic()
    path, plan = logic.exportLabels(seg, node, tmp_path / "labels.nrrd")
    out = read_volume(path)
    arr, m = out.to_slicer()
    np.testing.assert_array_equal(arr, labels.to_slicer()[0])  # every voxel, HCCs kept over the liver segment
    np.testing.assert_allclose(m, ijk_to_ras(node), atol=1e-6)
    assert plan.ignored == ["spleen"] and sorted(plan.values.values()) == [1, 2, 3, 4]
    # onto another grid (coarser, same field of view): the map is on that grid
    from pantheon.io.resample import resample_like
    from pantheon.io.volume import Volume
    half = Volume(np.zeros((12, 32, 36), np.float32), tuple(2 * s for s in mri.spacing),
                  tuple(mri.ijk_to_world(np.array([[0.5, 0.5, 0.5]]))[0]), mri.direction)
    other = _volume(half, "coarse")
    path, _ = logic.exportLabels(seg, other, tmp_path / "coarse.nrrd")
    small = read_volume(path)
    assert small.to_slicer()[0].shape == (12, 32, 36)
    np.testing.assert_allclose(small.to_slicer()[1], ijk_to_ras(other), atol=1e-6)
    want = resample_like(labels, half, "nearest").to_slicer()[0]
    assert np.mean(small.to_slicer()[0] == want) > 0.97  # Slicer's segment resampling vs nearest neighbour
    # the scene is as it was: no label map, colour table or other helper left behind
    assert not slicer.util.getNodesByClass("vtkMRMLLabelMapVolumeNode")
    with pytest.raises(ValueError, match="Choose the reference volume"):
        logic.exportLabels(seg, None, tmp_path / "x.nrrd")


def test_default_reference_and_the_first_usable_segmentation(mod, scene, phantom):
    mri, labels = phantom
    node = _volume(mri, "MRI")
    logic = mod.LiverSynthesisLogic()
    tumours = _segmentation(labels, scene, segments=(("HCC", (4,)),), extra=(), name="tumours")
    assert logic.firstUsableSegmentation() is None  # no liver: not offered
    assert logic.defaultReference(tumours) is None
    seg = _segmentation(labels, scene, reference=node)
    assert logic.defaultReference(seg) is node
    assert logic.firstUsableSegmentation() is seg
    seg.SetAttribute("Pantheon.Output", "labels")  # one of Pantheon's outputs: not picked for the user
    assert logic.firstUsableSegmentation() is None


def test_points_are_taken_in_the_reference_volumes_frame(mod, scene, phantom):
    import slicer
    import vtk
    mri, _ = phantom
    node = _volume(mri, "MRI")
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "new HCC")
    points.AddControlPointWorld([10.0, -20.0, 30.0])
    points.AddControlPointWorld([1.0, 2.0, 3.0])
    points.SetNthControlPointPositionMissing(1)  # a skipped point: not a centre
    logic = mod.LiverSynthesisLogic()
    assert logic.pointsLPS(points, node) == [[-10.0, 20.0, 30.0]]
    # the volume moved by a linear transform: the point in its own (IJKToRAS) frame
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    for r, row in enumerate([[0, -1, 0, 5], [1, 0, 0, -7], [0, 0, 1, 11]]):
        for c, v in enumerate(row):
            m.SetElement(r, c, v)
    transform.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(transform.GetID())
    local = np.linalg.inv(slicer.util.arrayFromVTKMatrix(m)) @ [10.0, -20.0, 30.0, 1.0]
    np.testing.assert_allclose(logic.pointsLPS(points, node), [local[:3] * FLIP], atol=1e-9)
    assert logic.pointsLPS(None, node) == []
    params = logic.editParams("", 0.0, points, 25.0, node)
    np.testing.assert_allclose(params["add_hcc"], [list(local[:3] * FLIP) + [25.0]], atol=1e-9)


# ============================================================================ with the worker


@pytest.fixture(scope="module")
def logic(mod):
    yield from worker_logic(mod.LiverSynthesisLogic)


def _outputs(scene):
    return {n.GetName(): n for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
            if n.GetAttribute("Pantheon.Output") and not n.IsA("vtkMRMLDisplayNode")}


@needs_worker
@pytest.mark.slow
def test_synthesize_edit_and_rerun(mod, logic, scene, phantom):
    """Blocking logic: the volume on the reference voxels, the edited labels only with edits, the same
    nodes on a rerun, a failed job changes nothing; the user's segmentation is never written."""
    import slicer

    from pantheon import slicerbridge as bridge
    from pantheon.models.lldm.edits import apply_edits
    mri, labels = phantom
    node = _volume(mri, "MRI")
    seg = _segmentation(labels, scene, reference=node)
    before = bridge.segment_masks(seg, node, [seg.GetSegmentation().GetNthSegmentID(i) for i in range(4)])
    task = logic.submitSynthesis(seg, node, device="cpu", steps=2, seed=3)
    assert os.path.isdir(task.temp_dir) and (os.stat(task.temp_dir).st_mode & 0o777) == 0o700
    seen = []
    first = logic.wait(task, progress=lambda f, m: seen.append(f), timeout=240)
    assert not os.path.exists(task.temp_dir) and seen and all(0.0 <= f <= 1.0 for f in seen)
    assert set(first.nodes) == {"synthetic_mri"} and set(_outputs(scene)) == {"annotation synthetic MRI"}
    volume = first.nodes["synthetic_mri"]
    assert volume.GetAttribute("Pantheon.Kind") == "volume" and volume.GetParentTransformNode() is None
    assert slicer.util.arrayFromVolume(volume).shape == slicer.util.arrayFromVolume(node).shape
    np.testing.assert_allclose(ijk_to_ras(volume), ijk_to_ras(node), atol=1e-6)
    assert first.scalars["steps"] == 2 and first.scalars["seed"] == 3
    hcc_ml = (labels.array == 4).sum() * np.prod(labels.spacing) / 1000
    assert first.scalars["hcc_ml"] == pytest.approx(hcc_ml, rel=1e-6)
    assert "Segments used: 'Liver' as liver;" in "\n".join(logic.logLines)
    assert logic.lastSynthesisText.startswith("annotation synthetic MRI: on the grid of MRI. Conditioned on:")

    # edits: the largest HCC removed, a new one at a point in the liver; the same volume node
    from scipy import ndimage
    lab_kji, m = labels.to_slicer()
    depth = ndimage.distance_transform_edt(lab_kji == 1)
    k, j, i = np.unravel_index(np.argmax(depth), depth.shape)
    ras = (m @ [i, j, k, 1.0])[:3]
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "new HCC")
    points.AddControlPointWorld(list(ras))
    edits = logic.editParams("1", 0.0, points, 18.0, node)
    second = logic.synthesize(seg, node, device="cpu", steps=2, seed=3, edits=edits, timeout=240)
    assert second.nodes["synthetic_mri"].GetID() == volume.GetID()
    edited = second.nodes["labels"]
    assert edited.GetName() == "annotation edited labels" and edited.IsA("vtkMRMLSegmentationNode")
    got = np.zeros(lab_kji.shape, np.uint8)
    for name, value in (("liver", 1), ("portal_vein", 2), ("hepatic_vein", 3), ("hcc", 4)):
        sid = edited.GetSegmentation().GetSegmentIdBySegmentName(name)
        got[bridge.segment_masks(edited, node, [sid])[sid]] = value
    grid = bridge.volume_from_node(node).with_array(lab_kji)
    np.testing.assert_array_equal(got, apply_edits(grid, lab_kji, remove=[1], add=[(list(ras * FLIP), 18.0)]))
    assert "Edits: removed HCC 1; 1 new HCC of 18 mm." in logic.lastSynthesisText
    sh = scene.GetSubjectHierarchyNode()
    folders = {sh.GetItemParent(sh.GetItemByDataNode(n)) for n in (volume, edited)}
    assert len(folders) == 1 and folders.pop() != 0  # beside the input, in one output folder

    # the worker refuses an HCC that does not exist: nothing in the scene changes
    count = scene.GetNumberOfNodes()
    with pytest.raises(lib.TaskError) as err:
        logic.synthesize(seg, node, device="cpu", steps=2, edits=lib.edit_params("9"), timeout=240)
    assert err.value.kind == "input" and "HCC 9 does not exist" in err.value.message
    assert scene.GetNumberOfNodes() == count and edited.GetScene() is scene

    # without edits again: the edited labels go, the volume stays the same node
    logic.synthesize(seg, node, device="cpu", steps=2, seed=3, timeout=240)
    assert set(_outputs(scene)) == {"annotation synthetic MRI"} and edited.GetScene() is None
    for sid, mask in bridge.segment_masks(seg, node, list(before)).items():  # the user's, voxel for voxel as drawn
        np.testing.assert_array_equal(mask, before[sid])
    # a second segmentation on the same volume gets outputs of its own
    other = _segmentation(labels, scene, name="second reader", reference=node)
    logic.synthesize(other, node, device="cpu", steps=2, timeout=240)
    assert set(_outputs(scene)) == {"annotation synthetic MRI", "second reader synthetic MRI"}


@needs_worker
@pytest.mark.slow
def test_cancel_synthesis_leaves_no_files(mod, logic, scene, phantom):
    mri, labels = phantom
    node = _volume(mri, "MRI")
    seg = _segmentation(labels, scene)
    task = logic.submitSynthesis(seg, node, device="cpu", steps=1000)
    task.cancel()
    with pytest.raises(lib.TaskError) as err:
        logic.wait(task, timeout=120)
    assert err.value.kind == "cancelled" and task.state == "cancelled"
    assert not os.path.exists(task.temp_dir) and _outputs(scene) == {}
    assert logic.client.ping()  # the worker survives a cancel


@needs_worker
@pytest.mark.slow
def test_generate_refuses_a_file_before_the_worker_and_reports_the_summary(mod, logic, tmp_path):
    """The folder is checked in the Slicer process; the worker's summary is what the panel reads."""
    f = tmp_path / "pairs.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        logic.submitGeneration(output=str(f), n=1)
    if not (REPO / "pantheon" / "models" / "foscu" / "tasks.py").is_file():
        pytest.skip("the worker task foscu.generate (pantheon/models/foscu/tasks.py) is not written yet")
    import torch

    from pantheon.models.foscu.labelgen import build_labelgen, save_labelgen
    torch.manual_seed(0)
    weights = save_labelgen(build_labelgen(grid=(32, 32, 32), ae_channels=(8, 8, 8), unet_channels=(8, 8, 8),
                                           unet_num_head_channels=(0, 0, 8)).eval(), tmp_path / "labelgen.safetensors")
    out = tmp_path / "pairs"
    summary = logic.generate(output=str(out), n=1, seed=5, label_steps=1, image_steps=1, device="cpu",
                             weights=logic.weightsArgument("file", labelgen=str(weights)), timeout=240)
    assert summary == {"folder": str(out), "pairs": 1, "made_now": 1, "csv": str(out / "cases.csv"),
                       "index": str(out / "index.html"), "anatomy_flagged": 0}
    case, image, label = lib.pair_files(summary)
    assert (case, Path(image).name, Path(label).name) == ("pair-00000", "pair-00000.nii.gz", "pair-00000.seg.nrrd")


@needs_worker
@pytest.mark.slow
def test_self_test_runs_against_the_real_scene(mod, scene, monkeypatch):
    """LiverSynthesisTest with the demo weights; loadVolume (which needs the application) is replaced
    by the reader Slicer uses (archetype storage node)."""
    import slicer
    monkeypatch.setattr(slicer.util, "loadVolume", archetype_load_volume)
    monkeypatch.setenv("PANTHEON_SELFTEST_REQUIRE_WORKER", "1")
    test = mod.LiverSynthesisTest()
    test.messages = []
    test.runTest()
    assert "Test passed" in test.messages and "Removing the largest HCC and synthesizing again" in test.messages

