"""Atypicality map of a whole CT from NEMESIS masked reconstruction (arXiv 2604.01612).

The masked autoencoder learnt to fill hidden patches with what usually lies there; where it fails,
the tissue is unlike what it learnt. Every superpatch of the CT (non-overlapping tiles, the pipeline's
tiling) is reconstructed ``draws`` times under different random dual masks (the paper's 0.5 / 0.5 by
default); each voxel's value is the mean absolute error (HU, on the model's window) over the draws
that hid it. Voxels no draw hid (few: each draw hides most patches) are 0, and their count is
reported. Outside the body the map is 0.

A map of reconstruction error, not a diagnosis: how well it separates lesions from normal tissue is
measured on phantoms with inserted lesions (``benchmarks/atypicality.py``,
:func:`pantheon.synth.lesions.insert_lesions`) and depends on how well the weights reconstruct.
Hand-written: the tiling loop and the error averaging (MONAI's sliding-window inferer averages one
output per window, not several masked draws per voxel).
"""

from __future__ import annotations

import json

import numpy as np

from ...defaults import NEMESIS_MASK_RATIO
from ...io.volume import Volume
from ...progress import Reporter
from ...results import HeatmapOutput, Result

DEFAULT_DRAWS = 4


def atypicality(volume: Volume, engine, draws: int = DEFAULT_DRAWS, mask_ratio=NEMESIS_MASK_RATIO, seed: int = 0,
                progress=None, cancel=None) -> Result:
    """The ``atypicality`` heatmap (mean masked-reconstruction error, HU) on the input's voxels."""
    import torch

    from ...pipelines import nemesis as nem
    from ...runtime import autocast_for
    from .reconstruction import voxel_mask
    rep = Reporter(progress, cancel)
    draws = int(draws)
    if draws < 1:
        from ...errors import InvalidParameter
        raise InvalidParameter(f"The number of mask draws must be at least 1, got {draws}.")
    mask_ratio, _, seed = nem.check_reconstruct_params(mask_ratio, 0.0, seed)
    prepared = nem.prepare_ct(volume, max_voxels=nem._limit(engine))
    arr, S = prepared.model_array, tuple(engine.superpatch)
    tiles = nem.superpatch_tiles(arr.shape, S, S)
    lo, hi = (float(v) for v in nem.HU_WINDOW)
    err_sum = np.zeros(arr.shape, np.float32)
    hidden = np.zeros(arr.shape, np.uint8)
    model = engine.model
    steps = len(tiles) * draws
    done = 0
    rep(0.0, f"Reconstructing {len(tiles)} superpatches x {draws} mask draws")
    for first in range(0, len(tiles), engine.batch_size):
        chunk = tiles[first:first + engine.batch_size]
        x = torch.from_numpy(np.stack([nem.crop_padded(arr, t, S) for t in chunk])[:, None]).to(engine.device)
        for d in range(draws):
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + first * 101 + d)
            with torch.inference_mode(), autocast_for(engine.device, engine.precision):
                out = model.reconstruct(x, mask_ratio=mask_ratio, generator=gen)
            rep.check()
            err = (out.volume.float().clamp(0, 1) - x.float()).abs().cpu().numpy()[:, 0] * (hi - lo)
            vmask = voxel_mask(out.mask.cpu(), model.grid, engine.patch).numpy()[:, 0]
            for t, e, m in zip(chunk, err, vmask):
                dst = tuple(slice(a, min(a + s, n)) for a, s, n in zip(t, S, arr.shape))
                src = tuple(slice(0, b.stop - b.start) for b in dst)
                err_sum[dst] += np.where(m[src], e[src], 0)
                hidden[dst] += m[src]
            done += len(chunk)
            rep(0.95 * done / steps, f"Reconstructed {done}/{steps}")
    with np.errstate(invalid="ignore", divide="ignore"):
        amap = np.where(hidden > 0, err_sum / np.maximum(hidden, 1), 0).astype(np.float32)
    never = int((hidden == 0).sum())
    del err_sum, hidden
    body = nem.body_mask(prepared.canonical.array).transpose(0, 2, 1)  # canonical (k, j, i) -> model axes
    amap[~body] = 0
    rep(0.97, "Mapping onto the image")
    top = float(np.percentile(amap[body], 99)) if body.any() else 1.0
    res = Result()
    res.heatmaps["atypicality"] = HeatmapOutput(
        prepared.to_input_geometry(amap), "magma", (0.0, max(top, 1.0)),
        f"Mean absolute masked-reconstruction error (HU, on the model's window [{lo:g}, {hi:g}] HU) over "
        f"{draws} random mask draws per superpatch: high where the tissue is unlike what the model learnt to "
        "fill in. 0 outside the body. A reconstruction error, not a diagnosis.",
        "reconstruction error (HU)")
    res.scalars["mask_draws"] = float(draws)
    res.scalars["voxels_never_hidden"] = float(never)
    res.scalars["mean_error_in_body_hu"] = float(amap[body].mean()) if body.any() else 0.0
    res.notes.update(nem.run_notes(engine))
    res.notes["mask_ratio"] = json.dumps(list(mask_ratio) if isinstance(mask_ratio, tuple) else mask_ratio)
    res.notes["atypicality"] = ("mean |reconstruction - input| over the mask draws that hid the voxel; voxels no "
                                "draw hid are 0 (voxels_never_hidden counts them)")
    rep(1.0, "Done")
    return res
