"""Rebuild Pantheon's bundled MATHENA demo weights from nothing but the synthetic OPG generator.

    python -m pantheon.train.mathena_demo [MINUTES [DETECTOR.safetensors]] [--init-detector D.safetensors]
                                          [--hena HENA.safetensors] [--varied N] [--hena-steps N]

One command, from scratch: MINUTES (default :data:`DEFAULT_MINUTES` = 30) is the wall-time budget
of the whole build on one CPU thread (about 30 min on a shared 2-core machine); passing an already
trained detector file skips step 1 and gives HENA the whole budget; ``--hena`` keeps an already
trained HENA and gives the detector the whole budget (both: evaluate and write files only);
``--init-detector`` fine-tunes that detector instead of starting from random weights.

Training OPGs: ``train_images`` drawn with :data:`DEMO_OPG_KW` (seeds from :data:`TRAIN_SEED0`),
then ``varied_images`` more (the following seeds) that are also turned, crowded or gappy
(:func:`varied_opg_kw`), so that the detector sees tilted pictures, overlapping teeth and missing
teeth; HENA trains on all of them.

1. Train a small MATHE detector on synthetic OPGs drawn directly at ``DETECTOR_INPUT_HW``
   (:data:`BUDGET_SHARE` of the budget, at most ``steps_detector`` steps).
2. Train a small HENA in the paper's order on ground-truth tooth crops of the same OPGs:
   carseg (shared + caries head) -> freeze shared -> ad (AD decoder branch + anomaly head) ->
   dds (stage linear probe, fitted on cached features: seconds).
3. Evaluate on held-out synthetic OPGs (seeds disjoint from training), plus the numbering
   benchmark (:func:`numbering_benchmark`: 24 more, plain / lesions / missing teeth / crowded /
   turned / all three, 512 to 2800 px wide), and write
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
#: Seeds of the numbering benchmark (tooth numbering as a dentist sees it; disjoint from training,
#: from the held-out metric images and from NUMBERING_VAL_SEED0, used to fit the numbering's
#: evidence calibration, pantheon.models.mathena.numbering.EVIDENCE_MID).
NUMBERING_SEED0, NUMBERING_VAL_SEED0 = 41_000, 42_000
NUMBERING_SIZES = ((256, 512), (512, 1024), (700, 1400), (1400, 2800))
NUMBERING_CONDITIONS = ("plain", "lesions", "missing", "crowded", "rotated", "hard")


def numbering_case(index: int, seed0: int = NUMBERING_SEED0) -> dict:
    """Case ``index`` of the numbering benchmark: ``{"seed", "size", "condition", "opg_kw"}``.
    Conditions cycle over :data:`NUMBERING_CONDITIONS` (plain defaults; the demo's lesions and
    uniform stages; 20-35 % missing teeth; crowding 0.7; turned by +-7 degrees; missing 15-30 %,
    crowding 0.5 and +-5 degrees), sizes over :data:`NUMBERING_SIZES` every 6 cases."""
    cond = NUMBERING_CONDITIONS[index % len(NUMBERING_CONDITIONS)]
    sign = -1.0 if index % 2 else 1.0
    kw = {"plain": {}, "lesions": dict(DEMO_OPG_KW), "missing": dict(missing_rate=(0.2, 0.35)),
          "crowded": dict(crowding=0.7), "rotated": dict(rotation_deg=7.0 * sign),
          "hard": dict(missing_rate=(0.15, 0.3), crowding=0.5, rotation_deg=5.0 * sign)}[cond]
    size = NUMBERING_SIZES[(index // len(NUMBERING_CONDITIONS)) % len(NUMBERING_SIZES)]
    return {"seed": seed0 + index, "size": size, "condition": cond, "opg_kw": kw}


def numbering_benchmark(n: int = 24, seed0: int = NUMBERING_SEED0, indices=None):
    """(cases, SyntheticOPGs) of the numbering benchmark (:func:`numbering_case`)."""
    from ..synth.opg import make_opg
    cases = [numbering_case(i, seed0) for i in (indices if indices is not None else range(n))]
    return cases, [make_opg(c["seed"], size=c["size"], **c["opg_kw"]) for c in cases]


def varied_opg_kw(seed: int) -> dict:
    """:data:`DEMO_OPG_KW` plus, drawn from ``seed``: turned by up to 8 degrees, crowded (0.3-0.8),
    20-40 % missing teeth, or a bit of all three (cycling with the seed)."""
    import numpy as np
    rng = np.random.default_rng([int(seed), 1])
    kind = int(seed) % 3
    if kind == 0:
        extra = dict(rotation_deg=float(rng.uniform(-8, 8)))
    elif kind == 1:
        extra = dict(crowding=float(rng.uniform(0.3, 0.8)))
    else:
        extra = dict(missing_rate=(0.2, 0.4), rotation_deg=float(rng.uniform(-5, 5)),
                     crowding=float(rng.uniform(0.0, 0.6)))
    return {**DEMO_OPG_KW, **extra}
# shares of the wall-time budget; the rest (about 7 %) is data generation, the dds probe fit,
# evaluation and writing files
BUDGET_SHARE = {"detector": 0.6, "carseg": 0.19, "ad": 0.14}
# carseg: lr 2e-3 with half-positive batches collapsed to empty caries masks in an earlier build;
# ad: half-positive batches, the image-level logit is re-calibrated by the logit offset in the loss
POS_FRACTION = {"carseg": 0.75, "ad": 0.5}


def build_mathena_demo_weights(out_dir=None, cards_dir=None, steps_detector: int = 4000, steps_hena: int = 2000,
                               train_images: int = 48, held_out_images: int = 20, minutes: float = DEFAULT_MINUTES,
                               varied_images: int = 48, reuse_hena=None, init_detector=None,
                               numbering_images: int = 24, detector_lr: Optional[float] = None,
                               time_budget_detector_s: Optional[float] = None,
                               time_budget_hena_s: Optional[float] = None, size=None, threads: int = 1,
                               reuse_detector=None, hena_lr: float = 1e-3, pos_fraction: Optional[dict] = None,
                               steps_probe: int = 300, command: Optional[str] = None, progress=None, cancel=None,
                               log=print) -> dict:
    """Train, evaluate and write the demo weights (module docstring). Time budgets default to
    ``minutes`` split by :data:`BUDGET_SHARE` (``time_budget_hena_s`` is carseg + ad, divided in
    the same proportion; with ``reuse_hena`` the detector gets the HENA share too); ``pos_fraction``
    per stage defaults to :data:`POS_FRACTION`. ``init_detector``: fine-tune these weights
    (default lr 1e-3 then, else the stage default)."""
    import torch

    from ..models.mathena import load_mathena
    from ..models.mathena.detector import ALL_FDI
    from ..models.mathena.preprocess import CROP_MARGIN, CROP_SIZE, DETECTOR_INPUT_HW
    from ..registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR, ModelCard, save_card, sha256_file
    from .loop import TrainResult
    from .mathena import evaluate, load_data, synthetic_opgs, train_stage
    pos_fraction = {**POS_FRACTION, **(pos_fraction or {})}
    det_share = BUDGET_SHARE["detector"]
    hena_share = BUDGET_SHARE["carseg"] + BUDGET_SHARE["ad"]
    if time_budget_detector_s is None:
        time_budget_detector_s = minutes * 60 * (det_share + hena_share if reuse_hena else det_share)
    if time_budget_hena_s is None:
        time_budget_hena_s = minutes * 60 * (hena_share + det_share if reuse_detector else hena_share)
    if threads:  # one thread: on a shared 2-core machine more threads oversubscribe and run slower
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    out_dir = Path(out_dir) if out_dir else BUNDLED_WEIGHTS_DIR
    cards_dir = Path(cards_dir) if cards_dir else CARDS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    size = tuple(size or DETECTOR_INPUT_HW)
    log(f"Generating {train_images} + {varied_images} training OPGs {size}")
    from ..synth.opg import make_opg
    varied = range(TRAIN_SEED0 + train_images, TRAIN_SEED0 + train_images + varied_images)
    train = load_data(synthetic_opgs(range(TRAIN_SEED0, TRAIN_SEED0 + train_images), size, **DEMO_OPG_KW)
                      + [make_opg(s, size=size, **varied_opg_kw(s)) for s in varied])
    run = Path(tempfile.mkdtemp(prefix="mathena-demo-"))
    try:
        if reuse_detector:  # keep an already trained demo detector (rebuild the HENA part only)
            from ..models.mathena import read_mathena
            meta = read_mathena(reuse_detector)[1]
            det = TrainResult(Path(reuse_detector), int(meta.get("steps", 0)))
        else:
            det = train_stage("detector", train, run, steps=steps_detector, resume=False, log=log, batch_size=2,
                              model_kw=DEMO_DETECTOR, time_budget_s=time_budget_detector_s, checkpoint_every=25,
                              cancel=cancel, init=init_detector,
                              lr=detector_lr or (1e-3 if init_detector else None))
        hena_runs = {}
        for st in (() if reuse_hena else ("carseg", "ad", "dds")):
            share = BUDGET_SHARE.get(st, 0.0) / hena_share
            hena_runs[st] = train_stage(st, train, run, steps=steps_probe if st == "dds" else steps_hena,
                                        resume=False, log=log, batch_size=8, model_kw=DEMO_HENA,
                                        time_budget_s=time_budget_hena_s * share if share else None,
                                        checkpoint_every=25, cancel=cancel, lr=hena_lr if st != "dds" else None,
                                        pos_fraction=pos_fraction.get(st, 0.5))
        det_path, hena_path = out_dir / f"{DETECTOR_CARD}.safetensors", out_dir / f"{HENA_CARD}.safetensors"
        if Path(det.weights).resolve() != det_path.resolve():
            shutil.copyfile(det.weights, det_path)
        if reuse_hena:
            from ..models.mathena import read_mathena
            hmeta = read_mathena(reuse_hena)[1]
            old = {}
            old_card = next((d / f"{HENA_CARD}.json" for d in (cards_dir, Path(CARDS_DIR))
                             if (d / f"{HENA_CARD}.json").is_file()), None)
            if old_card is not None:  # the steps of the HENA being kept, as its card recorded them
                old = (json.loads(old_card.read_text()).get("extra") or {}).get("steps") or {}
            hena_runs = {k: TrainResult(Path(reuse_hena), int(old.get(k, hmeta.get("steps", 0))))
                         for k in ("carseg", "ad", "dds")}
            if Path(reuse_hena).resolve() != hena_path.resolve():
                shutil.copyfile(reuse_hena, hena_path)
        else:
            shutil.copyfile(hena_runs["dds"].weights, hena_path)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    train_s = time.perf_counter() - t0
    log(f"Evaluating on {held_out_images} held-out OPGs")
    held = synthetic_opgs(range(HELD_OUT_SEED0, HELD_OUT_SEED0 + held_out_images), size, **DEMO_OPG_KW)
    metrics = evaluate(load_mathena(det_path), load_mathena(hena_path), held)
    if numbering_images:
        log(f"Numbering benchmark on {numbering_images} more held-out OPGs")
        cases, opgs = numbering_benchmark(numbering_images)
        nb = evaluate(load_mathena(det_path), None, opgs, numbering_only=True)
        metrics["numbering_benchmark"] = {
            "seeds": [NUMBERING_SEED0, NUMBERING_SEED0 + numbering_images - 1],
            "cases": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()} for c in cases],
            **{k: v for k, v in nb.items() if k != "conventions"}}
    steps = {"detector": det.steps, **{k: v.steps for k, v in hena_runs.items()}}
    metrics.update({"demo": True, "held_out_seeds": [HELD_OUT_SEED0, HELD_OUT_SEED0 + held_out_images - 1],
                    "train_seeds": [TRAIN_SEED0, TRAIN_SEED0 + train_images + varied_images - 1],
                    "varied_train_seeds": [TRAIN_SEED0 + train_images, TRAIN_SEED0 + train_images + varied_images - 1],
                    "image_size": list(size), "opg_settings": DEMO_OPG_KW, "steps": steps,
                    "detector_reused_from_earlier_run": bool(reuse_detector),
                    "detector_fine_tuned_from": Path(init_detector).name if init_detector else None,
                    "hena_reused_from_earlier_run": bool(reuse_hena), "train_seconds": round(train_s, 1),
                    "budget_minutes": round(minutes, 2),
                    "time_budget_s": {"detector": None if reuse_detector else round(time_budget_detector_s, 1),
                                      "hena": round(time_budget_hena_s, 1)},
                    "pos_fraction": pos_fraction, "threads": threads,
                    "final_loss": {"detector": det.history[-1] if det.history else None,
                                   **{k: (v.history[-1] if v.history else None) for k, v in hena_runs.items()}}})
    cmd = command or "python -m pantheon.train.mathena_demo"
    metrics["command"] = cmd
    metrics["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / "mathena-demo-metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    summary = {k: metrics.get(k) for k in ("map50", "map50_class_agnostic", "numbering_accuracy",
                                           "duplicate_numbers_per_image", "invented_teeth_per_image",
                                           "missed_teeth_per_image", "caries_dice_positive",
                                           "caries_dice_pooled", "anomaly_dice_positive", "anomaly_dice_pooled",
                                           "anomaly_auroc", "stage_accuracy", "stage_macro_f1")}
    if "numbering_benchmark" in metrics:
        summary["numbering_benchmark_accuracy"] = metrics["numbering_benchmark"].get("numbering_accuracy")
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
        "description": f"Small HENA trained by `{cmd}` (carseg -> freeze -> ad branch -> dds linear probe) "
                       "on synthetic OPG tooth crops. Demo weights: never for clinical use.",
        "input": inp, "labels": [{"value": i, "name": s} for i, s in enumerate("ABCDEFGH")],
        "file": hena_path.name, "sha256": sha256_file(hena_path, use_cache=False),
        "size_bytes": hena_path.stat().st_size,
        "extra": {"architecture": DEMO_HENA, "steps": {k: steps[k] for k in ("carseg", "ad", "dds")},
                  "held_out": summary, "command": cmd}}), cards_dir / f"{HENA_CARD}.json")
    log("Held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if v is not None))
    return {"detector": str(det_path), "hena": str(hena_path), "metrics": summary,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    import argparse
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m pantheon.train.mathena_demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("minutes", nargs="?", type=float, default=DEFAULT_MINUTES)
    ap.add_argument("detector", nargs="?", help="keep this trained detector (train HENA only)")
    ap.add_argument("--hena", help="keep this trained HENA (train the detector only)")
    ap.add_argument("--init-detector", help="fine-tune this detector instead of starting from random weights")
    ap.add_argument("--varied", type=int, default=48, help="turned / crowded / gappy training OPGs (default 48)")
    ap.add_argument("--out", help="write weights, metrics and cards here instead of the registry")
    ap.add_argument("--hena-steps", type=int, default=2000,
                    help="at most this many steps per HENA stage, carseg and ad (default 2000; the time budget "
                         "usually ends them first)")
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else None
    build_mathena_demo_weights(minutes=a.minutes, reuse_detector=a.detector, reuse_hena=a.hena,
                               init_detector=a.init_detector, varied_images=a.varied, out_dir=out,
                               steps_hena=a.hena_steps,
                               cards_dir=out, command=" ".join(["python -m pantheon.train.mathena_demo"] + argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
