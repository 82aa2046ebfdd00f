"""MAESIL's comparison (issue 17 section 6; :mod:`pantheon.train.maesil`, ``benchmarks/maesil_comparison.py``)
at toy size: the models are sized as stated, the metrics are MONAI's PSNR / SSIM on the [0, 1] window,
every model gets the same budget and batches, a seed repeats a run, and the command writes its table,
JSON and figure."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pantheon.train import maesil

REPO = Path(__file__).resolve().parents[1]
# the benchmarks print non-ASCII (dB, "Fréchet"); CI may run under an ASCII locale
UTF8_ENV = {**os.environ, "PYTHONIOENCODING": "utf-8"}
TINY_STEPS = 3


def digest(batch: torch.Tensor) -> str:
    return hashlib.sha256(batch.numpy().tobytes()).hexdigest()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Toy models gain nothing from a second thread; on a shared 2-core machine it costs them ten times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(one_thread):
    """One toy comparison, 3 steps a model, with every training batch any model asked for recorded."""
    seen = []
    original = maesil.training_batch

    def recording(arrays, cfg, seed, step):
        batch = original(arrays, cfg, seed, step)
        seen.append((step, tuple(batch.shape), digest(batch)))
        return batch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(maesil, "training_batch", recording)
        result = maesil.run_comparison(maesil.tiny_config(), steps=TINY_STEPS, seed=0, log=None)
    return result, seen


def test_models_are_sized_as_stated_with_the_mae_bottleneck():
    """Real sizes: each baseline within PARAMETER_FACTOR of the demo NEMESIS MAE's parameters, which are
    the bundled demo weights' (so their row fits), and every bottleneck holds the MAE's 512 x 96 numbers
    on the same 8^3 grid."""
    cfg = maesil.ComparisonConfig()
    models = {kind: maesil.build_model(kind, cfg).eval() for kind in maesil.KINDS}
    counts = {kind: maesil.parameter_count(m) for kind, m in models.items()}
    demo, demo_steps = maesil.load_demo_weights()
    assert counts["mae"] == maesil.parameter_count(demo) == 598_707 and demo_steps == 1000
    assert tuple(demo.superpatch_size) == (cfg.superpatch,) * 3 == (64, 64, 64)
    for kind in ("ae", "vae", "vqvae"):
        assert 1 / maesil.PARAMETER_FACTOR <= counts[kind] / counts["mae"] <= maesil.PARAMETER_FACTOR, counts
    assert maesil.parameter_ratios(cfg) == pytest.approx({k: counts[k] / counts["mae"] for k in ("ae", "vae", "vqvae")})
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        latents = {"ae": models["ae"].encode(x), "vae": models["vae"].encode(x)[0], "vqvae": models["vqvae"].encode(x)}
        assert models["mae"].encode(x).shape == (1, 512, 96)
        for kind, z in latents.items():
            assert z.shape == (1, 96, 8, 8, 8), kind
            out = maesil.reconstructions(kind, models[kind], x, cfg)[""]["prediction"]
            assert out.shape == x.shape, kind


def test_psnr_and_ssim_equal_hand_computed_values():
    """MONAI PSNRMetric / SSIMMetric (3D) on the [0, 1] scale, per superpatch, predictions clipped to [0, 1]."""
    shape = (1, 1, 16, 16, 16)
    target = torch.full(shape, 0.5)
    # constant offset 0.1: MSE 0.01 -> 20 dB; SSIM = luminance (2*0.5*0.6 + C1) / (0.5^2 + 0.6^2 + C1), C1 = 1e-4,
    # the contrast-structure term being 1 (MONAI's float32 E[x^2] - E[x]^2 leaves about 3e-3 of it)
    f = maesil.psnr_ssim(target + 0.1, target)
    assert f["psnr_db"] == pytest.approx([20.0], abs=1e-4)
    assert f["ssim"] == pytest.approx([(2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)], abs=5e-3)
    # 0.5 against black: 20 log10(1 / 0.5) = 6.0206 dB, SSIM = C1 / (0.25 + C1)
    f = maesil.psnr_ssim(torch.full(shape, 0.5), torch.zeros(shape))
    assert f["psnr_db"] == pytest.approx([20 * math.log10(2)], abs=1e-4)
    assert f["ssim"] == pytest.approx([1e-4 / (0.25 + 1e-4)], abs=1e-5)
    # 1.3 is clipped to the window's 1.0 first: 0.1 off a 0.9 target -> 20 dB (7.96 dB unclipped)
    clipped = maesil.psnr_ssim(torch.full(shape, 1.3), torch.full(shape, 0.9))
    assert clipped["psnr_db"] == pytest.approx([20.0], abs=1e-3)
    # per superpatch, in order: offsets 0.1 and 0.05 -> 20 and 26.02 dB; an exact copy -> SSIM 1, PSNR infinite
    pair = maesil.psnr_ssim(torch.cat([target + 0.1, target + 0.05]), torch.cat([target, target]))
    assert pair["psnr_db"] == pytest.approx([20.0, 20 * math.log10(20)], abs=1e-3)
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    same = maesil.psnr_ssim(noise, noise)
    assert same["ssim"] == pytest.approx([1.0], abs=1e-6) and np.isinf(same["psnr_db"]).all()
    s = maesil.summarise(np.array([1.0, 2.0, 3.0, np.nan]))
    assert s == {"mean": 2.0, "sd": 1.0, "n": 3}  # sample SD, NaN left out


def test_mae_is_scored_pasted_raw_and_unmasked():
    """At 0.5/0.5 a 4^3-token grid keeps 8 of 16 in-plane positions and 4 of those per depth slice: 16 of 64
    tokens visible, 3/4 of the voxels hidden. Pasted = the input there, the (clipped) prediction elsewhere."""
    cfg = maesil.tiny_config()
    torch.manual_seed(0)
    model = maesil.build_model("mae", cfg).eval()
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    recs = maesil.reconstructions("mae", model, x, cfg, torch.Generator().manual_seed(0))
    assert list(recs) == list(maesil.MAE_VARIANTS)
    pasted, raw, unmasked = (recs[v] for v in maesil.MAE_VARIANTS)
    hidden = pasted["hidden"]
    assert hidden.shape == x.shape and float(hidden.float().mean()) == 0.75
    assert torch.equal(pasted["prediction"][~hidden], x[~hidden])
    assert torch.equal(pasted["prediction"][hidden], raw["prediction"].clamp(0, 1)[hidden])
    assert "hidden" not in unmasked
    assert torch.allclose(unmasked["prediction"], model.reconstruct(x, mask_ratio=0.0).volume)
    by_hand = [-10 * math.log10(float(((raw["prediction"][b].clamp(0, 1) - x[b])[hidden[b]] ** 2).mean()))
               for b in range(2)]
    assert maesil.hidden_psnr(raw["prediction"], x, hidden) == pytest.approx(by_hand, abs=1e-3)


def test_every_model_gets_the_same_steps_and_batches(tiny_run):
    result, seen = tiny_run
    rows = result["rows"]
    assert [r["model"] for r in rows] == [
        "AE (MONAI AutoEncoder)", "VAE (MONAI AutoencoderKL)", "VQ-VAE (MONAI VQVAE)",
        *(f"NEMESIS MAE, {v}" for v in maesil.MAE_VARIANTS)]
    assert {r["train_steps"] for r in rows} == {TINY_STEPS} and {r["stopped"] for r in rows} == {"finished"}
    assert result["budget"]["steps"] == TINY_STEPS and result["budget"]["seconds_per_model"] is None
    # models train one after the other: four runs of steps 0..2, each on the very same batches
    per_model = [seen[n:n + TINY_STEPS] for n in range(0, len(seen), TINY_STEPS)]
    assert len(per_model) == 4 and all(m == per_model[0] for m in per_model)
    assert [s for s, _, _ in per_model[0]] == [0, 1, 2] and per_model[0][0][1] == (2, 1, 32, 32, 32)
    assert len({d for _, _, d in per_model[0]}) == TINY_STEPS  # a new batch every step
    assert result["demo_weights"] == {"included": False, "reason": "the demo weights take (64, 64, 64) "
                                                                   "superpatches, this run (32, 32, 32)"}
    for r in rows:
        assert len(r["per_superpatch"]["psnr_db"]) == 4 and r["psnr_db"]["n"] == 4
        assert r["psnr_db"]["mean"] == pytest.approx(np.mean(r["per_superpatch"]["psnr_db"]))


def test_seconds_budget_is_the_same_for_every_model_and_the_learning_rate_follows_it():
    """A seconds budget ends every model's training at the same clock reading, and the cosine decay follows
    the clock: at the end the learning rate is near its floor, not the peak a step-count cosine over the
    10-million-step cap would still give. A fake clock (each reading 0.05 s later) makes the budget exact;
    a real one stops only once the budget is spent."""
    cfg = maesil.tiny_config()
    arrays = [np.random.default_rng(0).random((40, 40, 40), dtype=np.float32)]
    ends = []
    for kind in maesil.KINDS:
        ticks = iter(np.arange(1, 10_000) * 0.05)
        torch.manual_seed(0)
        res = maesil.train_model(kind, maesil.build_model(kind, cfg), arrays, cfg, budget_s=0.5,
                                 clock=lambda: float(next(ticks)))
        assert res.stopped == "time_budget" and res.metrics["lr"] < 0.25 * cfg.lr, (kind, res)
        ends.append((res.steps, round(res.seconds, 6)))
    assert len(set(ends)) == 1 and ends[0][0] >= 3 and ends[0][1] > 0.5, ends
    res = maesil.train_model("mae", maesil.build_model("mae", cfg), arrays, cfg, budget_s=0.3)
    assert res.stopped == "time_budget" and res.seconds >= 0.3 and res.steps >= 1
    with pytest.raises(ValueError, match="Give the training budget: steps, seconds"):
        maesil.train_model("ae", maesil.build_model("ae", cfg), arrays, cfg)


def test_a_seed_repeats_the_run(tiny_run):
    first, _ = tiny_run
    again = maesil.run_comparison(maesil.tiny_config(), steps=TINY_STEPS, seed=0, log=None)
    other = maesil.run_comparison(maesil.tiny_config(), steps=TINY_STEPS, seed=1, log=None)
    for a, b, c in zip(first["rows"], again["rows"], other["rows"]):
        assert a["per_superpatch"] == b["per_superpatch"], a["model"]
        assert a["per_superpatch"]["psnr_db"] != c["per_superpatch"]["psnr_db"], a["model"]


def test_markdown_table_rows():
    row = {"model": "bundled nemesis-demo, unmasked", "parameters": 598_707, "gflop_per_superpatch": 0.28734,
           "train_steps": 1000, "trained_here": False, "train_seconds": None,
           "psnr_db": {"mean": 11.306, "sd": 1.684}, "ssim": {"mean": 0.04412, "sd": 0.01149}}
    trained = dict(row, model="AE (MONAI AutoEncoder)", trained_here=True, train_steps=312, train_seconds=450.4)
    lines = maesil.markdown_table([row, trained]).splitlines()
    assert lines[0].startswith("| model | parameters | GFLOP / superpatch | train steps | train s | PSNR dB")
    assert lines[2] == ("| bundled nemesis-demo, unmasked | 598,707 | 0.287 | 1000 (bundled) | — | 11.31 ± 1.68 | "
                        "0.044 ± 0.011 |")
    assert lines[3] == "| AE (MONAI AutoEncoder) | 598,707 | 0.287 | 312 | 450 | 11.31 ± 1.68 | 0.044 ± 0.011 |"


@pytest.mark.slow
def test_benchmark_command_end_to_end(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "maesil_comparison.py"), "--tiny", "--out",
                          str(out)], capture_output=True, encoding="utf-8", env=UTF8_ENV, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads((out / "maesil_comparison.json").read_text())
    assert len(doc["rows"]) == 6 and {r["train_steps"] for r in doc["rows"]} == {2}
    assert doc["command"] == f"python benchmarks/maesil_comparison.py --tiny --out {out}"
    assert doc["paper"] == "MAESIL, arXiv 2604.00514" and doc["torch_threads"] == 1
    assert all(np.isfinite(r["psnr_db"]["mean"]) and -1 <= r["ssim"]["mean"] <= 1 for r in doc["rows"])
    assert len(doc["example"]["panels"]) == 6 and "slice" not in doc["example"]["panels"][0]
    for r in doc["rows"]:
        assert f"| {r['model']} | {r['parameters']:,} |" in run.stdout
    assert "Demo weights left out: the demo weights take (64, 64, 64) superpatches" in run.stdout
    from matplotlib.image import imread
    picture = imread(out / "maesil_comparison.png")
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0] > 400  # two rows of four panels
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "maesil_comparison.py"), "--steps", "0"],
                         capture_output=True, encoding="utf-8", env=UTF8_ENV, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "argument --steps: must be 1 or more, got 0" in bad.stderr
