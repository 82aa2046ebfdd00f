"""MAESIL's comparison for the NEMESIS encoder family: masked autoencoder vs AE, VAE and VQ-VAE on
CT phantom superpatches, reconstruction PSNR and SSIM (issue 17 section 6).

Paper: "MAESIL: Masked Autoencoder for Enhanced Self-supervised Medical Image Learning", arXiv
2604.00514 (the NEMESIS group's earlier superpatch MAE: 128^3 superpatches of 8^3 patches, dual
masking). It compares its MAE with an autoencoder (AE), a variational autoencoder (VAE) and a
vector-quantised VAE (VQ-VAE) on reconstruction of held-out CT (PSNR 30.28, SSIM 0.98, LPIPS 0.26
for MAESIL). The paper's baseline sizes, training budgets and whether visible patches are pasted
back before scoring are not known to us, so every choice below is an assumption, stated as one.

Protocol (``ComparisonConfig``; ``python benchmarks/maesil_comparison.py`` runs it):

- Data: abdominal CT phantoms (:func:`pantheon.synth.make_abdomen_phantom`), HU clipped to
  [-175, 250] and scaled to [0, 1] in NEMESIS's axis order (:func:`pantheon.pipelines.nemesis.prepare_ct`).
  Training: the 24 phantoms the bundled demo encoder was pretrained on (seeds 10000-10023); held out:
  64 superpatches from 8 phantoms no model trained on (seeds 50000-50007, the demo's own held-out
  set), drawn once with a fixed seed and the pretraining foreground rule (mean >= 0.05).
- Superpatch 64^3 (assumption: the demo NEMESIS's size, as 128^3 does not train on 2 CPU cores),
  patches 8^3, batch 4.
- The MAE is the demo NEMESIS architecture (:data:`pantheon.train.demo_weights.DEMO_MODEL`: width
  96, 3 + 1 MATB blocks, 598,707 parameters), trained with the paper's recipe: dual masking 0.5/0.5,
  noise drawn per batch from {0, 0.01, 0.03, 0.05} with the clean superpatch as target, loss on the
  masked patches only.
- Baselines from MONAI, 3D, one channel, plain MSE reconstruction of the clean superpatch (plus
  the KL term, weight 1e-6, for the VAE and MONAI's commitment loss for the VQ-VAE). Sizes
  (assumptions): parameters within :data:`PARAMETER_FACTOR` of the MAE's, and a bottleneck as
  wide as the MAE's tokens: an 8^3 grid of 96 channels (the MAE's 512 tokens of width 96), reached
  by three stride-2 stages that stay thin (8-16 channels) at high resolution, so a forward pass
  costs 1.5-2.5 GFLOP per superpatch rather than the 10-160 of MONAI's default widths. AE:
  ``AutoEncoder`` channels (16, 32, 96), two residual units a stage; VAE: ``AutoencoderKL``
  channels (8, 8, 16, 48), residual blocks (0, 1, 1, 1), no attention, transposed-convolution
  upsampling, 96 latent channels; VQ-VAE: ``VQVAE`` channels (8, 24, 48), residual channels
  (8, 8, 16), 512 codes of dimension 96.
- Budget: every model gets the same wall-clock seconds (``budget_s``; "compute" on this machine,
  since the conv nets cost several times the MAE's FLOPs per step), the same batch size, the same
  batches (drawn from the step number, so step n is the same superpatches for every model) and the
  same optimiser: AdamW, lr 1e-3 (the demo's), weight decay 0.05, betas (0.9, 0.95), 20 warm-up
  steps, then cosine decay over the budget, gradient clipping at 1.0 (:class:`pantheon.train.loop.TrainLoop`).
  ``steps`` instead gives every model the same number of steps (the tests' deterministic budget).
- Evaluation on the clean held-out superpatches, every prediction clipped to [0, 1] (the window),
  MONAI ``PSNRMetric`` (max 1) and ``SSIMMetric`` (3D, Gaussian window 11, sigma 1.5, data range 1)
  over the whole superpatch; mean and sample SD over superpatches. The VAE decodes its posterior
  mean. The MAE is scored three ways: at the paper's 0.5/0.5 masking with the visible patches pasted
  back from the input (as MAE papers display it; a quarter of the voxels are then exact), at 0.5/0.5
  on the raw decoder output (the paper's PSNR formula), and unmasked (every token visible, raw
  output: the like-for-like autoencoder setting; the masked-only loss never trains the decoder's
  output at visible positions, so this is expected to be poor). Masks are drawn from a fixed seed,
  so every MAE (and the bundled demo weights, scored as extra rows) sees the same masks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..defaults import NEMESIS_DEMO_CARD
from ..models.nemesis import NemesisMAE
from ..models.nemesis.reconstruction import paste_visible, voxel_mask
from .demo_weights import DEMO_MODEL, PRETRAIN_PHANTOM_SEEDS, RECON_HELD_OUT_SEEDS
from .loop import Schedule, TrainLoop, TrainResult
from .nemesis import sample_superpatches

PAPER = "MAESIL, arXiv 2604.00514"
#: Baselines' parameter counts lie within this factor of the MAE's (either way).
PARAMETER_FACTOR = 1.25
#: The held-out draw and the MAE's evaluation masks use this seed whatever the training seed, so runs
#: with different seeds are scored on the same superpatches and masks.
EVAL_SEED = 0
KINDS = ("ae", "vae", "vqvae", "mae")
NAMES = {"ae": "AE (MONAI AutoEncoder)", "vae": "VAE (MONAI AutoencoderKL)", "vqvae": "VQ-VAE (MONAI VQVAE)",
         "mae": "NEMESIS MAE"}
MAE_VARIANTS = ("0.5/0.5 mask, visible pasted", "0.5/0.5 mask, raw output", "unmasked")
#: Steps the bundled demo encoder was pretrained for (its card's ``extra.pretraining.steps``).
DEMO_STEPS_FALLBACK = 1000


@dataclass
class ComparisonConfig:
    """Everything that defines a comparison run; the defaults are the real run (module docstring)."""

    superpatch: int = 64
    mae: dict = field(default_factory=lambda: dict(DEMO_MODEL))
    ae: dict = field(default_factory=lambda: dict(channels=(16, 32, 96), strides=(2, 2, 2), num_res_units=2))
    vae: dict = field(default_factory=lambda: dict(channels=(8, 8, 16, 48), num_res_blocks=(0, 1, 1, 1),
                                                   latent_channels=96, norm_num_groups=8))
    vqvae: dict = field(default_factory=lambda: dict(channels=(8, 24, 48), num_res_channels=(8, 8, 16),
                                                     num_res_layers=1, num_embeddings=512, embedding_dim=96))
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    warmup_steps: int = 20
    min_lr_factor: float = 0.01
    grad_clip: float = 1.0
    kl_weight: float = 1e-6
    mask_ratio: tuple = (0.5, 0.5)
    noise_levels: tuple = (0.0, 0.01, 0.03, 0.05)
    min_foreground: float = 0.05
    train_seeds: tuple = tuple(PRETRAIN_PHANTOM_SEEDS)
    held_out_seeds: tuple = tuple(RECON_HELD_OUT_SEEDS)
    held_out_superpatches: int = 64
    phantom_shape: Optional[tuple] = None  # None: the generator's own random grid (about 65-145 x 145-200^2)
    eval_batch: int = 8


def tiny_config() -> ComparisonConfig:
    """Toy sizes for tests: 32^3 superpatches, models of a few thousand parameters, small phantoms."""
    return ComparisonConfig(
        superpatch=32,
        mae=dict(superpatch_size=[32] * 3, patch_size=[8] * 3, embed_dim=32, depth=1, num_heads=2, decoder_depth=1,
                 decoder_num_heads=2, num_maegic_tokens=8, ffn_dim=64, dropout=0.0),
        ae=dict(channels=(8, 16, 32), strides=(2, 2, 2), num_res_units=1),
        vae=dict(channels=(4, 4, 8, 16), num_res_blocks=(0, 1, 1, 1), latent_channels=32, norm_num_groups=4),
        vqvae=dict(channels=(4, 8, 16), num_res_channels=(4, 4, 8), num_res_layers=1, num_embeddings=32,
                   embedding_dim=32),
        batch_size=2, warmup_steps=1, train_seeds=(10_000, 10_001), held_out_seeds=(50_000, 50_001),
        held_out_superpatches=4, phantom_shape=(40, 48, 48), eval_batch=4)


# ============================================================================ models
def build_model(kind: str, cfg: ComparisonConfig) -> torch.nn.Module:
    """One model of the comparison, 3D, one channel in and out (``kind`` one of :data:`KINDS`)."""
    from monai.networks.nets import VQVAE, AutoEncoder, AutoencoderKL
    if kind == "mae":
        mae = dict(cfg.mae)
        mae["superpatch_size"] = [cfg.superpatch] * 3
        return NemesisMAE(**mae)
    if kind == "ae":
        return AutoEncoder(spatial_dims=3, in_channels=1, out_channels=1, **cfg.ae)
    if kind == "vae":
        levels = len(cfg.vae["channels"])
        # no attention: at the 8^3 latent grid a non-local block adds compute without changing the bottleneck
        return AutoencoderKL(spatial_dims=3, in_channels=1, out_channels=1, attention_levels=(False,) * levels,
                             with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
                             use_convtranspose=True, **cfg.vae)
    if kind == "vqvae":
        levels = len(cfg.vqvae["channels"])
        return VQVAE(spatial_dims=3, in_channels=1, out_channels=1, downsample_parameters=((2, 4, 1, 1),) * levels,
                     upsample_parameters=((2, 4, 1, 1, 0),) * levels, **cfg.vqvae)
    raise ValueError(f"Unknown model kind {kind!r}: choose one of {', '.join(KINDS)}.")


def parameter_count(model: torch.nn.Module) -> int:
    """Every parameter, trained or not (the VQ-VAE's codebook included)."""
    return sum(p.numel() for p in model.parameters())


def parameter_ratios(cfg: ComparisonConfig) -> Dict[str, float]:
    """Each baseline's parameter count over the MAE's."""
    mae = parameter_count(build_model("mae", cfg))
    return {kind: parameter_count(build_model(kind, cfg)) / mae for kind in KINDS if kind != "mae"}


def forward_gflop(kind: str, model: torch.nn.Module, cfg: ComparisonConfig, mask_ratio=None) -> float:
    """GFLOP of one eval-mode forward pass on one superpatch (torch's FlopCounter: a multiply-add is 2).
    For the MAE ``mask_ratio`` (default the training masking) sets how many tokens the encoder sees."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.zeros(1, 1, *(cfg.superpatch,) * 3)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if kind == "mae":
            ratio = cfg.mask_ratio if mask_ratio is None else mask_ratio
            model.reconstruct(x, mask_ratio=ratio, generator=torch.Generator().manual_seed(0))
        else:
            model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


# ============================================================================ training
def training_batch(arrays: Sequence[np.ndarray], cfg: ComparisonConfig, seed: int, step: int) -> torch.Tensor:
    """The batch of training step ``step``: a function of (seed, step) only, so every model sees the same."""
    rng = np.random.default_rng([seed, step])
    size = (cfg.superpatch,) * 3
    return torch.from_numpy(sample_superpatches(arrays, size, cfg.batch_size, rng, cfg.min_foreground))


def training_loss(kind: str, model: torch.nn.Module, batch: torch.Tensor, cfg: ComparisonConfig, seed: int,
                  step: int) -> torch.Tensor:
    """The loss each model trains on (module docstring)."""
    mse = torch.nn.functional.mse_loss
    if kind == "mae":
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        noise = float(cfg.noise_levels[int(torch.randint(len(cfg.noise_levels), (1,), generator=gen))])
        return model(batch, mask_ratio=tuple(cfg.mask_ratio), noise_std=noise, generator=gen).loss
    if kind == "ae":
        return mse(model(batch), batch)
    if kind == "vae":
        recon, mu, sigma = model(batch)
        # KL to N(0, 1), summed over the latent and averaged over the batch (MONAI's generative tutorials)
        kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1,
                             dim=list(range(1, mu.ndim))).mean()
        return mse(recon, batch) + cfg.kl_weight * kl
    if kind == "vqvae":
        recon, quantization_loss = model(batch)
        return mse(recon, batch) + quantization_loss
    raise ValueError(f"Unknown model kind {kind!r}: choose one of {', '.join(KINDS)}.")


def train_model(kind: str, model: torch.nn.Module, arrays: Sequence[np.ndarray], cfg: ComparisonConfig,
                steps: Optional[int] = None, budget_s: Optional[float] = None, seed: int = 0,
                log: Optional[Callable[[str], None]] = None, log_every: int = 100,
                clock: Callable[[], float] = time.perf_counter) -> TrainResult:
    """Train ``model`` in place for ``steps`` steps and/or ``budget_s`` seconds (whichever ends first;
    ``clock`` measures the seconds)."""
    if steps is None and budget_s is None:
        raise ValueError("Give the training budget: steps, seconds (budget_s) or both.")
    cap = int(steps) if steps is not None else 10_000_000  # a seconds budget: the cosine follows the clock
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    schedule = Schedule(warmup_steps=min(cfg.warmup_steps, max(1, cap // 10)), decay="cosine",
                        min_factor=cfg.min_lr_factor, follow_time=budget_s is not None)
    loop = TrainLoop(model.train(), opt, cap, schedule=schedule, time_budget_s=budget_s, grad_clip=cfg.grad_clip,
                     name=NAMES[kind], log=log, clock=clock)
    t0 = time.perf_counter()

    def step_loss(step: int) -> torch.Tensor:
        loss = training_loss(kind, model, training_batch(arrays, cfg, seed, step), cfg, seed, step)
        if log is not None and step % log_every == 0:
            log(f"{NAMES[kind]}: step {step}, loss {float(loss.detach()):.5f}, {time.perf_counter() - t0:.0f} s")
        return loss

    result = loop.run(step_loss)
    model.eval()
    return result


# ============================================================================ evaluation
def psnr_ssim(prediction: torch.Tensor, target: torch.Tensor) -> Dict[str, np.ndarray]:
    """Per-superpatch PSNR (dB) and SSIM of (B, 1, D, H, W) volumes on the [0, 1] scale, the prediction
    clipped to [0, 1] first. MONAI ``PSNRMetric(max_val=1)`` and ``SSIMMetric`` (3D, data range 1)."""
    from monai.metrics import PSNRMetric, SSIMMetric
    pred = prediction.float().clamp(0, 1)
    target = target.float()
    psnr = PSNRMetric(max_val=1.0, reduction="none")(pred, target).reshape(-1)
    ssim = SSIMMetric(spatial_dims=3, data_range=1.0, reduction="none")(pred, target).reshape(-1)
    return {"psnr_db": psnr.double().numpy(), "ssim": ssim.double().numpy()}


def reconstructions(kind: str, model: torch.nn.Module, x: torch.Tensor, cfg: ComparisonConfig,
                    generator: Optional[torch.Generator] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """What each row scores: {variant: {"prediction": (B, 1, D, H, W)[, "hidden": voxel mask]}}.
    One variant ("") for the baselines, :data:`MAE_VARIANTS` for the MAE."""
    with torch.no_grad():
        if kind == "ae":
            return {"": {"prediction": model(x)}}
        if kind == "vae":
            return {"": {"prediction": model.reconstruct(x)}}  # the posterior mean, no sampling
        if kind == "vqvae":
            return {"": {"prediction": model(x)[0]}}
        if kind != "mae":
            raise ValueError(f"Unknown model kind {kind!r}: choose one of {', '.join(KINDS)}.")
        masked = model.reconstruct(x, mask_ratio=tuple(cfg.mask_ratio), generator=generator)
        hidden = voxel_mask(masked.mask, model.grid, model.patch_size)
        unmasked = model.reconstruct(x, mask_ratio=0.0)
        return {MAE_VARIANTS[0]: {"prediction": paste_visible(masked.volume, x, hidden), "hidden": hidden},
                MAE_VARIANTS[1]: {"prediction": masked.volume, "hidden": hidden},
                MAE_VARIANTS[2]: {"prediction": unmasked.volume}}


def evaluate_model(kind: str, model: torch.nn.Module, superpatches: np.ndarray, cfg: ComparisonConfig,
                   example: Optional[int] = None) -> Dict[str, dict]:
    """{variant: {"psnr_db": per-superpatch array, "ssim": ..., ["psnr_hidden_db"], ["slice"], ["hidden_slice"]}}.

    ``example``: index of the superpatch whose middle slice (model axis 0) is kept for the figure.
    MAE masks come from :data:`EVAL_SEED`, batch after batch, so every MAE is scored on the same masks.
    """
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    parts: Dict[str, List[dict]] = {}
    out: Dict[str, dict] = {}
    mid = cfg.superpatch // 2
    for first in range(0, len(superpatches), cfg.eval_batch):
        x = torch.from_numpy(np.ascontiguousarray(superpatches[first:first + cfg.eval_batch]))
        for variant, rec in reconstructions(kind, model, x, cfg, gen).items():
            figures = psnr_ssim(rec["prediction"], x)
            if "hidden" in rec:
                figures["psnr_hidden_db"] = hidden_psnr(rec["prediction"], x, rec["hidden"])
            parts.setdefault(variant, []).append(figures)
            if example is not None and first <= example < first + len(x):
                keep = out.setdefault(variant, {})
                keep["slice"] = rec["prediction"][example - first, 0, mid].float().clamp(0, 1).numpy()
                if "hidden" in rec:
                    keep["hidden_slice"] = rec["hidden"][example - first, 0, mid].numpy()
    for variant, chunks in parts.items():
        merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        out.setdefault(variant, {}).update(merged)
    return out


def hidden_psnr(prediction: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> np.ndarray:
    """PSNR (dB) over the voxels the encoder never saw, per superpatch (NaN where none was hidden)."""
    from monai.metrics import PSNRMetric
    metric = PSNRMetric(max_val=1.0, reduction="none")
    pred = prediction.float().clamp(0, 1)
    values = []
    for b in range(len(pred)):
        m = hidden[b]
        values.append(float(metric(pred[b][m].reshape(1, 1, -1), target[b][m].reshape(1, 1, -1).float()))
                      if m.any() else float("nan"))
    return np.asarray(values, np.float64)


def summarise(values: np.ndarray) -> Dict[str, float]:
    """Mean and sample SD (ddof 1; 0 for a single value) of the finite values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


# ============================================================================ the run
def load_demo_weights():
    """The bundled NEMESIS demo encoder (through the registry's lookup), and its pretraining steps."""
    from ..models.nemesis import load_nemesis
    from ..registry import get_card, resolve_weights
    card = get_card(NEMESIS_DEMO_CARD)
    steps = ((card.extra or {}).get("pretraining") or {}).get("steps", DEMO_STEPS_FALLBACK)
    return load_nemesis(resolve_weights(card)), int(steps)


def phantom_arrays(seeds: Sequence[int], shape=None) -> List[np.ndarray]:
    """Phantoms on NEMESIS's [0, 1] scale and axis order."""
    from ..pipelines.nemesis import prepare_ct
    from ..synth import make_abdomen_phantom
    return [prepare_ct(make_abdomen_phantom(s, shape=shape)[0]).model_array for s in seeds]


def run_comparison(cfg: Optional[ComparisonConfig] = None, steps: Optional[int] = None,
                   budget_s: Optional[float] = None, seed: int = 0, include_demo: bool = True,
                   kinds: Sequence[str] = KINDS, log: Optional[Callable[[str], None]] = print) -> dict:
    """Train every model of ``kinds`` on the same budget, score them on the held-out superpatches.

    Returns a JSON-ready dict: ``rows`` (one per model and scoring variant: parameters, GFLOP per
    superpatch forward, train steps and seconds, PSNR and SSIM per superpatch with mean and SD),
    ``example`` (the figure's slices), the configuration, the budget, timings and load averages.
    """
    cfg = cfg or ComparisonConfig()
    t_start = time.perf_counter()
    if log is not None:
        print_line = log

        def log(line: str) -> None:  # elapsed seconds on every line: where a long run spends its time
            print_line(f"[{time.perf_counter() - t_start:5.0f} s] {line}")
    else:
        def log(line: str) -> None:
            pass
    load_start = load_average()
    log(f"Phantoms: {len(cfg.train_seeds)} for training, {len(cfg.held_out_seeds)} held out")
    train_arrays = phantom_arrays(cfg.train_seeds, cfg.phantom_shape)
    held_arrays = phantom_arrays(cfg.held_out_seeds, cfg.phantom_shape)
    held_out = held_out_superpatches_from_arrays(held_arrays, cfg)
    del held_arrays
    example = int(np.argmax(held_out.reshape(len(held_out), -1).std(1)))  # the superpatch with most anatomy
    mid = cfg.superpatch // 2
    figure = {"index": example, "axis0_slice": mid, "input": held_out[example, 0, mid].copy(), "panels": []}
    mae_params = parameter_count(build_model("mae", cfg))
    rows: List[dict] = []
    for kind in kinds:
        torch.manual_seed(seed)  # the same initialisation stream for every model
        model = build_model(kind, cfg)
        params = parameter_count(model)
        gflop = forward_gflop(kind, model, cfg)
        log(f"{NAMES[kind]}: {params:,} parameters ({params / mae_params:.2f} x the MAE's), "
            f"{gflop:.2f} GFLOP per superpatch forward; training")
        result = train_model(kind, model, train_arrays, cfg, steps=steps, budget_s=budget_s, seed=seed, log=log)
        log(f"{NAMES[kind]}: {result.steps} steps in {result.seconds:.0f} s ({result.stopped}); evaluating")
        common = {"kind": kind, "parameters": params, "parameter_ratio_to_mae": params / mae_params,
                  "gflop_per_superpatch": gflop, "train_steps": result.steps, "train_seconds": result.seconds,
                  "stopped": result.stopped, "loss_first_step": result.history[0] if result.history else None,
                  "loss_last_10_steps": float(np.mean(result.history[-10:])) if result.history else None,
                  "load_average_after_training": load_average(), "trained_here": True}
        if kind == "mae":
            common["gflop_per_superpatch_unmasked"] = forward_gflop(kind, model, cfg, mask_ratio=0.0)
        rows += score_rows(kind, NAMES[kind], model, held_out, cfg, example, common, figure)
        del model
    demo = {"included": False}
    if include_demo and "mae" in kinds:
        model, demo_steps = load_demo_weights()
        if tuple(model.superpatch_size) == (cfg.superpatch,) * 3:
            common = {"kind": "mae", "parameters": parameter_count(model),
                      "parameter_ratio_to_mae": parameter_count(model) / mae_params,
                      "gflop_per_superpatch": forward_gflop("mae", model, cfg), "train_steps": demo_steps,
                      "train_seconds": None, "stopped": "bundled", "trained_here": False}
            rows += score_rows("mae", "bundled nemesis-demo", model, held_out, cfg, example, common, figure)
            demo = {"included": True, "card": NEMESIS_DEMO_CARD, "pretraining_steps": demo_steps}
        else:
            demo = {"included": False, "reason": f"the demo weights take {model.superpatch_size} superpatches, "
                                                  f"this run {(cfg.superpatch,) * 3}"}
    return {"paper": PAPER, "config": json.loads(json.dumps(asdict(cfg))), "seed": seed,
            "budget": {"steps": steps, "seconds_per_model": budget_s, "batch_size": cfg.batch_size,
                       "same_batches": "step n draws the same superpatches for every model"},
            "held_out": {"seeds": list(cfg.held_out_seeds), "superpatches": int(len(held_out)),
                         "draw_seed": EVAL_SEED},
            "parameter_factor": PARAMETER_FACTOR, "mae_parameters": mae_params, "rows": rows, "demo_weights": demo,
            "example": figure, "torch_threads": torch.get_num_threads(),
            "load_average_start": load_start, "load_average_end": load_average(),
            "total_seconds": time.perf_counter() - t_start}


def held_out_superpatches_from_arrays(arrays: Sequence[np.ndarray], cfg: ComparisonConfig) -> np.ndarray:
    """(n, 1, S, S, S) held-out superpatches, drawn as in pretraining with :data:`EVAL_SEED`."""
    return sample_superpatches(arrays, (cfg.superpatch,) * 3, cfg.held_out_superpatches,
                               np.random.default_rng(EVAL_SEED), cfg.min_foreground)


def score_rows(kind: str, name: str, model, held_out: np.ndarray, cfg: ComparisonConfig, example: int, common: dict,
               figure: dict) -> List[dict]:
    rows = []
    for variant, figures in evaluate_model(kind, model, held_out, cfg, example).items():
        label = f"{name}, {variant}" if variant else name
        row = {"model": label, **common, "variant": variant,
               "psnr_db": summarise(figures["psnr_db"]), "ssim": summarise(figures["ssim"]),
               "per_superpatch": {"psnr_db": figures["psnr_db"].tolist(), "ssim": figures["ssim"].tolist()}}
        if "psnr_hidden_db" in figures:
            row["psnr_hidden_db"] = summarise(figures["psnr_hidden_db"])
        rows.append(row)
        figure["panels"].append({"model": label, "group": name, "variant": variant, "slice": figures["slice"],
                                 "hidden": figures.get("hidden_slice"),
                                 "psnr_db": float(figures["psnr_db"][example]),
                                 "ssim": float(figures["ssim"][example])})
    return rows


def load_average() -> Optional[List[float]]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


# ============================================================================ reporting
def markdown_table(rows: Sequence[dict]) -> str:
    """model | parameters | GFLOP | train steps | train s | PSNR dB (mean ± SD) | SSIM (mean ± SD)."""
    lines = ["| model | parameters | GFLOP / superpatch | train steps | train s | PSNR dB (mean ± SD) | "
             "SSIM (mean ± SD) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        seconds = "—" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        steps = f"{r['train_steps']}" + ("" if r["trained_here"] else " (bundled)")
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['gflop_per_superpatch']:.3g} | {steps} | {seconds} | "
                     f"{r['psnr_db']['mean']:.2f} ± {r['psnr_db']['sd']:.2f} | "
                     f"{r['ssim']['mean']:.3f} ± {r['ssim']['sd']:.3f} |")
    return "\n".join(lines)


