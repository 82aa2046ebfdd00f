"""Training Duo-Diffusion's label-map generator (:mod:`pantheon.models.foscu`) and its demo weights.

Stages: "vae" (the label autoencoder: class-weighted cross-entropy + KL on whole model-grid label
maps), then "ldm" (the latent UNet; the latent scale is calibrated first). Resumable like every
trainer (:class:`pantheon.train.loop.TrainLoop`); each writes ``<out>/<stage>/labelgen.safetensors``.
The label maps are 3D-LLDM's training maps (:func:`pantheon.train.lldm.phantom_cases` or
:func:`~pantheon.train.lldm.data_cases`), so the two generators share one grid.

Demo weights: ``python -m pantheon.train.foscu`` trains both stages on phantoms within a time
budget, compares sampled label maps with held-out phantom maps (liver and HCC volumes, HCC count,
vessel volume) and writes ``foscu-demo-labelgen.safetensors``, its card and metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from ..defaults import FOSCU_DEMO_LABELGEN_CARD
from ..errors import InputError
from .loop import Schedule, TrainLoop, check_stage, read_checkpoint

STAGES = ("vae", "ldm")
DEFAULT_LR = {"vae": 1e-3, "ldm": 5e-4}
BATCH = {"vae": 2, "ldm": 4}
#: cross-entropy weights of background, liver, portal vein, hepatic veins, HCC (thin vessels and
#: small HCCs would otherwise be decoded away)
CLASS_WEIGHTS = (1.0, 1.0, 4.0, 4.0, 3.0)


def weights_path(out_dir, stage: str) -> Path:
    return Path(out_dir) / stage / "labelgen.safetensors"


def _labels_batch(cases, stage, step, seed):
    rng = np.random.default_rng([int(seed), int(step), 7])
    idx = rng.choice(len(cases), size=min(BATCH[stage], len(cases)), replace=False)
    return torch.from_numpy(np.stack([cases[i].labels for i in idx]).astype(np.int64))


def train_stage(stage: str, cases: Sequence, out_dir, steps: int, resume: bool = True, log=print, config=None,
                seed: int = 0, checkpoint_every: int = 100, time_budget_s=None, progress=None, cancel=None,
                vessel_fit_maps: int = 32):
    """Train one stage; after "ldm" the anatomy limits are measured on ``cases`` and the vessel
    offsets fitted on ``vessel_fit_maps`` sampled maps (:func:`~pantheon.models.foscu.labelgen.fit_vessel_bias`;
    0: none), both stored with the weights."""
    from ..models.foscu.labelgen import anatomy_limits, build_labelgen, fit_vessel_bias, load_labelgen, save_labelgen
    check_stage(stage, STAGES, "Duo-Diffusion label generator")
    out = Path(out_dir)
    (out / stage).mkdir(parents=True, exist_ok=True)
    ckpt_path = out / stage / "checkpoint.pt"
    ckpt = read_checkpoint(ckpt_path, resume, expect={"stage": stage})
    if stage == "vae":
        torch.manual_seed(int(seed))
        model = build_labelgen(grid=cases[0].labels.shape, **(config or {}))
    else:
        prev = weights_path(out, "vae")
        if not prev.is_file():
            raise InputError(f"The ldm stage starts from the vae stage's weights; {prev} does not exist: train that "
                             "stage first.")
        model = load_labelgen(prev)
        if ckpt is None:
            model.eval()
            sample = torch.from_numpy(np.stack([c.labels for c in cases[:16]]).astype(np.int64))
            s = model.calibrate_scale_factor(sample)
            (log or print)(f"[ldm] latent scale factor {s:.3f}")
    model.train()
    lr = DEFAULT_LR[stage]
    opt = torch.optim.AdamW(list(model.stage_parameters(stage)), lr=lr, weight_decay=0.0)
    weights = torch.tensor(CLASS_WEIGHTS)

    def step_fn(step):
        lab = _labels_batch(cases, stage, step, seed)
        g = torch.Generator().manual_seed(int(seed) * 100003 + int(step))
        return model.training_losses(lab, stage, generator=g, class_weights=weights)["loss"]

    loop = TrainLoop(model, opt, steps, checkpoint=ckpt_path, resume_from=ckpt,
                     schedule=Schedule(warmup_steps=min(50, steps // 10), follow_time=time_budget_s is not None),
                     checkpoint_every=checkpoint_every, time_budget_s=time_budget_s, grad_clip=1.0, name=stage,
                     progress=progress, cancel=cancel, log=log, extra_state=lambda: {"stage": stage, "seed": int(seed)})
    result = loop.run(step_fn)
    model.eval()
    model.anatomy_limits = anatomy_limits([c.labels for c in cases])  # what sampling may give (anatomy check)
    if stage == "ldm" and vessel_fit_maps > 0:
        fit = fit_vessel_bias(model, [c.labels for c in cases], n=int(vessel_fit_maps))
        model.class_bias = fit["bias"]
        (log or print)(f"[ldm] vessel offsets {fit['bias'][2]:+.2f} / {fit['bias'][3]:+.2f}: vessel share of the "
                       f"liver {fit['sampled_before']} -> {fit['sampled_after']} (training maps {fit['target']})")
    result.weights = save_labelgen(model, weights_path(out, stage), {"stage": stage, "steps": str(result.steps)})
    return result


def label_statistics(maps: Sequence[np.ndarray], voxel_ml: float) -> Dict[str, float]:
    """Mean and SD over maps of the liver, vessel and HCC volumes (ml) and the HCC count; the share
    of maps with a liver of at least 500 ml."""
    from ..models.foscu.labelgen import hcc_count
    rows = [{"liver_ml": float((m == 1).sum() * voxel_ml), "vessels_ml": float(np.isin(m, (2, 3)).sum() * voxel_ml),
             "hcc_ml": float((m == 4).sum() * voxel_ml), "hcc_count": float(hcc_count(m))} for m in maps]
    out = {"n": len(rows), "with_liver_500ml": float(np.mean([r["liver_ml"] >= 500 for r in rows]))}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[f"{k}_mean"], out[f"{k}_sd"] = float(np.mean(vals)), float(np.std(vals, ddof=1) if len(vals) > 1 else 0)
    return out


def build_foscu_demo_weights(out_dir, cards_dir=None, budget_s: float = 5400.0, work_dir=None, log=print,
                             n_samples: int = 16):
    """Both stages on the 3D-LLDM demo's training phantoms (``budget_s`` split 40 / 60 %); sampled maps
    against held-out phantom maps; weights, card and metrics."""
    import shutil
    import tempfile

    from .lldm import HELD_OUT_SEEDS, TRAIN_SEEDS, phantom_cases
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="pantheon-foscu-demo-"))
    train, held = phantom_cases(TRAIN_SEEDS), phantom_cases(HELD_OUT_SEEDS)
    training = {}
    for stage, share in (("vae", 0.4), ("ldm", 0.6)):
        t = time.time()
        r = train_stage(stage, train, work, steps=100000, time_budget_s=budget_s * share, log=log)
        training[stage] = {"steps": r.steps, "seconds": round(time.time() - t, 1),
                           "loss_first50": float(np.mean(r.history[:50])),
                           "loss_last50": float(np.mean(r.history[-50:]))}
        log(f"[{stage}] {training[stage]}")
    metrics = finish_foscu_demo(work, out_dir, training, held, cards_dir, n_samples, t0)
    if not work_dir:
        shutil.rmtree(work, ignore_errors=True)
    log(f"Duo-Diffusion label generator demo weights written in {time.time() - t0:.0f} s")
    return metrics


def finish_foscu_demo(work, out_dir, training, held, cards_dir=None, n_samples: int = 16, t0=None):
    """Measure the run's final label generator and write the demo weights, metrics and card (also
    after more ldm steps were added to a kept ``--work-dir`` run)."""
    from ..models.foscu.labelgen import (
        anatomy_limits,
        fit_vessel_bias,
        load_labelgen,
        sample_checked,
        save_labelgen,
        tidy_labels,
    )
    from ..models.lldm.synthesis import MODEL_SPACING
    from ..registry import CARDS_DIR, ModelCard, save_card, sha256_file
    from .lldm import DEMO_TRAIN_SHAPE, HELD_OUT_SEEDS, TRAIN_SEEDS, phantom_cases
    t0 = time.time() if t0 is None else t0
    out_dir = Path(out_dir)
    model = load_labelgen(weights_path(work, "ldm"))
    voxel_ml = float(np.prod(MODEL_SPACING)) / 1000.0
    with torch.no_grad():
        x = torch.from_numpy(np.stack([c.labels for c in held]).astype(np.int64))
        rec = model.decode_logits(model.encode(x)).argmax(1).numpy()
    recon_dice = {}
    for v, name in ((1, "liver"), (2, "portal_vein"), (3, "hepatic_vein"), (4, "hcc")):
        a, b = rec == v, x.numpy() == v
        recon_dice[name] = float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
    training_maps = [c.labels for c in phantom_cases(TRAIN_SEEDS)]
    if not (model.anatomy_limits or {}).get("vessel_share"):  # weights trained before the check (or before
        model.anatomy_limits = anatomy_limits(training_maps)  # it judged vessels): measure it on the training maps
    vessel_fit = None
    if model.class_bias is None:  # weights trained before the vessel offsets: fit them now
        vessel_fit = fit_vessel_bias(model, training_maps)
        model.class_bias = vessel_fit["bias"]
    t = time.time()
    unchecked = [tidy_labels(model.sample(1, 50, generator=torch.Generator().manual_seed(s))[0])
                 for s in range(n_samples)]  # pair n's first draw
    seconds = (time.time() - t) / n_samples
    checked = [sample_checked(model, s, 50, voxel_ml) for s in range(n_samples)]
    sampled = [c[0] for c in checked]
    check = {"limits": model.anatomy_limits, "draws_mean": float(np.mean([c[2] for c in checked])),
             "draws_max": int(max(c[2] for c in checked)), "failed": int(sum(c[3] is not None for c in checked))}
    metrics = {
        "demo": True, "note": "Label generator demo weights trained on phantom label maps only.",
        "grid_kji": list(DEMO_TRAIN_SHAPE), "model_spacing_mm": list(MODEL_SPACING),
        "train_seeds": [TRAIN_SEEDS[0], TRAIN_SEEDS[-1]], "held_out_seeds": [HELD_OUT_SEEDS[0], HELD_OUT_SEEDS[-1]],
        "training": training, "held_out_autoencoder_dice": recon_dice,
        "sampled": label_statistics(sampled, voxel_ml), "anatomy_check": check,
        "vessel_offsets": {"bias": model.class_bias, **({"fit": vessel_fit} if vessel_fit else {})},
        "sampled_unchecked": label_statistics(unchecked, voxel_ml),
        "held_out_real": label_statistics([c.labels for c in held], voxel_ml),
        "ddim_50_seconds_per_map": round(seconds, 2), "total_seconds": round(time.time() - t0, 1),
        "command": "python -m pantheon.train.foscu pantheon/registry/weights",
    }
    dest = out_dir / f"{FOSCU_DEMO_LABELGEN_CARD}.safetensors"
    save_labelgen(model, dest, {"demo": "true"})
    (out_dir / "foscu-demo-metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    card = {
        "id": FOSCU_DEMO_LABELGEN_CARD, "version": "1.0.0", "model": "foscu", "demo": True, "license": "Apache-2.0",
        "task": "unconditional 3D-LLDM label maps (liver, portal vein, hepatic veins, HCC) for Duo-Diffusion; DEMO "
                "weights",
        "description": "Tiny label-map latent diffusion model trained by `python -m pantheon.train.foscu` on phantom "
                       "label maps; the MR volumes come from the 3D-LLDM demo weights. Demo weights: never for "
                       "clinical use.",
        "input": {"modality": "SEG", "axis_order": "DHW", "orientation": "RAS", "spacing": list(MODEL_SPACING),
                  "channels": 5, "patch_size": list(DEMO_TRAIN_SHAPE)},
        "labels": [{"value": v, "name": n} for v, n in ((1, "liver"), (2, "portal_vein"), (3, "hepatic_vein"),
                                                        (4, "hcc"))],
        "file": dest.name, "sha256": sha256_file(dest, use_cache=False), "size_bytes": dest.stat().st_size,
        "references": ["https://arxiv.org/abs/2603.29343"],
        "extra": {"architecture": json.loads(json.dumps(model.config)), "training": training,
                  "anatomy_check": check},
    }
    cards = Path(cards_dir) if cards_dir else CARDS_DIR
    save_card(ModelCard.from_dict(card), cards / f"{FOSCU_DEMO_LABELGEN_CARD}.json")
    return metrics


if __name__ == "__main__":  # pragma: no cover
    import argparse

    from ..registry import BUNDLED_WEIGHTS_DIR
    ap = argparse.ArgumentParser(description="Train the Duo-Diffusion label generator demo weights on phantoms.")
    ap.add_argument("out_dir", nargs="?", default=str(BUNDLED_WEIGHTS_DIR))
    ap.add_argument("--budget", type=float, default=5400.0, help="training seconds over the two stages")
    ap.add_argument("--work-dir", default=None, help="keep the stage checkpoints here (resumable)")
    a = ap.parse_args()
    build_foscu_demo_weights(a.out_dir, budget_s=a.budget, work_dir=a.work_dir)
