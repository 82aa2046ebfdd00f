"""NEMESIS's CPU int8 path: the accuracy gates against fp32 on the demo model, the cache of
quantised weights (built once, loaded without code, rebuilt when damaged), and the switches that
choose it (CLI, batch, panel parameters)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pantheon.cli import main
from pantheon.errors import InvalidParameter
from pantheon.io import write_volume
from pantheon.models.nemesis import int8
from pantheon.pipelines import nemesis as nem
from pantheon.synth import make_abdomen_phantom
from pantheon.train import int8_gates as gates

HELD_OUT_SEEDS = (20_000, 20_001)  # disjoint from the demo's pretraining and probe phantoms


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PANTHEON_CACHE_DIR", str(tmp_path / "cache" / "weights"))
    return tmp_path / "cache" / "int8"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    import os
    old = os.environ.get("PANTHEON_CACHE_DIR")
    os.environ["PANTHEON_CACHE_DIR"] = str(tmp_path_factory.mktemp("c") / "weights")
    try:
        return nem.load_engine(device="cpu"), nem.load_engine(device="cpu", precision="int8")
    finally:
        if old is None:
            os.environ.pop("PANTHEON_CACHE_DIR")
        else:
            os.environ["PANTHEON_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def held_out():
    return [make_abdomen_phantom(s, shape=(96, 144, 144)) for s in HELD_OUT_SEEDS]


@pytest.mark.slow
def test_int8_tokens_match_fp32(engines, held_out):
    from pantheon.train.nemesis import held_out_superpatches
    fp32, q = engines
    superpatches = held_out_superpatches([ct for ct, _ in held_out], fp32.superpatch, 6, seed=3)
    cos = gates.token_cosine(fp32, q, superpatches)
    assert cos["min"] >= gates.TOKEN_COSINE_MIN, cos
    assert 0 < cos["max_abs_diff"] < 0.5  # int8 really ran: not bit-identical to fp32
    # every Linear is quantised, q|k|v included; the fp32 engine's model is untouched
    from torch.ao.nn.quantized import dynamic as nnqd
    assert not [n for n, m in q.model.named_modules() if type(m) is torch.nn.Linear]
    assert all(isinstance(m.in_proj, nnqd.Linear) for m in q.model.modules() if isinstance(m, int8.ProjectedAttention))
    from pantheon.models.nemesis.mae import SelfAttention
    assert sum(isinstance(m, int8.ProjectedAttention) for m in q.model.modules()) == \
        sum(isinstance(m, SelfAttention) for m in fp32.model.modules()) > 0
    assert not any(isinstance(m, nnqd.Linear) for m in fp32.model.modules())
    assert q.precision == "int8" and q.device.type == "cpu"


@pytest.mark.slow
def test_int8_probe_auroc_and_maps_pass_the_gates(engines, held_out):
    fp32, q = engines
    probe = nem.load_probe_for(fp32)
    auroc = gates.probe_auroc(fp32, q, probe, held_out, stride=32)  # ~150 superpatches: one rank swap < 0.001
    assert auroc["max_abs_diff"] <= gates.AUROC_TOLERANCE, auroc
    assert auroc["fp32"]["mean"] > 0.8  # a probe that works, so the comparison means something
    maps = gates.map_correlation(fp32, q, held_out[0][0])
    assert min(maps.values()) >= gates.MAP_CORRELATION_MIN, maps
    assert gates.gates_pass(gates.token_cosine(fp32, q, np.zeros((1, 64, 64, 64), np.float32) + 0.3), auroc, maps)


def test_quantised_weights_are_cached_and_a_damaged_cache_is_rebuilt(private_cache, monkeypatch):
    fp32 = nem.load_engine(device="cpu")
    x = np.random.default_rng(0).random((1, 64, 64, 64), dtype=np.float32)
    first = nem.load_engine(device="cpu", precision="int8")
    files = sorted(private_cache.glob("nemesis-*.safetensors"))
    assert len(files) == 1
    from safetensors import safe_open
    with safe_open(str(files[0]), framework="pt") as f:  # plain tensors: nothing to unpickle
        meta = f.metadata()
        kinds = {str(f.get_tensor(k).dtype) for k in f.keys()}
    assert meta["format"] == int8.INT8_FORMAT and meta["weights_sha256"] == fp32.weights_sha256
    assert kinds == {"torch.int8", "torch.float64", "torch.int64", "torch.float32"}

    def never(*a, **k):
        raise AssertionError("quantised again although the cache holds the weights")
    monkeypatch.setattr(int8, "quantize_int8", never)
    second = nem.load_engine(device="cpu", precision="int8")
    np.testing.assert_array_equal(second.encode_batch(x), first.encode_batch(x))
    monkeypatch.undo()
    monkeypatch.setenv("PANTHEON_CACHE_DIR", str(private_cache.parent / "weights"))

    files[0].write_bytes(files[0].read_bytes()[:300])  # a damaged cache is rebuilt, not trusted
    third = nem.load_engine(device="cpu", precision="int8")
    np.testing.assert_array_equal(third.encode_batch(x), first.encode_batch(x))
    assert files[0].stat().st_size > 300


def test_int8_is_a_cpu_path(monkeypatch):
    model = nem.load_engine(device="cpu").model
    assert nem.NemesisEngine(model, "auto", "int8").device.type == "cpu"  # auto means the CPU for int8
    with pytest.raises(InvalidParameter, match=r"^The precision must be one of fp32, bf16, fp16, int8, got 'int4'\.$"):
        nem.NemesisEngine(model, "cpu", "int4")
    monkeypatch.setattr(nem, "pick_device", lambda d: torch.device("cuda", 0))
    with pytest.raises(InvalidParameter, match=r"^int8 runs on the CPU only; on cuda:0 use bf16, fp16 or fp32\.$"):
        nem.NemesisEngine(model, "cuda:0", "int8")


@pytest.mark.slow
def test_cli_and_batch_take_precision_int8(tmp_path, capsys):
    ct, _ = make_abdomen_phantom(HELD_OUT_SEEDS[0], shape=(48, 80, 80))
    (tmp_path / "in").mkdir()
    write_volume(ct, tmp_path / "in" / "ct.nii.gz")
    assert main(["nemesis", "pca", str(tmp_path / "in" / "ct.nii.gz"), "-o", str(tmp_path / "pca"),
                 "--precision", "int8", "--device", "cpu", "--quiet"]) == 0
    notes = json.loads((tmp_path / "pca" / "result.json").read_text())["notes"]
    assert notes["precision"] == "int8" and notes["device"] == "cpu"
    assert main(["batch", "nemesis-pca", "--input", str(tmp_path / "in"), "-o", str(tmp_path / "batch"),
                 "--precision", "int8", "--device", "cpu", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "batch" / "manifest.json").read_text())
    assert manifest["options"]["precision"] == "int8"
    case = json.loads((tmp_path / "batch" / "ct" / "result.json").read_text())
    assert case["notes"]["precision"] == "int8"
    capsys.readouterr()


def test_panel_parameters_offer_int8_on_the_cpu_only():
    import sys

    from conftest import REPO_ROOT
    sys.path.insert(0, str(REPO_ROOT / "NemesisSlicer"))
    try:
        import NemesisSlicerLib as lib
    finally:
        sys.path.remove(str(REPO_ROOT / "NemesisSlicer"))
    assert "int8" in lib.PRECISIONS
    assert lib.build_params("pca", device="cpu", precision="int8")["precision"] == "int8"
    assert lib.build_params("pca", device="auto", precision="int8")["precision"] == "int8"
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        lib.build_params("pca", device="cuda:1", precision="int8")
    with pytest.raises(ValueError, match="Precision must be one of fp32, int8, bf16, fp16"):
        lib.build_params("pca", device="cpu", precision="fp64")
