"""NEMESIS encoder speed and memory (768-dim main model, random weights).

Prints seconds per 128^3 superpatch in fp32 and bf16, bf16-vs-fp32 token agreement, and the
whole-volume feature time and peak RSS for a 512x512x256 CT.

    python benchmarks/nemesis_encoder.py [--threads 2] [--repeats 3] [--volume-precision bf16] [--skip-volume]

Targets from the issue (2-core CPU): fp32 <= 1.4 s, bf16 <= 0.6 s with token cosine >= 0.999,
whole volume <= 20 s in bf16 with peak RSS <= 4 GB.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux reports KiB


def time_encode(model, x, precision: str, repeats: int):
    from pantheon.pipelines.nemesis import autocast_for
    times, out = [], None
    for n in range(repeats + 1):  # the first run warms up kernels and caches
        t = time.perf_counter()
        with torch.inference_mode(), autocast_for(x.device, precision):
            out = model.encode(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        if n:
            times.append(time.perf_counter() - t)
    return statistics.median(times), out.float()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--volume-precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--volume-shape", type=int, nargs=3, default=[256, 512, 512], metavar=("K", "J", "I"))
    ap.add_argument("--skip-volume", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pantheon.models.nemesis import NemesisMAE
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = NemesisMAE().eval().to(device)
    x = torch.rand(1, 1, 128, 128, 128, device=device)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}, "
          f"bf16 native on CPU: {torch.backends.mkldnn.is_available() and 'avx512_bf16' in open('/proc/cpuinfo').read()}")
    t32, tok32 = time_encode(model, x, "fp32", args.repeats)
    print(f"fp32: {t32:.3f} s per 128^3 superpatch")
    t16, tok16 = time_encode(model, x, "bf16", args.repeats)
    cos = torch.nn.functional.cosine_similarity(tok16, tok32, dim=-1)
    print(f"bf16: {t16:.3f} s per 128^3 superpatch; vs fp32 tokens: max |d| {float((tok16 - tok32).abs().max()):.4f}, "
          f"cosine min {float(cos.min()):.5f} mean {float(cos.mean()):.5f}")
    if args.skip_volume:
        return
    from pantheon.io import Volume
    from pantheon.pipelines.nemesis import NemesisEngine, compute_features, prepare_ct
    rng = np.random.default_rng(0)
    K, J, I = args.volume_shape
    ct = rng.normal(40, 20, (K, J, I)).astype(np.int16)
    ct[:, :40] = -1000  # air so that the range check sees a CT
    vol = Volume(ct, (0.8, 0.8, 1.5))
    del ct
    engine = NemesisEngine(model, args.device, args.volume_precision)
    t = time.perf_counter()
    prepared = prepare_ct(vol)
    fg = compute_features(prepared, engine)
    dt = time.perf_counter() - t
    print(f"whole volume {K}x{J}x{I} ({args.volume_precision}): {dt:.1f} s for token grid {fg.tokens.shape}, "
          f"peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
