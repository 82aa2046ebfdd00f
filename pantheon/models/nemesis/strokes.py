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
2. Voxel refinement, in model space and only in the tokens where a voxel could reach 0.5 and
   connect to a foreground stroke (:func:`possible_tokens`: a bound, so the answer is the one a
   whole-volume pass gives, at a fraction of the work): the token probabilities are upsampled
   trilinearly to the voxels (token centres at patch centres, as
   :func:`pantheon.pipelines.nemesis.token_map_to_input`) and, as log-odds, added to an intensity
   log-likelihood ratio (histograms of the locally averaged HU under the foreground and background
   strokes, smoothed, clipped to +-3). Threshold at 0.5, keep the connected regions that touch a
   foreground stroke, fill the holes; stroke voxels always keep their label. The local means are
   computed once per image and kept for warm updates (int16, 1/8 HU).
3. Outputs go back onto the input's exact voxels (exact reorientation, no resampling).

Hand-written here: the token labelling, block statistics, the separable trilinear upsampling of
token blocks, the intensity histograms and their range maxima (a sparse table), and the stroke
simulator (:func:`simulate_strokes`).
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
#: Local mean HU are held as int16 in steps of 1 / LOCAL_MEAN_SCALE HU.
LOCAL_MEAN_SCALE = 8
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


