"""Whole-volume NEMESIS pipelines; every output lands on the voxels of the input CT.

How a CT volume reaches the model:

1. Checked (3D, finite, Hounsfield-like range), then reoriented *exactly* (axis permutation and
   flips, no resampling) to the closest ``orientation`` of the model card (default RAS, nibabel's
   canonical); the reference pretraining fed raw NIfTI voxel arrays, mostly stored that way.
2. HU window [-175, 250] -> [0, 1]; model axis order (k, i, j): the nibabel array (i, j, k)
   transposed slices-first, i.e. ``array_kji.transpose(0, 2, 1)``.
3. Tiled into superpatches with a stride that is a multiple of the patch size (so tokens of
   overlapping tiles coincide and are averaged), zero-padded at the borders (0 = -175 HU, as the
   reference pads), batched through the encoder.

Token grids map back by trilinear upsampling with token centres at patch centres (which is what
``F.interpolate(..., align_corners=False)`` does for an integer scale) and the inverse reorientation.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..defaults import NEMESIS_DEMO_CARD, NEMESIS_DEMO_PROBE_CARD, NEMESIS_MASK_RATIO
from ..errors import InputError, InvalidParameter, PantheonError
from ..io.atomic import atomic_path
from ..io.validate import COMMAND_PIXEL_LIMITS, check_scan, fmt_point, require_int, require_number, sample_values
from ..io.volume import Volume
from ..models.nemesis import NemesisMAE, OrganProbe
from ..models.nemesis.probe import BTCV_ORGANS, DEFAULT_ORIENTATION, HU_WINDOW, load_probe
from ..progress import Reporter
from ..results import HeatmapOutput, Result
from ..runtime import autocast_for, cpu_has_native_bf16, pick_device, resolve_weights_argument

#: Largest CT (voxels) the NEMESIS commands take by default (512 x 512 x 1900; the input, a float32
#: copy and one full-resolution map per output need ~10 bytes a voxel and more). Overridable:
#: ``max_voxels`` of :func:`load_engine` / :func:`check_ct` (0 = no limit), ``--max-pixels``.
MAX_VOXELS = COMMAND_PIXEL_LIMITS["nemesis"]


# ---------------------------------------------------------------------------- input checks
def check_ct(volume: Volume, name: str = "input", max_voxels: Optional[int] = MAX_VOXELS) -> None:
    """Raise InputError with one sentence when ``volume`` cannot be a CT in Hounsfield units
    (or has more than ``max_voxels`` voxels; None or 0 = no limit)."""
    a, lo, hi = check_scan(volume, name, "NEMESIS", "CT", "CT", ("CT", "OT"), max_voxels,
                           "fix or mask them before running NEMESIS")
    sample = sample_values(a).astype(np.float32)
    p1, p99 = np.percentile(sample, [1, 99.9])
    if p1 > -200 or p99 > 6000 or lo < -3100:
        raise InputError(f"The {name} image values run from {lo:g} to {hi:g} (1st percentile {p1:g}); that is not a CT "
                         "in Hounsfield units (air is about -1000 HU). Rescale it to HU first.")


def check_point(point, what: str = "point") -> np.ndarray:
    """Three finite numbers (LPS mm) as a float array; InputError otherwise."""
    try:
        p = np.asarray(point, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"The {what} must be three numbers (L, P, S in mm), got {point!r}.") from None
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise InputError(f"The {what} must be three finite numbers (L, P, S in mm), got {p.size} value"
                         f"{'' if p.size == 1 else 's'}{' ' + fmt_point(p) if p.size else ''}.")
    return p


def check_reconstruct_params(mask_ratio, noise_std, seed=0):
    """(mask ratios (plane, axis), noise level, seed) checked: ratios in [0, 1), noise in [0, 1],
    seed a whole number >= 0; InputError in plain words otherwise."""
    ratios = [mask_ratio] * 2 if np.ndim(mask_ratio) == 0 else list(mask_ratio)
    if len(ratios) != 2:
        raise InvalidParameter(f"The mask ratio takes one value or two (plane, axis), got {len(ratios)}.")
    ratios = tuple(require_number(r, "mask ratio", 0.0, 1.0, max_inclusive=False,
                                  note="the fraction of tokens hidden from the model") for r in ratios)
    noise = require_number(noise_std, "noise level", 0.0, 1.0,
                           note="a standard deviation on the model's [0, 1] intensity scale")
    seed = require_int(seed, "seed", minimum=0)
    return (ratios if np.ndim(mask_ratio) else ratios[0]), noise, seed


@dataclass
class PreparedCT:
    """A CT in model space plus what is needed to map results back onto the input voxels."""

    source: Volume
    canonical: Volume  # exact reorientation of ``source``
    undo: Callable[[Volume], Volume]
    model_array: np.ndarray  # (D, H, W) float32 in [0, 1], model axis order

    def model_to_canonical_array(self, model_array: np.ndarray) -> np.ndarray:
        """(D, H, W[, C]) in model axes -> (k, j, i[, C]) array of the canonical volume."""
        return np.swapaxes(model_array, 1, 2)

    def to_input_geometry(self, model_array: np.ndarray) -> Volume:
        """A model-axes array of the model-array shape -> Volume on the input's own voxel grid."""
        return self.undo(self.canonical.with_array(self.model_to_canonical_array(model_array)))

    def model_index_to_world(self, dhw: np.ndarray) -> np.ndarray:
        """(N, 3) continuous model indices (d, h, w) -> (N, 3) LPS mm."""
        dhw = np.atleast_2d(dhw)
        ijk = np.stack([dhw[:, 1], dhw[:, 2], dhw[:, 0]], axis=1)  # model (k, i, j)
        return self.canonical.ijk_to_world(ijk)

    def world_to_model_index(self, points: np.ndarray) -> np.ndarray:
        ijk = self.canonical.world_to_ijk(points)
        return np.stack([ijk[:, 2], ijk[:, 0], ijk[:, 1]], axis=1)


