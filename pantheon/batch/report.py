"""End-of-batch reports: ``summary.csv``, ``index.html`` (both atomic) and per-case thumbnails."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import List

import numpy as np

from ..preview import resize_nearest
from .manifest import atomic_write_text

WINDOW = (-175.0, 250.0)


def save_thumbnail(source, main_map, path) -> Path:
    """Axial mid-slice of ``source`` (radiological view) with ``main_map`` overlaid, as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import colormaps
    from matplotlib.image import imsave

    from ..preview import display_slices
    slices, aspects = display_slices(source)
    base = slices[0].astype(np.float32)
    if base.ndim == 3:
        base = base.mean(-1)
    gray = np.clip((base - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1)
    rgb = np.repeat(gray[..., None], 3, -1)
    if main_map is not None:
        _name, vol, cmap, vrange = main_map
        over = display_slices(vol)[0][0].astype(np.float32)
        if cmap == "rgb":
            rgb = 0.4 * rgb + 0.6 * np.clip(over, 0, 1)
        else:
            lo, hi = float(vrange[0]), float(vrange[1])
            t = np.clip((over - lo) / max(hi - lo, 1e-8), 0, 1)
            colors = colormaps["tab20" if cmap == "labels" else cmap](t)[..., :3]
            alpha = (0.55 * (t > 0.02))[..., None] if cmap != "labels" else (0.5 * (over > 0))[..., None]
            rgb = (1 - alpha) * rgb + alpha * colors
    img = resize_nearest(np.clip(rgb, 0, 1), aspects[0])
    path = Path(path)
    imsave(str(path), (img * 255).astype(np.uint8), format="png")
    return path


def finding_columns(cases: List[dict]) -> List[str]:
    cols: List[str] = []
    for c in cases:
        for k in (c.get("findings") or {}):
            if k not in cols:
                cols.append(k)
    return cols


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _reviewed(cases: List[dict]) -> bool:
    return any(c.get("review") for c in cases)


def _review_cells(c: dict) -> List[str]:
    """review (decision, or 'unreviewed' for a done case), rating, comment, corrected files."""
    r = c.get("review") or {}
    decision = r.get("decision") or ("unreviewed" if c.get("state") == "done" else "")
    return [decision, _fmt(r.get("rating")), r.get("comment") or "", " ".join(r.get("corrected") or [])]


REVIEW_COLUMNS = ["review", "rating", "review_comment", "corrected"]


def write_summary_csv(out_dir, cases: List[dict]) -> Path:
    """One row per case; once any case is reviewed, the review columns come last."""
    cols = finding_columns(cases)
    review = _reviewed(cases)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case_id", "state", "seconds", "pipeline_seconds", "attempts", *cols, "error", "input"]
               + (REVIEW_COLUMNS if review else []))
    for c in cases:
        f = c.get("findings") or {}
        w.writerow([c["case_id"], c["state"], _fmt(c.get("seconds")), _fmt(c.get("pipeline_seconds")),
                    c.get("attempts", 0), *[_fmt(f.get(k)) for k in cols], c.get("error") or "", c["input"]]
                   + (_review_cells(c) if review else []))
    return atomic_write_text(Path(out_dir) / "summary.csv", buf.getvalue())


def write_index_html(out_dir, cases: List[dict], pipeline: str, counts: dict) -> Path:
    out_dir = Path(out_dir)
    cols = finding_columns(cases)
    review = _reviewed(cases)
    e = html.escape
    rows = []
    for c in cases:
        cid = c["case_id"]
        thumb = f"{cid}/thumbnail.png"
        pic = (f'<a href="{e(cid)}/"><img src="{e(thumb)}" alt="{e(cid)}"></a>'
               if c["state"] == "done" and (out_dir / thumb).is_file() else "")
        f = c.get("findings") or {}
        links = " ".join(f'<a href="{e(cid)}/{e(o)}">{e(o)}</a>'
                         for o in c.get("outputs") or [] if o != "thumbnail.png")
        links += "".join(f' <a href="{e(p)}">{e(p.split("/")[-1])}</a>'
                         for p in (c.get("review") or {}).get("corrected") or [])
        rows.append(f'<tr class="{e(c["state"])}"><td>{pic}</td><td>{e(cid)}</td><td>{e(c["state"])}</td>'
                    f'<td>{e(_fmt(c.get("seconds")))}</td>'
                    + "".join(f"<td>{e(_fmt(f.get(k)))}</td>" for k in cols)
                    + f'<td>{e(c.get("error") or "")}</td>'
                    + ("".join(f"<td>{e(v)}</td>" for v in _review_cells(c)[:3]) if review else "")
                    + f'<td><a href="{e(c.get("log") or "")}">log</a> {links}</td></tr>')
    head = "".join(f"<th>{e(k)}</th>" for k in ["preview", "case", "state", "seconds", *cols, "error"]
                   + (["review", "rating", "comment"] if review else []) + ["files"])
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if review:
        done = [c for c in cases if c.get("state") == "done"]
        tally: dict = {}
        for c in done:
            d = _review_cells(c)[0]
            tally[d] = tally.get(d, 0) + 1
        summary += "; review: " + ", ".join(f"{n} {d}" for d, n in sorted(tally.items()))
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Pantheon batch: {e(pipeline)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px;
font-size:12px}} tr.failed{{background:#fdd}} tr.pending,tr.running{{background:#ffd}} img{{display:block}}</style>
</head><body><h1>Pantheon batch: {e(pipeline)}</h1><p>{e(summary)} &middot; <a href="summary.csv">summary.csv</a>
&middot; <a href="manifest.json">manifest.json</a></p>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    return atomic_write_text(out_dir / "index.html", doc)
