"""Training and evaluation of NeoNet (NeoSeg, NeoGen, PattenNet) (arXiv 2603.29449: 5-fold CV, AUC).

    pantheon pni train --stage seg|vae|ldm|controlnet|cls     ->  train_stage(...)
    pantheon pni eval                                          ->  cross_validate(...) / evaluate_classifier(...)

Data (:func:`load_cases`): phantom seeds (``range``/list of ints, :func:`pantheon.synth.make_liver_mri_phantom`
on the model grid), a list of :class:`Case`, or a CSV (or a folder holding ``cases.csv``) with columns
``image,label,pni[,case_id][,patient_id]`` (paths relative to the CSV). Every case is checked
(:func:`~pantheon.models.neonet.preprocess.check_mri`), resampled to the model grid and normalised
(see :mod:`pantheon.models.neonet.preprocess`) once.

Stages (one function, :func:`train_stage`; each writes ``out_dir/<stage>/checkpoint.pt`` and the
final ``out_dir/<stage>/<component>.safetensors`` via ``save_neonet_component``):

- ``seg``: NeoSeg on random ``NEOSEG_ROI`` windows of the whole model-grid volume (centred on a
  tumour-extension voxel -- :func:`tumour_extension` -- with p ``SEG_EXTENSION_WINDOW_P`` when the
  case has one, else on a tumour voxel with p 0.5); targets 0 background, 1 liver, 2 tumour; MONAI
  ``DiceCELoss`` (class weights ``SEG_CLASS_WEIGHTS``) plus a cross-entropy term weighted up
  ``SEG_EXTENSION_WEIGHT``-fold on the extension voxels.
- ``vae`` / ``ldm`` / ``controlnet``: NeoGen on TLCR patches (``tlcr_patch``; image in [0, 1],
  masks = ``masks_from_labels`` (tumour, liver), class label = PNI) with ``NeoGen.training_losses``.
  ``ldm`` starts from the ``vae`` result and calibrates the latent scale; ``controlnet`` starts
  from ``ldm`` and copies the UNet encoder into the ControlNet.
- ``cls``: PattenNet.from_neogen (frozen VAE encoder, tumour mask through a small stem) on
  TLCR patches, BCE on balanced batches (:func:`balanced_batch`), label-preserving augmentation
  (:func:`augment_classifier_patch`: flips, 90-degree axial rotations, shifts, intensity jitter),
  AdamW with weight decay 1e-2; with ``val_samples`` the best-validation-AUC weights are kept and
  training may stop early. The minority class is topped up to 1:1 with ``NeoGen.generate`` samples
  conditioned on the masks of the *training* minority cases (:func:`assemble_classifier_set`).
  Synthetic samples are only ever added to the set a classifier is trained on. With ``neoseg``
  every training case is added again as the end-to-end pipeline sees it (:func:`segment_case`:
  crop on NeoSeg's tumour, tumour channel = NeoSeg's tumour probability).

Resuming (the loop: :class:`pantheon.train.loop.TrainLoop`): checkpoints hold only tensors and plain
values (``torch.load(weights_only=True)``).
Every step draws its batch from ``np.random.default_rng([seed, step])`` and seeds torch with
``(seed, step)`` too, so an interrupted and resumed run follows the same trajectory as an
uninterrupted one (the loss history is extended, not restarted).

Cross-validation (:func:`cross_validate`): patient-level stratified k-fold (scikit-learn
``StratifiedGroupKFold``, groups = patient id, stratified by PNI); per fold the classifier is
trained on the training cases (+ synthetic samples from a generator that has seen only the
training cases: ``generator="per_fold"`` trains one per fold, or a NeoGen trained on data
disjoint from all CV cases may be passed; ``generator=None`` disables synthesis) and tested on
the held-out cases: AUC, accuracy, sensitivity, specificity per fold
(:func:`pantheon.metrics.binary_metrics`) and mean ± SD (ddof=1).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..io.volume import Volume
from ..metrics import binary_metrics
from ..models.checkpoints import resume_error
from ..models.neonet.preprocess import (
    MODEL_SPACING,
    NEOSEG_ROI,
    PATCH_SHAPE,
    check_mri,
    normalize_mri,
    resample_to_model,
    tlcr_patch,
)
from ..progress import Reporter
from .loop import Schedule, TrainLoop, TrainResult, Validation, check_stage, read_checkpoint

STAGES = ("seg", "vae", "ldm", "controlnet", "cls")
STAGE_KIND = {"seg": "neoseg", "vae": "neogen", "ldm": "neogen", "controlnet": "neogen", "cls": "pattennet"}
#: The stage a NeoGen stage starts from.
PREVIOUS_STAGE = {"ldm": "vae", "controlnet": "ldm", "cls": "controlnet"}
#: Default learning rates per stage (demo scale; MAISI's and the sibling PNI works' 1e-4 / 1e-5 are for 100+ epochs).
#: The classifier's 1e-2: at 1e-3 its loss sat at chance for hundreds of steps (Adam moves each weight
#: by about lr per step, and the PNI cue must grow from small initial weights); the ControlNet's
#: 2e-3: at 1e-3 its loss barely moved within the CPU budget.
DEFAULT_LR = {"seg": 3e-3, "vae": 2e-3, "ldm": 1e-3, "controlnet": 2e-3, "cls": 1e-2}
#: NeoSeg class weights (background, liver, tumour) in Dice+CE. The perineural tentacle -- the PNI
#: evidence the classifier needs in NeoSeg's mask -- is a thin tube of tumour beside a duct that
#: an unweighted loss happily calls background. Assumption.
SEG_CLASS_WEIGHTS = (1.0, 1.0, 4.0)
#: Tumour-extension emphasis in the NeoSeg loss (see :func:`tumour_extension`): extension voxels get
#: ``1 + SEG_EXTENSION_WEIGHT`` times the cross-entropy weight and ``SEG_EXTENSION_WINDOW_P`` of the
#: training windows are centred on one (cases that have them). Why: the perineural tentacle is ~4%
#: of a PNI+ tumour's voxels and at 4 mm it partial-volumes with the bile duct it wraps; with
#: class weights alone (tumour x2 .. x20) NeoSeg labelled ~4-7% of tentacle voxels tumour (median
#: 0) and the end-to-end classifier was at chance (validation AUC 0.54). Trained from scratch with
#: this emphasis (x60, p 0.6; 3200 steps) NeoSeg found 55% of tentacle voxels on validation
#: phantoms (tumour Dice 0.86 vs 0.92); x100, p 0.8 found 61% but with more stray tumour, and the
#: classifier trained on ground-truth crops then did worse on NeoSeg crops (0.55 vs 0.71).
#: Assumption (demo scale; a real tumour's extensions are a clinical question).
SEG_EXTENSION_WEIGHT = 60.0
SEG_EXTENSION_WINDOW_P = 0.6
#: A tumour voxel is an "extension" when farther than this many equivalent-sphere radii from the
#: tumour's centroid.
SEG_EXTENSION_RADII = 1.3
#: AdamW weight decay per stage; the classifier is the stage that overfits a small training set.
DEFAULT_WEIGHT_DECAY = {"seg": 1e-4, "vae": 1e-4, "ldm": 1e-4, "controlnet": 1e-4, "cls": 1e-2}


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Case:
    """One patient on the model grid: normalised image, label map (1 liver, 2 tumour, ...), PNI (0/1)."""

    case_id: str
    image: Volume
    labels: Volume
    pni: int
    patient_id: Optional[str] = None
    #: NeoSeg's tumour probability on the model grid (set by :func:`segment_case`); the classifier then
    #: reads it, cropped with the same TLCR box, instead of the binary tumour mask.
    tumour_probability: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    _patch: Optional[tuple] = field(default=None, repr=False, compare=False)
    file_extension: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def group(self) -> str:
        return self.patient_id or self.case_id

    def patch(self):
        """(image patch (K, J, I) float32, label patch (K, J, I) uint8) of the TLCR crop (cached)."""
        if self._patch is None:
            img, lab, box = tlcr_patch(self.image, self.labels)
            self._patch = (img.array.astype(np.float32), lab.array.astype(np.uint8), box)
        return self._patch[:2]

    def tumour_patch(self) -> np.ndarray:
        """The classifier's tumour channel on the TLCR crop, float32 (K, J, I): NeoSeg's tumour
        probability when the case was segmented by :func:`segment_case`, else the binary mask."""
        lab = self.patch()[1]
        if self.tumour_probability is None:
            return (lab == 2).astype(np.float32)
        from ..models.neonet import apply_crop
        prob = self.image.with_array(self.tumour_probability.astype(np.float32))
        return apply_crop(prob, self._patch[2], "linear", fill=0.0).array.astype(np.float32)


def prepare_case(image: Volume, labels: Volume, pni, case_id: str = "case",
                 patient_id: Optional[str] = None, spacing=MODEL_SPACING) -> Case:
    """Check, reorient/resample to the model grid and normalise one (image, label map, PNI) case."""
    check_mri(image, case_id)
    if labels.shape != image.shape or not labels.same_geometry(image, atol=1e-3):
        raise InputError(f"Case {case_id}: the label map does not share the image's geometry.")
    img, _ = resample_to_model(image, spacing, "linear")
    lab, _ = resample_to_model(labels, spacing, "nearest")
    img = img.with_array(normalize_mri(img.array))
    lab = lab.with_array(lab.array.astype(np.uint8))
    if not np.any(lab.array == 2):
        raise InputError(f"Case {case_id}: the label map has no tumour (label 2) on the model grid.")
    p = int(pni) if not isinstance(pni, str) else int(pni.strip().lower() in ("1", "true", "yes", "pos", "positive"))
    if p not in (0, 1):
        raise InputError(f"Case {case_id}: PNI must be 0 or 1, got {pni!r}.")
    return Case(str(case_id), img, lab, p, patient_id)


def phantom_case(seed: int, pni: Optional[bool] = None, spacing=MODEL_SPACING) -> Case:
    """A synthetic HBP phantom generated directly on (about) the model grid, as a :class:`Case`."""
    from ..synth.mri_phantom import make_liver_mri_phantom

    mri, lab, info = make_liver_mri_phantom(int(seed), spacing=tuple(spacing), orientation="RAS", pni=pni)
    return prepare_case(mri, lab, int(bool(info["pni"])), case_id=f"phantom-{int(seed)}", spacing=spacing)


def load_cases(data, spacing=MODEL_SPACING, pni_rule: Optional[Callable[[int], Optional[bool]]] = None,
               log=None) -> List[Case]:
    """Cases from phantom seeds (ints), :class:`Case` objects, or a CSV / folder with ``cases.csv``.

    ``pni_rule(seed)`` may fix a phantom's PNI status (default: drawn by the phantom, p = 0.5).
    """
    if isinstance(data, (str, Path)):
        p = Path(data)
        csv_path = p / "cases.csv" if p.is_dir() else p
        if not csv_path.is_file():
            raise InputError(f"No case list at {csv_path}: give a CSV with columns image,label,pni "
                             "or a folder holding cases.csv.")
        from ..io.readers import read_volume
        out = []
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        for n, row in enumerate(rows):
            if not {"image", "label", "pni"} <= set(row):
                raise InputError(f"{csv_path} needs the columns image, label, pni (row {n + 2} has {sorted(row)}).")
            cid = row.get("case_id") or Path(row["image"]).name.split(".")[0]
            img = read_volume(csv_path.parent / row["image"])
            lab = read_volume(csv_path.parent / row["label"])
            lab = lab.with_array(np.rint(lab.array).astype(np.uint8))
            out.append(prepare_case(img, lab, row["pni"], cid, row.get("patient_id") or None, spacing))
            if log:
                log(f"Loaded {cid} ({n + 1}/{len(rows)})")
        return out
    items = list(data)
    out = []
    for item in items:
        if isinstance(item, Case):
            out.append(item)
        elif isinstance(item, (int, np.integer)):
            out.append(phantom_case(int(item), pni_rule(int(item)) if pni_rule else None, spacing))
        else:
            raise InputError(f"Cannot use {type(item).__name__} as a case (phantom seed, Case, or a CSV path).")
    if not out:
        raise InputError("No training cases given.")
    return out


def _cases(data) -> List[Case]:
    if isinstance(data, (list, tuple)) and data and all(isinstance(c, Case) for c in data):
        return list(data)
    return load_cases(data)


# ------------------------------------------------------------------------------------------------ models
def default_configs(size: str = "demo") -> Dict[str, dict]:
    """Constructor arguments of the three components: "demo" (tiny, CPU) or "paper" (the assumed
    paper-scale sizes: MAISI-like NeoGen, 96x96x48 crops)."""
    if size == "demo":
        return {
            # (16, 32, 64): the (8, 16, 32) net reached tumour Dice ~0.6 on the phantoms; this one ~0.8
            "neoseg": dict(channels=(16, 32, 64), strides=(2, 2), num_res_units=1),
            "neogen": dict(patch_size=PATCH_SHAPE, ae_channels=(8, 16), ae_num_res_blocks=1, latent_channels=3,
                           ae_norm_num_groups=8, unet_channels=(16, 32), unet_attention_levels=(False, False),
                           unet_num_head_channels=(16, 32), unet_num_res_blocks=1, unet_norm_num_groups=8,
                           controlnet_embedding_channels=(8, 16), num_train_timesteps=1000,
                           tumour_loss_weight=20.0),
            # mask stem with the radial channel and avg+max pooling: see PattenNet's docstring for why
            "pattennet": dict(dab_channels=(16,), mask_channels=1, dropout=0.2, pooling="avgmax",
                              mask_pooling="conv", radial_channel=True, dense_head=True),
        }
    if size == "paper":
        return {"neoseg": {}, "neogen": {}, "pattennet": dict(mask_channels=1)}
    raise ValueError(f"size must be 'demo' or 'paper', got {size!r}")


def _load_neogen(neogen):
    from ..models.neonet import NeoGen, load_neonet_component
    if isinstance(neogen, NeoGen):
        return neogen
    return load_neonet_component(neogen, "neogen")


def final_weights_path(out_dir, stage: str) -> Path:
    return Path(out_dir) / stage / f"{STAGE_KIND[stage]}.safetensors"


# ------------------------------------------------------------------------------------------------ batches
def _seg_target(labels: np.ndarray) -> np.ndarray:
    t = np.zeros(labels.shape, np.int64)
    t[labels == 1] = 1
    t[labels == 2] = 2
    return t


def tumour_extension(labels: np.ndarray, radii: float = SEG_EXTENSION_RADII) -> np.ndarray:
    """Tumour voxels (label 2) farther than ``radii`` equivalent-sphere radii from the tumour's
    centroid (in voxels): the thin extensions -- a perineural tentacle -- that a segmentation
    loss dominated by the main mass learns to miss. Boolean, ``labels``' shape."""
    t = labels == 2
    out = np.zeros(t.shape, bool)
    idx = np.argwhere(t)
    if len(idx) < 2:
        return out
    d = np.linalg.norm(idx - idx.mean(0), axis=1)
    far = idx[d > radii * np.cbrt(len(idx) * 3 / (4 * np.pi))]
    out[tuple(far.T)] = True
    return out


