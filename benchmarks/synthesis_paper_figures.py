"""Issue 17 section 4: 3D-LLDM and FOSCU measured as their papers measure them, on phantoms, with
the bundled demo weights (or ``--lldm`` / ``--labelgen``). One command prints every table and writes
the figures as JSON.

Protocol (all on the model grid, 6 mm, 32 x 48 x 64 voxels, intensities on the [0, 1] scale):

- Real sets: HCC liver MRI phantoms, ``--n-real`` training cases (seeds 50000..) and ``--n-held``
  held-out cases (seeds 56000..), as the demo trainers prepare them (:func:`pantheon.train.lldm.phantom_cases`).
- **Fidelity of 3D-LLDM**: one synthetic volume per held-out label map (paired, DDIM ``--steps``):
  Fréchet distance real vs synthetic on the features of the NeoNet demo NeoSeg encoder and of a seeded
  random copy of it, MS-SSIM of each synthetic volume with its real one (fidelity) and between
  different volumes of one set (diversity), and the per-label Dice of a UNet trained on the real
  training set, run on the synthetic volumes, against the label maps they were made from.
- **Augmentation** (both papers): MONAI UNet, SegResNet and AttentionUnet trained on the N real
  training cases vs the same N + M synthetic cases, the same steps, Dice on the held-out real cases,
  ``--seeds`` seeds; the gain (real + synthetic minus real) per label, mean and 95 % CI over nets x
  seeds. Synthetic sources: ``lldm`` = 3D-LLDM volumes for M further phantom label maps (labels a
  builder has, no images), ``foscu`` = M Duo-Diffusion pairs (new anatomy and its volume).
- **Cost**: seconds per volume of DDIM on the model grid, and peak RSS.

    .venv/bin/python benchmarks/synthesis_paper_figures.py [--n-real 8 --n-synthetic 16 --n-held 16]
        [--sources lldm,foscu] [--seeds 3] [--seg-steps 300] [--steps 50] [--out figures.json] [--tiny]
        [--nets unet,segresnet,attentionunet] [--skip-fidelity]

The full protocol takes about 80 min per source on one thread: run one process per source
(``--sources lldm`` and ``--sources foscu``), side by side.
"""

import argparse
import json
import os
import resource
import time

import numpy as np
import torch

from pantheon.cliargs import POSITIVE
from pantheon.models.foscu.labelgen import load_labelgen_argument, sample_checked
from pantheon.models.lldm import evaluate as ev
from pantheon.models.lldm.synthesis import MODEL_SPACING, load_model, one_hot
from pantheon.train.lldm import HELD_OUT_SEEDS, TRAIN_SEEDS, phantom_cases

LABELS = ("liver", "portal_vein", "hepatic_vein", "vessels", "hcc")


def stack(cases):
    return np.stack([c.image for c in cases]).astype(np.float32), np.stack([c.labels for c in cases])


def lldm_volumes(model, label_maps, steps, seed):
    """One synthetic volume per label map (seed + n), and the seconds each took."""
    out, seconds = [], []
    for n, lab in enumerate(label_maps):
        g = torch.Generator().manual_seed(int(seed) + n)
        t = time.perf_counter()
        with torch.inference_mode():
            vol = model.generate(one_hot(lab), labels=None, num_inference_steps=steps, generator=g)[0, 0]
        seconds.append(time.perf_counter() - t)
        out.append(vol.clamp(0, 1).numpy().astype(np.float32))
    return np.stack(out), seconds


def foscu_pairs(labelgen, model, m, steps, seed, shape):
    """M Duo-Diffusion pairs (label maps sampled with the anatomy check, then their volumes), cropped or
    padded to ``shape``."""
    maps = []
    voxel_ml = float(np.prod(MODEL_SPACING)) / 1000.0
    for n in range(m):
        lab = sample_checked(labelgen, int(seed) + n, steps, voxel_ml)[0]
        fitted = np.zeros(shape, np.uint8)
        sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, lab.shape))
        fitted[sl] = lab[sl]
        maps.append(fitted)
    images, seconds = lldm_volumes(model, maps, steps, seed)
    return (images, np.stack(maps)), seconds


def fmt(d):
    return " | ".join("n/a" if d.get(k) is None or np.isnan(d[k]) else f"{d[k]:.3f}" for k in LABELS)


def ci(g):
    lo, hi = g["ci95"]
    return f"{g['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]" if not np.isnan(lo) else f"{g['mean']:+.3f}"


def source_list(text):
    sources = [s for s in text.split(",") if s]
    if not sources or not set(sources) <= {"lldm", "foscu"}:
        raise argparse.ArgumentTypeError(f"use lldm, foscu or both (comma-separated), got {text!r}")
    return sources


