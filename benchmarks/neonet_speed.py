"""PNIPredict (NeoNet) speed and memory on CPU.

1. End-to-end ``pantheon.pipelines.neonet.predict`` (check, resample to the model grid, NeoSeg
   sliding window, TLCR, PattenNet, heat map back onto the input) on a 256 x 256 x 80 liver MRI
   phantom (1.5 x 1.5 x 4 mm, oblique), with the bundled demo weights when their cards resolve,
   else random-init models of the demo size (``pantheon.train.neonet.default_configs("demo")``;
   NeoSeg's tumour logit is then biased up so the run goes end to end). Target: <= 30 s on 2 cores.
2. DDIM sampling (50 steps + decode) of one 96 x 96 x 48 patch (the paper-size TLCR crop) with
   the default-size NeoGen (``--size default``: ``NeoGen()``, the MAISI-like default sizes, random
   init, timing only) and with the demo NeoGen (``--size demo``: the bundled demo weights when their
   card resolves, else random init of ``default_configs("demo")``). Always the full schedule from
   pure noise (init strength 1), so every step counted is run; a guided start (init strength s < 1)
   runs about s times as many.
3. Peak RSS of each part (each runs in its own process) and the machine's load average before and
   after it (other work on a shared machine slows every figure).

    python benchmarks/neonet_speed.py [--threads 2] [--steps 50] [--part predict|synth|all]
                                      [--size default|demo|both] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _demo_or_random_models():
    from pantheon.pipelines.neonet import NeoNetModels, load_neonet_models
    try:
        return load_neonet_models(components=("neoseg", "pattennet")), "demo weights"
    except Exception as exc:  # no demo cards/weights yet: random init of the same size
        import torch

        from pantheon.models.neonet import NeoGen, NeoSeg, PattenNet
        from pantheon.train.neonet import default_configs
        cfg = default_configs("demo")
        torch.manual_seed(0)
        seg = NeoSeg(**cfg["neoseg"]).eval()
        with torch.no_grad():
            convs = [m for m in seg.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
            convs[-1].bias[2] += 5.0  # random init finds no tumour otherwise
        net = PattenNet.from_neogen(NeoGen(**cfg["neogen"]), **cfg["pattennet"]).eval()
        return NeoNetModels(seg, None, net), f"random-init demo-size models ({type(exc).__name__}: {exc})"


def part_predict(repeats: int) -> dict:
    from pantheon.pipelines.neonet import predict
    from pantheon.synth.mri_phantom import make_liver_mri_phantom
    t = time.perf_counter()
    mri, lab, _ = make_liver_mri_phantom(11, shape=(80, 256, 256), spacing=(1.5, 1.5, 4.0), orientation="LPS",
                                         oblique=True)
    t_phantom = time.perf_counter() - t
    models, which = _demo_or_random_models()
    times, stages = [], []
    for _ in range(repeats):
        marks = []
        t, c = time.perf_counter(), time.process_time()
        res = predict(mri, models, progress=lambda f, m: marks.append((round(time.perf_counter() - t, 2), m)))
        times.append((time.perf_counter() - t, time.process_time() - c))
        stages.append(marks)
    return {"part": "predict", "input_shape_kji": list(mri.shape), "input_spacing": list(mri.spacing),
            "models": which, "model_spacing": list(models.spacing), "crop_shape_kji": list(models.patch_shape),
            "phantom_seconds": round(t_phantom, 2), "predict_seconds": [round(x[0], 2) for x in times],
            "predict_cpu_seconds": [round(x[1], 2) for x in times],
            "stage_marks": [m for m in stages[-1] if m[1]],
            "pni_probability": round(res.scalars["pni_probability"], 4),
            "tumour_volume_ml": round(res.scalars["tumour_volume_ml"], 1), "peak_rss_mb": round(peak_rss_mb())}


def _neogen(size: str):
    import torch

    from pantheon.models.neonet import NeoGen
    torch.manual_seed(0)
    if size == "default":
        return NeoGen().eval(), "default-size NeoGen, random init"  # MAISI-like default sizes
    try:
        from pantheon.pipelines.neonet import load_neonet_models
        return load_neonet_models(components=("neogen",)).neogen.eval(), "demo weights"
    except Exception as exc:
        from pantheon.train.neonet import default_configs
        return NeoGen(**default_configs("demo")["neogen"]).eval(), f"random-init demo size ({type(exc).__name__})"


def part_synth(steps: int, size: str = "default") -> dict:
    import torch

    from pantheon.models.neonet import masks_from_labels
    gen, which = _neogen(size)
    lab = torch.zeros((48, 96, 96), dtype=torch.long)
    lab[8:40, 16:80, 16:80] = 1
    lab[18:30, 36:60, 36:60] = 2
    masks = masks_from_labels(lab)
    t, c = time.perf_counter(), time.process_time()
    img = gen.generate(masks, labels=1, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                       init_strength=1.0)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    params = sum(p.numel() for p in gen.parameters())
    return {"part": "synth", "size": size, "models": which, "patch_shape": list(img.shape[2:]), "steps": steps,
            "init_strength_of_model": float(gen.config.get("init_strength", 1.0)),
            "seconds": round(dt, 2), "cpu_seconds": round(dc, 2), "seconds_per_step": round(dt / steps, 3),
            "neogen_parameters_M": round(params / 1e6, 2), "peak_rss_mb": round(peak_rss_mb())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--part", default="all", choices=["all", "predict", "synth"])
    ap.add_argument("--size", default="both", choices=["default", "demo", "both"])
    args = ap.parse_args(argv)
    if args.part == "all" or (args.part == "synth" and args.size == "both"):
        out = []
        runs = ([("predict", "demo")] if args.part == "all" else []) + [
            ("synth", s) for s in (("demo", "default") if args.size == "both" else (args.size,))]
        for part, size in runs:
            cmd = [sys.executable, __file__, "--part", part, "--threads", str(args.threads), "--steps",
                   str(args.steps), "--repeats", str(args.repeats), "--size", size]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return r.returncode
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(out, indent=2))
        return 0
    import torch
    torch.set_num_threads(args.threads)
    import os
    load_before = os.getloadavg()
    res = part_predict(args.repeats) if args.part == "predict" else part_synth(args.steps, args.size)
    res["threads"] = args.threads
    res["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    res["cpu_count"] = os.cpu_count()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
