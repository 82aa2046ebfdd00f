"""Training for NEMESIS (arXiv 2604.01612): MAE pretraining and the frozen-encoder organ probe.

Pretraining follows the paper: dual masking (plane 0.5, axis 0.5), noise level drawn per batch
from {0, 0.01, 0.03, 0.05} with the clean superpatch as target, loss = per-patch MSE over masked
patches, AdamW (lr 1e-4, weight decay 0.05, betas (0.9, 0.95)), cosine schedule with linear warm-up
(per step rather than per epoch: our runs are short), gradient clipping at 1.0 as in the release.
The loop, its checkpoints (tensors and plain values only, read with ``torch.load(weights_only=True)``)
and resuming are :class:`pantheon.train.loop.TrainLoop`'s.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from ..defaults import PROBE_EPOCHS, PROBE_HOLDOUT_FRACTION, PROBE_PRESENCE_MIN_VOXELS
from ..errors import InputError
from ..io.volume import Volume
from ..models.nemesis import NemesisMAE, OrganProbe, save_nemesis
from ..models.nemesis.probe import BTCV_ORGANS, save_probe
from ..pipelines.nemesis import DEFAULT_ORIENTATION, HU_WINDOW, NemesisEngine, crop_padded, prepare_ct, superpatch_tiles
from ..progress import Reporter
from .loop import Schedule, TrainLoop, TrainResult, Validation, read_checkpoint


# ============================================================================ pretraining
@dataclass
class PretrainConfig:
    model: dict = field(default_factory=lambda: dict(superpatch_size=[64, 64, 64], patch_size=[8, 8, 8],
                                                     embed_dim=96, depth=3, num_heads=4, decoder_depth=1,
                                                     decoder_num_heads=4, num_maegic_tokens=8, ffn_dim=256))
    steps: int = 1000
    batch_size: int = 4
    mask_ratio: Tuple[float, float] = (0.5, 0.5)
    noise_levels: Tuple[float, ...] = (0.0, 0.01, 0.03, 0.05)
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    min_lr: float = 1e-6
    grad_clip: float = 1.0
    min_foreground: float = 0.05  # skip superpatches that are mostly air, as the reference does
    seed: int = 0
    checkpoint_every: int = 100


def pretrain_schedule(cfg: PretrainConfig) -> Schedule:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr``."""
    return Schedule(warmup_steps=cfg.warmup_steps, decay="cosine", min_factor=cfg.min_lr / cfg.lr)


def sample_superpatches(arrays: Sequence[np.ndarray], size, count: int, rng: np.random.Generator,
                        min_foreground: float) -> np.ndarray:
    out = []
    while len(out) < count:
        arr = arrays[rng.integers(len(arrays))]
        for _ in range(10):
            start = [int(rng.integers(0, max(1, n - s + 1))) for n, s in zip(arr.shape, size)]
            patch = crop_padded(arr, start, size)
            if patch.mean() >= min_foreground:
                break
        out.append(patch)
    return np.stack(out)[:, None]


def held_out_superpatches(volumes: Sequence[Volume], size, count: int, seed: int = 0, min_foreground: float = 0.05,
                          window=HU_WINDOW, orientation=DEFAULT_ORIENTATION) -> np.ndarray:
    """(count, 1, D, H, W) superpatches drawn as in pretraining (same foreground rule) from ``volumes``."""
    arrays = [prepare_ct(v, window, orientation).model_array for v in volumes]
    return sample_superpatches(arrays, tuple(size), count, np.random.default_rng(seed), min_foreground)


def evaluate_reconstruction(model: NemesisMAE, superpatches: np.ndarray, mask_ratio=(0.5, 0.5),
                            noise_std: float = 0.0, seed: int = 0, batch_size: int = 8) -> dict:
    """Mean over superpatches of the reconstruction metrics of
    :func:`pantheon.models.nemesis.reconstruction.reconstruction_metrics` (eval mode, seeded masks)."""
    from ..models.nemesis.reconstruction import reconstruction_metrics
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for first in range(0, len(superpatches), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(superpatches[first:first + batch_size])).to(device)
            out = model.reconstruct(x, mask_ratio=mask_ratio, noise_std=noise_std, generator=gen)
            parts.append(reconstruction_metrics(out.volume, x, out.model_input, out.mask, model.grid,
                                                model.patch_size))
    model.train(was_training)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    def finite_mean(v):  # NaN when no superpatch has the figure (no masked voxel, say)
        v = v[np.isfinite(v)]
        return float(np.mean(v)) if v.size else float("nan")
    return {k: finite_mean(v) for k, v in merged.items()} | {"superpatches": len(superpatches)}


