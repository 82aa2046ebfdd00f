"""DENTEX (MICCAI 2023) COCO-style annotations -> per-image tooth records with FDI numbers.

Format read (https://github.com/ibrahimethemhamamci/DENTEX; ``train_quadrant_enumeration*.json``)
------------------------------------------------------------------------------------------------
- ``images``: ``{"id", "file_name", "height", "width"}``.
- ``annotations``: ``{"id", "image_id", "bbox": [x, y, w, h], "segmentation": [[x0, y0, x1, y1,
  ...], ...], "category_id_1", "category_id_2"?, "category_id_3"?}``. ``category_id_1`` is the
  quadrant, ``category_id_2`` the tooth (1 central incisor ... 8 third molar), ``category_id_3``
  the diagnosis. The released files use **0-based ids** whose category ``name`` is the number
  ("1".."4", "1".."8"); the quadrant / tooth number is taken from the name when it is an integer,
  else ``id + 1``. FDI = 10 * quadrant + tooth (quadrants 5-8 are accepted for primary teeth).
- ``categories_1`` / ``categories_2`` / ``categories_3``: ``{"id", "name"}`` lists; diagnoses
  are commonly 0 Impacted, 1 Caries, 2 Periapical Lesion, 3 Deep Caries; the names in the file
  are what is reported.
- Plain COCO is tolerated: ``categories`` + ``category_id``. A category named by an FDI number
  ("11", "tooth 36") gives ``fdi``; one named like a DENTEX diagnosis becomes a diagnosis; any
  other name is kept as ``category``.

DENTEX annotates one (tooth, diagnosis) per annotation, so a tooth with two findings has two
annotations; with ``merge_same_tooth`` (default) they become one :class:`DentexTooth` whose
``diagnoses`` lists both, box and mask being the union.

Conventions
-----------
- ``box`` = ``(x0, y0, x1, y1)`` = ``(x, y, x + w, y + h)`` in pixel-edge coordinates (floats,
  as in the file): pixel (col c, row r) covers [c, c+1) x [r, r+1).
- Polygons are rasterised by sampling pixel centres (c + 0.5, r + 0.5) with the half-open
  scanline rule (an edge point belongs to the left/top span start, not the end): an axis-aligned
  rectangle with integer corners gives exactly w * h pixels. See :func:`rasterise_polygons`.
- Masks are stored cropped: ``mask`` is a bool array over rows ``mask_origin[1]..`` and columns
  ``mask_origin[0]..`` (integer, clipped to the image); :meth:`DentexTooth.full_mask` pastes it
  into an (height, width) array and :meth:`DentexImage.label_map` gives an FDI-coded map.

Every problem with the file (unreadable JSON, missing keys, unknown category or image ids,
bad boxes, images referenced but absent from ``image_dir``) raises
:class:`pantheon.errors.InputError` naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pantheon.errors import InputError

__all__ = [
    "DIAGNOSIS_NAMES",
    "DentexTooth",
    "DentexImage",
    "read_dentex",
    "rasterise_polygons",
    "quadrant_tooth_to_fdi",
    "load_image",
]

#: Diagnosis names of DENTEX ``categories_3``.
DIAGNOSIS_NAMES = ("Impacted", "Caries", "Periapical Lesion", "Deep Caries")


def quadrant_tooth_to_fdi(quadrant: int, tooth: int) -> int:
    """FDI number from quadrant (1-4 permanent, 5-8 primary) and tooth index (1-8, 1-5)."""
    q, t = int(quadrant), int(tooth)
    if not (1 <= q <= 8) or not (1 <= t <= (8 if q <= 4 else 5)):
        raise ValueError(f"no FDI tooth for quadrant {quadrant}, tooth {tooth}")
    return 10 * q + t


@dataclass
class DentexTooth:
    """One annotated tooth (or object) of an image."""

    fdi: Optional[int]
    quadrant: Optional[int]
    tooth: Optional[int]
    box: Tuple[float, float, float, float]
    diagnoses: List[str] = field(default_factory=list)
    polygons: List[List[float]] = field(default_factory=list)
    mask: Optional[np.ndarray] = None  # bool, cropped; see mask_origin
    mask_origin: Tuple[int, int] = (0, 0)  # (x, y) of mask[0, 0]
    annotation_ids: List[int] = field(default_factory=list)
    category: Optional[str] = None  # plain COCO category name
    extra: Dict[str, object] = field(default_factory=dict)  # other keys of the annotation

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """The mask pasted into an (height, width) bool array (all False without polygons)."""
        out = np.zeros((int(height), int(width)), dtype=bool)
        if self.mask is not None and self.mask.size:
            x0, y0 = self.mask_origin
            h, w = self.mask.shape
            out[y0:y0 + h, x0:x0 + w] = self.mask
        return out


@dataclass
class DentexImage:
    """One image of the file with its teeth."""

    id: int
    file_name: str
    height: int
    width: int
    teeth: List[DentexTooth] = field(default_factory=list)
    path: Optional[str] = None  # resolved image path when ``image_dir`` was given

    def label_map(self) -> np.ndarray:
        """(height, width) uint8 map coded by FDI number (later teeth win on overlap)."""
        out = np.zeros((self.height, self.width), dtype=np.uint8)
        for t in self.teeth:
            if t.fdi is not None and t.mask is not None and t.mask.size:
                x0, y0 = t.mask_origin
                h, w = t.mask.shape
                out[y0:y0 + h, x0:x0 + w][t.mask] = t.fdi
        return out


# ------------------------------------------------------------------------------------------
# rasterisation
# ------------------------------------------------------------------------------------------


def _polygon_rows(poly: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Even-odd scanline fill of one closed polygon (N, 2) on rows y0..y1-1, cols x0..x1-1."""
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    if len(poly) < 3:
        return out
    p0 = poly
    p1 = np.roll(poly, -1, axis=0)
    ya, yb = p0[:, 1], p1[:, 1]
    xa, xb = p0[:, 0], p1[:, 0]
    cols = np.arange(x0, x1) + 0.5
    for r in range(y0, y1):
        yc = r + 0.5
        # half-open rule on y: an edge counts when min(y) <= yc < max(y)
        sel = ((ya <= yc) & (yb > yc)) | ((yb <= yc) & (ya > yc))
        if not sel.any():
            continue
        t = (yc - ya[sel]) / (yb[sel] - ya[sel])
        xs = np.sort(xa[sel] + t * (xb[sel] - xa[sel]))
        row = out[r - y0]
        for a, b in zip(xs[0::2], xs[1::2]):
            row |= (cols >= a) & (cols < b)  # half-open on x too
    return out


