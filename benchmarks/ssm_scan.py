"""Selective-scan speed: sequential reference vs the chunked pure-PyTorch scan.

Prints the forward time of ``selective_scan_ref`` and ``selective_scan_chunked`` for one
SS2D-sized sequence (batch 1, L = 4096, D = 192, N = 16, softplus delta with bias, D skip),
the speed-up, and max |chunked - ref|; optionally the same with a backward pass.

    python benchmarks/ssm_scan.py [--threads 1] [--length 4096] [--dim 192] [--dstate 16]
                                  [--repeats 5] [--chunk-size T ...] [--backward]

Target from the issue (one thread of a 2-core CPU): speed-up >= 10x with max |delta| <= 1e-4
(float32).
Runs are interleaved and the minimum is reported, which is robust on a shared machine; the
process CPU time is printed too (on a busy machine, wall time penalises the multi-threaded
chunked scan, whose many short parallel ops wait for the slowest thread; OMP_WAIT_POLICY=PASSIVE
helps there).
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def best_time(fn, repeats):
    return min(_once(fn)[0] for _ in range(repeats))


def _once(fn):
    """(wall seconds, process CPU seconds) of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, nargs="*", default=[None],
                    help="chunk lengths to try (default: the automatic choice)")
    ap.add_argument("--backward", action="store_true", help="also time forward + backward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pantheon.models.ssm import default_chunk_size, selective_scan_chunked, selective_scan_ref

    torch.manual_seed(0)
    b, d, n, L = args.batch, args.dim, args.dstate, args.length
    u = torch.randn(b, d, L)
    delta = torch.randn(b, d, L) * 0.5
    A = -torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))  # S4D-real
    B, C = torch.randn(b, n, L), torch.randn(b, n, L)
    Dskip, bias = torch.ones(d), torch.full((d,), -2.0)
    kw = dict(D=Dskip, delta_bias=bias, delta_softplus=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} threads; batch {b}, L {L}, D {d}, N {n}; "
          f"1-min load average {load:.1f} on {os.cpu_count()} CPUs (a loaded machine slows the "
          f"multi-threaded chunked scan most)")

    with torch.no_grad():
        ref = selective_scan_ref(u, delta, A, B, C, **kw)
        for T in args.chunk_size:
            out = selective_scan_chunked(u, delta, A, B, C, chunk_size=T, **kw)  # warm-up
            t_ref = t_chk = c_ref = c_chk = float("inf")
            for _ in range(args.repeats):  # interleaved, so that load spikes hit both alike
                w, c = _once(lambda: selective_scan_ref(u, delta, A, B, C, **kw))
                t_ref, c_ref = min(t_ref, w), min(c_ref, c)
                w, c = _once(lambda: selective_scan_chunked(u, delta, A, B, C, chunk_size=T, **kw))
                t_chk, c_chk = min(t_chk, w), min(c_chk, c)
            err = (out - ref).abs().max().item()
            tsize = default_chunk_size(L) if T is None else T
            print(f"forward  chunk {tsize:4d}: ref {t_ref * 1e3:8.1f} ms  chunked {t_chk * 1e3:7.1f} ms  "
                  f"speed-up {t_ref / t_chk:5.1f}x  max|delta| {err:.2e}   "
                  f"(CPU time: ref {c_ref * 1e3:.0f} ms, chunked {c_chk * 1e3:.0f} ms, {c_ref / c_chk:.1f}x)")

    if args.backward:
        leaves = [x.clone().requires_grad_(True) for x in (u, delta, B, C)]

        def fwd_bwd(fn):
            y = fn(*leaves[:2], A, *leaves[2:], **kw)
            y.sum().backward()

        t_ref = best_time(lambda: fwd_bwd(selective_scan_ref), max(1, args.repeats // 2))
        t_chk = best_time(lambda: fwd_bwd(selective_scan_chunked), args.repeats)
        print(f"fwd+bwd  auto chunk: ref {t_ref * 1e3:8.1f} ms  chunked {t_chk * 1e3:7.1f} ms  "
              f"speed-up {t_ref / t_chk:5.1f}x")


if __name__ == "__main__":
    main()
