"""PNIPredict: NeoNet pipelines on whole MRI volumes; every output lands on the input's voxels.

``predict``: MRI (any orientation and spacing) -> closest-RAS axes at the model spacing ->
NeoSeg (liver + tumour; or a tumour mask the user supplies) -> TLCR box around the largest tumour
component -> PattenNet on the crop -> PNI probability (sigmoid of the logit) and the attention map,
upsampled to the crop and put back onto the input grid (zero outside the box).

``synthesize``: a label map (NeoSeg ids: 1 liver, 2 tumour) -> the TLCR box on the model grid ->
NeoGen (latent diffusion + ControlNet, DDIM) -> synthetic MR patches mapped onto the label map's grid.

NeoNet (arXiv 2603.29449) publishes no weights and no architecture details: the bundled demo
weights are trained on synthetic phantoms, and every size is an assumption (the paper gives none;
see ``pantheon.models.neonet``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..defaults import NEOGEN_DDIM_STEPS, NEOGEN_MAX_DDIM_STEPS, NEONET_DEMO_CARDS
from ..errors import InputError
from ..io.validate import COMMAND_PIXEL_LIMITS, check_3d_size, check_label_map, describe_geometry_mismatch, require_int
from ..io.volume import Volume
from ..progress import Reporter
from ..results import HeatmapOutput, LabelOutput, Result, Segment

DEMO_NEOSEG_CARD = NEONET_DEMO_CARDS["neoseg"]
DEMO_NEOGEN_CARD = NEONET_DEMO_CARDS["neogen"]
DEMO_PATTENNET_CARD = NEONET_DEMO_CARDS["pattennet"]
#: Largest MRI or label map (voxels) the NeoNet commands take by default (e.g. 512 x 512 x 760).
#: Overridable: ``max_voxels`` of :func:`predict` / :func:`synthesize` (0 = no limit), ``--max-pixels``.
MAX_VOXELS = COMMAND_PIXEL_LIMITS["pni"]
#: DDIM steps :func:`synthesize` accepts (the noise schedule has 1000 training steps).
MAX_STEPS = NEOGEN_MAX_DDIM_STEPS

LIVER, TUMOUR = 1, 2
SEGMENTS = [Segment(LIVER, "liver", (0.87, 0.51, 0.28), ("SCT", "10200004", "Liver")),
            Segment(TUMOUR, "tumour", (0.80, 0.20, 0.55), ("SCT", "108369006", "Neoplasm"))]

CAVEATS = {
    "research_only": "Research software: PNI prediction is not validated for clinical use.",
    "threshold": "pni_probability >= 0.5 is read as PNI positive; 0.5 is the untuned sigmoid midpoint, "
                 "not a calibrated operating point (the paper reports AUC only).",
    "heatmap": "The attention map (pni_attention) is PattenNet's spatial attention inside the crop box (0 "
               "outside): where the classifier looked, not a map of invasion.",
}


@dataclass
class NeoNetModels:
    """Loaded NeoNet components plus the grid they work on.

    ``spacing`` (si, sj, sk) mm of the model grid, ``patch_shape`` (K, J, I) of the TLCR crop,
    ``roi`` (K, J, I) of NeoSeg's sliding window; defaults from :mod:`pantheon.models.neonet.preprocess`.
    """

    neoseg: object = None
    neogen: object = None
    pattennet: object = None
    spacing: Tuple[float, float, float] = None
    patch_shape: Tuple[int, int, int] = None
    roi: Tuple[int, int, int] = None
    ids: Dict[str, str] = field(default_factory=dict)
    demo: bool = False
    #: NeoSeg windows per forward pass; batching windows is several times faster on CPU than one by one.
    sw_batch_size: int = 8

    def __post_init__(self):
        from ..models.neonet.preprocess import MODEL_SPACING, NEOSEG_ROI, PATCH_SHAPE
        self.spacing = tuple(float(s) for s in (self.spacing or MODEL_SPACING))
        self.patch_shape = tuple(int(s) for s in (self.patch_shape or PATCH_SHAPE))
        self.roi = tuple(int(s) for s in (self.roi or NEOSEG_ROI))

    def need(self, *kinds: str) -> None:
        from ..errors import CheckpointError
        for k in kinds:
            if getattr(self, k) is None:
                raise CheckpointError(f"No {k} model was loaded; this step needs one.")


def _resolve(arg: Optional[str], default_card: str):
    from ..runtime import resolve_weights_argument
    return resolve_weights_argument(arg, default_card)


def load_neonet_models(neoseg: Optional[str] = None, neogen: Optional[str] = None, pattennet: Optional[str] = None,
                       components: Sequence[str] = ("neoseg", "neogen", "pattennet"), spacing=None,
                       patch_shape=None, roi=None, device: str = "cpu") -> NeoNetModels:
    """NeoNet components from weights paths or model-card ids (default: the bundled demo cards).

    Only the kinds in ``components`` are loaded (predict with a tumour mask needs only PattenNet).
    """
    from ..models.neonet import load_neonet_component
    args = {"neoseg": (neoseg, DEMO_NEOSEG_CARD), "neogen": (neogen, DEMO_NEOGEN_CARD),
            "pattennet": (pattennet, DEMO_PATTENNET_CARD)}
    loaded, ids, demo = {}, {}, False
    for kind in components:
        arg, default = args[kind]
        path, card = _resolve(arg, default)
        loaded[kind] = load_neonet_component(path, kind, map_location=device)
        ids[kind] = card.id if card is not None else Path(path).name
        demo = demo or bool(card is not None and card.demo) or "demo" in ids[kind]
    return NeoNetModels(spacing=spacing, patch_shape=patch_shape, roi=roi, ids=ids, demo=demo, **loaded)


# ---------------------------------------------------------------------------- helpers
def _device(module):
    return next(module.parameters()).device


#: NeoNet's label values (NeoSeg ids; the liver MRI phantom's labels): 1 liver and 2 tumour are used,
#: 3 bile duct and 4 hepatic vessels are read and ignored. Other values without names are refused.
KNOWN_LABELS = {1: "liver", 2: "tumour", 3: "bile duct", 4: "hepatic vessels"}
# Segment names (lower case, words) and SNOMED CT codes that mean each NeoNet label.
_NAMES = {
    LIVER: ({"liver", "hepar", "liver parenchyma", "whole liver"}, {"10200004"}),
    TUMOUR: ({"tumour", "tumor", "neoplasm", "lesion", "mass", "cholangiocarcinoma", "carcinoma", "cancer",
              "cca", "icc", "liver tumour", "liver tumor", "hepatic tumour", "hepatic tumor", "liver lesion"},
             {"108369006", "86049000", "70179006", "312104005"}),
    3: ({"bile duct", "bile ducts", "biliary tree", "duct", "ducts"}, {"28273000"}),
    4: ({"hepatic vessels", "hepatic vessel", "vessels", "vessel", "portal vein", "hepatic vein", "hepatic veins"},
        {"32764006", "8887007"}),
}


def _label_of(name: str, codes) -> Optional[int]:
    key = " ".join("".join(c if c.isalnum() else " " for c in str(name).lower()).split())
    for label, (names, sct) in _NAMES.items():
        if key in names or any(str(code) in sct for _, code in (codes or [])):
            return label
    return None


def _tumour_mask_arrays(mask: Volume, what: str = "tumour mask") -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(tumour, liver or None) boolean arrays of a user label map; InputError when it is not one NeoNet
    can read (see :func:`check_label_map` and :func:`neonet_labels`)."""
    labels = neonet_labels(mask, what)
    if labels["binary"]:
        return labels["array"] != 0, None
    return labels["array"] == TUMOUR, labels["array"] == LIVER


