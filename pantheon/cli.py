"""The ``pantheon`` command line.

``pantheon demo`` runs the main job offline on a generated phantom with the bundled demo weights;
``pantheon nemesis <action>`` runs one NEMESIS pipeline on any image Pantheon reads.
An expected failure prints one sentence on stderr and exits with status 2, leaving no output behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import Cancelled, PantheonError

EXIT_ERROR, EXIT_CANCELLED = 2, 130


class TqdmProgress:
    """A progress callback drawing one tqdm bar (on stderr), silent with ``quiet``."""

    def __init__(self, quiet: bool = False, desc: str = ""):
        self.bar = None
        if not quiet:
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
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------- argument helpers
def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="PATH|CARD",
                   help="NEMESIS weights: a file (.pt published format or .safetensors) or a model-card id "
                        "(default: the bundled demo weights 'nemesis-demo'; official: 'nemesis-mae-768')")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision for the encoder (default fp32)")
    p.add_argument("--batch-size", type=int, default=1, help="superpatches per forward pass (default 1)")
    p.add_argument("--allow-download", action="store_true", help="download weights named by a card if not cached")
    p.add_argument("--trust-unverified", action="store_true",
                   help="accept downloaded weights whose card has no checksum yet (the hash is recorded)")


def _add_io_args(p: argparse.ArgumentParser, needs_input: bool = True) -> None:
    if needs_input:
        p.add_argument("input", help="CT image: NIfTI, NRRD, MHA/MHD or a DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="output folder (created; files are replaced atomically)")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stride", type=int, nargs="+", metavar="N",
                   help="superpatch stride in voxels, one value or three (D H W), multiples of the patch size; "
                        "smaller than the superpatch averages overlapping tiles (default: no overlap)")
    p.add_argument("--cache-dir", help="keep computed token features here and reuse them for the same image")


def _add_point_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--point", type=float, nargs=3, metavar=("R", "A", "S"),
                   help="world point in RAS millimetres (the coordinates 3D Slicer shows)")
    g.add_argument("--point-lps", type=float, nargs=3, metavar=("L", "P", "S"), help="world point in LPS millimetres")
    g.add_argument("--voxel", type=float, nargs=3, metavar=("I", "J", "K"), help="voxel index (i, j, k) of the input")


def _point_lps(args, volume):
    import numpy as np
    if args.point is not None:
        r, a, s = args.point
        return np.array([-r, -a, s])
    if args.point_lps is not None:
        return np.array(args.point_lps)
    return volume.ijk_to_world(np.array(args.voxel))[0]


def _stride(args):
    if not args.stride:
        return None
    if len(args.stride) not in (1, 3):
        raise PantheonError("--stride takes one value or three (D H W).")
    return args.stride[0] if len(args.stride) == 1 else tuple(args.stride)


def _read_input(path: str):
    from .io import read_volume
    return read_volume(path)


def _engine(args, progress=None):
    from .pipelines.nemesis import load_engine
    return load_engine(args.weights, args.device, args.precision, args.batch_size, args.allow_download,
                       args.trust_unverified, progress)


# ---------------------------------------------------------------------------- commands
def cmd_features(args, progress):
    import numpy as np
    from .outputs import staged_output
    from .pipelines import nemesis as nem
    vol = _read_input(args.input)
    engine = _engine(args)
    fg = nem.features(vol, engine, _stride(args), args.cache_dir, progress=progress)
    with staged_output(args.output) as stage:
        np.savez_compressed(stage / "features.npz", tokens=fg.tokens.astype(np.float16), centres_lps=fg.centres_lps,
                            patch_size=fg.patch_size, superpatch_size=fg.superpatch_size, stride=fg.stride)
        (stage / "result.json").write_text(json.dumps({
            "outputs": {"features": {"kind": "token-features", "file": "features.npz",
                                     "grid": list(fg.tokens.shape[:3]), "dim": int(fg.tokens.shape[3]),
                                     "axes": "model (D=k, H=i, W=j of the RAS-canonical volume)"}},
            "notes": nem._notes(engine, fg)}, indent=2) + "\n")
    return {"features": str(Path(args.output) / "features.npz"), "grid": list(fg.tokens.shape)}


def _run_and_write(args, progress, fn, preview=True):
    from .outputs import write_result
    vol = _read_input(args.input)
    engine = _engine(args)
    result = fn(vol, engine)
    files = write_result(result, args.output, args.format, source=vol, preview=preview)
    return {"files": [str(f) for f in files], "scalars": result.scalars}


def cmd_organs(args, progress):
    from .pipelines import nemesis as nem

    def run(vol, engine):
        probe = nem.load_probe_for(engine, args.probe)
        return nem.organ_maps(vol, engine, probe, args.organs, _stride(args), args.cache_dir, progress=progress)
    return _run_and_write(args, progress, run)


def cmd_pca(args, progress):
    from .pipelines import nemesis as nem
    return _run_and_write(args, progress, lambda vol, eng: nem.pca(vol, eng, _stride(args), args.cache_dir,
                                                                  progress=progress))


def cmd_similar(args, progress):
    from .pipelines import nemesis as nem
    return _run_and_write(args, progress, lambda vol, eng: nem.similarity(
        vol, eng, _point_lps(args, vol), _stride(args), args.cache_dir, progress=progress))


def cmd_reconstruct(args, progress):
    from .pipelines import nemesis as nem
    ratio = args.mask_ratio[0] if len(args.mask_ratio) == 1 else tuple(args.mask_ratio[:2])
    if len(args.mask_ratio) > 2:
        raise PantheonError("--mask-ratio takes one value or two (plane axis).")
    return _run_and_write(args, progress, lambda vol, eng: nem.reconstruct(
        vol, eng, _point_lps(args, vol), ratio, args.noise, args.seed, progress=progress))


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
    if data.suffix.lower() == ".csv":
        import csv
        with open(data, newline="") as f:
            rows = [(data.parent / r["image"], data.parent / r["label"]) for r in csv.DictReader(f)]
    else:
        images = sorted(p for p in (data / "images").iterdir() if not p.name.startswith("."))
        rows = [(p, data / "labels" / p.name) for p in images]
        missing = [str(l) for _, l in rows if not l.exists()]
        if missing:
            raise PantheonError(f"No label map for {len(missing)} image(s), e.g. {missing[0]}.")
    if not rows:
        raise PantheonError(f"No cases found in {data}.")
    return [(read_volume(i), read_volume(l)) for i, l in rows]


def cmd_train_probe(args, progress):
    from .train.nemesis import train_probe, write_probe_card
    pairs = _pairs_from(args)
    engine = _engine(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    probe, metrics = train_probe(pairs, engine, out / "probe.safetensors.partial", holdout_fraction=args.holdout,
                                 epochs=args.epochs, seed=args.seed, progress=progress)
    (out / "probe.safetensors.partial").replace(out / "probe.safetensors")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_probe_card(out, engine)
    return {"probe": str(out / "probe.safetensors"),
            "held_out_auroc": {k: round(v["auroc"], 4) for k, v in metrics["held_out"].items()}}


def cmd_pretrain(args, progress):
    from .train.nemesis import PretrainConfig, pretrain
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                         checkpoint_every=args.checkpoint_every)
    if args.embed_dim:
        cfg.model["embed_dim"] = args.embed_dim
    if args.superpatch:
        cfg.model["superpatch_size"] = [args.superpatch] * 3
    if args.data:
        from .io import read_volume
        paths = sorted(p for p in Path(args.data).iterdir() if not p.name.startswith("."))
        volumes = [read_volume(p) for p in paths]
    elif args.phantoms:
        from .synth import make_abdomen_phantom
        volumes = [make_abdomen_phantom(args.seed + n)[0] for n in range(args.phantoms)]
    else:
        raise PantheonError("Give --data (a folder of CT images) or --phantoms N.")
    weights = pretrain(volumes, args.output, cfg, resume=not args.restart, device=args.device if args.device != "auto" else
                       ("cuda" if __import__("torch").cuda.is_available() else "cpu"), progress=progress,
                       log=lambda m: print(m, file=sys.stderr) if not args.quiet else None)
    return {"weights": str(weights)}


def cmd_demo(args, progress):
    """Generate a phantom, run organ maps and the PCA map with the bundled demo weights."""
    from .io import write_volume
    from .outputs import write_result
    from .pipelines import nemesis as nem
    from .progress import Reporter
    from .results import Result
    from .synth import make_abdomen_phantom
    rep = Reporter(progress)
    ct, labels = make_abdomen_phantom(args.seed)
    engine = nem.load_engine(args.weights, args.device)
    probe = nem.load_probe_for(engine, args.probe)
    fg = nem.features(ct, engine, progress=rep.sub(0, 0.8))
    organs = nem.organ_maps(ct, engine, probe, feature_grid=fg, progress=rep.sub(0.8, 0.9))
    pcs = nem.pca(ct, engine, feature_grid=fg, progress=rep.sub(0.9, 0.95))
    combined = Result(heatmaps=organs.heatmaps, volumes=pcs.volumes, scalars=pcs.scalars, notes=organs.notes)
    files = write_result(combined, args.output, args.format, source=ct)
    out = Path(args.output)
    write_volume(ct, out / f"phantom_ct.{args.format}")
    write_volume(labels, out / f"phantom_labels.{args.format}")
    rep(1.0, "Done")
    return {"files": [str(f) for f in files] + [str(out / f"phantom_ct.{args.format}"),
                                                 str(out / f"phantom_labels.{args.format}")],
            "preview": str(out / "preview.png"), "weights": engine.weights_id,
            "warning": organs.notes.get("warning", "")}


def cmd_batch(args, progress):
    """Run one pipeline over a folder or CSV of images (see pantheon.batch)."""
    from .batch import run_batch
    # every model option; run_batch keeps those the chosen pipeline declares
    options = {"weights": args.weights, "probe": args.probe, "device": args.device, "organs": args.organs,
               "detector": args.detector, "hena": args.hena, "score_thresh": args.score_thresh,
               "neoseg": args.neoseg, "pattennet": args.pattennet}
    options = {k: v for k, v in options.items() if v is not None}
    from .batch.ray_executor import ray_address
    if args.ray_address and args.engine != "ray":
        raise PantheonError("--ray-address needs --engine ray.")
    with ray_address(args.ray_address):
        summary = run_batch(args.pipeline, args.input, args.output, args.workers, options, fmt=args.format,
                            seg_nrrd=args.seg_nrrd, retry_failed=args.retry_failed, engine=args.engine,
                            quiet=args.quiet)
    if summary["failed"]:
        msg = f"{summary['failed']} of {summary['cases']} case(s) failed; see {summary['summary']}."
        if args.strict:
            raise PantheonError(msg)
        print(f"pantheon: warning: {msg}", file=sys.stderr)
    return summary


def cmd_build_demo_weights(args, progress):
    from .train.demo_weights import build_demo_weights
    return build_demo_weights(args.output, steps=args.steps, cases=args.cases, seed=args.seed, progress=progress,
                              log=lambda m: print(m, file=sys.stderr))



# ---------------------------------------------------------------------------- tooth (MATHENA)
def cmd_tooth_analyze(args, progress):
    """Detections, per-tooth caries / anomaly / stage, label maps, findings, dental chart."""
    from .outputs import staged_output, write_result
    from .pipelines import mathena as mt
    from .progress import Reporter
    if not 0.0 <= args.score_thresh <= 1.0:
        raise PantheonError(f"--score-thresh must be between 0 and 1, got {args.score_thresh:g}.")
    vol = _read_input(args.input)
    mt.opg_to_gray(vol)  # bad input fails before loading any model
    models = mt.load_mathena_models(args.detector, args.hena)
    result = mt.analyze(vol, models, None, args.score_thresh, progress=Reporter(progress).sub(0, 0.9))
    with staged_output(args.output) as stage:
        write_result(result, stage, args.format, preview=False)
        mt.dental_chart(result, stage / "chart.png")
        mt.save_overlay_preview(vol, result, stage / "preview.png")
        names = sorted(p.name for p in stage.iterdir())
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
    return json_safe({"metrics": metrics, "detector": models.detector_id, "hena": models.hena_id,
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
    from .outputs import write_result
    from .pipelines import neonet
    vol = _read_input(args.input)
    mask = _read_input(args.tumour_mask) if args.tumour_mask else None
    kinds = ("pattennet",) if mask is not None else ("neoseg", "pattennet")
    result = neonet.predict(vol, _pni_models(args, kinds), tumour_mask=mask, progress=progress)
    files = write_result(result, args.output, args.format, source=vol, preview=not args.no_preview)
    return {"files": [str(f) for f in files], "scalars": result.scalars,
            "pni_prediction": result.notes.get("pni_prediction"), "crop_box": result.tables.get("crop_box")}


def cmd_pni_synthesize(args, progress):
    """Synthetic MR patches for a label map, on the label map's grid."""
    from .outputs import write_result
    from .pipelines import neonet
    labels = _read_input(args.input)
    result = neonet.synthesize(labels, _pni_models(args, ("neogen",)), pni=args.pni, n=args.n, steps=args.steps,
                               seed=args.seed, progress=progress)
    files = write_result(result, args.output, args.format, source=None, preview=False)
    return {"files": [str(f) for f in files], "scalars": result.scalars}


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
        p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")

    p = act.add_parser("predict", help="PNI probability, tumour segmentation, attention heat map and crop box")
    p.add_argument("input", help="MRI: NIfTI, NRRD, MHA/MHD or a DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="output folder (created; files are replaced atomically)")
    p.add_argument("--tumour-mask", "--tumor-mask", dest="tumour_mask", metavar="LABELS",
                   help="tumour mask on the MRI's grid (binary, or 1 liver / 2 tumour); skips NeoSeg")
    models(p, ("neoseg", "pattennet"))
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pni_predict)

    p = act.add_parser("synthesize", help="synthetic MR patches for a label map (NeoGen, DDIM)")
    p.add_argument("input", help="label map (1 liver, 2 tumour; a binary map is a tumour)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--pni", type=int, default=1, choices=[0, 1], help="PNI class to synthesise (default 1)")
    p.add_argument("-n", type=int, default=1, help="number of patches (default 1)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same patches)")
    models(p, ("neogen",))
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pni_synthesize)

    def data_args(p):
        p.add_argument("--phantoms", type=int, default=0, help="use N generated liver MRI phantoms")
        p.add_argument("--data", metavar="DIR|CSV", help="CSV (or folder with cases.csv) with image,label,pni")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = act.add_parser("train", help="train one NeoNet stage (resumable)")
    p.add_argument("--stage", required=True, choices=["seg", "vae", "ldm", "controlnet", "cls"])
    data_args(p)
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoint and weights)")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    p.add_argument("--neogen", metavar="PATH", help="NeoGen to start ldm/controlnet/cls from (default: the previous "
                                                    "stage's weights in the run folder)")
    p.add_argument("--neoseg", metavar="PATH", help="with --stage cls: also train on the cases as this NeoSeg "
                                                    "segments them (the crops the end-to-end pipeline gives)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.set_defaults(func=cmd_pni_train)

    p = act.add_parser("eval", help="k-fold cross-validation of the PNI classifier (JSON on stdout)")
    data_args(p)
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--steps", type=int, help="training steps of every per-fold stage (default 200)")
    p.add_argument("--no-synthesis", action="store_true", help="no NeoGen class balancing in the folds")
    p.add_argument("-o", "--output", help="keep the per-fold runs here (default: a temporary folder)")
    p.add_argument("--pattennet", metavar="PATH", help="evaluate these classifier weights instead of cross-validating")
    p.add_argument("--neoseg", metavar="PATH", help="with --pattennet: crop from NeoSeg's tumour, not the label map")
    p.set_defaults(func=cmd_pni_eval)


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pantheon", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pantheon {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="offline demo: NEMESIS organ maps and PCA map on a generated phantom")
    demo.add_argument("-o", "--output", default="pantheon-demo-output", help="output folder (default pantheon-demo-output)")
    demo.add_argument("--seed", type=int, default=1234, help="phantom seed")
    demo.add_argument("--weights", help="encoder weights (default: bundled demo)")
    demo.add_argument("--probe", help="organ probe weights (default: bundled demo probe)")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"])
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    nem = sub.add_parser("nemesis", help="NEMESIS CT foundation model pipelines",
                         description="NEMESIS (arXiv 2604.01612): self-supervised CT features on 128^3 superpatches. "
                                     "Inputs are CT volumes in Hounsfield units, any orientation; every output lands "
                                     "on the input's voxels.")
    act = nem.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = act.add_parser("features", help="token feature grid over the whole volume (features.npz)")
    _add_io_args(p); _add_engine_args(p); _add_tiling_args(p)
    p.set_defaults(func=cmd_features)

    p = act.add_parser("organs", help="organ-presence probability heatmaps (8 BTCV organs)")
    _add_io_args(p); _add_engine_args(p); _add_tiling_args(p)
    p.add_argument("--probe", metavar="PATH|CARD", help="probe weights (default: bundled demo probe)")
    p.add_argument("--organs", nargs="+", metavar="ORGAN", help="only these organs (e.g. liver spleen 'left kidney')")
    p.set_defaults(func=cmd_organs)

    p = act.add_parser("pca", help="first three principal components of the token features (RGB volume)")
    _add_io_args(p); _add_engine_args(p); _add_tiling_args(p)
    p.set_defaults(func=cmd_pca)

    p = act.add_parser("similar", help="cosine similarity of every token to the token at a point")
    _add_io_args(p); _add_engine_args(p); _add_tiling_args(p); _add_point_args(p)
    p.set_defaults(func=cmd_similar)

    p = act.add_parser("reconstruct", help="masked reconstruction of the superpatch centred on a point")
    _add_io_args(p); _add_engine_args(p); _add_point_args(p)
    p.add_argument("--mask-ratio", type=float, nargs="+", default=[0.5, 0.5], metavar="R",
                   help="plane and axis mask ratios (one value for both; default 0.5 0.5)")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian noise std on the [0, 1] input (default 0)")
    p.add_argument("--seed", type=int, default=0, help="mask and noise seed")
    p.set_defaults(func=cmd_reconstruct)

    p = act.add_parser("train-probe", help="fit the organ probe on labelled CTs (BTCV label indices)")
    p.add_argument("--data", help="folder with images/ and labels/ (same file names) or a CSV with image,label")
    p.add_argument("--phantoms", type=int, default=0, help="use N generated phantoms instead of --data")
    p.add_argument("--holdout", type=float, default=0.25, help="fraction of cases held out for AUROC (default 0.25)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    _add_io_args(p, needs_input=False); _add_engine_args(p)
    p.set_defaults(func=cmd_train_probe)

    p = act.add_parser("pretrain", help="MAE pretraining (dual masking, noise levels) (resumable)")
    p.add_argument("--data", help="folder of CT images")
    p.add_argument("--phantoms", type=int, default=0, help="pretrain on N generated phantoms instead of --data")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--embed-dim", type=int, help="encoder width (default 96, the demo model)")
    p.add_argument("--superpatch", type=int, help="superpatch edge in voxels (default 64, the demo model)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoint.pt, nemesis.safetensors)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = act.add_parser("build-demo-weights", help="retrain the bundled demo encoder and probe from scratch")
    p.add_argument("-o", "--output", help="output folder (default: the package's bundled weights, "
                                          "pantheon/registry/weights)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--cases", type=int, default=40, help="phantoms for the probe (a quarter held out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build_demo_weights)

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
        p.add_argument("--synthetic", type=int, default=0, metavar="N", help="use N synthetic OPGs instead of --data")
        p.add_argument("--seed", type=int, default=0, help="seed of the first synthetic OPG (default 0)")

    p = tact.add_parser("analyze", help="teeth, caries, anomalies and stages of one OPG; label maps, "
                                        "result.json, chart.png, preview.png")
    p.add_argument("input", help="OPG image: PNG, JPEG, DICOM (file or folder) or NRRD")
    p.add_argument("-o", "--output", required=True, help="output folder (created; files are replaced atomically)")
    _tooth_weights(p)
    p.add_argument("--score-thresh", type=float, default=0.3, help="detection score threshold (default 0.3)")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tooth_analyze)

    p = tact.add_parser("train", help="train one MATHENA stage (detector, carseg, ad, dds); resumable")
    p.add_argument("--stage", required=True, choices=TOOTH_STAGES, help="training stage (spec section 4.5 order)")
    _tooth_data_args(p)
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoints and weights)")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the trainer's)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tooth_train)

    p = tact.add_parser("eval", help="mAP@50, caries Dice (per positive crop and pooled), anomaly Dice, "
                                     "stage accuracy and macro-F1, printed as JSON")
    _tooth_data_args(p)
    _tooth_weights(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tooth_eval)
    _add_pni_parser(sub)
    from .batch.pipelines import PIPELINES
    p = sub.add_parser("batch", help="run a pipeline over a folder or CSV of images (resumable)",
                       description="Batch pseudo-labelling: one output folder per case, manifest.json, logs/, "
                                   "summary.csv and index.html in --output. A rerun skips finished cases and "
                                   "redoes failed or unfinished ones.")
    p.add_argument("pipeline", choices=sorted(PIPELINES), help="batch pipeline")
    p.add_argument("--input", required=True, help="folder of images / DICOM series subfolders, or a CSV with an "
                                                  "'image' column (optional 'case_id')")
    p.add_argument("-o", "--output", required=True, help="batch output folder")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each loads the model once (default 1)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="executor: local process pool (default) or ray (Ray actors; pip install 'pantheon[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", help="--engine ray: the Ray cluster to join, e.g. auto or "
                                                         "ray://head:10001 (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--weights", metavar="PATH|CARD", help="NEMESIS weights (default: bundled demo weights)")
    p.add_argument("--probe", metavar="PATH|CARD", help="organ probe weights (default: bundled demo probe)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--organs", nargs="+", metavar="ORGAN", help="nemesis-organs: only these organs")
    p.add_argument("--detector", metavar="PATH|CARD", help="mathena-analyze: tooth detector weights")
    p.add_argument("--hena", metavar="PATH|CARD", help="mathena-analyze: HENA weights")
    p.add_argument("--score-thresh", type=float, help="mathena-analyze: detection score threshold (default 0.3)")
    p.add_argument("--neoseg", metavar="PATH|CARD", help="neonet-predict: NeoSeg weights")
    p.add_argument("--pattennet", metavar="PATH|CARD", help="neonet-predict: PattenNet weights")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd"], help="image format (default nii.gz)")
    p.add_argument("--seg-nrrd", action=argparse.BooleanOptionalAction, default=True,
                   help="also write label outputs as Slicer .seg.nrrd (default on)")
    p.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=True,
                   help="redo cases that failed in an earlier run (default on)")
    p.add_argument("--strict", action="store_true", help="exit with status 2 when any case failed (default: 0 "
                                                         "with a warning on stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False) or args.command == "batch"  # batch draws its own per-case bar
    progress = TqdmProgress(quiet, desc=getattr(args, "action", args.command))
    t0 = time.perf_counter()
    try:
        summary = args.func(args, progress)
    except Cancelled:
        progress.close()
        print("pantheon: cancelled; no output was written.", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        progress.close()
        print("pantheon: interrupted; no output was written.", file=sys.stderr)
        return EXIT_CANCELLED
    except (PantheonError, ValueError) as exc:
        progress.close()
        if args.debug:
            raise
        print(f"pantheon: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        progress.close()
        print("pantheon: error: out of memory; try a smaller --batch-size, --precision bf16 or a GPU.", file=sys.stderr)
        return EXIT_ERROR
    progress.close()
    summary = dict(summary or {})
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