def rasterise_polygons(polygons: Sequence[Sequence[float]], height: int, width: int,
                       crop: bool = False):
    """Union of COCO polygons (flat [x0, y0, x1, y1, ...] lists) as a bool mask.

    A pixel (col c, row r) is inside when its centre (c + 0.5, r + 0.5) is inside the polygon
    (even-odd rule, half-open spans, so a shared edge belongs to one side only). Returns the
    (height, width) mask, or with ``crop`` ``(mask_cropped, (x0, y0))`` over the polygons'
    pixel bounding box clipped to the image.
    """
    H, W = int(height), int(width)
    polys = []
    for p in polygons:
        a = np.asarray(p, dtype=np.float64).reshape(-1)
        if a.size % 2 or a.size < 6:
            raise ValueError(f"a polygon needs an even number (>= 6) of coordinates, got {a.size}")
        polys.append(a.reshape(-1, 2))
    if not polys:
        return (np.zeros((0, 0), bool), (0, 0)) if crop else np.zeros((H, W), bool)
    allp = np.concatenate(polys)
    x0 = int(np.clip(np.floor(allp[:, 0].min()), 0, W))
    x1 = int(np.clip(np.ceil(allp[:, 0].max()) + 1, 0, W))
    y0 = int(np.clip(np.floor(allp[:, 1].min()), 0, H))
    y1 = int(np.clip(np.ceil(allp[:, 1].max()) + 1, 0, H))
    m = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
    if m.size:
        for p in polys:
            m |= _polygon_rows(p, y0, y1, x0, x1)
    if crop:
        return m, (x0, y0)
    out = np.zeros((H, W), dtype=bool)
    out[y0:y1, x0:x1] = m
    return out


# ------------------------------------------------------------------------------------------
# reader
# ------------------------------------------------------------------------------------------


