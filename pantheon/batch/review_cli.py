"""``pantheon review``: the review of a batch output folder from the command line (status, next
case, record a decision, export the reviewed set as a training set). The Slicer review panel writes
the same records (:mod:`pantheon.batch.review`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_review(args, progress):
    from .review import ReviewSession, check_export_target
    session = ReviewSession(args.batch, reviewer=getattr(args, "reviewer", None))
    if args.review_action == "status":
        nxt = session.next_unreviewed()
        return {"batch": str(session.dir), "pipeline": session.pipeline, **session.status(), "next": nxt}
    if args.review_action == "record":
        decision = "corrected" if args.corrected else args.decision
        if decision is None:
            from ..errors import InputError
            raise InputError("Give --accept, --reject or --corrected NAME=FILE.")
        corrected = None
        if args.corrected:
            corrected = {}
            for item in args.corrected:
                name, eq, path = item.partition("=")
                if not eq or not name or not path:
                    from ..errors import InputError
                    raise InputError(f"--corrected takes NAME=FILE (the label output's name, e.g. "
                                     f"segmentation=fixed.nii.gz), got {item!r}.")
                corrected[name] = path
        entry = session.record(args.case, decision, args.rating, args.comment or "", corrected)
        return {"case": args.case, **{k: v for k, v in entry.items() if k != "history"},
                "next": session.next_unreviewed(after=args.case)}
    # export
    check_export_target(args.output)
    rows = session.export(args.output, args.decisions, args.label, args.format)
    return {"exported": len(rows), "folder": str(Path(args.output)), "csv": str(Path(args.output) / "cases.csv")}


def add_review_commands(sub) -> None:
    from ..cliargs import IMAGE_FORMATS
    p = sub.add_parser("review", help="review the pseudo-labels of a batch output folder; export the reviewed set",
                       description="Review a `pantheon batch` output folder: decisions, ratings and comments go "
                                   "into its manifest.json, summary.csv and index.html; corrected segmentations "
                                   "beside the originals. The 3D Slicer panels write the same records.")
    act = p.add_subparsers(dest="review_action", metavar="ACTION", required=True)
    s = act.add_parser("status", help="how many cases are reviewed, and the next one to review")
    s.add_argument("batch", help="batch output folder")
    r = act.add_parser("record", help="record a decision for one case")
    r.add_argument("batch", help="batch output folder")
    r.add_argument("case", help="case id")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--accept", dest="decision", action="store_const", const="accepted")
    g.add_argument("--reject", dest="decision", action="store_const", const="rejected")
    r.add_argument("--corrected", nargs="+", metavar="NAME=FILE",
                   help="the corrected label map(s) for label outputs NAME (decision 'corrected')")
    r.add_argument("--rating", type=int, choices=range(1, 6), metavar="1-5", help="quality rating, 1 (bad) to 5")
    r.add_argument("--comment", help="free text")
    r.add_argument("--reviewer", help="who reviewed (default: the login name)")
    e = act.add_parser("export", help="the accepted and corrected cases as a training set (images/, labels/)")
    e.add_argument("batch", help="batch output folder")
    e.add_argument("-o", "--output", required=True, help="new, empty folder for images/, labels/ and cases.csv")
    e.add_argument("--decisions", nargs="+", default=["accepted", "corrected"],
                   choices=["accepted", "corrected", "rejected"], help="which reviewed cases (default accepted "
                                                                        "corrected)")
    e.add_argument("--label", help="which label output, when the pipeline writes several")
    e.add_argument("--format", default="nii.gz", choices=IMAGE_FORMATS)
    for q in (s, r, e):
        q.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
        q.set_defaults(func=cmd_review, interrupt_note=None)
