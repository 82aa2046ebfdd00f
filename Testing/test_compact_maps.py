"""Organ maps that say what they mean, at a sane size (issue 14, section 4).

- the body mask: CT above -500 HU, largest connected region, holes filled per axial slice;
- organ maps are 0 outside the body and say what a value is (result.json, preview, Slicer node);
- heatmaps are stored to 1/255 of their range (uint8 + NIfTI scl_slope/scl_inter, rounded float32
  in NRRD) and read back within half a step at the same world points by nibabel, SimpleITK,
  pantheon.io and the Slicer scene import; the worker keeps every digit;
- writing has its share of the progress bar, which reaches 100 % only when every file is written.
"""

import json
import os

import numpy as np
import pytest
import torch
from test_io_support import random_volume
from test_nemesis_pipelines import ct_volume, engine  # noqa: F401 (the fixture checkpoint's engine)

from pantheon.io import Volume, read_volume, write_volume
from pantheon.models.nemesis import OrganProbe
from pantheon.outputs import heatmap_codes, heatmap_step, write_result
from pantheon.pipelines import nemesis as nem
from pantheon.results import HeatmapOutput, Result

STEP = 1.0 / 255  # a probability's step; read-back values are within STEP / 2


# ---------------------------------------------------------------------------- the body mask
def _hand_made_ct():
    """10 axial slices of 40 x 40: a body block with a lung (enclosed in every slice, but open to
    the top face in 3D through a trachea), a notch open to the outside air, a separate table and
    a bright speck in the air. Returns the CT (K, J, I) and the body a reader would draw."""
    ct = np.full((10, 40, 40), -1000.0, np.float32)
    body = np.zeros(ct.shape, bool)
    body[:, 5:31, 5:35] = True
    ct[body] = 40.0
    ct[2:8, 10:16, 10:16] = -850.0  # lung: a hole in each of its slices
    ct[0:2, 12:14, 12:14] = -850.0  # trachea: joins the lung to the top face of the array
    ct[:, 20:31, 20:25] = -1000.0  # a notch open to the air below the body: outside
    body[:, 20:31, 20:25] = False
    ct[:, 35:38, 2:38] = 200.0  # the table, apart from the body
    ct[0, 1, 1] = 100.0  # a speck of noise in the air
    return ct, body


def test_body_mask_is_the_largest_region_with_holes_filled_per_slice():
    ct, expected = _hand_made_ct()
    got = nem.body_mask(ct)
    assert got.dtype == bool and got.shape == ct.shape
    np.testing.assert_array_equal(got, expected)
    assert not got[:, 35:38].any() and not got[0, 1, 1]  # table and speck left out
    assert got[2:8, 10:16, 10:16].all() and got[0:2, 12:14, 12:14].all()  # lung and trachea filled
    assert not got[:, 20:31, 20:25].any()  # the notch reaches the slice's edge: air, not a hole


def test_body_mask_of_pure_air_is_empty():
    assert not nem.body_mask(np.full((3, 4, 5), -1000.0, np.float32)).any()


def test_organ_maps_are_zero_outside_the_body_and_say_what_they_mean(engine):  # noqa: F811
    ct = ct_volume(direction=np.eye(3))  # spacing 0.9 x 1.3 x 2.5 mm, 32-voxel superpatches
    probe = OrganProbe(64)
    torch.manual_seed(0)
    torch.nn.init.normal_(probe.linear.weight, std=0.05)  # answers near 0.5 everywhere
    torch.nn.init.zeros_(probe.linear.bias)
    masked = nem.organ_maps(ct, engine, probe, ["liver", "spleen"])
    raw = nem.organ_maps(ct, engine, probe, ["liver", "spleen"], body_hu=None)
    air, inside = ct.array < -900, ct.array > -500  # ct_volume: one body, no air inside it
    for organ in ("liver", "spleen"):
        m, r = masked.heatmaps[organ].volume.array, raw.heatmaps[organ].volume.array
        # held as float16 (peak memory of a whole CT), each value the float32 probability rounded
        assert m.dtype == np.float16 and masked.heatmaps[organ].volume.same_geometry(ct)
        assert np.all(m[air] == 0.0) and r[air].mean() > 0.2  # the probe answers in the air
        np.testing.assert_array_equal(m[inside], r[inside])
    h = masked.heatmaps["liver"]
    # 32 voxels x (0.9, 1.3, 2.5) mm along R-L, A-P, S-I
    assert h.label == "P(liver in the 29 x 42 x 80 mm block here); 0 outside the body"
    assert "32 x 32 x 32-voxel block (29 x 42 x 80 mm) centred on this voxel" in h.description
    assert "SNOMED CT 10200004" in h.description and "0 outside the body" in h.description
    assert "-500 HU" in masked.notes["organ_maps"] and "-500" not in raw.notes["organ_maps"]
    assert raw.heatmaps["liver"].label.endswith("block here)")