def _case_extension(case: Case) -> np.ndarray:
    if case.file_extension is None:
        case.file_extension = tumour_extension(case.labels.array)
    return case.file_extension


def _random_window(case: Case, roi, rng: np.random.Generator, tumour_p: float = 0.5, extension_p: float = 0.0):
    """(image, labels, extension mask) of one NeoSeg training window: centred (with jitter) on a
    tumour-extension voxel with probability ``extension_p`` (when the case has any), else on a
    tumour voxel with probability ``tumour_p``, else anywhere."""
    img, lab, ext = case.image.array, case.labels.array, _case_extension(case)
    pad = [(0, max(0, r - s)) for r, s in zip(roi, img.shape)]
    if any(p[1] for p in pad):
        img = np.pad(img, pad)
        lab = np.pad(lab, pad)
        ext = np.pad(ext, pad)
    centre_on = None
    if extension_p > 0 and ext.any() and rng.random() < extension_p:
        centre_on = ext
    elif rng.random() < tumour_p:
        centre_on = lab == 2
    if centre_on is not None:
        idx = np.argwhere(centre_on)
        c = idx[rng.integers(len(idx))]
        start = [int(np.clip(ci - r // 2 + rng.integers(-r // 4, r // 4 + 1), 0, s - r))
                 for ci, r, s in zip(c, roi, img.shape)]
    else:
        start = [int(rng.integers(0, s - r + 1)) for r, s in zip(roi, img.shape)]
    sl = tuple(slice(a, a + r) for a, r in zip(start, roi))
    return img[sl], lab[sl], ext[sl]


def _augment_patch(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, extra: Optional[np.ndarray] = None):
    """Mild augmentation: left-right flip (axial flips, as in the group's sibling PNI works) and intensity shift/scale.
    ``extra`` (optional, e.g. the extension mask) is flipped with the labels and returned third."""
    if rng.random() < 0.5:
        img, lab = img[:, :, ::-1], lab[:, :, ::-1]
        extra = extra[:, :, ::-1] if extra is not None else None
    img = img * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
    out = np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(lab)
    return out if extra is None else (*out, np.ascontiguousarray(extra))


def _shift(a: np.ndarray, offsets) -> np.ndarray:
    """``a`` translated by integer voxel ``offsets`` per axis, zero-filled (no wrap-around)."""
    out = np.zeros_like(a)
    src, dst = [], []
    for o, n in zip(offsets, a.shape):
        o = int(o)
        src.append(slice(max(0, -o), n - max(0, o)))
        dst.append(slice(max(0, o), n - max(0, -o)))
    out[tuple(dst)] = a[tuple(src)]
    return out


def augment_classifier_patch(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, max_shift: int = 1):
    """Label-preserving augmentation of one PattenNet sample (image and mask patches, (K, J, I)).

    Why: the PNI evidence is the *shape* of the tumour (a thin tentacle along a nerve), which does
    not depend on orientation, position in the crop or the intensity scale, and a few hundred
    phantoms are too few for a conv net not to memorise them. Geometry (applied identically to
    image and mask): a flip along each axis with p = 0.5, a random multiple of 90 degrees in the
    axial (J, I) plane (square crops; 0/180 otherwise), and a shift of up to ``max_shift`` voxels
    per axis (zero fill; it mimics the centring error of a predicted mask -- kept at 1 voxel because
    the tentacle's reach beyond the main mass is itself only a few voxels at the 4 mm demo grid: a
    2-voxel shift lowered the AUC of the tumour's radial reach from 0.97 to 0.86). Intensity (image
    only): gain 0.85-1.15, offset +-0.08, gamma 0.8-1.25 and Gaussian noise of SD up to 0.03,
    clipped to [0, 1] like the normalised input.
    """
    for ax in range(3):
        if rng.random() < 0.5:
            img, mask = np.flip(img, ax), np.flip(mask, ax)
    k = int(rng.integers(4)) if img.shape[1] == img.shape[2] else 2 * int(rng.integers(2))
    if k:
        img, mask = np.rot90(img, k, axes=(1, 2)), np.rot90(mask, k, axes=(1, 2))
    if max_shift > 0:
        off = rng.integers(-max_shift, max_shift + 1, size=3)
        img, mask = _shift(np.ascontiguousarray(img), off), _shift(np.ascontiguousarray(mask), off)
    img = np.clip(img, 0.0, 1.0) ** float(rng.uniform(0.8, 1.25))
    img = img * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.08, 0.08))
    img = img + rng.normal(0.0, float(rng.uniform(0.0, 0.03)), size=img.shape)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32), np.ascontiguousarray(mask)


