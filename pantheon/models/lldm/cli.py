"""3D-LLDM on the command line: ``pantheon lldm ACTION``; declared by :mod:`pantheon.models.lldm.plugin`."""

from __future__ import annotations

import sys

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
    finite_float,
    float_between,
    read_input,
    write_outputs,
)
from ...defaults import NEOGEN_DDIM_STEPS
from ...errors import PantheonError


def cmd_synthesize(args, progress):
    """A synthetic HBP MR volume for a label map, on the label map's grid."""
    from ...progress import run_and_write
    from ...runtime import pick_device
    from .synthesis import check_use, load_model, synthesize
    run, write = run_and_write(progress)
    use = check_use(args.labels)  # refused before the label map is read
    labels = read_input(args.input, args)
    labels = _edited(labels, args)
    model, wid, demo = load_model(args.weights, str(pick_device(args.device or "cpu")))
    result = synthesize(labels, model, steps=args.steps, seed=args.seed, conditioning_scale=args.scale,
                        progress=run, max_voxels=args.max_pixels, weights_id=wid, demo=demo, use=use)
    files = write_outputs(args, result, write, preview=False)
    return {"files": files, "scalars": result.scalars}


def _edited(labels, args):
    """The label map after ``--remove-hcc``, ``--grow-hcc`` and ``--add-hcc`` (in that order; HCC
    numbers are the input map's, 1 = its largest)."""
    if not (args.remove_hcc or args.grow_hcc or args.add_hcc):
        return labels
    from .edits import apply_edits
    from .synthesis import lldm_labels
    values = lldm_labels(labels)
    add = [((-r, -a, s), d) for r, a, s, d in (args.add_hcc or [])]  # RAS -> LPS
    return labels.with_array(apply_edits(labels, values, remove=args.remove_hcc or (), grow_mm=args.grow_hcc or 0.0,
                                         grow_which=args.hcc or (), add=add))


def run_train(args, progress, train_stage):
    """A training stage from ``--phantoms N`` or ``--data``, for 3D-LLDM's trainer and those sharing
    its data (Duo-Diffusion's label generator)."""
    from ...train.lldm import data_cases, phantom_cases
    if bool(args.phantoms) == bool(args.data):
        raise PantheonError("Give either --phantoms N or --data (a folder with images/ and labels/, or a CSV).")
    cases = phantom_cases(range(args.seed, args.seed + args.phantoms)) if args.phantoms else data_cases(args.data)
    log = (lambda m: print(m, file=sys.stderr)) if not args.quiet else None
    result = train_stage(args.stage, cases, args.output, steps=args.steps, resume=not args.restart, log=log,
                         seed=args.seed, progress=progress)
    return {"stage": args.stage, "weights": str(result.weights), "steps": result.steps}


def cmd_train(args, progress):
    """One 3D-LLDM training stage (resumable)."""
    from ...train.lldm import train_stage
    return run_train(args, progress, train_stage)


def cmd_evaluate(args, progress):
    """Fréchet distance, MS-SSIM and label Dice of a synthetic set against a real one (JSON)."""
    import numpy as np

    from ...progress import Reporter
    from ...train.lldm import data_cases, prepare_pair_padded
    from .evaluate import evaluate_synthetic, train_segmenter
    rep = Reporter(progress)
    rep(0.0, "Reading the sets")
    real, syn = data_cases(args.real), data_cases(args.synthetic)
    shape = tuple(max(c.image.shape[d] for c in real + syn) for d in range(3))
    real, syn = ([prepare_pair_padded(c, shape) for c in cases] for cases in (real, syn))

    def stack(cases, what):
        return np.stack([getattr(c, what) for c in cases])
    segmenter = None
    if args.segmenter_steps:
        segmenter = train_segmenter("unet", stack(real, "image"), stack(real, "labels"), steps=args.segmenter_steps,
                                    seed=args.seed, progress=rep.sub(0.05, 0.8))
    rep(0.8, "Measuring")
    result = evaluate_synthetic(stack(real, "image"), stack(real, "labels"), stack(syn, "image"),
                                None if args.paired else stack(syn, "labels"), segmenter, args.encoder)
    result["segmenter"] = f"MONAI UNet trained on the real set, {args.segmenter_steps} steps" if segmenter else "none"
    return result


