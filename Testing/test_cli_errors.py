"""Bad input, bad environment, end to end: the real ``pantheon`` command in a subprocess.

Every expected failure is exactly one line on stderr (``pantheon: error: ...``), exit status 2, no
traceback, nothing on stdout and no output files (and what the user had is untouched).
"""

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import NEMESIS_FIXTURES

FIXTURE_WEIGHTS = str(NEMESIS_FIXTURES / "checkpoint.pt")
PANTHEON = [sys.executable, "-m", "pantheon"]


def _drop_root_powers():  # pragma: no cover - runs in the child before exec
    """As root, chmod means nothing: drop the capabilities that bypass it (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH, CAP_FOWNER) from the bounding set, so the exec'd command is an ordinary user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli(*argv, timeout=180, ordinary_user=False, **kw):
    return subprocess.run(PANTHEON + [str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_drop_root_powers if ordinary_user and os.geteuid() == 0 else None, **kw)


def one_sentence(r) -> str:
    """The single error line of a failed command (asserting exit 2, one line, no traceback, no stdout)."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("pantheon: error: "), r.stderr
    assert r.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from PIL import Image

    from pantheon.io import write_volume
    from pantheon.synth import make_abdomen_phantom
    from pantheon.synth.opg import make_opg
    d = tmp_path_factory.mktemp("cli-errors-in")
    ct, labels = make_abdomen_phantom(0, shape=(32, 48, 48))
    write_volume(ct, d / "ct.nii.gz")
    write_volume(labels, d / "labels.nii.gz")
    Image.fromarray(make_opg(2, size=(256, 512)).image.array[0]).save(d / "opg.png")
    (d / "cases").mkdir()
    write_volume(ct, d / "cases" / "ct.nii.gz")
    return d


def commands(d: Path):
    """Every command that writes an output folder, with arguments that are valid but for ``-o``."""
    ct, w = d / "ct.nii.gz", ["--weights", FIXTURE_WEIGHTS]
    return {
        "demo": ["demo", "--quiet"],
        "nemesis features": ["nemesis", "features", ct, *w],
        "nemesis organs": ["nemesis", "organs", ct, *w],
        "nemesis pca": ["nemesis", "pca", ct, *w],
        "nemesis similar": ["nemesis", "similar", ct, "--voxel", "10", "10", "10", *w],
        "nemesis reconstruct": ["nemesis", "reconstruct", ct, "--voxel", "10", "10", "10", *w],
        "nemesis train-probe": ["nemesis", "train-probe", "--phantoms", "2", "--epochs", "1", *w],
        "nemesis pretrain": ["nemesis", "pretrain", "--phantoms", "1", "--steps", "1", "--quiet"],
        "nemesis build-demo-weights": ["nemesis", "build-demo-weights", "--steps", "1", "--cases", "2", "--quiet"],
        "tooth analyze": ["tooth", "analyze", d / "opg.png"],
        "tooth train": ["tooth", "train", "--stage", "detector", "--synthetic", "1", "--steps", "1"],
        "pni predict": ["pni", "predict", ct],
        "pni synthesize": ["pni", "synthesize", d / "labels.nii.gz", "--steps", "2"],
        "pni train": ["pni", "train", "--stage", "seg", "--phantoms", "1", "--steps", "1"],
        "pni eval": ["pni", "eval", "--phantoms", "2", "--steps", "1"],
        "batch": ["batch", "nemesis-pca", "--input", d / "cases", "--workers", "1"],
    }


COMMANDS = list(commands(Path(".")))


