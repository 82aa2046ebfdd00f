"""Training 3D-LLDM (:mod:`pantheon.models.lldm`) in its three stages, and its demo weights.

Stages (the NeoGen recipe, :mod:`pantheon.models.neonet.neogen`): "vae" (the KL autoencoder on
whole model-grid volumes), "ldm" (the latent UNet on the autoencoder's scaled latents; the latent
scale is calibrated first), "controlnet" (the ControlNet on the one-hot label channels, the UNet
frozen, initialised from the UNet). Every stage is resumable (``<out>/<stage>/checkpoint.pt``,
:class:`pantheon.train.loop.TrainLoop`) and writes ``<out>/<stage>/lldm.safetensors``.

Data: :class:`VolumeCase` pairs on the model grid, made the way a synthesis prepares its labels
(:func:`pantheon.models.lldm.synthesis.prepare_labels`), from 3D-LLDM phantoms
(:func:`pantheon.synth.hcc_mri_phantom.make_hcc_mri_phantom`) or from the user's pairs
(:func:`pantheon.data.pairs.read_pairs`).

Demo weights: ``python -m pantheon.train.lldm pantheon/registry/weights`` trains the three stages
on phantoms within a time budget, picks the sampler's ControlNet scale and start on validation
phantoms, measures held-out phantoms and writes ``lldm-demo.safetensors``, its card and
``lldm-demo-metrics.json``. ``--rechoose`` does the choosing and measuring again on the bundled
network, untrained further (how the bundled weights got their sampling when the choices widened).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..io.volume import Volume
from .loop import Schedule, TrainLoop, check_stage, read_checkpoint

STAGES = ("vae", "ldm", "controlnet")
PREVIOUS = {"ldm": "vae", "controlnet": "ldm"}
DEFAULT_LR = {"vae": 1e-3, "ldm": 5e-4, "controlnet": 5e-4}
BATCH = {"vae": 2, "ldm": 4, "controlnet": 4}
#: Common padded model grid of the demo training volumes (K, J, I): a 300 x 250 x 170 mm phantom
#: field at 6 mm is 29 x 43 x 51 voxels.
DEMO_TRAIN_SHAPE = (32, 48, 64)
#: Chance, per training volume, that the ControlNet sees a label channel merged into the liver
#: (:func:`pantheon.models.lldm.synthesis.one_hot` ``use``): it learns to draw those vessels itself,
#: which is what leaving a label out at synthesis means. Never the HCC: an empty HCC channel must
#: keep meaning "no tumour".
CONTROL_DROPOUT = {"portal_vein": 0.15, "hepatic_vein": 0.15}
TRAIN_SEEDS = range(50000, 50160)
VAL_SEEDS = range(55000, 55008)
HELD_OUT_SEEDS = range(56000, 56016)
#: ControlNet scale and DDIM start (init strength) the demo build chooses from, on validation phantoms
#: (by the Pearson r of synthetic with real). Scales above 1 were first tried only from pure noise,
#: where r is poor; from a guide image they also raised r (1 / 0.6: 0.918, 3 / 0.8: 0.925) and darkened
#: the vessels towards the real ones' share of the liver.
SAMPLING_CHOICES = tuple((scale, start) for start in (1.0, 0.8, 0.6) for scale in (1.0, 2.0, 3.0, 4.0))


@dataclass
class VolumeCase:
    """One training pair on the model grid: ``image`` float32 (K, J, I) on the [0, 1] scale,
    ``labels`` uint8 3D-LLDM values, both zero-padded to a common shape."""

    image: np.ndarray
    labels: np.ndarray
    case_id: str = "case"


def prepare_pair(image: Volume, labels: Volume, shape=None, case_id: str = "case") -> VolumeCase:
    """An (MRI, label map) pair on the model grid, as a synthesis puts a label map there."""
    from ..models.lldm.synthesis import MODEL_SPACING, lldm_labels, prepare_labels
    from ..models.neonet.preprocess import normalize_mri, resample_to_model
    if image.shape != labels.shape or not image.same_geometry(labels, atol=1e-3):
        raise InputError(f"The label map of {case_id} is not on its image's grid.")
    lab = labels.with_array(lldm_labels(labels, f"label map of {case_id}"))
    multiple = 16
    model_labels, _, unpadded = prepare_labels(lab, MODEL_SPACING, multiple)
    img, _ = resample_to_model(image, MODEL_SPACING, "linear")
    arr = np.zeros(model_labels.shape, np.float32)
    arr[:unpadded[0], :unpadded[1], :unpadded[2]] = normalize_mri(img.array)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if any(a > b for a, b in zip(arr.shape, shape)):
            raise InputError(f"{case_id} needs a model grid of {arr.shape}, larger than the training grid {shape}.")
        pad = [(0, b - a) for a, b in zip(arr.shape, shape)]
        arr, model_labels = np.pad(arr, pad), np.pad(model_labels, pad)
    return VolumeCase(arr, model_labels, case_id)


def phantom_cases(seeds: Sequence[int], shape=DEMO_TRAIN_SHAPE) -> List[VolumeCase]:
    from ..synth.hcc_mri_phantom import make_hcc_mri_phantom
    out = []
    for s in seeds:
        mri, labels, _ = make_hcc_mri_phantom(int(s), oblique=True)
        out.append(prepare_pair(mri, labels, shape, f"phantom {s}"))
    return out


def data_cases(data, shape=None) -> List[VolumeCase]:
    """The user's pairs (:func:`pantheon.data.pairs.read_pairs`), padded to one common grid."""
    from ..data.pairs import pair_paths, read_pairs
    names = [p[0].name for p in pair_paths(data)]
    cases = [prepare_pair(img, lab, None, name) for (img, lab), name in zip(read_pairs(data), names)]
    common = shape or tuple(max(c.image.shape[d] for c in cases) for d in range(3))
    return [prepare_pair_padded(c, common) for c in cases]


