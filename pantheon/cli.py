"""The ``pantheon`` command line.

``pantheon demo`` runs the main job offline on a generated phantom with the bundled demo weights;
``pantheon nemesis <action>`` runs one NEMESIS pipeline on any image Pantheon reads.
An expected failure prints one sentence on stderr and exits with status 2, leaving no output behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import Cancelled, PantheonError

EXIT_OK, EXIT_CASES_FAILED, EXIT_ERROR, EXIT_CANCELLED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``), handled as Ctrl-C is: clean up, then say what was written."""


class TqdmProgress:
    """A progress callback drawing one tqdm bar (on stderr), silent with ``quiet``."""

    def __init__(self, quiet: bool = False, desc: str = ""):
        self.bar = None
        # no bar when stderr is a file or a pipe: it would only fill logs with carriage returns
        if not quiet and _is_terminal(sys.stderr):
            from tqdm import tqdm
            self.bar = tqdm(total=1000, desc=desc, unit="‰", bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
                            file=sys.stderr, leave=False)

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.bar is None:
            return
        self.bar.n = int(round(1000 * fraction))
        if message:
            self.bar.set_postfix_str(message[:60], refresh=False)
        self.bar.refresh()

    def close(self):
        bar, self.bar = self.bar, None
        if bar is not None:
            try:
                bar.close()
            except (OSError, ValueError):  # stderr already closed (a broken pipe): nothing to clear
                pass


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# ---------------------------------------------------------------------------- argument types
# Each refuses a value with the words argparse prints after the option's name, e.g.
# "--noise must be 0 or more, got -1"; see _Parser.error.
def _number(text: str, kind=float):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {text}")
        return value
    parse.__name__ = f"int>={minimum}"
    return parse


def float_between(low: float, high: Optional[float] = None, high_inclusive: bool = True, low_inclusive: bool = True):
    def parse(text: str) -> float:
        value = _number(text, float)
        if (value < low or (not low_inclusive and value == low) or
                (high is not None and (value > high or (not high_inclusive and value == high)))):
            if high is None:
                raise argparse.ArgumentTypeError(f"must be {low:g} or more, got {text}")
            lo = "[" if low_inclusive else "("
            hi = "]" if high_inclusive else ")"
            raise argparse.ArgumentTypeError(f"must be in {lo}{low:g}, {high:g}{hi}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


finite_float = float_between(-math.inf)
POSITIVE, NON_NEGATIVE = int_at_least(1), int_at_least(0)
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_name(text: str) -> str:
    """Syntax only (no torch here): whether the device exists is checked when the model loads."""
    name = text.strip().lower()
    if not _DEVICE.fullmatch(name):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N (N = GPU number, from 0), got {text!r}")
    return name


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) like every other error."""

    def error(self, message):
        found = re.match(r"argument ([^:]+): (.*)", message, re.S)
        if found:
            name = found.group(1).split("/")[-1]  # "-o/--output" -> "--output"
            words = found.group(2).strip()
            message = f"{name} {words}" if words.startswith("must") else f"{name}: {words}"
        message = " ".join(message.split()).rstrip(".")
        _say(f"pantheon: error: {message} (see '{self.prog} --help').")
        self.exit(EXIT_ERROR)


# ---------------------------------------------------------------------------- argument helpers
def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="PATH|CARD",
                   help="NEMESIS weights: a file (.pt published format or .safetensors) or a model-card id "
                        "(default: the bundled demo weights 'nemesis-demo'; official: 'nemesis-mae-768')")
    p.add_argument("--device", default="auto", type=device_name,
                   help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="fp32 (default); bf16/fp16 autocast on a GPU or a CPU with bf16 instructions; int8 on the "
                        "CPU (about 1.8x faster than fp32 on 2 AVX2 cores, tokens within cosine 0.999 of fp32)")
    p.add_argument("--batch-size", type=POSITIVE, default=1, help="superpatches per forward pass (default 1)")
    p.add_argument("--allow-download", action="store_true", help="download weights named by a card if not cached")
    p.add_argument("--trust-unverified", action="store_true",
                   help="accept downloaded weights whose card has no checksum yet (the hash is recorded)")


def _add_input_limits(p: argparse.ArgumentParser, family: Optional[str]) -> None:
    """``--max-pixels``: the largest image the command reads, checked from the file's header before
    any pixel is decoded (a 700-byte PNG can claim 40000 x 20000). ``family`` names the command's own
    limit in :data:`pantheon.io.validate.COMMAND_PIXEL_LIMITS`; None (batch) = the pipeline's."""
    from .io.validate import COMMAND_PIXEL_LIMITS
    limit = COMMAND_PIXEL_LIMITS[family] if family else None
    default = f"{limit:,}" if limit else "the pipeline's own limit"
    p.add_argument("--max-pixels", type=NON_NEGATIVE, default=limit, metavar="N",
                   help=f"refuse an image of more than N pixels (voxels in 3D), checked from its header before "
                        f"reading (default {default}; 0 = no limit)")


def _add_io_args(p: argparse.ArgumentParser, needs_input: bool = True) -> None:
    if needs_input:
        p.add_argument("input", help="CT image: NIfTI, NRRD, MHA/MHD or a DICOM series folder")
    _add_input_limits(p, "nemesis")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    _add_overwrite(p)
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


OUTPUT_HELP = ("output folder: new, empty, or holding no results (created; results appear when complete, "
               "all together)")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that already holds results, whole (default: refuse it)")


# Options naming files a single-case command reads: --overwrite never deletes one of them.
INPUT_OPTIONS = ("input", "tumour_mask", "data", "images", "weights", "probe", "detector", "hena", "neoseg",
                 "pattennet", "neogen", "cache_dir")


def _case_folder(args):
    """The output folder of a single-case command (the commands with --overwrite), or None."""
    if getattr(args, "overwrite", None) is None or not getattr(args, "output", None):
        return None
    from .outputs import OutputFolder
    inputs = [getattr(args, k, None) for k in INPUT_OPTIONS]
    inputs = [v for v in inputs if isinstance(v, (str, os.PathLike)) and v and Path(v).expanduser().exists()]
    return OutputFolder(args.output, args.overwrite, inputs)


@contextmanager
def _output_stage(args):
    """A folder to write into; on success its files become the command's output folder (see
    pantheon.outputs.OutputFolder: beside what is there, or replacing it whole with --overwrite)."""
    folder = getattr(args, "output_folder", None)
    if folder is not None:  # opened (checked and locked) by main before any work
        with folder.staged() as stage:
            yield stage
        return
    with _case_folder(args) as folder:  # a command function called without main
        with folder.staged() as stage:
            yield stage


