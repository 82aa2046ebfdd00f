"""NEMESIS on the command line: ``pantheon demo`` (the offline demo) and ``pantheon nemesis
ACTION``; declared by :mod:`pantheon.models.nemesis.plugin`.
"""

from __future__ import annotations

import argparse
import json
import math
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
    check_weights_file,
    device_name,
    finite_float,
    float_between,
    int_at_least,
    output_stage,
    read_input,
    write_outputs,
)
from ...defaults import NEMESIS_DEMO_CARD, NEMESIS_MASK_RATIO, PROBE_EPOCHS, PROBE_HOLDOUT_FRACTION
from ...errors import PantheonError


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="PATH|CARD",
                   help="NEMESIS weights: a file (.pt published format or .safetensors) or a model-card id "
                        f"(default: the bundled demo weights '{NEMESIS_DEMO_CARD}'; official: 'nemesis-mae-768')")
    p.add_argument("--device", default="auto", type=device_name,
                   help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="fp32 (default); bf16/fp16 autocast on a GPU or a CPU with bf16 instructions; int8 on the "
                        "CPU (about 1.8x faster than fp32 on 2 AVX2 cores, tokens within cosine 0.999 of fp32)")
    p.add_argument("--batch-size", type=POSITIVE, default=1, help="superpatches per forward pass (default 1)")
    p.add_argument("--allow-download", action="store_true", help="download weights named by a card if not cached")
    p.add_argument("--trust-unverified", action="store_true",
                   help="accept downloaded weights whose card has no checksum yet (the hash is recorded)")