# ------------------------------------------------------------------------------------------------ classifier set
@dataclass
class Sample:
    """One classifier training/test sample: TLCR image patch, tumour mask patch, label, provenance."""

    image: np.ndarray  # (K, J, I) float32
    tumour: np.ndarray  # (K, J, I) float32: binary mask, or NeoSeg's tumour probability in [0, 1]
    pni: int
    source_id: str  # case id, or the case whose mask conditioned a synthetic sample
    synthetic: bool = False


def real_samples(cases: Sequence[Case]) -> List[Sample]:
    out = []
    for c in cases:
        img, _ = c.patch()
        out.append(Sample(img, c.tumour_patch(), c.pni, c.case_id, False))
    return out


def synthesize_balance(cases: Sequence[Case], neogen, seed: int = 0, num_inference_steps: int = 20,
                       batch_size: int = 4, log=None, cancel=None) -> List[Sample]:
    """Synthetic minority-class samples that bring ``cases`` to 1:1 PNI+/PNI-.

    Each is generated by ``neogen`` conditioned on the (tumour, liver) masks of a minority-class
    case of ``cases`` (cycled, randomly flipped left-right) and that case's PNI label. Only call it
    with *training* cases.
    """
    from ..models.neonet import masks_from_labels

    pos = [c for c in cases if c.pni == 1]
    neg = [c for c in cases if c.pni == 0]
    if not pos or not neg:
        return []
    minority, label = (pos, 1) if len(pos) < len(neg) else (neg, 0)
    n_syn = abs(len(pos) - len(neg))
    if n_syn == 0:
        return []
    rng = np.random.default_rng([seed, 7919])
    gen = torch.Generator().manual_seed(int(seed))
    order = [minority[i % len(minority)] for i in range(n_syn)]
    out: List[Sample] = []
    for b in range(0, n_syn, batch_size):
        chunk = order[b:b + batch_size]
        labs = []
        for c in chunk:
            lab = c.patch()[1]
            if rng.random() < 0.5:
                lab = lab[:, :, ::-1]
            labs.append(np.ascontiguousarray(lab))
        masks = masks_from_labels(torch.as_tensor(np.stack(labs)).long())
        imgs = neogen.generate(masks, labels=label, num_inference_steps=num_inference_steps, generator=gen,
                               cancel=cancel)
        imgs = imgs.clamp(0, 1).float().numpy()[:, 0]
        for c, lab, im in zip(chunk, labs, imgs):
            out.append(Sample(im.astype(np.float32), (lab == 2).astype(np.float32), label, c.case_id, True))
        if log:
            log(f"Synthesised {min(b + batch_size, n_syn)}/{n_syn} PNI{'+' if label else '-'} patches")
    return out