def neonet_labels(mask: Volume, what: str = "label map") -> dict:
    """Check a label map and express it in NeoNet's ids; InputError with one sentence otherwise.

    - It must be a label map: one component, whole numbers from 0, few and small labels
      (:func:`pantheon.io.validate.check_label_map`): a CT in HU or an MRI is refused.
    - Where the file names its segments (.seg.nrrd, a Slicer colour table), names decide: segments
      named (or coded) liver / tumour become 1 / 2 whatever their values (e.g. a BTCV map's liver, 6),
      bile duct / vessels 3 / 4; others are ignored; without a liver or tumour segment it is refused.
    - Without names, the values must be NeoNet's (:data:`KNOWN_LABELS`), or a binary mask (one
      nonzero value, read as tumour); other values (a BTCV organ map, where 1 is the spleen) are refused.

    Returns ``{"array": uint8 in NeoNet ids, "binary": bool, "ignored": [names]}``.
    """
    ints, present = check_label_map(mask, f"{what}")
    values = sorted(v for v in present if v != 0)
    names = dict((mask.metadata or {}).get("segments") or {}) if isinstance(mask, Volume) else {}
    codes = dict((mask.metadata or {}).get("segment_codes") or {}) if isinstance(mask, Volume) else {}
    if names:
        mapping = {v: _label_of(n, codes.get(v)) for v, n in names.items()}
        if not any(m in (LIVER, TUMOUR) for m in mapping.values()):
            listed = ", ".join(str(n) for n in list(names.values())[:8]) + (", ..." if len(names) > 8 else "")
            raise InputError(f"The {what} names its segments {listed}, and none is a liver or a tumour; NeoNet "
                             "needs a segment named liver or tumour (tumor, lesion, neoplasm).")
        out = np.zeros(ints.shape, np.uint8)
        for v, m in mapping.items():
            if m is not None and v in present:
                out[ints == v] = m
        ignored = [str(names[v]) for v in values if mapping.get(v) is None and v in names]
        unnamed = [v for v in values if v not in names]
        if unnamed:
            ignored.append(f"unnamed label{'s' if len(unnamed) > 1 else ''} {', '.join(map(str, unnamed[:6]))}")
        return {"array": out, "binary": False, "ignored": ignored}
    if len(values) <= 1:  # binary (0/1, 0/255, ...): every nonzero voxel is tumour
        return {"array": (ints != 0).astype(np.uint8) * TUMOUR if values else np.zeros(ints.shape, np.uint8),
                "binary": True, "ignored": []}
    unknown = [v for v in values if v not in KNOWN_LABELS]
    if unknown:
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise InputError(f"The {what} has labels {shown} and no segment names; NeoNet reads 1 liver and 2 tumour "
                         "(3 bile duct and 4 hepatic vessels are ignored), so labels above 4 mean another labelling, "
                         "e.g. a BTCV organ map where 1 is the spleen: relabel it, or use a .seg.nrrd (or a Slicer "
                         "colour table) that names the segments.")
    return {"array": ints.astype(np.uint8), "binary": False,
            "ignored": [KNOWN_LABELS[v] for v in values if v not in (LIVER, TUMOUR)]}


