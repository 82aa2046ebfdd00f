"""(image, label map) pairs a user brings for training: a folder with ``images/`` and ``labels/``
holding the same file names (DICOM series as same-named subfolders), or a CSV with ``image`` and
``label`` columns (paths relative to the CSV). The layout ``pantheon review export`` writes and
every trainer's ``--data`` reads."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import InputError


def pair_paths(source) -> List[Tuple[Path, Path]]:
    """The (image, label) paths of ``source``; InputError in one sentence when it is neither
    layout, a label is missing, or there is nothing in it."""
    data = Path(source)
    if data.is_file() and data.suffix.lower() == ".csv":
        try:
            with open(data, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = [c.strip() for c in reader.fieldnames or []]
                if not {"image", "label"} <= set(columns):
                    raise InputError(f"The CSV {data} needs 'image' and 'label' columns; it has "
                                     f"{', '.join(repr(c) for c in columns) or 'none'}.")
                rows = [(data.parent / (r.get("image") or "").strip(), data.parent / (r.get("label") or "").strip())
                        for r in reader if (r.get("image") or "").strip()]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"The CSV {data} cannot be read ({exc}).") from None
    elif data.is_dir():
        for sub in ("images", "labels"):
            if not (data / sub).is_dir():
                raise InputError(f"--data {data} has no {sub}/ folder; give a folder with images/ and labels/ "
                                 "(the same file names in both) or a CSV with image,label columns.")
        images = sorted(p for p in (data / "images").iterdir() if not p.name.startswith("."))
        rows = [(p, data / "labels" / p.name) for p in images]
    else:
        raise InputError(f"--data {data} is neither a folder (images/ and labels/) nor a .csv file.")
    missing = [str(lab) for _, lab in rows if not lab.exists()]
    if missing:
        raise InputError(f"No label map for {len(missing)} image(s), e.g. {missing[0]}.")
    if not rows:
        raise InputError(f"No cases found in {data}.")
    return rows


def read_pairs(source, max_pixels: Optional[int] = None):
    """The pairs of ``source`` read as Volumes, each label map checked to be on its image's grid."""
    from ..io import read_volume
    from ..io.validate import describe_geometry_mismatch
    out = []
    for image, label in pair_paths(source):
        img, lab = read_volume(image, max_pixels=max_pixels), read_volume(label, max_pixels=max_pixels)
        if img.shape != lab.shape or not img.same_geometry(lab, atol=1e-3):
            how = describe_geometry_mismatch(lab, img, "the label map", "the image")
            raise InputError(f"The label map {label.name} is not on the grid of its image {image.name} "
                             f"({how or 'shape, spacing, origin or direction differ'}).")
        out.append((img, lab))
    return out