def assemble_classifier_set(train_cases: Sequence[Case], neogen=None, seed: int = 0,
                            num_inference_steps: int = 20, log=None, cancel=None) -> List[Sample]:
    """The classifier's *training* set: real TLCR samples + synthetic 1:1 balancing (if ``neogen``)."""
    samples = real_samples(train_cases)
    if neogen is not None:
        samples += synthesize_balance(train_cases, _load_neogen(neogen), seed, num_inference_steps, log=log,
                                      cancel=cancel)
    return samples


def balanced_batch(samples: Sequence[Sample], rng: np.random.Generator, batch_size: int) -> List[int]:
    """Indices of one classifier batch: alternately PNI+ and PNI- (half each when both classes exist,
    drawn with replacement), so the rarer class weighs as much as the commoner one in every step."""
    pos = [i for i, s in enumerate(samples) if s.pni == 1]
    neg = [i for i, s in enumerate(samples) if s.pni == 0]
    if not (pos and neg):
        return [int(i) for i in rng.integers(0, len(samples), batch_size)]
    return [pos[int(rng.integers(len(pos)))] if n % 2 == 0 else neg[int(rng.integers(len(neg)))]
            for n in range(batch_size)]


# ------------------------------------------------------------------------------------------------ training
def _checkpoint_path(out_dir, stage) -> Path:
    return Path(out_dir) / stage / "checkpoint.pt"


