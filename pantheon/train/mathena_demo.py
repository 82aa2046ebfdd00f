"""Rebuild Pantheon's bundled MATHENA demo weights from nothing but the synthetic OPG generator.

    python -m pantheon.train.mathena_demo [MINUTES [DETECTOR.safetensors]]

One command, from scratch: MINUTES (default :data:`DEFAULT_MINUTES` = 30) is the wall-time budget
of the whole build on one CPU thread (about 30 min on a shared 2-core machine); passing an already
trained detector file skips step 1 and gives HENA the whole budget.

1. Train a small MATHE detector on synthetic OPGs drawn directly at ``DETECTOR_INPUT_HW``
   (:data:`BUDGET_SHARE` of the budget, at most ``steps_detector`` steps).
2. Train a small HENA in the paper's order on ground-truth tooth crops of the same OPGs:
   carseg (shared + caries head) -> freeze shared -> ad (AD decoder branch + anomaly head) ->
   dds (stage linear probe, fitted on cached features: seconds).
3. Evaluate on held-out synthetic OPGs (seeds disjoint from training) and write
   ``mathena-demo-detector.safetensors``, ``mathena-demo-hena.safetensors``,
   ``mathena-demo-metrics.json`` (with the command that made it) and the two model cards.
   DEMO weights: they know synthetic OPGs, not patients; never for clinical use.

Training is time-budgeted (the machine it was built on is a shared 2-core CPU, one thread); the
step counts actually reached are recorded in the cards and the metrics file.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

DETECTOR_CARD = "mathena-demo-detector"
HENA_CARD = "mathena-demo-hena"
TRAIN_SEED0, HELD_OUT_SEED0 = 30_000, 40_000  # disjoint seed ranges
# More lesions and uniformly drawn Demirjian stages than the realistic defaults, so that every
# head sees positives; held-out images use the same generator settings.
DEMO_OPG_KW = dict(caries_rate=0.3, periapical_rate=0.1, impacted_rate=0.5, stage="uniform")
DEMO_DETECTOR = dict(in_channels=1, widths=[8, 16, 32, 64, 128], neck_channels=32, num_vss=1, d_state=8,
                     bifpn_repeats=1, head_convs=2)
DEMO_HENA = dict(in_channels=1, embed_dim=16, depths=[1, 1, 1, 1], d_state=8, ssm_ratio=1.0, ad_branch=True)
DEFAULT_MINUTES = 30.0
# shares of the wall-time budget; the rest (about 7 %) is data generation, the dds probe fit,
# evaluation and writing files
BUDGET_SHARE = {"detector": 0.6, "carseg": 0.19, "ad": 0.14}
# carseg: lr 2e-3 with half-positive batches collapsed to empty caries masks in an earlier build;
# ad: half-positive batches, the image-level logit is re-calibrated by the logit offset in the loss
POS_FRACTION = {"carseg": 0.75, "ad": 0.5}


def build_mathena_demo_weights(out_dir=None, cards_dir=None, steps_detector: int = 2000, steps_hena: int = 2000,
                               train_images: int = 48, held_out_images: int = 20, minutes: float = DEFAULT_MINUTES,
                               time_budget_detector_s: Optional[float] = None,
                               time_budget_hena_s: Optional[float] = None, size=None, threads: int = 1,
                               reuse_detector=None, hena_lr: float = 1e-3, pos_fraction: Optional[dict] = None,
                               steps_probe: int = 300, command: Optional[str] = None, progress=None, cancel=None,
                               log=print) -> dict:
    """Train, evaluate and write the demo weights (module docstring). Time budgets default to
    ``minutes`` split by :data:`BUDGET_SHARE` (``time_budget_hena_s`` is carseg + ad, divided in
    the same proportion); ``pos_fraction`` per stage defaults to :data:`POS_FRACTION`."""
    from ..models.mathena import load_mathena
    from ..models.mathena.preprocess import CROP_MARGIN, CROP_SIZE, DETECTOR_INPUT_HW
    from ..models.mathena.detector import ALL_FDI
    from ..registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR, ModelCard, save_card, sha256_file
    from .mathena import evaluate, load_data, synthetic_opgs, train_stage

    import torch
    pos_fraction = {**POS_FRACTION, **(pos_fraction or {})}
    det_share = BUDGET_SHARE["detector"]
    hena_share = BUDGET_SHARE["carseg"] + BUDGET_SHARE["ad"]
    if time_budget_detector_s is None:
        time_budget_detector_s = minutes * 60 * det_share
    if time_budget_hena_s is None:
        time_budget_hena_s = minutes * 60 * (hena_share + det_share if reuse_detector else hena_share)
    if threads:  # one thread: on a shared 2-core machine more threads oversubscribe and run slower
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    out_dir = Path(out_dir) if out_dir else BUNDLED_WEIGHTS_DIR
    cards_dir = Path(cards_dir) if cards_dir else CARDS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    size = tuple(size or DETECTOR_INPUT_HW)
    log(f"Generating {train_images} training OPGs {size}")
    train = load_data(synthetic_opgs(range(TRAIN_SEED0, TRAIN_SEED0 + train_images), size, **DEMO_OPG_KW))
    run = Path(tempfile.mkdtemp(prefix="mathena-demo-"))
    try:
        if reuse_detector:  # keep an already trained demo detector (rebuild the HENA part only)
            from ..models.mathena import read_mathena
            meta = read_mathena(reuse_detector)[1]
            det = {"weights": str(reuse_detector), "step": int(meta.get("steps", 0)), "history": []}
        else:
            det = train_stage("detector", train, run, steps=steps_detector, resume=False, log=log, batch_size=2,
                              model_kw=DEMO_DETECTOR, time_budget_s=time_budget_detector_s, checkpoint_every=25,
                              cancel=cancel)
        hena_runs = {}
        for st in ("carseg", "ad", "dds"):
            share = BUDGET_SHARE.get(st, 0.0) / hena_share
            hena_runs[st] = train_stage(st, train, run, steps=steps_probe if st == "dds" else steps_hena,
                                        resume=False, log=log, batch_size=8, model_kw=DEMO_HENA,
                                        time_budget_s=time_budget_hena_s * share if share else None,
                                        checkpoint_every=25, cancel=cancel, lr=hena_lr if st != "dds" else None,
                                        pos_fraction=pos_fraction.get(st, 0.5))
        det_path, hena_path = out_dir / f"{DETECTOR_CARD}.safetensors", out_dir / f"{HENA_CARD}.safetensors"
        if Path(det["weights"]).resolve() != det_path.resolve():
            shutil.copyfile(det["weights"], det_path)
        shutil.copyfile(hena_runs["dds"]["weights"], hena_path)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    train_s = time.perf_counter() - t0
    log(f"Evaluating on {held_out_images} held-out OPGs")
    held = synthetic_opgs(range(HELD_OUT_SEED0, HELD_OUT_SEED0 + held_out_images), size, **DEMO_OPG_KW)
    metrics = evaluate(load_mathena(det_path), load_mathena(hena_path), held)
    steps = {"detector": det["step"], **{k: v["step"] for k, v in hena_runs.items()}}
    metrics.update({"demo": True, "held_out_seeds": [HELD_OUT_SEED0, HELD_OUT_SEED0 + held_out_images - 1],
                    "train_seeds": [TRAIN_SEED0, TRAIN_SEED0 + train_images - 1], "image_size": list(size),
                    "opg_settings": DEMO_OPG_KW, "steps": steps,
                    "detector_reused_from_earlier_run": bool(reuse_detector), "train_seconds": round(train_s, 1),
                    "budget_minutes": round(minutes, 2),
                    "time_budget_s": {"detector": None if reuse_detector else round(time_budget_detector_s, 1),
                                      "hena": round(time_budget_hena_s, 1)},
                    "pos_fraction": pos_fraction, "threads": threads,
                    "final_loss": {"detector": det["history"][-1] if det["history"] else None,
                                   **{k: (v["history"][-1] if v["history"] else None) for k, v in hena_runs.items()}}})
    cmd = command or "python -m pantheon.train.mathena_demo"
    metrics["command"] = cmd
    metrics["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / "mathena-demo-metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    summary = {k: metrics.get(k) for k in ("map50", "map50_class_agnostic", "caries_dice_positive",
                                           "caries_dice_pooled", "anomaly_dice_positive", "anomaly_dice_pooled",
                                           "anomaly_auroc", "stage_accuracy", "stage_macro_f1")}
    common = {"version": "1.1.0", "model": "mathena", "demo": True, "license": "Apache-2.0",
              "references": ["https://arxiv.org/abs/2604.00537"]}
    inp = {"modality": "DX", "axis_order": "HW", "body_part": "OPG", "intensity_range": [0.0, 1.0],
           "detector_input_hw": list(DETECTOR_INPUT_HW), "crop_size": CROP_SIZE, "crop_margin": CROP_MARGIN,
           "channels": 1}
    save_card(ModelCard.from_dict({
        **common, "id": DETECTOR_CARD,
        "task": "FDI tooth detection on panoramic radiographs (MATHE); DEMO weights",
        "description": f"Small MATHE detector trained by `{cmd}` on synthetic OPGs. Demo weights: they know "
                       "synthetic OPGs, not patients; never for clinical use.",
        "input": inp, "labels": [{"value": i, "name": str(f)} for i, f in enumerate(ALL_FDI[:32])],
        "file": det_path.name, "sha256": sha256_file(det_path, use_cache=False), "size_bytes": det_path.stat().st_size,
        "extra": {"architecture": DEMO_DETECTOR, "steps": steps["detector"], "held_out": summary,
                  "command": cmd}}), cards_dir / f"{DETECTOR_CARD}.json")
    save_card(ModelCard.from_dict({
        **common, "id": HENA_CARD,
        "task": "per-tooth caries segmentation, anomaly detection, Demirjian staging (HENA); DEMO weights",
        "description": f"Small HENA trained by `{cmd}` (carseg -> freeze -> ad branch -> dds linear probe) on synthetic "
                       "OPG tooth crops. Demo weights: never for clinical use.",
        "input": inp, "labels": [{"value": i, "name": s} for i, s in enumerate("ABCDEFGH")],
        "file": hena_path.name, "sha256": sha256_file(hena_path, use_cache=False),
        "size_bytes": hena_path.stat().st_size,
        "extra": {"architecture": DEMO_HENA, "steps": {k: steps[k] for k in ("carseg", "ad", "dds")},
                  "held_out": summary, "command": cmd}}), cards_dir / f"{HENA_CARD}.json")
    log("Held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if v is not None))
    return {"detector": str(det_path), "hena": str(hena_path), "metrics": summary,
            "seconds": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 3 or any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        sys.exit(0 if len(sys.argv) <= 3 else 2)
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MINUTES
    reuse = sys.argv[2] if len(sys.argv) > 2 else None  # e.g. pantheon/registry/weights/mathena-demo-detector.safetensors
    build_mathena_demo_weights(minutes=minutes, reuse_detector=reuse,
                               command=" ".join(["python -m pantheon.train.mathena_demo"] + sys.argv[1:]))
