"""Which cases a batch input names: a folder or a CSV.

- Folder: every top-level image file with a supported extension (NIfTI, NRRD, MHA/MHD, PNG...)
  is a case named after its stem (``ct01.nii.gz`` -> ``ct01``); every subfolder is a DICOM-series
  case named after the folder; loose ``.dcm`` files at the top make one series case named after
  the input folder. Hidden entries and other files (``.csv``, ``.txt``, ``.json``...) are ignored.
  Whether a file really is a usable image is found out when the case runs (it then fails alone).
- CSV: a column ``image`` (path, relative to the CSV's folder unless absolute) and optionally
  ``case_id``.

Case ids are made file-name safe (letters, digits, ``._-``; anything else becomes ``_``). Two
files with the same stem get the extension appended (``ct01`` and ``ct01-nrrd``); duplicate ids
in a CSV are an error.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List

from ..errors import PantheonError
from ..io.readers import SUPPORTED_EXTENSIONS, file_extension


@dataclass(frozen=True)
class Case:
    case_id: str
    input: str  # absolute path


def safe_id(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return s or "case"


def _stem(p: Path) -> str:
    ext = file_extension(p)
    return p.name[: -len(ext)] if ext and p.name.lower().endswith(ext) else p.stem


def discover_cases(source) -> List[Case]:
    src = Path(source).expanduser()
    if not src.exists():
        raise PantheonError(f"The batch input {src} does not exist.")
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise PantheonError(f"The batch input {src} must be a folder or a CSV file with an 'image' column.")
        return _from_csv(src)
    cases: List[Case] = []
    used = set()
    entries = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    loose_dicom = [p for p in entries if p.is_file() and file_extension(p) == ".dcm"]
    if loose_dicom:
        cid = safe_id(src.resolve().name)
        cases.append(Case(cid, str(src.resolve())))
        used.add(cid)
    for p in entries:
        if p.is_dir():
            cid = safe_id(p.name)
        elif file_extension(p) in SUPPORTED_EXTENSIONS and file_extension(p) != ".dcm":
            cid = safe_id(_stem(p))
        else:
            continue
        if cid in used:
            cid = safe_id(f"{cid}-{file_extension(p).lstrip('.').replace('.', '')}") if p.is_file() else cid
        n = 2
        base = cid
        while cid in used:
            cid, n = f"{base}-{n}", n + 1
        used.add(cid)
        cases.append(Case(cid, str(p.resolve())))
    if not cases:
        raise PantheonError(f"No images found in {src} (supported: {', '.join(SUPPORTED_EXTENSIONS)} "
                            "or DICOM series subfolders).")
    return cases


def _from_csv(path: Path) -> List[Case]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "image" not in reader.fieldnames:
            raise PantheonError(f"The CSV {path} needs a column named 'image' (and optionally 'case_id').")
        rows = [r for r in reader if (r.get("image") or "").strip()]
    if not rows:
        raise PantheonError(f"The CSV {path} lists no images.")
    cases, seen = [], set()
    for r in rows:
        img = Path(r["image"].strip()).expanduser()
        if not img.is_absolute():
            img = path.parent / img
        cid = safe_id((r.get("case_id") or "").strip() or _stem(img))
        if cid in seen:
            raise PantheonError(f"The CSV {path} lists case id {cid!r} twice; give each row a unique case_id.")
        seen.add(cid)
        cases.append(Case(cid, str(img.resolve())))
    return cases