def add_train_parser(act, help_text: str, stages, func) -> None:
    """``train --stage ... (--phantoms N | --data ...) -o RUN``, for the trainers that share 3D-LLDM's data."""
    p = act.add_parser("train", help=help_text)
    p.add_argument("--stage", required=True, choices=list(stages))
    p.add_argument("--phantoms", type=NON_NEGATIVE, default=0, help="train on N generated HCC liver MRI phantoms")
    p.add_argument("--data", metavar="DIR|CSV", help="your (image, label map) pairs: a folder with images/ and "
                                                     "labels/, or a CSV with image,label columns")
    p.add_argument("-o", "--output", required=True, help="run folder (each stage in its own subfolder)")
    p.add_argument("--steps", type=POSITIVE, default=500, help="training steps (default 500)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=func, interrupt_note=RESUMABLE)


def add_commands(sub) -> None:
    """``pantheon lldm ACTION``."""
    lldm = sub.add_parser("lldm", help="3D-LLDM: whole liver MRI (hepatobiliary phase) synthesised from a label map",
                          description="3D-LLDM (arXiv 2603.23845, reconstruction): a label map (1 liver, 2 portal "
                                      "vein, 3 hepatic veins, 4 HCC, or named segments) becomes a synthetic "
                                      "hepatobiliary-phase MR volume on its own grid. Demo weights know phantoms, "
                                      "not patients: research only.")
    act = lldm.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = act.add_parser("synthesize", help="a synthetic MR volume for a label map (DDIM), on the label map's grid")
    p.add_argument("input", help="label map (NIfTI, NRRD, .seg.nrrd, ...): 1 liver, 2 portal vein, 3 hepatic veins, "
                                 "4 HCC")
    add_input_limits(p, "lldm")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    add_overwrite(p)
    p.add_argument("--steps", type=POSITIVE, default=NEOGEN_DDIM_STEPS,
                   help=f"DDIM steps (default {NEOGEN_DDIM_STEPS})")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="noise seed (same seed, same volume)")
    p.add_argument("--scale", type=float_between(0.0, 10.0), default=None,
                   help="ControlNet scale: how strongly the labels steer (default: the weights' own)")
    p.add_argument("--weights", metavar="PATH|CARD", help="a .safetensors file or a model-card id "
                                                          "(default: the bundled demo card 'lldm-demo')")
    p.add_argument("--labels", metavar="NAMES", default=None,
                   help="the labels that steer the synthesis, comma-separated, among liver, portal_vein, "
                        "hepatic_vein, hcc (default all; liver always). Those left out join the liver: the model "
                        "draws vessels of its own there, and an HCC left out becomes liver")
    edits = p.add_argument_group("lesion edits (applied to the label map first; written with the result)")
    edits.add_argument("--remove-hcc", type=POSITIVE, action="append", metavar="N",
                       help="turn HCC number N (1 = the largest) back into liver; repeatable")
    edits.add_argument("--grow-hcc", type=finite_float, metavar="MM",
                       help="grow the HCCs by MM millimetres into the liver (negative: shrink)")
    edits.add_argument("--hcc", type=POSITIVE, action="append", metavar="N",
                       help="with --grow-hcc: only HCC number N (repeatable; default every HCC)")
    edits.add_argument("--add-hcc", type=finite_float, nargs=4, action="append", metavar=("R", "A", "S", "DIAMETER"),
                       help="a new HCC of DIAMETER mm centred at RAS millimetres (inside the liver); repeatable")
    p.add_argument("--device", default="cpu", type=device_name, help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("--format", default="nii.gz", choices=IMAGE_FORMATS, help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synthesize, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("evaluate", help="a synthetic set against a real one: Fréchet distance, MS-SSIM, label Dice")
    p.add_argument("--real", required=True, metavar="DIR|CSV", help="real (image, label map) pairs")
    p.add_argument("--synthetic", required=True, metavar="DIR|CSV",
                   help="synthetic pairs (e.g. from pantheon foscu generate)")
    p.add_argument("--paired", action="store_true",
                   help="synthetic case n was made from real label map n: also MS-SSIM against the real volume")
    p.add_argument("--encoder", default="neoseg", choices=["neoseg", "random"],
                   help="feature encoder of the Fréchet distance (default: the NeoNet demo NeoSeg)")
    p.add_argument("--segmenter-steps", type=NON_NEGATIVE, default=300,
                   help="train a UNet on the real set for the label Dice (0: no label Dice)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate, interrupt_note=NOTHING_WRITTEN)

    add_train_parser(act, "train one 3D-LLDM stage (vae, then ldm, then controlnet; resumable)",
                     ["vae", "ldm", "controlnet"], cmd_train)