def _box_rows(box) -> Tuple[list, dict]:
    from ..models.neonet.tlcr import box_as_roi
    roi = box_as_roi(box)
    o = np.asarray(roi["orientation_ras"])
    row = {"centre_r": roi["centre_ras"][0], "centre_a": roi["centre_ras"][1], "centre_s": roi["centre_ras"][2],
           "size_i_mm": roi["size_mm"][0], "size_j_mm": roi["size_mm"][1], "size_k_mm": roi["size_mm"][2]}
    row.update({f"orientation_{r}{c}": float(o[r, c]) for r in range(3) for c in range(3)})
    roi_json = {"centre_ras": roi["centre_ras"], "size_mm": roi["size_mm"],
                "orientation_ras": o.tolist(), "object_to_world_ras": np.asarray(roi["object_to_world_ras"]).tolist(),
                "shape_kji": list(box.shape), "spacing_mm": list(box.spacing)}
    return [row], roi_json


def _model_notes(models: NeoNetModels) -> Dict[str, str]:
    notes = {"model": "NeoNet (arXiv 2603.29449), architectures reconstructed from the abstract",
             "weights": ", ".join(f"{k}={v}" for k, v in models.ids.items()) or "in-memory models",
             "model_spacing_mm": "x".join(f"{s:g}" for s in models.spacing),
             "crop_shape_kji": "x".join(map(str, models.patch_shape))}
    if models.demo:
        notes["warning"] = "Demo weights trained on synthetic phantoms: not for clinical use."
    return notes



