"""Organ-map outputs of one CT: bytes on disk and seconds to write, float32 (before) vs compact (now).

    python benchmarks/heatmap_writing.py [--shape 200 512 512] [--organs 8] [--real] [--run]

A phantom CT of ``--shape`` (K J I) and 8 organ maps made the way the pipeline makes them (a map
per 16-voxel token, the fraction of the 64-voxel block around it that is organ, turned into a
probability, trilinearly upsampled onto the CT's voxels), without the model, so it takes seconds;
``--real``: the maps of the bundled demo model instead (``organ_maps(body_hu=None)``, about a
minute on 2 CPU cores), whose token-to-token variation compresses less.
Reported per case (all organs), each written by ``pantheon.outputs.write_result``:

- before: float32 maps that also answer in the air (no body mask), nii.gz (what 0.1 wrote);
- float32 with the body mask, to separate the two effects;
- now: the body-masked maps stored compactly (uint8 + NIfTI scale for nii.gz/nii, rounded float32
  for NRRD); plus the largest difference between the values read back (nibabel) and the maps;
- the body mask's own time, and the preview's.

``--run`` also runs ``pantheon nemesis organs`` (bundled demo weights, CPU) on the same CT: the
computation, the writing and when the progress bar reached 100 % against when the command ended.
Targets (issue 14): a case <= 10 % of the float32 bytes; writing <= 10 % of the run.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def organ_maps_like_the_pipeline(ct, labels, organs: int):
    """{name: HeatmapOutput} as nemesis.organ_maps would make them (no body mask), from the labels."""
    from pantheon.models.nemesis.probe import BTCV_ORGANS
    from pantheon.pipelines import nemesis as nem
    from pantheon.results import HeatmapOutput
    prepared = nem.prepare_ct(ct)
    lab_canon, _ = labels.to_canonical("RAS")  # the CT's grid, as prepare_ct reorients the CT
    model = np.swapaxes(lab_canon.array, 1, 2)  # model axes (D, H, W), as prepare_ct lays the CT out
    patch, block = 16, 4  # tokens of 16 voxels, a 64-voxel block = 4 tokens
    grid = [int(np.ceil(n / patch)) for n in model.shape]
    padded = np.zeros([g * patch for g in grid], model.dtype)
    padded[:model.shape[0], :model.shape[1], :model.shape[2]] = model
    maps = {}
    for name, value, *_ in BTCV_ORGANS[:organs]:
        frac = (padded == value).reshape(grid[0], patch, grid[1], patch, grid[2], patch).mean(axis=(1, 3, 5))
        in_block = nem.window_means(frac[..., None].astype(np.float32), [block] * 3)[..., 0]
        prob = 1.0 - np.exp(-40.0 * in_block)  # certain once ~5 % of the block is organ, like the probe
        vol = nem.token_map_to_input(prepared, prob.astype(np.float32), (patch,) * 3)
        maps[name.replace(" ", "_")] = HeatmapOutput(vol, "inferno", (0.0, 1.0), f"P({name} in the block here)")
    return prepared, maps


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def timed_write(result, folder: Path, fmt: str, compact: bool):
    from pantheon.outputs import write_result
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    write_result(result, folder, fmt, preview=False, compact=compact)
    return time.perf_counter() - t0, folder_bytes(folder)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512], help="K J I (slices first)")
    ap.add_argument("--organs", type=int, default=8, help="maps per case (default 8, every BTCV organ)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--real", action="store_true", help="the demo model's maps, not label-made ones")
    ap.add_argument("--run", action="store_true", help="also time the whole `pantheon nemesis organs` command")
    args = ap.parse_args()

    import nibabel as nib

    from pantheon.io import write_volume
    from pantheon.pipelines.nemesis import body_mask
    from pantheon.results import HeatmapOutput, Result
    from pantheon.synth import make_abdomen_phantom

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    ct, labels = make_abdomen_phantom(args.seed, shape=tuple(args.shape))
    print(f"phantom {ct.shape} (K, J, I), spacing {tuple(round(s, 3) for s in ct.spacing)} mm: "
          f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} cores, load average {load:.2f}")
    prepared, maps = organ_maps_like_the_pipeline(ct, labels, args.organs)
    if args.real:
        from pantheon.pipelines import nemesis as nem
        engine = nem.load_engine(None, "cpu")
        t0 = time.perf_counter()
        names = [n.replace("_", " ") for n in maps]
        maps = nem.organ_maps(ct, engine, nem.load_probe_for(engine), names, body_hu=None).heatmaps
        print(f"demo model's organ maps (no body mask): {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    body = prepared.undo(prepared.canonical.with_array(body_mask(prepared.canonical.array))).array
    t_body = time.perf_counter() - t0
    print(f"body mask: {t_body:.2f} s, {100 * body.mean():.1f} % of the volume")
    liver = maps["liver"].volume.array
    print(f"liver > 0.5: {100 * (liver > 0.5).mean():.1f} % of the volume without the mask, "
          f"{100 * ((liver > 0.5) & body).mean():.1f} % with it; mean outside the body "
          f"{liver[~body].mean():.3f} without, 0 with")
    masked = {n: HeatmapOutput(h.volume.with_array(np.where(body, h.volume.array, np.float32(0))), h.colormap,
                               h.value_range, h.description) for n, h in maps.items()}
    before, after = Result(heatmaps=maps), Result(heatmaps=masked)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [("before: float32, no body mask", "nii.gz", before, False),
                ("float32, body mask", "nii.gz", after, False),
                ("now: compact, body mask", "nii.gz", after, True),
                ("now: compact, body mask", "nii", after, True),
                ("now: compact, body mask", "nrrd", after, True)]
        base = None
        print(f"\n{args.organs} maps of {np.prod(args.shape) / 1e6:.1f} M voxels, written by write_result:")
        print(f"  {'':32s} {'format':7s} {'MB/case':>9s} {'% before':>9s} {'write s':>8s}")
        for label, fmt, res, compact in rows:
            seconds, size = timed_write(res, tmp / "out", fmt, compact)
            base = base or size
            print(f"  {label:32s} {fmt:7s} {size / 1e6:9.1f} {100 * size / base:8.1f}% {seconds:8.2f}")
        shutil.rmtree(tmp / "out")
        timed_write(after, tmp / "out", "nii.gz", True)
        worst = 0.0
        for name, h in masked.items():
            back = np.asarray(nib.load(str(tmp / "out" / f"{name}.nii.gz")).dataobj).T  # (K, J, I)
            worst = max(worst, float(np.abs(back - h.volume.array).max()))
        print(f"  largest |read back - computed| (nibabel): {worst:.5f} (stated: 1/510 = {1 / 510:.5f})")
        from pantheon.preview import save_preview
        t0 = time.perf_counter()
        save_preview(ct, after, tmp / "preview.png")
        print(f"  preview.png: {time.perf_counter() - t0:.2f} s")

        if args.run:
            from pantheon.cli import main as cli
            src = tmp / "ct.nii.gz"
            write_volume(ct, src)
            marks = []
            t_start = time.perf_counter()

            class Bar:  # stands in for the command's tqdm bar: records when each fraction is reached
                def __call__(self, fraction, message=""):
                    marks.append((time.perf_counter() - t_start, fraction, message))

                def close(self):
                    pass

            import pantheon.cli as cli_module
            real = cli_module.TqdmProgress
            cli_module.TqdmProgress = lambda quiet=False, desc="": Bar()
            try:
                t_start = time.perf_counter()
                code = cli(["nemesis", "organs", str(src), "-o", str(tmp / "run"), "--device", "cpu", "--quiet"])
            finally:
                cli_module.TqdmProgress = real
            total = time.perf_counter() - t_start
            first_write = next((t for t, _f, m in marks if m.startswith("Writing")), total)
            full = next((t for t, f, _m in marks if f >= 0.999), total)
            print(f"\n`pantheon nemesis organs` (exit {code}): {total:.1f} s; writing from {first_write:.1f} s "
                  f"({100 * (total - first_write) / total:.1f} % of the run); bar at 100 % at {full:.1f} s, "
                  f"{total - full:.2f} s before the end; {folder_bytes(tmp / 'run') / 1e6:.1f} MB written")


if __name__ == "__main__":
    main()