def prepare_pair_padded(case: VolumeCase, shape) -> VolumeCase:
    pad = [(0, b - a) for a, b in zip(case.image.shape, shape)]
    return VolumeCase(np.pad(case.image, pad), np.pad(case.labels, pad), case.case_id)


def _batch(cases: Sequence[VolumeCase], stage: str, step: int, seed: int):
    from ..models.lldm.model import LABEL_CHANNELS
    from ..models.lldm.synthesis import one_hot
    rng = np.random.default_rng([int(seed), int(step)])
    idx = rng.choice(len(cases), size=min(BATCH[stage], len(cases)), replace=False)
    # Whole volumes, also for the autoencoder: trained on crops, its GroupNorm statistics did not
    # carry over to the whole field it encodes at synthesis (the parenchyma came back 20 % too bright).
    x = torch.from_numpy(np.stack([cases[i].image for i in idx]))[:, None]
    masks = None
    if stage == "vae":  # the labels weight its reconstruction loss (LLDM.reconstruction_weight)
        masks = torch.cat([one_hot(cases[i].labels) for i in idx])
    elif stage == "controlnet":
        masks = torch.cat([one_hot(cases[i].labels, [n for n in LABEL_CHANNELS
                                                     if rng.random() >= CONTROL_DROPOUT.get(n, 0.0)]) for i in idx])
    return x, masks, torch.Generator().manual_seed(int(seed) * 100003 + int(step))


def weights_path(out_dir, stage: str) -> Path:
    return Path(out_dir) / stage / "lldm.safetensors"