def _write(args, result, progress, source=None, preview=True) -> List[str]:
    """Write ``result`` as the command's output folder; returns the files' final paths."""
    from .outputs import write_result
    with _output_stage(args) as stage:
        files = write_result(result, stage, args.format, source=source, preview=preview, progress=progress)
    return [str(Path(args.output) / f.name) for f in files]


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stride", type=POSITIVE, nargs="+", metavar="N",
                   help="superpatch stride in voxels, one value or three (D H W), multiples of the patch size; "
                        "smaller than the superpatch averages overlapping tiles (default: no overlap)")
    p.add_argument("--cache-dir", help="keep computed token features here and reuse them for the same image")


def _add_point_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--point", type=finite_float, nargs=3, metavar=("R", "A", "S"),
                   help="world point in RAS millimetres (the coordinates 3D Slicer shows)")
    g.add_argument("--point-lps", type=finite_float, nargs=3, metavar=("L", "P", "S"),
                   help="world point in LPS millimetres")
    g.add_argument("--voxel", type=finite_float, nargs=3, metavar=("I", "J", "K"),
                   help="voxel index (i, j, k) of the input")


def _point_lps(args, volume):
    """The point as LPS millimetres, refused (in the user's own option and coordinates) when it lies
    outside the image, before any model is loaded."""
    import numpy as np
    from .errors import InputError
    if args.point is not None:
        option, given, axes = "--point", list(args.point), "RAS"
        lps = np.array([-given[0], -given[1], given[2]])
    elif args.point_lps is not None:
        option, given, axes = "--point-lps", list(args.point_lps), "LPS"
        lps = np.array(given)
    else:
        option, given, axes = "--voxel", list(args.voxel), None
        lps = volume.ijk_to_world(np.array(given))[0]
    ijk = volume.world_to_ijk(lps)[0]
    size = np.array(volume.size_ijk)
    if np.all(ijk >= -0.5) and np.all(ijk <= size - 0.5):
        return lps
    shown = ", ".join(f"{v:g}" for v in given)
    if axes is None:
        raise InputError(f"--voxel ({shown}) lies outside the image, whose voxel indices (i, j, k) run from 0 to "
                         f"{size[0] - 1}, {size[1] - 1} and {size[2] - 1}.")
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    world = volume.ijk_to_world(corners, ras=axes == "RAS")
    extent = ", ".join(f"{a} {float(lo):.1f} to {float(hi):.1f}"
                       for a, lo, hi in zip(axes, world.min(axis=0), world.max(axis=0)))
    raise InputError(f"{option} ({shown}) ({axes} mm) lies outside the image, which spans {extent} mm.")


def _stride(args):
    if not args.stride:
        return None
    if len(args.stride) not in (1, 3):
        raise PantheonError("--stride takes one value or three (D H W).")
    return args.stride[0] if len(args.stride) == 1 else tuple(args.stride)


def _read_input(path: str, args):
    from .io import read_volume
    return read_volume(path, max_pixels=args.max_pixels)


def _check_weights_file(weights: Optional[str]) -> None:
    """A ``.pt`` weights file that is not a PyTorch file at all (text, random bytes) is refused here in
    our words: PyTorch's own error for it is a KeyError or advice to run the file's code."""
    if weights and Path(weights).is_file() and not str(weights).lower().endswith(".safetensors"):
        from .models.checkpoints import check_torch_file
        check_torch_file(weights)


def _engine(args, progress=None):
    from .pipelines.nemesis import load_engine
    _check_weights_file(args.weights)
    return load_engine(args.weights, args.device, args.precision, args.batch_size, args.allow_download,
                       args.trust_unverified, progress, max_voxels=args.max_pixels)


# ---------------------------------------------------------------------------- commands
def cmd_features(args, progress):
    import numpy as np
    from .pipelines import nemesis as nem
    from .progress import run_and_write
    run, write = run_and_write(progress)
    vol = _read_input(args.input, args)
    engine = _engine(args)
    fg = nem.features(vol, engine, _stride(args), args.cache_dir, progress=run)
    write(0.0, "Writing features.npz")
    with _output_stage(args) as stage:
        np.savez_compressed(stage / "features.npz", tokens=fg.tokens.astype(np.float16), centres_lps=fg.centres_lps,
                            patch_size=fg.patch_size, superpatch_size=fg.superpatch_size, stride=fg.stride)
        (stage / "result.json").write_text(json.dumps({
            "outputs": {"features": {"kind": "token-features", "file": "features.npz",
                                     "grid": list(fg.tokens.shape[:3]), "dim": int(fg.tokens.shape[3]),
                                     "axes": "model (D=k, H=i, W=j of the RAS-canonical volume)"}},
            "notes": nem._notes(engine, fg)}, indent=2) + "\n")
    write(1.0, "Written")
    return {"features": str(Path(args.output) / "features.npz"), "grid": list(fg.tokens.shape)}


def _run_and_write(args, progress, fn, preview=True, point=False):
    """Read, load, run ``fn(vol, engine[, point_lps], progress)``, write (its share of the bar). A
    ``point`` is checked against the image before the model loads, so a typo costs no model load."""
    from .progress import run_and_write
    run, write = run_and_write(progress)
    vol = _read_input(args.input, args)
    lps = _point_lps(args, vol) if point else None
    engine = _engine(args)
    result = fn(vol, engine, lps, run) if point else fn(vol, engine, run)
    files = _write(args, result, write, source=vol, preview=preview)
    return {"files": files, "scalars": result.scalars}


def cmd_organs(args, progress):
    from .pipelines import nemesis as nem

    def run(vol, engine, rep):
        probe = nem.load_probe_for(engine, args.probe)
        return nem.organ_maps(vol, engine, probe, args.organs, _stride(args), args.cache_dir, progress=rep)
    return _run_and_write(args, progress, run)


def cmd_pca(args, progress):
    from .pipelines import nemesis as nem
    return _run_and_write(args, progress, lambda vol, eng, rep: nem.pca(vol, eng, _stride(args), args.cache_dir,
                                                                       progress=rep))


def cmd_similar(args, progress):
    from .pipelines import nemesis as nem
    return _run_and_write(args, progress, lambda vol, eng, lps, rep: nem.similarity(
        vol, eng, lps, _stride(args), args.cache_dir, progress=rep), point=True)