@pytest.mark.slow
def test_demo_phantom_liver_map_no_longer_lights_up_the_air():
    """The figures of the issue, on the demo phantom with the bundled weights."""
    from pantheon.synth import make_abdomen_phantom
    ct, labels = make_abdomen_phantom(1234)
    eng = nem.load_engine(None, "cpu")
    probe = nem.load_probe_for(eng)
    fg = nem.features(ct, eng)
    before = nem.organ_maps(ct, eng, probe, ["liver"], feature_grid=fg, body_hu=None).heatmaps["liver"].volume.array
    after = nem.organ_maps(ct, eng, probe, ["liver"], feature_grid=fg).heatmaps["liver"].volume.array
    prepared = nem.prepare_ct(ct)
    body = prepared.undo(prepared.canonical.with_array(nem.body_mask(prepared.canonical.array))).array
    assert before[~body].mean() > 0.3  # measured 0.51: the "0.36 on average outside the body"
    assert after[~body].max() == 0.0
    assert (after > 0.5).mean() < (before > 0.5).mean() - 0.15  # measured 69.8 % -> 46.3 % of the volume
    assert after[labels.array == 6].mean() > 0.5  # the liver itself is still found


# ---------------------------------------------------------------------------- compact storage
def _heatmap(geom: Volume, lo=0.0, hi=1.0, seed=0):
    rng = np.random.default_rng(seed)
    values = (lo + (hi - lo) * rng.random(geom.shape)).astype(np.float32)
    values.reshape(-1)[:3] = [lo, hi, lo + (hi - lo) / 510]  # the ends, and a value half a step up
    return HeatmapOutput(geom.with_array(values), "inferno", (lo, hi), "what a value means", "short meaning")


def test_step_and_codes():
    geom = random_volume(0, shape=(3, 4, 5), dtype=np.float32)
    assert heatmap_step(_heatmap(geom)) == pytest.approx(1 / 255)
    assert heatmap_step(_heatmap(geom, -1.0, 1.0)) == pytest.approx(2 / 255)
    over = HeatmapOutput(geom.with_array(np.full(geom.shape, 120.0, np.float32)), "hot", (0.0, 100.0))
    assert heatmap_step(over) is None  # a reconstruction error beyond its colour range keeps float32
    nan = geom.with_array(np.full(geom.shape, np.nan, np.float32))
    assert heatmap_step(HeatmapOutput(nan)) is None
    codes = heatmap_codes(np.array([0.0, 0.5 / 255 - 1e-6, 0.5 / 255 + 1e-6, 0.5, 1.0, 1.0 + 1e-7], np.float32),
                          0.0, 1 / 255)
    assert codes.dtype == np.uint8 and codes.tolist() == [0, 0, 1, 128, 255, 255]
    assert heatmap_codes(np.array([-1.0, 0.0, 1.0], np.float32), -1.0, 2 / 255).tolist() == [0, 128, 255]


def _world(vol: Volume, ijk, ras=False):
    return vol.ijk_to_world(np.asarray(ijk, np.float64), ras=ras)


