"""Batch throughput: cases per minute for NEMESIS organ maps (bundled demo weights) on phantoms.

    python benchmarks/batch_throughput.py [--cases 8] [--shape 64 96 96] [--workers 1 2]

For each worker count, a fresh ``run_batch`` over the same phantoms reports wall time, cases per
minute, and the per-case overhead beyond compute: (wall time x workers / cases) minus the mean
pipeline time measured inside the worker (reading, writing, thumbnail, process start-up and model
loading amortised over the cases, manifest updates).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from pantheon.batch import run_batch
from pantheon.io import write_volume
from pantheon.synth import make_abdomen_phantom


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 96, 96], help="K J I")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for s in range(args.cases):
            ct, _ = make_abdomen_phantom(s, shape=tuple(args.shape))
            write_volume(ct, src / f"ct{s:02d}.nii.gz")
        print(f"{args.cases} phantoms {tuple(args.shape)} (K, J, I), {os.cpu_count()} cores")
        rows = []
        for n in args.workers:
            out = Path(tmp) / f"out{n}"
            t0 = time.perf_counter()
            summary = run_batch("nemesis-organs", src, out, workers=n, quiet=True)
            wall = time.perf_counter() - t0
            cases = json.loads((out / "manifest.json").read_text())["cases"]
            pipe = statistics.mean(c["pipeline_seconds"] for c in cases)
            worker = statistics.mean(c["seconds"] for c in cases)
            overhead = wall * n / len(cases) - pipe
            rows.append((n, wall, 60 * len(cases) / wall, pipe, worker, overhead, summary["done"]))
            print(f"workers {n}: {wall:6.2f} s wall, {60 * len(cases) / wall:6.1f} cases/min, "
                  f"pipeline {pipe:.3f} s/case, in-worker total {worker:.3f} s/case, "
                  f"overhead beyond compute {overhead:.3f} s/case ({summary['done']} done)")


if __name__ == "__main__":
    main()
