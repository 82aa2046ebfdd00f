"""NEMESIS encoder on the CPU: Pantheon fp32 and int8 against the public reference, in one run.

    python benchmarks/nemesis_encoder.py --reference /path/to/NEMESIS-public [--threads 2] [--repeats 5]
        [--skip-volume] [--volume-shape 256 512 512] [--volume-precision int8] [--gates]

- Per 128^3 superpatch (paper model: width 768, depth 6, 8^3 patches = 4096 tokens), with the same
  random weights loaded into the reference (``nemesis.models.mae.MAEgic3DMAE``, imported from the
  checkout given with ``--reference``, never copied into Pantheon) and into Pantheon. Repetitions
  are interleaved (reference, fp32, int8, ... in turn) so machine load hits every variant alike;
  medians, and each variant's ratio to the reference. Without ``--reference`` the ratios are to
  Pantheon fp32.
- Accuracy: token cosine (min over the 4096 tokens) and max |difference| of Pantheon fp32 and int8
  against the reference (tokens put back in natural order: the reference's CPU argsort is not
  stable), and int8 against fp32.
- ``--gates``: int8's accuracy gates on the bundled demo model and held-out phantoms
  (``pantheon.train.int8_gates``: token cosine >= 0.999, organ-probe AUROC within 0.005,
  PCA/similarity maps correlated >= 0.99).
- Whole volume: a ``--volume-shape`` CT (K J I; default 512 x 512 x 256) through features + 8 organ
  maps + writing them, with the 768 model at ``--volume-precision``; wall time and peak RSS.

Targets (issue 16, 2-core AVX2 CPU): int8 >= 1.6x the reference per superpatch within the gates,
fp32 >= 1.1x; whole CT in int8 <= 3 min, peak RSS <= 4 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PAPER = dict(superpatch_size=(128, 128, 128), patch_size=(8, 8, 8), embed_dim=768, depth=6, num_heads=8,
             decoder_depth=3, decoder_num_heads=8, num_maegic_tokens=8)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux reports KiB


def load_reference(path: str, state: dict):
    """The reference model with Pantheon's random weights (the published state-dict layout)."""
    sys.path.insert(0, str(Path(path).expanduser().resolve()))
    try:
        from nemesis.models.mae import MAEgic3DMAE
    finally:
        sys.path.pop(0)
    import logging
    logging.getLogger("nemesis").setLevel(logging.WARNING)  # it logs tensor statistics on first use
    ref = MAEgic3DMAE(superpatch_size=PAPER["superpatch_size"], patch_size=PAPER["patch_size"],
                      embed_dim=PAPER["embed_dim"], depth=PAPER["depth"], num_heads=PAPER["num_heads"],
                      decoder_depth=PAPER["decoder_depth"], decoder_num_heads=PAPER["decoder_num_heads"],
                      num_maegic_tokens=PAPER["num_maegic_tokens"]).eval()
    missing, unexpected = ref.load_state_dict(state, strict=False)
    if [k for k in missing if "pos" not in k] or unexpected:
        raise SystemExit(f"reference does not take these weights: missing {missing[:5]}, unexpected {unexpected[:5]}")

    argsort = torch.argsort

    def stable_argsort(input, dim=-1, descending=False, **kw):
        return argsort(input, dim=dim, descending=descending, stable=True)

    def encode(x):
        # The reference orders visible tokens with an argsort that is stable on CUDA but not on the
        # CPU, and its blocks group consecutive tokens into depth slices: on the CPU it would compute
        # another function. Run it as on CUDA (as the parity fixtures were made).
        torch.argsort = stable_argsort
        try:
            h, _mask, ids_keep = ref.encoder(x)
        finally:
            torch.argsort = argsort
        out = torch.empty_like(h)
        out[:, ids_keep[0]] = h  # natural token order
        return out
    return encode


def cosine(a: torch.Tensor, b: torch.Tensor) -> str:
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    return f"cosine min {float(cos.min()):.6f}, max |d| {float((a - b).abs().max()):.4g}"


def superpatch_timings(args):
    from pantheon.models.nemesis import NemesisMAE
    from pantheon.models.nemesis.int8 import quantize_int8
    torch.manual_seed(0)
    model = NemesisMAE(**PAPER).eval()
    x = torch.rand(1, 1, *PAPER["superpatch_size"])
    variants = {}
    if args.reference:
        variants["reference fp32"] = load_reference(args.reference, model.state_dict())
    variants["Pantheon fp32"] = model.encode
    t = time.perf_counter()
    qmodel = quantize_int8(model)
    quantise_s = time.perf_counter() - t
    variants["Pantheon int8"] = qmodel.encode
    times = {k: [] for k in variants}
    tokens = {}
    with torch.inference_mode():
        for k, f in variants.items():  # warm-up: kernels, caches, the reference's first-call logging
            tokens[k] = f(x).float()
        for _ in range(args.repeats):
            for k, f in variants.items():
                t = time.perf_counter()
                f(x)
                times[k].append(time.perf_counter() - t)
    base_name = "reference fp32" if args.reference else "Pantheon fp32"
    base = statistics.median(times[base_name])
    print(f"per 128^3 superpatch ({args.repeats} interleaved repetitions, medians; int8 quantisation "
          f"{quantise_s:.2f} s once per model, then cached):")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:16s} {med:6.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})  {base / med:5.2f}x {base_name}")
    print("accuracy:")
    if args.reference:
        print(f"  Pantheon fp32 vs reference: {cosine(tokens['Pantheon fp32'], tokens['reference fp32'])}")
        print(f"  Pantheon int8 vs reference: {cosine(tokens['Pantheon int8'], tokens['reference fp32'])}")
    print(f"  Pantheon int8 vs fp32:      {cosine(tokens['Pantheon int8'], tokens['Pantheon fp32'])}")
    return model