# ---------------------------------------------------------------------------- predict
def predict(volume: Volume, models: NeoNetModels, tumour_mask: Optional[Volume] = None, progress=None,
            cancel=None, max_voxels: Optional[int] = MAX_VOXELS) -> Result:
    """PNI probability, tumour segmentation, attention heat map and crop box for one MRI.

    ``tumour_mask``: optional label volume on the MRI's exact grid (binary = tumour, or NeoSeg ids
    1 liver / 2 tumour); when given NeoSeg is skipped. Raises InputError for a 2D image, a CT-range
    image, NaNs, a mask on another grid, or when no tumour is found.
    """
    import torch

    from ..models.neonet import apply_crop, attention_to_image, invert_crop, masks_from_labels, tlcr_box
    from ..models.neonet.preprocess import check_mri, normalize_mri, resample_to_model

    rep = Reporter(progress, cancel)
    models.need("pattennet")
    check_mri(volume, max_voxels=max_voxels)
    user_tumour = user_liver = None
    if tumour_mask is not None:
        if not isinstance(tumour_mask, Volume) or tumour_mask.components != 1:
            raise InputError("The tumour mask must be a single-component label volume.")
        if not tumour_mask.same_geometry(volume, atol=1e-3):
            how = describe_geometry_mismatch(tumour_mask, volume, "the mask", "the MRI")
            raise InputError("The tumour mask does not share the MRI's geometry "
                             f"({how or 'shape, spacing, origin or direction differ'}); resample it onto the MRI "
                             "first.")
        user_tumour, user_liver = _tumour_mask_arrays(tumour_mask)
        if not user_tumour.any():
            raise InputError("No tumour was found in the supplied tumour mask (it is empty, or a label map "
                             "without label 2); draw the tumour (any nonzero value, or 2 in a liver/tumour "
                             "label map) and try again.")
    else:
        models.need("neoseg")
    rep(0.02, "Resampling to the model grid")
    model_vol, back = resample_to_model(volume, models.spacing, "linear")
    norm = model_vol.with_array(normalize_mri(model_vol.array))
    rep.check()

    size_ijk = models.patch_shape[::-1]
    if user_tumour is None:
        rep(0.1, "Segmenting liver and tumour (NeoSeg)")
        seg = models.neoseg
        x = torch.from_numpy(np.ascontiguousarray(norm.array))[None, None]
        with torch.inference_mode():
            probs = seg.predict(x.to(_device(seg)), roi_size=models.roi, sw_batch_size=models.sw_batch_size)
        lab_model = probs[0].argmax(0).to(torch.uint8).cpu().numpy()
        tumour_prob = probs[0, TUMOUR].float().cpu().numpy()
        del probs
        rep.check()
        model_labels = norm.with_array(lab_model)
        if not (lab_model == TUMOUR).any():
            raise InputError("No tumour was found in the MRI by NeoSeg; supply a tumour mask with --tumour-mask "
                             "(tumour_mask=...).")
        labels_in = back(model_labels, "nearest")
        box = tlcr_box(model_labels, size=size_ijk, spacing=models.spacing, label=TUMOUR)
        crop_labels = apply_crop(model_labels, box, "nearest")
        # PattenNet reads NeoSeg's tumour *probability* (it was trained on it): a thin perineural
        # extension NeoSeg is unsure of still shows, where the argmax would drop it
        crop_tumour = apply_crop(norm.with_array(tumour_prob), box, "linear", fill=0.0).array
    else:
        lab = np.zeros(volume.shape, np.uint8)
        if user_liver is not None:
            lab[user_liver] = LIVER
        lab[user_tumour] = TUMOUR
        labels_in = volume.with_array(lab)
        # The box from the mask on the input's own voxels: its axes (the input's, permuted to the closest
        # RAS) are the model grid's axes, and the centroid is exact.
        box = tlcr_box(labels_in, size=size_ijk, spacing=models.spacing, label=TUMOUR)
        crop_labels = apply_crop(labels_in, box, "nearest")
        crop_tumour = (crop_labels.array == TUMOUR).astype(np.float32)
    rep(0.6, "Classifying the tumour crop (PattenNet)")
    crop = apply_crop(norm, box, "linear", fill=0.0)
    net = models.pattennet
    dev = _device(net)
    x = torch.from_numpy(np.ascontiguousarray(crop.array, dtype=np.float32))[None, None].to(dev)
    m = int(net.config.get("mask_channels", 0))
    masks = None
    if m:
        masks = masks_from_labels(torch.from_numpy(crop_labels.array.astype(np.int64)))[:, :m]
        masks[:, 0] = torch.from_numpy(np.ascontiguousarray(crop_tumour, dtype=np.float32))
        masks = masks.to(dev)
    with torch.inference_mode():
        was = net.training
        net.eval()
        try:
            logit, attention = net(x, masks)
        finally:
            net.train(was)
        prob = float(torch.sigmoid(logit.float())[0])
        heat = attention_to_image(attention, models.patch_shape)[0, 0].cpu().numpy().astype(np.float32)
    rep(0.85, "Mapping the heat map onto the MRI")
    heat_in = invert_crop(box.empty_volume().with_array(heat), volume, "linear", fill=0.0)
    heat_in = volume.with_array(heat_in.array.astype(np.float32))

    res = Result()
    labels_in = volume.with_array(labels_in.array.astype(np.uint8))
    present = set(np.unique(labels_in.array).tolist())
    res.labels["tumour"] = LabelOutput(labels_in, [s for s in SEGMENTS if s.value in present])
    res.heatmaps["pni_attention"] = HeatmapOutput(heat_in, "inferno", (0.0, 1.0),
                                                  "PattenNet spatial attention in the TLCR crop (0 outside)")
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    res.scalars["pni_probability"] = prob
    res.scalars["tumour_volume_ml"] = float((labels_in.array == TUMOUR).sum()) * voxel_ml
    rows, roi_json = _box_rows(box)
    res.tables["crop_box"] = rows
    res.notes.update(_model_notes(models))
    res.notes.update(CAVEATS)
    res.notes["pni_prediction"] = "positive" if prob >= 0.5 else "negative"
    res.notes["tumour_source"] = "supplied tumour mask" if tumour_mask is not None else "NeoSeg"
    res.notes["crop_box"] = json.dumps(roi_json)
    rep(1.0, "Done")
    return res