def _build_model(stage: str, cases: Sequence[Case], out_dir: Path, configs: Dict[str, dict], neogen, log):
    from ..models.neonet import NeoGen, NeoSeg, PattenNet
    if stage == "seg":
        return NeoSeg(**configs["neoseg"])
    if stage == "vae":
        return NeoGen(**configs["neogen"])
    src = neogen if neogen is not None else final_weights_path(out_dir, PREVIOUS_STAGE[stage])
    if not isinstance(src, torch.nn.Module) and not Path(src).is_file():
        raise InputError(f"Stage {stage!r} starts from a trained NeoGen ({PREVIOUS_STAGE[stage]} stage); "
                         f"{src} does not exist. Train that stage first or pass neogen=.")
    import copy
    gen = copy.deepcopy(_load_neogen(src))
    if stage == "ldm":
        x = torch.as_tensor(np.stack([c.patch()[0] for c in cases[:16]]))[:, None]
        sf = gen.calibrate_scale_factor(x)
        log(f"Latent scale factor calibrated to {sf:.4f}")
        return gen
    if stage == "controlnet":
        gen.init_controlnet_from_unet(live_embedding=True)
        return gen
    return PattenNet.from_neogen(gen, **configs["pattennet"])


def _optimizer(stage: str, model, lr: float, weight_decay: Optional[float] = None):
    if stage in ("vae", "ldm", "controlnet"):
        params = list(model.stage_parameters(stage))
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    wd = DEFAULT_WEIGHT_DECAY.get(stage, 1e-4) if weight_decay is None else float(weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def _stage_loss(stage: str, model, cases: Sequence[Case], samples: Optional[List[Sample]], step: int, seed: int,
                batch_size: int, loss_fn=None) -> torch.Tensor:
    from ..models.neonet import masks_from_labels
    rng = np.random.default_rng([seed, step])
    torch.manual_seed(int(seed) * 1_000_003 + int(step))
    if stage == "seg":
        imgs, tgts, exts = [], [], []
        for i in rng.integers(0, len(cases), batch_size):
            im, lb, ex = _random_window(cases[int(i)], NEOSEG_ROI, rng, extension_p=SEG_EXTENSION_WINDOW_P)
            im, lb, ex = _augment_patch(im, lb, rng, ex)
            imgs.append(im)
            tgts.append(_seg_target(lb))
            exts.append(ex)
        x = torch.as_tensor(np.stack(imgs))[:, None]
        y = torch.as_tensor(np.stack(tgts))
        out = model(x)
        # Dice+CE plus a cross-entropy term weighted up on tumour-extension voxels (SEG_EXTENSION_WEIGHT)
        wmap = 1.0 + SEG_EXTENSION_WEIGHT * torch.as_tensor(np.stack(exts)).to(out.dtype)
        ce = F.cross_entropy(out, y, weight=torch.tensor(SEG_CLASS_WEIGHTS, dtype=out.dtype), reduction="none")
        return loss_fn(out, y[:, None]) + (ce * wmap).mean()
    if stage == "cls":
        idx = balanced_batch(samples, rng, batch_size)
        ims, tms, ys = [], [], []
        for i in idx:
            s = samples[int(i)]
            im, tm = augment_classifier_patch(s.image, s.tumour, rng)
            ims.append(im)
            tms.append(tm.astype(np.float32))
            ys.append(float(s.pni))
        x = torch.as_tensor(np.stack(ims))[:, None]
        m = torch.as_tensor(np.stack(tms))[:, None]
        logit, _ = model(x, m if model.config["mask_channels"] else None)
        return F.binary_cross_entropy_with_logits(logit, torch.as_tensor(ys, dtype=logit.dtype))
    ims, labs, ys = [], [], []
    for i in rng.integers(0, len(cases), batch_size):
        c = cases[int(i)]
        im, lb = _augment_patch(*c.patch(), rng)
        ims.append(im)
        labs.append(lb)
        ys.append(c.pni)
    x = torch.as_tensor(np.stack(ims))[:, None]
    masks = masks_from_labels(torch.as_tensor(np.stack(labs)).long()) if stage == "controlnet" else None
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    return model.training_losses(x, masks=masks, labels=torch.as_tensor(ys), stage=stage, generator=gen)["loss"]


def train_stage(stage: str, data, out_dir, steps: int = 200, resume: bool = True, progress=None, log=print, *,
                neogen=None, configs: Optional[Dict[str, dict]] = None, batch_size: int = 2,
                lr: Optional[float] = None, seed: int = 0, checkpoint_every: int = 50, synthesize: bool = True,
                num_inference_steps: int = 20, samples: Optional[List[Sample]] = None, cancel=None,
                time_budget_s: Optional[float] = None, val_samples: Optional[List[Sample]] = None,
                eval_every: int = 50, patience: Optional[int] = None, weight_decay: Optional[float] = None,
                neoseg=None) -> TrainResult:
    """Train one stage; returns a :class:`~pantheon.train.loop.TrainResult` whose ``weights`` is the final
    weights file (``out_dir/<stage>/<component>.safetensors``).

    ``stage``: "seg" (NeoSeg), "vae", "ldm", "controlnet" (NeoGen, in that order) or "cls"
    (PattenNet). ``data``: phantom seeds, :class:`Case` list, or a CSV/folder (:func:`load_cases`).
    ``neogen``: the NeoGen the stage starts from (module or path); default: the previous stage's
    weights in ``out_dir`` (ldm <- vae, controlnet <- ldm, cls <- controlnet). For "cls" the
    minority class is topped up 1:1 with that NeoGen's samples unless ``synthesize`` is False
    (``samples`` overrides the assembled training set entirely). ``resume``: continue from
    ``out_dir/<stage>/checkpoint.pt`` when present (a finished run with ``steps`` <= its step count
    just rewrites the weights); a checkpoint is written every ``checkpoint_every`` steps and at the end.
    ``configs``: component constructor arguments (default: :func:`default_configs` "demo").
    ``time_budget_s``: stop early after that many seconds of training (checkpoint and weights are
    written; rerunning with ``resume`` continues towards ``steps``).
    ``val_samples`` ("cls" only): real validation samples, disjoint from the training set; every
    ``eval_every`` steps their AUC (ties broken by lower BCE) is measured and the best weights are
    kept and written at the end (checkpoint chosen by validation AUC, as in the sibling PNI works); with ``patience``
    the stage stops after that many evaluations without improvement (early stopping).
    ``weight_decay``: AdamW weight decay (default :data:`DEFAULT_WEIGHT_DECAY` of the stage).
    ``neoseg`` ("cls" only, module or weights path): every training case is added a second time as
    that NeoSeg segments it (:func:`segment_case`: crop on its tumour, its tumour probability), so
    the classifier also learns the crops the end-to-end pipeline gives it.
    """
    from ..models.neonet import save_neonet_component
    check_stage(stage, STAGES, "NeoNet")
    log = log or (lambda *_: None)
    out_dir = Path(out_dir)
    (out_dir / stage).mkdir(parents=True, exist_ok=True)
    cases = _cases(data)
    configs = configs or default_configs("demo")
    lr = DEFAULT_LR[stage] if lr is None else float(lr)
    ckpt_path = _checkpoint_path(out_dir, stage)
    ckpt = read_checkpoint(ckpt_path, resume, expect={"kind": STAGE_KIND[stage], "stage": stage})
    if ckpt is not None:
        from ..models.neonet.checkpoint import component_builders
        try:
            model = component_builders()[STAGE_KIND[stage]](json.loads(ckpt["config"]))
        except Exception as exc:  # noqa: BLE001 - no or another architecture's config: not resumable
            raise resume_error(ckpt_path, exc) from None
    else:
        torch.manual_seed(int(seed))  # reproducible initialisation
        model = _build_model(stage, cases, out_dir, configs, neogen, log)
    model.train()
    opt = _optimizer(stage, model, lr, weight_decay)
    loss_fn = None
    if stage == "seg":
        from monai.losses import DiceCELoss
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor(SEG_CLASS_WEIGHTS))
    if stage == "cls" and samples is None:
        src = neogen if neogen is not None else final_weights_path(out_dir, "controlnet")
        use = synthesize and (isinstance(src, torch.nn.Module) or Path(src).is_file())
        if synthesize and not use:
            log(f"No NeoGen at {src}: training the classifier without synthetic balancing")
        samples = assemble_classifier_set(cases, src if use else None, seed, num_inference_steps, log, cancel)
        if neoseg is not None:
            from ..models.neonet import load_neonet_component
            seg = neoseg if isinstance(neoseg, torch.nn.Module) else load_neonet_component(neoseg, "neoseg")
            samples = samples + real_samples([segment_case(seg, c) for c in cases])
            log(f"Added {len(cases)} NeoSeg-cropped training samples")
    if stage == "cls":
        n_syn = sum(s.synthetic for s in samples)
        log(f"Classifier training set: {len(samples) - n_syn} real + {n_syn} synthetic samples")
    validation = None
    if stage == "cls" and val_samples:  # the checkpoint is chosen by validation AUC, as in the sibling PNI works
        validation = Validation(lambda m: _validation_figures(m, val_samples), every=eval_every,
                                score=lambda f: (f["AUC"], -f["BCE"]), patience=patience)
    # no warm-up; cosine decay over the requested steps down to 0
    loop = TrainLoop(model, opt, steps, checkpoint=ckpt_path, resume_from=ckpt, schedule=Schedule(),
                     checkpoint_every=checkpoint_every, time_budget_s=time_budget_s, validation=validation,
                     name=stage, progress=progress, cancel=cancel, log=log,
                     extra_state=lambda: {"kind": STAGE_KIND[stage], "stage": stage, "config": json.dumps(model.config),
                                          "seed": int(seed), "lr": float(lr)})
    result = loop.run(lambda step: _stage_loss(stage, model, cases, samples, step, seed, batch_size, loss_fn))
    meta = {"stage": stage, "steps": str(result.steps)}
    if "best_step" in result.metrics:
        meta.update(best_step=str(result.metrics["best_step"]),
                    validation_auc=f"{result.metrics['best_score'][0]:.4f}")
    model.eval()
    result.weights = save_neonet_component(model, final_weights_path(out_dir, stage), extra_metadata=meta)
    return result