def token_stroke_counts(fg_idx, bg_idx, grid, patch) -> Tuple[np.ndarray, np.ndarray]:
    """(foreground, background) stroke-voxel counts per token, from the stroke voxels' model indices."""
    counts = []
    for idx in (fg_idx, bg_idx):
        flat = np.ravel_multi_index(tuple(i // p for i, p in zip(idx, patch)), tuple(grid))
        counts.append(np.bincount(flat, minlength=int(np.prod(grid))).reshape(tuple(grid)).astype(np.int32))
    return counts[0], counts[1]


def stroke_indices(strokes_model: np.ndarray):
    """(foreground, background) model indices of the stroke voxels: one pass over the volume."""
    flat = np.flatnonzero(strokes_model)
    values = strokes_model.reshape(-1)[flat]
    idx = np.unravel_index(flat, strokes_model.shape)
    return (tuple(i[values == FOREGROUND] for i in idx), tuple(i[values == BACKGROUND] for i in idx))


def local_mean_volume(hu_model: np.ndarray, grid, patch, slab_tokens: int = 4) -> np.ndarray:
    """(Gd*Pd, Gh*Ph, Gw*Pw) int16: each voxel's mean HU over its 3^3 neighbourhood (edges repeated,
    as SciPy's ``mode="nearest"``) in steps of 1/LOCAL_MEAN_SCALE HU, padded with edge values up to
    whole tokens; computed in slabs of ``slab_tokens`` token rows to keep memory small. Held for
    warm updates: half the memory of float32, far finer than the intensity model's 4 HU bins."""
    from scipy import ndimage
    out = np.empty(tuple(g * p for g, p in zip(grid, patch)), np.int16)
    D, step = hu_model.shape[0], slab_tokens * patch[0]
    lim = np.iinfo(np.int16)
    for d0 in range(0, D, step):
        d1 = min(d0 + step, D)
        h0, h1 = max(d0 - 1, 0), min(d1 + 1, D)
        local = ndimage.uniform_filter(hu_model[h0:h1].astype(np.float32), 3, mode="nearest")[d0 - h0:d1 - h0]
        rows = -(-local.shape[0] // patch[0]) * patch[0]
        local = np.pad(local, [(0, rows - local.shape[0])] + [(0, t - m) for t, m in zip(out.shape[1:],
                                                                                         local.shape[1:])],
                       mode="edge")
        out[d0:d0 + rows] = np.clip(np.rint(local * LOCAL_MEAN_SCALE), lim.min, lim.max)
    return out


def blocks(arr: np.ndarray, grid, patch) -> np.ndarray:
    """A (Gd*Pd, Gh*Ph, Gw*Pw) array viewed as (Gd, Pd, Gh, Ph, Gw, Pw) token blocks."""
    return arr.reshape(grid[0], patch[0], grid[1], patch[1], grid[2], patch[2])


def token_hu_range(local_mean: np.ndarray, grid, patch) -> np.ndarray:
    """(Gd, Gh, Gw, 2) float32: the lowest and highest local mean HU in each token's block."""
    b = blocks(local_mean, grid, patch)
    return np.stack([b.min(axis=(1, 3, 5)), b.max(axis=(1, 3, 5))], -1).astype(np.float32) / LOCAL_MEAN_SCALE


def possible_tokens(logit: np.ndarray, n_fg: np.ndarray, hu_range: np.ndarray, llr: "IntensityModel") -> np.ndarray:
    """The tokens whose voxels may end up in the segmentation, exactly: a voxel is foreground only if
    its interpolated token log-odds plus its intensity log-likelihood ratio exceed 0, and only if it
    connects to a foreground stroke. The first is bounded per token by the highest log-odds among the
    tokens it interpolates from (all within one token) plus the highest ratio over the token's local
    mean HU range; of the tokens that pass, only the connected parts holding a foreground stroke are
    kept (a connected run of voxels crosses connected tokens)."""
    from scipy import ndimage
    # a margin of 1e-3 log-odds: float rounding differs between the token and voxel passes
    reach = ndimage.maximum_filter(logit, size=3, mode="nearest") + llr.max_between(hu_range[..., 0],
                                                                                   hu_range[..., 1])
    return _parts_holding(((reach > -1e-3) | (n_fg > 0)), n_fg > 0)


def _parts_holding(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected parts (6-connectivity) of ``mask`` that hold a ``seeds`` element."""
    from scipy import ndimage
    lab, n = ndimage.label(mask)
    keep = np.zeros(n + 1, bool)
    keep[lab[seeds & mask]] = True
    keep[0] = False
    return keep[lab]


def token_upsampling_weights(patch: int) -> np.ndarray:
    """(patch, 3): trilinear weights of a token's voxels on its own and its two neighbouring tokens'
    values along one axis (token centres at patch centres, as
    :func:`pantheon.pipelines.nemesis.token_map_to_input`)."""
    u = (np.arange(patch) + 0.5) / patch - 0.5
    w = np.zeros((patch, 3), np.float32)
    w[:, 0] = np.maximum(-u, 0)
    w[:, 2] = np.maximum(u, 0)
    w[:, 1] = 1 - w[:, 0] - w[:, 2]
    return w


def upsample_tokens(token_map: np.ndarray, tokens: Tuple[np.ndarray, ...], patch) -> np.ndarray:
    """(N, Pd, Ph, Pw): the trilinear upsampling of ``token_map`` onto the voxels of the N tokens
    ``tokens`` (index arrays); at the volume's edges the edge tokens' values hold, as clamped
    interpolation does."""
    padded = np.pad(token_map.astype(np.float32), 1, mode="edge")
    r = np.arange(3)
    nb = padded[tokens[0][:, None, None, None] + r[:, None, None], tokens[1][:, None, None, None] + r[None, :, None],
                tokens[2][:, None, None, None] + r[None, None, :]]
    w = [token_upsampling_weights(p) for p in patch]
    out = np.einsum("nabc,ia->nibc", nb, w[0])
    out = np.einsum("nibc,jb->nijc", out, w[1])
    return np.einsum("nijc,kc->nijk", out, w[2])


def _smoothed_hist(values: np.ndarray, edges: np.ndarray, sigma_bins: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d
    h, _ = np.histogram(values, edges)
    h = gaussian_filter1d(h.astype(np.float64), sigma_bins, mode="constant")
    h /= max(h.sum(), 1e-12)
    return 0.98 * h + 0.02 / h.size  # a floor: a value no stroke covered is not impossible


class IntensityModel:
    """log p(HU | foreground) - log p(HU | background) from smoothed histograms of the stroke voxels'
    values (``bin_hu`` wide bins, Gaussian smoothing ``sigma_hu``), clipped to +-``clip``."""

    def __init__(self, fg_values: np.ndarray, bg_values: np.ndarray, bin_hu: float = 4.0, sigma_hu: float = 12.0,
                 clip: float = INTENSITY_CLIP):
        lo = min(float(fg_values.min()), float(bg_values.min()), -1100.0)
        hi = max(float(fg_values.max()), float(bg_values.max()), 1600.0)
        self.edges = np.arange(lo - 4 * sigma_hu, hi + 4 * sigma_hu + bin_hu, bin_hu)
        self.bin_hu = bin_hu
        self.table = np.clip(np.log(_smoothed_hist(fg_values, self.edges, sigma_hu / bin_hu))
                             - np.log(_smoothed_hist(bg_values, self.edges, sigma_hu / bin_hu)),
                             -clip, clip).astype(np.float32)
        # sparse table of range maxima: level k holds max(table[i : i + 2**k])
        self._levels = [self.table]
        while 2 ** len(self._levels) <= self.table.size:
            prev, w = self._levels[-1], 2 ** (len(self._levels) - 1)
            self._levels.append(np.maximum(prev[:-w], prev[w:]))

    def bins(self, hu: np.ndarray) -> np.ndarray:
        return np.clip(((hu - self.edges[0]) / self.bin_hu).astype(np.int64), 0, self.table.size - 1)

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        return self.table[self.bins(hu)]

    def max_between(self, lo_hu: np.ndarray, hi_hu: np.ndarray) -> np.ndarray:
        """The highest ratio over the HU range [lo_hu, hi_hu] (elementwise)."""
        a, b = self.bins(lo_hu), self.bins(hi_hu)
        k = np.floor(np.log2(b - a + 1)).astype(np.int64)
        out = np.empty(a.shape, np.float32)
        for level in np.unique(k):
            sel = k == level
            lv = self._levels[level]
            out[sel] = np.maximum(lv[a[sel]], lv[b[sel] - 2 ** level + 1])
        return out


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
                         unlabelled_weight: float = 0.25, probability_map: bool = True) -> Result:
    """Segment the structure marked by ``strokes`` (1 = foreground, 2 = background, 0 = unlabelled,
    on the input's grid) in the CT ``volume``; see the module docstring for how.

    ``feature_grid``: NEMESIS features of this image (from an earlier call): no encoder pass.
    ``previous``: the Result of an earlier call on the same ``volume`` object: its prepared CT and
    standardized token features are reused too (a warm update). Returns a Result with the label
    map ``segmentation`` (value 1) and the heatmap ``stroke_probability`` on the input's voxels
    (not with ``probability_map=False``: a panel showing only the segment saves its full-size copy).
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
        local_mean = local_mean_volume(prepared.canonical.array.transpose(0, 2, 1), grid, patch)
        state = {"volume": volume, "prepared": prepared, "X": X, "grid": tuple(grid), "patch": patch,
                 "local_mean": local_mean, "hu_range": token_hu_range(local_mean, grid, patch),
                 "notes": nem.run_notes(engine, fg)}
    prepared, X, grid, patch = state["prepared"], state["X"], state["grid"], state["patch"]
    rep.check()

    # strokes in model axes (D, H, W) = canonical (k, i, j)
    s_canon, _ = strokes.with_array(labels).to_canonical(nem.DEFAULT_ORIENTATION)
    s_model = np.ascontiguousarray(s_canon.array.transpose(0, 2, 1))
    shape = s_model.shape
    fg_idx, bg_idx = stroke_indices(s_model)

    # 1. token classifier
    rep(0.85, "Fitting the token classifier")
    n_fg, n_bg = token_stroke_counts(fg_idx, bg_idx, grid, patch)
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

    # 2. voxel refinement, only in the tokens whose voxels may end up in the segmentation
    rep(0.9, "Refining at voxel level")
    local_mean = state["local_mean"]
    llr = IntensityModel(local_mean[fg_idx] / np.float32(LOCAL_MEAN_SCALE),
                         local_mean[bg_idx] / np.float32(LOCAL_MEAN_SCALE))
    tokens = np.nonzero(possible_tokens(logit, n_fg, state["hu_range"], llr))
    hu = blocks(local_mean, grid, patch)[tokens[0], :, tokens[1], :, tokens[2], :]  # (N, Pd, Ph, Pw)
    prob = upsample_tokens(logit, tokens, patch)
    prob += llr(hu / np.float32(LOCAL_MEAN_SCALE))
    del hu
    prob = 1.0 / (1.0 + np.exp(-np.clip(prob, -30, 30)))
    # voxels of the padding past the volume's end (a partial last token) are not the structure
    inside = [(t[:, None] * p + np.arange(p)) < n for t, p, n in zip(tokens, patch, shape)]
    prob *= inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
    block_of = np.full(grid, -1, np.int64)
    block_of[tokens] = np.arange(tokens[0].size)
    for idx, value in ((fg_idx, 1.0), (bg_idx, 0.0)):  # stroke voxels keep their label
        n_idx = block_of[tuple(i // p for i, p in zip(idx, patch))]
        ok = n_idx >= 0
        prob[(n_idx[ok],) + tuple(i[ok] % p for i, p in zip(idx, patch))] = value
    positive = prob > 0.5
    # connected components and hole filling in the box of the token parts, holding positive
    # voxels, that connect to a foreground stroke (a connected run of voxels crosses connected tokens)
    holds = np.zeros(grid, bool)
    holds[tokens] = positive.any(axis=(1, 2, 3))
    part = _parts_holding(holds, n_fg > 0)
    tk = np.nonzero(part)
    t0 = [int(t.min()) for t in tk]
    nt = [int(t.max()) + 1 - a for t, a in zip(tk, t0)]
    box = tuple(slice(a * p, min((a + m) * p, n)) for a, m, p, n in zip(t0, nt, patch, shape))
    dense = np.zeros((nt[0], patch[0], nt[1], patch[1], nt[2], patch[2]), bool)
    sel = part[tokens]
    dense[tokens[0][sel] - t0[0], :, tokens[1][sel] - t0[1], :, tokens[2][sel] - t0[2], :] = positive[sel]
    mask = dense.reshape(nt[0] * patch[0], nt[1] * patch[1], nt[2] * patch[2])[
        tuple(slice(0, b.stop - b.start) for b in box)]
    del dense
    fg_box = tuple(i - b.start for i, b in zip(fg_idx, box))
    lab, n = ndimage.label(mask)
    keep = np.zeros(n + 1, bool)
    keep[lab[fg_box]] = True
    keep[0] = False
    mask = _fill_holes(keep[lab])
    del lab
    in_box = np.all([(i >= b.start) & (i < b.stop) for i, b in zip(bg_idx, box)], axis=0)
    mask[tuple(i[in_box] - b.start for i, b in zip(bg_idx, box))] = False
    rep.check()

    # 3. back onto the input's voxels
    rep(0.97, "Mapping onto the image")
    seg_model = np.zeros(shape, np.uint8)
    seg_model[box] = mask
    seg = prepared.to_input_geometry(seg_model)
    res = Result()
    res.labels["segmentation"] = LabelOutput(seg, [Segment(1, SEGMENT_NAME, SEGMENT_COLOR)])
    if probability_map:
        prob_blocks = np.zeros(tuple(g * p for g, p in zip(grid, patch)), np.float32)
        blocks(prob_blocks, grid, patch)[tokens[0], :, tokens[1], :, tokens[2], :] = prob
        heat = prepared.to_input_geometry(prob_blocks[tuple(slice(0, n) for n in shape)])
        del prob_blocks
        res.heatmaps["stroke_probability"] = HeatmapOutput(
            heat, "inferno", (0.0, 1.0),
            "Probability that the voxel belongs to the structure marked by the foreground strokes (NEMESIS token "
            "classifier upsampled to the voxels, combined with an intensity model of the strokes); 1 and 0 on the "
            "foreground and background strokes, 0 where no voxel could reach 0.5 and connect to a "
            "foreground stroke (those voxels are not computed).",
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