# ---------------------------------------------------------------------------- synthesize
def check_synthesis_params(pni=1, n=1, steps=NEOGEN_DDIM_STEPS, seed=0):
    """(pni, n, steps, seed) checked in plain words: PNI class 0 or 1, at least one patch, 1 to
    MAX_STEPS DDIM steps, a seed from 0; InputError otherwise."""
    pni = require_int(pni, "PNI class", 0, 1)
    n = require_int(n, "number of patches", minimum=1)
    steps = require_int(steps, "number of DDIM steps", 1, MAX_STEPS)
    seed = require_int(seed, "seed", 0, 2 ** 63 - 1)
    return pni, n, steps, seed


def synthesize(label_volume: Volume, models: NeoNetModels, pni: int = 1, n: int = 1, steps: int = NEOGEN_DDIM_STEPS,
               seed: int = 0, progress=None, cancel=None, max_voxels: Optional[int] = MAX_VOXELS) -> Result:
    """``n`` synthetic MR patches for the anatomy in ``label_volume`` (1 liver, 2 tumour; a binary map is
    a tumour), PNI class ``pni`` (0/1), DDIM with ``steps`` steps, reproducible by ``seed``.

    The masks are resampled to the model grid, cropped with the TLCR box (around the tumour, or the
    liver when there is no tumour), NeoGen generates on the crop, and each patch comes back on the
    label map's own grid as ``volumes["synthetic_mri_<i>"]`` (zero outside the box).
    """
    import torch

    from ..models.neonet import apply_crop, invert_crop, masks_from_labels, tlcr_box

    rep = Reporter(progress, cancel)
    models.need("neogen")
    pni, n, steps, seed = check_synthesis_params(pni, n, steps, seed)
    if not isinstance(label_volume, Volume) or label_volume.components != 1:
        raise InputError("The masks must be a single-component label volume.")
    check_3d_size(label_volume, "label map", "NeoGen needs 3D masks", max_voxels, "The label map")
    tumour, liver = _tumour_mask_arrays(label_volume, "label map")
    lab = np.zeros(label_volume.shape, np.uint8)
    if liver is not None:
        lab[liver] = LIVER
    lab[tumour] = TUMOUR
    if not lab.any():
        raise InputError("The label map is empty: it needs a tumour (label 2, or any nonzero value in a binary "
                         "mask) or a liver (label 1) to condition the synthesis on.")
    gen = models.neogen
    cfg = getattr(gen, "config", None)
    require_int(steps, "number of DDIM steps", 1, int((cfg or {}).get("num_train_timesteps") or MAX_STEPS))
    gen.check_spatial_shape(models.patch_shape, "the TLCR crop")
    rep(0.02, "Cropping the masks onto the model grid")
    labels = label_volume.with_array(lab)
    # The TLCR box at the model spacing, axes = the label map's axes permuted to the closest RAS (the
    # model grid's axes); nearest-neighbour resampling onto it is the model-grid crop in one step.
    target = TUMOUR if tumour.any() else LIVER
    box = tlcr_box(labels, size=models.patch_shape[::-1], spacing=models.spacing, label=target)
    crop = apply_crop(labels, box, "nearest")
    masks = masks_from_labels(torch.from_numpy(crop.array.astype(np.int64)))
    c = int(gen.config["mask_channels"])
    masks = masks[:, :c] if c <= masks.shape[1] else torch.cat(
        [masks, torch.zeros((1, c - masks.shape[1]) + masks.shape[2:])], 1)
    cls = None if gen.config.get("num_classes") is None else int(pni)
    g = torch.Generator(device=_device(gen)).manual_seed(int(seed))
    res = Result()
    for i in range(n):
        sub = rep.sub(0.05 + 0.9 * i / n, 0.05 + 0.9 * (i + 1) / n)
        with torch.inference_mode():
            img = gen.generate(masks, labels=cls, num_inference_steps=steps, generator=g, progress=sub, cancel=cancel)
        patch = box.empty_volume().with_array(img[0, 0].float().cpu().numpy())
        out = invert_crop(patch, label_volume, "linear", fill=0.0)
        res.volumes[f"synthetic_mri_{i + 1}"] = label_volume.with_array(out.array.astype(np.float32))
    rows, roi_json = _box_rows(box)
    res.tables["crop_box"] = rows
    res.scalars.update({"pni_class": float(pni), "patches": float(n), "steps": float(steps), "seed": float(seed)})
    res.notes.update(_model_notes(models))
    res.notes["research_only"] = CAVEATS["research_only"]
    strength = float(gen.config.get("init_strength", 1.0))
    start = ("from pure noise" if strength >= 1.0 else
             f"from a noised mask-painted guide at {strength:.0%} of the noise schedule (so only the DDIM "
             f"steps below that level run, about {max(1, round(steps * strength))})")
    res.notes["synthesis"] = (f"NeoGen DDIM schedule of {steps} steps {start}, ControlNet scale "
                              f"{float(gen.config.get('conditioning_scale', 1.0)):g}, PNI class {pni}, seed {seed}; "
                              "intensities on the model's [0, 1] scale; zero outside the TLCR box.")
    res.notes["crop_box"] = json.dumps(roi_json)
    rep(1.0, "Done")
    return res
