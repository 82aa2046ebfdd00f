"""``pantheon pni predict|synthesize|train|eval``: outputs, JSON summaries, one-sentence errors, exit 2,
no partial output. Tiny random-init models saved as safetensors stand in for the demo cards."""

import json

import numpy as np
import pytest
import test_neonet_pipeline as tnp

from pantheon.cli import main
from pantheon.io import read_volume, write_volume
from pantheon.io.volume import Volume
from pantheon.models.neonet import save_neonet_component
from pantheon.models.neonet.preprocess import MODEL_SPACING, PATCH_SHAPE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pni")
    mri, lab, info = tnp.tiny_phantom(5)
    write_volume(mri, d / "mri.nii.gz")
    write_volume(lab, d / "labels.nii.gz")
    write_volume(mri.with_array(mri.array.astype(np.float32) - 1024.0), d / "ct.nii.gz")
    write_volume(Volume(mri.array[4:5].copy(), mri.spacing, mri.origin, mri.direction), d / "slice.nrrd")
    write_volume(lab.with_array(np.zeros_like(lab.array)), d / "empty.nii.gz")
    seg, gen, net = tnp.tiny_components()
    paths = {}
    for kind, module in (("neoseg", seg), ("neogen", gen), ("pattennet", net)):
        paths[kind] = str(save_neonet_component(module, d / f"{kind}.safetensors"))
    return d, paths, info


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_predict_writes_outputs_in_input_geometry(files, capsys, tmp_path):
    d, m, info = files
    out = tmp_path / "out"
    rc = main(["pni", "predict", str(d / "mri.nii.gz"), "-o", str(out), "--tumour-mask", str(d / "labels.nii.gz"),
               "--pattennet", m["pattennet"], "--quiet", "--no-preview"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    size_mm = [n * s for n, s in zip(PATCH_SHAPE[::-1], MODEL_SPACING)]  # the default model grid
    assert 0 < summary["scalars"]["pni_probability"] < 1
    assert summary["crop_box"][0]["size_i_mm"] == pytest.approx(size_mm[0])
    doc = json.loads((out / "result.json").read_text())
    assert doc["outputs"]["tumour"]["kind"] == "labels" and doc["outputs"]["pni_attention"]["kind"] == "heatmap"
    assert json.loads(doc["notes"]["crop_box"])["size_mm"] == pytest.approx(size_mm)
    mri = read_volume(d / "mri.nii.gz")
    for name in ("tumour", "pni_attention"):
        v = read_volume(out / f"{name}.nii.gz")
        assert v.same_geometry(mri, atol=1e-4)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_synthesize_writes_patches(files, capsys, tmp_path):
    d, m, _ = files
    out = tmp_path / "syn"
    rc = main(["pni", "synthesize", str(d / "labels.nii.gz"), "-o", str(out), "--neogen", m["neogen"],
               "--pni", "0", "-n", "1", "--steps", "2", "--seed", "3", "--quiet"])
    assert rc == 0
    json.loads(capsys.readouterr().out)
    v = read_volume(out / "synthetic_mri_1.nii.gz")
    assert v.same_geometry(read_volume(d / "labels.nii.gz"), atol=1e-4)
    assert np.isfinite(v.array).all() and (v.array != 0).any()


@pytest.mark.parametrize("args, words", [
    (["predict", "{d}/ct.nii.gz", "--tumour-mask", "{d}/labels.nii.gz"], "CT"),
    (["predict", "{d}/slice.nrrd"], "2D"),
    (["predict", "{d}/mri.nii.gz", "--tumour-mask", "{d}/empty.nii.gz"], "No tumour was found"),
    (["predict", "{d}/mri.nii.gz", "--pattennet", "{d}/missing.safetensors"], "does not exist"),
    (["synthesize", "{d}/empty.nii.gz"], "empty"),
    (["train", "--stage", "seg"], "--phantoms"),
    (["eval"], "--phantoms"),
])
def test_bad_input_exit_2_one_sentence_no_output(files, capsys, tmp_path, args, words):
    d, m, _ = files
    out = tmp_path / "bad"
    argv = ["pni"] + [a.format(d=d) for a in args] + ["-o", str(out), "--quiet"]
    if args[0] == "predict":
        argv += ["--neoseg", m["neoseg"]] + ([] if "--pattennet" in args else ["--pattennet", m["pattennet"]])
    if args[0] == "synthesize":
        argv += ["--neogen", m["neogen"]]
    if args[0] == "eval":
        argv.remove("-o"), argv.remove(str(out))
    assert main(argv) == 2
    err = _err(capsys)
    assert err.startswith("pantheon: error:") and words in err and err.count("\n") == 0
    assert not out.exists() or not any(out.iterdir())


def test_argument_errors_exit_2(files):
    d, _, _ = files
    with pytest.raises(SystemExit) as e:
        main(["pni", "synthesize", str(d / "labels.nii.gz"), "-o", str(d / "x"), "--pni", "3"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["pni", "train", "--stage", "gan", "--phantoms", "1", "-o", str(d / "x")])
    assert e.value.code == 2


def test_train_calls_train_stage(monkeypatch, capsys, tmp_path):
    import pantheon.train.neonet as tn
    seen = {}

    def fake(stage, data, out_dir, steps=200, resume=True, progress=None, log=print, **kw):
        from pantheon.train.loop import TrainResult
        seen.update(stage=stage, data=data, out_dir=str(out_dir), steps=steps, resume=resume, **kw)
        return TrainResult(tmp_path / "w.safetensors", steps)

    monkeypatch.setattr(tn, "train_stage", fake)
    assert main(["pni", "train", "--stage", "cls", "--phantoms", "3", "--seed", "10", "-o", str(tmp_path),
                 "--steps", "7", "--restart", "--quiet"]) == 0
    assert seen["stage"] == "cls" and seen["data"] == [10, 11, 12] and seen["steps"] == 7 and not seen["resume"]
    assert seen["neoseg"] is None
    assert json.loads(capsys.readouterr().out)["weights"].endswith("w.safetensors")
    assert main(["pni", "train", "--stage", "cls", "--phantoms", "3", "-o", str(tmp_path), "--neoseg",
                 "seg.safetensors", "--quiet"]) == 0
    assert seen["neoseg"] == "seg.safetensors"  # the classifier also learns NeoSeg's crops
    capsys.readouterr()
    assert main(["pni", "train", "--stage", "vae", "--phantoms", "3", "-o", str(tmp_path), "--neoseg",
                 "seg.safetensors", "--quiet"]) == 0
    assert seen["neoseg"] is None  # only the classifier stage reads it


def test_eval_prints_json(files, capsys):
    _, m, _ = files
    assert main(["pni", "eval", "--phantoms", "2", "--seed", "1", "--pattennet", m["pattennet"], "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 2 and "auc" in doc
