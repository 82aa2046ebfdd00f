"""Label map -> synthetic hepatobiliary-phase MR volume on the label map's exact grid (3D-LLDM).

The whole field of view, not a patch: the label map's voxel axes are permuted/flipped to the
closest RAS axes (exact), resampled (nearest neighbour) onto a grid of :data:`MODEL_SPACING` mm
that covers every voxel centre (:func:`pantheon.models.neonet.preprocess.resample_to_model`),
padded with background at the far end of each axis to the networks' size multiple, read as one-hot
label channels, synthesised (DDIM), cropped, and resampled (linear) back onto the label map's own
grid: same shape, spacing, origin and direction, in any orientation.

Intensities are on the model's scale: 0 and 1 are the 0.5th and 99.5th percentiles of a training
image (:func:`pantheon.models.neonet.preprocess.normalize_mri`), so the output is a relative HBP
signal, not scanner units.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ...defaults import NEOGEN_DDIM_STEPS
from ...errors import InputError
from ...io.validate import COMMAND_PIXEL_LIMITS, check_3d_size, check_label_map, require_int, require_number
from ...io.volume import Volume
from ...progress import Reporter
from ...results import LabelOutput, Result, Segment
from .model import LABEL_CHANNELS

#: Model grid spacing (si, sj, sk) mm in closest-RAS axes. Assumption: the CPU demo's grid (a
#: 300 x 250 x 170 mm abdominal field is 50 x 42 x 29 voxels, padded to 64 x 48 x 32).
MODEL_SPACING: Tuple[float, float, float] = (6.0, 6.0, 6.0)
#: Largest padded model grid a synthesis accepts (voxels): 128^3, e.g. 768 mm a side at 6 mm, far
#: beyond one abdomen; it bounds the sampler's memory.
MAX_MODEL_SIDE = 128
MAX_MODEL_VOXELS = MAX_MODEL_SIDE ** 3
MAX_VOXELS = COMMAND_PIXEL_LIMITS["lldm"]
DEMO_CARD = "lldm-demo"

#: Label values of a map without segment names (those of :mod:`pantheon.synth.hcc_mri_phantom`).
LABEL_VALUES: Dict[int, str] = {n + 1: name for n, name in enumerate(LABEL_CHANNELS)}
# segment names (lower case, words) that mean each label, for maps that name their segments
_NAMES = {
    "liver": {"liver", "hepar", "liver parenchyma", "whole liver"},
    "portal_vein": {"portal vein", "portal veins", "portal vein tree", "portal venous system", "pv"},
    "hepatic_vein": {"hepatic vein", "hepatic veins", "hv"},
    "hcc": {"hcc", "hepatocellular carcinoma", "tumour", "tumor", "liver tumour", "liver tumor", "lesion",
            "liver lesion", "neoplasm", "mass"},
}


#: SNOMED CT codes of the labels where one is unambiguous (the HCC's morphology is left uncoded)
_CODES = {"liver": ("SCT", "10200004", "Liver"), "portal_vein": ("SCT", "32764006", "Portal vein"),
          "hepatic_vein": ("SCT", "8887007", "Hepatic vein")}


def label_segments():
    """The :class:`~pantheon.results.Segment` list of a 3D-LLDM label map (names, colours, codes)."""
    from ...anatomy import HCC_COLORS
    return [Segment(v, name, HCC_COLORS[name], _CODES.get(name)) for v, name in LABEL_VALUES.items()]


def _channel_of(name: str) -> Optional[str]:
    key = " ".join("".join(c if c.isalnum() else " " for c in str(name).lower()).split())
    for channel, names in _NAMES.items():
        if key in names or key.replace(" ", "_") == channel:
            return channel
    return None


def lldm_labels(volume: Volume, what: str = "label map") -> np.ndarray:
    """The label map as uint8 3D-LLDM values (1 liver, 2 portal vein, 3 hepatic veins, 4 HCC);
    InputError in one sentence when it cannot be one.

    Where the file names its segments (.seg.nrrd, a Slicer colour table), names decide (a segment
    named "hepatocellular carcinoma" or "tumour" is the HCC); unnamed labels and segments with other
    names are refused, not guessed. Without names the values must be 0-4. A liver is required.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"The {what} must be a pantheon Volume, got {type(volume).__name__}.")
    check_3d_size(volume, what, "3D-LLDM synthesises 3D volumes from 3D label maps", None, f"The {what}")
    ints, present = check_label_map(volume, what)
    values = sorted(v for v in present if v != 0)
    names = dict((volume.metadata or {}).get("segments") or {})
    out = np.zeros(ints.shape, np.uint8)
    if names:
        unknown = [f"{names.get(v, f'unnamed label {v}')}" for v in values if _channel_of(names.get(v, "")) is None]
        if unknown:
            raise InputError(f"The {what} has segments 3D-LLDM does not know ({', '.join(unknown[:6])}); it reads "
                             "liver, portal vein, hepatic vein and HCC (hepatocellular carcinoma): remove or "
                             "rename the others.")
        for v in values:
            out[ints == v] = LABEL_CHANNELS.index(_channel_of(names[v])) + 1
    else:
        unknown = [v for v in values if v not in LABEL_VALUES]
        if unknown:
            raise InputError(f"The {what} has labels {', '.join(map(str, unknown[:6]))} and no segment names; "
                             "3D-LLDM reads 1 liver, 2 portal vein, 3 hepatic veins and 4 HCC: relabel it, or use a "
                             ".seg.nrrd that names the segments.")
        out[...] = ints
    if not (out == 1).any():
        raise InputError(f"The {what} has no liver (label 1, or a segment named liver); 3D-LLDM synthesises a "
                         "liver MRI around the liver it is given." if values else
                         f"The {what} is empty (every voxel is 0); 3D-LLDM needs at least a liver to synthesise "
                         "around.")
    return out