# ---------------------------------------------------------------------------- unwritable outputs
@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_that_is_a_file_is_refused_in_one_sentence(command, inputs, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("the user's file")
    line = one_sentence(cli(*commands(inputs)[command], "-o", target, "--quiet", timeout=120))
    assert str(target) in line and "file" in line
    assert target.read_text() == "the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.slow
def test_an_output_in_a_read_only_folder_is_refused_in_one_sentence(command, inputs, tmp_path):
    ro = tmp_path / "read-only"
    ro.mkdir()
    (ro / "kept.txt").write_text("kept")
    ro.chmod(0o555)
    try:
        for out in (ro / "new", ro):  # a folder to create inside it, and the folder itself
            line = one_sentence(cli(*commands(inputs)[command], "-o", out, "--quiet", timeout=120,
                                    ordinary_user=True))
            assert str(ro) in line and ("writ" in line or "permission" in line.lower()), line
            assert sorted(p.name for p in ro.iterdir()) == ["kept.txt"]
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------- devices
DEVICE_COMMANDS = ["demo", "nemesis features", "nemesis organs", "nemesis pca", "nemesis similar",
                   "nemesis reconstruct", "nemesis train-probe", "nemesis pretrain", "pni predict",
                   "pni synthesize", "batch"]


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_gpu_is_refused_in_one_sentence(command, inputs, tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    line = one_sentence(cli(*commands(inputs)[command], "-o", out, "--device", "gpu", "--quiet"))
    assert "gpu" in line and "cuda" in line and "cpu" in line
    assert not out.exists()
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
def test_cuda_without_a_gpu_is_one_sentence_for_pretrain(inputs, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    line = one_sentence(cli(*commands(inputs)["nemesis pretrain"], "-o", out, "--device", "cuda"))
    assert "CUDA" in line and "cpu" in line
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------- training data
@pytest.mark.slow
def test_train_probe_on_an_empty_data_folder_is_one_sentence(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "probe"
    line = one_sentence(cli("nemesis", "train-probe", "--data", data, "-o", out, "--weights", FIXTURE_WEIGHTS,
                            "--quiet"))
    assert str(data) in line and "images" in line
    assert not out.exists()
    (data / "images").mkdir()
    (data / "labels").mkdir()
    line = one_sentence(cli("nemesis", "train-probe", "--data", data, "-o", out, "--weights", FIXTURE_WEIGHTS,
                            "--quiet"))
    assert "No cases" in line and not out.exists()
    table = tmp_path / "cases.csv"
    table.write_text("path,mask\n")
    line = one_sentence(cli("nemesis", "train-probe", "--data", table, "-o", out, "--weights", FIXTURE_WEIGHTS,
                            "--quiet"))
    assert "image" in line and "label" in line and not out.exists()


@pytest.mark.slow
def test_pretrain_on_an_empty_data_folder_is_one_sentence(tmp_path):
    data = tmp_path / "cts"
    data.mkdir()
    out = tmp_path / "run"
    line = one_sentence(cli("nemesis", "pretrain", "--data", data, "-o", out, "--steps", "1", "--quiet"))
    assert str(data) in line
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("command, args, option", [
    ("nemesis reconstruct", ["--noise", "-1"], "--noise"),
    ("nemesis reconstruct", ["--noise", "nan"], "--noise"),
    ("nemesis reconstruct", ["--mask-ratio", "1.5"], "--mask-ratio"),
    ("nemesis pca", ["--batch-size", "0"], "--batch-size"),
    ("nemesis features", ["--stride", "0"], "--stride"),
    ("nemesis pretrain", ["--batch-size", "0"], "--batch-size"),
    ("nemesis pretrain", ["--steps", "0"], "--steps"),
    ("nemesis train-probe", ["--epochs", "0"], "--epochs"),
    ("nemesis train-probe", ["--holdout", "1.5"], "--holdout"),
    ("nemesis train-probe", ["--phantoms", "-1"], "--phantoms"),
    ("tooth analyze", ["--score-thresh", "2"], "--score-thresh"),
    ("pni synthesize", ["-n", "0"], "-n"),
    ("pni synthesize", ["--steps", "0"], "--steps"),
    ("pni eval", ["--folds", "1"], "--folds"),
    ("batch", ["--workers", "0"], "--workers"),
])
def test_impossible_numbers_are_refused_by_the_command_line(command, args, option, inputs, tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    line = one_sentence(cli(*commands(inputs)[command], "-o", out, *args, "--quiet"))
    assert option in line and args[-1] in line, line
    assert "usage" not in line
    assert not out.exists()
    assert time.monotonic() - t0 < 30  # refused before any model is loaded


@pytest.mark.slow
def test_a_point_outside_the_image_is_in_the_users_own_coordinates(inputs, tmp_path):
    out = tmp_path / "out"
    ct = inputs / "ct.nii.gz"
    line = one_sentence(cli("nemesis", "similar", ct, "-o", out, "--point", "1000", "-1000", "1000",
                            "--weights", FIXTURE_WEIGHTS, "--quiet"))
    assert "np." not in line and "float64" not in line
    assert "--point" in line and "1000" in line and "RAS" in line
    line = one_sentence(cli("nemesis", "reconstruct", ct, "-o", out, "--voxel", "1000", "10", "10",
                            "--weights", FIXTURE_WEIGHTS, "--quiet"))
    assert "np." not in line and "--voxel" in line and "1000" in line
    assert not out.exists()


@pytest.mark.slow
def test_diffusion_steps_beyond_the_schedule_name_the_option(tmp_path):
    import test_neonet_pipeline as tnp

    from pantheon.io import write_volume
    from pantheon.models.neonet import save_neonet_component
    _, labels, _ = tnp.tiny_phantom(5)
    write_volume(labels, tmp_path / "labels.nii.gz")
    _, gen, _ = tnp.tiny_components()
    save_neonet_component(gen, tmp_path / "neogen.safetensors")
    out = tmp_path / "out"
    line = one_sentence(cli("pni", "synthesize", tmp_path / "labels.nii.gz", "-o", out, "--neogen",
                            tmp_path / "neogen.safetensors", "--steps", "100000", "--quiet"))
    assert "num_inference_steps" not in line and "--steps" in line and "100000" in line
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.slow
def test_a_random_bytes_checkpoint_is_our_sentence_not_pytorchs_advice(inputs, tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    text = tmp_path / "notes.pt"
    text.write_text("hello world, this is not a checkpoint")
    for path in (bad, text):
        out = tmp_path / f"out-{path.stem}"
        line = one_sentence(cli("nemesis", "pca", inputs / "ct.nii.gz", "-o", out, "--weights", path, "--quiet"))
        assert str(path) in line
        assert "weights_only" not in line and "torch.load" not in line and "pytorch.org" not in line, line
        assert not out.exists() or not any(out.iterdir())


def test_checkpoints_translate_torch_load_failures(tmp_path):
    import argparse

    import torch

    from pantheon.errors import CheckpointError
    from pantheon.models.checkpoints import torch_load_tensors
    good = tmp_path / "good.pt"
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "step": 3}, good)
    assert torch_load_tensors(good)["step"] == 3
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(torch_load_tensors(legacy)["w"], torch.ones(2))
    cases = {"random.pt": None, "empty.pt": b"", "zeros.pt": bytes(100), "truncated.pt": good.read_bytes()[:300],
             "object.pt": None, "text.pt": b"hello world"}
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(1).bytes(4000))
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "object.pt")
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            torch_load_tensors(tmp_path / name, "NEMESIS")
        msg = str(e.value)
        assert "\n" not in msg and str(tmp_path / name) in msg, msg
        assert "weights_only" not in msg and "torch.load" not in msg and "pytorch.org" not in msg, msg
        if name == "object.pt":
            assert "argparse.Namespace" in msg and "code" in msg
    with pytest.raises(CheckpointError, match="does not exist"):
        torch_load_tensors(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------- broken pipes
@pytest.mark.slow
def test_a_closed_stdout_is_no_traceback(inputs, tmp_path):
    # `pantheon ... | head -c 10` where head has gone before pantheon prints: EPIPE on stdout
    proc = subprocess.Popen(PANTHEON + ["nemesis", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 2) and "Traceback" not in err and len(err.splitlines()) <= 1, err

    out = tmp_path / "out"
    proc = subprocess.Popen(PANTHEON + ["nemesis", "pca", str(inputs / "ct.nii.gz"), "-o", str(out), "--weights",
                                        FIXTURE_WEIGHTS, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 2, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pantheon: error:") and str(out) in lines[0], err
    assert sorted(p.name for p in out.iterdir()) == ["pca.nii.gz", "preview.png", "result.json"]  # complete

    r = subprocess.run(" ".join(map(str, PANTHEON)) + " nemesis --help | head -c 10", shell=True,
                       capture_output=True, text=True, timeout=60)
    assert len(r.stdout) == 10 and "Traceback" not in r.stderr, r.stderr