@pytest.mark.parametrize("fmt", ["nii.gz", "nii"])
@pytest.mark.parametrize("seed, shape, left", [(1, (6, 7, 8), True), (2, (5, 9, 4), False), (3, (1, 9, 11), False)])
def test_nifti_maps_read_back_by_every_reader_within_half_a_step(tmp_path, fmt, seed, shape, left):
    import nibabel as nib
    import SimpleITK as sitk
    geom = random_volume(seed, shape=shape, dtype=np.float32, left_handed=left)  # oblique, anisotropic
    prob, sim = _heatmap(geom, seed=seed), _heatmap(geom, -1.0, 1.0, seed + 10)
    write_result(Result(heatmaps={"liver": prob, "similarity": sim}), tmp_path, fmt, preview=False)
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["outputs"]["liver"]["stored"] == {"dtype": "uint8", "scl_slope": pytest.approx(1 / 255),
                                                 "scl_inter": 0.0, "step": pytest.approx(1 / 255),
                                                 "max_error": pytest.approx(1 / 510)}
    assert doc["outputs"]["liver"]["label"] == "short meaning"
    assert doc["outputs"]["similarity"]["stored"]["scl_inter"] == -1.0
    corners = [[i, j, k] for i in (0, shape[2] - 1) for j in (0, shape[1] - 1) for k in (0, shape[0] - 1)]
    for name, h in (("liver", prob), ("similarity", sim)):
        path = tmp_path / f"{name}.{fmt}"
        half = (h.value_range[1] - h.value_range[0]) / 510 + 1e-6
        if fmt == "nii":  # one byte a voxel: the 352-byte header, then the codes
            assert path.stat().st_size == 352 + int(np.prod(shape))
        img = nib.load(str(path))
        assert img.get_data_dtype() == np.uint8 and img.header["sform_code"] == 1 and img.header["qform_code"] == 1
        data = np.asanyarray(img.dataobj).T  # nibabel applies the scale: (I, J, K) -> (K, J, I)
        np.testing.assert_allclose(data, h.volume.array, atol=half, rtol=0)
        ras = img.affine @ np.c_[np.asarray(corners, float), np.ones(len(corners))].T
        np.testing.assert_allclose(ras[:3].T, _world(geom, corners, ras=True), atol=1e-4)
        s = sitk.ReadImage(str(path))  # ITK, as 3D Slicer reads NIfTI
        assert s.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_allclose(sitk.GetArrayFromImage(s).reshape(h.volume.shape), h.volume.array, atol=half, rtol=0)
        lps = np.array([s.TransformContinuousIndexToPhysicalPoint([float(c) for c in ijk]) for ijk in corners])
        np.testing.assert_allclose(lps, _world(geom, corners), atol=1e-4)
        back = read_volume(path)
        assert back.same_geometry(geom, atol=1e-4)
        np.testing.assert_allclose(back.array, h.volume.array, atol=half, rtol=0)
        assert np.all(back.array[h.volume.array == h.value_range[0]] == h.value_range[0])  # 0 stays 0 exactly


def test_nrrd_maps_are_float32_rounded_to_the_step(tmp_path):
    import SimpleITK as sitk
    geom = random_volume(4, shape=(6, 7, 8), dtype=np.float32, left_handed=True)
    h = _heatmap(geom, seed=4)
    write_result(Result(heatmaps={"liver": h}), tmp_path, "nrrd", preview=False)
    stored = json.loads((tmp_path / "result.json").read_text())["outputs"]["liver"]["stored"]
    assert stored["dtype"] == "float32" and stored["max_error"] == pytest.approx(1 / 510)
    s = sitk.ReadImage(str(tmp_path / "liver.nrrd"))
    values = sitk.GetArrayFromImage(s)
    assert s.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(values, h.volume.array, atol=1 / 510 + 1e-6, rtol=0)
    np.testing.assert_allclose(values * 255, np.rint(values * 255), atol=1e-4)  # on the 1/255 grid
    assert read_volume(tmp_path / "liver.nrrd").same_geometry(geom, atol=1e-4)


def test_maps_outside_their_range_and_the_worker_keep_every_digit(tmp_path):
    geom = random_volume(5, shape=(4, 5, 6), dtype=np.float32)
    err = HeatmapOutput(geom.with_array(np.linspace(0, 300, geom.array.size, dtype=np.float32).reshape(geom.shape)),
                        "hot", (0.0, 100.0), "error in HU")
    write_result(Result(heatmaps={"error": err}), tmp_path / "cli", preview=False)
    assert json.loads((tmp_path / "cli" / "result.json").read_text())["outputs"]["error"]["stored"] == \
        {"dtype": "float32", "max_error": 0.0}
    np.testing.assert_array_equal(read_volume(tmp_path / "cli" / "error.nii.gz").array, err.volume.array)
    from pantheon.worker.tasks import write_outputs
    prob = _heatmap(geom, seed=5)
    doc = write_outputs(Result(heatmaps={"liver": prob}), tmp_path / "worker")
    assert doc["outputs"]["liver"]["stored"]["max_error"] == 0.0
    np.testing.assert_array_equal(read_volume(tmp_path / "worker" / "liver.nrrd").array, prob.volume.array)


def test_a_compact_result_imported_into_slicer_lands_on_the_input_voxels(tmp_path, mrml_scene):
    slicer = pytest.importorskip("slicer")
    from pantheon import slicerbridge as sb
    geom = random_volume(6, shape=(5, 6, 7), dtype=np.int16, left_handed=True)
    node = slicer.vtkMRMLScalarVolumeNode()
    mrml_scene.AddNode(node)
    arr, m = geom.to_slicer()
    slicer.util.updateVolumeFromArray(node, arr)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
    ct = sb.volume_from_node(node)
    h = _heatmap(ct.with_array(np.zeros(ct.shape, np.float32)), seed=6)
    h.description = "Probability that the liver is in the 64 mm block centred on this voxel."
    write_result(Result(heatmaps={"liver": h}), tmp_path, "nii.gz", preview=False)
    doc = json.loads((tmp_path / "result.json").read_text())
    doc["output_dir"] = str(tmp_path)
    out = sb.import_result(doc, node, "organs", show=False).nodes["liver"]
    got = slicer.util.arrayFromVolume(out)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, h.volume.to_slicer()[0], atol=1 / 510 + 1e-6, rtol=0)
    import vtk
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    out.GetIJKToRASMatrix(a)
    node.GetIJKToRASMatrix(b)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b), atol=1e-5)
    assert out.GetDescription().startswith(h.description)
    assert "within 0.002 of the computed value" in out.GetDescription()


