"""Duo-Diffusion on the command line: ``pantheon foscu ACTION``; declared by
:mod:`pantheon.models.foscu.plugin`."""

from __future__ import annotations

from ...cliargs import NON_NEGATIVE, POSITIVE, RESUMABLE, device_name
from ...defaults import FOSCU_DEMO_LABELGEN_CARD, NEOGEN_DDIM_STEPS


def cmd_generate(args, progress):
    """N new (MR volume, label map) pairs into a folder (resumable)."""
    from ...runtime import pick_device
    from ..lldm.synthesis import load_model
    from .labelgen import load_labelgen_argument
    from .pairs import generate_pairs
    device = str(pick_device(args.device or "cpu"))
    labelgen, _, demo_l = load_labelgen_argument(args.labelgen, "cpu")  # its sampler draws on the CPU
    lldm, _, demo_i = load_model(args.lldm, device)
    return generate_pairs(args.n, args.output, labelgen, lldm, seed=args.seed, label_steps=args.label_steps,
                          image_steps=args.image_steps, progress=progress, demo=demo_l or demo_i)


def cmd_train(args, progress):
    """One stage of the label generator (resumable): 3D-LLDM's training command with this trainer."""
    from ...train.foscu import train_stage
    from ..lldm.cli import run_train
    return run_train(args, progress, train_stage)


def add_commands(sub) -> None:
    """``pantheon foscu ACTION``."""
    foscu = sub.add_parser("foscu", help="FOSCU Duo-Diffusion: new liver MRI (image, label map) pairs, no labels "
                                         "drawn",
                           description="FOSCU (arXiv 2603.29343, reconstruction): a label-map diffusion model "
                                       "samples new anatomy (liver, portal vein, hepatic veins, HCC) and 3D-LLDM "
                                       "synthesises its hepatobiliary-phase MR volume. Demo weights know phantoms, "
                                       "not patients: research only.")
    act = foscu.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = act.add_parser("generate", help="N new (MR volume, label map) pairs into a folder (resumable)")
    p.add_argument("n", type=POSITIVE, help="how many pairs")
    p.add_argument("-o", "--output", required=True,
                   help="folder: images/, labels/ (+ .seg.nrrd), thumbnails/, cases.csv, index.html; rerun the same "
                        "command to finish an interrupted run")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="pair n uses seed + n (default 0)")
    p.add_argument("--label-steps", type=POSITIVE, default=NEOGEN_DDIM_STEPS, help="DDIM steps of the label maps")
    p.add_argument("--image-steps", type=POSITIVE, default=NEOGEN_DDIM_STEPS, help="DDIM steps of the volumes")
    p.add_argument("--labelgen", metavar="PATH|CARD",
                   help=f"label generator weights (default '{FOSCU_DEMO_LABELGEN_CARD}')")
    p.add_argument("--lldm", metavar="PATH|CARD", help="3D-LLDM weights (default 'lldm-demo')")
    p.add_argument("--device", default="cpu", type=device_name, help="3D-LLDM's device: cpu (default), auto, cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate, interrupt_note=RESUMABLE)

    from ..lldm.cli import add_train_parser
    add_train_parser(act, "train one stage of the label generator (vae, then ldm; resumable)", ["vae", "ldm"],
                     cmd_train)
