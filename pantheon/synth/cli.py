"""``pantheon phantoms KIND N -o DIR``: synthetic (image, label map) pairs for trying pipelines and
building test sets: abdominal CT with BTCV labels, or hepatobiliary-phase liver MRI with the 3D-LLDM
labels (liver, portal vein, hepatic veins, HCC). Written in the layout every trainer's ``--data``
reads: ``images/``, ``labels/`` (same names; also ``.seg.nrrd`` with segment names for Slicer),
``cases.csv`` and ``labels.json`` (value -> name)."""

from __future__ import annotations

import json
from pathlib import Path

KINDS = ("ct", "hcc-mri")


def _generate(kind: str, seed: int, shape):
    """(image, label map, {value: (name, colour)}) of one phantom."""
    if kind == "ct":
        from ..anatomy import BTCV_ORGANS
        from .ct_phantom import make_abdomen_phantom
        img, lab = make_abdomen_phantom(seed, shape=shape)
        return img, lab, {value: (name, color) for name, value, color, *_ in BTCV_ORGANS}
    from .hcc_mri_phantom import HCC_COLORS, HCC_LABELS, make_hcc_mri_phantom
    img, lab, _info = make_hcc_mri_phantom(seed, shape=shape)
    return img, lab, {v: (n, HCC_COLORS[n]) for v, n in HCC_LABELS.items() if v}


def cmd_phantoms(args, progress):
    from ..errors import InputError
    from ..io import write_volume
    from ..io.segnrrd import write_seg_nrrd
    from ..outputs import staged_output
    from ..progress import Reporter
    from ..results import LabelOutput, Segment
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"The output folder {out} is not empty; choose a new folder.")
    rep = Reporter(progress)
    rows, names = [], {}
    with staged_output(out) as stage:
        (stage / "images").mkdir()
        (stage / "labels").mkdir()
        for n in range(args.n):
            seed = args.seed + n
            rep(n / args.n, f"Phantom {n + 1}/{args.n}")
            img, lab, names = _generate(args.kind, seed, tuple(args.shape) if args.shape else None)
            case = f"{args.kind}-{seed:05d}"
            write_volume(img, stage / "images" / f"{case}.nii.gz")
            write_volume(lab, stage / "labels" / f"{case}.nii.gz")
            segments = [Segment(v, name, tuple(color)) for v, (name, color) in sorted(names.items())]
            write_seg_nrrd(LabelOutput(lab, segments), stage / "labels" / f"{case}.seg.nrrd")
            rows.append(f"images/{case}.nii.gz,labels/{case}.nii.gz,{case},{seed}")
        (stage / "cases.csv").write_text("image,label,case_id,seed\n" + "\n".join(rows) + "\n", encoding="utf-8")
        (stage / "labels.json").write_text(json.dumps({"kind": args.kind, "labels": {
            "0": "background", **{str(v): name for v, (name, _c) in sorted(names.items())}}}, indent=2) + "\n")
    rep(1.0, "Written")
    return {"folder": str(out), "cases": args.n, "csv": str(out / "cases.csv")}


def add_commands(sub) -> None:
    from ..cliargs import NON_NEGATIVE, NOTHING_WRITTEN, POSITIVE
    p = sub.add_parser("phantoms", help="synthetic (image, label map) pairs: abdominal CT or liver MRI with HCC",
                       description=__doc__)
    p.add_argument("kind", choices=KINDS, help="ct: abdominal CT, BTCV labels; hcc-mri: hepatobiliary-phase liver MRI "
                                               "with liver, portal vein, hepatic veins and 0-3 HCC")
    p.add_argument("n", type=POSITIVE, help="how many")
    p.add_argument("-o", "--output", required=True, help="new, empty folder")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="first seed (case n uses seed + n)")
    p.add_argument("--shape", type=POSITIVE, nargs=3, metavar=("K", "J", "I"),
                   help="voxels per axis (default: the phantom's random grid)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_phantoms, interrupt_note=NOTHING_WRITTEN)
