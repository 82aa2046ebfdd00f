"""Measuring synthetic liver MRI as 3D-LLDM and FOSCU measure it (issue 17 section 4).

- **Fréchet distance** between real and synthetic sets on features of a fixed 3D encoder (MONAI
  ``FIDMetric``). The default encoder is the NeoNet demo NeoSeg (:mod:`pantheon.models.neonet`: a
  MONAI UNet trained on liver MRI phantoms, independent of the generators): each encoder level's
  output, global-average- and max-pooled, concatenated. Pluggable: ``encoder`` may be any callable
  ``(N, 1, K, J, I) float tensor -> (N, F) features`` (a user with a better 3D MRI encoder swaps it
  in), or "random" (a seeded, untrained copy of the same network: a baseline that needs no weights).
  Values are only comparable with the same encoder; this is not the papers' (unstated) protocol.
- **MS-SSIM** (MONAI ``MultiScaleSSIMMetric``) of each synthetic volume against the real volume of the
  same label map (fidelity), and between synthetic volumes of different label maps (diversity;
  lower = more diverse). Three scales and a 5-voxel Gaussian kernel, since the model grid (32 x 48 x 64)
  is too small for the default five scales of 11 voxels.
- **Label fidelity**: a segmenter trained on real images only, run on synthetic images, Dice against
  the labels they were conditioned on, per label (:func:`label_dice`).
- **Augmentation experiment** (:func:`augmentation_experiment`): MONAI ``UNet``, ``SegResNet`` and
  ``AttentionUnet`` trained on N real vs N real + M synthetic cases, HCC and vessel Dice on held-out real
  cases, several seeds; the gain's mean and 95 % confidence interval (t distribution over seeds x
  networks).

Segmenter sizes and training (steps, batch, learning rate) are CPU-demo assumptions, arguments.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ...errors import InputError
from ...metrics import dice

N_CLASSES = 5  # background + the four 3D-LLDM labels
LABEL_NAMES = {1: "liver", 2: "portal_vein", 3: "hepatic_vein", 4: "hcc"}
SEGMENTERS = ("unet", "segresnet", "attentionunet")


# ------------------------------------------------------------------------------ encoders
def _pooled_levels(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Average and max pooled outputs of every down-path level of a MONAI UNet."""
    feats = []

    def hook(_m, _i, out):
        feats.append(torch.cat([out.mean(dim=(2, 3, 4)), out.amax(dim=(2, 3, 4))], 1))
    model = getattr(net, "net", net)
    levels, block = [], getattr(model, "model", None)
    while block is not None and len(block) >= 2:  # UNet: Sequential(down, SkipConnection(sub), up)
        levels.append(block[0])
        sub = getattr(block[1], "submodule", None)
        block = sub if isinstance(sub, torch.nn.Sequential) else None
    handles = [m.register_forward_hook(hook) for m in levels]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    if not feats:
        raise InputError("The encoder exposes no levels to take features from.")
    return torch.cat(feats, 1)


def make_encoder(encoder: Union[str, Callable] = "neoseg") -> Callable[[torch.Tensor], torch.Tensor]:
    """The feature function: "neoseg" (the NeoNet demo NeoSeg), "random" (the same network, seeded,
    untrained) or a callable ``(N, 1, K, J, I) -> (N, F)``."""
    if callable(encoder):
        return encoder
    from ..neonet import build_neoseg, load_neonet_component
    if encoder == "neoseg":
        from ...pipelines.neonet import DEMO_NEOSEG_CARD
        from ...runtime import resolve_weights_argument
        path, _ = resolve_weights_argument(None, DEMO_NEOSEG_CARD)
        net = load_neonet_component(path, "neoseg")
    elif encoder == "random":
        torch.manual_seed(0)
        net = build_neoseg(channels=(16, 32, 64), strides=(2, 2), num_res_units=1)
    else:
        raise InputError(f"Unknown encoder {encoder!r}: use neoseg, random or a callable.")
    net.eval()
    return lambda x: _pooled_levels(net, x.float())


def features(images: np.ndarray, encoder: Callable, batch: int = 4) -> torch.Tensor:
    """(N, F) features of (N, K, J, I) images on the [0, 1] scale."""
    out = [encoder(torch.from_numpy(np.ascontiguousarray(images[a:a + batch]))[:, None].float())
           for a in range(0, len(images), batch)]
    return torch.cat(out).double()