def prepare_labels(label_volume: Volume, spacing=MODEL_SPACING, multiple: int = 16
                   ) -> Tuple[np.ndarray, Callable[[np.ndarray], Volume], Tuple[int, int, int]]:
    """(padded model-grid label array (K, J, I) uint8, ``back``, unpadded model shape).

    ``back(array)`` takes a float array of the padded model grid's shape and returns it as a
    Volume on ``label_volume``'s own grid (linear resampling, exact geometry). The label volume
    must already hold 3D-LLDM values (:func:`lldm_labels`).
    """
    from ..neonet.preprocess import resample_to_model
    model, back_volume = resample_to_model(label_volume, spacing, "nearest")
    shape = model.shape
    padded = tuple(int(-(-s // multiple) * multiple) for s in shape)
    if int(np.prod(padded)) > MAX_MODEL_VOXELS:
        extent = " x ".join(f"{n * s:.0f}" for n, s in zip(label_volume.size_ijk, label_volume.spacing))
        raise InputError(f"The label map spans {extent} mm; at {spacing[0]:g} mm that is a model grid of "
                         f"{' x '.join(map(str, padded[::-1]))} voxels, more than this model handles "
                         f"({MAX_MODEL_SIDE}^3 voxels): crop it to the abdomen.")
    arr = np.zeros(padded, np.uint8)
    arr[:shape[0], :shape[1], :shape[2]] = model.array

    def back(values: np.ndarray) -> Volume:
        crop = np.asarray(values, dtype=np.float32)[:shape[0], :shape[1], :shape[2]]
        return back_volume(model.with_array(crop), "linear")

    return arr, back, shape


def one_hot(labels: np.ndarray, use: Optional[Sequence[str]] = None):
    """(1, 4, K, J, I) float32 torch tensor: one channel per :data:`LABEL_CHANNELS` value.

    ``use``: the labels that steer the synthesis (default all); the voxels of the others join the
    liver channel, so their channel is empty and the liver is whole (see :func:`check_use`).
    """
    import torch
    left_out = [v for v, name in enumerate(LABEL_CHANNELS, start=1) if use is not None and name not in use]
    if left_out:
        labels = np.where(np.isin(labels, left_out), 1, labels)
    lab = torch.from_numpy(np.ascontiguousarray(labels)).long()
    return torch.stack([lab == v for v in range(1, len(LABEL_CHANNELS) + 1)])[None].float()


#: Labels the user may leave out of the conditioning. The demo ControlNet was trained with the
#: vessel channels dropped at random (merged into the liver), so where they are left out it draws
#: vessels of its own; it was never taught to invent HCCs (a healthy map must stay healthy), so an
#: HCC left out becomes liver. The liver itself always steers.
OPTIONAL_LABELS: Tuple[str, ...] = ("portal_vein", "hepatic_vein", "hcc")


def check_use(use) -> Tuple[str, ...]:
    """The labels that steer a synthesis, validated (names of :data:`LABEL_CHANNELS`, the liver among
    them), in channel order; None = all."""
    if use is None:
        return LABEL_CHANNELS
    if isinstance(use, str):
        use = [u for u in use.replace(" ", ",").split(",") if u]
    if not isinstance(use, (list, tuple)) or not all(isinstance(u, str) for u in use):
        raise InputError(f"The labels that steer the synthesis must be names among {', '.join(LABEL_CHANNELS)}, "
                         f"got {use!r}.")
    names = [str(u).strip().lower().replace("-", "_") for u in use]
    unknown = [n for n in names if n not in LABEL_CHANNELS]
    if unknown:
        raise InputError(f"Unknown label {unknown[0]!r} to steer the synthesis; choose from "
                         f"{', '.join(LABEL_CHANNELS)}.")
    if "liver" not in names:
        raise InputError("The liver always steers a 3D-LLDM synthesis; keep 'liver' among the labels.")
    return tuple(n for n in LABEL_CHANNELS if n in names)


def check_synthesis_params(steps, seed, conditioning_scale, model) -> Tuple[int, int, Optional[float]]:
    limit = int(model.config.get("num_train_timesteps") or 1000)
    steps = require_int(steps, "number of DDIM steps", 1, limit)
    seed = require_int(seed, "seed", 0)
    if conditioning_scale is not None:
        conditioning_scale = require_number(conditioning_scale, "ControlNet scale", 0.0, 10.0,
                                            note="how strongly the labels steer the synthesis")
    return steps, seed, conditioning_scale


def synthesize(label_volume: Volume, model, steps: int = NEOGEN_DDIM_STEPS, seed: int = 0,
               conditioning_scale: Optional[float] = None, progress=None, cancel=None,
               max_voxels: Optional[int] = MAX_VOXELS, weights_id: str = "", demo: bool = False,
               use: Optional[Sequence[str]] = None) -> Result:
    """``volumes["synthetic_mri"]``: an HBP MR volume for the anatomy in ``label_volume``, on its grid.

    DDIM with ``steps`` steps from the seeded noise (same seed, same volume), ControlNet residuals
    scaled by ``conditioning_scale`` (default: the model's). ``use``: the labels that steer it
    (:func:`check_use`; default all). ``progress(fraction, message)`` after every step; ``cancel``
    raises :class:`pantheon.errors.Cancelled` between steps.
    """
    import torch
    rep = Reporter(progress, cancel)
    steps, seed, conditioning_scale = check_synthesis_params(steps, seed, conditioning_scale, model)
    use = check_use(use)
    if isinstance(label_volume, Volume):
        check_3d_size(label_volume, "label map", "3D-LLDM synthesises 3D volumes from 3D label maps", max_voxels,
                      "The label map")
    labels = label_volume.with_array(lldm_labels(label_volume))
    rep(0.02, "Putting the labels on the model grid")
    model_labels, back, shape = prepare_labels(labels, MODEL_SPACING, model.size_multiple)
    device = model.scale_factor.device
    masks = one_hot(model_labels, use).to(device)
    g = torch.Generator(device=device).manual_seed(int(seed))
    with torch.inference_mode():
        img = model.generate(masks, labels=None, num_inference_steps=steps, generator=g, cancel=cancel,
                             progress=rep.sub(0.05, 0.9), conditioning_scale=conditioning_scale)
    rep(0.92, "Resampling onto the label map's grid")
    out = back(img[0, 0].float().clamp(0, 1).cpu().numpy())
    res = Result()
    res.volumes["synthetic_mri"] = label_volume.with_array(out.array.astype(np.float32))
    # the conditioning labels (3D-LLDM values, after any edit) beside the image: a consistent pair
    res.labels["labels"] = LabelOutput(labels, label_segments())
    counts = np.bincount(labels.array.ravel(), minlength=len(LABEL_CHANNELS) + 1)
    voxel_ml = float(np.prod(label_volume.spacing)) / 1000.0
    res.scalars.update({"steps": float(steps), "seed": float(seed),
                        **{f"{name}_ml": float(counts[n + 1] * voxel_ml) for n, name in enumerate(LABEL_CHANNELS)}})
    scale = model.config.get("conditioning_scale", 1.0) if conditioning_scale is None else conditioning_scale
    strength = float(model.config.get("init_strength", 1.0))
    start = ("from pure noise" if strength >= 1.0 else
             f"from a noised label-painted guide at {strength:.0%} of the schedule")
    res.notes.update({
        "model": "3D-LLDM (arXiv 2603.23845), architecture reconstructed from the abstract",
        "weights": weights_id or "in-memory model",
        "model_grid": (f"{' x '.join(map(str, shape[::-1]))} voxels of {MODEL_SPACING[0]:g} mm (closest-RAS axes), "
                       f"padded to {' x '.join(map(str, model_labels.shape[::-1]))}"),
        "synthesis": (f"DDIM, {steps} steps {start}, ControlNet scale {float(scale):g}, seed {seed}; intensities "
                      "on the model's [0, 1] scale (0.5th / 99.5th percentile of a training image)"),
        "research_only": "Synthetic images for research and data augmentation; not for diagnosis.",
    })
    if use != LABEL_CHANNELS:
        res.notes["labels_used"] = (f"steered by {', '.join(use)}; "
                                    f"{', '.join(n for n in LABEL_CHANNELS if n not in use)} left to the model "
                                    "(merged into the liver)")
    if demo:
        res.notes["warning"] = "Demo weights trained on synthetic phantoms: they know phantoms, not patients."
    rep(1.0, "Done")
    return res


def load_model(weights: Optional[str] = None, device: str = "cpu"):
    """(model, weights id, demo) from a .safetensors path or a model-card id (default: the demo card)."""
    from pathlib import Path

    from ...runtime import resolve_weights_argument
    from .model import load_lldm
    path, card = resolve_weights_argument(weights, DEMO_CARD)
    model = load_lldm(path, map_location=device)
    wid = card.id if card is not None else Path(path).name
    return model, wid, bool(card is not None and card.demo) or "demo" in wid
