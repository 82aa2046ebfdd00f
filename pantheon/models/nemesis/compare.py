"""Compare across scans with frozen NEMESIS features (arXiv 2604.01612): a point in one CT, its
similarity map in another, and a folder of CTs ranked by their best match to that point.

The query is the token of the first CT nearest the point (token features as
:func:`pantheon.pipelines.nemesis.compute_features` computes them); a target's map is the cosine
similarity of each of its tokens to the query, upsampled onto the target's own voxels, as
:func:`pantheon.pipelines.nemesis.similarity` does within one scan. A target's best match is its most
similar token inside the body (tokens whose 8^3 block is mostly air are left out: air matches air
whatever the query). Hand-written: only the cosine, the arg-max and the table; features, geometry
and writing are the pipeline's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable, List, Sequence, Tuple

import numpy as np

from ...errors import Cancelled, InputError, PantheonError
from ...io.volume import Volume
from ...progress import Reporter
from ...results import HeatmapOutput, Result

#: A token counts as body when at least this share of its block is above AIR_HU (in HU).
BODY_SHARE, AIR_HU = 0.5, -500.0


@dataclass(frozen=True)
class Query:
    """The feature vector at a point of a query CT (unit length) and where its token centre lies."""

    vector: np.ndarray
    token_lps: Tuple[float, float, float]
    point_lps: Tuple[float, float, float]


def _fmt(p) -> str:
    return "(" + ", ".join(f"{float(v):.1f}" for v in p) + ")"


def query_at(volume: Volume, engine, point_lps, feature_grid=None, stride=None, cache_dir=None, progress=None,
             cancel=None) -> Query:
    """The query token of ``volume`` nearest ``point_lps`` (LPS mm); InputError when the point lies
    outside the image."""
    from ...pipelines import nemesis as nem
    point = nem.check_point(point_lps)
    ijk = volume.world_to_ijk(point)[0]
    if np.any(ijk < -0.5) or np.any(ijk > np.array(volume.size_ijk) - 0.5):
        raise InputError(f"The point {_fmt(point)} (LPS mm; RAS {_fmt(point * [-1, -1, 1])}) lies outside the "
                         "query image.")
    fg = feature_grid or nem.features(volume, engine, stride, cache_dir, progress=progress, cancel=cancel)
    token = nem.nearest_token(fg, point)
    vec = fg.tokens[token].astype(np.float64)
    return Query(vec / (np.linalg.norm(vec) + 1e-12), tuple(float(v) for v in fg.centres_lps[token]),
                 tuple(float(v) for v in point))


def cosine_map(tokens: np.ndarray, query: Query) -> np.ndarray:
    """(Gd, Gh, Gw) cosine similarity of every token to the query, float32."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    norms = np.linalg.norm(flat, axis=1) + 1e-8
    return ((flat @ query.vector.astype(np.float32)) / norms).reshape(tokens.shape[:3]).astype(np.float32)


def body_tokens(prepared, grid, patch) -> np.ndarray:
    """(Gd, Gh, Gw) bool: tokens whose block is at least BODY_SHARE above AIR_HU."""
    hu = prepared.canonical.array.transpose(0, 2, 1)  # model axes
    target = [g * p for g, p in zip(grid, patch)]
    above = np.pad(hu > AIR_HU, [(0, t - n) for t, n in zip(target, hu.shape)])
    share = above.reshape(grid[0], patch[0], grid[1], patch[1], grid[2], patch[2]).mean(axis=(1, 3, 5))
    return share >= BODY_SHARE


def best_match(sim: np.ndarray, fg, body: np.ndarray) -> Tuple[float, Tuple[float, ...]]:
    """(similarity, LPS of the token centre) of the most similar body token (any token if none is body)."""
    masked = np.where(body, sim, -np.inf) if body.any() else sim
    idx = np.unravel_index(int(np.argmax(masked)), sim.shape)
    return float(sim[idx]), tuple(float(v) for v in fg.centres_lps[idx])


