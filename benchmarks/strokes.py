"""Segmentation from strokes (issue 18 section 2): Dice after 1, 3 and 10 strokes, and update times.

Protocol: stroke 1 = one random foreground stroke inside the organ and one background stroke around
it (:func:`simulate_strokes`); every further stroke is one corrective stroke on the largest error
region (:func:`corrective_stroke`), as a user would paint. Bundled demo weights, CPU, 2 threads.

    .venv/bin/python benchmarks/strokes.py [--phantoms 3] [--shape 48 96 96] [--large 96 192 192] [--full]

``--full`` also times updates on a 512 x 512 x 256 phantom (demo encoder features computed once;
three strokes, then three warm updates with the probability map and three with the segment only, as
the Slicer panel asks, for liver, spleen, left kidney and aorta).
"""

import argparse
import os
import time

import numpy as np
import torch

from pantheon.anatomy import BTCV_ORGANS
from pantheon.metrics import dice
from pantheon.models.nemesis import strokes as S
from pantheon.pipelines import nemesis as nem
from pantheon.synth import make_abdomen_phantom

ORGANS = ("liver", "spleen", "left kidney", "aorta")
VALUE = {name: value for name, value, *_ in BTCV_ORGANS}


def load():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def dice_curve(ct, lab, engine, fg, organ, seed, checkpoints=(1, 3, 10)):
    truth = lab.array == VALUE[organ]
    s = S.simulate_strokes(truth, 1, seed=seed, body=ct.array > -500)
    out, times, previous = {}, [], None
    for n in range(1, max(checkpoints) + 1):
        t = time.perf_counter()
        previous = S.segment_from_strokes(ct, engine, ct.with_array(s), feature_grid=fg, previous=previous)
        times.append(time.perf_counter() - t)
        seg = previous.labels["segmentation"].volume.array > 0
        if n in checkpoints:
            out[n] = dice(seg, truth)
        s = S.corrective_stroke(truth, seg, s, seed=seed * 100 + n)
    return out, times


def warm_timing(engine, shape, seed=0, organs=("liver",)):
    t = time.perf_counter()
    ct, lab = make_abdomen_phantom(seed, shape=shape)
    t_ph = time.perf_counter() - t
    t = time.perf_counter()
    fg = nem.features(ct, engine)
    t_feat = time.perf_counter() - t
    print(f"{'x'.join(map(str, shape))} ({ct.array.size / 1e6:.0f} M voxels): phantom {t_ph:.1f} s, "
          f"features {t_feat:.1f} s [{load()}]", flush=True)
    for organ in organs:
        truth = lab.array == VALUE[organ]
        s = S.simulate_strokes(truth, 3, seed=seed, body=ct.array > -500)
        t = time.perf_counter()
        first = S.segment_from_strokes(ct, engine, ct.with_array(s), feature_grid=fg)
        t_first = time.perf_counter() - t
        warm = []
        for n in range(3):  # three corrective strokes, each a warm update
            s = S.corrective_stroke(truth, first.labels["segmentation"].volume.array > 0, s, seed=n + 1)
            t = time.perf_counter()
            first = S.segment_from_strokes(ct, engine, ct.with_array(s), previous=first)
            warm.append(time.perf_counter() - t)
        d = dice(first.labels["segmentation"].volume.array > 0, truth)
        lean = []
        for n in range(3):  # as the Slicer panel asks: the segment only, no probability map
            s = S.corrective_stroke(truth, first.labels["segmentation"].volume.array > 0, s, seed=n + 10)
            t = time.perf_counter()
            first = S.segment_from_strokes(ct, engine, ct.with_array(s), previous=first, probability_map=False)
            lean.append(time.perf_counter() - t)
        print(f"  {organ:12s} first update (features passed in) {t_first:.2f} s; warm updates (previous=) "
              + ", ".join(f"{w:.2f}" for w in warm) + f" s; Dice after 6 strokes {d:.2f}; segment-only warm "
              "updates " + ", ".join(f"{w:.2f}" for w in lean) + f" s [{load()}]", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 96, 96])
    ap.add_argument("--large", type=int, nargs=3, default=[96, 192, 192])
    ap.add_argument("--full", action="store_true", help="also 512 x 512 x 256")
    args = ap.parse_args()
    torch.set_num_threads(2)
    engine = nem.load_engine(device="cpu", max_voxels=None)
    print(f"Dice after 1 / 3 / 10 strokes, phantoms {tuple(args.shape)}, demo weights [{load()}]")
    curves = {o: [] for o in ORGANS}
    upd = []
    for seed in range(args.phantoms):
        ct, lab = make_abdomen_phantom(seed, shape=tuple(args.shape))
        fg = nem.features(ct, engine)
        for organ in ORGANS:
            d, times = dice_curve(ct, lab, engine, fg, organ, seed)
            curves[organ].append([d[1], d[3], d[10]])
            upd += times[1:]
            print(f"  phantom {seed} {organ:12s} " + " / ".join(f"{v:.2f}" for v in (d[1], d[3], d[10])), flush=True)
    for organ in ORGANS:
        m = np.mean(curves[organ], 0)
        print(f"mean {organ:12s} " + " / ".join(f"{v:.2f}" for v in m))
    print(f"warm update at {tuple(args.shape)}: median {np.median(upd):.2f} s [{load()}]")
    warm_timing(engine, tuple(args.large))
    if args.full:
        warm_timing(engine, (256, 512, 512), organs=ORGANS)


if __name__ == "__main__":
    main()