def cmd_reconstruct(args, progress):
    from .pipelines import nemesis as nem
    ratio = args.mask_ratio[0] if len(args.mask_ratio) == 1 else tuple(args.mask_ratio[:2])
    if len(args.mask_ratio) > 2:
        raise PantheonError("--mask-ratio takes one value or two (plane axis).")
    return _run_and_write(args, progress, lambda vol, eng, lps, rep: nem.reconstruct(
        vol, eng, lps, ratio, args.noise, args.seed, progress=rep), point=True)


def _pairs_from(args):
    """(image, label) volumes from --data (images/ + labels/ with matching names, or a CSV) or phantoms."""
    if args.phantoms:
        from .synth import make_abdomen_phantom
        return [make_abdomen_phantom(args.seed + n) for n in range(args.phantoms)]
    if not args.data:
        raise PantheonError("Give --data (a folder with images/ and labels/, or a CSV with image,label columns) "
                            "or --phantoms N.")
    from .io import read_volume
    data = Path(args.data)
    if data.is_file() and data.suffix.lower() == ".csv":
        import csv
        try:
            with open(data, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = [c.strip() for c in reader.fieldnames or []]
                if not {"image", "label"} <= set(columns):
                    raise PantheonError(f"The CSV {data} needs 'image' and 'label' columns; it has "
                                        f"{', '.join(repr(c) for c in columns) or 'none'}.")
                rows = [(data.parent / (r.get("image") or "").strip(), data.parent / (r.get("label") or "").strip())
                        for r in reader if (r.get("image") or "").strip()]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise PantheonError(f"The CSV {data} cannot be read ({exc}).") from None
    elif data.is_dir():
        for sub in ("images", "labels"):
            if not (data / sub).is_dir():
                raise PantheonError(f"--data {data} has no {sub}/ folder; give a folder with images/ and labels/ "
                                    "(the same file names in both) or a CSV with image,label columns.")
        images = sorted(p for p in (data / "images").iterdir() if not p.name.startswith("."))
        rows = [(p, data / "labels" / p.name) for p in images]
    else:
        raise PantheonError(f"--data {data} is neither a folder (images/ and labels/) nor a .csv file.")
    missing = [str(l) for _, l in rows if not l.is_file()]
    if missing:
        raise PantheonError(f"No label map for {len(missing)} image(s), e.g. {missing[0]}.")
    if not rows:
        raise PantheonError(f"No cases found in {data}.")
    return [(read_volume(i, max_pixels=args.max_pixels), read_volume(l, max_pixels=args.max_pixels))
            for i, l in rows]


def cmd_train_probe(args, progress):
    from .train.nemesis import train_probe, write_probe_card
    pairs = _pairs_from(args)
    engine = _engine(args)
    out = Path(args.output)
    with _output_stage(args) as stage:  # probe, metrics and card appear together or not at all
        probe, metrics = train_probe(pairs, engine, stage / "probe.safetensors", holdout_fraction=args.holdout,
                                     epochs=args.epochs, seed=args.seed, progress=progress)
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_probe_card(stage, engine)
    return {"probe": str(out / "probe.safetensors"),
            "held_out_auroc": {k: round(v["auroc"], 4) for k, v in metrics["held_out"].items()}}


def cmd_pretrain(args, progress):
    from .pipelines.nemesis import pick_device
    from .train.nemesis import PretrainConfig, pretrain
    device = str(pick_device(args.device))  # a device that is not there: one sentence, before any work
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                         checkpoint_every=args.checkpoint_every)
    m = cfg.model
    if args.embed_dim:  # in option words here: the model's own check names its constructor arguments
        unit = math.lcm(m["num_heads"], m["decoder_num_heads"], m["num_maegic_tokens"])
        if args.embed_dim % unit:
            raise PantheonError(f"--embed-dim must be a multiple of {unit} (the attention heads and aggregation "
                                f"tokens split it evenly), got {args.embed_dim}.")
        m["embed_dim"] = args.embed_dim
    if args.superpatch:
        patch = m["patch_size"][0]
        if args.superpatch % patch:
            raise PantheonError(f"--superpatch must be a multiple of the patch size {patch}, got {args.superpatch}.")
        m["superpatch_size"] = [args.superpatch] * 3
    if args.data:
        from .io import read_volume
        data = Path(args.data)
        if not data.is_dir():
            raise PantheonError(f"--data {data} is not a folder of CT images.")
        paths = sorted(p for p in data.iterdir() if not p.name.startswith("."))
        if not paths:
            raise PantheonError(f"--data {data} holds no CT images.")
        volumes = [read_volume(p, max_pixels=args.max_pixels) for p in paths]
    elif args.phantoms:
        from .synth import make_abdomen_phantom
        volumes = [make_abdomen_phantom(args.seed + n)[0] for n in range(args.phantoms)]
    else:
        raise PantheonError("Give --data (a folder of CT images) or --phantoms N.")
    weights = pretrain(volumes, args.output, cfg, resume=not args.restart, device=device, progress=progress,
                       log=lambda m: print(m, file=sys.stderr) if not args.quiet else None)
    return {"weights": str(weights)}


def cmd_demo(args, progress):
    """Generate a phantom, run organ maps and the PCA map with the bundled demo weights."""
    from .io import write_volume
    from .outputs import write_result
    from .pipelines import nemesis as nem
    from .progress import run_and_write
    from .results import Result
    from .synth import make_abdomen_phantom
    run, write = run_and_write(progress)
    ct, labels = make_abdomen_phantom(args.seed)
    _check_weights_file(args.weights)
    engine = nem.load_engine(args.weights, args.device)
    probe = nem.load_probe_for(engine, args.probe)
    fg = nem.features(ct, engine, progress=run.sub(0, 0.85))
    organs = nem.organ_maps(ct, engine, probe, feature_grid=fg, progress=run.sub(0.85, 0.95))
    pcs = nem.pca(ct, engine, feature_grid=fg, progress=run.sub(0.95, 1.0))
    combined = Result(heatmaps=organs.heatmaps, volumes=pcs.volumes, scalars=pcs.scalars, notes=organs.notes)
    out = Path(args.output)
    with _output_stage(args) as stage:  # the phantom and its maps appear together
        write_volume(ct, stage / f"phantom_ct.{args.format}")
        write_volume(labels, stage / f"phantom_labels.{args.format}")
        files = write_result(combined, stage, args.format, source=ct, progress=write)
    return {"files": [str(out / f.name) for f in files] + [str(out / f"phantom_ct.{args.format}"),
                                                             str(out / f"phantom_labels.{args.format}")],
            "preview": str(out / "preview.png"), "weights": engine.weights_id,
            "warning": organs.notes.get("warning", "")}