def frechet_distance(real_features: torch.Tensor, synthetic_features: torch.Tensor) -> float:
    """Fréchet distance of two feature sets (MONAI ``FIDMetric``; needs at least 2 of each)."""
    from monai.metrics import FIDMetric
    if len(real_features) < 2 or len(synthetic_features) < 2:
        raise InputError("A Fréchet distance needs at least two real and two synthetic volumes.")
    return float(FIDMetric()(synthetic_features, real_features))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) MS-SSIM of (N, K, J, I) volume pairs on the [0, 1] scale (3 scales, 5-voxel kernel)."""
    from monai.metrics import MultiScaleSSIMMetric
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=5, kernel_sigma=1.0,
                                  weights=(0.3, 0.4, 0.3), reduction="none")
    x = torch.from_numpy(np.ascontiguousarray(a))[:, None].float()
    y = torch.from_numpy(np.ascontiguousarray(b))[:, None].float()
    return metric(x, y).reshape(-1).numpy()


# ------------------------------------------------------------------------------ segmenters
def build_segmenter(name: str) -> torch.nn.Module:
    """A small MONAI 3D segmenter for the five classes (sizes: CPU-demo assumptions)."""
    from monai.networks.nets import AttentionUnet, SegResNet, UNet
    if name == "unet":
        return UNet(spatial_dims=3, in_channels=1, out_channels=N_CLASSES, channels=(16, 32, 64),
                    strides=(2, 2), num_res_units=1)
    if name == "segresnet":
        # 16 filters, not 8: with 8 (one channel per group norm) it found no vessel or HCC in 300 steps at
        # any of lr 2e-3, 5e-3, 1e-2 (liver 0.93-0.98); with 16, 0.62 / 0.42 at 2e-3 (UNet: 0.35 / 0.29)
        return SegResNet(spatial_dims=3, in_channels=1, out_channels=N_CLASSES, init_filters=16,
                         blocks_down=(1, 1, 1), blocks_up=(1, 1))
    if name == "attentionunet":
        return AttentionUnet(spatial_dims=3, in_channels=1, out_channels=N_CLASSES, channels=(16, 32, 64),
                             strides=(2, 2))
    raise InputError(f"Unknown segmenter {name!r}: use one of {', '.join(SEGMENTERS)}.")


def train_segmenter(name: str, images: np.ndarray, labels: np.ndarray, steps: int = 300, seed: int = 0,
                    batch: int = 2, lr: float = 2e-3, progress=None, cancel=None) -> torch.nn.Module:
    """``name`` trained on (N, K, J, I) images and label maps (Dice + cross-entropy, AdamW, flips
    along the left-right axis off: anatomy is lateral). Returned in eval mode."""
    from monai.losses import DiceCELoss

    from ...progress import Reporter
    rep = Reporter(progress, cancel)
    torch.manual_seed(int(seed))
    net = build_segmenter(name)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    rng = np.random.default_rng(int(seed))
    net.train()
    for step in range(int(steps)):
        rep(step / steps, f"{name}: step {step}/{steps}")
        idx = rng.choice(len(images), size=min(batch, len(images)), replace=False)
        x = torch.from_numpy(images[idx])[:, None].float()
        y = torch.from_numpy(labels[idx].astype(np.int64))[:, None]
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, (len(idx), 1, 1, 1, 1))).float()  # intensity jitter
        loss = loss_fn(net(x * gain), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def segment(net: torch.nn.Module, images: np.ndarray, batch: int = 4) -> np.ndarray:
    return np.concatenate([net(torch.from_numpy(images[a:a + batch])[:, None].float()).argmax(1).numpy()
                           for a in range(0, len(images), batch)]).astype(np.uint8)


def label_dice(pred: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """Mean per-volume Dice of each label over the volumes where the truth has it (NaN if none);
    "vessels" = portal and hepatic veins together."""
    out = {}
    groups = {**{name: (v,) for v, name in LABEL_NAMES.items()}, "vessels": (2, 3)}
    for name, values in groups.items():
        vals = [dice(np.isin(p, values), np.isin(t, values)) for p, t in zip(pred, truth) if np.isin(t, values).any()]
        out[name] = float(np.mean(vals)) if vals else math.nan
    return out


# ------------------------------------------------------------------------------ whole evaluations
def evaluate_synthetic(real_images: np.ndarray, real_labels: np.ndarray, synthetic_images: np.ndarray,
                       synthetic_labels: Optional[np.ndarray] = None, segmenter: Optional[torch.nn.Module] = None,
                       encoder: Union[str, Callable] = "neoseg") -> Dict[str, object]:
    """Fréchet distance, MS-SSIM diversity within each set and, with a ``segmenter`` trained on real
    images, the label Dice of the synthetic images against their labels. Without
    ``synthetic_labels`` the sets are *paired* (synthetic volume n was made from real label map n):
    then also the MS-SSIM fidelity of each synthetic volume against its real one."""
    paired = synthetic_labels is None
    synthetic_labels = real_labels if paired else synthetic_labels
    if paired and real_images.shape != synthetic_images.shape:
        raise InputError("Each synthetic volume needs the real volume of the same label map (same shapes).")
    enc = make_encoder(encoder)
    out: Dict[str, object] = {
        "n_real": int(len(real_images)), "n_synthetic": int(len(synthetic_images)), "paired": paired,
        "encoder": encoder if isinstance(encoder, str) else "custom",
        "frechet_distance": frechet_distance(features(real_images, enc), features(synthetic_images, enc)),
        "ms_ssim_diversity_synthetic": float(ms_ssim(synthetic_images, np.roll(synthetic_images, 1, 0)).mean()),
        "ms_ssim_diversity_real": float(ms_ssim(real_images, np.roll(real_images, 1, 0)).mean()),
    }
    if paired:
        out["ms_ssim_fidelity"] = float(ms_ssim(synthetic_images, real_images).mean())
    if segmenter is not None:
        out["label_dice_synthetic"] = label_dice(segment(segmenter, synthetic_images), synthetic_labels)
        out["label_dice_real"] = label_dice(segment(segmenter, real_images), real_labels)
    return out


def mean_ci95(values: Sequence[float]) -> Dict[str, float]:
    """Mean and 95 % confidence interval (t distribution; scipy) of ``values``."""
    from scipy import stats
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": math.nan, "ci95": [math.nan, math.nan], "n": 0}
    if len(v) == 1:
        return {"mean": float(v[0]), "ci95": [math.nan, math.nan], "n": 1}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)], "n": int(len(v))}


def augmentation_experiment(real_train: tuple, synthetic: tuple, held_out: tuple, nets: Sequence[str] = SEGMENTERS,
                            seeds: Sequence[int] = (0, 1, 2), steps: int = 300, log=None, progress=None,
                            cancel=None) -> Dict[str, object]:
    """Each net x seed trained on ``real_train`` (images, labels) and on ``real_train`` + ``synthetic``,
    with the same steps; HCC, vessel and liver Dice on ``held_out`` real cases; the gain per run and its
    mean and 95 % CI."""
    from ...progress import Reporter
    rep = Reporter(progress, cancel)
    both = (np.concatenate([real_train[0], synthetic[0]]), np.concatenate([real_train[1], synthetic[1]]))
    runs: List[dict] = []
    total = len(nets) * len(seeds) * 2
    for net_name in nets:
        for seed in seeds:
            row = {"net": net_name, "seed": int(seed)}
            for n, (arm, data) in enumerate((("real", real_train), ("real+synthetic", both))):
                done = len(runs) * 2 + n
                sub = rep.sub(done / total, (done + 1) / total)
                net = train_segmenter(net_name, data[0], data[1], steps=steps, seed=seed, progress=sub, cancel=cancel)
                row[arm] = label_dice(segment(net, held_out[0]), held_out[1])
            row["gain"] = {k: row["real+synthetic"][k] - row["real"][k] for k in row["real"]}
            runs.append(row)
            if log:
                log(f"{net_name} seed {seed}: HCC Dice {row['real']['hcc']:.3f} -> {row['real+synthetic']['hcc']:.3f}, "
                    f"vessels {row['real']['vessels']:.3f} -> {row['real+synthetic']['vessels']:.3f}")
    summary = {k: mean_ci95([r["gain"][k] for r in runs]) for k in ("hcc", "vessels", "liver")}
    return {"n_real": int(len(real_train[0])), "n_synthetic": int(len(synthetic[0])),
            "n_held_out": int(len(held_out[0])), "steps": int(steps), "nets": list(nets),
            "seeds": [int(s) for s in seeds], "runs": runs, "gain": summary}
