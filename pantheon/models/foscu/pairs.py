"""N new (MR volume, label map) pairs into a folder: Duo-Diffusion's label generator samples the
anatomy, 3D-LLDM synthesises the volume for it (see :mod:`pantheon.models.foscu`).

The folder is what every trainer's ``--data`` reads (:mod:`pantheon.data.pairs`): ``images/`` and
``labels/`` with the same names (``pair-00000.nii.gz``; the labels also as ``.seg.nrrd`` with segment
names and colours for Slicer), ``cases.csv`` (image, label, case id, seed) and ``index.html`` with a
thumbnail per pair. Pair ``n`` comes from seed ``seed + n`` alone, and each file is written
atomically, so an interrupted run, rerun with the same command, adds the missing pairs and produces
the folder an uninterrupted run would have.

Geometry: the model grid of 3D-LLDM (closest-RAS axes, :data:`~pantheon.models.lldm.synthesis.MODEL_SPACING`
mm), centred on the world origin. Intensities on 3D-LLDM's [0, 1] scale.
"""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import List

import numpy as np

from ...errors import InputError
from ...io.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from ...io.volume import Volume
from ...progress import Reporter

CASE = "pair-{:05d}"


def _grid_volume(array: np.ndarray) -> Volume:
    from ..lldm.synthesis import MODEL_SPACING
    spacing = np.array(MODEL_SPACING, dtype=np.float64)
    direction = np.diag([-1.0, -1.0, 1.0])  # i to the right, j anterior, k superior, in LPS coordinates
    size_ijk = np.array(array.shape[::-1], dtype=np.float64)
    origin = -direction @ (spacing * (size_ijk - 1) / 2.0)
    return Volume(array, tuple(spacing), tuple(origin), direction)