def similarity_in(target: Volume, engine, query: Query, feature_grid=None, stride=None, cache_dir=None,
                  progress=None, cancel=None) -> Result:
    """The similarity map of ``query`` over ``target`` (on the target's voxels) and its best match."""
    from ...pipelines import nemesis as nem
    rep = Reporter(progress, cancel)
    prepared = nem.prepare_ct(target, max_voxels=nem._limit(engine))
    fg = feature_grid or nem.compute_features(prepared, engine, stride, cache_dir, rep.sub(0, 0.9), cancel)
    sim = cosine_map(fg.tokens, query)
    score, where = best_match(sim, fg, body_tokens(prepared, sim.shape, fg.patch_size))
    rep(0.95, "Mapping similarity onto the image")
    res = Result()
    res.heatmaps["similarity"] = HeatmapOutput(
        nem.token_map_to_input(prepared, sim, fg.patch_size), "viridis", (-1.0, 1.0),
        "Cosine similarity of this CT's NEMESIS tokens to the token at the chosen point of the query CT",
        "cosine similarity")
    res.scalars["best_similarity"] = score
    res.notes.update(nem.run_notes(engine, fg))
    res.notes["query_point_lps"] = json.dumps([round(v, 3) for v in query.point_lps])
    res.notes["best_match_lps"] = json.dumps([round(v, 3) for v in where])
    res.notes["best_match_ras"] = json.dumps([round(v * s, 3) for v, s in zip(where, (-1, -1, 1))])
    res.notes["mark_lps"] = res.notes["best_match_lps"]  # the preview marks the best match
    res.notes["point_caption"] = "this CT's best match to the point chosen in the query CT"
    res.notes["best_match"] = ("the most similar token inside the body (its 8^3 block at least "
                               f"{BODY_SHARE:.0%} above {AIR_HU:g} HU); its centre in LPS/RAS mm")
    rep(1.0, "Done")
    return res


def rank_scans(query: Query, scans: Sequence[Tuple[str, Callable[[], Volume]]], engine, stride=None, cache_dir=None,
               progress=None, cancel=None) -> List[dict]:
    """Each scan's best match to ``query``, most similar first. ``scans``: (name, loader) pairs; a
    scan whose loading or checking fails gets a row with ``error`` (one sentence) and no rank; the
    others are still ranked."""
    from ...pipelines import nemesis as nem
    rep = Reporter(progress, cancel)
    rows = []
    n = max(len(scans), 1)
    for k, (name, load) in enumerate(scans):
        rep(k / n, f"Scan {k + 1}/{len(scans)}: {name}")
        try:
            vol = load()
            nem.check_ct(vol, name, max_voxels=nem._limit(engine))
            prepared = nem.prepare_ct(vol, max_voxels=nem._limit(engine))
            fg = nem.compute_features(prepared, engine, stride, cache_dir, rep.sub(k / n, (k + 1) / n), cancel)
        except Cancelled:
            raise
        except PantheonError as exc:
            rows.append({"scan": name, "error": str(exc)})
            continue
        sim = cosine_map(fg.tokens, query)
        score, where = best_match(sim, fg, body_tokens(prepared, sim.shape, fg.patch_size))
        ijk = vol.world_to_ijk(np.array(where))[0]
        rows.append({"scan": name, "best_similarity": round(score, 6),
                     "best_match_ras": [round(-where[0], 2), round(-where[1], 2), round(where[2], 2)],
                     "best_match_lps": [round(v, 2) for v in where],
                     "best_match_voxel_ijk": [int(round(float(v))) for v in ijk]})
    ranked = sorted((r for r in rows if "error" not in r), key=lambda r: -r["best_similarity"])
    for i, r in enumerate(ranked):
        r["rank"] = i + 1
    rep(1.0, "Ranked")
    return ranked + [r for r in rows if "error" in r]


def scans_from(source, exclude: Iterable = ()) -> List:
    """Paths of the scans in ``source``: a folder (its image files and DICOM series folders, sorted;
    hidden entries skipped) or a CSV with an ``image`` column (paths relative to the CSV)."""
    from pathlib import Path
    src = Path(source)
    skip = {Path(p).resolve() for p in exclude}
    if src.is_file() and src.suffix.lower() == ".csv":
        import csv
        try:
            with open(src, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                if "image" not in [c.strip() for c in reader.fieldnames or []]:
                    raise InputError(f"The CSV {src} needs an 'image' column.")
                paths = [src.parent / r["image"].strip() for r in reader if (r.get("image") or "").strip()]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"The CSV {src} cannot be read ({exc}).") from None
    elif src.is_dir():
        paths = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    else:
        raise InputError(f"--scans {src} is neither a folder of CT images nor a .csv file with an 'image' column.")
    paths = [p for p in paths if p.resolve() not in skip]
    if not paths:
        raise InputError(f"--scans {src} holds no scans to rank.")
    return paths


def ranking_csv(rows: Sequence[dict]) -> str:
    """The ranking as CSV text: rank, scan, best_similarity, best match RAS / voxel, error."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "scan", "best_similarity", "best_match_R", "best_match_A", "best_match_S", "best_match_i",
                "best_match_j", "best_match_k", "error"])
    for r in rows:
        if "error" in r:
            w.writerow(["", r["scan"], "", "", "", "", "", "", "", r["error"]])
        else:
            w.writerow([r["rank"], r["scan"], f"{r['best_similarity']:.4f}", *r["best_match_ras"],
                        *r["best_match_voxel_ijk"], ""])
    return buf.getvalue()