def train_stage(stage: str, cases: Sequence[VolumeCase], out_dir, steps: int, resume: bool = True, log=print,
                config: Optional[dict] = None, lr: Optional[float] = None, seed: int = 0,
                checkpoint_every: int = 100, time_budget_s: Optional[float] = None, progress=None, cancel=None):
    """Train one stage from the previous stage's weights in ``out_dir`` (a new model for "vae");
    returns the :class:`~pantheon.train.loop.TrainResult` (``weights``: the stage's file)."""
    from ..models.lldm.model import build_lldm, load_lldm, save_lldm
    check_stage(stage, STAGES, "3D-LLDM")
    log = log or (lambda *_: None)
    out = Path(out_dir)
    (out / stage).mkdir(parents=True, exist_ok=True)
    ckpt_path = out / stage / "checkpoint.pt"
    ckpt = read_checkpoint(ckpt_path, resume, expect={"stage": stage})
    if stage == "vae":
        torch.manual_seed(int(seed))
        model = build_lldm(patch_size=cases[0].image.shape, **(config or {}))
    else:
        prev = weights_path(out, PREVIOUS[stage])
        if not prev.is_file():
            raise InputError(f"The {stage} stage starts from the {PREVIOUS[stage]} stage's weights; {prev} does not "
                             "exist: train that stage first.")
        model = load_lldm(prev)
        if stage == "ldm" and ckpt is None:
            x = torch.from_numpy(np.stack([c.image for c in cases[:16]]))[:, None]
            model.eval()
            log(f"[ldm] latent scale factor {model.calibrate_scale_factor(x):.3f}")
        if stage == "controlnet" and ckpt is None:
            model.init_controlnet_from_unet(live_embedding=True)
    model.train()
    params = list(model.stage_parameters(stage))
    lr = DEFAULT_LR[stage] if lr is None else float(lr)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def step_fn(step):
        x, masks, g = _batch(cases, stage, step, seed)
        return model.training_losses(x, masks, None, stage=stage, generator=g)["loss"]

    loop = TrainLoop(model, opt, steps, checkpoint=ckpt_path, resume_from=ckpt,
                     schedule=Schedule(warmup_steps=min(50, steps // 10), follow_time=time_budget_s is not None),
                     checkpoint_every=checkpoint_every, time_budget_s=time_budget_s, grad_clip=1.0, name=stage,
                     progress=progress, cancel=cancel, log=log,
                     extra_state=lambda: {"stage": stage, "seed": int(seed), "lr": float(lr)})
    result = loop.run(step_fn)
    model.eval()
    result.weights = save_lldm(model, weights_path(out, stage), {"stage": stage, "steps": str(result.steps)})
    return result


# ------------------------------------------------------------------------------ measuring
@torch.no_grad()
def label_fidelity(model, cases: Sequence[VolumeCase], seed: int = 0, steps: int = 20, conditioning_scale=None,
                   init_strength=None) -> Dict:
    """How the synthetic volumes follow their labels, against the real volumes of the same labels:
    mean intensity per label (synthetic and real), the HCC and vessel contrast to the parenchyma
    (mean label / mean liver), and the Pearson correlation of synthetic with real inside the field."""
    from ..models.lldm.model import LABEL_CHANNELS
    from ..models.lldm.synthesis import one_hot
    g = torch.Generator().manual_seed(int(seed))
    rows = []
    for c in cases:
        syn = model.generate(one_hot(c.labels), labels=None, num_inference_steps=steps, generator=g,
                             conditioning_scale=conditioning_scale, init_strength=init_strength)[0, 0]
        syn = syn.clamp(0, 1).numpy()
        field = c.image > 0  # the padding is exactly 0; the body rarely is
        row = {"pearson_r": float(np.corrcoef(syn[field], c.image[field])[0, 1])}
        for v, name in enumerate(LABEL_CHANNELS, start=1):
            m = c.labels == v
            if m.any():
                row[f"{name}_synthetic"] = float(syn[m].mean())
                row[f"{name}_real"] = float(c.image[m].mean())
        rows.append(row)
    out = {"n": len(cases), "steps": steps, "pearson_r_mean": float(np.mean([r["pearson_r"] for r in rows]))}
    for name in LABEL_CHANNELS:
        for kind in ("synthetic", "real"):
            vals = [r[f"{name}_{kind}"] for r in rows if f"{name}_{kind}" in r]
            if vals:
                out[f"{name}_{kind}_mean"] = float(np.mean(vals))
        if name != "liver":
            for kind in ("synthetic", "real"):
                ratios = [r[f"{name}_{kind}"] / max(r[f"liver_{kind}"], 1e-6) for r in rows if f"{name}_{kind}" in r]
                if ratios:
                    out[f"{name}_to_liver_{kind}"] = float(np.mean(ratios))
    return out


def _timed(stage, cases, out, budget_s, log, **kw):
    t = time.time()
    r = train_stage(stage, cases, out, steps=100000, time_budget_s=budget_s, log=log, **kw)
    h = r.history
    return {"steps": r.steps, "seconds": round(time.time() - t, 1), "loss_first50": float(np.mean(h[:50])),
            "loss_last50": float(np.mean(h[-50:]))}


def build_lldm_demo_weights(out_dir, cards_dir=None, budget_s: float = 4800.0, work_dir=None, log=print,
                            train_seeds=TRAIN_SEEDS, val_seeds=VAL_SEEDS, held_out_seeds=HELD_OUT_SEEDS):
    """Train the three stages on phantoms (``budget_s`` split 35 / 25 / 40 %), then
    :func:`finish_lldm_demo`: choose the sampling on validation phantoms, measure held-out phantoms,
    write the weights, card and metrics."""
    import shutil
    import tempfile

    from ..models.lldm.model import load_lldm
    t0 = time.time()
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="pantheon-lldm-demo-"))
    train = phantom_cases(train_seeds)
    log(f"{len(train)} training phantoms on a {'x'.join(map(str, DEMO_TRAIN_SHAPE))} grid ({time.time() - t0:.0f} s)")
    training = {}
    for stage, share in (("vae", 0.35), ("ldm", 0.25), ("controlnet", 0.4)):
        training[stage] = _timed(stage, train, work, budget_s * share, log)
        log(f"[{stage}] {training[stage]}")
    metrics = finish_lldm_demo(load_lldm(weights_path(work, "controlnet")), out_dir, training, cards_dir, log,
                               train_seeds, val_seeds, held_out_seeds, t0=t0)
    if not work_dir:
        shutil.rmtree(work, ignore_errors=True)
    log(f"3D-LLDM demo weights written in {time.time() - t0:.0f} s")
    return metrics