def thumbnail_png(image: Volume, labels: Volume) -> bytes:
    """Axial and coronal slices through the liver's centre: the volume, and the volume with the labels
    outlined (liver, portal vein, hepatic veins, HCC in their colours), 4x enlarged."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.image import imsave
    from scipy import ndimage

    from ...anatomy import HCC_COLORS, HCC_LABELS
    from ...preview import display_slices, resize_nearest
    liver = np.argwhere(labels.array == 1)
    centre = (labels.ijk_to_world(liver.mean(0)[::-1][None])[0] if len(liver) else None)
    imgs, aspects = display_slices(image, centre)
    labs, _ = display_slices(labels, centre)
    rows = []
    for img, lab, aspect in zip(imgs, labs, aspects):
        width = 4 * img.shape[1]
        gray = resize_nearest(np.repeat(np.clip(img.astype(np.float32), 0, 1)[..., None], 3, -1), aspect, width)
        lab = resize_nearest(lab, aspect, width)
        over = gray.copy()
        for value, name in HCC_LABELS.items():  # outlines, 2 px: the image stays readable under them
            m = lab == value
            if value and m.any():
                edge = m & ~ndimage.binary_erosion(m, iterations=2)
                over[edge] = HCC_COLORS[name]
        gap = np.ones((gray.shape[0], 4, 3))
        rows.append(np.concatenate([gray, gap, over], 1))
    sep = np.ones((4, rows[0].shape[1], 3))
    canvas = np.concatenate([rows[0], sep, rows[1]], 0)
    buf = io.BytesIO()
    imsave(buf, (np.clip(canvas, 0, 1) * 255).astype(np.uint8), format="png")
    return buf.getvalue()


def _done(out: Path, case: str) -> bool:
    return all((out / sub / f"{case}{ext}").is_file() for sub, ext in
               (("images", ".nii.gz"), ("labels", ".nii.gz"), ("labels", ".seg.nrrd"), ("thumbnails", ".png")))


def _flag(row: dict) -> str:
    problem = row.get("anatomy_problem")
    return f'<br><b style="color:#b00">anatomy check failed: {html.escape(problem)}</b>' if problem else ""


def _write_index(out: Path, rows: List[dict], notes: dict) -> None:
    from ...anatomy import HCC_COLORS
    legend = " ".join(f'<span style="background:rgb({",".join(str(int(255 * c)) for c in col)});padding:0 6px">'
                      f"{html.escape(name.replace('_', ' '))}</span>" for name, col in HCC_COLORS.items())
    cells = "\n".join(
        f'<figure><img src="thumbnails/{r["case_id"]}.png" alt="{r["case_id"]}"><figcaption>{r["case_id"]} '
        f'(seed {r["seed"]}): liver {float(r["liver_ml"]):.0f} ml, vessels {float(r["vessels_ml"]):.0f} ml, '
        f'{r["hcc_count"]} HCC, '
        f'{float(r["hcc_ml"]):.1f} ml{_flag(r)}</figcaption></figure>' for r in rows)
    page = (f"<!doctype html><meta charset=utf-8><title>Synthetic pairs</title>"
            f"<style>body{{font-family:sans-serif}}figure{{display:inline-block;margin:6px}}</style>"
            f"<h1>{len(rows)} synthetic (MR volume, label map) pairs</h1>"
            f"<p>{html.escape(notes.get('warning', ''))} {html.escape(notes.get('how', ''))}</p>"
            f"<p>Each thumbnail: axial (top) and coronal (bottom) through the liver; left the synthetic volume, "
            f"right with the labels outlined: {legend}</p>\n{cells}\n")
    write_text_atomic(out / "index.html", page)


def _read_checks(out: Path) -> dict:
    """case id -> {"draws", "problem"} from an existing cases.csv (empty when none)."""
    try:
        with open(out / "cases.csv", newline="", encoding="utf-8") as f:
            return {r["case_id"]: {"draws": int(r["label_draws"]) if r.get("label_draws") else "",
                                   "problem": r.get("anatomy_problem") or ""} for r in csv.DictReader(f)}
    except (OSError, KeyError, ValueError):
        return {}


def generate_pairs(n: int, out_dir, labelgen, lldm, seed: int = 0, label_steps: int = 50, image_steps: int = 50,
                   progress=None, cancel=None, demo: bool = False) -> dict:
    """Write pairs ``0 .. n-1`` into ``out_dir`` (missing ones only); returns a summary."""
    import torch

    from ...io import read_volume, write_volume
    from ...io.segnrrd import write_seg_nrrd
    from ...results import LabelOutput
    from ..lldm.synthesis import label_segments, one_hot
    from .labelgen import MAX_DRAWS, hcc_count, sample_checked
    rep = Reporter(progress, cancel)
    if int(n) < 1:
        raise InputError(f"Generate at least one pair, got {n}.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder.")
    for sub in ("images", "labels", "thumbnails"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows, made = [], 0
    checks = _read_checks(out)  # anatomy-check draws of the pairs made by an earlier run
    voxel_ml = float(np.prod(_grid_volume(np.zeros((1, 1, 1))).spacing)) / 1000.0
    for i in range(int(n)):
        case, s = CASE.format(i), int(seed) + i
        span = rep.sub(i / n, (i + 1) / n)
        if not _done(out, case):
            lab, g, draws, problem = sample_checked(labelgen, s, label_steps, voxel_ml, span.sub(0.0, 0.3), cancel)
            checks[case] = {"draws": draws, "problem": problem or ""}
            masks = one_hot(lab).to(lldm.scale_factor.device)
            with torch.inference_mode():
                img = lldm.generate(masks, labels=None, num_inference_steps=image_steps, generator=g,
                                    progress=span.sub(0.3, 0.95), cancel=cancel)[0, 0].clamp(0, 1).cpu().numpy()
            labels, image = _grid_volume(lab), _grid_volume(img.astype(np.float32))
            # each write is atomic (write_volume, write_seg_nrrd, write_bytes_atomic)
            write_volume(image, out / "images" / f"{case}.nii.gz")
            write_seg_nrrd(LabelOutput(labels, label_segments()), out / "labels" / f"{case}.seg.nrrd")
            write_bytes_atomic(out / "thumbnails" / f"{case}.png", thumbnail_png(image, labels))
            write_volume(labels, out / "labels" / f"{case}.nii.gz")  # last: it marks the pair done
            made += 1
        lab = read_volume(out / "labels" / f"{case}.nii.gz").array
        rows.append({"image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz", "case_id": case, "seed": s,
                     "liver_ml": round(float((lab == 1).sum() * voxel_ml), 1),
                     "vessels_ml": round(float(np.isin(lab, (2, 3)).sum() * voxel_ml), 1), "hcc_count": hcc_count(lab),
                     "hcc_ml": round(float((lab == 4).sum() * voxel_ml), 2),
                     "label_draws": checks.get(case, {}).get("draws", ""),
                     "anatomy_problem": checks.get(case, {}).get("problem", "")})
        with atomic_path(out / "cases.csv") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        span(1.0, f"Pair {i + 1}/{n}")
    notes = {"how": f"Label maps sampled by the Duo-Diffusion label generator ({label_steps} DDIM steps), volumes by "
                    f"3D-LLDM ({image_steps} DDIM steps); pair n from seed {seed} + n."}
    if labelgen.anatomy_limits:
        lo, hi = (v * voxel_ml for v in labelgen.anatomy_limits["liver_voxels"])
        notes["how"] += (f" Anatomy check: a map whose liver lies outside the training maps' {lo:.0f}-{hi:.0f} ml "
                         f"or with more than {labelgen.anatomy_limits['hcc_count_max']} HCCs"
                         + (" or with vessels outside the training maps' {:.2f}-{:.2f} % of the liver".format(
                             *(100 * v for v in labelgen.anatomy_limits["vessel_share"]))
                            if labelgen.anatomy_limits.get("vessel_share") else "")
                         + f" is drawn again (up to {MAX_DRAWS} draws; label_draws in cases.csv).")
    if demo:
        notes["warning"] = "Demo weights trained on synthetic phantoms: research and tests only."
    _write_index(out, rows, notes)
    rep(1.0, "Done")
    flagged = sum(bool(r["anatomy_problem"]) for r in rows)
    return {"folder": str(out), "pairs": len(rows), "made_now": made, "csv": str(out / "cases.csv"),
            "anatomy_flagged": flagged}
