"""Rebuild Pantheon's NeoNet demo weights from nothing but the MRI phantom generator.

    python -m pantheon.train.neonet_demo Resources/weights      # (or the CLI's pni build-demo-weights)

What it does (DEMO weights: they know phantoms, not patients; never for clinical use):

1. Generates :data:`TRAIN_SEEDS` phantoms (about 1/3 PNI+, like the paper's 34%) and
   :data:`HELD_OUT_SEEDS` phantoms (balanced) directly on the model grid (preprocess.MODEL_SPACING).
   The two sets are disjoint; nothing of the held-out set is seen by any training stage.
2. Trains on the training phantoms only: NeoSeg (seg), NeoGen (vae -> ldm -> controlnet) and
   PattenNet (cls) with the minority class (PNI+) topped up 1:1 by NeoGen samples conditioned on
   the training PNI+ masks. Tiny models (:func:`pantheon.train.neonet.default_configs` "demo").
   Each stage gets a wall-clock budget: after a few steps its speed is measured and the step
   count set to fit the budget (the run is resumable, so this only fixes ``steps``).
3. Measures on the held-out phantoms: classifier AUC/accuracy/sensitivity/specificity with TLCR
   crops from the ground-truth tumour mask and end-to-end from NeoSeg's predicted mask; and
   synthesis faithfulness: NeoGen samples conditioned on the held-out masks are segmented by
   NeoSeg and compared (Dice) with the conditioning tumour and liver masks (NeoSeg on the real
   patches is given as the reference).
4. Writes ``neonet-demo-{neoseg,neogen,pattennet}.safetensors``, their model cards and
   ``neonet-demo-metrics.json``.

No cross-validation is run here (the 5-fold CV with per-fold generators is ``cross_validate``;
the demo trains one generator on the training phantoms, which is the classifier's training set).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..models.neonet.preprocess import MODEL_SPACING, PATCH_SHAPE

DEMO_IDS = {"neoseg": "neonet-demo-neoseg", "neogen": "neonet-demo-neogen", "pattennet": "neonet-demo-pattennet"}
TRAIN_SEEDS = range(30_000, 30_042)
HELD_OUT_SEEDS = range(40_000, 40_020)
#: Wall-clock seconds per stage on a shared 2-core CPU (total about 15 minutes with evaluation).
DEFAULT_BUDGET_S = {"seg": 180, "vae": 150, "ldm": 90, "controlnet": 130, "cls": 110}


def _train_pni(seed: int) -> bool:
    return seed % 3 == 0


def _held_out_pni(seed: int) -> bool:
    return seed % 2 == 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def _timed_stage(stage, cases, run_dir, budget_s, log, max_steps=5000, **kw):
    from .neonet import train_stage
    probe = 5
    t = time.time()
    train_stage(stage, cases, run_dir, steps=1, resume=True, log=None, **kw)  # warm-up (imports, first step)
    t1 = time.time()
    train_stage(stage, cases, run_dir, steps=probe, resume=True, log=None, checkpoint_every=probe, **kw)
    per_step = (time.time() - t1) / (probe - 1)
    steps = int(np.clip(budget_s / max(per_step, 1e-3), probe + 1, max_steps))
    log(f"[{stage}] {per_step:.2f} s/step -> {steps} steps")
    path = train_stage(stage, cases, run_dir, steps=steps, resume=True, log=log, checkpoint_every=max(10, steps // 5),
                       time_limit_s=1.25 * budget_s, **kw)
    ck = torch.load(Path(run_dir) / stage / "checkpoint.pt", map_location="cpu", weights_only=True)
    h = ck["history"]
    return path, {"steps_planned": steps, "steps": int(ck["step"]), "seconds": round(time.time() - t, 1),
                  "loss_first10": float(np.mean(h[:10])), "loss_last10": float(np.mean(h[-10:]))}


@torch.no_grad()
def synthesis_dice(neogen, neoseg, cases, seed: int = 0, num_inference_steps: int = 20) -> dict:
    """Dice between NeoSeg on NeoGen samples and the conditioning masks (tumour; liver incl. tumour)."""
    from ..models.neonet import masks_from_labels
    labs = np.stack([c.patch()[1] for c in cases])
    masks = masks_from_labels(torch.as_tensor(labs).long())
    gen = torch.Generator().manual_seed(seed)
    pni = torch.as_tensor([c.pni for c in cases])
    syn = neogen.generate(masks, labels=pni, num_inference_steps=num_inference_steps, generator=gen).clamp(0, 1)
    real = torch.as_tensor(np.stack([c.patch()[0] for c in cases]))[:, None]
    out = {}
    for name, x in (("synthetic", syn), ("real_reference", real)):
        pred = neoseg.predict(x.float(), roi_size=PATCH_SHAPE, overlap=0.0).argmax(1).numpy()
        dt = [_dice(p == 2, m[0]) for p, m in zip(pred, masks.numpy())]
        dl = [_dice(p >= 1, m[1]) for p, m in zip(pred, masks.numpy())]
        out[name] = {"tumour_dice_mean": float(np.mean(dt)), "tumour_dice_sd": float(np.std(dt, ddof=1)),
                     "liver_dice_mean": float(np.mean(dl)), "liver_dice_sd": float(np.std(dl, ddof=1))}
    out["n"] = len(cases)
    out["num_inference_steps"] = num_inference_steps
    return out


def build_neonet_demo_weights(out_dir, cards_dir=None, budget_s=None, train_seeds=TRAIN_SEEDS,
                              held_out_seeds=HELD_OUT_SEEDS, seed: int = 0, num_inference_steps: int = 20,
                              run_dir=None, progress=None, cancel=None, log=print) -> dict:
    """Train and write the NeoNet demo weights, cards and metrics (see the module docstring)."""
    from ..models.neonet import load_neonet_component
    from ..registry import CARDS_DIR, ModelCard, save_card, sha256_file
    from .neonet import STAGES, assemble_classifier_set, evaluate_classifier, load_cases

    t0 = time.time()
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    # one thread: on a shared, oversubscribed CPU two OpenMP threads were measured ~20x slower per step
    torch.set_num_threads(1)
    budget = {**DEFAULT_BUDGET_S, **(budget_s or {})}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cards_dir = Path(cards_dir) if cards_dir else CARDS_DIR
    own_run = run_dir is None
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="neonet-demo-"))
    log(f"Generating {len(train_seeds)} training and {len(held_out_seeds)} held-out phantoms")
    train = load_cases(list(train_seeds), pni_rule=_train_pni)
    held = load_cases(list(held_out_seeds), pni_rule=_held_out_pni)
    assert not {c.case_id for c in train} & {c.case_id for c in held}
    training = {}
    try:
        paths = {}
        for stage in STAGES:
            kw = {}
            if stage == "cls":  # synthesise once (training phantoms only), so the timing probe measures steps
                samples = assemble_classifier_set(train, paths["controlnet"], seed, num_inference_steps, log, cancel)
                kw = {"samples": samples}
                training["classifier_set"] = {"real": int(sum(not s.synthetic for s in samples)),
                                              "synthetic": int(sum(s.synthetic for s in samples))}
            paths[stage], training[stage] = _timed_stage(stage, train, run_dir, budget[stage], log, seed=seed,
                                                         cancel=cancel, **kw)
        files = {}
        for kind, stage in (("neoseg", "seg"), ("neogen", "controlnet"), ("pattennet", "cls")):
            files[kind] = out_dir / f"{DEMO_IDS[kind]}.safetensors"
            shutil.copyfile(paths[stage], files[kind])
    finally:
        if own_run:
            shutil.rmtree(run_dir, ignore_errors=True)
    neoseg = load_neonet_component(files["neoseg"], "neoseg")
    neogen = load_neonet_component(files["neogen"], "neogen")
    patten = load_neonet_component(files["pattennet"], "pattennet")
    log("Evaluating on held-out phantoms")
    cls_gt = evaluate_classifier(patten, held, log=log)
    cls_seg = evaluate_classifier(patten, held, neoseg=neoseg, log=log)
    syn = synthesis_dice(neogen, neoseg, held, seed, num_inference_steps)
    log(f"Synthesis Dice (NeoSeg on NeoGen samples vs conditioning mask): tumour "
        f"{syn['synthetic']['tumour_dice_mean']:.3f}, liver {syn['synthetic']['liver_dice_mean']:.3f}")
    keep = ("auc", "accuracy", "sensitivity", "specificity", "n", "n_positive")
    metrics = {
        "demo": True,
        "note": "Demo weights trained on synthetic phantoms only; the held-out phantoms are disjoint from training.",
        "model_spacing_mm": list(MODEL_SPACING), "patch_shape_kji": list(PATCH_SHAPE),
        "train_seeds": [int(train_seeds[0]), int(train_seeds[-1])], "held_out_seeds": [int(held_out_seeds[0]),
                                                                                      int(held_out_seeds[-1])],
        "train_cases": len(train), "train_pni_positive": int(sum(c.pni for c in train)),
        "held_out_cases": len(held), "held_out_pni_positive": int(sum(c.pni for c in held)),
        "classifier_held_out": {"crop_from_ground_truth": {k: cls_gt[k] for k in keep},
                                "crop_from_neoseg": {k: cls_seg[k] for k in keep}},
        "synthesis_dice": syn, "training": training, "total_seconds": round(time.time() - t0, 1),
        "command": "python -m pantheon.train.neonet_demo Resources/weights",
    }
    (out_dir / "neonet-demo-metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    common = {"version": "1.0.0", "model": "neonet", "demo": True, "license": "Apache-2.0",
              "references": ["https://arxiv.org/abs/2603.29449", "https://arxiv.org/abs/2603.23845"]}
    inp = {"modality": "MR", "axis_order": "DHW", "orientation": "RAS", "spacing": list(MODEL_SPACING),
           "intensity_range": [0.0, 1.0], "channels": 1}
    desc = ("Tiny {what} trained by `python -m pantheon.train.neonet_demo` on synthetic liver MRI phantoms. "
            "Demo weights: they know phantoms, not patients; never for clinical use.")
    cards = {
        "neoseg": dict(task="liver and tumour segmentation (NeoSeg); DEMO weights",
                       input={**inp, "patch_size": [int(v) for v in (16, 48, 48)]},
                       labels=[{"value": 0, "name": "background"}, {"value": 1, "name": "liver"},
                               {"value": 2, "name": "tumour"}],
                       what="NeoSeg (3D U-Net)"),
        "neogen": dict(task="mask- and PNI-conditioned synthesis of TLCR patches (NeoGen LDM + ControlNet); "
                            "DEMO weights", input={**inp, "patch_size": list(PATCH_SHAPE)}, labels=[],
                       what="NeoGen (latent diffusion + ControlNet)"),
        "pattennet": dict(task="PNI prediction from the TLCR patch and tumour mask (PattenNet); DEMO weights",
                          input={**inp, "patch_size": list(PATCH_SHAPE)},
                          labels=[{"value": 0, "name": "PNI negative"}, {"value": 1, "name": "PNI positive"}],
                          what="PattenNet (frozen NeoGen encoder + 3D dual attention)"),
    }
    cfgs = {"neoseg": neoseg.config, "neogen": neogen.config, "pattennet": patten.config}
    for kind, c in cards.items():
        f = files[kind]
        extra = {"architecture": json.loads(json.dumps(cfgs[kind])), "training": training,
                 "held_out": metrics["classifier_held_out"] if kind == "pattennet" else (
                     syn if kind == "neogen" else syn["real_reference"])}
        save_card(ModelCard.from_dict({**common, "id": DEMO_IDS[kind], "task": c["task"],
                                       "description": desc.format(what=c["what"]), "input": c["input"],
                                       "labels": c["labels"], "file": f.name,
                                       "sha256": sha256_file(f, use_cache=False), "size_bytes": f.stat().st_size,
                                       "extra": extra}), cards_dir / f"{DEMO_IDS[kind]}.json")
    log(f"Demo weights written in {time.time() - t0:.0f} s")
    torch.set_num_threads(threads)
    return metrics


if __name__ == "__main__":  # pragma: no cover
    import sys
    build_neonet_demo_weights(sys.argv[1] if len(sys.argv) > 1 else "Resources/weights")