def gates():
    from pantheon.pipelines import nemesis as nem
    from pantheon.synth import make_abdomen_phantom
    from pantheon.train import int8_gates as g
    from pantheon.train.nemesis import held_out_superpatches
    fp32, q = nem.load_engine(device="cpu"), nem.load_engine(device="cpu", precision="int8")
    pairs = [make_abdomen_phantom(s) for s in range(20_000, 20_004)]  # held out from the demo's training
    tokens = g.token_cosine(fp32, q, held_out_superpatches([ct for ct, _ in pairs], fp32.superpatch, 16, seed=0))
    auroc = g.probe_auroc(fp32, q, nem.load_probe_for(fp32), pairs, stride=32)
    maps = g.map_correlation(fp32, q, pairs[0][0])
    print("int8 gates on the demo model, 4 held-out phantoms:")
    print(f"  token cosine min {tokens['min']:.6f} (gate >= {g.TOKEN_COSINE_MIN})")
    print(f"  probe AUROC mean fp32 {auroc['fp32']['mean']:.4f}, int8 {auroc['int8']['mean']:.4f}; "
          f"largest per-organ difference {auroc['max_abs_diff']:.4f} (gate <= {g.AUROC_TOLERANCE})")
    print(f"  map correlation PCA {maps['pca']:.5f}, similarity {maps['similarity']:.5f} "
          f"(gate >= {g.MAP_CORRELATION_MIN})")
    print(f"  all gates pass: {g.gates_pass(tokens, auroc, maps)}")


def whole_volume(args, model):
    from pantheon.io import Volume
    from pantheon.models.nemesis.probe import OrganProbe
    from pantheon.outputs import write_result
    from pantheon.pipelines import nemesis as nem
    K, J, I = args.volume_shape
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 20, (K, J, I)).astype(np.int16)
    ct[:, :40] = -1000  # air, so that the CT check sees a CT
    vol = Volume(ct, (0.8, 0.8, 1.5))
    del ct
    torch.manual_seed(1)
    probe = OrganProbe(model.embed_dim, 8).eval()
    engine = nem.NemesisEngine(model, "cpu", args.volume_precision)
    t0 = time.perf_counter()
    prepared = nem.prepare_ct(vol)
    n_tiles = len(nem.superpatch_tiles(prepared.model_array.shape, engine.superpatch, engine.superpatch))
    fg = nem.compute_features(prepared, engine)
    del prepared  # organ_maps prepares the CT again, as the command does (one copy at a time)
    t1 = time.perf_counter()
    rss_features = peak_rss_gb()
    res = nem.organ_maps(vol, engine, probe, feature_grid=fg)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        write_result(res, Path(out) / "organs", "nii.gz", source=vol, preview=False)
        size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    t3 = time.perf_counter()
    print(f"whole volume {K}x{J}x{I} ({args.volume_precision}, {n_tiles} superpatches): features {t1 - t0:.1f} s, "
          f"8 organ maps {t2 - t1:.1f} s, writing {t3 - t2:.1f} s ({size / 1e6:.0f} MB); total {t3 - t0:.1f} s; "
          f"peak RSS {peak_rss_gb():.2f} GB (this process alone; {rss_features:.2f} GB up to the end of features)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", metavar="PATH", help="a checkout of github.com/whilethis00/NEMESIS-public")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--volume-precision", default="int8", choices=["fp32", "int8", "bf16"])
    ap.add_argument("--volume-shape", type=int, nargs=3, default=[256, 512, 512], metavar=("K", "J", "I"))
    ap.add_argument("--skip-volume", action="store_true")
    ap.add_argument("--gates", action="store_true", help="also measure int8's accuracy gates on the demo model")
    ap.add_argument("--volume-only", action="store_true",
                    help="only the whole volume (what the main run starts in a process of its own, so that its "
                         "peak RSS is the volume's, not the superpatch benchmark's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, quantized engines "
          f"{torch.backends.quantized.supported_engines}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.volume_only:
        from pantheon.models.nemesis import NemesisMAE
        torch.manual_seed(0)
        whole_volume(args, NemesisMAE(**PAPER).eval())
        return
    superpatch_timings(args)
    if args.gates:
        gates()
    if not args.skip_volume:
        import subprocess
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--volume-only", "--threads", str(args.threads),
                        "--volume-precision", args.volume_precision,
                        "--volume-shape", *map(str, args.volume_shape)], check=True)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
