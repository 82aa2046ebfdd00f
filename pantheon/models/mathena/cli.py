"""MATHENA on the command line: ``pantheon tooth ACTION`` (ToothAnalysis); declared by
:mod:`pantheon.models.mathena.plugin`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
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
    float_between,
    output_stage,
    read_input,
)
from ...defaults import MATHENA_SCORE_THRESHOLD
from ...errors import PantheonError


def cmd_tooth_analyze(args, progress):
    """Detections, per-tooth caries / anomaly / stage, label maps, findings, dental chart."""
    from ...outputs import write_result
    from ...pipelines import mathena as mt
    from ...progress import run_and_write
    run, write = run_and_write(progress)
    vol = read_input(args.input, args)
    mt.opg_to_gray(vol, max_pixels=args.max_pixels)  # bad input fails before loading any model
    models = mt.load_mathena_models(args.detector, args.hena)
    result = mt.analyze(vol, models, None, args.score_thresh, progress=run, max_pixels=args.max_pixels)
    if result.notes.get("input_warning"):  # few teeth or teeth out of arch order: maybe not an OPG
        warnings.warn(result.notes["input_warning"])
    with output_stage(args) as stage:
        write_result(result, stage, args.format, preview=False, progress=write.sub(0, 0.6))
        write(0.6, "Drawing chart.png")
        mt.dental_chart(result, stage / "chart.png")
        write(0.8, "Drawing preview.png")
        mt.save_overlay_preview(vol, result, stage / "preview.png")
        names = sorted(p.name for p in stage.iterdir())
    write(1.0, "Written")
    out = Path(args.output)
    from ...outputs import json_safe
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
        from ...synth.opg import make_opg
        return [make_opg(args.seed + n) for n in range(synthetic)]
    if not args.data:
        raise PantheonError("Give --data DENTEX.json with --images DIR, or --synthetic N.")
    if not args.images:
        raise PantheonError("--data needs --images, the folder holding the JSON's image files.")
    from ...data.dentex import read_dentex
    records = read_dentex(args.data, args.images)
    if not records:
        raise PantheonError(f"{args.data} lists no images.")
    return records


def _tooth_trainer(name: str):
    try:
        from ...train import mathena as tm
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
            "result": {"stage": args.stage, "weights": str(out.weights), "step": out.steps, "history": out.history,
                       "stopped_early": out.stopped_early, "seconds": out.seconds}}


def cmd_tooth_eval(args, progress):
    from ...pipelines import mathena as mt
    data = _tooth_data(args)
    evaluate = _tooth_trainer("evaluate")
    models = mt.load_mathena_models(args.detector, args.hena)
    metrics = evaluate(models.detector, models.hena, data)
    from ...outputs import json_safe
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


def add_commands(sub) -> None:
    """``pantheon tooth ACTION``."""
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
    add_input_limits(p, "tooth")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    add_overwrite(p)
    _tooth_weights(p)
    p.add_argument("--score-thresh", type=float_between(0.0, 1.0), default=MATHENA_SCORE_THRESHOLD,
                   help=f"detection score threshold in [0, 1] (default {MATHENA_SCORE_THRESHOLD:g})")
    p.add_argument("--format", default="nii.gz", choices=IMAGE_FORMATS, help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tooth_analyze, interrupt_note=NOTHING_WRITTEN)

    p = tact.add_parser("train", help="train one MATHENA stage (detector, carseg, ad, dds); resumable")
    p.add_argument("--stage", required=True, choices=TOOTH_STAGES,
                   help="training stage, in the paper's order: detector, carseg, ad, dds")
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


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """Options of the mathena-analyze batch pipeline."""
    p.add_argument("--detector", metavar="PATH|CARD", help="mathena-analyze: tooth detector weights")
    p.add_argument("--hena", metavar="PATH|CARD", help="mathena-analyze: HENA weights")
    p.add_argument("--score-thresh", type=float_between(0.0, 1.0),
                   help=f"mathena-analyze: detection score threshold in [0, 1] (default {MATHENA_SCORE_THRESHOLD:g})")