def cmd_batch(args, progress):
    """Run one pipeline over a folder or CSV of images (see pantheon.batch)."""
    from .batch import run_batch
    # every model option; run_batch keeps those the chosen pipeline declares
    options = {"weights": args.weights, "probe": args.probe, "device": args.device, "organs": args.organs,
               "detector": args.detector, "hena": args.hena, "score_thresh": args.score_thresh,
               "neoseg": args.neoseg, "pattennet": args.pattennet, "max_pixels": args.max_pixels,
               "precision": args.precision}
    options = {k: v for k, v in options.items() if v is not None}
    from .batch.ray_executor import ray_address
    if args.ray_address and args.engine != "ray":
        raise PantheonError("--ray-address needs --engine ray.")
    with ray_address(args.ray_address):
        summary = run_batch(args.pipeline, args.input, args.output, args.workers, options, fmt=args.format,
                            seg_nrrd=args.seg_nrrd, retry_failed=args.retry_failed, engine=args.engine,
                            quiet=args.quiet)
    failed, cases, done = summary["failed"], summary["cases"], summary["done"]
    if not failed:
        return summary
    # the exit status says whether cases failed: 1 some (the rest are written), 2 all (or --strict)
    first = summary["failed_cases"][0]
    why = f"{first['case_id']}: {str(first['error'] or 'unknown error').rstrip('.')}"
    if done == 0:
        raise PantheonError(f"{failed} of {cases} cases failed (e.g. {why}); no case output was written, only "
                            f"logs and reports in {summary['output']} (see {summary['summary']}).")
    msg = (f"{failed} of {cases} cases failed (e.g. {why}; see {summary['summary']}); the {done} done "
           f"{'is' if done == 1 else 'are'} written in {summary['output']}.")
    if args.strict:
        raise PantheonError(msg)
    _say(f"pantheon: warning: {msg}")
    return dict(summary, _exit_status=EXIT_CASES_FAILED)


def cmd_build_demo_weights(args, progress):
    from .train.demo_weights import build_demo_weights
    # with -o the cards go beside the weights: rewriting the package's own cards would point the
    # bundled demo card at weights that are not bundled
    return build_demo_weights(args.output, steps=args.steps, cases=args.cases, seed=args.seed, progress=progress,
                              cards_dir=args.output, log=lambda m: print(m, file=sys.stderr))



# ---------------------------------------------------------------------------- tooth (MATHENA)
def cmd_tooth_analyze(args, progress):
    """Detections, per-tooth caries / anomaly / stage, label maps, findings, dental chart."""
    from .outputs import write_result
    from .pipelines import mathena as mt
    from .progress import run_and_write
    run, write = run_and_write(progress)
    vol = _read_input(args.input, args)
    mt.opg_to_gray(vol, max_pixels=args.max_pixels)  # bad input fails before loading any model
    models = mt.load_mathena_models(args.detector, args.hena)
    result = mt.analyze(vol, models, None, args.score_thresh, progress=run, max_pixels=args.max_pixels)
    if result.notes.get("input_warning"):  # few teeth or teeth out of arch order: maybe not an OPG
        warnings.warn(result.notes["input_warning"])
    with _output_stage(args) as stage:
        write_result(result, stage, args.format, preview=False, progress=write.sub(0, 0.6))
        write(0.6, "Drawing chart.png")
        mt.dental_chart(result, stage / "chart.png")
        write(0.8, "Drawing preview.png")
        mt.save_overlay_preview(vol, result, stage / "preview.png")
        names = sorted(p.name for p in stage.iterdir())
    write(1.0, "Written")
    out = Path(args.output)
    from .outputs import json_safe
    return json_safe({"files": [str(out / n) for n in names], "chart": str(out / "chart.png"),
                      "scalars": result.scalars, "findings": result.tables["findings"],
                      "warning": result.notes.get("warning", "")})


TOOTH_STAGES = ("detector", "carseg", "ad", "dds")


def _tooth_data(args):
    """Training / evaluation OPGs: DENTEX JSON + image folder, or N synthetic OPGs."""
    synthetic = getattr(args, "synthetic", 0) or 0
    if synthetic and args.data:
        raise PantheonError("Give either --data (DENTEX JSON with --images) or --synthetic N, not both.")
    if synthetic:
        if synthetic < 1:
            raise PantheonError("--synthetic needs a positive number of images.")
        from .synth.opg import make_opg
        return [make_opg(args.seed + n) for n in range(synthetic)]
    if not args.data:
        raise PantheonError("Give --data DENTEX.json with --images DIR, or --synthetic N.")
    if not args.images:
        raise PantheonError("--data needs --images, the folder holding the JSON's image files.")
    from .data.dentex import read_dentex
    records = read_dentex(args.data, args.images)
    if not records:
        raise PantheonError(f"{args.data} lists no images.")
    return records


def _tooth_trainer(name: str):
    try:
        from .train import mathena as tm
    except ModuleNotFoundError as exc:
        raise PantheonError(f"MATHENA training is not available in this installation ({exc}).") from None
    return getattr(tm, name)


def cmd_tooth_train(args, progress):
    if args.steps is not None and args.steps < 1:
        raise PantheonError(f"--steps must be positive, got {args.steps}.")
    data = _tooth_data(args)
    train_stage = _tooth_trainer("train_stage")
    kw = {} if args.steps is None else {"steps": args.steps}
    out = train_stage(args.stage, data, args.output, resume=not args.restart, progress=progress,
                      log=(lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None), **kw)
    return {"stage": args.stage, "output": str(args.output),
            "result": {k: str(v) if isinstance(v, Path) else v for k, v in out.items()} if isinstance(out, dict)
            else str(out)}