def _cid(v):
    """A category id as int when it is an integer (or an integer string); else unchanged."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()):
        return int(v)
    return v


def _number_of(cat: dict) -> int:
    name = str(cat.get("name", "")).strip()
    if re.fullmatch(r"\d+", name):
        return int(name)
    return int(cat["id"]) + 1


def _category_table(doc: dict, key: str, src: str) -> Dict[int, dict]:
    cats = doc.get(key)
    if not isinstance(cats, list):
        raise InputError(f"{src}: '{key}' must be a list of categories")
    table = {}
    for c in cats:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise InputError(f"{src}: every entry of '{key}' needs 'id' and 'name', got {c!r}")
        table[int(c["id"])] = c
    return table


def _fdi_from_name(name: str) -> Optional[int]:
    m = re.search(r"\b([1-8][1-8])\b", name)
    if not m:
        return None
    q, t = int(m.group(1)[0]), int(m.group(1)[1])
    if t > (8 if q <= 4 else 5):
        return None
    return 10 * q + t


def read_dentex(json_path: str, image_dir: Optional[str] = None, rasterise: bool = True,
                merge_same_tooth: bool = True) -> List[DentexImage]:
    """Read a DENTEX (or plain COCO) JSON into per-image records, in the file's image order.

    Args:
        json_path: the annotation file.
        image_dir: when given, every image's ``file_name`` must exist there (else InputError);
            ``DentexImage.path`` is then set.
        rasterise: rasterise segmentation polygons into (cropped) masks.
        merge_same_tooth: merge annotations of one image with the same FDI number (DENTEX has
            one annotation per finding) into one tooth with all diagnoses.
    """
    src = str(json_path)
    try:
        with open(json_path, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{src}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{src}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{src}: the top level must be an object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if key not in doc:
            raise InputError(f"{src}: missing key '{key}'")
        if not isinstance(doc[key], list):
            raise InputError(f"{src}: '{key}' must be a list")

    hierarchical = "categories_1" in doc
    if hierarchical:
        cat1 = _category_table(doc, "categories_1", src)
        cat2 = _category_table(doc, "categories_2", src) if "categories_2" in doc else {}
        cat3 = _category_table(doc, "categories_3", src) if "categories_3" in doc else {}
    else:
        cat = _category_table(doc, "categories", src) if "categories" in doc else {}

    images: Dict[int, DentexImage] = {}
    order: List[int] = []
    for k, im in enumerate(doc["images"]):
        if not isinstance(im, dict):
            raise InputError(f"{src}: images[{k}] is not an object")
        for key in ("id", "file_name", "height", "width"):
            if key not in im:
                raise InputError(f"{src}: images[{k}] misses '{key}'")
        iid = int(im["id"])
        if iid in images:
            raise InputError(f"{src}: duplicate image id {iid}")
        h, w = int(im["height"]), int(im["width"])
        if h <= 0 or w <= 0:
            raise InputError(f"{src}: image {iid} has a non-positive size {h} x {w}")
        path = None
        if image_dir is not None:
            path = os.path.join(image_dir, im["file_name"])
            if not os.path.isfile(path):
                raise InputError(f"{src}: image {iid} '{im['file_name']}' is referenced but absent from {image_dir}")
        images[iid] = DentexImage(id=iid, file_name=str(im["file_name"]), height=h, width=w, path=path)
        order.append(iid)

    known = {"id", "image_id", "bbox", "segmentation", "area", "iscrowd", "category_id",
             "category_id_1", "category_id_2", "category_id_3"}
    for k, ann in enumerate(doc["annotations"]):
        where = f"annotations[{k}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict):
            raise InputError(f"{src}: {where} is not an object")
        for key in ("image_id", "bbox"):
            if key not in ann:
                raise InputError(f"{src}: {where} misses '{key}'")
        iid = ann["image_id"]
        if not isinstance(iid, (int, np.integer)) or int(iid) not in images:
            raise InputError(f"{src}: {where} refers to image id {iid!r}, which is not in 'images'")
        rec = images[int(iid)]
        bb = ann["bbox"]
        if (not isinstance(bb, (list, tuple)) or len(bb) != 4
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in bb)):
            raise InputError(f"{src}: {where} has a bad bbox {bb!r} (need [x, y, w, h])")
        x, y, bw, bh = (float(v) for v in bb)
        if bw < 0 or bh < 0:
            raise InputError(f"{src}: {where} has a negative bbox size {bb!r}")
        box = (x, y, x + bw, y + bh)

        quadrant = tooth = fdi = None
        diagnoses: List[str] = []
        category = None
        if hierarchical:
            if "category_id_1" not in ann:
                raise InputError(f"{src}: {where} misses 'category_id_1' (quadrant)")
            c1 = _cid(ann["category_id_1"])
            if c1 not in cat1:
                raise InputError(f"{src}: {where} has category_id_1 {c1!r}, not an id of 'categories_1'")
            quadrant = _number_of(cat1[c1])
            if "category_id_2" in ann:
                c2 = _cid(ann["category_id_2"])
                if c2 not in cat2:
                    raise InputError(f"{src}: {where} has category_id_2 {c2!r}, not an id of 'categories_2'")
                tooth = _number_of(cat2[c2])
                try:
                    fdi = quadrant_tooth_to_fdi(quadrant, tooth)
                except ValueError as e:
                    raise InputError(f"{src}: {where}: {e}") from None
            if "category_id_3" in ann:
                c3 = _cid(ann["category_id_3"])
                if c3 not in cat3:
                    raise InputError(f"{src}: {where} has category_id_3 {c3!r}, not an id of 'categories_3'")
                diagnoses.append(str(cat3[c3]["name"]))
        else:
            if "category_id" in ann:
                c = _cid(ann["category_id"])
                if c not in cat:
                    raise InputError(f"{src}: {where} has category_id {c!r}, not an id of 'categories'")
                category = str(cat[c]["name"])
                fdi = _fdi_from_name(category)
                if fdi is not None:
                    quadrant, tooth = divmod(fdi, 10)
                elif category.lower() in (d.lower() for d in DIAGNOSIS_NAMES):
                    diagnoses.append(next(d for d in DIAGNOSIS_NAMES if d.lower() == category.lower()))

        seg = ann.get("segmentation") or []
        if isinstance(seg, dict):  # RLE: not supported, keep the box only
            seg = []
        if not isinstance(seg, list) or not all(isinstance(p, (list, tuple)) for p in seg):
            raise InputError(f"{src}: {where} has a segmentation that is not a list of polygons")
        polygons = [[float(v) for v in p] for p in seg]
        mask, origin = None, (0, 0)
        if rasterise and polygons:
            try:
                mask, origin = rasterise_polygons(polygons, rec.height, rec.width, crop=True)
            except ValueError as e:
                raise InputError(f"{src}: {where}: {e}") from None
        extra = {k2: v for k2, v in ann.items() if k2 not in known}
        ann_id = int(ann["id"]) if "id" in ann else k

        if merge_same_tooth and fdi is not None:
            prev = next((t for t in rec.teeth if t.fdi == fdi), None)
            if prev is not None:
                for d in diagnoses:
                    if d not in prev.diagnoses:
                        prev.diagnoses.append(d)
                prev.box = (min(prev.box[0], box[0]), min(prev.box[1], box[1]),
                            max(prev.box[2], box[2]), max(prev.box[3], box[3]))
                prev.polygons.extend(polygons)
                if mask is not None:
                    full = prev.full_mask(rec.height, rec.width) | _paste(mask, origin, rec.height, rec.width)
                    prev.mask, prev.mask_origin = _crop_to(full)
                prev.annotation_ids.append(ann_id)
                prev.extra.update(extra)
                continue
        rec.teeth.append(DentexTooth(fdi=fdi, quadrant=quadrant, tooth=tooth, box=box, diagnoses=diagnoses,
                                     polygons=polygons, mask=mask, mask_origin=origin,
                                     annotation_ids=[ann_id], category=category, extra=extra))
    return [images[i] for i in order]


def _paste(mask, origin, H, W):
    out = np.zeros((H, W), bool)
    x0, y0 = origin
    h, w = mask.shape
    out[y0:y0 + h, x0:x0 + w] = mask
    return out


def _crop_to(full: np.ndarray):
    rows = np.nonzero(full.any(axis=1))[0]
    cols = np.nonzero(full.any(axis=0))[0]
    if rows.size == 0:
        return np.zeros((0, 0), bool), (0, 0)
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return full[y0:y1, x0:x1].copy(), (int(x0), int(y0))


def load_image(record: DentexImage):
    """The record's image as a single-slice :class:`~pantheon.io.volume.Volume` (grayscale).

    Needs ``record.path`` (``read_dentex(..., image_dir=...)``). RGB images are converted to
    luminance; 8- and 16-bit PNGs keep their dtype. Spacing is unknown in DENTEX: (1, 1, 1).
    """
    from PIL import Image

    from pantheon.io.volume import Volume

    if not record.path:
        raise InputError(f"image {record.id} '{record.file_name}': no path; pass image_dir to read_dentex")
    try:
        with Image.open(record.path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im).astype(np.uint16)
            else:
                a = np.asarray(im.convert("L"))
    except OSError as e:
        raise InputError(f"{record.path}: cannot read the image ({e})") from None
    if a.shape != (record.height, record.width):
        raise InputError(f"{record.path}: size {a.shape[1]} x {a.shape[0]} differs from the JSON's "
                         f"{record.width} x {record.height}")
    return Volume(a[None])