def fidelity(model, real_train, held_out, a, figures):
    """3D-LLDM's fidelity: paired synthetic volumes of the held-out label maps, measured and printed into
    ``figures``; returns the seconds each volume took."""
    syn_held, seconds = lldm_volumes(model, held_out[1], a.steps, seed=1000)
    segmenter = ev.train_segmenter("unet", *real_train, steps=a.seg_steps, seed=0)
    for enc in ("neoseg", "random"):
        figures[f"fidelity_{enc}"] = ev.evaluate_synthetic(*held_out, syn_held, segmenter=segmenter if enc == "neoseg"
                                                           else None, encoder=enc)
    fid = figures["fidelity_neoseg"]
    print("\n### 3D-LLDM fidelity on the held-out label maps (paired)\n")
    print("| Fréchet distance (NeoSeg) | Fréchet distance (random encoder) | MS-SSIM fidelity | "
          "MS-SSIM diversity synthetic / real |\n|---|---|---|---|")
    print(f"| {fid['frechet_distance']:.3f} | {figures['fidelity_random']['frechet_distance']:.3f} | "
          f"{fid['ms_ssim_fidelity']:.3f} | {fid['ms_ssim_diversity_synthetic']:.3f} / "
          f"{fid['ms_ssim_diversity_real']:.3f} |")
    print(f"\nLabel Dice of a UNet trained on {a.n_real} real cases ({a.seg_steps} steps):\n")
    print("| Images | " + " | ".join(LABELS) + " |\n|---|" + "---|" * len(LABELS))
    print(f"| real held-out | {fmt(fid['label_dice_real'])} |\n| 3D-LLDM from the same labels | "
          f"{fmt(fid['label_dice_synthetic'])} |")
    return seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-real", type=POSITIVE, default=8, help="real training cases (N)")
    ap.add_argument("--n-synthetic", type=POSITIVE, default=16, help="synthetic cases added (M)")
    ap.add_argument("--n-held", type=POSITIVE, default=16, help="held-out real cases")
    ap.add_argument("--sources", type=source_list, default="lldm,foscu",
                    help="synthetic sources for the augmentation: lldm, foscu")
    ap.add_argument("--nets", default=",".join(ev.SEGMENTERS))
    ap.add_argument("--seeds", type=POSITIVE, default=3, help="seeds per net")
    ap.add_argument("--seg-steps", type=POSITIVE, default=300, help="training steps of every segmenter")
    ap.add_argument("--steps", type=POSITIVE, default=50, help="DDIM steps (label maps and volumes)")
    ap.add_argument("--lldm", default=None, help="3D-LLDM weights (default: the demo card)")
    ap.add_argument("--labelgen", default=None, help="Duo-Diffusion label generator (default: the demo card)")
    ap.add_argument("--threads", type=POSITIVE, default=2)
    ap.add_argument("--out", default=None, help="write every figure here as JSON")
    ap.add_argument("--skip-fidelity", action="store_true",
                    help="the augmentation experiment only (the fidelity tables taken from another run)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (tests): 2 + 2 cases, 2 steps, one net")
    a = ap.parse_args(argv)
    if a.tiny:
        a.n_real, a.n_synthetic, a.n_held, a.seeds, a.seg_steps, a.steps, a.nets = 2, 2, 2, 2, 2, 2, "unet"
    sources = a.sources
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, lldm_id, _ = load_model(a.lldm)
    train = phantom_cases(TRAIN_SEEDS[:a.n_real])
    held = phantom_cases(HELD_OUT_SEEDS[:a.n_held])
    real_train, held_out = stack(train), stack(held)
    print(f"3D-LLDM {lldm_id}; {a.n_real} real training + {a.n_held} held-out phantoms on the "
          f"{'x'.join(map(str, held_out[0].shape[1:]))} model grid; DDIM {a.steps} steps; "
          f"{torch.get_num_threads()} threads; load average {'%.2f %.2f %.2f' % os.getloadavg()}")

    figures = {"protocol": dict(vars(a)), "lldm_weights": lldm_id}
    seconds = fidelity(model, real_train, held_out, a, figures) if not a.skip_fidelity else []

    nets = [n for n in a.nets.split(",") if n]
    for source in sources:
        if source == "lldm":
            extra = phantom_cases(TRAIN_SEEDS[a.n_real:a.n_real + a.n_synthetic])
            maps = np.stack([c.labels for c in extra])
            images, s = lldm_volumes(model, maps, a.steps, seed=2000)
            synthetic = (images, maps)
        else:
            labelgen, _, _ = load_labelgen_argument(a.labelgen, "cpu")
            synthetic, s = foscu_pairs(labelgen, model, a.n_synthetic, a.steps, 3000, held_out[1].shape[1:])
        seconds += s
        res = ev.augmentation_experiment(real_train, synthetic, held_out, nets=nets, seeds=range(a.seeds),
                                         steps=a.seg_steps, log=lambda line: print(line, flush=True))
        figures[f"augmentation_{source}"] = res
        print(f"\n### Augmentation with {source} ({a.n_real} real + {a.n_synthetic} synthetic, "
              f"{len(nets)} nets x {a.seeds} seeds, {a.seg_steps} steps each; Dice on {a.n_held} held-out real)\n")
        print("| Net | seed | HCC real → +synthetic | vessels real → +synthetic | liver real → +synthetic |\n"
              "|---|---|---|---|---|")
        for r in res["runs"]:
            print(f"| {r['net']} | {r['seed']} | " + " | ".join(
                f"{r['real'][k]:.3f} → {r['real+synthetic'][k]:.3f}" for k in ("hcc", "vessels", "liver")) + " |")
        g = res["gain"]
        print(f"\nGain, mean [95 % CI]: HCC {ci(g['hcc'])}, vessels {ci(g['vessels'])}, liver {ci(g['liver'])}")
    figures["ddim_seconds_per_volume"] = {"min": min(seconds), "median": float(np.median(seconds)),
                                          "max": max(seconds), "n": len(seconds), "steps": a.steps}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    figures["peak_rss_gb"] = peak
    figures["total_seconds"] = time.time() - t0
    figures["load_average_end"] = list(os.getloadavg())
    print(f"\nDDIM on the model grid: {figures['ddim_seconds_per_volume']['median']:.2f} s per volume (median of "
          f"{len(seconds)}: min {min(seconds):.2f}, max {max(seconds):.2f}); peak RSS {peak:.2f} GB; total "
          f"{figures['total_seconds']:.0f} s; load average {'%.2f %.2f %.2f' % os.getloadavg()}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(figures, f, indent=1, default=float)
    return figures


if __name__ == "__main__":
    main()
