"""3D-LLDM synthesis (issue 17): seconds per whole volume and peak memory on this CPU, with the
bundled demo weights (or ``--weights``), and how the synthetic volumes follow their labels on
held-out phantoms (mean intensity per label against the real phantom's; HCC and vessel contrast to
the parenchyma; Pearson r of synthetic with real inside the field of view).

Protocol: HCC liver MRI phantoms (seeds 56000.., default grid ~1.6 x 1.6 x 3-5 mm, about 40 x 160
x 190 voxels, random orientation, oblique), ``pantheon.models.lldm.synthesis.synthesize`` end to end
(model grid and back), DDIM ``--steps``.

    .venv/bin/python benchmarks/lldm_synthesis.py [--phantoms 4] [--steps 50] [--weights PATH]
"""

import argparse
import os
import resource
import time

import numpy as np
import torch

from pantheon.models.lldm.synthesis import load_model, synthesize
from pantheon.models.neonet.preprocess import normalize_mri
from pantheon.synth.hcc_mri_phantom import HCC_LABELS, make_hcc_mri_phantom


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, wid, _ = load_model(args.weights)
    print(f"weights {wid}; DDIM {args.steps} steps; torch threads {torch.get_num_threads()}")
    times, rows = [], []
    for n in range(args.phantoms):
        mri, labels, _ = make_hcc_mri_phantom(56000 + n, oblique=True)
        t = time.perf_counter()
        res = synthesize(labels, model, steps=args.steps, seed=n)
        times.append(time.perf_counter() - t)
        syn, real = res.volumes["synthetic_mri"].array, normalize_mri(mri.array)
        row = {"r": float(np.corrcoef(syn.ravel(), real.ravel())[0, 1])}
        for v, name in HCC_LABELS.items():
            m = labels.array == v
            if v and m.any():
                row[name] = (float(syn[m].mean()), float(real[m].mean()))
        rows.append(row)
        print(f"phantom {56000 + n}: {labels.shape} voxels, {times[-1]:.1f} s, r {row['r']:.3f}, "
              + ", ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}" for k, v in row.items() if k != "r")
              + f"  ({'load average %.2f %.2f %.2f' % os.getloadavg()})")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"seconds per volume: min {min(times):.1f}, median {np.median(times):.1f}, max {max(times):.1f}; "
          f"peak RSS {peak_gb:.2f} GB")
    print(f"Pearson r synthetic vs real: mean {np.mean([r['r'] for r in rows]):.3f}")
    for name in ("liver", "portal_vein", "hepatic_vein", "hcc"):
        pairs = [r[name] for r in rows if name in r]
        if pairs:
            s, r = np.mean(pairs, axis=0)
            print(f"  {name:13s} synthetic {s:.3f}  real {r:.3f}  (mean intensity, [0, 1] scale)")


if __name__ == "__main__":
    main()
