"""Accuracy gates for NEMESIS's CPU int8 path, measured against fp32 on the same inputs.

int8 may be offered only where it answers as fp32 does (issue: NEMESIS on a radiologist's CPU):

- token cosine vs fp32 >= 0.999, the minimum over every token of the superpatches given;
- organ-probe AUROC (the paper's superpatch presence task) within 0.005 of fp32's, per organ and
  on the mean, on held-out labelled CTs;
- PCA and similarity maps correlated >= 0.99 with fp32's (Pearson, over the input's voxels).

``benchmarks/nemesis_encoder.py`` prints these on real-size inputs; the tests check them on the
demo model.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..io import Volume

TOKEN_COSINE_MIN = 0.999
AUROC_TOLERANCE = 0.005
MAP_CORRELATION_MIN = 0.99


def token_cosine(fp32_engine, int8_engine, superpatches: np.ndarray) -> Dict[str, float]:
    """Min and mean cosine between the two engines' tokens for (B, D, H, W) or (B, 1, D, H, W) superpatches."""
    superpatches = np.asarray(superpatches, np.float32).reshape((-1,) + tuple(superpatches.shape[-3:]))
    a = fp32_engine.encode_batch(superpatches).astype(np.float64)
    b = int8_engine.encode_batch(superpatches).astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"min": float(cos.min()), "mean": float(cos.mean()), "max_abs_diff": float(np.abs(a - b).max())}


def probe_auroc(fp32_engine, int8_engine, probe, pairs: Sequence[Tuple[Volume, Volume]], stride=None) -> dict:
    """Per-organ AUROC of ``probe`` on the superpatches of ``pairs`` (image, BTCV labels) for both."""
    from .nemesis import extract_probe_samples, per_organ_auroc
    out = {}
    for name, engine in (("fp32", fp32_engine), ("int8", int8_engine)):
        X, Y, _ = extract_probe_samples(pairs, engine, stride=stride)
        out[name] = {k: v["auroc"] for k, v in per_organ_auroc(probe, X, Y).items()}
    out["max_abs_diff"] = float(np.nanmax([abs(out["int8"][k] - out["fp32"][k]) for k in out["fp32"]]))
    return out


def map_correlation(fp32_engine, int8_engine, ct: Volume, point_lps: Optional[Sequence[float]] = None
                    ) -> Dict[str, float]:
    """Pearson correlation of the PCA map (each component) and the similarity map at ``point_lps``
    (default: the volume's centre) between the two engines."""
    from ..pipelines import nemesis as nem
    if point_lps is None:
        point_lps = ct.ijk_to_world((np.asarray(ct.size_ijk, float) - 1) / 2)[0]
    out = {}
    a, b = nem.pca(ct, fp32_engine), nem.pca(ct, int8_engine)
    pa, pb = a.volumes["pca"].array, b.volumes["pca"].array
    out["pca"] = float(min(_pearson(pa[..., c], pb[..., c]) for c in range(pa.shape[-1])))
    sa = nem.similarity(ct, fp32_engine, point_lps).heatmaps["similarity"].volume.array
    sb = nem.similarity(ct, int8_engine, point_lps).heatmaps["similarity"].volume.array
    out["similarity"] = _pearson(sa, sb)
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def gates_pass(tokens: dict, auroc: dict, maps: dict) -> bool:
    return (tokens["min"] >= TOKEN_COSINE_MIN and auroc["max_abs_diff"] <= AUROC_TOLERANCE
            and min(maps.values()) >= MAP_CORRELATION_MIN)