def _add_io_args(p: argparse.ArgumentParser, needs_input: bool = True) -> None:
    if needs_input:
        p.add_argument("input", help="CT image: NIfTI, NRRD, MHA/MHD or a DICOM series folder")
    add_input_limits(p, "nemesis")
    p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    add_overwrite(p)
    p.add_argument("--format", default="nii.gz", choices=IMAGE_FORMATS, help="image format (default nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


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

    from ...errors import InputError
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


def _engine(args, progress=None):
    from ...pipelines.nemesis import load_engine
    check_weights_file(args.weights)
    return load_engine(args.weights, args.device, args.precision, args.batch_size, args.allow_download,
                       args.trust_unverified, progress, max_voxels=args.max_pixels)


def cmd_features(args, progress):
    import numpy as np

    from ...pipelines import nemesis as nem
    from ...progress import run_and_write
    run, write = run_and_write(progress)
    vol = read_input(args.input, args)
    engine = _engine(args)
    fg = nem.features(vol, engine, _stride(args), args.cache_dir, progress=run)
    write(0.0, "Writing features.npz")
    with output_stage(args) as stage:
        np.savez_compressed(stage / "features.npz", tokens=fg.tokens.astype(np.float16), centres_lps=fg.centres_lps,
                            patch_size=fg.patch_size, superpatch_size=fg.superpatch_size, stride=fg.stride)
        (stage / "result.json").write_text(json.dumps({
            "outputs": {"features": {"kind": "token-features", "file": "features.npz",
                                     "grid": list(fg.tokens.shape[:3]), "dim": int(fg.tokens.shape[3]),
                                     "axes": "model (D=k, H=i, W=j of the RAS-canonical volume)"}},
            "notes": nem.run_notes(engine, fg)}, indent=2) + "\n")
    write(1.0, "Written")
    return {"features": str(Path(args.output) / "features.npz"), "grid": list(fg.tokens.shape)}


def _run_and_write(args, progress, fn, preview=True, point=False):
    """Read, load, run ``fn(vol, engine[, point_lps], progress)``, write (its share of the bar). A
    ``point`` is checked against the image before the model loads, so a typo costs no model load."""
    from ...progress import run_and_write
    run, write = run_and_write(progress)
    vol = read_input(args.input, args)
    lps = _point_lps(args, vol) if point else None
    engine = _engine(args)
    result = fn(vol, engine, lps, run) if point else fn(vol, engine, run)
    files = write_outputs(args, result, write, source=vol, preview=preview)
    return {"files": files, "scalars": result.scalars}


def cmd_organs(args, progress):
    from ...pipelines import nemesis as nem

    def run(vol, engine, rep):
        probe = nem.load_probe_for(engine, args.probe)
        return nem.organ_maps(vol, engine, probe, args.organs, _stride(args), args.cache_dir, progress=rep)
    return _run_and_write(args, progress, run)


def cmd_pca(args, progress):
    from ...pipelines import nemesis as nem
    return _run_and_write(args, progress, lambda vol, eng, rep: nem.pca(vol, eng, _stride(args), args.cache_dir,
                                                                       progress=rep))


def cmd_similar(args, progress):
    from ...pipelines import nemesis as nem
    if args.target:
        return _similar_in_target(args, progress)
    return _run_and_write(args, progress, lambda vol, eng, lps, rep: nem.similarity(
        vol, eng, lps, _stride(args), args.cache_dir, progress=rep), point=True)


def _similar_in_target(args, progress):
    """``similar --target``: the point in the input, the map over the target CT."""
    from ...pipelines import nemesis as nem
    from ...progress import run_and_write
    from .compare import query_at, similarity_in
    run, write = run_and_write(progress)
    vol = read_input(args.input, args)
    lps = _point_lps(args, vol)
    target = read_input(args.target, args)
    nem.check_ct(target, "target", max_voxels=args.max_pixels or None)  # before any model load
    engine = _engine(args)
    query = query_at(vol, engine, lps, stride=_stride(args), cache_dir=args.cache_dir, progress=run.sub(0, 0.5))
    result = similarity_in(target, engine, query, stride=_stride(args), cache_dir=args.cache_dir,
                           progress=run.sub(0.5, 1.0))
    files = write_outputs(args, result, write, source=target)
    return {"files": files, "scalars": result.scalars, "best_match_ras": json.loads(result.notes["best_match_ras"])}


def cmd_rank(args, progress):
    """Rank the scans of --scans by their best match to the point in the input."""
    from ...io import read_volume
    from ...progress import run_and_write
    from .compare import query_at, rank_scans, ranking_csv, scans_from
    run, write = run_and_write(progress)
    vol = read_input(args.input, args)
    lps = _point_lps(args, vol)
    paths = scans_from(args.scans, exclude=[args.input])
    engine = _engine(args)
    query = query_at(vol, engine, lps, stride=_stride(args), cache_dir=args.cache_dir,
                     progress=run.sub(0, 1 / (len(paths) + 1)))
    scans = [(str(p), lambda p=p: read_volume(p, max_pixels=args.max_pixels)) for p in paths]
    rows = rank_scans(query, scans, engine, stride=_stride(args), cache_dir=args.cache_dir,
                      progress=run.sub(1 / (len(paths) + 1), 1.0))
    failed = [r for r in rows if "error" in r]
    write(0.0, "Writing ranking.csv")
    with output_stage(args) as stage:
        (stage / "ranking.csv").write_text(ranking_csv(rows), encoding="utf-8")
        (stage / "result.json").write_text(json.dumps({
            "query": {"image": str(args.input), "point_lps": list(query.point_lps),
                      "point_ras": [-query.point_lps[0], -query.point_lps[1], query.point_lps[2]],
                      "token_centre_lps": list(query.token_lps)},
            "ranking": rows,
            "notes": {"best_match": "each scan's most similar token inside the body (cosine similarity of NEMESIS "
                                    "tokens to the query token); its centre in RAS/LPS mm and the nearest voxel"}},
            indent=2) + "\n", encoding="utf-8")
    write(1.0, "Written")
    out = {"ranking": str(Path(args.output) / "ranking.csv"), "ranked": len(rows) - len(failed),
           "failed": len(failed), "top": [{"scan": r["scan"], "best_similarity": r["best_similarity"]}
                                          for r in rows[:3] if "error" not in r]}
    if failed:
        out["_exit_status"] = 2 if len(failed) == len(rows) else 1
    return out


def cmd_reconstruct(args, progress):
    from ...pipelines import nemesis as nem
    ratio = args.mask_ratio[0] if len(args.mask_ratio) == 1 else tuple(args.mask_ratio[:2])
    if len(args.mask_ratio) > 2:
        raise PantheonError("--mask-ratio takes one value or two (plane axis).")
    return _run_and_write(args, progress, lambda vol, eng, lps, rep: nem.reconstruct(
        vol, eng, lps, ratio, args.noise, args.seed, progress=rep), point=True)


def cmd_atypicality(args, progress):
    from .atypicality import atypicality
    ratio = args.mask_ratio[0] if len(args.mask_ratio) == 1 else tuple(args.mask_ratio[:2])
    if len(args.mask_ratio) > 2:
        raise PantheonError("--mask-ratio takes one value or two (plane axis).")
    return _run_and_write(args, progress, lambda vol, eng, rep: atypicality(
        vol, eng, args.draws, ratio, args.seed, progress=rep))


def cmd_strokes(args, progress):
    from ...io import read_volume
    from ...pipelines import nemesis as nem
    from ...progress import run_and_write
    from .strokes import check_strokes, segment_from_strokes
    run, write = run_and_write(progress)
    vol = read_input(args.input, args)
    strokes = read_volume(args.strokes, max_pixels=args.max_pixels)
    check_strokes(vol, strokes)  # a wrong stroke map costs no model load
    engine = _engine(args)
    fg = nem.features(vol, engine, _stride(args), args.cache_dir, progress=run.sub(0, 0.8))
    result = segment_from_strokes(vol, engine, strokes, feature_grid=fg, progress=run.sub(0.8, 1.0))
    files = write_outputs(args, result, write, source=vol)
    return {"files": files, "scalars": result.scalars}


def _pairs_from(args):
    """(image, label) volumes from --data (images/ + labels/ with matching names, or a CSV) or phantoms."""
    if args.phantoms:
        from ...synth import make_abdomen_phantom
        return [make_abdomen_phantom(args.seed + n) for n in range(args.phantoms)]
    if not args.data:
        raise PantheonError("Give --data (a folder with images/ and labels/, or a CSV with image,label columns) "
                            "or --phantoms N.")
    from ...data.pairs import read_pairs
    return read_pairs(args.data, max_pixels=args.max_pixels)


def cmd_train_probe(args, progress):
    from ...train.nemesis import train_probe, write_probe_card
    pairs = _pairs_from(args)
    engine = _engine(args)
    out = Path(args.output)
    with output_stage(args) as stage:  # probe, metrics and card appear together or not at all
        probe, metrics = train_probe(pairs, engine, stage / "probe.safetensors", holdout_fraction=args.holdout,
                                     epochs=args.epochs, seed=args.seed, progress=progress)
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_probe_card(stage, engine)
    return {"probe": str(out / "probe.safetensors"),
            "held_out_auroc": {k: round(v["auroc"], 4) for k, v in metrics["held_out"].items()}}


def cmd_pretrain(args, progress):
    from ...runtime import pick_device
    from ...train.nemesis import PretrainConfig, pretrain
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
        from ...io import read_volume
        data = Path(args.data)
        if not data.is_dir():
            raise PantheonError(f"--data {data} is not a folder of CT images.")
        paths = sorted(p for p in data.iterdir() if not p.name.startswith("."))
        if not paths:
            raise PantheonError(f"--data {data} holds no CT images.")
        volumes = [read_volume(p, max_pixels=args.max_pixels) for p in paths]
    elif args.phantoms:
        from ...synth import make_abdomen_phantom
        volumes = [make_abdomen_phantom(args.seed + n)[0] for n in range(args.phantoms)]
    else:
        raise PantheonError("Give --data (a folder of CT images) or --phantoms N.")
    result = pretrain(volumes, args.output, cfg, resume=not args.restart, device=device, progress=progress,
                      log=lambda m: print(m, file=sys.stderr) if not args.quiet else None)
    return {"weights": str(result.weights)}


def cmd_demo(args, progress):
    """Generate a phantom, run organ maps and the PCA map with the bundled demo weights."""
    from ...io import write_volume
    from ...outputs import write_result
    from ...pipelines import nemesis as nem
    from ...progress import run_and_write
    from ...results import Result
    from ...synth import make_abdomen_phantom
    run, write = run_and_write(progress)
    ct, labels = make_abdomen_phantom(args.seed)
    check_weights_file(args.weights)
    engine = nem.load_engine(args.weights, args.device)
    probe = nem.load_probe_for(engine, args.probe)
    fg = nem.features(ct, engine, progress=run.sub(0, 0.85))
    organs = nem.organ_maps(ct, engine, probe, feature_grid=fg, progress=run.sub(0.85, 0.95))
    pcs = nem.pca(ct, engine, feature_grid=fg, progress=run.sub(0.95, 1.0))
    combined = Result(heatmaps=organs.heatmaps, volumes=pcs.volumes, scalars=pcs.scalars, notes=organs.notes)
    out = Path(args.output)
    with output_stage(args) as stage:  # the phantom and its maps appear together
        write_volume(ct, stage / f"phantom_ct.{args.format}")
        write_volume(labels, stage / f"phantom_labels.{args.format}")
        files = write_result(combined, stage, args.format, source=ct, progress=write)
    return {"files": [str(out / f.name) for f in files] + [str(out / f"phantom_ct.{args.format}"),
                                                             str(out / f"phantom_labels.{args.format}")],
            "preview": str(out / "preview.png"), "weights": engine.weights_id,
            "warning": organs.notes.get("warning", "")}


def cmd_build_demo_weights(args, progress):
    from ...train.demo_weights import build_demo_weights
    # with -o the cards go beside the weights: rewriting the package's own cards would point the
    # bundled demo card at weights that are not bundled
    return build_demo_weights(args.output, steps=args.steps, cases=args.cases, seed=args.seed, progress=progress,
                              cards_dir=args.output, log=lambda m: print(m, file=sys.stderr))


def _bundled_folders(args):
    """Where build-demo-weights writes without -o: the package's bundled weights and cards."""
    from ...registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR
    return [Path(BUNDLED_WEIGHTS_DIR), Path(CARDS_DIR)]


def add_commands(sub) -> None:
    """``pantheon demo`` and ``pantheon nemesis ACTION``."""
    demo = sub.add_parser("demo", help="offline demo: NEMESIS organ maps and PCA map on a generated phantom")
    demo.add_argument("-o", "--output", default="pantheon-demo-output",
                      help="output folder (default pantheon-demo-output); refused when it holds results")
    add_overwrite(demo)
    demo.add_argument("--seed", type=NON_NEGATIVE, default=1234, help="phantom seed")
    demo.add_argument("--weights", help="encoder weights (default: bundled demo)")
    demo.add_argument("--probe", help="organ probe weights (default: bundled demo probe)")
    demo.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda or cuda:N (default auto)")
    demo.add_argument("--format", default="nii.gz", choices=IMAGE_FORMATS)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo, interrupt_note=None)

    nem = sub.add_parser("nemesis", help="NEMESIS CT foundation model pipelines",
                         description="NEMESIS (arXiv 2604.01612): self-supervised CT features on 128^3 superpatches. "
                                     "Inputs are CT volumes in Hounsfield units, any orientation; every output lands "
                                     "on the input's voxels.")
    act = nem.add_subparsers(dest="action", metavar="ACTION", required=True)

    def map_command(name: str, help: str, func, point: bool = False) -> argparse.ArgumentParser:
        p = act.add_parser(name, help=help)
        _add_io_args(p)
        _add_engine_args(p)
        _add_tiling_args(p)
        if point:
            _add_point_args(p)
        p.set_defaults(func=func, interrupt_note=NOTHING_WRITTEN)
        return p

    map_command("features", "token feature grid over the whole volume (features.npz)", cmd_features)
    p = map_command("organs", "organ-presence probability heatmaps (8 BTCV organs)", cmd_organs)
    p.add_argument("--probe", metavar="PATH|CARD", help="probe weights (default: bundled demo probe)")
    p.add_argument("--organs", nargs="+", metavar="ORGAN", help="only these organs (e.g. liver spleen 'left kidney')")
    map_command("pca", "first three principal components of the token features (RGB volume)", cmd_pca)
    p = map_command("similar", "cosine similarity of every token to the token at a point", cmd_similar, point=True)
    p.add_argument("--target", metavar="CT",
                   help="map the similarity over this other CT (the point stays in the input); the best match "
                        "is reported and marked in the preview")
    p = act.add_parser("rank", help="rank a folder of CTs by their best match to a point in the input")
    _add_io_args(p)
    _add_engine_args(p)
    _add_tiling_args(p)
    _add_point_args(p)
    p.add_argument("--scans", required=True, metavar="DIR|CSV",
                   help="the CTs to rank: a folder of images / DICOM series folders, or a CSV with an 'image' "
                        "column; --cache-dir keeps their features for the next query")
    p.set_defaults(func=cmd_rank, interrupt_note=NOTHING_WRITTEN)
    p = map_command("strokes", "segment one structure from paint strokes (label map: 1 inside, 2 around)",
                    cmd_strokes)
    p.add_argument("--strokes", required=True, metavar="LABELMAP",
                   help="stroke label map on the input's grid: 1 = foreground, 2 = background, 0 = unlabelled")

    p = act.add_parser("reconstruct", help="masked reconstruction of the superpatch centred on a point")
    _add_io_args(p)
    _add_engine_args(p)
    _add_point_args(p)
    p.add_argument("--mask-ratio", type=float_between(0.0, 1.0, high_inclusive=False), nargs="+",
                   default=list(NEMESIS_MASK_RATIO), metavar="R",
                   help="plane and axis mask ratios in [0, 1) (one value for both; default "
                        f"{NEMESIS_MASK_RATIO[0]:g} {NEMESIS_MASK_RATIO[1]:g})")
    p.add_argument("--noise", type=float_between(0.0, 1.0), default=0.0,
                   help="Gaussian noise std on the [0, 1] input, in [0, 1] (default 0)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="mask and noise seed")
    p.set_defaults(func=cmd_reconstruct, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("atypicality", help="masked-reconstruction error over the whole CT (several mask draws)")
    _add_io_args(p)
    _add_engine_args(p)
    p.add_argument("--draws", type=POSITIVE, default=4, help="random mask draws per superpatch (default 4)")
    p.add_argument("--mask-ratio", type=float_between(0.0, 1.0, high_inclusive=False), nargs="+",
                   default=list(NEMESIS_MASK_RATIO), metavar="R",
                   help="plane and axis mask ratios in [0, 1) (default "
                        f"{NEMESIS_MASK_RATIO[0]:g} {NEMESIS_MASK_RATIO[1]:g})")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="mask seed")
    p.set_defaults(func=cmd_atypicality, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("train-probe", help="fit the organ probe on labelled CTs (BTCV label indices)")
    p.add_argument("--data", help="folder with images/ and labels/ (same file names) or a CSV with image,label")
    p.add_argument("--phantoms", type=NON_NEGATIVE, default=0, help="use N generated phantoms instead of --data")
    p.add_argument("--holdout", type=float_between(0.0, 1.0, low_inclusive=False, high_inclusive=False),
                   default=PROBE_HOLDOUT_FRACTION,
                   help=f"fraction of cases held out for AUROC (default {PROBE_HOLDOUT_FRACTION:g})")
    p.add_argument("--epochs", type=POSITIVE, default=PROBE_EPOCHS)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    _add_io_args(p, needs_input=False)
    _add_engine_args(p)
    p.set_defaults(func=cmd_train_probe, interrupt_note=NOTHING_WRITTEN)

    p = act.add_parser("pretrain", help="MAE pretraining (dual masking, noise levels) (resumable)")
    p.add_argument("--data", help="folder of CT images")
    add_input_limits(p, "nemesis")
    p.add_argument("--phantoms", type=NON_NEGATIVE, default=0,
                   help="pretrain on N generated phantoms instead of --data")
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
    p.set_defaults(func=cmd_build_demo_weights, interrupt_note=None, default_outputs=_bundled_folders)


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """Options of the nemesis-* batch pipelines."""
    p.add_argument("--weights", metavar="PATH|CARD", help="NEMESIS weights (default: bundled demo weights)")
    p.add_argument("--probe", metavar="PATH|CARD", help="organ probe weights (default: bundled demo probe)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"],
                   help="NEMESIS pipelines: fp32 (default), bf16, fp16 or int8 (CPU)")
    p.add_argument("--organs", nargs="+", metavar="ORGAN", help="nemesis-organs: only these organs")
