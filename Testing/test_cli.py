"""The ``pantheon`` command line: outputs on disk in the input's geometry, and clean failures."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import NEMESIS_FIXTURES
from test_nemesis_pipelines import ct_volume

from pantheon.cli import main
from pantheon.io import Volume, read_volume, write_volume
from pantheon.models.nemesis import OrganProbe
from pantheon.models.nemesis.probe import save_probe
from pantheon.registry import sha256_file

FIXTURE_WEIGHTS = str(NEMESIS_FIXTURES / "checkpoint.pt")


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "ct.nii.gz"
    write_volume(ct_volume(shape=(30, 40, 44)), path)
    return path


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pca_writes_volumes_json_and_preview_in_input_geometry(ct_file, tmp_path, capsys):
    out = tmp_path / "pca"
    code, stdout, err = run(["nemesis", "pca", str(ct_file), "-o", str(out), "--weights", FIXTURE_WEIGHTS, "--quiet"],
                            capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["pca.nii.gz", "preview.png", "result.json"]
    vol, pca = read_volume(ct_file), read_volume(out / "pca.nii.gz")
    assert pca.components == 3 and pca.same_geometry(vol)
    doc = json.loads((out / "result.json").read_text())
    assert doc["outputs"]["pca"]["components"] == 3 and doc["notes"]["weights"] == "checkpoint.pt"
    assert json.loads(stdout)["files"]


@pytest.mark.slow
def test_similar_with_a_ras_point_and_reconstruct_with_a_voxel(ct_file, tmp_path, capsys):
    vol = read_volume(ct_file)
    lps = vol.ijk_to_world([[20, 18, 12]])[0]
    ras = [-lps[0], -lps[1], lps[2]]
    code, _, err = run(["nemesis", "similar", str(ct_file), "-o", str(tmp_path / "s"), "--weights", FIXTURE_WEIGHTS,
                        "--point", *map(str, ras), "--quiet"], capsys)
    assert code == 0, err
    sim = read_volume(tmp_path / "s" / "similarity.nii.gz")
    assert sim.same_geometry(vol) and sim.array[12, 18, 20] > 0.9
    code, _, err = run(["nemesis", "reconstruct", str(ct_file), "-o", str(tmp_path / "r"), "--weights", FIXTURE_WEIGHTS,
                        "--voxel", "20", "18", "12", "--mask-ratio", "0.5", "--seed", "1", "--quiet"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["error.nii.gz", "masked_input.nii.gz", "preview.png", "reconstruction.nii.gz", "result.json"]
    scalars = json.loads((tmp_path / "r" / "result.json").read_text())["scalars"]
    assert set(scalars) == {"psnr_db", "ssim", "psnr_masked_db", "ssim_masked", "psnr_raw_db", "masked_fraction"}


def test_organs_with_a_probe_file(ct_file, tmp_path, capsys):
    probe_path = tmp_path / "probe.safetensors"
    save_probe(OrganProbe(64), probe_path, sha256_file(FIXTURE_WEIGHTS))
    code, _, err = run(["nemesis", "organs", str(ct_file), "-o", str(tmp_path / "o"), "--weights", FIXTURE_WEIGHTS,
                        "--probe", str(probe_path), "--organs", "liver", "left kidney", "--format", "nrrd", "--quiet"],
                       capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["left_kidney.nrrd", "liver.nrrd", "preview.png", "result.json"]
    assert read_volume(tmp_path / "o" / "liver.nrrd").same_geometry(read_volume(ct_file))


def test_features_npz(ct_file, tmp_path, capsys):
    code, _, err = run(["nemesis", "features", str(ct_file), "-o", str(tmp_path / "f"), "--weights", FIXTURE_WEIGHTS,
                        "--stride", "16", "--quiet"], capsys)
    assert code == 0, err
    with np.load(tmp_path / "f" / "features.npz") as z:
        assert z["tokens"].shape[-1] == 64 and z["centres_lps"].shape == z["tokens"].shape[:3] + (3,)
        assert list(z["stride"]) == [16, 16, 16]


def _bad_inputs(tmp):
    import SimpleITK as sitk
    png = tmp / "xray.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8)),
                    str(png))
    nan = tmp / "nan.nii.gz"
    arr = ct_volume().array.copy()
    arr[3, 4, 5] = np.nan
    write_volume(Volume(arr), nan)
    mri = tmp / "mri.nii.gz"
    write_volume(Volume(np.random.default_rng(1).uniform(0, 1500, (20, 30, 30)).astype(np.float32)), mri)
    empty = tmp / "empty.nii.gz"
    empty.write_bytes(b"")
    truncated = tmp / "truncated.nii.gz"
    write_volume(ct_volume(), tmp / "whole.nii.gz")
    truncated.write_bytes((tmp / "whole.nii.gz").read_bytes()[:2000])
    return {"2D": png, "NaN": nan, "not a CT": mri, "empty": empty, "truncated|corrupt": truncated}


@pytest.mark.parametrize("problem", ["2D", "NaN", "not a CT", "empty", "truncated|corrupt"])
def test_bad_input_one_sentence_nonzero_exit_no_output(problem, tmp_path, capsys):
    bad = _bad_inputs(tmp_path)[problem]
    out = tmp_path / "out"
    code, stdout, err = run(["nemesis", "pca", str(bad), "-o", str(out), "--weights", FIXTURE_WEIGHTS, "--quiet"],
                            capsys)
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("pantheon: error:")
    import re
    assert re.search(problem, lines[0], re.I), lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert stdout == ""


def test_checkpoint_that_is_not_nemesis(ct_file, tmp_path, capsys):
    other = tmp_path / "resnet.pt"
    torch.save({"model_state_dict": {"conv1.weight": torch.zeros(4, 1, 3, 3)}}, other)
    out = tmp_path / "out"
    code, _, err = run(["nemesis", "pca", str(ct_file), "-o", str(out), "--weights", str(other), "--quiet"], capsys)
    assert code == 2 and "not a NEMESIS checkpoint" in err
    assert not out.exists() or not any(out.iterdir())
    code, _, err = run(["nemesis", "pca", str(ct_file), "-o", str(out), "--weights", str(tmp_path / "missing.pt")],
                       capsys)
    assert code == 2 and "does not exist" in err


def test_failure_midway_leaves_existing_outputs_untouched(ct_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pca.nii.gz").write_bytes(b"the user's earlier result")
    import pantheon.outputs as outputs

    def boom(*a, **k):
        import errno
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(outputs, "save_preview", boom, raising=False)
    import pantheon.preview as preview
    monkeypatch.setattr(preview, "save_preview", boom)
    assert main(["nemesis", "pca", str(ct_file), "-o", str(out), "--weights", FIXTURE_WEIGHTS, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pantheon: error:") and "disk is full" in err[0], err  # no traceback
    assert sorted(p.name for p in out.iterdir()) == ["pca.nii.gz"]
    assert (out / "pca.nii.gz").read_bytes() == b"the user's earlier result"


def test_help_lists_every_action():
    out = subprocess.run([sys.executable, "-m", "pantheon", "nemesis", "--help"], capture_output=True, text=True,
                         encoding="utf-8")
    assert out.returncode == 0
    for action in ["features", "reconstruct", "organs", "pca", "similar", "train-probe", "pretrain"]:
        assert action in out.stdout
    out = subprocess.run([sys.executable, "-m", "pantheon", "nemesis", "reconstruct", "--help"], capture_output=True,
                         text=True, encoding="utf-8")
    assert "--mask-ratio" in out.stdout and "RAS" in out.stdout


@pytest.mark.slow
def test_pretrain_resumes_where_it_stopped(tmp_path, capsys):
    args = ["nemesis", "pretrain", "--phantoms", "1", "--batch-size", "1", "--embed-dim", "32", "--superpatch", "32",
            "--checkpoint-every", "1", "-o", str(tmp_path / "run"), "--quiet", "--device", "cpu"]
    assert main(args + ["--steps", "2"]) == 0
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert first["step"] == 2 and len(first["history"]) == 2
    assert main(args + ["--steps", "3"]) == 0
    second = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert second["step"] == 3 and second["history"][:2] == first["history"]
    assert (tmp_path / "run" / "nemesis.safetensors").is_file()
    capsys.readouterr()
    # a damaged checkpoint is never trained over: the reason, and how to start afresh
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    code, _, err = run(args + ["--steps", "4"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"pantheon: error: Cannot resume from {ckpt}: Checkpoint {ckpt} is truncated or corrupted and cannot be "
        "read (PytorchStreamReader failed reading zip archive: failed finding central directory); delete it, or "
        "rerun with --restart to start afresh."]
    assert "weights_only" not in err and len(ckpt.read_bytes()) == 200
    assert main(args + ["--steps", "1", "--restart"]) == 0
    assert torch.load(ckpt, weights_only=True)["step"] == 1


@pytest.mark.slow
def test_train_probe_from_a_folder_writes_probe_card_and_metrics(tmp_path, capsys):
    from pantheon.models.nemesis.probe import load_probe
    from pantheon.registry import load_card
    from pantheon.synth import make_abdomen_phantom
    for sub in ("images", "labels"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for n in range(3):
        ct, lab = make_abdomen_phantom(n, shape=(40, 64, 64))
        write_volume(ct, tmp_path / "data" / "images" / f"case{n}.nii.gz")
        write_volume(lab, tmp_path / "data" / "labels" / f"case{n}.nii.gz")
    out = tmp_path / "probe"
    code, stdout, err = run(["nemesis", "train-probe", "--data", str(tmp_path / "data"), "-o", str(out),
                             "--weights", FIXTURE_WEIGHTS, "--epochs", "20", "--quiet"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "probe.card.json", "probe.safetensors"]
    card = load_card(out / "probe.card.json")
    assert card.sha256 == sha256_file(out / "probe.safetensors")
    assert card.extra["encoder_sha256"] == sha256_file(FIXTURE_WEIGHTS)
    load_probe(out / "probe.safetensors", sha256_file(FIXTURE_WEIGHTS))
    assert json.loads((out / "metrics.json").read_text())["cases"] == {"train": 2, "held_out": 1}
    # a label folder missing a case is refused with one sentence
    (tmp_path / "data" / "labels" / "case2.nii.gz").unlink()
    code, _, err = run(["nemesis", "train-probe", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "p2"),
                        "--weights", FIXTURE_WEIGHTS, "--quiet"], capsys)
    assert code == 2 and "No label map" in err