def choose_sampling(model, val: Sequence[VolumeCase], choices=SAMPLING_CHOICES, log=print) -> Dict[str, Dict]:
    """Validation Pearson r of every (ControlNet scale, init strength) of ``choices``; sets the best
    as the model's default sampling and returns the table."""
    table = {}
    for sc, st in choices:
        f = label_fidelity(model, val, seed=1, conditioning_scale=sc, init_strength=st)
        table[f"{sc:g}/{st:g}"] = {"conditioning_scale": sc, "init_strength": st, "pearson_r_mean": f["pearson_r_mean"],
                                   **{k: f[k] for k in f if k.endswith("_to_liver_synthetic")}}
        log(f"scale {sc:g}, init strength {st:g}: validation r {f['pearson_r_mean']:.3f}")
    best = max(table.values(), key=lambda v: v["pearson_r_mean"])
    model.config["conditioning_scale"] = float(best["conditioning_scale"])
    model.config.pop("init_strength", None)  # absent = 1.0 (pure noise)
    if best["init_strength"] != 1.0:
        model.config["init_strength"] = float(best["init_strength"])
    return table


def finish_lldm_demo(model, out_dir, training: Dict, cards_dir=None, log=print, train_seeds=TRAIN_SEEDS,
                     val_seeds=VAL_SEEDS, held_out_seeds=HELD_OUT_SEEDS, t0=None, extra: Optional[Dict] = None) -> Dict:
    """Choose the trained model's sampling on validation phantoms, measure held-out phantoms, write
    ``lldm-demo.safetensors``, its card and metrics (also to re-choose on the bundled weights:
    ``--rechoose``, which keeps their ``training`` record)."""
    from ..models.lldm.model import LABEL_CHANNELS, save_lldm
    from ..models.lldm.synthesis import DEMO_CARD, MODEL_SPACING, one_hot
    from ..registry import CARDS_DIR, ModelCard, save_card, sha256_file
    t0 = time.time() if t0 is None else t0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    val, held = phantom_cases(val_seeds), phantom_cases(held_out_seeds)
    table = choose_sampling(model, val, log=log)
    held_out = label_fidelity(model, held, seed=0)
    with torch.no_grad():  # autoencoder reconstruction on held-out volumes
        x = torch.from_numpy(np.stack([c.image for c in held]))[:, None]
        rec = model.decode(model.encode(x)).clamp(0, 1)
        mse = torch.mean((rec - x) ** 2, dim=(1, 2, 3, 4))
        psnr = float(torch.mean(10 * torch.log10(1.0 / mse)))
    t = time.time()
    model.generate(one_hot(held[0].labels), labels=None, num_inference_steps=50, generator=torch.Generator())
    ddim_50 = time.time() - t
    dest = out_dir / f"{DEMO_CARD}.safetensors"
    save_lldm(model, dest, {"demo": "true"})
    metrics = {
        "demo": True,
        "note": "Demo weights trained on synthetic phantoms only; validation and held-out phantoms are disjoint "
                "from training.",
        "model_spacing_mm": list(MODEL_SPACING), "train_grid_kji": list(DEMO_TRAIN_SHAPE),
        "train_seeds": [train_seeds[0], train_seeds[-1]], "val_seeds": [val_seeds[0], val_seeds[-1]],
        "held_out_seeds": [held_out_seeds[0], held_out_seeds[-1]],
        "training": training, "sampling_choice_validation": table,
        "chosen": {"conditioning_scale": model.config["conditioning_scale"],
                   "init_strength": model.config.get("init_strength", 1.0)},
        "held_out_label_fidelity": held_out, "held_out_autoencoder_psnr_db": psnr,
        "ddim_50_steps_seconds_one_volume": round(ddim_50, 2), "torch_threads": threads,
        "total_seconds": round(time.time() - t0, 1),
        "command": "python -m pantheon.train.lldm pantheon/registry/weights", **(extra or {}),
    }
    (out_dir / f"{DEMO_CARD}-metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cards_dir = Path(cards_dir) if cards_dir else CARDS_DIR
    card = {
        "id": DEMO_CARD, "version": "1.0.0", "model": "lldm", "demo": True, "license": "Apache-2.0",
        "task": "label-guided synthesis of whole hepatobiliary-phase liver MRI (3D-LLDM: VAE + latent diffusion + "
                "ControlNet); DEMO weights",
        "description": "Tiny 3D-LLDM trained by `python -m pantheon.train.lldm` on synthetic liver MRI phantoms. "
                       "Demo weights: they know phantoms, not patients; never for clinical use.",
        "input": {"modality": "MR", "axis_order": "DHW", "orientation": "RAS", "spacing": list(MODEL_SPACING),
                  "intensity_range": [0.0, 1.0], "channels": 1, "patch_size": list(DEMO_TRAIN_SHAPE)},
        "labels": [{"value": v, "name": n} for v, n in enumerate(LABEL_CHANNELS, start=1)],
        "file": dest.name, "sha256": sha256_file(dest, use_cache=False), "size_bytes": dest.stat().st_size,
        "references": ["https://arxiv.org/abs/2603.23845"],
        "extra": {"architecture": json.loads(json.dumps(model.config)), "training": training,
                  "held_out": held_out},
    }
    save_card(ModelCard.from_dict(card), cards_dir / f"{DEMO_CARD}.json")
    return metrics


def rechoose_bundled_sampling(out_dir, cards_dir=None, log=print) -> Dict:
    """Re-run :func:`finish_lldm_demo` on the weights in ``out_dir`` (the network unchanged): the
    sampling choice after :data:`SAMPLING_CHOICES` grew, without retraining."""
    from ..models.lldm.model import load_lldm
    from ..models.lldm.synthesis import DEMO_CARD
    out_dir = Path(out_dir)
    old = json.loads((out_dir / f"{DEMO_CARD}-metrics.json").read_text())
    model = load_lldm(out_dir / f"{DEMO_CARD}.safetensors")
    before = {"chosen": old.get("chosen"), "total_seconds": old.get("total_seconds"),
              "held_out_label_fidelity": old.get("held_out_label_fidelity")}
    rechosen = {"command": "python -m pantheon.train.lldm --rechoose", "before": before}
    return finish_lldm_demo(model, out_dir, old["training"], cards_dir, log, extra={"rechosen": rechosen})


if __name__ == "__main__":  # pragma: no cover
    import argparse
    ap = argparse.ArgumentParser(description="Train the 3D-LLDM demo weights on phantoms.")
    from ..registry import BUNDLED_WEIGHTS_DIR
    ap.add_argument("out_dir", nargs="?", default=str(BUNDLED_WEIGHTS_DIR))
    ap.add_argument("--budget", type=float, default=4800.0, help="training seconds over the three stages")
    ap.add_argument("--work-dir", default=None, help="keep the stage checkpoints here (resumable)")
    ap.add_argument("--rechoose", action="store_true",
                    help="no training: choose the sampling of the weights in out_dir again and re-measure them")
    a = ap.parse_args()
    if a.rechoose:
        rechoose_bundled_sampling(a.out_dir)
    else:
        build_lldm_demo_weights(a.out_dir, budget_s=a.budget, work_dir=a.work_dir)