def cmd_tooth_eval(args, progress):
    from .pipelines import mathena as mt
    data = _tooth_data(args)
    evaluate = _tooth_trainer("evaluate")
    models = mt.load_mathena_models(args.detector, args.hena)
    metrics = evaluate(models.detector, models.hena, data)
    from .outputs import json_safe
    # What a dentist sees (the numbered teeth ToothAnalysis shows), first: mAP@50 alone misses one
    # tooth given two numbers, numbers out of order and invented teeth.
    numbering = {k: metrics[k] for k in ("numbering_accuracy", "numbering_accuracy_detected",
                                         "duplicate_numbers_per_image", "invented_teeth_per_image",
                                         "missed_teeth_per_image", "numbering_accuracy_worst_image",
                                         "map50_numbered", "map50") if k in metrics}
    return json_safe({"numbering": numbering, "metrics": metrics, "detector": models.detector_id,
            "hena": models.hena_id,
            "numbering_convention": (metrics.get("conventions") or {}).get("numbering"),
            "caries_dice_convention": "caries_dice per crop = mean Dice over crops with a positive ground-truth "
                                      "caries mask; pooled = one Dice over all crop pixels together",
            "images": len(data)})


# ---------------------------------------------------------------------------- pni (NeoNet / PNIPredict)
def _pni_models(args, components):
    from .pipelines.neonet import load_neonet_models
    return load_neonet_models(getattr(args, "neoseg", None), getattr(args, "neogen", None),
                              getattr(args, "pattennet", None), components=components,
                              device=_pni_device(getattr(args, "device", "cpu")))


def _pni_device(device):
    from .pipelines.nemesis import pick_device
    return str(pick_device(device or "auto"))


def cmd_pni_predict(args, progress):
    """PNI probability, tumour labels, attention heat map and crop box for one MRI."""
    from .pipelines import neonet
    from .progress import run_and_write
    run, write = run_and_write(progress)
    vol = _read_input(args.input, args)
    mask = _read_input(args.tumour_mask, args) if args.tumour_mask else None
    kinds = ("pattennet",) if mask is not None else ("neoseg", "pattennet")
    result = neonet.predict(vol, _pni_models(args, kinds), tumour_mask=mask, progress=run,
                            max_voxels=args.max_pixels)
    files = _write(args, result, write, source=vol, preview=not args.no_preview)
    return {"files": files, "scalars": result.scalars,
            "pni_prediction": result.notes.get("pni_prediction"), "crop_box": result.tables.get("crop_box")}


def cmd_pni_synthesize(args, progress):
    """Synthetic MR patches for a label map, on the label map's grid."""
    from .pipelines import neonet
    from .progress import run_and_write
    run, write = run_and_write(progress)
    labels = _read_input(args.input, args)
    models = _pni_models(args, ("neogen",))
    limit = int((getattr(models.neogen, "config", None) or {}).get("num_train_timesteps") or 0)
    if limit and args.steps > limit:
        raise PantheonError(f"--steps must be at most {limit} for these NeoGen weights (their noise schedule has "
                            f"{limit} steps), got {args.steps}.")
    result = neonet.synthesize(labels, models, pni=args.pni, n=args.n, steps=args.steps,
                               seed=args.seed, progress=run, max_voxels=args.max_pixels)
    files = _write(args, result, write, preview=False)
    return {"files": files, "scalars": result.scalars}


def _pni_data(args):
    """--phantoms N (phantom seeds seed..seed+N-1) or --data (a CSV, or a folder holding cases.csv, with
    columns image,label,pni[,case_id][,patient_id]; paths relative to the CSV)."""
    if args.phantoms and args.data:
        raise PantheonError("Give either --phantoms N or --data, not both.")
    if args.phantoms:
        if args.phantoms < 1:
            raise PantheonError("--phantoms needs a positive number of phantoms.")
        return list(range(args.seed, args.seed + args.phantoms))
    if not args.data:
        raise PantheonError("Give --data (a CSV, or a folder with cases.csv, with image,label,pni columns) "
                            "or --phantoms N.")
    if not Path(args.data).exists():
        raise PantheonError(f"{args.data} does not exist.")
    return str(args.data)


def _pni_log(args):
    return (lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda *_: None)


def cmd_pni_train(args, progress):
    """One NeoNet training stage (resumable): seg, vae, ldm, controlnet or cls."""
    from .train.neonet import train_stage
    data = _pni_data(args)
    weights = train_stage(args.stage, data, args.output, steps=args.steps, resume=not args.restart,
                          progress=progress, log=_pni_log(args), neogen=args.neogen, seed=args.seed,
                          neoseg=args.neoseg if args.stage == "cls" else None)
    return {"stage": args.stage, "weights": str(weights)}


def cmd_pni_eval(args, progress):
    """Cross-validation of the PNI classifier, or an evaluation of given PattenNet weights (JSON)."""
    import tempfile
    from .train import neonet as tn
    data = _pni_data(args)
    if args.pattennet:
        return tn.evaluate_classifier(args.pattennet, data, neoseg=args.neoseg, log=_pni_log(args))
    if args.folds < 2:
        raise PantheonError("--folds must be at least 2.")
    steps = {k: args.steps for k in ("vae", "ldm", "controlnet", "cls")} if args.steps else None
    if args.output:
        return tn.cross_validate(data, args.output, k=args.folds, seed=args.seed, steps=steps,
                                 generator=None if args.no_synthesis else "per_fold", progress=progress,
                                 log=_pni_log(args))
    with tempfile.TemporaryDirectory(prefix="pantheon-pni-cv-") as tmp:
        return tn.cross_validate(data, tmp, k=args.folds, seed=args.seed, steps=steps,
                                 generator=None if args.no_synthesis else "per_fold", progress=progress,
                                 log=_pni_log(args))


