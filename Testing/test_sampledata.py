"""Pantheon's sample cases (pantheon/sampledata) and their registration with Slicer's Sample Data.

- the committed files match the manifest, Slicer's own checksum functions (slicer-core) and a
  bit-exact rebuild;
- registration calls a stand-in of ``SampleData.SampleDataLogic`` whose methods have exactly the
  signatures of Slicer 5.12.3 (so a wrong keyword fails here), is idempotent, follows a moved data
  folder, survives a missing Sample Data module or missing files;
- what a click does in Slicer (copy the file:// URI into a cache, verify the SHA256, read with the
  IO file type) is replayed with urllib and slicer-core's MRML storage nodes;
- each case runs through its model's pipeline with the bundled demo weights and the result is
  checked against the phantom's ground truth.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pantheon import sampledata as sd
from pantheon.sampledata import build
from pantheon.slicerbridge import sampledata as bridge_sd

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# A recording stand-in of Slicer's SampleData module
# --------------------------------------------------------------------------------------------
class _Source:
    """What SampleDataSource keeps (attribute names as in Slicer)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.sampleDescription = kw["sampleName"]  # Slicer's default when no description is given


def make_sample_data_standin(with_category_api: bool = True):
    """A module-like object: ``SampleDataLogic`` with the static methods extensions call.

    The signatures are copied from Slicer v5.12.3 Modules/Scripted/SampleData/SampleData.py
    (registerCustomSampleDataCategory l. 532, registerCustomSampleDataSource l. 553,
    sampleDataSourcesByCategory l. 615); the bodies only record and store. Without
    ``with_category_api`` it is Slicer 5.10 (no registerCustomSampleDataCategory).
    """
    registry, calls = {}, []

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(category="Custom",
                                           sampleName=None, uris=None, fileNames=None, nodeNames=None,
                                           customDownloader=None, thumbnailFileName=None,
                                           loadFileTypes=None, loadFiles=None, loadFileProperties={},
                                           checksums=None,
                                           loadFileType=None):
            kw = dict(category=category, sampleName=sampleName, uris=uris, fileNames=fileNames,
                      nodeNames=nodeNames, customDownloader=customDownloader, thumbnailFileName=thumbnailFileName,
                      loadFileTypes=loadFileTypes, loadFiles=loadFiles, loadFileProperties=loadFileProperties,
                      checksums=checksums, loadFileType=loadFileType)
            calls.append(("registerCustomSampleDataSource", kw))
            registry.setdefault(category, []).append(_Source(**kw))

        @staticmethod
        def sampleDataSourcesByCategory(category=None):
            calls.append(("sampleDataSourcesByCategory", {"category": category}))
            return registry if category is None else registry.get(category, [])

    if with_category_api:
        def registerCustomSampleDataCategory(category, title):
            calls.append(("registerCustomSampleDataCategory", {"category": category, "title": title}))
        SampleDataLogic.registerCustomSampleDataCategory = staticmethod(registerCustomSampleDataCategory)

    class Module:
        pass

    mod = Module()
    mod.SampleDataLogic, mod.registry, mod.calls = SampleDataLogic, registry, calls
    return mod


def _registrations(mod):
    return [kw for name, kw in mod.calls if name == "registerCustomSampleDataSource"]