def pretrain(volumes: Sequence[Volume], out_dir, cfg: PretrainConfig = PretrainConfig(), resume: bool = True,
             window=HU_WINDOW, orientation=DEFAULT_ORIENTATION, device="cpu", progress=None, cancel=None,
             log=print, validate: Optional[Callable[[NemesisMAE], dict]] = None,
             time_budget_s: Optional[float] = None) -> TrainResult:
    """Pretrain a NEMESIS MAE on CT volumes; returns a :class:`~pantheon.train.loop.TrainResult` whose
    ``weights`` is the final safetensors file.

    ``out_dir/checkpoint.pt`` is written every ``checkpoint_every`` steps (atomically); rerunning
    with ``resume=True`` continues from it with identical batches (the sampler is seeded per step).
    ``validate(model)`` (e.g. held-out reconstruction PSNR) is logged at every checkpoint.
    ``time_budget_s``: stop after that many seconds (checkpoint and weights still written).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = [prepare_ct(v, window, orientation).model_array for v in volumes]
    if not arrays:
        raise InputError("Pretraining needs at least one CT volume.")
    ckpt_path = out_dir / "checkpoint.pt"
    ckpt = read_checkpoint(ckpt_path, resume)
    torch.manual_seed(cfg.seed)
    model = NemesisMAE(**cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    validation = None if validate is None else Validation(validate, every=cfg.checkpoint_every)
    loop = TrainLoop(model, opt, cfg.steps, checkpoint=ckpt_path, resume_from=ckpt, schedule=pretrain_schedule(cfg),
                     checkpoint_every=cfg.checkpoint_every, time_budget_s=time_budget_s, validation=validation,
                     grad_clip=cfg.grad_clip, extra_state={"config": json.loads(json.dumps(asdict(cfg)))},
                     name="pretraining", loss_name="masked-patch MSE", progress=progress, cancel=cancel, log=log)

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([cfg.seed, step])
        batch = torch.from_numpy(sample_superpatches(arrays, model.superpatch_size, cfg.batch_size, rng,
                                                     cfg.min_foreground)).to(device)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        noise = float(cfg.noise_levels[int(rng.integers(len(cfg.noise_levels)))])
        return model(batch, mask_ratio=tuple(cfg.mask_ratio), noise_std=noise, generator=gen).loss

    result = loop.run(step_loss)
    model.eval()
    weights = out_dir / "nemesis.safetensors"
    save_nemesis(model, weights, {"demo": "true", "steps": str(result.steps), "window": json.dumps(list(window)),
                                  "orientation": orientation})
    Reporter(progress, cancel)(1.0, "Pretraining finished")
    result.weights = weights
    return result


# ============================================================================ organ probe
def probe_targets(label_tile: np.ndarray, min_voxels: int = PROBE_PRESENCE_MIN_VOXELS) -> np.ndarray:
    """8 binary labels for one superpatch: organ present when it covers more than ``min_voxels`` voxels."""
    counts = np.bincount(label_tile.reshape(-1).astype(np.int64), minlength=16)
    return np.array([counts[idx] > min_voxels if idx < len(counts) else False for _, idx, *_ in BTCV_ORGANS],
                    dtype=np.float32)


def extract_probe_samples(pairs: Iterable[Tuple[Volume, Volume]], engine: NemesisEngine, stride=None,
                          min_voxels: int = PROBE_PRESENCE_MIN_VOXELS, window=HU_WINDOW,
                          orientation=DEFAULT_ORIENTATION, progress=None, cancel=None):
    """Mean encoder token and organ targets of every superpatch tile: (X (n, E), Y (n, 8), case index (n,))."""
    rep = Reporter(progress, cancel)
    pairs = list(pairs)
    S = engine.superpatch
    stride = tuple(S) if stride is None else ((stride,) * 3 if isinstance(stride, int) else tuple(stride))
    X, Y, case = [], [], []
    for n, (image, label) in enumerate(pairs):
        if not image.same_geometry(label):
            raise InputError(f"Case {n}: the label map does not share the image's geometry (shape, spacing, "
                             "origin and direction must match).")
        prepared = prepare_ct(image, window, orientation)
        lab_canon, _ = label.to_canonical(orientation)
        lab = np.ascontiguousarray(lab_canon.array.transpose(0, 2, 1))
        tiles = superpatch_tiles(prepared.model_array.shape, S, stride)
        for first in range(0, len(tiles), engine.batch_size):
            chunk = tiles[first:first + engine.batch_size]
            tokens = engine.encode_batch(np.stack([crop_padded(prepared.model_array, t, S) for t in chunk]))
            X.extend(tokens.mean(1))
            Y.extend(probe_targets(crop_padded(lab, t, S), min_voxels) for t in chunk)
            case.extend([n] * len(chunk))
        rep((n + 1) / len(pairs), f"Encoded case {n + 1}/{len(pairs)}")
    return np.asarray(X, np.float32), np.asarray(Y, np.float32), np.asarray(case)


def fit_probe(X: np.ndarray, Y: np.ndarray, epochs: int = PROBE_EPOCHS, lr: float = 1e-2, weight_decay: float = 1e-4,
              seed: int = 0) -> OrganProbe:
    """Full-batch AdamW on pooled features with BCE-with-logits (features are few and small)."""
    torch.manual_seed(seed)
    probe = OrganProbe(X.shape[1], Y.shape[1])
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(X), torch.from_numpy(Y)
    pos = yt.mean(0).clamp(0.02, 0.98)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(1 - pos) / pos)  # organs like the gallbladder are rare
    # constant learning rate, no checkpoint: a few hundred full-batch steps on pooled features, in memory
    TrainLoop(probe, opt, epochs, schedule=Schedule(decay="constant"), name="organ probe",
              log=None).run(lambda _step: loss_fn(probe(xt), yt))
    return probe.eval()


def per_organ_auroc(probe: OrganProbe, X: np.ndarray, Y: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    from ..metrics import auroc
    with torch.no_grad():
        p = torch.sigmoid(probe(torch.from_numpy(X))).numpy()
    out = {}
    for n, (name, *_rest) in enumerate(BTCV_ORGANS):
        out[name] = {"auroc": auroc(p[:, n], Y[:, n]),  # NaN when the organ is always or never present
                     "f1": float(f1_score(Y[:, n], p[:, n] > 0.5, zero_division=0)),
                     "positives": int(Y[:, n].sum()), "n": int(len(Y))}
    valid = [v["auroc"] for v in out.values() if not math.isnan(v["auroc"])]
    out["mean"] = {"auroc": float(np.mean(valid)) if valid else float("nan"),
                   "f1": float(np.mean([v["f1"] for k, v in out.items() if k != "mean"]))}
    return out


def train_probe(pairs: Sequence[Tuple[Volume, Volume]], engine: NemesisEngine, out_path=None,
                holdout_fraction: float = PROBE_HOLDOUT_FRACTION, stride=None,
                min_voxels: int = PROBE_PRESENCE_MIN_VOXELS, epochs: int = PROBE_EPOCHS,
                seed: int = 0, window=HU_WINDOW, orientation=DEFAULT_ORIENTATION, progress=None, cancel=None):
    """Fit the organ probe on (image, BTCV label map) pairs with the encoder frozen.

    Features are computed once per superpatch; the held-out split is by case, so no superpatch of a
    test case is seen in training. Returns (probe, metrics); with ``out_path`` also saves the probe.
    """
    rep = Reporter(progress, cancel)
    pairs = list(pairs)
    if len(pairs) < 2:
        raise InputError("Training a probe needs at least two labelled cases (one is held out).")
    X, Y, case = extract_probe_samples(pairs, engine, stride, min_voxels, window, orientation,
                                       rep.sub(0, 0.9), cancel)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    n_test = max(1, int(round(len(pairs) * holdout_fraction)))
    test_cases = set(order[:n_test].tolist())
    test = np.isin(case, list(test_cases))
    probe = fit_probe(X[~test], Y[~test], epochs=epochs, seed=seed)
    metrics = {"held_out": per_organ_auroc(probe, X[test], Y[test]),
               "train": per_organ_auroc(probe, X[~test], Y[~test]),
               "cases": {"train": len(pairs) - n_test, "held_out": n_test},
               "superpatches": {"train": int((~test).sum()), "held_out": int(test.sum())}}
    rep(0.95, "Probe fitted")
    if out_path is not None:
        save_probe(probe, out_path, engine.weights_sha256, window, orientation, metrics)
    rep(1.0, "Done")
    return probe, metrics


def write_probe_card(out_dir, engine: NemesisEngine, file_name: str = "probe.safetensors") -> Path:
    """A model card (``probe.card.json``) for a probe saved in ``out_dir``, tied to its encoder."""
    from ..registry import ModelCard, save_card, sha256_file
    out_dir = Path(out_dir)
    card = ModelCard.from_dict({
        "id": "nemesis-probe-" + (engine.weights_sha256 or "unknown")[:8], "version": "1.0.0", "model": "nemesis",
        "task": "organ presence per superpatch (BTCV organs), frozen-encoder linear probe",
        "description": f"Probe trained with Pantheon's train-probe on encoder {engine.weights_id}.",
        "demo": "demo" in engine.weights_id,
        "input": {"modality": "CT", "axis_order": "DHW", "intensity_window": list(HU_WINDOW),
                  "orientation": DEFAULT_ORIENTATION},
        "labels": [{"value": idx, "name": name} for name, idx, *_ in BTCV_ORGANS],
        "file": file_name, "sha256": sha256_file(out_dir / file_name, use_cache=False),
        "extra": {"encoder_sha256": engine.weights_sha256, "encoder": engine.weights_id}})
    return save_card(card, out_dir / "probe.card.json")
