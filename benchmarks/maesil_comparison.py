"""MAESIL's comparison (issue 17 section 6): the NEMESIS MAE against MONAI's AE, VAE and VQ-VAE at
comparable size on the same budget, reconstruction PSNR / SSIM on held-out CT phantom superpatches.

Protocol: :mod:`pantheon.train.maesil` (64^3 superpatches, the demo NEMESIS architecture, baselines
within 1.25x its parameters with the same 8^3 x 96 bottleneck, every model the same seconds, batch,
batches and optimiser; 64 held-out superpatches from 8 unseen phantoms; MONAI PSNRMetric and 3D
SSIMMetric on the [0, 1] window scale; the MAE at 0.5/0.5 masking, visible patches pasted or raw,
and unmasked; the bundled demo weights as extra rows).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/maesil_comparison.py [--budget-s 450 | --steps N]
        [--seed 0] [--out maesil-out] [--threads 1] [--no-demo] [--tiny]

Writes ``maesil_comparison.json`` (every figure, per superpatch too) and ``maesil_comparison.png``
(one held-out slice, the input and each reconstruction) into ``--out``, and prints the table.
``--tiny``: toy models and phantoms, 2 steps each unless ``--steps``/``--budget-s`` say otherwise (tests).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from pantheon.cliargs import POSITIVE, float_between
from pantheon.train import maesil

DEFAULT_BUDGET_S = 450.0  # per model: four models, phantoms and scoring (~7 min) stay within 45 min on 1 thread


def load():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float_between(0, low_inclusive=False), default=None,
                    help=f"training seconds per model (default {DEFAULT_BUDGET_S:g}, or none with --steps)")
    ap.add_argument("--steps", type=POSITIVE, default=None, help="training steps per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="maesil-out", help="folder for maesil_comparison.json and .png")
    ap.add_argument("--threads", type=POSITIVE, default=1)
    ap.add_argument("--no-demo", action="store_true", help="leave out the bundled demo weights' rows")
    ap.add_argument("--tiny", action="store_true", help="toy sizes, for tests")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = maesil.tiny_config() if args.tiny else maesil.ComparisonConfig()
    steps, budget = args.steps, args.budget_s
    if steps is None and budget is None:
        steps, budget = (2, None) if args.tiny else (None, DEFAULT_BUDGET_S)
    budget_words = " and ".join(w for w in (f"{steps} steps" if steps else "",
                                            f"{budget:g} s" if budget else "") if w)
    command = "python benchmarks/maesil_comparison.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{maesil.PAPER}: reconstruction of held-out {cfg.superpatch}^3 phantom superpatches; every model "
          f"{budget_words}, batch {cfg.batch_size}; torch threads {torch.get_num_threads()} [{load()}]", flush=True)
    t0 = time.perf_counter()
    result = maesil.run_comparison(cfg, steps=steps, budget_s=budget, seed=args.seed, include_demo=not args.no_demo,
                                   log=lambda line: print(f"  {line}", flush=True))
    result["command"] = command.strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = maesil.save_figure(result, out / "maesil_comparison.png")
    doc = maesil.json_ready(result)
    (out / "maesil_comparison.json").write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(maesil.markdown_table(result["rows"]))
    print()
    ratios = ", ".join(f"{r['model']} {r['parameter_ratio_to_mae']:.2f}" for r in result["rows"] if not r["variant"])
    print(f"Parameters over the MAE's ({result['mae_parameters']:,}): {ratios} (stated factor "
          f"{maesil.PARAMETER_FACTOR:g}). PSNR/SSIM: {result['held_out']['superpatches']} held-out superpatches, "
          "mean ± SD, [0, 1] scale (HU -175..250).")
    if not result["demo_weights"]["included"] and "reason" in result["demo_weights"]:
        print(f"Demo weights left out: {result['demo_weights']['reason']}.")
    print(f"Total {time.perf_counter() - t0:.0f} s; load average at start {result['load_average_start']}, "
          f"at end {result['load_average_end']}")
    print(f"Wrote {out / 'maesil_comparison.json'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
