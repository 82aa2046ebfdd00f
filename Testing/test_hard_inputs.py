"""Hard inputs for the pipelines and the command line: the wrong kind of 2D image for the dental
model (a DICOM CT/MR, a colour photograph, a CT slice), label maps that are not NeoNet's (a CT in
HU, an MRI, a BTCV organ map), shapes and parameters that make no sense (1 x 1 x 1, --noise -1,
--batch-size 0, 0 DDIM steps), huge images, and internal names in messages.

Bad input: one sentence, exit status 2, no output written, no traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import NEMESIS_FIXTURES
from PIL import Image
from test_io_hard_inputs import _png_bomb
from test_mathena_pipeline import StubDetector, StubHENA

from pantheon.cli import main
from pantheon.errors import InputError, InvalidParameter
from pantheon.io import Volume, read_volume, write_volume
from pantheon.pipelines import mathena as mt
from pantheon.pipelines import nemesis as nem
from pantheon.pipelines import neonet
from pantheon.synth.opg import make_opg

FIXTURE_WEIGHTS = str(NEMESIS_FIXTURES / "checkpoint.pt")
SAMPLES = Path(__file__).resolve().parents[1] / "pantheon" / "sampledata" / "data"


def _one_sentence_exit_2(argv, capsys, out: Path, *words):
    """Exit status 2 with one line on stderr (from the pipelines, or from the command line's own
    argument checks); each of ``words`` is a string, or a tuple of alternatives, in that line."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse-level checks exit through the parser
        rc = e.code
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("pantheon: error:"), captured.err
    for w in words:
        alternatives = w if isinstance(w, tuple) else (w,)
        assert any(a in lines[0] for a in alternatives), lines[0]
    for leak in ("np.float64", "num_inference_steps", "Traceback", "ITK", "0x"):
        assert leak not in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


