"""Rebuild Pantheon's bundled NEMESIS demo weights from nothing but the phantom generator.

    pantheon nemesis build-demo-weights          # writes pantheon/registry/weights + the two model cards

1. Pretrain a small NEMESIS (64^3 superpatches, width 96) on phantoms with the paper's recipe
   (dual masking 0.5/0.5, noise-enhanced, loss on masked patches), long enough that masked
   reconstruction is worth looking at; dropout 0 (a model this small underfits, it does not overfit).
2. Measure masked reconstruction on held-out phantoms (seeds used nowhere else), at the paper's
   masking and unmasked (the reference's validation protocol): PSNR/SSIM over the masked voxels
   and over the whole superpatch (see :mod:`pantheon.models.nemesis.reconstruction`).
3. Fit the organ probe on other phantoms (frozen encoder), a quarter of the cases held out.
4. Write ``nemesis-demo.safetensors`` and ``nemesis-demo-probe.safetensors``, their model cards
   (with sha256) and ``nemesis-demo-metrics.json`` (held-out figures and the command). These are
   demo weights: they know phantoms, not patients.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..pipelines.nemesis import DEMO_ENCODER_CARD, DEMO_PROBE_CARD, NemesisEngine
from ..progress import Reporter

PRETRAIN_PHANTOM_SEEDS = range(10_000, 10_024)  # disjoint from probe seeds and from the demo's phantom
PROBE_PHANTOM_SEED0 = 20_000
RECON_HELD_OUT_SEEDS = range(50_000, 50_008)  # reconstruction figures: phantoms no training step saw
RECON_HELD_OUT_SUPERPATCHES = 64
DEFAULT_STEPS = 1000
DEMO_MODEL = dict(superpatch_size=[64, 64, 64], patch_size=[8, 8, 8], embed_dim=96, depth=3, num_heads=4,
                  decoder_depth=1, decoder_num_heads=4, num_maegic_tokens=8, ffn_dim=256, dropout=0.0)


def build_demo_weights(out_dir=None, steps: int = DEFAULT_STEPS, cases: int = 40, seed: int = 0,
                       probe_stride: int = 32, pretrain_phantoms: int = len(PRETRAIN_PHANTOM_SEEDS), phantom_shape=None,
                       cards_dir=None, progress=None, cancel=None, log=print, command=None,
                       recon_superpatches: int = RECON_HELD_OUT_SUPERPATCHES) -> dict:
    from ..models.nemesis import load_nemesis
    from ..models.nemesis.probe import BTCV_ORGANS
    from ..registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR, ModelCard, save_card, sha256_file
    from ..synth import make_abdomen_phantom
    from .nemesis import PretrainConfig, evaluate_reconstruction, held_out_superpatches, pretrain, train_probe

    t_start = time.perf_counter()
    rep = Reporter(progress, cancel)
    out_dir = Path(out_dir) if out_dir else BUNDLED_WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    cards_dir = Path(cards_dir) if cards_dir else CARDS_DIR
    log("Generating pretraining phantoms")
    volumes = [make_abdomen_phantom(s, shape=phantom_shape)[0] for s in PRETRAIN_PHANTOM_SEEDS[:pretrain_phantoms]]
    held_out = held_out_superpatches([make_abdomen_phantom(s, shape=phantom_shape)[0] for s in RECON_HELD_OUT_SEEDS],
                                     DEMO_MODEL["superpatch_size"], recon_superpatches, seed=seed)
    run_dir = Path(tempfile.mkdtemp(prefix="nemesis-demo-pretrain-"))
    cfg = PretrainConfig(model=dict(DEMO_MODEL), steps=steps, seed=seed, lr=1e-3, warmup_steps=max(1, steps // 20),
                         checkpoint_every=max(1, min(500, steps)))

    def watch(model):  # held-out masked-patch PSNR in the log, on a few superpatches (no selection on it)
        m = evaluate_reconstruction(model, held_out[:16])
        return {"held-out masked PSNR": m["psnr_masked_db"], "whole": m["psnr_db"]}
    t0 = time.perf_counter()
    try:
        weights_tmp = pretrain(volumes, run_dir, cfg, resume=False, progress=rep.sub(0, 0.6), cancel=cancel, log=log,
                               validate=watch).weights
        encoder_path = out_dir / "nemesis-demo.safetensors"
        shutil.copyfile(weights_tmp, encoder_path)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    pretrain_seconds = time.perf_counter() - t0
    encoder_sha = sha256_file(encoder_path, use_cache=False)
    model = load_nemesis(encoder_path)
    recon = {"seeds": [RECON_HELD_OUT_SEEDS[0], RECON_HELD_OUT_SEEDS[-1]], "superpatches": len(held_out),
             "scale": "PSNR/SSIM on the [0, 1] window scale (HU -175..250); psnr_db/ssim: whole superpatch with the "
                      "visible patches pasted from the input; *_masked: masked voxels only; psnr_raw_db: raw decoder "
                      "output over the whole superpatch (the paper's formula)",
             "mask_0.5_0.5": _rounded(evaluate_reconstruction(model, held_out, (0.5, 0.5), seed=seed)),
             "unmasked": _rounded(evaluate_reconstruction(model, held_out, 0.0, seed=seed))}
    log("Held-out reconstruction at 0.5/0.5: PSNR {psnr_masked_db} dB / SSIM {ssim_masked} on masked voxels, "
        "{psnr_db} dB / {ssim} on the whole superpatch".format(**recon["mask_0.5_0.5"]))
    engine = NemesisEngine(load_nemesis(encoder_path), "cpu", "fp32", batch_size=8, weights_id=DEMO_ENCODER_CARD,
                           weights_sha256=encoder_sha)
    log(f"Fitting the organ probe on {cases} phantoms")
    pairs = [make_abdomen_phantom(PROBE_PHANTOM_SEED0 + n, shape=phantom_shape) for n in range(cases)]
    probe_path = out_dir / "nemesis-demo-probe.safetensors"
    _, metrics = train_probe(pairs, engine, probe_path, stride=probe_stride, seed=seed,
                             progress=rep.sub(0.6, 0.98), cancel=cancel)
    config = engine.model.config
    common = {"version": "1.0.0", "model": "nemesis", "demo": True, "license": "Apache-2.0",
              "references": ["https://arxiv.org/abs/2604.01612"]}
    save_card(ModelCard.from_dict({
        **common, "id": DEMO_ENCODER_CARD,
        "task": "self-supervised CT features (masked autoencoder); DEMO weights",
        "description": "Small NEMESIS pretrained by `pantheon nemesis build-demo-weights` on synthetic abdominal "
                       "phantoms. Demo weights: they know phantoms, not patients; never for clinical use.",
        "input": {"modality": "CT", "axis_order": "DHW", "intensity_window": [-175, 250], "orientation": "RAS",
                  "superpatch_size": config["superpatch_size"], "patch_size": config["patch_size"]},
        "labels": [], "file": encoder_path.name, "sha256": encoder_sha, "size_bytes": encoder_path.stat().st_size,
        "extra": {"architecture": config, "pretraining": {"steps": steps, "batch_size": cfg.batch_size,
                                                          "phantoms": len(volumes), "mask_ratio": [0.5, 0.5],
                                                          "lr": cfg.lr},
                  "held_out_reconstruction": recon["mask_0.5_0.5"]}}),
        cards_dir / f"{DEMO_ENCODER_CARD}.json")
    held = metrics["held_out"]
    save_card(ModelCard.from_dict({
        **common, "id": DEMO_PROBE_CARD,
        "task": "organ presence per superpatch (8 BTCV organs), frozen-encoder linear probe; DEMO weights",
        "description": "Organ probe fitted on synthetic phantoms over the nemesis-demo encoder. Demo weights: "
                       "never for clinical use.",
        "input": {"modality": "CT", "axis_order": "DHW", "intensity_window": [-175, 250], "orientation": "RAS"},
        "labels": [{"value": idx, "name": name} for name, idx, *_ in BTCV_ORGANS],
        "file": probe_path.name, "sha256": sha256_file(probe_path, use_cache=False),
        "size_bytes": probe_path.stat().st_size,
        "extra": {"encoder_sha256": encoder_sha, "held_out_auroc": {k: round(v["auroc"], 4) for k, v in held.items()},
                  "held_out_cases": metrics["cases"]["held_out"], "probe_stride": probe_stride}}),
        cards_dir / f"{DEMO_PROBE_CARD}.json")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    doc = {**metrics, "reconstruction": recon,
           "pretraining": {"steps": steps, "batch_size": cfg.batch_size, "phantoms": len(volumes), "seconds":
                           round(pretrain_seconds, 1)},
           "total_seconds": round(time.perf_counter() - t_start, 1),
           "load_average_1min_at_end": None if load is None else round(load, 2),
           "torch_threads": torch_threads(),
           "command": command or f"pantheon nemesis build-demo-weights --steps {steps} --cases {cases} --seed {seed}"}
    (out_dir / "nemesis-demo-metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    rep(1.0, "Demo weights written")
    return {"encoder": str(encoder_path), "probe": str(probe_path),
            "held_out_auroc": {k: round(v["auroc"], 4) for k, v in held.items()},
            "held_out_reconstruction": recon["mask_0.5_0.5"]}


def _rounded(metrics: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()