def _add_pni_parser(sub) -> None:
    pni = sub.add_parser("pni", help="PNIPredict: NeoNet perineural-invasion prediction on liver MRI",
                         description="NeoNet (arXiv 2603.29449, reconstruction): NeoSeg + TLCR crop + PattenNet "
                                     "on T1 hepatobiliary-phase MRI in any orientation and spacing; NeoGen "
                                     "synthesises MR patches from masks. Demo weights know phantoms, not "
                                     "patients: research only.")
    act = pni.add_subparsers(dest="action", metavar="ACTION", required=True)

    def models(p, kinds):
        for kind in kinds:
            p.add_argument(f"--{kind}", metavar="PATH|CARD",
                           help=f"{kind} weights: a .safetensors file or a model-card id "
                                f"(default: the bundled demo card 'neonet-demo-{kind}')")
        p.add_argument("--device", default="cpu", type=device_name, help="cpu (default), auto, cuda or cuda:N")

    p = act.add_parser("predict", help="PNI probability, tumour segmentation, attention heat map and crop box")
    p.add_argument("input", help="MRI: NIfTI, NRRD, MHA/MHD or a DICOM series folder")
    _add_input_limits(p, "pni")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    _add_overwrite(p)
    p.add_argument("--tumour-mask", "--tumor-mask", dest="tumour_mask", metavar="LABELS",
                   help="tumour mask on the MRI's grid (binary, or 1 liver / 2 tumour); skips NeoSeg")
    models(p, ("neoseg", "pattennet"))
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pni_predict, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("synthesize", help="synthetic MR patches for a label map (NeoGen, DDIM)")
    p.add_argument("input", help="label map (1 liver, 2 tumour; a binary map is a tumour)")
    _add_input_limits(p, "pni")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    _add_overwrite(p)
    p.add_argument("--pni", type=int, default=1, choices=[0, 1], help="PNI class to synthesise (default 1)")
    p.add_argument("-n", type=POSITIVE, default=1, help="number of patches (default 1)")
    p.add_argument("--steps", type=POSITIVE, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="noise seed (same seed, same patches)")
    models(p, ("neogen",))
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pni_synthesize, interrupt_note=NOTHING_WRITTEN)

    def data_args(p):
        p.add_argument("--phantoms", type=NON_NEGATIVE, default=0, help="use N generated liver MRI phantoms")
        p.add_argument("--data", metavar="DIR|CSV", help="CSV (or folder with cases.csv) with image,label,pni")
        p.add_argument("--seed", type=NON_NEGATIVE, default=0)
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = act.add_parser("train", help="train one NeoNet stage (resumable)")
    p.add_argument("--stage", required=True, choices=["seg", "vae", "ldm", "controlnet", "cls"])
    data_args(p)
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoint and weights)")
    p.add_argument("--steps", type=POSITIVE, default=200, help="optimiser steps (default 200)")
    p.add_argument("--neogen", metavar="PATH", help="NeoGen to start ldm/controlnet/cls from (default: the previous "
                                                    "stage's weights in the run folder)")
    p.add_argument("--neoseg", metavar="PATH", help="with --stage cls: also train on the cases as this NeoSeg "
                                                    "segments them (the crops the end-to-end pipeline gives)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.set_defaults(func=cmd_pni_train, interrupt_note=RESUMABLE)

    p = act.add_parser("eval", help="k-fold cross-validation of the PNI classifier (JSON on stdout)")
    data_args(p)
    p.add_argument("--folds", type=int_at_least(2), default=5, help="cross-validation folds (default 5)")
    p.add_argument("--steps", type=POSITIVE, help="training steps of every per-fold stage (default 200)")
    p.add_argument("--no-synthesis", action="store_true", help="no NeoGen class balancing in the folds")
    p.add_argument("-o", "--output", help="keep the per-fold runs here (default: a temporary folder)")
    p.add_argument("--pattennet", metavar="PATH", help="evaluate these classifier weights instead of cross-validating")
    p.add_argument("--neoseg", metavar="PATH", help="with --pattennet: crop from NeoSeg's tumour, not the label map")
    p.set_defaults(func=cmd_pni_eval, interrupt_note=None)


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pantheon", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pantheon {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="offline demo: NEMESIS organ maps and PCA map on a generated phantom")
    demo.add_argument("-o", "--output", default="pantheon-demo-output",
                      help="output folder (default pantheon-demo-output); refused when it holds results")
    _add_overwrite(demo)
    demo.add_argument("--seed", type=NON_NEGATIVE, default=1234, help="phantom seed")
    demo.add_argument("--weights", help="encoder weights (default: bundled demo)")
    demo.add_argument("--probe", help="organ probe weights (default: bundled demo probe)")
    demo.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda or cuda:N (default auto)")
    demo.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"])
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo, interrupt_note=None)

    nem = sub.add_parser("nemesis", help="NEMESIS CT foundation model pipelines",
                         description="NEMESIS (arXiv 2604.01612): self-supervised CT features on 128^3 superpatches. "
                                     "Inputs are CT volumes in Hounsfield units, any orientation; every output lands "
                                     "on the input's voxels.")
    act = nem.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = act.add_parser("features", help="token feature grid over the whole volume (features.npz)")
    _add_io_args(p); _add_engine_args(p); _add_tiling_args(p)
    p.set_defaults(func=cmd_features, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("organs", help="organ-presence probability heatmaps (8 BTCV organs)")
    _add_io_args(p); _add_engine_args(p); _add_tiling_args(p)
    p.add_argument("--probe", metavar="PATH|CARD", help="probe weights (default: bundled demo probe)")
    p.add_argument("--organs", nargs="+", metavar="ORGAN", help="only these organs (e.g. liver spleen 'left kidney')")
    p.set_defaults(func=cmd_organs, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("pca", help="first three principal components of the token features (RGB volume)")
    _add_io_args(p); _add_engine_args(p); _add_tiling_args(p)
    p.set_defaults(func=cmd_pca, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("similar", help="cosine similarity of every token to the token at a point")
    _add_io_args(p); _add_engine_args(p); _add_tiling_args(p); _add_point_args(p)
    p.set_defaults(func=cmd_similar, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("reconstruct", help="masked reconstruction of the superpatch centred on a point")
    _add_io_args(p); _add_engine_args(p); _add_point_args(p)
    p.add_argument("--mask-ratio", type=float_between(0.0, 1.0, high_inclusive=False), nargs="+", default=[0.5, 0.5],
                   metavar="R", help="plane and axis mask ratios in [0, 1) (one value for both; default 0.5 0.5)")
    p.add_argument("--noise", type=float_between(0.0, 1.0), default=0.0,
                   help="Gaussian noise std on the [0, 1] input, in [0, 1] (default 0)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="mask and noise seed")
    p.set_defaults(func=cmd_reconstruct, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("train-probe", help="fit the organ probe on labelled CTs (BTCV label indices)")
    p.add_argument("--data", help="folder with images/ and labels/ (same file names) or a CSV with image,label")
    p.add_argument("--phantoms", type=NON_NEGATIVE, default=0, help="use N generated phantoms instead of --data")
    p.add_argument("--holdout", type=float_between(0.0, 1.0, low_inclusive=False, high_inclusive=False), default=0.25,
                   help="fraction of cases held out for AUROC (default 0.25)")
    p.add_argument("--epochs", type=POSITIVE, default=300)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    _add_io_args(p, needs_input=False); _add_engine_args(p)
    p.set_defaults(func=cmd_train_probe, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("pretrain", help="MAE pretraining (dual masking, noise levels) (resumable)")
    p.add_argument("--data", help="folder of CT images")
    _add_input_limits(p, "nemesis")
    p.add_argument("--phantoms", type=NON_NEGATIVE, default=0, help="pretrain on N generated phantoms instead of --data")
    p.add_argument("--steps", type=POSITIVE, default=1000)
    p.add_argument("--batch-size", type=POSITIVE, default=4)
    p.add_argument("--embed-dim", type=POSITIVE, help="encoder width (default 96, the demo model)")
    p.add_argument("--superpatch", type=POSITIVE, help="superpatch edge in voxels (default 64, the demo model)")
    p.add_argument("--checkpoint-every", type=POSITIVE, default=100)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoint.pt, nemesis.safetensors)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pretrain, interrupt_note=RESUMABLE)

    p = act.add_parser("build-demo-weights", help="retrain the bundled demo encoder and probe from scratch")
    p.add_argument("-o", "--output", help="output folder (default: the package's bundled weights, "
                                          "pantheon/registry/weights)")
    p.add_argument("--steps", type=POSITIVE, default=1000)
    p.add_argument("--cases", type=int_at_least(2), default=40, help="phantoms for the probe (a quarter held out)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build_demo_weights, interrupt_note=None)

    tooth = sub.add_parser("tooth", help="ToothAnalysis: MATHENA on panoramic dental X-rays (OPG)",
                           description="MATHENA (arXiv 2604.00537, reconstruction): MATHE tooth detection with FDI "
                                       "numbers, then HENA per-tooth caries and anomaly segmentation and Demirjian "
                                       "staging. Inputs: PNG, JPEG, DICOM or NRRD OPGs, any bit depth, RGB "
                                       "converted; outputs on the input's pixels.")
    tact = tooth.add_subparsers(dest="action", metavar="ACTION", required=True)

    def _tooth_weights(p):
        p.add_argument("--detector", metavar="PATH|CARD",
                       help="MATHE detector weights: a .safetensors file or a card id (default mathena-demo-detector)")
        p.add_argument("--hena", metavar="PATH|CARD",
                       help="HENA weights: a .safetensors file or a card id (default mathena-demo-hena)")

    def _tooth_data_args(p):
        p.add_argument("--data", metavar="DENTEX.json", help="DENTEX-style COCO JSON")
        p.add_argument("--images", metavar="DIR", help="folder with the JSON's image files")
        p.add_argument("--synthetic", type=NON_NEGATIVE, default=0, metavar="N",
                       help="use N synthetic OPGs instead of --data")
        p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the first synthetic OPG (default 0)")

    p = tact.add_parser("analyze", help="teeth, caries, anomalies and stages of one OPG; label maps, "
                                        "result.json, chart.png, preview.png")
    p.add_argument("input", help="OPG image: PNG, JPEG, DICOM (file or folder) or NRRD")
    _add_input_limits(p, "tooth")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    _add_overwrite(p)
    _tooth_weights(p)
    p.add_argument("--score-thresh", type=float_between(0.0, 1.0), default=0.3,
                   help="detection score threshold in [0, 1] (default 0.3)")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tooth_analyze, interrupt_note=NOTHING_WRITTEN)

    p = tact.add_parser("train", help="train one MATHENA stage (detector, carseg, ad, dds); resumable")
    p.add_argument("--stage", required=True, choices=TOOTH_STAGES, help="training stage (spec section 4.5 order)")
    _tooth_data_args(p)
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoints and weights)")
    p.add_argument("--steps", type=POSITIVE, help="optimiser steps (default: the trainer's)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tooth_train, interrupt_note=RESUMABLE)

    p = tact.add_parser("eval", help="mAP@50, caries Dice (per positive crop and pooled), anomaly Dice, "
                                     "stage accuracy and macro-F1, printed as JSON")
    _tooth_data_args(p)
    _tooth_weights(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tooth_eval, interrupt_note=None)
    _add_pni_parser(sub)
    from .batch.pipelines import PIPELINES
    p = sub.add_parser("batch", help="run a pipeline over a folder or CSV of images (resumable)",
                       description="Batch pseudo-labelling: one output folder per case, manifest.json, logs/, "
                                   "summary.csv and index.html in --output. A rerun skips finished cases and "
                                   "redoes failed or unfinished ones.")
    p.add_argument("pipeline", choices=sorted(PIPELINES), help="batch pipeline")
    p.add_argument("--input", required=True, help="folder of images / DICOM series subfolders, or a CSV with an "
                                                  "'image' column (optional 'case_id')")
    _add_input_limits(p, None)
    p.add_argument("-o", "--output", required=True, help="batch output folder")
    p.add_argument("--workers", type=POSITIVE, default=1,
                   help="worker processes, each loads the model once (default 1)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="executor: local process pool (default) or ray (Ray actors; pip install 'pantheon[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", help="--engine ray: the Ray cluster to join, e.g. auto or "
                                                         "ray://head:10001 (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--weights", metavar="PATH|CARD", help="NEMESIS weights (default: bundled demo weights)")
    p.add_argument("--probe", metavar="PATH|CARD", help="organ probe weights (default: bundled demo probe)")
    p.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"],
                   help="NEMESIS pipelines: fp32 (default), bf16, fp16 or int8 (CPU)")
    p.add_argument("--organs", nargs="+", metavar="ORGAN", help="nemesis-organs: only these organs")
    p.add_argument("--detector", metavar="PATH|CARD", help="mathena-analyze: tooth detector weights")
    p.add_argument("--hena", metavar="PATH|CARD", help="mathena-analyze: HENA weights")
    p.add_argument("--score-thresh", type=float_between(0.0, 1.0),
                   help="mathena-analyze: detection score threshold in [0, 1] (default 0.3)")
    p.add_argument("--neoseg", metavar="PATH|CARD", help="neonet-predict: NeoSeg weights")
    p.add_argument("--pattennet", metavar="PATH|CARD", help="neonet-predict: PattenNet weights")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--seg-nrrd", action=argparse.BooleanOptionalAction, default=True,
                   help="also write label outputs as Slicer .seg.nrrd (default on)")
    p.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=True,
                   help="redo cases that failed in an earlier run (default on)")
    p.add_argument("--strict", action="store_true",
                   help="any failed case is an error: status 2 and no summary on stdout (default: status 1 with a "
                        "warning when some cases failed, 2 when all did)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch, interrupt_note=None)
    return parser


# ---------------------------------------------------------------------------- running a command
# What Ctrl-C leaves behind, per command (``interrupt_note``; None: nothing to add).
NOTHING_WRITTEN = "no output was written"
RESUMABLE = "the run folder keeps its last checkpoint; rerun the same command to resume"


def _say(line: str) -> None:
    """One line on stderr; silent when stderr itself is a closed pipe."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        _silence(sys.stderr)


def _silence(stream) -> None:
    """Point a closed pipe's file descriptor at /dev/null, so that Python's own flush at exit does not
    print "Exception ignored ... BrokenPipeError" (the recipe of Python's signal documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _output_folders(args) -> List[Path]:
    """The folders a command will write (its -o, or the default it falls back on)."""
    if args.command == "nemesis" and args.action == "build-demo-weights" and not args.output:
        from .registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR
        return [Path(BUNDLED_WEIGHTS_DIR), Path(CARDS_DIR)]
    out = getattr(args, "output", None)
    return [Path(out)] if out else []


def _output_problem(folder: Path) -> Optional[str]:
    """Why ``folder`` cannot be the output folder (one sentence), or None. Checked before any work, so
    an hour of computation never ends in "permission denied"; nothing is created here."""
    folder = folder.expanduser()
    try:
        if folder.exists() and not folder.is_dir():
            return f"The output {folder} is a file, not a folder; give -o a folder (it is created when missing)."
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            return f"The output folder {folder} cannot be created: {existing} is a file."
    except OSError as exc:
        return f"The output folder {folder} cannot be reached ({exc.strerror or exc})."
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "into" if existing == folder else f"the folder {folder} in"
        return f"Cannot write {what} {existing}: permission denied or a read-only file system; choose another -o."
    return None


def _os_error_sentence(exc: OSError) -> str:
    import errno
    name = exc.filename or ""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted"}.get(exc.errno, (exc.strerror or str(exc) or type(exc).__name__))
    where = f" ({name})" if name else ""
    return f"Could not read or write a file{where}: {reason[0].lower()}{reason[1:]}."


def _interrupted_message(args, exc: BaseException) -> str:
    word = "terminated" if isinstance(exc, Terminated) or isinstance(getattr(exc, "original", None), Terminated) \
        else "interrupted"
    if getattr(exc, "user_message", None):  # the batch says what it wrote
        return f"pantheon: {word}: {exc.user_message}"
    note = getattr(args, "interrupt_note", None) if args is not None else None
    return f"pantheon: {word}; {note}." if note else f"pantheon: {word}."


def _sentence(exc: BaseException) -> str:
    """The error's one line: first line only, PyTorch's weights_only advice replaced by ours."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "weights_only" in text or "torch.load" in text:
        try:
            from .models.checkpoints import without_torch_advice
            text = without_torch_advice(text)
        except Exception:  # noqa: BLE001 - no torch here: keep the text
            pass
    return text


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 some batch cases failed, 2 error, 130 Ctrl-C,
    143 SIGTERM). Whatever happens, the user sees at most one line on stderr, never a traceback
    (``--debug`` re-raises)."""
    args, progress, phase = None, None, "parse"
    case_folder, written = None, False
    previous_term = _on_sigterm()
    previous_show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        phase = "run"
        for folder in _output_folders(args):
            problem = _output_problem(folder)
            if problem:
                raise PantheonError(problem)
        # a folder holding another case's results is refused, and locked, before any work
        case_folder = _case_folder(args)
        if case_folder is not None:
            args.output_folder = case_folder.open()
        quiet = getattr(args, "quiet", False) or args.command == "batch"  # batch draws its own per-case bar
        progress = TqdmProgress(quiet, desc=getattr(args, "action", args.command))
        t0 = time.perf_counter()
        summary = dict(args.func(args, progress) or {})
        written = True
        if case_folder is not None:
            case_folder.close()
        progress.close()
        status = summary.pop("_exit_status", EXIT_OK)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        phase = "print"
        print(json.dumps(summary, indent=2))
        sys.stdout.flush()  # a closed pipe fails here, inside this handler, not at interpreter exit
        return status
    except BrokenPipeError:
        if progress is not None:
            progress.close()
        _silence(sys.stdout)
        if phase == "print":
            outs = ", ".join(str(p) for p in _output_folders(args))
            _say("pantheon: error: standard output was closed before the summary was printed (broken pipe)"
                 + (f"; everything in {outs} was written before that." if outs else "."))
        else:
            _say("pantheon: error: an output stream was closed (broken pipe).")
        return EXIT_ERROR
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        if progress is not None:
            progress.close()
        _say(_interrupted_message(args, exc))
        terminated = isinstance(exc, Terminated) or isinstance(getattr(exc, "original", None), Terminated)
        return EXIT_TERMINATED if terminated else EXIT_CANCELLED
    except Cancelled:
        if progress is not None:
            progress.close()
        _say("pantheon: cancelled; no output was written.")
        return EXIT_CANCELLED
    except (PantheonError, ValueError) as exc:
        if progress is not None:
            progress.close()
        if args is not None and args.debug:
            raise
        _say(f"pantheon: error: {_sentence(exc)}")
        return EXIT_ERROR
    except MemoryError:
        if progress is not None:
            progress.close()
        _say("pantheon: error: out of memory; try a smaller --batch-size, --precision bf16 or a GPU.")
        return EXIT_ERROR
    except OSError as exc:  # a full disk, a folder that became read-only...: staged outputs were rolled back
        if progress is not None:
            progress.close()
        if args is not None and args.debug:
            raise
        _say(f"pantheon: error: {_os_error_sentence(exc)}")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if progress is not None:
            progress.close()
        if args is not None and args.debug:
            raise
        _say(f"pantheon: error: unexpected {type(exc).__name__}: {_sentence(exc).rstrip('.')} "
             "(a bug; rerun with --debug for the traceback and report it).")
        return EXIT_ERROR
    finally:
        if case_folder is not None:
            case_folder.close(failed=not written)  # the lock goes; folders made for nothing too
        warnings.showwarning = previous_show
        _restore_sigterm(previous_term)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning is one line too (Python's format adds the file name and a line of source code)."""
    text = " ".join(str(message).split())
    if "weights_only" in text:  # torch.load's chatter about a bad file; the error that follows says it plainly
        return
    _say(f"pantheon: warning: {text}")


def _raise_terminated(signum, frame):
    raise Terminated()


def _on_sigterm():
    """SIGTERM raises Terminated in the main thread, so staged outputs and the batch clean up as on
    Ctrl-C (the default action would kill us mid-write, leaving hidden staging folders)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is None:
        return None  # not ours to change (another thread, or a handler installed outside Python)
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):
            pass


if __name__ == "__main__":
    sys.exit(main())
