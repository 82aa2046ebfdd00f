"""Segment one structure of a CT from a few paint strokes, on frozen NEMESIS token features.

The user paints a few foreground strokes (label 1) inside the structure and a few background strokes
(label 2) around it; everything else is 0. The NEMESIS encoder (arXiv 2604.01612) is used frozen:
its token features (one per 8^3-voxel patch, :func:`pantheon.pipelines.nemesis.compute_features`)
are computed once per image and can be passed back in (``feature_grid``), so an update after a new
stroke costs only the steps below, no encoder pass.

1. Token classifier: each token the strokes touch gets the majority label of its stroke voxels; a
   class-balanced logistic regression (scikit-learn) on the standardized token features plus the
   mean and spread of the token's 8^3 block of windowed CT gives a probability per token. Unlabelled
   tokens join as background with a small total weight (most of a CT is not the structure).
2. Voxel refinement, in model space and only inside the box of tokens that may be the structure:
   the token probabilities are upsampled trilinearly to the voxels (token centres at patch centres,
   as :func:`pantheon.pipelines.nemesis.token_map_to_input`) and, as log-odds, added to an intensity
   log-likelihood ratio (histograms of the locally averaged HU under the foreground and background
   strokes, smoothed, clipped to +-3). Threshold at 0.5, keep the connected regions that touch a
   foreground stroke, fill the holes; stroke voxels always keep their label.
3. Outputs go back onto the input's exact voxels (exact reorientation, no resampling).

Hand-written here: the token labelling, block statistics, the separable trilinear upsampling of a
box, the intensity histograms, and the stroke simulator (:func:`simulate_strokes`).
From libraries: the logistic regression and standardisation (scikit-learn), the local mean filter,
connected components and hole filling (SciPy ``ndimage``).
"""

from __future__ import annotations

import weakref
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ...errors import InputError
from ...io.validate import check_label_map, describe_geometry_mismatch
from ...io.volume import Volume
from ...progress import Reporter
from ...results import HeatmapOutput, LabelOutput, Result, Segment

FOREGROUND, BACKGROUND = 1, 2
#: The intensity term may move the token classifier's log-odds by at most this much.
INTENSITY_CLIP = 3.0
#: Tokens whose probability is below this (log-odds) are not refined at voxel level: with the
#: intensity term clipped to INTENSITY_CLIP no voxel there could reach 0.5.
ROI_LOGIT = -3.5
SEGMENT_NAME = "Segmented from strokes"
SEGMENT_COLOR = (0.95, 0.75, 0.20)


# ---------------------------------------------------------------------------- checks
def check_strokes(volume: Volume, strokes: Volume) -> np.ndarray:
    """The stroke map as a uint8 array (K, J, I); InputError in one sentence when it is not a 0/1/2
    label map on the image's grid with at least one foreground and one background voxel."""
    if not isinstance(strokes, Volume):
        raise InputError("The stroke map must be a label volume (1 = foreground, 2 = background, 0 = unlabelled).")
    if strokes.shape != volume.shape or not strokes.same_geometry(volume, atol=1e-3):
        how = describe_geometry_mismatch(strokes, volume, "the stroke map", "the image")
        raise InputError("The stroke map is not on the image's grid "
                         f"({how or 'shape, spacing, origin or direction differ'}); paint it on the image itself.")
    ints, present = check_label_map(strokes, "stroke map")
    other = sorted(v for v in present if v not in (0, FOREGROUND, BACKGROUND))
    if other:
        raise InputError(f"The stroke map has the value{'s' if len(other) > 1 else ''} "
                         f"{', '.join(map(str, other[:5]))}; it may hold only 0 (unlabelled), 1 (foreground) "
                         "and 2 (background).")
    if not present.get(FOREGROUND):
        raise InputError("The stroke map has no foreground stroke (value 1); paint at least one inside the structure.")
    if not present.get(BACKGROUND):
        raise InputError("The stroke map has no background stroke (value 2); paint at least one around the "
                         "structure.")
    return ints.astype(np.uint8, copy=False)