@torch.no_grad()
def _validation_figures(model, val_samples: Sequence[Sample]) -> Dict[str, float]:
    """AUC (0 when undefined: one class only) and BCE of a PattenNet on validation samples; the
    classifier stage keeps the step with the best (AUC, -BCE), compared in that order."""
    probs = predict_samples(model, val_samples)
    y = np.array([s.pni for s in val_samples], dtype=np.float64)
    auc = binary_metrics(y, probs)["auc"]
    p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
    bce = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return {"AUC": float(auc) if auc == auc else 0.0, "BCE": bce}


# ------------------------------------------------------------------------------------------------ metrics
# AUC (with its Hanley-McNeil interval), accuracy, sensitivity, specificity: pantheon.metrics.binary_metrics.
def mean_sd(values) -> Dict[str, float]:
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0 if v.size else float("nan")}


@torch.no_grad()
def predict_samples(pattennet, samples: Sequence[Sample], batch_size: int = 8) -> np.ndarray:
    """PNI+ probabilities for TLCR samples."""
    pattennet.eval()
    out = []
    for b in range(0, len(samples), batch_size):
        ch = samples[b:b + batch_size]
        x = torch.as_tensor(np.stack([s.image for s in ch]))[:, None]
        m = torch.as_tensor(np.stack([s.tumour for s in ch]))[:, None]
        logit, _ = pattennet(x, m if pattennet.config["mask_channels"] else None)
        out.append(torch.sigmoid(logit).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def segment_case(neoseg, case: Case) -> Case:
    """The case as the end-to-end pipeline sees it: the label map replaced by NeoSeg's prediction
    (argmax; 1 liver, 2 tumour) and ``tumour_probability`` set to NeoSeg's tumour probability."""
    with torch.inference_mode():
        prob = neoseg.predict(torch.as_tensor(case.image.array), roi_size=NEOSEG_ROI, overlap=0.25)
    lab = prob[0].argmax(0).numpy().astype(np.uint8)
    tumour_prob = prob[0, 2].numpy().astype(np.float32)
    if not np.any(lab == 2):  # no tumour found: fall back to the most tumour-like voxel
        lab[np.unravel_index(int(np.argmax(tumour_prob)), tumour_prob.shape)] = 2
    return Case(case.case_id, case.image, case.labels.with_array(lab), case.pni, case.patient_id,
                tumour_probability=tumour_prob)


def evaluate_classifier(pattennet, data, neoseg=None, threshold: float = 0.5, log=None) -> Dict:
    """AUC, accuracy, sensitivity, specificity of a PattenNet on cases (TLCR from the ground-truth
    tumour mask, or from ``neoseg``'s prediction when given: the end-to-end pipeline)."""
    from ..models.neonet import load_neonet_component
    if not isinstance(pattennet, torch.nn.Module):
        pattennet = load_neonet_component(pattennet, "pattennet")
    if neoseg is not None and not isinstance(neoseg, torch.nn.Module):
        neoseg = load_neonet_component(neoseg, "neoseg")
    cases = _cases(data)
    if neoseg is not None:
        cases = [segment_case(neoseg, c) for c in cases]
    samples = real_samples(cases)
    probs = predict_samples(pattennet, samples)
    res = binary_metrics([s.pni for s in samples], probs, threshold)
    res["crop_from"] = "neoseg" if neoseg is not None else "ground truth"
    res["cases"] = [{"case_id": s.source_id, "pni": s.pni, "probability": float(p)} for s, p in zip(samples, probs)]
    if log:
        log(f"AUC {res['auc']:.3f}, accuracy {res['accuracy']:.3f}, sensitivity {res['sensitivity']:.3f}, "
            f"specificity {res['specificity']:.3f} on {res['n']} cases")
    return res


def cv_splits(cases: Sequence[Case], k: int = 5, seed: int = 0):
    """Patient-level stratified folds: list of (train indices, test indices)."""
    from sklearn.model_selection import StratifiedGroupKFold
    y = np.array([c.pni for c in cases])
    groups = np.array([c.group for c in cases])
    if min(np.sum(y == 0), np.sum(y == 1)) < k:
        raise InputError(f"{k}-fold stratified cross-validation needs at least {k} cases of each PNI class "
                         f"(have {int(np.sum(y == 1))} PNI+, {int(np.sum(y == 0))} PNI-).")
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in skf.split(np.zeros(len(y)), y, groups)]


