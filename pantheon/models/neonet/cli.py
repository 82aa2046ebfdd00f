"""NeoNet on the command line: ``pantheon pni ACTION`` (PNIPredict); declared by
:mod:`pantheon.models.neonet.plugin`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...cliargs import (
    IMAGE_FORMATS,
    NON_NEGATIVE,
    NOTHING_WRITTEN,
    OUTPUT_HELP,
    POSITIVE,
    RESUMABLE,
    add_input_limits,
    add_overwrite,
    device_name,
    int_at_least,
    read_input,
    write_outputs,
)
from ...defaults import NEOGEN_DDIM_STEPS
from ...errors import PantheonError


def _pni_models(args, components):
    from ...pipelines.neonet import load_neonet_models
    return load_neonet_models(getattr(args, "neoseg", None), getattr(args, "neogen", None),
                              getattr(args, "pattennet", None), components=components,
                              device=_pni_device(getattr(args, "device", "cpu")))


def _pni_device(device):
    from ...runtime import pick_device
    return str(pick_device(device or "auto"))


def cmd_pni_predict(args, progress):
    """PNI probability, tumour labels, attention heat map and crop box for one MRI."""
    from ...pipelines import neonet
    from ...progress import run_and_write
    run, write = run_and_write(progress)
    vol = read_input(args.input, args)
    mask = read_input(args.tumour_mask, args) if args.tumour_mask else None
    kinds = ("pattennet",) if mask is not None else ("neoseg", "pattennet")
    result = neonet.predict(vol, _pni_models(args, kinds), tumour_mask=mask, progress=run,
                            max_voxels=args.max_pixels)
    files = write_outputs(args, result, write, source=vol, preview=not args.no_preview)
    return {"files": files, "scalars": result.scalars,
            "pni_prediction": result.notes.get("pni_prediction"), "crop_box": result.tables.get("crop_box")}


def cmd_pni_synthesize(args, progress):
    """Synthetic MR patches for a label map, on the label map's grid."""
    from ...pipelines import neonet
    from ...progress import run_and_write
    run, write = run_and_write(progress)
    labels = read_input(args.input, args)
    models = _pni_models(args, ("neogen",))
    limit = int((getattr(models.neogen, "config", None) or {}).get("num_train_timesteps") or 0)
    if limit and args.steps > limit:
        raise PantheonError(f"--steps must be at most {limit} for these NeoGen weights (their noise schedule has "
                            f"{limit} steps), got {args.steps}.")
    result = neonet.synthesize(labels, models, pni=args.pni, n=args.n, steps=args.steps,
                               seed=args.seed, progress=run, max_voxels=args.max_pixels)
    files = write_outputs(args, result, write, preview=False)
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
    from ...train.neonet import train_stage
    data = _pni_data(args)
    result = train_stage(args.stage, data, args.output, steps=args.steps, resume=not args.restart,
                         progress=progress, log=_pni_log(args), neogen=args.neogen, seed=args.seed,
                         neoseg=args.neoseg if args.stage == "cls" else None)
    return {"stage": args.stage, "weights": str(result.weights)}


def cmd_pni_eval(args, progress):
    """Cross-validation of the PNI classifier, or an evaluation of given PattenNet weights (JSON)."""
    import tempfile

    from ...train import neonet as tn
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


def add_commands(sub) -> None:
    """``pantheon pni ACTION``."""
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
    add_input_limits(p, "pni")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    add_overwrite(p)
    p.add_argument("--tumour-mask", "--tumor-mask", dest="tumour_mask", metavar="LABELS",
                   help="tumour mask on the MRI's grid (binary, or 1 liver / 2 tumour); skips NeoSeg")
    models(p, ("neoseg", "pattennet"))
    p.add_argument("--format", default="nii.gz", choices=IMAGE_FORMATS, help="image format (default nii.gz)")
    p.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pni_predict, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("synthesize", help="synthetic MR patches for a label map (NeoGen, DDIM)")
    p.add_argument("input", help="label map (1 liver, 2 tumour; a binary map is a tumour)")
    add_input_limits(p, "pni")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    add_overwrite(p)
    p.add_argument("--pni", type=int, default=1, choices=[0, 1], help="PNI class to synthesise (default 1)")
    p.add_argument("-n", type=POSITIVE, default=1, help="number of patches (default 1)")
    p.add_argument("--steps", type=POSITIVE, default=NEOGEN_DDIM_STEPS,
                   help=f"DDIM steps (default {NEOGEN_DDIM_STEPS})")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="noise seed (same seed, same patches)")
    models(p, ("neogen",))
    p.add_argument("--format", default="nii.gz", choices=IMAGE_FORMATS, help="image format (default nii.gz)")
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


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """Options of the neonet-predict batch pipeline."""
    p.add_argument("--neoseg", metavar="PATH|CARD", help="neonet-predict: NeoSeg weights")
    p.add_argument("--pattennet", metavar="PATH|CARD", help="neonet-predict: PattenNet weights")
