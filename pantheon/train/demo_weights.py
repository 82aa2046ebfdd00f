"""Rebuild Pantheon's bundled NEMESIS demo weights from nothing but the phantom generator.

    pantheon nemesis build-demo-weights          # writes pantheon/registry/weights + the two model cards

1. Pretrain a small NEMESIS (64^3 superpatches, width 96) on phantoms with the paper's recipe.
2. Fit the organ probe on other phantoms (frozen encoder), a quarter of the cases held out.
3. Write ``nemesis-demo.safetensors`` and ``nemesis-demo-probe.safetensors`` and their model cards
   (with sha256) into the registry's card folder. These are demo weights: they know phantoms,
   not patients.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..pipelines.nemesis import DEMO_ENCODER_CARD, DEMO_PROBE_CARD, NemesisEngine
from ..progress import Reporter

PRETRAIN_PHANTOM_SEEDS = range(10_000, 10_024)  # disjoint from probe seeds and from the demo's phantom
PROBE_PHANTOM_SEED0 = 20_000


def build_demo_weights(out_dir=None, steps: int = 1000, cases: int = 40, seed: int = 0, probe_stride: int = 32,
                       pretrain_phantoms: int = len(PRETRAIN_PHANTOM_SEEDS), phantom_shape=None, cards_dir=None, progress=None,
                       cancel=None, log=print) -> dict:
    from ..models.nemesis import load_nemesis
    from ..models.nemesis.probe import BTCV_ORGANS
    from ..registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR, ModelCard, save_card, sha256_file
    from ..synth import make_abdomen_phantom
    from .nemesis import PretrainConfig, pretrain, train_probe

    rep = Reporter(progress, cancel)
    out_dir = Path(out_dir) if out_dir else BUNDLED_WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    cards_dir = Path(cards_dir) if cards_dir else CARDS_DIR
    log("Generating pretraining phantoms")
    volumes = [make_abdomen_phantom(s, shape=phantom_shape)[0] for s in PRETRAIN_PHANTOM_SEEDS[:pretrain_phantoms]]
    run_dir = Path(tempfile.mkdtemp(prefix="nemesis-demo-pretrain-"))
    cfg = PretrainConfig(steps=steps, seed=seed, lr=1e-3, warmup_steps=max(1, steps // 20))
    try:
        weights_tmp = pretrain(volumes, run_dir, cfg, resume=False, progress=rep.sub(0, 0.6), cancel=cancel, log=log)
        encoder_path = out_dir / "nemesis-demo.safetensors"
        shutil.copyfile(weights_tmp, encoder_path)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    encoder_sha = sha256_file(encoder_path, use_cache=False)
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
        "extra": {"architecture": config, "pretraining": {"steps": steps, "phantoms": len(volumes),
                                                          "mask_ratio": [0.5, 0.5], "lr": cfg.lr}}}),
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
    (out_dir / "nemesis-demo-metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rep(1.0, "Demo weights written")
    return {"encoder": str(encoder_path), "probe": str(probe_path),
            "held_out_auroc": {k: round(v["auroc"], 4) for k, v in held.items()}}
