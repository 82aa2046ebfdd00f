"""``pantheon tooth analyze|train|eval`` (in-process, tiny random-init weights)."""

import json

import numpy as np
import pytest
import torch

from pantheon.cli import main
from pantheon.models.mathena import HENA, MATHEDetector, save_mathena


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("tooth-cli-w")
    torch.manual_seed(1)
    save_mathena(MATHEDetector(widths=(8, 16, 32, 32, 32), neck_channels=16, num_vss=1, bifpn_repeats=1,
                               head_convs=1, d_state=4), d / "det.safetensors")
    save_mathena(HENA(embed_dim=8, depths=(1, 1), d_state=4), d / "hena.safetensors")
    return str(d / "det.safetensors"), str(d / "hena.safetensors")


@pytest.fixture(scope="module")
def opg_png(tmp_path_factory):
    from PIL import Image

    from pantheon.synth.opg import make_opg
    p = tmp_path_factory.mktemp("tooth-cli-in") / "opg.png"
    Image.fromarray(make_opg(2, size=(256, 512)).image.array[0]).convert("RGB").save(p)  # RGB on purpose
    return p


@pytest.mark.slow
def test_analyze_writes_outputs(weights, opg_png, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["tooth", "analyze", str(opg_png), "-o", str(out), "--detector", weights[0], "--hena", weights[1],
               "--score-thresh", "0", "--format", "nrrd", "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    names = {p.name for p in out.iterdir()}
    assert {"teeth.nrrd", "caries.nrrd", "anomaly.nrrd", "result.json", "chart.png", "preview.png"} <= names
    doc = json.loads((out / "result.json").read_text())
    assert doc["tables"]["findings"] and doc["outputs"]["teeth"]["kind"] == "labels"
    assert summary["findings"] == doc["tables"]["findings"]
    assert doc["tables"]["findings"][0]["caries_area_mm2"] is None  # PNG: spacing unknown
    from pantheon.io import read_volume
    teeth = read_volume(out / "teeth.nrrd")
    assert teeth.shape == (1, 256, 512) and teeth.components == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_analyze_bad_inputs_exit_2(weights, opg_png, tmp_path, capsys):
    from PIL import Image

    from pantheon.io import write_volume
    from pantheon.io.volume import Volume
    tiny = tmp_path / "tiny.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)).save(tiny)
    vol3d = tmp_path / "ct.nrrd"
    write_volume(Volume(np.random.default_rng(0).random((4, 80, 90)).astype(np.float32)), vol3d)
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((100, 200), 9, np.uint8)).save(flat)
    for path, words in ((tiny, "at least 64"), (vol3d, "3D volume"), (flat, "constant"),
                        (tmp_path / "nope.png", "no such file")):
        out = tmp_path / f"out-{path.stem}"
        rc = main(["tooth", "analyze", str(path), "-o", str(out), "--detector", weights[0], "--hena", weights[1],
                   "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2, path
        assert words in err and err.count("\n") == 1, err
        assert not out.exists() or not any(out.iterdir())
    # a missing weights file is one sentence too
    rc = main(["tooth", "analyze", str(opg_png), "-o", str(tmp_path / "o2"), "--detector",
               str(tmp_path / "x.safetensors"), "--quiet"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_train_and_eval_argument_errors(tmp_path, capsys):
    rc = main(["tooth", "eval", "--quiet"])
    assert rc == 2 and "--synthetic" in capsys.readouterr().err
    rc = main(["tooth", "train", "--stage", "carseg", "--data", "x.json", "-o", str(tmp_path / "run"), "--quiet"])
    assert rc == 2 and "--images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tooth", "train", "--stage", "bogus", "--synthetic", "1", "-o", str(tmp_path / "run")])


def test_eval_synthetic_smoke(weights, capsys):
    pytest.importorskip("pantheon.train.mathena")
    rc = main(["tooth", "eval", "--synthetic", "1", "--seed", "3", "--detector", weights[0], "--hena", weights[1],
               "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert isinstance(summary["metrics"], dict) and summary["metrics"]
    assert "per crop" in summary["caries_dice_convention"]