def save_figure(result: dict, path) -> Path:
    """One held-out slice: the input and every row's reconstruction side by side, one grey window
    ([0, 1] = HU -175..250), each titled with the model and its PSNR / SSIM on this superpatch. First
    row the input and the baselines; then one row per MAE, led by what its encoder saw (hidden patches
    in blue; every MAE gets the same mask)."""
    from matplotlib.figure import Figure
    ex = result["example"]
    size = len(ex["input"])
    groups: Dict[str, List[dict]] = {}
    for p in ex["panels"]:
        groups.setdefault(p["group"], []).append(p)
    first = [{"model": "input (held-out phantom)", "slice": ex["input"]}]
    layout = [first + [p for g in groups.values() for p in g if not p["variant"]]]
    hidden = next((p["hidden"] for p in ex["panels"] if p.get("hidden") is not None), None)
    for n, g in enumerate(v for v in groups.values() if v[0]["variant"]):
        lead = ({"model": "MAE input, 0.5/0.5 mask\n(hidden patches in blue)", "slice": ex["input"], "hidden": hidden}
                if n == 0 and hidden is not None else {"text": "same mask as above"})
        layout.append([lead] + g)
    cols = max(len(r) for r in layout)
    rows = len(layout)
    height = 3.5 * rows + 1.1
    fig = Figure(figsize=(3.4 * cols, height))
    fig.suptitle(f"MAESIL-style comparison on a held-out phantom superpatch ({size}^3): axial slice "
                 f"{ex['axis0_slice']}, patient right on the left, anterior up;\n"
                 "grey window HU -175..250 for every panel; PSNR / SSIM of this superpatch",
                 fontsize=11.5, y=1 - 0.1 / height, va="top")
    grid = fig.add_gridspec(rows, cols, top=1 - 1.15 / height, bottom=0.01, left=0.01, right=0.99, hspace=0.3,
                            wspace=0.04)
    for r, row in enumerate(layout):
        for c, p in enumerate(row):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if "text" in p:
                ax.axis("off")
                ax.text(0.5, 0.5, p["text"], ha="center", va="center", fontsize=10, color="0.4")
                continue
            img = radiological(p["slice"])
            rgb = np.repeat(img[..., None], 3, axis=2)
            if p.get("hidden") is not None and p is row[0]:
                h = radiological(p["hidden"])
                rgb[h] = 0.45 * rgb[h] + 0.55 * np.array([0.18, 0.44, 0.87], np.float32)
            ax.imshow(np.clip(rgb, 0, 1), interpolation="nearest")
            title = p["model"] if not p.get("variant") else f"{p['group']}\n{p['variant']}"
            if "psnr_db" in p:
                title += f"\nPSNR {p['psnr_db']:.1f} dB, SSIM {p['ssim']:.3f}"
            ax.set_title(title, fontsize=9.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def radiological(model_slice: np.ndarray) -> np.ndarray:
    """An axial slice of NEMESIS's model array (axes i -> right, j -> anterior of the RAS canonical grid) as a
    radiologist views it: anterior at the top, the patient's right on the left of the picture."""
    return np.asarray(model_slice).T[::-1, ::-1]


def json_ready(result: dict) -> dict:
    """``result`` with the figure's arrays left out (the PNG holds them)."""
    out = dict(result)
    ex = result["example"]
    out["example"] = {"index": ex["index"], "axis0_slice": ex["axis0_slice"],
                      "panels": [{k: v for k, v in p.items() if k not in ("slice", "hidden")} for p in ex["panels"]]}
    return out