# =========================================================================== dental model: 2D inputs
def _ct_slice_png(path, window=(-160, 240)):
    from pantheon.synth.ct_phantom import make_abdomen_phantom
    ct = make_abdomen_phantom(1)[0].array
    sl = ct[ct.shape[0] // 2].astype(np.float32)
    Image.fromarray((np.clip((sl - window[0]) / (window[1] - window[0]), 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def _photo(H=400, W=800, seed=0):
    """A photo-like RGB picture: smooth colour gradients, skin- and sky-coloured shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W] / H
    img = np.stack([0.6 + 0.3 * np.sin(3 * x), 0.4 + 0.3 * np.cos(2 * y + x), 0.3 + 0.2 * np.sin(5 * y)], -1)
    for cx, cy, r, c in [(0.5, 0.5, 0.3, (0.9, 0.7, 0.6)), (1.4, 0.6, 0.25, (0.2, 0.3, 0.8))]:
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = c
    return (np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).astype(np.uint8)


def _dicom_2d(path, array, modality):
    img = sitk.GetImageFromArray(array)
    for key, value in {"0008|0060": modality, "0010|0010": "Test^2D", "0020|000d": "1.2.826.0.1.3680043.2.1125.8",
                       "0020|000e": f"1.2.826.0.1.3680043.2.1125.8.{len(modality)}.{ord(modality[0])}"}.items():
        img.SetMetaData(key, value)
    sitk.WriteImage(img, str(path))
    return path


def _opg_array(seed=2, size=(256, 512)):
    return make_opg(seed, size=size).image.array[0]


@pytest.mark.parametrize("modality,accepted", [("CT", False), ("MR", False), ("XC", False), ("PX", True),
                                               ("DX", True)])
def test_dental_dicom_modality(tmp_path, modality, accepted):
    vol = read_volume(_dicom_2d(tmp_path / f"{modality}.dcm", _opg_array(), modality))
    assert vol.metadata["modality"] == modality
    if accepted:
        assert mt.opg_to_gray(vol).shape == (256, 512)
    else:
        with pytest.raises(InputError, match=f"DICOM .* image \\(Modality {modality}\\); ToothAnalysis needs"):
            mt.opg_to_gray(vol)


def test_dental_colour_photograph_is_refused():
    photo = Volume(_photo()[None], components=3)
    with pytest.raises(InputError, match="colour picture"):
        mt.opg_to_gray(photo)
    # an X-ray stored as RGB (R = G = B), with a coloured annotation, is fine
    g = _opg_array()
    rgb = np.repeat(g[..., None], 3, -1)
    rgb[10:30, 10:120] = (255, 0, 0)
    assert mt.opg_to_gray(Volume(rgb[None], components=3)).shape == g.shape


@pytest.mark.parametrize("window", [(-160, 240), (-1000, 1000)])
def test_dental_ct_slice_png_is_refused(tmp_path, window):
    vol = read_volume(_ct_slice_png(tmp_path / "ct.png", window))
    with pytest.raises(InputError, match="like a CT or MR cross-section"):
        mt.opg_to_gray(vol)


def test_dental_square_or_tall_images_are_refused():
    rng = np.random.default_rng(0)
    for shape, words in (((300, 300), "square"), ((500, 300), "taller than wide")):
        with pytest.raises(InputError, match=words):
            mt.opg_to_gray(Volume((rng.random(shape) * 255).astype(np.uint8)[None]))


def _arch_boxes(scramble=False):
    """Detector-input (256 x 512) boxes of 16 teeth where a panoramic X-ray has them."""
    fdis, boxes = [], []
    for q in (1, 2, 3, 4):
        for t in range(1, 5):
            side = -1 if q in (1, 4) else 1  # patient's right on the image's left
            x = 256 + side * (12 + 24 * (t - 1))
            y = 100 if q in (1, 2) else 160
            fdis.append(10 * q + t)
            boxes.append((x - 10, y - 20, x + 10, y + 20))
    if scramble:
        rng = np.random.default_rng(3)
        boxes = [boxes[i] for i in rng.permutation(len(boxes))]
    return boxes, fdis


def test_dental_teeth_out_of_arch_order_are_flagged():
    vol = Volume(_opg_array()[None])
    boxes, fdis = _arch_boxes()
    good = mt.analyze(vol, StubDetector(boxes, fdis, [0.9] * 16), StubHENA())
    assert "input_warning" not in good.notes and good.notes["arch_order"].startswith("1.00 of")
    boxes, fdis = _arch_boxes(scramble=True)
    bad = mt.analyze(vol, StubDetector(boxes, fdis, [0.9] * 16), StubHENA())
    assert "not in the order of a dental arch" in bad.notes["input_warning"]
    assert bad.notes["warning"].startswith(bad.notes["input_warning"])
    assert mt.arch_order([]) [1] == 0


@pytest.mark.slow
def test_dental_demo_detector_flags_noise_but_not_an_opg():
    try:
        models = mt.load_mathena_models()
    except Exception:
        pytest.skip("demo MATHENA weights not available")
    opg = mt.analyze(make_opg(10, size=(256, 512)).image, models, None)
    assert "input_warning" not in opg.notes
    for seed in range(5, 9):
        noise = Volume((np.random.default_rng(seed).random((256, 512)) * 255).astype(np.uint8)[None])
        res = mt.analyze(noise, models, None)
        assert "not in the order of a dental arch" in res.notes["input_warning"] or \
            "detected: unless this is a panoramic dental X-ray" in res.notes["input_warning"]


@pytest.mark.slow
def test_dental_cli_warns_in_one_line_when_the_teeth_are_implausible(tmp_path, capsys):
    try:
        mt.load_mathena_models()
    except Exception:
        pytest.skip("demo MATHENA weights not available")
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(5).random((256, 512)) * 255).astype(np.uint8)).save(noise)
    assert main(["tooth", "analyze", str(noise), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    # which of the two warnings depends on what the detector makes of noise (few boxes, or many
    # out of arch order); either way one line saying the picture may be no panoramic X-ray
    assert len(err) == 1 and err[0].startswith("pantheon: warning: "), err
    assert ("the image is not one and its findings are meaningless" in err[0]
            or "not in the order of a dental arch" in err[0] and "findings are unreliable" in err[0]), err


@pytest.mark.slow
def test_dental_cli_refuses_ct_dicom_photo_ct_slice_and_bomb(tmp_path, capsys):
    inputs = {
        "ct.dcm": (_dicom_2d(tmp_path / "ct.dcm", _opg_array(), "CT"), "Modality CT"),
        "photo.png": (tmp_path / "photo.png", "colour picture"),
        "ctslice.png": (_ct_slice_png(tmp_path / "ctslice.png"), "cross-section"),
        "bomb.png": (_png_bomb(tmp_path / "bomb.png"), "40000 x 20000 pixels"),
    }
    Image.fromarray(_photo()).save(tmp_path / "photo.png")
    for name, (path, words) in inputs.items():
        out = tmp_path / f"out-{name}"
        _one_sentence_exit_2(["tooth", "analyze", str(path), "-o", str(out), "--quiet"], capsys, out, words)


def test_dental_limits_and_parameters():
    vol = Volume(np.tile(np.arange(700, dtype=np.uint8), (300, 1))[None])
    with pytest.raises(InputError, match=r"700 x 300 pixels .*more than the limit of 100000 pixels"):
        mt.opg_to_gray(vol, max_pixels=100_000)
    assert mt.opg_to_gray(vol, max_pixels=0).shape == (300, 700)
    det, hena = StubDetector([(100, 50, 140, 110)], [36], [0.9]), StubHENA()
    with pytest.raises(InputError, match="more than the limit"):
        mt.analyze(vol, det, hena, max_pixels=100_000)
    for kwargs, words in (({"batch_size": 0}, "batch size"), ({"score_thresh": 1.5}, "detection score threshold"),
                          ({"mask_thresh": -0.1}, "mask threshold")):
        with pytest.raises(InvalidParameter, match=words):
            mt.analyze(vol, det, hena, **kwargs)


# =========================================================================== NeoNet label maps
def _labels(array, like=None, segments=None):
    v = Volume(array, (2.0, 2.0, 3.0)) if like is None else like.with_array(array)
    if segments:
        v.metadata["segments"] = segments
    return v


@pytest.fixture(scope="module")
def liver_case():
    from test_neonet_pipeline import tiny_phantom
    mri, lab, _ = tiny_phantom(5)
    return mri, lab


def test_labels_refuse_images_and_foreign_labellings(liver_case):
    mri, lab = liver_case
    rng = np.random.default_rng(0)
    ct = mri.with_array(rng.integers(-1024, 1500, mri.shape).astype(np.int16))
    for vol, words in (
            (ct, r"negative values \(down to -1024\) \(like a CT in Hounsfield units\)"),
            (mri.with_array(mri.array.astype(np.float32) * 1.37), "fractional values"),
            (mri.with_array((mri.array.astype(np.int32) + 1500).astype(np.int16)), "values up to"),
            (mri.with_array(rng.integers(0, 200, mri.shape).astype(np.int16)), "distinct values"),
            (lab.with_array(np.where(lab.array > 0, lab.array + 4, 0).astype(np.uint8)), "BTCV organ map"),
            (lab.with_array(np.stack([lab.array] * 3, -1)), "component")):
        with pytest.raises(InputError, match=words):
            neonet.neonet_labels(vol)
        with pytest.raises(InputError, match=words):  # every entry point refuses it the same way
            neonet.synthesize(vol, neonet.NeoNetModels(neogen=object()), steps=2)


def test_labels_by_name_from_a_seg_nrrd():
    btcv = read_volume(SAMPLES / "PantheonAbdominalCTPhantom_Organs.seg.nrrd")  # liver is label 6
    out = neonet.neonet_labels(btcv)
    np.testing.assert_array_equal(out["array"] == neonet.LIVER, btcv.array == 6)  # not the spleen (1)
    assert not (out["array"] == neonet.TUMOUR).any() and "spleen" in out["ignored"]
    liver = read_volume(SAMPLES / "PantheonLiverMRIPhantom_Segments.seg.nrrd")
    out = neonet.neonet_labels(liver)
    np.testing.assert_array_equal(out["array"] == neonet.TUMOUR, liver.array == 2)
    # names that are neither liver nor tumour
    kidneys = _labels(np.ones((4, 5, 6), np.uint8), segments={1: "right kidney"})
    with pytest.raises(InputError, match="names its segments right kidney, and none is a liver or a tumour"):
        neonet.neonet_labels(kidneys)


def test_labels_by_name_from_a_slicer_colour_table(tmp_path):
    a = np.zeros((6, 8, 10), np.uint8)
    a[1:5, 2:6, 2:8] = 5
    a[2:4, 3:5, 3:6] = 7
    path = write_volume(Volume(a), tmp_path / "Segmentation-label.nii.gz")
    (tmp_path / "Segmentation-label_ColorTable.ctbl").write_text("0 Background 0 0 0 0\n5 Liver 1 1 1 255\n"
                                                                 "7 Tumor 2 2 2 255\n")
    out = neonet.neonet_labels(read_volume(path))
    np.testing.assert_array_equal(out["array"], np.where(a == 7, 2, np.where(a == 5, 1, 0)))


def test_labels_binary_and_known_values_still_work(liver_case):
    _, lab = liver_case
    assert neonet.neonet_labels(lab)["ignored"] == ["bile duct", "hepatic vessels"]
    binary = neonet.neonet_labels(lab.with_array((lab.array == 2).astype(np.uint8) * 255))
    assert binary["binary"] and ((binary["array"] == neonet.TUMOUR) == (lab.array == 2)).all()


def test_tumour_mask_on_another_grid_says_how(liver_case):
    mri, lab = liver_case
    moved = Volume(lab.array, lab.spacing, tuple(np.add(lab.origin, (10.0, 0.0, 0.0))), lab.direction)
    models = neonet.NeoNetModels(pattennet=object())
    with pytest.raises(InputError, match=r"geometry \(the mask is shifted by 10 mm from the MRI\)"):
        neonet.predict(mri, models, tumour_mask=moved)


def test_synthesis_parameters_in_plain_words(liver_case):
    _, lab = liver_case
    models = neonet.NeoNetModels(neogen=object())
    for kwargs, words in (({"steps": 0}, "number of DDIM steps must be a whole number between 1 and 1000, got 0"),
                          ({"steps": 2.5}, "whole number"), ({"n": 0}, "number of patches"),
                          ({"seed": -1}, "seed"), ({"pni": 2}, "PNI class")):
        with pytest.raises(InvalidParameter, match=words) as e:
            neonet.synthesize(lab, models, **kwargs)
        assert "num_inference_steps" not in str(e.value)


# =========================================================================== shapes, parameters, limits
def test_one_voxel_is_not_called_2d():
    one = Volume(np.zeros((1, 1, 1), np.int16))
    with pytest.raises(InputError, match=r"a single voxel \(1 x 1 x 1\)"):
        nem.check_ct(one)
    from pantheon.models.neonet.preprocess import check_mri
    with pytest.raises(InputError, match="a single voxel"):
        check_mri(one)
    with pytest.raises(InputError, match="a single voxel"):
        neonet.synthesize(Volume(np.ones((1, 1, 1), np.uint8)), neonet.NeoNetModels(neogen=object()))
    with pytest.raises(InputError, match="only 1 voxel thick"):
        nem.check_ct(Volume(np.zeros((5, 1, 7), np.int16)))
    with pytest.raises(InputError, match="2D"):
        nem.check_ct(Volume(np.zeros((1, 6, 7), np.int16)))


def test_nemesis_parameters_refused_before_any_work():
    from test_nemesis_pipelines import ct_volume
    with pytest.raises(InvalidParameter, match="batch size .* at least 1, got 0"):
        nem.load_engine(FIXTURE_WEIGHTS, device="cpu", batch_size=0)
    ct = ct_volume()
    centre = ct.ijk_to_world(np.array(ct.size_ijk) / 2)[0]
    for kwargs, words in (({"noise_std": -1}, "noise level must be a number between 0 and 1"),
                          ({"mask_ratio": (0.5, 1.0)}, "mask ratio"), ({"seed": -3}, "seed")):
        with pytest.raises(InvalidParameter, match=words):
            nem.reconstruct(ct, None, centre, **kwargs)
    with pytest.raises(InputError, match=r"The point \(2318\.7, -106\.3, -355\) \(LPS mm"):
        nem.similarity(ct, None, np.array([2318.7, -106.3, -355.0]))
    with pytest.raises(InputError, match="more than the limit of 1000 voxels"):
        nem.check_ct(ct, max_voxels=1000)
    assert issubclass(InvalidParameter, ValueError)  # callers that caught ValueError still do


def test_nemesis_cli_noise_batch_size_and_point(tmp_path, capsys):
    from test_nemesis_pipelines import ct_volume
    ct = write_volume(ct_volume(shape=(30, 40, 44)), tmp_path / "ct.nii.gz")
    common = ["--weights", FIXTURE_WEIGHTS, "--device", "cpu", "--quiet"]
    out = tmp_path / "o1"
    _one_sentence_exit_2(["nemesis", "reconstruct", str(ct), "-o", str(out), "--voxel", "5", "5", "5",
                          "--noise", "-1"] + common, capsys, out, ("noise level", "--noise"), "-1")
    out = tmp_path / "o2"
    _one_sentence_exit_2(["nemesis", "pca", str(ct), "-o", str(out), "--batch-size", "0"] + common,
                         capsys, out, ("batch size", "--batch-size"), "0")
    out = tmp_path / "o3"
    _one_sentence_exit_2(["nemesis", "similar", str(ct), "-o", str(out), "--point-lps", "2318.7", "-106.3",
                          "-355"] + common, capsys, out, "(2318.7, -106.3, -355)")
    one = write_volume(Volume(np.zeros((1, 1, 1), np.int16)), tmp_path / "one.nii.gz")
    out = tmp_path / "o4"
    _one_sentence_exit_2(["nemesis", "pca", str(one), "-o", str(out)] + common, capsys, out, "single voxel")


@pytest.fixture(scope="module")
def pni_files(tmp_path_factory):
    from test_neonet_pipeline import tiny_components, tiny_phantom

    from pantheon.models.neonet import save_neonet_component
    d = tmp_path_factory.mktemp("pni-hard")
    mri, lab, _ = tiny_phantom(5)
    write_volume(mri, d / "mri.nii.gz")
    write_volume(lab, d / "labels.nii.gz")
    rng = np.random.default_rng(1)
    write_volume(mri.with_array(rng.integers(-1024, 1200, mri.shape).astype(np.int16)), d / "ct.nii.gz")
    btcv = np.where(lab.array > 0, lab.array + 4, 0).astype(np.uint8)  # labels 5..8: another labelling
    btcv[:2] = 13
    write_volume(lab.with_array(btcv), d / "btcv.nii.gz")
    _, gen, net = tiny_components()
    paths = {k: str(save_neonet_component(m, d / f"{k}.safetensors")) for k, m in (("neogen", gen), ("pattennet", net))}
    return d, paths


def test_pni_cli_refuses_what_is_not_a_label_map(pni_files, tmp_path, capsys):
    d, m = pni_files
    cases = [(["synthesize", str(d / "ct.nii.gz"), "--neogen", m["neogen"]], "negative values"),
             (["synthesize", str(d / "mri.nii.gz"), "--neogen", m["neogen"]], "not a label map"),
             (["synthesize", str(d / "btcv.nii.gz"), "--neogen", m["neogen"]], "BTCV"),
             (["synthesize", str(d / "labels.nii.gz"), "--neogen", m["neogen"], "--steps", "0"],
              ("DDIM steps", "--steps")),
             (["predict", str(d / "mri.nii.gz"), "--tumour-mask", str(d / "mri.nii.gz"),
               "--pattennet", m["pattennet"]], "not a label map")]
    for n, (args, words) in enumerate(cases):
        out = tmp_path / f"o{n}"
        _one_sentence_exit_2(["pni"] + args + ["-o", str(out), "--quiet"], capsys, out, words)


def test_pni_synthesize_limit(liver_case):
    _, lab = liver_case
    with pytest.raises(InputError, match="more than the limit of 1000 voxels"):
        neonet.synthesize(lab, neonet.NeoNetModels(neogen=object()), max_voxels=1000)


# =========================================================================== --max-pixels on the command line
@pytest.mark.slow
def test_max_pixels_option_bounds_every_command(tmp_path, capsys, pni_files):
    """The stated per-command limit is the default; ``--max-pixels N`` lowers it, checked from the
    header before the model loads; 0 lifts it. The batch applies it per case."""
    from test_nemesis_pipelines import ct_volume
    ct = write_volume(ct_volume(shape=(30, 40, 44)), tmp_path / "ct.nii.gz")  # 52800 voxels
    common = ["--weights", FIXTURE_WEIGHTS, "--device", "cpu", "--quiet"]
    out = tmp_path / "n1"
    _one_sentence_exit_2(["nemesis", "pca", str(ct), "-o", str(out), "--max-pixels", "50000"] + common, capsys, out,
                         "more than the limit of 50000 voxels", "--max-pixels")
    assert main(["nemesis", "pca", str(ct), "-o", str(tmp_path / "n2"), "--max-pixels", "52800"] + common) == 0
    assert (tmp_path / "n2" / "pca.nii.gz").is_file()
    out = tmp_path / "n3"
    _one_sentence_exit_2(["nemesis", "pca", str(ct), "-o", str(out), "--max-pixels", "-5"] + common, capsys, out,
                         "--max-pixels")

    opg = tmp_path / "opg.png"
    Image.fromarray(_opg_array()).save(opg)
    out = tmp_path / "t1"
    _one_sentence_exit_2(["tooth", "analyze", str(opg), "-o", str(out), "--max-pixels", "1000", "--quiet"], capsys,
                         out, "more than the limit of 1000 pixels")
    d, m = pni_files
    out = tmp_path / "p1"
    _one_sentence_exit_2(["pni", "synthesize", str(d / "labels.nii.gz"), "--neogen", m["neogen"], "-o", str(out),
                          "--max-pixels", "1000", "--quiet"], capsys, out, "more than the limit of 1000 voxels")

    # the default is the command's stated limit; the help says so
    from pantheon.cli import build_parser
    for argv, limit in [(["nemesis", "pca", "x", "-o", "y"], 500_000_000), (["tooth", "analyze", "x", "-o", "y"],
                        50_000_000), (["pni", "predict", "x", "-o", "y"], 200_000_000),
                        (["batch", "nemesis-pca", "--input", "x", "-o", "y"], None)]:
        assert build_parser().parse_args(argv).max_pixels == limit, argv

    cases = tmp_path / "cases"
    cases.mkdir()
    write_volume(ct_volume(shape=(30, 40, 44)), cases / "big.nii.gz")
    write_volume(ct_volume(shape=(20, 40, 44)), cases / "small.nii.gz")  # 35200 voxels
    rc = main(["batch", "nemesis-pca", "--input", str(cases), "-o", str(tmp_path / "b"), "--weights",
               FIXTURE_WEIGHTS, "--device", "cpu", "--quiet", "--max-pixels", "40000"])
    err = capsys.readouterr().err
    assert rc == 1, err
    import json
    manifest = {c["case_id"]: c for c in json.loads((tmp_path / "b" / "manifest.json").read_text())["cases"]}
    assert {c: manifest[c]["state"] for c in manifest} == {"big": "failed", "small": "done"}
    assert "more than the limit of 40000 voxels" in manifest["big"]["error"]
