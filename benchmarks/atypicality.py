"""Atypicality map (issue 18 section 3): AUROC of the masked-reconstruction error for inserted lesion
voxels against the voxels of the organs they sit in, and the time per CT.

Protocol: phantoms (seeds 0..N-1, 64 x 128 x 128), three lesions each (:func:`insert_lesions`: radii
10-20 mm, in liver / spleen / kidneys) at a low (40-80 HU) and a high (150-200 HU) contrast;
``atypicality`` with 4 mask draws, bundled demo weights, CPU.

    .venv/bin/python benchmarks/atypicality.py [--phantoms 8] [--draws 4] [--full]

``--full`` also times one 512 x 512 x 256 phantom.
"""

import argparse
import os
import time

import numpy as np
import torch

from pantheon.metrics import auroc
from pantheon.models.nemesis.atypicality import atypicality
from pantheon.pipelines import nemesis as nem
from pantheon.synth import make_abdomen_phantom
from pantheon.synth.lesions import insert_lesions

ORGAN_VALUES = [1, 2, 3, 6]  # spleen, right kidney, left kidney, liver (BTCV)
CONTRASTS = {"low (40-80 HU)": (40.0, 80.0), "high (150-200 HU)": (150.0, 200.0)}


def load():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=8)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    engine = nem.load_engine(device="cpu", max_voxels=None)
    print(f"Atypicality AUROC (lesion voxels vs organ voxels), {args.draws} draws, demo weights [{load()}]")
    for name, contrast in CONTRASTS.items():
        aucs, times = [], []
        for seed in range(args.phantoms):
            ct, lab = make_abdomen_phantom(seed, shape=(64, 128, 128))
            ct2, les = insert_lesions(ct, lab, n=3, seed=seed, contrast_hu=contrast, radius_mm=(10, 20))
            t = time.perf_counter()
            a = atypicality(ct2, engine, draws=args.draws, seed=seed).heatmaps["atypicality"].volume.array
            times.append(time.perf_counter() - t)
            lesion = les.array > 0
            keep = np.isin(lab.array, ORGAN_VALUES) | lesion
            aucs.append(auroc(a[keep], lesion[keep]))
        print(f"  {name:18s} AUROC mean {np.mean(aucs):.3f} (min {np.min(aucs):.3f}, max {np.max(aucs):.3f}; "
              + " ".join(f"{v:.2f}" for v in aucs) + f"); {np.median(times):.2f} s per CT [{load()}]", flush=True)
    if args.full:
        ct, _ = make_abdomen_phantom(0, shape=(256, 512, 512))
        t = time.perf_counter()
        atypicality(ct, engine, draws=args.draws)
        print(f"512 x 512 x 256: {time.perf_counter() - t:.1f} s with {args.draws} draws [{load()}]")


if __name__ == "__main__":
    main()
