r"""The batch manifest, ``<output>/manifest.json``: the one record of what happened to each case.

Only the batch's parent process writes it, atomically (temporary file, then ``os.replace``),
after every state change, so a kill at any moment leaves the previous or the next consistent
version. Layout::

    {"format": "pantheon-batch-manifest", "version": 1,
     "pipeline": "nemesis-organs", "options": {...}, "created": ISO time, "updated": ISO time,
     "cases": [
       {"case_id": "ct01", "input": "/abs/ct01.nii.gz", "state": "done",   # pending|running|done|failed
        "attempts": 1, "error": null, "started": ISO, "finished": ISO,
        "seconds": 1.9, "pipeline_seconds": 0.1, "outputs": ["ct01/liver.nii.gz", ...],
        "findings": {"max_liver": 0.97, ...}, "log": "logs/ct01.log",
        "history": [{"attempt": 1, "state": "done", "started": ISO, "finished": ISO, "pid": 123,
                     "error": null}]}, ...]}

State machine (per case)::

    pending --start--> running --ok--> done
                          |  \--error--> failed
    rerun: running (unfinished: the batch was killed) -> pending, its history entry marked
    "interrupted" -- unless its case folder is complete for that attempt (the parent was
    killed between moving the folder into place and recording it), then -> done;
    failed -> pending (unless retry_failed=False); done whose folder is gone -> pending.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import PantheonError
from ..io.atomic import write_text_atomic
from ..outputs import json_safe

MANIFEST = "manifest.json"
FORMAT = "pantheon-batch-manifest"
STATES = ("pending", "running", "done", "failed")


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


def atomic_write_text(path, text: str) -> Path:
    """The manifest and reports (:mod:`.report`): 0644 whatever the umask, they are shared reports."""
    return write_text_atomic(path, text, mode=0o644)


class Manifest:
    def __init__(self, output, pipeline: str, options: dict):
        self.path = Path(output) / MANIFEST
        self.pipeline = pipeline
        self.options = dict(options)
        self.created = now()
        self.cases: Dict[str, dict] = {}

    @classmethod
    def open(cls, output, pipeline: str, options: dict) -> "Manifest":
        m = cls(output, pipeline, options)
        if m.path.is_file():
            try:
                doc = json.loads(m.path.read_text())
            except ValueError as exc:
                raise PantheonError(f"The manifest {m.path} is unreadable ({exc}); move it away to start afresh.")
            if doc.get("format") != FORMAT:
                raise PantheonError(f"{m.path} is not a Pantheon batch manifest.")
            if doc.get("pipeline") != pipeline:
                raise PantheonError(f"The output folder holds a '{doc.get('pipeline')}' batch; use another folder "
                                    f"for '{pipeline}'.")
            old = doc.get("options") or {}
            diff = sorted(k for k in set(old) | set(options) if old.get(k) != json_safe(options.get(k)))
            if diff:
                raise PantheonError(f"The output folder was made with other options ({', '.join(diff)}); "
                                    "use the same options or another folder.")
            m.created = doc.get("created") or m.created
            m.cases = {c["case_id"]: c for c in doc.get("cases", [])}
        return m

    @staticmethod
    def new_case(case_id: str, input_path: str) -> dict:
        return {"case_id": case_id, "input": input_path, "state": "pending", "attempts": 0, "error": None,
                "started": None, "finished": None, "seconds": None, "pipeline_seconds": None, "outputs": [],
                "findings": {}, "log": f"logs/{case_id}.log", "history": []}

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "pipeline": self.pipeline, "options": self.options,
                "created": self.created, "updated": now(), "cases": list(self.cases.values())}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(json_safe(self.to_json()), indent=1) + "\n")

    # ------------------------------------------------------------------ transitions
    def start(self, case_id: str) -> int:
        c = self.cases[case_id]
        c["state"], c["attempts"], c["error"] = "running", c["attempts"] + 1, None
        c["started"], c["finished"], c["seconds"] = now(), None, None
        c["history"].append({"attempt": c["attempts"], "state": "running", "started": c["started"],
                             "finished": None, "pid": None, "error": None})
        self.save()
        return c["attempts"]

    def finish(self, case_id: str, state: str, error: Optional[str] = None, **fields) -> None:
        assert state in ("done", "failed", "pending")
        c = self.cases[case_id]
        c["state"], c["error"], c["finished"] = state, error, now()
        for k, v in fields.items():
            c[k] = v
        if c["history"]:
            h = c["history"][-1]
            h.update(state=state if state != "pending" else "interrupted", finished=c["finished"], error=error,
                     pid=fields.get("pid", h.get("pid")))
        self.save()

    def counts(self) -> Dict[str, int]:
        out = {s: 0 for s in STATES}
        for c in self.cases.values():
            out[c["state"]] = out.get(c["state"], 0) + 1
        return out

    def ordered(self, ids: List[str]) -> List[dict]:
        return [self.cases[i] for i in ids if i in self.cases]