# ---------------------------------------------------------------------------- preview and size
def test_preview_colour_bars_say_what_a_value_is(tmp_path):
    from pantheon.preview import build_preview
    ct = ct_volume(direction=np.eye(3))
    res = Result(heatmaps={"liver": HeatmapOutput(ct.with_array(np.zeros(ct.shape, np.float32)), "inferno", (0.0, 1.0),
                                                  "a long sentence", "P(liver in the 64 mm block here)"),
                           "other": HeatmapOutput(ct.with_array(np.zeros(ct.shape, np.float32)), "inferno", (0.0, 1.0),
                                                  "only a description")})
    _fig, info = build_preview(ct, res)
    assert info["colorbar_labels"] == ["P(liver in the 64 mm block here)", "only a description"]


def test_preview_slices_match_the_canonical_volume_without_copying_it():
    from pantheon.preview import _canonical_view
    for seed in range(4):
        v = random_volume(seed, shape=(5, 6, 7), dtype=np.float32, left_handed=bool(seed % 2))
        for perm, flip in [((0, 1, 2), (False, False, False)), ((2, 0, 1), (True, False, True))]:
            w = v.reoriented(perm, flip)
            canon, _ = w.to_canonical("LPS")
            a, spacing, to_index = _canonical_view(w)
            assert np.shares_memory(a, w.array)
            np.testing.assert_array_equal(a, canon.array)
            np.testing.assert_allclose(spacing, canon.spacing)
            pts = w.ijk_to_world(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
            np.testing.assert_allclose(to_index(pts), canon.world_to_ijk(pts), atol=1e-9)


# ---------------------------------------------------------------------------- progress
def test_the_bar_reaches_100_percent_when_the_last_file_is_written(tmp_path, monkeypatch, capsys):
    from conftest import NEMESIS_FIXTURES

    import pantheon.cli as cli
    import pantheon.outputs as outputs
    from pantheon.models.nemesis.probe import save_probe
    from pantheon.progress import WRITE_SHARE
    from pantheon.registry import sha256_file
    weights = str(NEMESIS_FIXTURES / "checkpoint.pt")
    probe = tmp_path / "probe.safetensors"
    save_probe(OrganProbe(64), probe, sha256_file(weights))
    src = tmp_path / "ct.nii.gz"
    write_volume(ct_volume(shape=(30, 40, 44)), src)
    events = []

    class Recorder:
        def __init__(self, quiet=False, desc=""):
            pass

        def __call__(self, fraction, message=""):
            events.append(("bar", fraction, message))

        def close(self):
            pass

    real_write = outputs._write_heatmap

    def write_heatmap(heatmap, path, *a, **k):
        stored = real_write(heatmap, path, *a, **k)
        events.append(("file", os.path.getsize(path), path.name))
        return stored
    monkeypatch.setattr(cli, "TqdmProgress", Recorder)
    monkeypatch.setattr(outputs, "_write_heatmap", write_heatmap)
    assert cli.main(["nemesis", "organs", str(src), "-o", str(tmp_path / "out"), "--weights", weights,
                     "--probe", str(probe), "--organs", "liver", "spleen", "aorta"]) == 0, capsys.readouterr().err
    bars = [f for kind, f, _m in events if kind == "bar"]
    assert bars == sorted(bars) and bars[-1] == pytest.approx(1.0)
    files = [i for i, e in enumerate(events) if e[0] == "file"]
    assert len(files) == 3
    first_write = next(i for i, e in enumerate(events) if e[0] == "bar" and e[2].startswith("Writing"))
    assert events[first_write][1] == pytest.approx(1 - WRITE_SHARE)  # the computation ends at 90 %
    assert all(e[1] <= 1 - WRITE_SHARE + 1e-9 for e in events[:first_write] if e[0] == "bar")
    assert all(e[1] < 0.999 for e in events[:files[-1]] if e[0] == "bar")  # not full before the last map
    assert 1 - WRITE_SHARE < events[files[1] + 1][1] < 1.0  # and it moves while the maps are written