def prepare_ct(volume: Volume, window: Sequence[float] = HU_WINDOW, orientation: str = DEFAULT_ORIENTATION,
               check: bool = True, max_voxels: Optional[int] = MAX_VOXELS) -> PreparedCT:
    if check:
        check_ct(volume, max_voxels=max_voxels)
    canonical, undo = volume.to_canonical(orientation)
    lo, hi = float(window[0]), float(window[1])
    # one float32 copy in model axis order, then in-place ops: a 512x512x256 CT stays ~270 MB
    arr = np.empty((canonical.shape[0], canonical.shape[2], canonical.shape[1]), dtype=np.float32)
    arr[...] = canonical.array.transpose(0, 2, 1)
    np.clip(arr, lo, hi, out=arr)
    arr -= lo
    arr /= hi - lo
    return PreparedCT(volume, canonical, undo, arr)


# ---------------------------------------------------------------------------- tiling
def tile_starts(length: int, size: int, stride: int) -> List[int]:
    """Start offsets covering [0, length) with tiles of ``size`` every ``stride`` (last one may overhang)."""
    if length <= size:
        return [0]
    n = math.ceil((length - size) / stride) + 1
    return [i * stride for i in range(n)]


def superpatch_tiles(shape: Sequence[int], size: Sequence[int], stride: Sequence[int]) -> List[Tuple[int, int, int]]:
    starts = [tile_starts(n, s, st) for n, s, st in zip(shape, size, stride)]
    return [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]


