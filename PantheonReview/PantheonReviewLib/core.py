"""Pure-Python pieces of PantheonReview: keyboard shortcuts, the texts the panel shows, and a tiny
batch folder for the self-test.

No ``slicer``, ``qt``, ``vtk`` or ``torch`` import happens here, so this file is unit-tested in a
plain Python. The review itself (decisions, ratings, corrections, the manifest) is
:class:`pantheon.batch.review.ReviewSession`; the scene side is :mod:`pantheon.slicerbridge.review`.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

__all__ = ["SHORTCUTS", "DECISION_TEXT", "status_text", "case_text", "one_sentence", "shortcuts_text",
           "make_demo_batch"]

# Key sequence -> panel action, active while the module is shown (installed on the main window in
# enter(), removed in exit(), as the Segment Editor does with its own keys). Not Ctrl+Left/Right:
# Slicer's module toolbar has them (previous/next module), and a second shortcut on the same keys
# makes both ambiguous, so neither would fire. Not R: "r" resets the field of view in slice views.
SHORTCUTS = (
    ("Ctrl+Shift+Left", "previous"),
    ("Ctrl+Shift+Right", "next"),
    ("N", "nextUnreviewed"),
    ("A", "accept"),
    ("X", "reject"),
    ("0", "rating0"),
    ("1", "rating1"),
    ("2", "rating2"),
    ("3", "rating3"),
    ("4", "rating4"),
    ("5", "rating5"),
)

DECISION_TEXT = {"accepted": "accepted", "rejected": "rejected", "corrected": "corrected"}


def shortcuts_text() -> str:
    return ("Keys: A accept, X reject, 1-5 rating (0: none), N next unreviewed, "
            "Ctrl+Shift+Left/Right previous/next case.")


def status_text(status: Dict[str, int], in_manifest: Optional[int] = None) -> str:
    """"2 of 3 cases reviewed: 1 accepted, 0 rejected, 1 corrected." from ReviewSession.status();
    ``in_manifest``: all the manifest's cases (the ones not done cannot be reviewed)."""
    n = int(status.get("cases", 0))
    reviewed = n - int(status.get("unreviewed", 0))
    text = (f"{reviewed} of {n} case{'s' if n != 1 else ''} reviewed: {status.get('accepted', 0)} accepted, "
            f"{status.get('rejected', 0)} rejected, {status.get('corrected', 0)} corrected.")
    if in_manifest is not None and in_manifest > n:
        other = in_manifest - n
        text += f" {other} case{'s are' if other != 1 else ' is'} not done (failed or pending) and not shown."
    return text


def case_text(case_id: str, index: int, count: int, review: Optional[dict]) -> str:
    """The current case and what was decided for it."""
    head = f"Case {case_id} ({index + 1} of {count})"
    if not review:
        return f"{head}: not reviewed yet."
    parts = [DECISION_TEXT.get(review.get("decision"), str(review.get("decision")))]
    if review.get("rating"):
        parts.append(f"rating {review['rating']}")
    who = f" by {review['reviewer']}" if review.get("reviewer") else ""
    text = f"{head}: {', '.join(parts)}{who}"
    if review.get("comment"):
        text += f" ({review['comment']})"
    return text + "."


def one_sentence(exc) -> str:
    """An exception as the one sentence the status line shows (its first line, never a traceback)."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if not text:
        text = f"Unexpected error ({type(exc).__name__})."
    if len(text) > 400:
        text = text[:397].rstrip() + "..."
    return text if text.endswith((".", "!", "?")) else text + "."


def make_demo_batch(folder, cases: int = 2) -> str:
    """A small finished batch folder (a label output ``tumour`` per case, values 1 liver and
    2 tumour, on each case's own grid), as ``pantheon batch`` writes one: for the self-test, which
    cannot run a model in Slicer's process. Returns the folder."""
    import json

    import numpy as np

    from pantheon.batch.manifest import Manifest
    from pantheon.io import Volume, write_volume
    folder = os.fspath(folder)
    inputs = os.path.join(folder, "inputs")
    out = os.path.join(folder, "batch")
    os.makedirs(inputs, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    manifest = Manifest(out, "demo-review", {})
    z, y, x = np.mgrid[:12, :20, :24]
    for n in range(cases):
        cid = f"case{n}"
        liver = ((x - 12) ** 2 / 64 + (y - 10) ** 2 / 36 + (z - 6) ** 2 / 16) < 1
        tumour = ((x - 13 - n) ** 2 + (y - 10) ** 2 + (z - 6) ** 2) < 6
        image = Volume((liver * 100 + tumour * 60 - 20).astype(np.int16), spacing=(1.5, 1.2, 3.0),
                       origin=(10.0 * n, -5.0, 2.0))
        path = os.path.join(inputs, f"{cid}.nrrd")
        write_volume(image, path)
        os.makedirs(os.path.join(out, cid))
        labels = np.where(tumour, 2, np.where(liver, 1, 0)).astype(np.uint8)
        write_volume(image.with_array(labels), os.path.join(out, cid, "tumour.nrrd"))
        doc = {"outputs": {"tumour": {"kind": "labels", "file": "tumour.nrrd", "segments": [
            {"value": 1, "name": "liver", "color": [0.87, 0.51, 0.28], "code": ["SCT", "10200004", "Liver"]},
            {"value": 2, "name": "tumour", "color": [0.8, 0.2, 0.55], "code": ["SCT", "108369006", "Neoplasm"]}]}},
               "scalars": {}, "tables": {}, "notes": {}}
        with open(os.path.join(out, cid, "result.json"), "w") as f:
            json.dump(doc, f)
        manifest.cases[cid] = Manifest.new_case(cid, path)
        manifest.start(cid)
        manifest.finish(cid, "done", outputs=["tumour.nrrd", "result.json"])
    return out
