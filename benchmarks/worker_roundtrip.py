"""Worker speed: cold start to ready, warm request overhead, volume round trip.

    python benchmarks/worker_roundtrip.py [--shape 300 512 512] [--repeats 20]

Targets (issue): warm request overhead <= 0.3 s; a 512x512x300 int16 volume in and a float32
heatmap of that size back <= 1 s each way (NRRD files in the client's private temp folder).
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from pantheon.io import Volume, read_volume, write_volume
from pantheon.worker.client import WorkerClient
from pantheon.worker.protocol import TEST_PIPELINES_ENV


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="K J I (slices first)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    env = {TEST_PIPELINES_ENV: "1"}

    t0 = time.perf_counter()
    c = WorkerClient(env=env, preload=False)
    c.stats()
    cold = time.perf_counter() - t0
    print(f"cold start to ready (handshake, no torch):   {cold:.3f} s")
    t0 = time.perf_counter()
    info = c.ping()
    print(f"first ping incl. torch import:                {time.perf_counter() - t0:.3f} s (torch {info['torch']})")

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        c.run("system.sleep", {"seconds": 0, "steps": 1}, {})
        times.append(time.perf_counter() - t0)
    print(f"warm request overhead (system.sleep 0 s):     median {statistics.median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms over {args.repeats}")

    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 2000, size=tuple(args.shape), dtype=np.int16)
    vol = Volume(arr, spacing=(0.7, 0.7, 1.5), origin=(-180.0, -180.0, -300.0))
    ins, outs = [], []
    for _ in range(3):
        d = c.input_dir()
        t0 = time.perf_counter()
        p = write_volume(vol, Path(d) / "input.nrrd", compress=False)  # as Slicer writes a temp NRRD
        t_write = time.perf_counter() - t0
        res = c.run("system.roundtrip", {}, {"volume": str(p)}, remove_when_done=[d])
        t0 = time.perf_counter()
        back = read_volume(Path(res["output_dir"]) / res["outputs"]["heatmap"]["file"])  # as Slicer loads it
        t_read = time.perf_counter() - t0
        assert back.array.dtype == np.float32 and back.same_geometry(vol)
        print(f"  in: client write {t_write:.3f} + worker read {res['scalars']['read_s']:.3f} s; "
              f"out: worker write {res['scalars']['write_s']:.3f} + client read {t_read:.3f} s")
        ins.append(t_write + res["scalars"]["read_s"])
        outs.append(res["scalars"]["write_s"] + t_read)
        c.release(res)
    mb_in, mb_out = arr.nbytes / 2**20, arr.size * 4 / 2**20
    print(f"volume in  {tuple(args.shape)} int16 ({mb_in:.0f} MiB): client write + worker read   "
          f"{min(ins):.3f} s (best of 3; median {statistics.median(ins):.3f})")
    print(f"heatmap out {tuple(args.shape)} float32 ({mb_out:.0f} MiB): worker write + client read "
          f"{min(outs):.3f} s (best of 3; median {statistics.median(outs):.3f})")
    print(f"temp folder: {os.path.dirname(c.session_dir)}")
    c.shutdown()


if __name__ == "__main__":
    main()