def crop_padded(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """array[start:start+size] along the first three axes, zero-filled where it leaves the array."""
    out = np.zeros(tuple(size) + array.shape[3:], dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[:3]):
        a, b = max(s, 0), min(s + n, dim)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


# ---------------------------------------------------------------------------- engine
class NemesisEngine:
    """A loaded NEMESIS model on a device, with batching and precision settings."""

    def __init__(self, model: NemesisMAE, device: str = "auto", precision: str = "fp32", batch_size: int = 1,
                 weights_id: str = "unknown", weights_sha256: str = "", max_voxels: Optional[int] = MAX_VOXELS):
        batch_size = require_int(batch_size, "batch size (superpatches per forward pass)", minimum=1)
        self.max_voxels = None if not max_voxels else require_int(max_voxels, "voxel limit", minimum=1)
        # int8 is a CPU path: "auto" means the CPU for it, an explicit GPU is refused below
        self.device = pick_device("cpu" if precision == "int8" and str(device or "auto") == "auto" else device)
        self.precision = precision
        autocast_for(self.device, precision)  # validates the name early
        if precision == "int8":
            if self.device.type != "cpu":
                raise InvalidParameter(f"int8 runs on the CPU only; on {self.device} use bf16, fp16 or fp32.")
            from ..models.nemesis.int8 import load_int8
            self.model = load_int8(model.eval(), weights_sha256)  # the fp32 model stays as it was
        else:
            self.model = model.eval().to(self.device)
        if self.device.type == "cpu" and precision in ("bf16", "fp16") and not cpu_has_native_bf16():
            import warnings
            warnings.warn(f"{precision} on this CPU has no hardware support and runs slower than fp32; "
                          "use fp32 on this machine.", RuntimeWarning, stacklevel=2)
        self.batch_size = batch_size
        self.weights_id = weights_id
        self.weights_sha256 = weights_sha256

    @property
    def superpatch(self) -> Tuple[int, int, int]:
        return self.model.superpatch_size

    @property
    def patch(self) -> Tuple[int, int, int]:
        return self.model.patch_size

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        """(B, D, H, W) float32 superpatches -> (B, N, E) float32 tokens."""
        x = torch.from_numpy(batch[:, None]).to(self.device)
        with torch.inference_mode(), autocast_for(self.device, self.precision):
            tokens = self.model.encode(x)
        return tokens.float().cpu().numpy()


@dataclass
class FeatureGrid:
    """Token features over a whole volume (model axes) and where each token centre is in the world."""

    tokens: np.ndarray  # (Gd, Gh, Gw, E) float32
    centres_lps: np.ndarray  # (Gd, Gh, Gw, 3) world (LPS mm) position of each token centre
    patch_size: Tuple[int, int, int]
    superpatch_size: Tuple[int, int, int]
    stride: Tuple[int, int, int]
    key: str = ""

    def save(self, path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds .npz to a bare name
            np.savez(f, tokens=self.tokens, centres_lps=self.centres_lps, patch_size=self.patch_size,
                     superpatch_size=self.superpatch_size, stride=self.stride, key=self.key)

    @classmethod
    def load(cls, path) -> "FeatureGrid":
        with np.load(path) as z:
            return cls(z["tokens"], z["centres_lps"], tuple(z["patch_size"].tolist()),
                       tuple(z["superpatch_size"].tolist()), tuple(z["stride"].tolist()), str(z["key"]))


def _limit(engine) -> Optional[int]:
    return getattr(engine, "max_voxels", MAX_VOXELS)


def _resolve_stride(engine: NemesisEngine, stride) -> Tuple[int, int, int]:
    if stride is None:
        s = engine.superpatch
    else:
        s = (stride,) * 3 if isinstance(stride, (int, np.integer)) else tuple(stride)
    if len(s) != 3:
        raise InvalidParameter(f"The stride takes one value or three (D H W), got {len(s)}.")
    s = tuple(require_int(x, "stride", minimum=1) for x in s)
    for st, p, sp in zip(s, engine.patch, engine.superpatch):
        if st % p or st > sp:
            raise InvalidParameter(f"The stride {' x '.join(map(str, s))} must be multiples of the patch size "
                                   f"{' x '.join(map(str, engine.patch))} and at most the superpatch size "
                                   f"{' x '.join(map(str, engine.superpatch))}, axis by axis.")
    return s


def feature_key(prepared: PreparedCT, engine: NemesisEngine, stride) -> str:
    h = hashlib.sha256()
    h.update(prepared.model_array.tobytes())
    h.update(json.dumps([list(prepared.model_array.shape), engine.weights_sha256 or engine.weights_id,
                         list(stride), engine.precision]).encode())
    return h.hexdigest()


def compute_features(prepared: PreparedCT, engine: NemesisEngine, stride=None, cache_dir=None,
                     progress=None, cancel=None) -> FeatureGrid:
    """Token features for the whole volume; overlapping tiles are averaged token by token."""
    rep = Reporter(progress, cancel)
    stride = _resolve_stride(engine, stride)
    key = feature_key(prepared, engine, stride)
    cache_file = Path(cache_dir) / f"nemesis-features-{key[:32]}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        rep(1.0, "Features loaded from cache")
        return FeatureGrid.load(cache_file)
    arr, S, P = prepared.model_array, engine.superpatch, engine.patch
    tiles = superpatch_tiles(arr.shape, S, stride)
    grid = tuple(math.ceil(n / p) for n, p in zip(arr.shape, P))
    per_tile = tuple(s // p for s, p in zip(S, P))
    total = None
    count = np.zeros(grid, dtype=np.float32)
    rep(0.0, f"Encoding {len(tiles)} superpatches")
    for first in range(0, len(tiles), engine.batch_size):
        chunk = tiles[first:first + engine.batch_size]
        batch = np.stack([crop_padded(arr, t, S) for t in chunk])
        tokens = engine.encode_batch(batch)  # (B, N, E)
        if total is None:
            total = np.zeros(grid + (tokens.shape[-1],), dtype=np.float32)
        for t, tok in zip(chunk, tokens):
            tok = tok.reshape(per_tile + (-1,))
            g0 = [s // p for s, p in zip(t, P)]
            g1 = [min(a + n, g) for a, n, g in zip(g0, per_tile, grid)]
            sl = tuple(slice(a, b) for a, b in zip(g0, g1))
            total[sl] += tok[tuple(slice(0, b - a) for a, b in zip(g0, g1))]
            count[sl] += 1
        rep((first + len(chunk)) / len(tiles), f"Encoded {first + len(chunk)}/{len(tiles)} superpatches")
    tokens = total / np.maximum(count, 1)[..., None]
    idx = np.stack(np.meshgrid(*[np.arange(g) * p + (p - 1) / 2 for g, p in zip(grid, P)], indexing="ij"), -1)
    centres = prepared.model_index_to_world(idx.reshape(-1, 3)).reshape(grid + (3,))
    fg = FeatureGrid(tokens, centres, P, S, stride, key)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fg.save(cache_file)
    return fg


def token_map_to_input(prepared: PreparedCT, token_map: np.ndarray, patch: Sequence[int]) -> Volume:
    """(Gd, Gh, Gw[, C]) token-resolution map -> Volume on the input's voxels (trilinear)."""
    t = torch.from_numpy(np.ascontiguousarray(token_map, dtype=np.float32))
    t = t[None, None] if t.ndim == 3 else t.permute(3, 0, 1, 2)[None]
    up = F.interpolate(t, scale_factor=tuple(float(p) for p in patch), mode="trilinear", align_corners=False)[0]
    D, H, W = prepared.model_array.shape
    up = up[:, :D, :H, :W].numpy()
    out = up[0] if token_map.ndim == 3 else np.moveaxis(up, 0, -1)
    return prepared.to_input_geometry(np.ascontiguousarray(out))


# ---------------------------------------------------------------------------- pipelines
def features(volume: Volume, engine: NemesisEngine, stride=None, cache_dir=None, window=HU_WINDOW,
             orientation=DEFAULT_ORIENTATION, progress=None, cancel=None) -> FeatureGrid:
    """Token feature grid over the whole volume plus world positions of token centres."""
    prepared = prepare_ct(volume, window, orientation, max_voxels=_limit(engine))
    return compute_features(prepared, engine, stride, cache_dir, progress, cancel)


def nearest_token(fg: FeatureGrid, point_lps) -> Tuple[int, int, int]:
    d = np.linalg.norm(fg.centres_lps - np.asarray(point_lps, dtype=np.float64), axis=-1)
    return tuple(int(i) for i in np.unravel_index(np.argmin(d), d.shape))


def similarity(volume: Volume, engine: NemesisEngine, point_lps, stride=None, cache_dir=None,
               window=HU_WINDOW, orientation=DEFAULT_ORIENTATION, feature_grid: Optional[FeatureGrid] = None,
               progress=None, cancel=None) -> Result:
    """Cosine similarity of every token to the token nearest ``point_lps``, as a heatmap on the input."""
    rep = Reporter(progress, cancel)
    prepared = prepare_ct(volume, window, orientation, max_voxels=_limit(engine))
    point = check_point(point_lps)
    ijk = volume.world_to_ijk(point)[0]
    if np.any(ijk < -0.5) or np.any(ijk > np.array(volume.size_ijk) - 0.5):
        raise InputError(f"The point {fmt_point(point)} (LPS mm; RAS {fmt_point(point * [-1, -1, 1])}) lies "
                         "outside the image.")
    fg = feature_grid or compute_features(prepared, engine, stride, cache_dir, rep.sub(0, 0.9), cancel)
    ref = fg.tokens[nearest_token(fg, point)]
    norms = np.linalg.norm(fg.tokens, axis=-1) * np.linalg.norm(ref) + 1e-8
    sim = (fg.tokens @ ref) / norms
    rep(0.95, "Mapping similarity onto the image")
    res = Result()
    res.heatmaps["similarity"] = HeatmapOutput(token_map_to_input(prepared, sim, fg.patch_size), "viridis", (-1.0, 1.0),
                                               "Cosine similarity of NEMESIS tokens to the chosen point")
    res.notes.update(run_notes(engine, fg))
    res.notes["point_lps"] = json.dumps([round(float(v), 3) for v in point])  # the preview marks it
    rep(1.0, "Done")
    return res


def pca(volume: Volume, engine: NemesisEngine, stride=None, cache_dir=None, window=HU_WINDOW,
        orientation=DEFAULT_ORIENTATION, feature_grid: Optional[FeatureGrid] = None, progress=None,
        cancel=None) -> Result:
    """First three principal components of the token features as a 3-component volume in [0, 1]."""
    rep = Reporter(progress, cancel)
    prepared = prepare_ct(volume, window, orientation, max_voxels=_limit(engine))
    fg = feature_grid or compute_features(prepared, engine, stride, cache_dir, rep.sub(0, 0.9), cancel)
    X = fg.tokens.reshape(-1, fg.tokens.shape[-1]).astype(np.float64)
    X = X - X.mean(0)
    # SVD of the (E x E) covariance: cheap however many tokens there are.
    eigval, eigvec = np.linalg.eigh(X.T @ X)
    comps = eigvec[:, ::-1][:, :3]
    proj = X @ comps
    # An eigenvector's sign is arbitrary. Orient each component so that its longer tail is bright
    # (positive third moment): a property of the image's map, stable under the tiny changes of
    # another precision or machine, unlike the sign of the largest loading.
    skew = (proj ** 3).sum(0)
    loading_sign = np.sign(comps[np.argmax(np.abs(comps), axis=0), range(3)])
    sign = np.where(skew != 0, np.sign(skew), loading_sign)
    proj *= sign
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    proj = np.clip((proj - lo) / np.maximum(hi - lo, 1e-8), 0, 1).astype(np.float32)
    rep(0.95, "Mapping the PCA map onto the image")
    explained = eigval[::-1][:3] / max(eigval.sum(), 1e-12)
    res = Result()
    res.volumes["pca"] = token_map_to_input(prepared, proj.reshape(fg.tokens.shape[:3] + (3,)), fg.patch_size)
    res.scalars.update({f"pca_explained_variance_{i + 1}": float(v) for i, v in enumerate(explained)})
    res.notes.update(run_notes(engine, fg))
    rep(1.0, "Done")
    return res


def window_means(tokens: np.ndarray, window: Sequence[int], channels_per_pass: int = 32) -> np.ndarray:
    """Mean of tokens in a box of ``window`` tokens centred on each token (clipped at the borders).

    The box sum is separable: a running sum (float64) along each token axis in turn, a few channels
    at a time, so memory stays near the size of the tokens (the 768 model's whole-CT grid is 0.4 GB
    of float32; a 3D cumulative sum of all channels at once took 3 GB more)."""
    G = tokens.shape[:3]
    lo = [np.clip(np.arange(g) - w // 2, 0, g) for g, w in zip(G, window)]
    hi = [np.clip(np.arange(g) - w // 2 + w, 0, g) for g, w in zip(G, window)]
    count = np.ones(G)
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = G[axis]
        count = count * (hi[axis] - lo[axis]).reshape(shape)
    count = np.maximum(count, 1)[..., None]
    out = np.empty(tokens.shape, np.float32)
    for c0 in range(0, tokens.shape[3], channels_per_pass):
        x = tokens[..., c0:c0 + channels_per_pass].astype(np.float64)
        for axis in range(3):
            pad = [(0, 0)] * 4
            pad[axis] = (1, 0)
            cs = np.pad(x, pad).cumsum(axis)
            x = np.take(cs, hi[axis], axis=axis) - np.take(cs, lo[axis], axis=axis)
        out[..., c0:c0 + channels_per_pass] = x / count
    return out


#: CT values above this are the body: soft tissue and fat (about -100 HU) are above, air and the
#: lungs (about -800 HU) below; the lungs and bowel gas come back as holes filled per slice.
BODY_HU = -500.0


def body_mask(ct_kji: np.ndarray, threshold_hu: float = BODY_HU) -> np.ndarray:
    """The patient's body in a CT array (HU) whose first axis runs across axial slices (the
    canonical volume's k): voxels above ``threshold_hu``, only the largest connected region (not
    the table, clothes or noise), with the holes of each axial slice filled (lungs, bowel gas)."""
    from scipy import ndimage
    labels, n = ndimage.label(ct_kji > threshold_hu)
    if n == 0:
        return np.zeros(ct_kji.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    del labels
    # A hole is a background region of one slice that does not reach that slice's edge; labelling
    # with in-slice connectivity only keeps slices apart (lungs open to the trachea in 3D).
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    background, _m = ndimage.label(~body, structure=plane)
    edge = np.concatenate([background[:, 0].ravel(), background[:, -1].ravel(),
                           background[:, :, 0].ravel(), background[:, :, -1].ravel()])
    hole = np.ones(_m + 1, bool)
    hole[edge] = False
    hole[0] = False
    body |= hole[background]
    return body


def block_size_mm(prepared: PreparedCT, superpatch: Sequence[int]) -> Tuple[float, float, float]:
    """The superpatch's extent in mm along R-L, A-P and S-I (model axes are canonical k, i, j)."""
    si, sj, sk = (float(v) for v in prepared.canonical.spacing)
    return superpatch[1] * si, superpatch[2] * sj, superpatch[0] * sk


def _fmt_block(mm: Sequence[float]) -> str:
    """"64 mm" for a cube, else "45 x 45 x 96 mm" (R-L x A-P x S-I)."""
    r = [f"{v:.0f}" for v in mm]
    return f"{r[0]} mm" if len(set(r)) == 1 else f"{' x '.join(r)} mm"


def organ_maps(volume: Volume, engine: NemesisEngine, probe: OrganProbe, organs: Optional[Sequence[str]] = None,
               stride=None, cache_dir=None, window=HU_WINDOW, orientation=DEFAULT_ORIENTATION,
               feature_grid: Optional[FeatureGrid] = None, progress=None, cancel=None,
               body_hu: Optional[float] = BODY_HU) -> Result:
    """Organ-presence probability heatmaps, one per BTCV organ, on the input's voxels.

    The paper's probe answers "is this organ in this superpatch?" from the mean token. Here it is
    applied to a superpatch-sized window of cached tokens centred on every token position, so each
    voxel gets the probability that the organ is present in the superpatch-sized block centred on
    it: a smooth map at token resolution from one encoder pass (instead of one pass per window).

    The block around a voxel in the air still reaches into the body, so the probe answers there
    too; the maps are set to 0 outside the body (:func:`body_mask` of the CT at ``body_hu``; None
    keeps the probe's answer everywhere).
    """
    rep = Reporter(progress, cancel)
    prepared = prepare_ct(volume, window, orientation, max_voxels=_limit(engine))
    names = [o[0] for o in BTCV_ORGANS]
    wanted = list(organs) if organs else names
    unknown = [o for o in wanted if o not in names]
    if unknown:
        raise PantheonError(f"Unknown organ(s) {', '.join(unknown)}; choose from {', '.join(names)}.")
    fg = feature_grid or compute_features(prepared, engine, stride, cache_dir, rep.sub(0, 0.8), cancel)
    means = window_means(fg.tokens, [s // p for s, p in zip(fg.superpatch_size, fg.patch_size)])
    flat = means.reshape(-1, means.shape[-1])
    probe = probe.eval().cpu()
    with torch.inference_mode():  # in blocks of tokens: the LayerNorm copies what it is given
        probs = np.concatenate([torch.sigmoid(probe(torch.from_numpy(flat[i:i + 65536]))).numpy()
                                for i in range(0, len(flat), 65536)])
    probs = probs.reshape(means.shape[:3] + (-1,))
    del means, flat
    body = None
    if body_hu is not None:
        rep(0.8, "Finding the body")
        body = prepared.undo(prepared.canonical.with_array(body_mask(prepared.canonical.array, body_hu))).array
    # From here on the maps need only the model grid's shape and geometry: let the model-space copy
    # of the CT go (0.27 GB for a 512 x 512 x 256 CT), the maps are about to take eight of those.
    prepared = replace(prepared, model_array=np.broadcast_to(np.float32(0), prepared.model_array.shape))
    block = _fmt_block(block_size_mm(prepared, fg.superpatch_size))
    voxels = " x ".join(map(str, fg.superpatch_size))
    outside = "; 0 outside the body" if body is not None else ""
    res = Result()
    for n, (name, _, color, code, meaning) in enumerate(BTCV_ORGANS):
        if name not in wanted:
            continue
        rep.sub(0.85, 1.0)(len(res.heatmaps) / len(wanted), f"Mapping {name}")
        heat = token_map_to_input(prepared, probs[..., n], fg.patch_size)
        # Held as float16 (a whole-CT map: 0.13 GB, not 0.27; eight of them are most of the peak
        # memory): within 2.5e-4 of the float32 value in [0, 1], 16x finer than the 1/255 the files
        # keep; written as float32 (pantheon.outputs).
        values = heat.array.astype(np.float16)
        if body is not None:
            np.copyto(values, np.float16(0), where=~body)
        heat = heat.with_array(values)  # the float32 map goes here
        res.heatmaps[name.replace(" ", "_")] = HeatmapOutput(
            heat, "inferno", (0.0, 1.0),
            f"Probability that the {name} (SNOMED CT {code} {meaning}) is in the {voxels}-voxel block "
            f"({block}) centred on this voxel, from the NEMESIS organ probe{outside}.",
            f"P({name} in the {block} block here){outside}")
    res.notes.update(run_notes(engine, fg))
    res.notes["organ_maps"] = (f"Each value is the probability that the organ lies in the {voxels}-voxel block "
                               f"({block}) centred on the voxel (one superpatch, what the probe was trained on)"
                               + (f"; voxels outside the body (CT above {body_hu:g} HU, largest connected region, "
                                  "holes filled per axial slice) are 0." if body is not None else "."))
    rep(1.0, "Done")
    return res


def run_notes(engine: NemesisEngine, fg: Optional[FeatureGrid] = None) -> Dict[str, str]:
    notes = {"model": "NEMESIS (arXiv 2604.01612)", "weights": engine.weights_id,
             "device": str(engine.device), "precision": engine.precision}
    if engine.weights_id.endswith("demo") or "demo" in engine.weights_id:
        notes["warning"] = "Demo weights trained on synthetic phantoms: not for clinical use."
    if fg is not None:
        notes["stride"] = "x".join(map(str, fg.stride))
    return notes


#: HU given to masked voxels of ``masked_input``: below the window floor, so no voxel the model saw
#: (clipped to the window) can take it, and black in any CT display.
MASKED_HU = -1024.0


def reconstruct(volume: Volume, engine: NemesisEngine, point_lps, mask_ratio=NEMESIS_MASK_RATIO, noise_std: float = 0.0,
                seed: int = 0, window=HU_WINDOW, orientation=DEFAULT_ORIENTATION, progress=None,
                cancel=None) -> Result:
    """Masked reconstruction of the superpatch centred on ``point_lps``.

    Returns, on the input's voxel lattice over the superpatch region, in HU: ``masked_input`` (what
    the encoder saw; masked voxels at :data:`MASKED_HU`), ``reconstruction`` (as MAE papers show it:
    the prediction on masked patches, the model's input on visible ones) and the ``error`` heatmap
    (absolute difference to the windowed input). Scalars on the [0, 1] window scale, as the paper:
    ``psnr_db``/``ssim`` over the whole superpatch, ``psnr_masked_db``/``ssim_masked`` over the
    masked voxels only, ``psnr_raw_db`` of the raw decoder output (see
    :mod:`pantheon.models.nemesis.reconstruction`).
    """
    from ..models.nemesis.reconstruction import paste_visible, reconstruction_metrics, voxel_mask
    rep = Reporter(progress, cancel)
    mask_ratio, noise_std, seed = check_reconstruct_params(mask_ratio, noise_std, seed)
    point = check_point(point_lps)
    prepared = prepare_ct(volume, window, orientation, max_voxels=_limit(engine))
    S = engine.superpatch
    centre = prepared.world_to_model_index(point.reshape(1, 3))[0]
    if np.any(centre < -0.5) or np.any(centre > np.array(prepared.model_array.shape) - 0.5):
        raise InputError(f"The point {fmt_point(point)} (LPS mm; RAS {fmt_point(point * [-1, -1, 1])}) lies "
                         "outside the image.")
    start = [int(round(c)) - s // 2 for c, s in zip(centre, S)]
    patch = crop_padded(prepared.model_array, start, S)
    rep(0.1, "Reconstructing")
    x = torch.from_numpy(patch[None, None]).to(engine.device)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.inference_mode(), autocast_for(engine.device, engine.precision):
        out = engine.model.reconstruct(x, mask_ratio=mask_ratio, noise_std=noise_std, generator=gen)
    rep.check()
    pred = out.volume.float().cpu()
    seen = out.model_input.float().cpu()
    target = x.float().cpu()
    metrics = reconstruction_metrics(pred, target, seen, out.mask.cpu(), engine.model.grid, engine.patch)
    vmask = voxel_mask(out.mask.cpu(), engine.model.grid, engine.patch)
    shown = paste_visible(pred, seen, vmask).numpy()[0, 0]
    masked = vmask.numpy()[0, 0]
    lo, hi = float(window[0]), float(window[1])
    res = Result()
    for key in ("psnr_db", "ssim", "psnr_masked_db", "ssim_masked", "psnr_raw_db"):
        res.scalars[key] = float(metrics[key][0])
    res.scalars["masked_fraction"] = float(out.mask.float().mean())
    # The superpatch region on the input's lattice: a sub-grid of the canonical grid, mapped back.
    origin_model = np.array(start, dtype=np.float64)
    origin = prepared.model_index_to_world(origin_model[None])[0]
    sub = Volume(np.zeros(S, np.float32).swapaxes(1, 2), prepared.canonical.spacing, origin,
                 prepared.canonical.direction)

    def to_input(model_arr):
        return prepared.undo(sub.with_array(np.ascontiguousarray(model_arr.swapaxes(1, 2).astype(np.float32))))

    seen_hu = np.clip(seen.numpy()[0, 0], 0, 1) * (hi - lo) + lo  # noise can leave the window
    res.volumes["masked_input"] = to_input(np.where(masked, MASKED_HU, seen_hu))
    res.volumes["reconstruction"] = to_input(shown * (hi - lo) + lo)
    res.heatmaps["error"] = HeatmapOutput(
        to_input(np.abs(shown - patch) * (hi - lo)), "hot", (0.0, 100.0),
        "Absolute difference (HU) between the reconstruction and the input, both in the window "
        f"[{lo:g}, {hi:g}] HU; visible patches are the input itself (0 without noise)",
        "absolute error (HU)")
    res.notes.update(run_notes(engine))
    res.notes["point_lps"] = json.dumps([round(float(v), 3) for v in np.asarray(point_lps, float).reshape(3)])
    res.notes["mask_ratio"] = str(mask_ratio)
    res.notes["noise_std"] = str(noise_std)
    res.notes["window_hu"] = json.dumps([lo, hi])
    res.notes["metrics"] = ("PSNR/SSIM on the [0, 1] window scale: psnr_db/ssim over the whole superpatch as shown "
                            "(visible patches pasted from the input), *_masked over the masked voxels only, "
                            "psnr_raw_db of the raw decoder output")
    rep(1.0, "Done")
    return res


# ---------------------------------------------------------------------------- weights
DEMO_ENCODER_CARD = NEMESIS_DEMO_CARD
DEMO_PROBE_CARD = NEMESIS_DEMO_PROBE_CARD


def load_engine(weights: Optional[str] = None, device: str = "auto", precision: str = "fp32", batch_size: int = 1,
                allow_download: bool = False, trust_unverified: bool = False, progress=None,
                cancel=None, max_voxels: Optional[int] = MAX_VOXELS) -> NemesisEngine:
    """A ready engine from a weights path or card id (default: the bundled demo encoder).
    ``max_voxels`` is the largest CT its pipelines take (None or 0 = no limit)."""
    batch_size = require_int(batch_size, "batch size (superpatches per forward pass)", minimum=1)
    from ..models.nemesis import load_nemesis
    from ..registry import sha256_file
    path, card = resolve_weights_argument(weights, DEMO_ENCODER_CARD, allow_download, trust_unverified,
                                          progress, cancel)
    model = load_nemesis(path)
    label = card.id + ("-demo" if card.demo and "demo" not in card.id else "") if card else path.name
    return NemesisEngine(model, device, precision, batch_size, weights_id=label, weights_sha256=sha256_file(path),
                         max_voxels=max_voxels)


def load_probe_for(engine: NemesisEngine, probe: Optional[str] = None) -> OrganProbe:
    path, _ = resolve_weights_argument(probe, DEMO_PROBE_CARD)
    model, meta = load_probe(path, engine.weights_sha256)
    if model.linear.in_features != engine.model.embed_dim:
        from ..errors import CheckpointError
        raise CheckpointError(f"Probe {path} expects {model.linear.in_features}-dim tokens but the encoder "
                              f"makes {engine.model.embed_dim}-dim tokens.")
    return model