# ---------------------------------------------------------------------------- helpers
def _block_view(arr: np.ndarray, grid: Sequence[int], patch: Sequence[int], fill=0) -> np.ndarray:
    """(D, H, W) -> (Gd, Pd, Gh, Ph, Gw, Pw), padded with ``fill`` up to grid * patch."""
    target = [g * p for g, p in zip(grid, patch)]
    if list(arr.shape) != target:
        pad = [(0, t - n) for t, n in zip(target, arr.shape)]
        arr = np.pad(arr, pad, constant_values=fill)
    return arr.reshape(grid[0], patch[0], grid[1], patch[1], grid[2], patch[2])


def block_stats(model_array: np.ndarray, grid: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """(Gd, Gh, Gw, 2): mean and standard deviation of the windowed CT in each token's block."""
    b = _block_view(model_array, grid, patch)
    mean = b.mean(axis=(1, 3, 5), dtype=np.float64)
    sq = np.square(b, dtype=np.float32).mean(axis=(1, 3, 5), dtype=np.float64)
    return np.stack([mean, np.sqrt(np.maximum(sq - mean ** 2, 0))], -1).astype(np.float32)


def token_stroke_counts(strokes_model: np.ndarray, grid, patch) -> Tuple[np.ndarray, np.ndarray]:
    """(foreground, background) stroke-voxel counts per token, from the strokes' bounding box only."""
    fg = np.zeros(tuple(grid), np.int32)
    bg = np.zeros(tuple(grid), np.int32)
    idx = np.nonzero(strokes_model)
    if not idx[0].size:
        return fg, bg
    tok = tuple(i // p for i, p in zip(idx, patch))
    lab = strokes_model[idx]
    np.add.at(fg, tuple(t[lab == FOREGROUND] for t in tok), 1)
    np.add.at(bg, tuple(t[lab == BACKGROUND] for t in tok), 1)
    return fg, bg


def upsample_box(token_map: np.ndarray, box: Sequence[slice], patch: Sequence[int]) -> np.ndarray:
    """Trilinear upsampling of a (Gd, Gh, Gw) token map onto the voxels of ``box`` (model axes)."""
    out = token_map.astype(np.float32)
    for axis, (sl, p) in enumerate(zip(box, patch)):
        t0 = max(sl.start // p - 1, 0)  # only the tokens the box's voxels interpolate from
        t1 = min((sl.stop - 1) // p + 2, token_map.shape[axis])
        out = np.take(out, np.arange(t0, t1), axis=axis)
        out = _interp_axis_offset(out, axis, sl.start, sl.stop, p, t0, token_map.shape[axis])
    return out


def _interp_axis_offset(a, axis, start, stop, p, t0, n_full):
    """As :func:`_interp_axis` for a slab of tokens starting at token ``t0`` of ``n_full``."""
    x = (np.arange(start, stop) + 0.5) / p - 0.5
    x = np.clip(x, 0, n_full - 1) - t0
    x = np.clip(x, 0, a.shape[axis] - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, a.shape[axis] - 1)
    w = (x - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def _smoothed_hist(values: np.ndarray, edges: np.ndarray, sigma_bins: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d
    h, _ = np.histogram(values, edges)
    h = gaussian_filter1d(h.astype(np.float64), sigma_bins, mode="constant")
    h /= max(h.sum(), 1e-12)
    return 0.98 * h + 0.02 / h.size  # a floor: a value no stroke covered is not impossible


def intensity_llr(hu: np.ndarray, fg_values: np.ndarray, bg_values: np.ndarray, bin_hu: float = 4.0,
                  sigma_hu: float = 12.0, clip: float = INTENSITY_CLIP) -> np.ndarray:
    """log p(HU | foreground) - log p(HU | background) for each value of ``hu``, from smoothed
    histograms of the stroke voxels' values, clipped to +-``clip``."""
    lo = min(float(fg_values.min()), float(bg_values.min()), -1100.0)
    hi = max(float(fg_values.max()), float(bg_values.max()), 1600.0)
    edges = np.arange(lo - 4 * sigma_hu, hi + 4 * sigma_hu + bin_hu, bin_hu)
    table = np.clip(np.log(_smoothed_hist(fg_values, edges, sigma_hu / bin_hu))
                    - np.log(_smoothed_hist(bg_values, edges, sigma_hu / bin_hu)), -clip, clip).astype(np.float32)
    idx = np.clip(((hu - edges[0]) / bin_hu).astype(np.int64), 0, table.size - 1)
    return table[idx]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background regions not connected to the box's faces become foreground (labelling, not the
    iterative dilation of ``binary_fill_holes``, which is slow on large boxes)."""
    from scipy import ndimage
    lab, n = ndimage.label(~mask)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, bool)
    for axis in range(3):
        for end in (0, -1):
            outside[np.unique(np.take(lab, end, axis=axis))] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[lab]


#: Warm state of recent results (id -> (weak reference to the Result, state)): the prepared CT and
#: standardized token features, reused when that Result comes back as ``previous``. Kept outside the
#: Result so that pickling a Result (worker processes) does not carry it; an entry goes with its Result.
_WARM: Dict[int, Tuple[weakref.ref, dict]] = {}
_WARM_KEEP = 2


def _remember(res: Result, state: dict) -> None:
    key = id(res)
    _WARM[key] = (weakref.ref(res, lambda _r, k=key: _WARM.pop(k, None)), state)
    while len(_WARM) > _WARM_KEEP:
        _WARM.pop(next(iter(_WARM)), None)


def _as_state(previous, volume):
    if previous is None:
        return None
    ref, state = _WARM.get(id(previous), (None, None))
    if ref is not None and ref() is previous and state["volume"] is volume:
        return state
    return None


# ---------------------------------------------------------------------------- pipeline
def segment_from_strokes(volume: Volume, engine, strokes: Volume, feature_grid=None, previous=None,
                         progress=None, cancel=None, stride=None, cache_dir=None, C: float = 0.5,
                         unlabelled_weight: float = 0.25) -> Result:
    """Segment the structure marked by ``strokes`` (1 = foreground, 2 = background, 0 = unlabelled,
    on the input's grid) in the CT ``volume``; see the module docstring for how.

    ``feature_grid``: NEMESIS features of this image (from an earlier call): no encoder pass.
    ``previous``: the Result of an earlier call on the same ``volume`` object: its prepared CT and
    standardized token features are reused too (a warm update). Returns a Result with the label map
    ``segmentation`` (value 1) and the heatmap ``stroke_probability`` on the input's voxels.
    """
    from scipy import ndimage
    from sklearn.linear_model import LogisticRegression

    from ...pipelines import nemesis as nem
    rep = Reporter(progress, cancel)
    labels = check_strokes(volume, strokes)
    state = _as_state(previous, volume)
    if state is None:
        prepared = nem.prepare_ct(volume, max_voxels=nem._limit(engine))
        fg = feature_grid or nem.compute_features(prepared, engine, stride, cache_dir, rep.sub(0, 0.8), cancel)
        grid, patch = fg.tokens.shape[:3], tuple(fg.patch_size)
        if tuple(-(-n // p) for n, p in zip(prepared.model_array.shape, patch)) != tuple(grid):
            raise InputError("The feature grid given was computed for another image (its token grid "
                             f"{' x '.join(map(str, grid))} does not fit this image); recompute the features.")
        rep(0.8, "Preparing token features")
        X = np.concatenate([fg.tokens.reshape(-1, fg.tokens.shape[-1]),
                            block_stats(prepared.model_array, grid, patch).reshape(-1, 2)], 1)
        mean, std = X.mean(0, dtype=np.float64), X.std(0, dtype=np.float64)
        X = ((X - mean) / np.where(std > 1e-6, std, 1)).astype(np.float32)
        state = {"volume": volume, "prepared": prepared, "X": X, "grid": tuple(grid), "patch": patch,
                 "notes": nem.run_notes(engine, fg)}
    prepared, X, grid, patch = state["prepared"], state["X"], state["grid"], state["patch"]
    rep.check()

    # strokes in model axes (D, H, W) = canonical (k, i, j)
    s_canon, _ = strokes.with_array(labels).to_canonical(nem.DEFAULT_ORIENTATION)
    s_model = s_canon.array.transpose(0, 2, 1)
    hu_model = prepared.canonical.array.transpose(0, 2, 1)
    shape = s_model.shape

    # 1. token classifier
    rep(0.85, "Fitting the token classifier")
    n_fg, n_bg = token_stroke_counts(s_model, grid, patch)
    pos, neg = (n_fg > n_bg).ravel(), (n_bg > n_fg).ravel()
    notes = dict(state["notes"])
    if pos.any() and neg.any():
        # unlabelled tokens join as background of small total weight (most of a CT is not the
        # structure): far tissue no stroke reached leans to background instead of anything goes
        unl = np.nonzero(~pos & ~neg & (n_fg.ravel() == 0))[0]
        if unl.size > 4000:
            unl = np.random.default_rng(0).choice(unl, 4000, replace=False)
        train = np.concatenate([np.nonzero(pos)[0], np.nonzero(neg)[0], unl])
        y = np.concatenate([np.ones(pos.sum(), int), np.zeros(neg.sum() + unl.size, int)])
        w = np.concatenate([np.full(pos.sum(), 0.5 / pos.sum()), np.full(neg.sum(), 0.5 / neg.sum()),
                            np.full(unl.size, unlabelled_weight / max(unl.size, 1))])
        clf = LogisticRegression(C=C, max_iter=500)
        clf.fit(X[train], y, sample_weight=w * len(train))
        logit = (X @ clf.coef_[0].astype(np.float32) + np.float32(clf.intercept_[0])).reshape(grid)
        notes["token_classifier"] = (f"logistic regression on {int(pos.sum())} foreground and {int(neg.sum())} "
                                     f"background tokens (and {unl.size} unlabelled ones as weak background)")
    else:  # the strokes share their tokens: intensity and connectivity alone decide
        logit = np.zeros(grid, np.float32)
        notes["token_classifier"] = ("not used: the foreground and background strokes fall in the same tokens; "
                                     "intensity and connectivity alone decide")
    rep.check()

    # 2. voxel refinement inside the box of candidate tokens (and the foreground strokes)
    rep(0.9, "Refining at voxel level")
    cand = (logit > ROI_LOGIT) | (n_fg > 0)
    tk = np.nonzero(cand)
    box = tuple(slice(max((int(t.min()) - 1) * p, 0), min((int(t.max()) + 2) * p, n))
                for t, p, n in zip(tk, patch, shape))
    vox_logit = upsample_box(logit, box, patch)
    hu = ndimage.uniform_filter(hu_model[box].astype(np.float32), 3, mode="nearest")
    s_box = s_model[box]
    fg_idx = np.nonzero(s_model == FOREGROUND)
    bg_idx = np.nonzero(s_model == BACKGROUND)
    # the stroke voxels' local means, wherever they are (a background stroke may lie outside the box)

    def local_mean(idx):
        vals = np.zeros(idx[0].size, np.float32)
        for dd in (-1, 0, 1):
            for dh in (-1, 0, 1):
                for dw in (-1, 0, 1):
                    vals += hu_model[tuple(np.clip(i + d, 0, n - 1) for i, d, n in zip(idx, (dd, dh, dw), shape))]
        return vals / 27

    vox_logit += intensity_llr(hu, local_mean(fg_idx), local_mean(bg_idx))
    del hu
    prob = 1.0 / (1.0 + np.exp(-np.clip(vox_logit, -30, 30)))
    prob[s_box == FOREGROUND] = 1.0
    prob[s_box == BACKGROUND] = 0.0
    mask = prob > 0.5
    lab, n = ndimage.label(mask)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[s_box == FOREGROUND])] = True
    keep[0] = False
    mask = _fill_holes(keep[lab])
    del lab
    mask[s_box == BACKGROUND] = False
    rep.check()

    # 3. back onto the input's voxels
    rep(0.97, "Mapping onto the image")
    seg_model = np.zeros(shape, np.uint8)
    seg_model[box] = mask
    prob_model = np.zeros(shape, np.float32)
    prob_model[box] = prob
    seg = prepared.to_input_geometry(seg_model)
    heat = prepared.to_input_geometry(prob_model)
    res = Result()
    res.labels["segmentation"] = LabelOutput(seg, [Segment(1, SEGMENT_NAME, SEGMENT_COLOR)])
    res.heatmaps["stroke_probability"] = HeatmapOutput(
        heat, "inferno", (0.0, 1.0),
        "Probability that the voxel belongs to the structure marked by the foreground strokes (NEMESIS token "
        "classifier upsampled to the voxels, combined with an intensity model of the strokes); 1 and 0 on the "
        "foreground and background strokes, 0 where the token classifier gives under 3%.",
        "P(structure | strokes)")
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    res.scalars["segmented_voxels"] = float(mask.sum())
    res.scalars["segmented_volume_ml"] = float(mask.sum()) * voxel_ml
    res.scalars["foreground_stroke_voxels"] = float(fg_idx[0].size)
    res.scalars["background_stroke_voxels"] = float(bg_idx[0].size)
    notes["strokes"] = ("Segmented from paint strokes (1 = foreground, 2 = background) with the NEMESIS encoder "
                        "frozen; stroke voxels keep their label.")
    res.notes.update(notes)
    _remember(res, state)  # a warm update: pass this Result back as ``previous``
    rep(1.0, "Done")
    return res


# ---------------------------------------------------------------------------- measurement
def _paint_segment(out, allowed, rng, value, length, radius):
    """One in-plane stroke of ``value``: a segment of ``length`` voxels from a random allowed voxel
    in a random direction within its axial slice, a brush of ``radius`` voxels, clipped to ``allowed``."""
    idx = np.argwhere(allowed)
    if not len(idx):
        return False
    k, j, i = idx[rng.integers(len(idx))]
    angle = rng.uniform(0, 2 * np.pi)
    t = np.linspace(-length / 2, length / 2, max(2 * length, 2))
    jj = np.rint(j + t * np.sin(angle)).astype(int)
    ii = np.rint(i + t * np.cos(angle)).astype(int)
    K, J, I = out.shape
    for dj in range(-radius, radius + 1):
        for di in range(-radius, radius + 1):
            if dj * dj + di * di > radius * radius:
                continue
            pj, pi = jj + dj, ii + di
            ok = (pj >= 0) & (pj < J) & (pi >= 0) & (pi < I)
            pj, pi = pj[ok], pi[ok]
            sel = allowed[k, pj, pi]
            out[k, pj[sel], pi[sel]] = value
    return True


def simulate_strokes(organ: np.ndarray, n: int, seed: int = 0, body: Optional[np.ndarray] = None,
                     length: int = 8, radius: int = 1, shell: Tuple[int, int] = (2, 6)) -> np.ndarray:
    """``n`` foreground and ``n`` background strokes (uint8 1/2, else 0) for a true ``organ`` mask
    (K, J, I), as a user might paint them, deterministic by ``seed``; the strokes for n are those
    for n - 1 plus one more pair. Foreground: in-plane segments inside the organ eroded by one voxel
    (the organ itself when that is empty). Background: in the shell ``shell`` voxels around the
    organ (restricted to ``body`` when given)."""
    from scipy import ndimage
    organ = np.asarray(organ, bool)
    if not organ.any():
        raise InputError("The organ mask is empty: there is nothing to paint strokes in.")
    inner = ndimage.binary_erosion(organ)
    if not inner.any():
        inner = organ
    near = ndimage.binary_dilation(organ, iterations=shell[0])
    far = ndimage.binary_dilation(organ, iterations=shell[1])
    ring = far & ~near
    if body is not None:
        ring &= np.asarray(body, bool)
    if not ring.any():
        ring = ~organ
    rng = np.random.default_rng(seed)
    out = np.zeros(organ.shape, np.uint8)
    for _ in range(n):
        _paint_segment(out, inner & (out == 0), rng, FOREGROUND, length, radius)
        _paint_segment(out, ring & (out == 0), rng, BACKGROUND, length, radius)
    return out


def corrective_stroke(organ: np.ndarray, segmentation: np.ndarray, strokes: np.ndarray, seed: int = 0,
                      length: int = 8, radius: int = 1) -> np.ndarray:
    """``strokes`` plus one stroke where a user would correct ``segmentation``: in the largest
    connected error region (missed organ: a foreground stroke; leak: a background stroke), inside
    that region eroded by one voxel when that leaves any. Deterministic by ``seed``."""
    from scipy import ndimage
    organ, seg = np.asarray(organ, bool), np.asarray(segmentation, bool)
    out = np.array(strokes, np.uint8, copy=True)
    best = None
    for region, value in ((organ & ~seg, FOREGROUND), (seg & ~organ, BACKGROUND)):
        lab, n = ndimage.label(region & (out == 0))
        if n:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            k = int(np.argmax(sizes))
            if best is None or sizes[k] > best[0]:
                best = (int(sizes[k]), lab == k, value)
    if best is None:
        return out
    _, region, value = best
    inner = ndimage.binary_erosion(region)
    _paint_segment(out, inner if inner.any() else region, np.random.default_rng(seed), value, length, radius)
    return out