def cross_validate(data, out_dir, k: int = 5, seed: int = 0, generator: Union[str, None, object] = "per_fold",
                   steps: Optional[Dict[str, int]] = None, configs=None, num_inference_steps: int = 20,
                   batch_size: int = 2, progress=None, log=print, cancel=None, train_fn=None) -> Dict:
    """Patient-level stratified k-fold CV of the classifier (5-fold as in the paper, arXiv 2603.29449;
    patient-level stratification is an assumption).

    Per fold: ``generator="per_fold"`` trains NeoGen (vae, ldm, controlnet; ``steps``) on the fold's
    training cases only; a NeoGen module/path is used as given (it must be trained on data disjoint
    from every CV case: external data); ``None`` gives no synthesis, but then a VAE (``steps["vae"]``)
    is still trained per fold for PattenNet's frozen encoder. The classifier (``steps["cls"]``)
    trains on the training cases plus synthetic samples; only real held-out cases are tested.
    Returns {"folds": [{fold, train_ids, test_ids, n_synthetic, synthetic_sources, metrics}],
    "summary": {metric: {mean, sd}}, ...}.
    """
    log = log or (lambda *_: None)
    rep = Reporter(progress, cancel)
    steps = {"vae": 200, "ldm": 200, "controlnet": 200, "cls": 200, **(steps or {})}
    cases = _cases(data)
    out_dir = Path(out_dir)
    folds = []
    splits = cv_splits(cases, k, seed)
    train_fn = train_fn or train_stage
    for f, (tr, te) in enumerate(splits):
        rep.check()
        sub = rep.sub(f / k, (f + 1) / k)
        train_cases = [cases[i] for i in tr]
        test_cases = [cases[i] for i in te]
        fdir = out_dir / f"fold{f}"
        log(f"Fold {f + 1}/{k}: {len(train_cases)} training cases, {len(test_cases)} test cases")
        if generator == "per_fold" or generator is None:
            gen_path = train_fn("vae", train_cases, fdir, steps["vae"], True, None, log, configs=configs,
                                seed=seed + f, batch_size=batch_size).weights
            if generator == "per_fold":
                train_fn("ldm", train_cases, fdir, steps["ldm"], True, None, log, configs=configs, seed=seed + f,
                         batch_size=batch_size)
                gen_path = train_fn("controlnet", train_cases, fdir, steps["controlnet"], True, None, log,
                                    configs=configs, seed=seed + f, batch_size=batch_size).weights
        else:
            gen_path = generator
        samples = assemble_classifier_set(train_cases, gen_path if generator is not None else None, seed + f,
                                          num_inference_steps, log, cancel)
        cls_path = train_fn("cls", train_cases, fdir, steps["cls"], True, sub, log, neogen=gen_path,
                            configs=configs, seed=seed + f, batch_size=batch_size, samples=samples).weights
        metrics = evaluate_classifier(cls_path, test_cases)
        folds.append({"fold": f, "train_ids": [c.case_id for c in train_cases],
                      "test_ids": [c.case_id for c in test_cases],
                      "n_synthetic": int(sum(s.synthetic for s in samples)),
                      "synthetic_sources": sorted({s.source_id for s in samples if s.synthetic}),
                      "train_sample_ids": [s.source_id for s in samples],
                      "metrics": {m: metrics[m] for m in ("auc", "accuracy", "sensitivity", "specificity", "n",
                                                          "n_positive")},
                      "test_predictions": metrics["cases"]})
        log(f"Fold {f + 1}: AUC {metrics['auc']:.3f}")
    summary = {m: mean_sd([fo["metrics"][m] for fo in folds]) for m in ("auc", "accuracy", "sensitivity",
                                                                          "specificity")}
    summary["auc_max"] = float(np.nanmax([fo["metrics"]["auc"] for fo in folds]))
    log("CV AUC {mean:.3f} ± {sd:.3f}".format(**summary["auc"]))
    return {"k": k, "seed": seed, "generator": generator if isinstance(generator, (str, type(None))) else "given",
            "folds": folds, "summary": summary}


def format_cv_report(result: Dict) -> str:
    """Plain-text table of a :func:`cross_validate` result."""
    lines = ["fold   AUC    acc    sens   spec   n  (+)  synthetic"]
    for fo in result["folds"]:
        m = fo["metrics"]
        lines.append(f"{fo['fold'] + 1:>4}  {m['auc']:.3f}  {m['accuracy']:.3f}  {m['sensitivity']:.3f}  "
                     f"{m['specificity']:.3f}  {m['n']:>2}  {m['n_positive']:>2}  {fo['n_synthetic']}")
    s = result["summary"]
    lines.append("mean ± SD: " + ", ".join(f"{k} {s[k]['mean']:.3f} ± {s[k]['sd']:.3f}"
                                          for k in ("auc", "accuracy", "sensitivity", "specificity")))
    return "\n".join(lines)
