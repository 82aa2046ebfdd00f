"""Review of the pseudo-labels a batch produced (issue 18 section 1): accept, reject or correct each
case, a 1-5 rating and a comment, recorded in the batch folder; and the reviewed set exported as a
training set the trainers read (``--data``: ``images/`` and ``labels/`` with the same file names).

Where it lives: in the batch's own ``manifest.json`` (each reviewed case gains ``review``: decision,
rating, comment, reviewer, time, corrected files, and the earlier reviews in ``history``), and in
``summary.csv`` / ``index.html`` (review columns). Corrected segmentations go beside the originals
as ``<name>.corrected.<ext>`` (``.corrected-2`` and so on for later corrections: nothing is
overwritten). Every write takes the batch folder's lock (a running batch and a reviewer never write
the manifest at once), re-reads the manifest under it, and replaces files atomically, so a crash
at any moment loses at most the decision being written; a restart resumes at the first unreviewed
case (:meth:`ReviewSession.next_unreviewed`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import InputError, PantheonError
from .manifest import FORMAT, MANIFEST, atomic_write_text

DECISIONS = ("accepted", "rejected", "corrected")
RATINGS = (1, 2, 3, 4, 5)
LOCK_NAME = ".batch.lock"  # the runner's lock (pantheon.batch.runner.LOCK_NAME)


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _label_outputs(case_dir: Path) -> Dict[str, str]:
    """{output name: file} of the label outputs in a case's result.json."""
    try:
        doc = json.loads((case_dir / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return {name: o["file"] for name, o in (doc.get("outputs") or {}).items()
            if isinstance(o, dict) and o.get("kind") == "labels" and o.get("file")}


def _split_ext(name: str):
    for ext in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot else (name, "")


class ReviewSession:
    """The review of one batch output folder. Only ``done`` cases are reviewed, in manifest order."""

    def __init__(self, batch_dir, reviewer: Optional[str] = None):
        self.dir = Path(batch_dir)
        self.reviewer = reviewer or os.environ.get("USER") or os.environ.get("USERNAME") or ""
        self.doc = self._read()

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict:
        path = self.dir / MANIFEST
        if not path.is_file():
            raise InputError(f"{self.dir} is not a Pantheon batch output folder (it has no {MANIFEST}).")
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"The manifest {path} cannot be read ({exc}).") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InputError(f"{path} is not a Pantheon batch manifest.")
        return doc

    def refresh(self) -> None:
        self.doc = self._read()

    @property
    def pipeline(self) -> str:
        return str(self.doc.get("pipeline") or "")

    def cases(self) -> List[dict]:
        """The reviewable (done) cases, in manifest order."""
        return [c for c in self.doc.get("cases", []) if c.get("state") == "done"]

    def case(self, case_id: str) -> dict:
        for c in self.doc.get("cases", []):
            if c.get("case_id") == case_id:
                if c.get("state") != "done":
                    raise InputError(f"Case {case_id} is {c.get('state')}, not done: there is nothing to review.")
                return c
        raise InputError(f"The batch in {self.dir} has no case {case_id!r}.")

    def next_unreviewed(self, after: Optional[str] = None) -> Optional[str]:
        """The first done case without a review (after ``after`` in manifest order, wrapping round)."""
        ids = [c["case_id"] for c in self.cases()]
        start = ids.index(after) + 1 if after in ids else 0
        for cid in ids[start:] + ids[:start]:
            if not self.case(cid).get("review"):
                return cid
        return None

    def neighbour(self, case_id: str, step: int) -> Optional[str]:
        """The done case ``step`` places from ``case_id`` (None past either end)."""
        ids = [c["case_id"] for c in self.cases()]
        if case_id not in ids:
            return ids[0] if ids else None
        k = ids.index(case_id) + step
        return ids[k] if 0 <= k < len(ids) else None

    def status(self) -> Dict[str, int]:
        out = {"cases": 0, "unreviewed": 0, **{d: 0 for d in DECISIONS}}
        for c in self.cases():
            out["cases"] += 1
            r = c.get("review") or {}
            out[r.get("decision", "unreviewed")] = out.get(r.get("decision", "unreviewed"), 0) + 1
        return out

    def files(self, case_id: str) -> dict:
        """What a reviewer loads: ``input`` (path), ``labels`` {name: path}, ``heatmaps`` {name: path},
        ``volumes`` {name: path}, ``corrected`` [paths] (absolute)."""
        c = self.case(case_id)
        folder = self.dir / case_id
        out = {"input": c.get("input"), "labels": {}, "heatmaps": {}, "volumes": {}, "corrected": []}
        try:
            doc = json.loads((folder / "result.json").read_text())
        except (OSError, ValueError):
            doc = {}
        for name, o in (doc.get("outputs") or {}).items():
            kind = {"labels": "labels", "heatmap": "heatmaps", "volume": "volumes"}.get(o.get("kind"))
            if kind and o.get("file"):
                out[kind][name] = str(folder / o["file"])
        out["corrected"] = [str(self.dir / p) for p in (c.get("review") or {}).get("corrected") or []]
        return out

    # ------------------------------------------------------------------ writing
    def record(self, case_id: str, decision: str, rating: Optional[int] = None, comment: str = "",
               corrected=None) -> dict:
        """Record a decision for ``case_id``; returns its review entry. ``corrected``: for
        "corrected", {output name: Volume or file path} of corrected label maps (written beside
        the originals, never over them)."""
        from ..outputs import FileLock
        if decision not in DECISIONS:
            raise InputError(f"The decision must be one of {', '.join(DECISIONS)}, not {decision!r}.")
        if rating is not None and rating not in RATINGS:
            raise InputError(f"The rating must be a whole number from 1 to 5, not {rating!r}.")
        if decision == "corrected" and not corrected:
            raise InputError("A 'corrected' decision needs the corrected segmentation.")
        if decision != "corrected" and corrected:
            raise InputError(f"Corrected segmentations go with the decision 'corrected', not {decision!r}.")
        lock = FileLock(self.dir / LOCK_NAME, busy=f"A batch is writing to {self.dir}; review when it has finished.")
        lock.acquire()
        try:
            self.refresh()  # under the lock: another reviewer's or the batch's latest state
            c = self.case(case_id)
            written: List[Path] = []
            try:
                written = self._write_corrected(case_id, corrected, written) if corrected else []
                entry = {"decision": decision, "rating": rating, "comment": str(comment or ""),
                         "reviewer": self.reviewer, "reviewed": _now(),
                         "corrected": [str(p.relative_to(self.dir)) for p in written]}
                old = c.get("review")
                if old:
                    entry["history"] = list(old.get("history") or []) + [
                        {k: v for k, v in old.items() if k != "history"}]
                c["review"] = entry
                self._save_manifest()
            except BaseException:
                for p in written:  # a decision not recorded leaves no corrected file behind
                    p.unlink(missing_ok=True)
                self.refresh()
                raise
            self._save_reports()  # derived from the manifest: a failure here loses nothing
        finally:
            lock.release()
        return entry

    def _write_corrected(self, case_id: str, corrected, out: List[Path]) -> List[Path]:
        """Write the corrected label maps, appending each file to ``out`` as soon as it exists."""
        from ..io import read_volume, write_volume
        folder = self.dir / case_id
        originals = _label_outputs(folder)
        ref = None
        for name, value in dict(corrected).items():
            base = originals.get(name) or f"{name}.nii.gz"
            stem, ext = _split_ext(base)
            if ext in (".seg.nrrd", ""):
                ext = ".nii.gz"
            n, path = 1, folder / f"{stem}.corrected{ext}"
            while path.exists():  # never over an earlier correction
                n += 1
                path = folder / f"{stem}.corrected-{n}{ext}"
            vol = read_volume(value) if isinstance(value, (str, Path)) else value
            if ref is None:  # the case's image: a correction lands on its voxels, as the outputs do
                ref = read_volume(self.case(case_id)["input"])
            if vol.shape != ref.shape or not vol.same_geometry(ref, atol=1e-3):
                raise InputError(f"The corrected {name} is not on the grid of case {case_id}'s image; correct it "
                                 "on the case's own image.")
            write_volume(vol, path)  # atomic itself
            out.append(path)
        return out

    def _save_manifest(self) -> None:
        from ..outputs import json_safe
        self.doc["updated"] = _now()
        atomic_write_text(self.dir / MANIFEST, json.dumps(json_safe(self.doc), indent=1) + "\n")

    def _save_reports(self) -> None:
        from .report import write_index_html, write_summary_csv
        cases = self.doc.get("cases", [])
        counts: Dict[str, int] = {}
        for c in cases:
            counts[c.get("state", "")] = counts.get(c.get("state", ""), 0) + 1
        write_summary_csv(self.dir, cases)
        write_index_html(self.dir, cases, self.pipeline, counts)

    # ------------------------------------------------------------------ export
    def export(self, out_dir, decisions: Sequence[str] = ("accepted", "corrected"), label: Optional[str] = None,
               fmt: str = "nii.gz") -> List[dict]:
        """Write the reviewed cases with ``decisions`` as ``images/<case>.<fmt>`` and
        ``labels/<case>.<fmt>`` (the corrected label map when there is one, else the batch's own) plus
        ``cases.csv`` (image, label, case_id, decision, rating) into ``out_dir`` (staged: all or
        nothing). ``label``: which label output, when the pipeline writes several."""
        from ..io import read_volume, write_volume
        from ..outputs import staged_output
        bad = [d for d in decisions if d not in DECISIONS]
        if bad:
            raise InputError(f"Unknown decision {bad[0]!r}; choose from {', '.join(DECISIONS)}.")
        chosen = [c for c in self.cases() if (c.get("review") or {}).get("decision") in decisions]
        if not chosen:
            raise InputError(f"No case in {self.dir} is {' or '.join(decisions)} yet: review some first.")
        rows, plan = [], []
        for c in chosen:
            cid, review = c["case_id"], c["review"]
            if review.get("corrected"):
                label_file = self.dir / review["corrected"][-1]
            else:
                labels = _label_outputs(self.dir / cid)
                if label:
                    if label not in labels:
                        raise InputError(f"Case {cid} has no label output {label!r} (it has "
                                         f"{', '.join(sorted(labels)) or 'none'}).")
                    label_file = self.dir / cid / labels[label]
                elif len(labels) == 1:
                    label_file = self.dir / cid / next(iter(labels.values()))
                elif not labels:
                    raise InputError(f"Case {cid} has no label output (the {self.pipeline} batch writes maps); "
                                     "correct it with a segmentation to export it, or export only 'corrected'.")
                else:
                    raise InputError(f"Case {cid} has several label outputs ({', '.join(sorted(labels))}); "
                                     "choose one with --label.")
            plan.append((cid, c["input"], label_file, review))
        with staged_output(out_dir) as stage:
            (stage / "images").mkdir()
            (stage / "labels").mkdir()
            for cid, image, label_file, review in plan:
                name = re.sub(r"[^A-Za-z0-9._-]", "_", cid) + f".{fmt}"
                write_volume(read_volume(image), stage / "images" / name)
                write_volume(read_volume(label_file), stage / "labels" / name)
                rows.append({"image": f"images/{name}", "label": f"labels/{name}", "case_id": cid,
                             "decision": review["decision"], "rating": review.get("rating") or ""})
            import csv
            import io
            buf = io.StringIO()
            w = csv.DictWriter(buf, ["image", "label", "case_id", "decision", "rating"], lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            (stage / "cases.csv").write_text(buf.getvalue(), encoding="utf-8")
        return rows


def check_export_target(out_dir) -> None:
    """Refuse an export folder that already holds files (a training set is never mixed with another)."""
    p = Path(out_dir)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise PantheonError(f"The export folder {p} is not empty; choose a new folder.")