def _path_of_uri(uri: str) -> Path:
    p = urllib.parse.urlparse(uri)
    assert p.scheme == "file", uri
    return Path(urllib.request.url2pathname(p.path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_standin_rejects_a_wrong_keyword():
    # the point of copying the signature: a misspelt argument fails as it would in Slicer
    logic = make_sample_data_standin().SampleDataLogic
    with pytest.raises(TypeError):
        logic.registerCustomSampleDataSource(category="Pantheon", sampleName="x", fileName="x.nrrd")
    with pytest.raises(TypeError):
        logic.registerCustomSampleDataSource(category="Pantheon", sampleName="x", thumbnail="x.png")


# --------------------------------------------------------------------------------------------
# Files, manifest, checksums, rebuild
# --------------------------------------------------------------------------------------------
def test_files_exist_are_small_and_match_the_manifest():
    import slicer.util  # slicer-core: the very functions SampleData verifies downloads with

    manifest = sd.load_manifest()
    names = build.expected_files()
    assert sorted(p.name for p in sd.DATA_DIR.iterdir() if not p.name.startswith(".")) == sorted(names)
    assert sorted(manifest["files"]) == sorted(n for n in names if n != sd.MANIFEST_NAME)
    for name, entry in manifest["files"].items():
        path = sd.DATA_DIR / name
        assert path.stat().st_size == entry["bytes"] < 0.7 * MiB, name  # "well under 1 MB"
        assert _sha256(path) == entry["sha256"], f"{name} changed since the manifest was written"
        algo, digest = slicer.util.extractAlgoAndDigest(sd.checksum_of(name, manifest))
        assert (algo, digest) == ("SHA256", entry["sha256"])
        assert slicer.util.computeChecksum(algo, str(path)) == digest
    assert sum(e["bytes"] for e in manifest["files"].values()) < 0.7 * MiB * len(sd.CASES)
    assert {c.sample_name for c in sd.CASES} == set(manifest["cases"])


@pytest.mark.slow
def test_rebuild_is_bit_exact():
    assert build.check() == []


@pytest.mark.slow
def test_rebuild_check_can_fail(tmp_path):
    for p in sd.DATA_DIR.iterdir():
        shutil.copy2(p, tmp_path / p.name)
    f = tmp_path / "PantheonPanoramicXrayPhantom.nrrd"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    (tmp_path / "PantheonLiverMRIPhantom.png").unlink()
    problems = build.check(tmp_path)
    assert len(problems) == 2
    assert any(p.startswith("PantheonPanoramicXrayPhantom.nrrd: differs") for p in problems)
    assert any(p.startswith("PantheonLiverMRIPhantom.png: missing") for p in problems)


def test_nrrd_headers_carry_no_time_stamp():
    for c in sd.CASES:
        for f in c.files:
            data = (sd.DATA_DIR / f.file_name).read_bytes()
            header = data[:data.index(b"\n\n")].decode("ascii")
            assert "#" not in header and "space: left-posterior-superior" in header, f.file_name


def test_thumbnails_are_slicer_sized_and_not_blank():
    from PIL import Image
    for c in sd.CASES:
        with Image.open(sd.DATA_DIR / c.thumbnail) as im:
            assert im.format == "PNG" and im.size == (288, 260) and im.mode == "RGB"
            a = np.asarray(im).astype(float)
        assert a.std() > 20 and (a > 200).mean() > 0.01, c.thumbnail  # a picture, not a black square
    with Image.open(sd.DATA_DIR / sd.case("PantheonLiverMRIPhantom").thumbnail) as im:
        a = np.asarray(im).astype(int)
    tumour_rgb = np.array([round(255 * v) for v in build.MRI_SEGMENTS[1][2]])
    assert (np.abs(a - tumour_rgb).sum(axis=2) == 0).sum() > 30  # the tumour outline is drawn


def test_slicer_side_modules_use_python39_syntax():
    for path in (REPO / "pantheon" / "sampledata" / "__init__.py",
                 REPO / "pantheon" / "slicerbridge" / "sampledata.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_registration_loads_neither_torch_nor_the_generators():
    code = ("import sys, types\n"
            "from pantheon.slicerbridge.sampledata import register_sample_data\n"
            "logic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: None,\n"
            "                              sampleDataSourcesByCategory=lambda category=None: [])\n"
            "names = register_sample_data(sample_data=types.SimpleNamespace(SampleDataLogic=logic))\n"
            f"assert len(names) == {len(sd.CASES)}, names\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'scipy')\n"
            "             or m.startswith(('pantheon.synth', 'pantheon.sampledata.build', 'pantheon.pipelines')))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------
def test_registration_arguments():
    mod = make_sample_data_standin()
    names = bridge_sd.register_sample_data(sample_data=mod)
    assert names == [c.sample_name for c in sd.CASES]
    assert ("registerCustomSampleDataCategory", {"category": "Pantheon", "title": "Pantheon"}) in mod.calls
    calls = _registrations(mod)
    assert len(calls) == len(sd.CASES)
    manifest = sd.load_manifest()
    for kw, c in zip(calls, sd.CASES):
        assert kw["category"] == "Pantheon" and kw["sampleName"] == c.sample_name
        n = len(c.files)
        assert len(kw["uris"]) == len(kw["fileNames"]) == len(kw["nodeNames"]) == len(kw["checksums"]) \
            == len(kw["loadFileTypes"]) == n
        for uri, file_name, node_name, checksum, ftype, f in zip(kw["uris"], kw["fileNames"], kw["nodeNames"],
                                                                 kw["checksums"], kw["loadFileTypes"], c.files):
            path = _path_of_uri(uri)
            assert path.is_absolute() and path.is_file() and path.resolve() == (sd.DATA_DIR / f.file_name).resolve()
            assert file_name == path.name == f.file_name and file_name.startswith("Pantheon")
            assert node_name == f.node_name and node_name.startswith("Pantheon")
            assert checksum == "SHA256:" + _sha256(path) == "SHA256:" + manifest["files"][file_name]["sha256"]
            assert ftype == ("SegmentationFile" if file_name.endswith(".seg.nrrd") else "VolumeFile")
        assert Path(kw["thumbnailFileName"]).is_file() and kw["thumbnailFileName"].endswith(".png")
        # left at Slicer's defaults: loaded when clicked, no custom downloader, no deprecated keyword
        assert kw["loadFiles"] is None and kw["customDownloader"] is None and kw["loadFileType"] is None
        assert kw["loadFileProperties"] == {}
    # the images come first: Slicer shows the first loaded node
    assert [kw["loadFileTypes"][0] for kw in calls] == ["VolumeFile"] * len(sd.CASES)
    sources = mod.registry["Pantheon"]
    assert [s.sampleDescription for s in sources] == [c.title for c in sd.CASES]  # the button texts


def test_registration_is_idempotent_and_follows_a_moved_folder(tmp_path):
    mod = make_sample_data_standin()
    bridge_sd.register_sample_data(sample_data=mod)
    bridge_sd.register_sample_data(sample_data=mod)
    bridge_sd.register_sample_data(sample_data=mod)
    assert len(_registrations(mod)) == len(sd.CASES)  # nothing registered again
    assert [s.sampleName for s in mod.registry["Pantheon"]] == [c.sample_name for c in sd.CASES]

    moved = tmp_path / "installed"
    shutil.copytree(sd.DATA_DIR, moved)
    bridge_sd.register_sample_data(moved, sample_data=mod)
    sources = mod.registry["Pantheon"]
    assert [s.sampleName for s in sources] == [c.sample_name for c in sd.CASES]  # replaced, not added
    assert all(_path_of_uri(u).parent == moved.resolve() for s in sources for u in s.uris)
    assert all(Path(s.thumbnailFileName).parent == moved.resolve() for s in sources)


def test_registration_on_slicer_510_without_category_titles():
    mod = make_sample_data_standin(with_category_api=False)
    assert len(bridge_sd.register_sample_data(sample_data=mod)) == len(sd.CASES)
    assert not any(name == "registerCustomSampleDataCategory" for name, _ in mod.calls)


def test_registration_without_sample_data_module(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "SampleData", None)  # `import SampleData` raises ImportError
    with caplog.at_level(logging.INFO, logger="pantheon.sampledata"):
        assert bridge_sd.register_sample_data() == []
    assert "Sample Data module is not loaded" in caplog.text


def test_registration_skips_a_case_with_missing_files(tmp_path, caplog):
    shutil.copytree(sd.DATA_DIR, tmp_path / "d")
    (tmp_path / "d" / "PantheonLiverMRIPhantom_Segments.seg.nrrd").unlink()
    mod = make_sample_data_standin()
    with caplog.at_level(logging.WARNING, logger="pantheon.sampledata"):
        names = bridge_sd.register_sample_data(tmp_path / "d", sample_data=mod)
    assert names == ["PantheonAbdominalCTPhantom", "PantheonPanoramicXrayPhantom", "PantheonLiverHCCMRIPhantom"]
    assert "PantheonLiverMRIPhantom_Segments.seg.nrrd" in caplog.text
    mod2 = make_sample_data_standin()
    assert bridge_sd.register_sample_data(tmp_path / "nothing-here", sample_data=mod2) == []
    assert _registrations(mod2) == []


def test_registration_logs_an_api_error_instead_of_raising(caplog):
    mod = make_sample_data_standin()

    def broken(**kw):
        raise TypeError("registerCustomSampleDataSource() got an unexpected keyword argument")
    mod.SampleDataLogic.registerCustomSampleDataSource = staticmethod(broken)
    with caplog.at_level(logging.ERROR, logger="pantheon.sampledata"):
        assert bridge_sd.register_sample_data(sample_data=mod) == []
    assert caplog.text.count("Could not register Pantheon sample") == len(sd.CASES)


# --------------------------------------------------------------------------------------------
# What a click in Sample Data does, replayed with slicer-core
# --------------------------------------------------------------------------------------------
def _read_segmentation(path: Path, scene):
    import slicer
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, path
    return node


def _segment_voxels(segment):
    """(extent-cropped label array (k, j, i), extent) of a segment's binary labelmap."""
    from vtk.util.numpy_support import vtk_to_numpy
    image = segment.GetRepresentation("Binary labelmap")
    dims = image.GetDimensions()
    arr = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    return arr, image.GetExtent()


def test_click_copies_verifies_and_loads_every_file(tmp_path, mrml_scene):
    import slicer
    import slicer.util
    from slicer_standins import archetype_load_volume

    mod = make_sample_data_standin()
    bridge_sd.register_sample_data(sample_data=mod)
    manifest = sd.load_manifest()
    cache = tmp_path / "cache"
    cache.mkdir()
    for source in mod.registry["Pantheon"]:
        for uri, file_name, node_name, checksum, ftype in zip(source.uris, source.fileNames, source.nodeNames,
                                                               source.checksums, source.loadFileTypes):
            # SampleDataLogic.downloadFile: urlretrieve into the cache, then the checksum
            path = cache / file_name
            urllib.request.urlretrieve(uri, str(path))
            algo, digest = slicer.util.extractAlgoAndDigest(checksum)
            assert slicer.util.computeChecksum(algo, str(path)) == digest
            entry = manifest["files"][file_name]
            if ftype == "VolumeFile":
                node = archetype_load_volume(path, {"name": node_name})
                assert node.GetName() == node_name
                dims = node.GetImageData().GetDimensions()
                assert list(dims) == entry["shape_kji"][::-1], file_name
                assert np.allclose(node.GetSpacing(), entry["spacing"]), file_name
                assert np.allclose(node.GetOrigin(), np.array(entry["origin"]) * [-1, -1, 1], atol=1e-4)  # LPS -> RAS
                arr = slicer.util.arrayFromVolume(node)
                assert str(arr.dtype) == entry["dtype"]
                if "value_range" in entry:
                    assert [int(arr.min()), int(arr.max())] == entry["value_range"]
            else:
                node = _read_segmentation(path, mrml_scene)
                seg = node.GetSegmentation()
                names = {seg.GetNthSegment(i).GetName(): seg.GetNthSegment(i).GetLabelValue()
                         for i in range(seg.GetNumberOfSegments())}
                assert names == entry["segments"], file_name
                k, j, i = entry["shape_kji"]
                for n in range(seg.GetNumberOfSegments()):
                    arr, ext = _segment_voxels(seg.GetNthSegment(n))
                    assert 0 <= ext[0] <= ext[1] < i and 0 <= ext[2] <= ext[3] < j and 0 <= ext[4] <= ext[5] < k


def test_case_contents_are_what_the_modules_expect():
    from pantheon.anatomy import BTCV_ORGANS
    from pantheon.io import read_volume
    from pantheon.pipelines.neonet import LIVER, SEGMENTS, TUMOUR

    ct = read_volume(sd.DATA_DIR / "PantheonAbdominalCTPhantom.nrrd")
    organs = read_volume(sd.DATA_DIR / "PantheonAbdominalCTPhantom_Organs.seg.nrrd")
    assert ct.same_geometry(organs) and ct.array.dtype == np.int16 and ct.shape == build.CT_SHAPE
    assert np.allclose(ct.direction, np.eye(3)) and ct.spacing == build.CT_SPACING
    assert ct.array.min() >= -1024 and 300 < ct.array.max() < 3072  # Hounsfield units, bone present
    assert set(np.unique(organs.array)) == {0} | {idx for _n, idx, *_ in BTCV_ORGANS}  # the 8 probe organs
    opg = read_volume(sd.DATA_DIR / "PantheonPanoramicXrayPhantom.nrrd")
    assert opg.is_2d and opg.shape == (1,) + build.OPG_SIZE and opg.array.dtype == np.uint8
    assert opg.spacing[:2] == (280 / 1024, 280 / 1024)  # a known pixel size: caries areas in mm2
    mri = read_volume(sd.DATA_DIR / "PantheonLiverMRIPhantom.nrrd")
    labels = read_volume(sd.DATA_DIR / "PantheonLiverMRIPhantom_Segments.seg.nrrd")
    assert mri.same_geometry(labels) and mri.array.dtype == np.int16 and mri.array.min() >= 0
    assert set(np.unique(labels.array)) == {0, 1, 2, 3, 4}
    # NeoNet's ids and segment names, so PNI Predict's "my tumour" and synthesis find them
    assert (LIVER, TUMOUR) == (1, 2)
    assert [(v, n, c, code) for v, n, c, code in build.MRI_SEGMENTS[:2]] == \
        [(s.value, s.name, s.color, s.code) for s in SEGMENTS]
    info = sd.load_manifest()["cases"]["PantheonLiverMRIPhantom"]
    assert info["pni"] is True and info["pni_extent_mm"] >= 10
    tumour_ml = (labels.array == 2).sum() * np.prod(labels.spacing) / 1000
    assert tumour_ml == pytest.approx(info["tumour_volume_ml"], abs=1e-3)


def test_hcc_case_is_a_3d_lldm_label_map_liver_synthesis_reads_by_name():
    from pantheon.io import read_volume
    from pantheon.io.segnrrd import read_seg_nrrd_header
    from pantheon.models.lldm.edits import hcc_components
    from pantheon.models.lldm.synthesis import lldm_labels

    c = sd.case("PantheonLiverHCCMRIPhantom")
    assert c.module == "LiverSynthesis"
    mri = read_volume(sd.DATA_DIR / c.files[0].file_name)
    labels = read_volume(sd.DATA_DIR / c.files[1].file_name)
    assert mri.same_geometry(labels) and mri.array.dtype == np.int16 and mri.array.min() >= 0
    assert mri.shape == build.MRI_SHAPE and np.allclose(mri.direction, np.eye(3))
    header = read_seg_nrrd_header(sd.DATA_DIR / c.files[1].file_name)
    names = [header[f"Segment{i}_Name"] for i in range(4)]
    assert names == ["liver", "portal vein", "hepatic vein", "HCC"]
    # the names alone say which label is which: the panel's reading gives back the stored values
    assert np.array_equal(lldm_labels(labels), labels.array) and set(np.unique(labels.array)) == {0, 1, 2, 3, 4}
    comp = hcc_components(labels.array)
    info = sd.load_manifest()["cases"][c.sample_name]
    assert comp.max() == len(info["hcc"]) == build.HCC_COUNT  # two separate tumours, "remove HCC 2" has one
    hcc_ml = (labels.array == 4).sum() * np.prod(labels.spacing) / 1000
    assert hcc_ml == pytest.approx(info["hcc_volume_ml"], abs=1e-3)
    big, small = sorted((h["diameter_mm"] for h in info["hcc"]), reverse=True)
    assert big > 30 and small < 15


# --------------------------------------------------------------------------------------------
# Each case through its model (bundled demo weights)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ct_case_organ_maps_find_the_organs():
    from sklearn.metrics import roc_auc_score

    from pantheon.anatomy import BTCV_ORGANS
    from pantheon.io import read_volume
    from pantheon.pipelines import nemesis as nem

    ct = read_volume(sd.DATA_DIR / "PantheonAbdominalCTPhantom.nrrd")
    lab = read_volume(sd.DATA_DIR / "PantheonAbdominalCTPhantom_Organs.seg.nrrd").array
    engine = nem.load_engine(None, "cpu")
    res = nem.organ_maps(ct, engine, nem.load_probe_for(engine, None))
    aucs = {}
    for name, idx, *_ in BTCV_ORGANS:
        heat = res.heatmaps[name.replace(" ", "_")].volume
        assert heat.same_geometry(ct, atol=1e-6)
        h, m = heat.array, lab == idx
        assert h[m].mean() > h[~m].mean() + 0.1, name  # each map is higher on its organ
        aucs[name] = roc_auc_score(m.ravel(), h.ravel())
    assert aucs["liver"] > 0.8 and aucs["aorta"] > 0.9 and np.mean(list(aucs.values())) > 0.8, aucs
    liver = res.heatmaps["liver"].volume.array[lab == 6]
    assert np.median(liver) > 0.9


def test_opg_case_teeth_are_found_with_their_fdi_numbers():
    from pantheon.io import read_volume
    from pantheon.pipelines import mathena as mt

    opg = read_volume(sd.DATA_DIR / "PantheonPanoramicXrayPhantom.nrrd")
    truth = sd.load_manifest()["cases"]["PantheonPanoramicXrayPhantom"]
    res = mt.analyze_with(opg, mt.load_mathena_models())
    found = {r["tooth"] for r in res.tables["findings"]}
    assert len(set(truth["teeth_fdi"]) & found) >= 0.9 * len(truth["teeth_fdi"]), sorted(found)
    assert len(found - set(truth["teeth_fdi"])) <= 3  # few phantom teeth
    assert "caries_area_mm2" in res.scalars  # the NRRD's pixel size reached the pipeline
    teeth = res.labels["teeth"].volume
    assert teeth.same_geometry(opg) and set(np.unique(teeth.array)) - {0} <= found


def test_mri_case_predicts_pni_with_and_without_its_label_map():
    from pantheon.io import read_volume
    from pantheon.pipelines import neonet as nn

    mri = read_volume(sd.DATA_DIR / "PantheonLiverMRIPhantom.nrrd")
    labels = read_volume(sd.DATA_DIR / "PantheonLiverMRIPhantom_Segments.seg.nrrd")
    models = nn.load_neonet_models(components=("neoseg", "pattennet"), device="cpu")
    truth = labels.array == 2

    auto = nn.predict(mri, models)  # NeoSeg finds the tumour
    p = auto.scalars["pni_probability"]
    assert 0.0 <= p <= 1.0 and auto.notes["tumour_source"] == "NeoSeg"
    found = auto.labels["tumour"].volume.array == 2
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.6, dice
    heat = auto.heatmaps["pni_attention"].volume
    assert heat.same_geometry(mri) and heat.array.min() >= 0 and 0 < heat.array.max() <= 1

    given = nn.predict(mri, models, tumour_mask=labels)  # "use my tumour segmentation"
    q = given.scalars["pni_probability"]
    assert given.notes["tumour_source"] == "supplied tumour mask"
    assert np.array_equal(given.labels["tumour"].volume.array == 2, truth)
    assert 0.5 <= q <= 1.0, q  # the phantom is PNI positive and its true tumour shows the extension


@pytest.fixture(scope="module")
def hcc_case_synthesised():
    from pantheon.io import read_volume
    from pantheon.models.lldm.synthesis import load_model, synthesize

    c = sd.case("PantheonLiverHCCMRIPhantom")
    labels = read_volume(sd.DATA_DIR / c.files[1].file_name)
    model, _wid, demo = load_model(None)
    return labels, synthesize(labels, model, steps=20, seed=0, demo=demo).volumes["synthetic_mri"], demo


@pytest.mark.slow
def test_hcc_case_synthesises_on_its_own_grid(hcc_case_synthesised):
    labels, out, demo = hcc_case_synthesised
    assert demo and out.same_geometry(labels) and np.isfinite(out.array).all()
    liver, outside = out.array[labels.array == 1].mean(), out.array[labels.array == 0].mean()
    assert liver > outside + 0.3, (liver, outside)  # the enhancing liver stands out of its surroundings


@pytest.mark.slow
def test_hcc_case_synthesis_shows_the_hccs_dark(hcc_case_synthesised):
    labels, out, _demo = hcc_case_synthesised
    # hepatobiliary phase: the parenchyma enhances, HCCs take up no contrast (real phantom: 0.56 of the liver)
    liver, hcc = out.array[labels.array == 1].mean(), out.array[labels.array == 4].mean()
    assert hcc < 0.8 * liver, (liver, hcc)


# --------------------------------------------------------------------------------------------
# Optional: Slicer's real SampleData.py (PANTHEON_SLICER_SAMPLEDATA=<Slicer>/Modules/Scripted/
# SampleData/SampleData.py, e.g. from a Slicer source checkout); skipped without it
# --------------------------------------------------------------------------------------------
_REAL_SAMPLEDATA_RUNNER = r'''
import json, os, sys, tempfile, types, importlib.util
from unittest import mock
sys.path[:0] = [sys.argv[2], os.path.join(sys.argv[2], "Testing")]
import slicer, slicer.util
qt = mock.MagicMock(name="qt")
# QFile(path).remove() is how SampleData drops a cached file whose checksum is wrong
qt.QFile = lambda p: types.SimpleNamespace(remove=lambda: (os.remove(p), True)[1], exists=lambda: os.path.exists(p))
sys.modules["qt"], sys.modules["ctk"] = qt, mock.MagicMock(name="ctk")
i18n = types.ModuleType("slicer.i18n")
i18n.tr, i18n.translate = (lambda t: t), (lambda c, t: t)
slm = types.ModuleType("slicer.ScriptedLoadableModule")
for n in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
    setattr(slm, n, type(n, (), {}))
slm.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"]
sys.modules["slicer.i18n"], sys.modules["slicer.ScriptedLoadableModule"] = i18n, slm
slicer.i18n, slicer.ScriptedLoadableModule = i18n, slm
slicer.util.TESTING_DATA_URL = getattr(slicer.util, "TESTING_DATA_URL", "https://example.invalid/")
slicer.modules, slicer.app = types.SimpleNamespace(), mock.MagicMock(name="app")
slicer.app.testingEnabled.return_value = False
spec = importlib.util.spec_from_file_location("SampleData", sys.argv[1])
SampleData = importlib.util.module_from_spec(spec)
sys.modules["SampleData"] = SampleData
spec.loader.exec_module(SampleData)

from pantheon.slicerbridge.sampledata import register_sample_data
from slicer_standins import archetype_load_volume
out = {"first": register_sample_data(), "second": register_sample_data()}
logic_cls = SampleData.SampleDataLogic
out["titles"] = [s.sampleDescription for s in logic_cls.sampleDataSourcesByCategory("Pantheon")]
scene = slicer.vtkMRMLScene()
slicer.mrmlScene = scene
cache = tempfile.mkdtemp()

def loadNode(self, uri, name, fileType=None, fileProperties={}):  # the application's IO manager, here
    if fileType == "VolumeFile":
        return archetype_load_volume(uri, {"name": name})
    storage, node = slicer.vtkMRMLSegmentationStorageNode(), slicer.vtkMRMLSegmentationNode()
    scene.AddNode(storage), scene.AddNode(node)
    storage.SetFileName(uri)
    node.SetName(name)
    return node if storage.ReadData(node) else None
logic_cls.loadNode = loadNode
logic = logic_cls.__new__(logic_cls)  # without __init__: it registers Slicer's own sources
logic.downloadPercent = 0
logic.downloadFileIntoCache = lambda uri, name, checksum=None, forceDownload=False: \
    logic.downloadFile(uri, cache, name, checksum, forceDownload)
out["loaded"] = {n: [[m.GetName(), m.GetClassName()] for m in logic.downloadFromSource(logic.sourceForSampleName(n))]
                 for n in out["first"]}
bad = os.path.join(cache, "PantheonPanoramicXrayPhantom.nrrd")
with open(bad, "ab") as f:
    f.write(b"x")  # a stale cached copy
logic.downloadFromSource(logic.sourceForSampleName("PantheonPanoramicXrayPhantom"))
out["recopied"] = slicer.util.computeChecksum("SHA256", bad)
print(json.dumps(out))
'''


@pytest.mark.skipif(not os.environ.get("PANTHEON_SLICER_SAMPLEDATA"),
                    reason="set PANTHEON_SLICER_SAMPLEDATA to Slicer's Modules/Scripted/SampleData/SampleData.py")
def test_with_slicers_own_sample_data_logic():
    path = os.environ["PANTHEON_SLICER_SAMPLEDATA"]
    proc = subprocess.run([sys.executable, "-c", _REAL_SAMPLEDATA_RUNNER, path, str(REPO)], cwd=str(REPO),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    names = [c.sample_name for c in sd.CASES]
    assert out["first"] == out["second"] == names
    assert out["titles"] == [c.title for c in sd.CASES]  # registered once each
    for c in sd.CASES:
        assert out["loaded"][c.sample_name] == [
            [f.node_name, "vtkMRMLScalarVolumeNode" if f.load_file_type == "VolumeFile" else "vtkMRMLSegmentationNode"]
            for f in c.files]
    assert out["recopied"] == sd.load_manifest()["files"]["PantheonPanoramicXrayPhantom.nrrd"]["sha256"]
