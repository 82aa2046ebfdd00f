"""Staged training and evaluation of MATHENA (arXiv 2604.00537: the stage order is the paper's;
the rest are assumptions).

Stages, in the order the paper states (``pantheon tooth train --stage ...``):

- ``detector``: MATHE on letterboxed OPGs (``DETECTOR_INPUT_HW``), boxes in model pixels, labels
  ``fdi_to_class``. AdamW, cosine LR with linear warm-up, gradient clipping. Augmentation:
  brightness / contrast / gamma / Gaussian noise and a horizontal flip that mirrors the FDI numbers
  (``fdi_mirror``: 1<->2, 3<->4 ...), since a flipped tooth is its contralateral twin.
- ``carseg``: HENA shared representation + caries head on per-tooth crops from ground-truth boxes
  (``crop_tooth``), BCE + soft Dice; half of every batch comes from crops with caries.
- ``ad``: starts from the carseg weights, ``freeze_shared`` (encoder, GCST, decoder, caries head),
  initialises HENA's AD decoder branch from the trained shared decoder and fine-tunes it with the
  anomaly head (:meth:`HENA.ad_loss`: pixel BCE + soft Dice on anomalous crops + image-level BCE);
  ``pos_fraction`` of every batch anomalous (default half; anomalous teeth are about 5 % of all),
  and the image-level logit gets the logit-adjustment offset of that oversampling in the loss
  (:meth:`CropData.anomaly_logit_offset`), so that its probability is calibrated to the real
  prevalence.
- ``dds``: starts from the ad weights, fits only the stage linear probe (CE, Demirjian A-H) on
  cached frozen features of all crops (original, flipped, jittered), full batch with L-BFGS
  (:func:`_fit_probe`); minibatch SGD through the network left the probe far from converged.

Crop augmentation: horizontal flip (allowed for crops; never vertical: the root direction tells the upper
jaw from the lower), brightness,
contrast, noise. Every step's batch is drawn from ``numpy.random.default_rng([seed, step])``, so a
resumed run sees the same batches as an uninterrupted one.

Resumable: ``out_dir/<stage>/checkpoint.pt`` (tensors and plain values only, readable with
``torch.load(weights_only=True)``) every ``checkpoint_every`` steps and at the end; rerunning with
``resume=True`` continues from it (the loop: :class:`pantheon.train.loop.TrainLoop`). Final weights:
``out_dir/<stage>/mathena-detector.safetensors`` or
``mathena-hena.safetensors`` (:func:`~pantheon.models.mathena.save_mathena`).

Data: synthetic OPGs (``pantheon.synth.make_opg``; a list of seeds, ``"synthetic:N"`` or
``"synthetic:N:SEED0"``, or ready :class:`SyntheticOPG` objects) or a DENTEX / COCO JSON (images
next to it or in ``image_dir``). DENTEX has no lesion masks or stages: carseg / ad use the tooth
polygon of a tooth with a caries / anomaly finding as a proxy mask, and dds refuses DENTEX data.

Metrics (:func:`evaluate`; the paper does not say how it aggregates Dice), conventions recorded in
the result under ``"conventions"``:

- ``map50`` (:func:`pantheon.metrics.map50`): per FDI class, detections (all images) sorted by
  score, greedily matched to the unmatched GT box of that class with the highest IoU >= 0.5;
  AP = area under the monotone (all-point interpolated) precision-recall curve (VOC 2010+ / COCO
  without the 101-point sampling); averaged over the classes with at least one GT box.
- Dice (:func:`pantheon.metrics.dice_scores`; caries, anomaly) on HENA crops of the ground-truth
  boxes, prediction as ToothAnalysis draws it (probability averaged with the mirrored crop's,
  >= ``MASK_THRESHOLD``; :mod:`pantheon.models.mathena.hena`):
  ``*_dice_positive``: mean per-crop Dice over crops whose GT mask is non-empty;
  ``*_dice_pooled``: 2 |P ∩ G| / (|P| + |G|) summed over all crops (negatives included).
- ``anomaly_image_accuracy`` (sigmoid(anomaly_score) > 0.5 vs the tooth's anomaly label) and
  ``anomaly_auroc`` (:func:`pantheon.metrics.auroc` of sigmoid(anomaly_score) over all GT teeth);
  ``anomaly_auroc_mask_max`` ranks teeth by their maximum pixel anomaly probability instead.
- ``stage_accuracy`` and ``stage_macro_f1`` (sklearn, over the stages present in the GT).
- What a dentist sees (:func:`numbering_scores`, :func:`summarize_numbering`): the teeth
  ToothAnalysis shows (:func:`detect_numbered`: one box per tooth, FDI numbers assigned along the
  arch, score >= ``NUMBERING_SCORE_THRESH``) matched class-agnostically to GT teeth at IoU >= 0.5:
  ``numbering_accuracy`` (correctly numbered / GT teeth, mean per image; ``_detected``: / shown
  teeth), ``duplicate_numbers_per_image``, ``invented_teeth_per_image`` (shown teeth matching no
  GT tooth), ``missed_teeth_per_image``, ``map50_numbered``. Per-class NMS and per-class AP do not
  see one tooth carrying two numbers; these do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, InputError
from ..metrics import auroc, box_iou, dice_scores, map50
from ..models.checkpoints import resume_error
from ..models.mathena import (
    DEMIRJIAN_STAGES,
    HENA,
    MATHEDetector,
    class_to_fdi,
    fdi_mirror,
    fdi_to_class,
    load_mathena,
    save_mathena,
)
from ..models.mathena.hena import FLIP_AVERAGE, MASK_THRESHOLD, crop_probabilities
from ..models.mathena.preprocess import (
    CROP_MARGIN,
    CROP_SIZE,
    DETECTOR_INPUT_HW,
    crop_tooth,
    letterbox,
    to_grayscale_float,
)
from ..progress import Reporter
from .loop import Schedule, TrainLoop, TrainResult, check_stage, read_checkpoint

TRAIN_STAGES = ("detector", "carseg", "ad", "dds")
WEIGHT_FILES = {"detector": "mathena-detector.safetensors", "carseg": "mathena-hena.safetensors",
                "ad": "mathena-hena.safetensors", "dds": "mathena-hena.safetensors"}
PREVIOUS = {"ad": "carseg", "dds": "ad"}
DEFAULT_DETECTOR = dict(in_channels=1, widths=[16, 32, 64, 128, 256], neck_channels=64, num_vss=1, d_state=8,
                        bifpn_repeats=1, head_convs=2)
DEFAULT_HENA = dict(in_channels=1, embed_dim=24, depths=[1, 1, 1, 1], d_state=8, ssm_ratio=1.0)
DEFAULT_LR = {"detector": 2e-3, "carseg": 2e-3, "ad": 2e-3, "dds": 1e-2}
#: Detection score threshold of the numbering metrics: ToothAnalysis's default (pipelines.mathena).
NUMBERING_SCORE_THRESH = 0.3


# ============================================================================ data
@dataclass
class Sample:
    """One training/evaluation image: float image in [0, 1] and its teeth.

    Each tooth: ``fdi``, ``box`` (x0, y0, x1, y1 pixel edges), ``caries_mask`` / ``anomaly_mask``
    (bool, cropped to the integer box, or None), ``anomaly`` (bool), ``stage`` (0..7 or -1)."""

    image: np.ndarray
    teeth: List[dict] = field(default_factory=list)
    name: str = ""

    def full(self, tooth: dict, key: str) -> np.ndarray:
        H, W = self.image.shape
        out = np.zeros((H, W), bool)
        m = tooth.get(key)
        if m is not None and m.size:
            x0, y0 = int(tooth["box"][0]), int(tooth["box"][1])
            h, w = m.shape
            out[y0:y0 + h, x0:x0 + w] = m[:max(0, H - y0), :max(0, W - x0)]
        return out


def sample_from_opg(opg, name: str = "") -> Sample:
    teeth = [dict(fdi=int(t["fdi"]), box=tuple(float(v) for v in t["box"]), caries_mask=t["caries_mask"],
                  anomaly_mask=t["anomaly_mask"], anomaly=t["anomaly"] is not None,
                  stage=DEMIRJIAN_STAGES.index(t["stage"]) if t.get("stage") in DEMIRJIAN_STAGES else -1)
             for t in opg.teeth]
    return Sample(to_grayscale_float(opg.image.array[0]), teeth, name)


def samples_from_dentex(json_path, image_dir=None) -> List[Sample]:
    from ..data.dentex import load_image, read_dentex
    if image_dir is None:  # next to the JSON, or its images/ folder (make_opg_dataset's layout)
        parent = Path(json_path).parent
        image_dir = str(parent / "images") if (parent / "images").is_dir() else str(parent)
    out = []
    for rec in read_dentex(str(json_path), image_dir=image_dir):
        img = to_grayscale_float(load_image(rec).array[0])
        teeth = []
        for t in rec.teeth:
            if t.fdi is None:
                continue
            x0, y0, x1, y1 = t.box
            xi, yi = int(math.floor(x0)), int(math.floor(y0))
            full = t.full_mask(rec.height, rec.width)[yi:int(math.ceil(y1)), xi:int(math.ceil(x1))]
            dx = {d.lower() for d in t.diagnoses}
            caries = any("caries" in d for d in dx)
            anomaly = any(("impacted" in d) or ("periapical" in d) for d in dx)
            teeth.append(dict(fdi=int(t.fdi), box=(float(xi), float(yi), float(x1), float(y1)),
                              caries_mask=full if caries else np.zeros_like(full),
                              anomaly_mask=full if anomaly else np.zeros_like(full), anomaly=anomaly, stage=-1))
        out.append(Sample(img, teeth, rec.file_name))
    return out


def synthetic_opgs(seeds: Sequence[int], size=DETECTOR_INPUT_HW, **opg_kw):
    from ..synth.opg import make_opg
    return [make_opg(int(s), size=tuple(size), **opg_kw) for s in seeds]


def load_data(data, size=DETECTOR_INPUT_HW, image_dir=None, opg_kw: Optional[dict] = None) -> List[Sample]:
    """Samples from seeds / ``"synthetic:N[:SEED0]"`` / SyntheticOPGs / Samples / a DENTEX JSON path."""
    opg_kw = opg_kw or {}
    if isinstance(data, (str, Path)) and str(data).startswith("synthetic:"):
        parts = str(data).split(":")
        n, s0 = int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
        data = range(s0, s0 + n)
    if isinstance(data, (str, Path)):
        if not Path(data).is_file():
            raise InputError(f"{data}: no such DENTEX JSON file (or use 'synthetic:N' for synthetic OPGs)")
        return samples_from_dentex(data, image_dir)
    items = list(data)
    if not items:
        raise InputError("Training needs at least one image.")
    out = []
    for i, it in enumerate(items):
        if isinstance(it, Sample):
            out.append(it)
        elif hasattr(it, "teeth") and hasattr(it, "image"):
            out.append(sample_from_opg(it, f"opg{i}"))
        else:
            out.extend(sample_from_opg(o, f"seed{int(it)}") for o in synthetic_opgs([int(it)], size, **opg_kw))
    return out


# ============================================================================ batches
def _jitter(img: np.ndarray, rng: np.random.Generator, noise=(0.0, 0.03)) -> np.ndarray:
    """Brightness / contrast / gamma / Gaussian-noise jitter of a [0, 1] image."""
    a = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    a = (a - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
    a = a + rng.normal(0, rng.uniform(*noise), a.shape)
    return np.clip(a, 0, 1).astype(np.float32)


class DetectorData:
    def __init__(self, samples: Sequence[Sample], input_hw=DETECTOR_INPUT_HW):
        self.items = []
        for s in samples:
            img, lb = letterbox(s.image, input_hw)
            boxes = lb.boxes_to_model(np.array([t["box"] for t in s.teeth], np.float64).reshape(-1, 4))
            self.items.append((img, boxes, np.array([t["fdi"] for t in s.teeth], np.int64)))
        if not self.items:
            raise InputError("No images to train the detector on.")

    def batch(self, rng: np.random.Generator, batch_size: int, augment: bool = True):
        imgs, targets = [], []
        for i in rng.integers(len(self.items), size=batch_size):
            img, boxes, fdis = self.items[int(i)]
            boxes, fdis = boxes.copy(), fdis.copy()
            if augment:
                if rng.random() < 0.5:  # horizontal flip: mirror boxes and FDI numbers
                    W = img.shape[1]
                    img = img[:, ::-1]
                    boxes[:, [0, 2]] = W - boxes[:, [2, 0]]
                    fdis = np.array([fdi_mirror(f) for f in fdis], np.int64)
                img = _jitter(img, rng)
            imgs.append(np.ascontiguousarray(img))
            targets.append({"boxes": torch.from_numpy(boxes.astype(np.float32)),
                            "labels": torch.tensor([fdi_to_class(f) for f in fdis], dtype=torch.long)})
        return torch.from_numpy(np.stack(imgs))[:, None], targets


class CropData:
    """Per-tooth crops (image, caries, anomaly masks in crop space, anomaly label, stage index)."""

    def __init__(self, samples: Sequence[Sample], size: int = CROP_SIZE, margin: float = CROP_MARGIN):
        crops, car, ano, lab, stg = [], [], [], [], []
        for s in samples:
            for t in s.teeth:
                c, info = crop_tooth(s.image, t["box"], size, margin)
                crops.append(c)
                car.append(info.mask_to_crop(s.full(t, "caries_mask")))
                ano.append(info.mask_to_crop(s.full(t, "anomaly_mask")))
                lab.append(bool(t.get("anomaly")) or bool(ano[-1].any()))
                stg.append(int(t.get("stage", -1)))
        if not crops:
            raise InputError("No teeth to crop.")
        self.crops = np.stack(crops).astype(np.float32)
        self.caries = np.stack(car).astype(np.float32)
        self.anomaly = np.stack(ano).astype(np.float32)
        self.label = np.array(lab, np.float32)
        self.stage = np.array(stg, np.int64)

    def __len__(self):
        return len(self.crops)

    pos_fraction = 0.5  # share of every carseg / ad batch drawn from positive crops

    def indices(self, stage: str, rng, batch_size: int) -> np.ndarray:
        n = len(self)
        if stage == "dds":
            valid = np.flatnonzero(self.stage >= 0)
            if not len(valid):
                raise InputError("No Demirjian stage labels in the data: the dds stage needs them.")
            return rng.choice(valid, batch_size)
        pos = np.flatnonzero(self.caries.reshape(n, -1).any(1) if stage == "carseg" else self.label > 0)
        k = int(round(batch_size * self.pos_fraction)) if len(pos) else 0
        return np.concatenate([rng.choice(pos, k) if k else np.zeros(0, np.int64),
                               rng.integers(n, size=batch_size - k)]).astype(np.int64)

    def batch(self, stage: str, rng, batch_size: int, augment: bool = True):
        idx = self.indices(stage, rng, batch_size)
        x, car, ano = self.crops[idx].copy(), self.caries[idx].copy(), self.anomaly[idx].copy()
        if augment:
            for j in range(len(idx)):
                if rng.random() < 0.5:
                    x[j], car[j], ano[j] = x[j, :, ::-1], car[j, :, ::-1], ano[j, :, ::-1]
                x[j] = _jitter(x[j], rng, (0.0, 0.02))
        t = {"caries": torch.from_numpy(car)[:, None], "anomaly": torch.from_numpy(ano)[:, None],
             "anomaly_label": torch.from_numpy(self.label[idx]), "stage": torch.from_numpy(self.stage[idx])}
        if stage == "ad":
            t["anomaly_logit_offset"] = self.anomaly_logit_offset()
        return torch.from_numpy(np.ascontiguousarray(x))[:, None], t

    def anomaly_logit_offset(self) -> float:
        """``logit(q) - logit(pi)``: pi = share of anomalous crops in the data, q = their expected
        share in an "ad" batch (``pos_fraction`` drawn from positives, the rest uniformly). Added to
        the image-level logit in the loss (:meth:`HENA.ad_loss`) so that the model's own logit stays
        calibrated to the real prevalence although batches oversample anomalies."""
        pi = float(np.clip((self.label > 0).mean(), 1e-4, 1 - 1e-4))
        if not (self.label > 0).any():
            return 0.0
        q = float(np.clip(self.pos_fraction + (1 - self.pos_fraction) * pi, 1e-4, 1 - 1e-4))
        return math.log(q / (1 - q)) - math.log(pi / (1 - pi))


# ============================================================================ training
def stage_schedule(steps: int) -> Schedule:
    """Linear warm-up over a tenth of the steps (1 to 20), then cosine decay to 2 % of the learning rate;
    with a time budget the decay follows whichever of the step count and the elapsed fraction of the
    budget is further along (a run the budget cuts short still ends at a low learning rate)."""
    return Schedule(warmup_steps=max(1, min(20, steps // 10)), decay="cosine", min_factor=0.02, follow_time=True)


def _build(stage: str, out_dir: Path, model_kw: Optional[dict], init=None):
    if stage == "detector":
        if init:  # fine-tune an existing detector (its own architecture; model_kw is not used)
            if not Path(init).is_file():
                raise CheckpointError(f"The detector to start from, {init}, does not exist.")
            return load_mathena(init, kind="MATHEDetector")
        return MATHEDetector(**{**DEFAULT_DETECTOR, **(model_kw or {})})
    if stage == "carseg":
        return HENA(**{**DEFAULT_HENA, **(model_kw or {})})
    prev = Path(init) if init else out_dir / PREVIOUS[stage] / WEIGHT_FILES[PREVIOUS[stage]]
    if not prev.is_file():
        raise CheckpointError(f"The {stage} stage starts from the {PREVIOUS[stage]} weights, but {prev} does not "
                              f"exist: run `--stage {PREVIOUS[stage]}` first.")
    return load_mathena(prev, kind="HENA")


def train_stage(stage: str, data, out_dir, steps: int = 200, resume: bool = True, progress=None, log=print, *,
                batch_size: Optional[int] = None, lr: Optional[float] = None, weight_decay: float = 0.05,
                seed: int = 0, checkpoint_every: int = 50, model_kw: Optional[dict] = None, init=None,
                image_dir=None, input_hw=DETECTOR_INPUT_HW, crop_size: int = CROP_SIZE,
                time_budget_s: Optional[float] = None, cancel=None, opg_kw: Optional[dict] = None,
                threads: Optional[int] = None, pos_fraction: float = 0.5, probe_l2: float = 1e-4) -> TrainResult:
    """Train one MATHENA stage; returns a :class:`~pantheon.train.loop.TrainResult` (``weights``: the
    stage's safetensors file, ``steps``, ``history``, ``stopped``).

    ``data``: see :func:`load_data` (already built :class:`Sample` lists are fine too).
    ``time_budget_s``: stop early (checkpoint and final weights still written) when exceeded.
    ``pos_fraction``: share of every carseg / ad batch drawn from positive crops.
    ``probe_l2``: L2 penalty of the dds linear probe (on standardised features); for "dds",
    ``steps`` counts L-BFGS iterations of the full-batch probe fit (:func:`_fit_probe`), and
    ``batch_size`` / ``lr`` / ``time_budget_s`` are not used.
    """
    check_stage(stage, TRAIN_STAGES, "MATHENA")
    if threads:
        torch.set_num_threads(int(threads))
    rep = Reporter(progress, cancel)
    out_dir = Path(out_dir)
    sdir = out_dir / stage
    sdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = sdir / "checkpoint.pt"
    samples = data if isinstance(data, list) and data and isinstance(data[0], Sample) else \
        load_data(data, input_hw, image_dir, opg_kw)
    batch_size = int(batch_size or (4 if stage == "detector" else 16))
    lr = float(lr or DEFAULT_LR[stage])
    torch.manual_seed(seed)

    ckpt = read_checkpoint(ckpt_path, resume, expect={"stage": stage})
    if ckpt is not None:
        kind = MATHEDetector if stage == "detector" else HENA
        try:
            model = kind(**json.loads(ckpt["model_config"]))
        except Exception as exc:  # noqa: BLE001 - no or another architecture's config: not resumable
            raise resume_error(ckpt_path, exc) from None
    else:
        model = _build(stage, out_dir, model_kw, init)
    if stage == "detector":
        params = list(model.parameters())
        dataset = DetectorData(samples, input_hw)
        model.train()
    else:
        dataset = CropData(samples, crop_size)
        dataset.pos_fraction = float(pos_fraction)
        if stage == "dds" and not (dataset.stage >= 0).any():
            raise InputError("No Demirjian stage labels in the data: the dds stage needs them.")
        params = model.set_stage(stage)
        model.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay if stage != "dds" else 0.0)
    loop = TrainLoop(model, opt, steps, checkpoint=ckpt_path, resume_from=ckpt, schedule=stage_schedule(steps),
                     checkpoint_every=checkpoint_every, time_budget_s=None if stage == "dds" else time_budget_s,
                     grad_clip=5.0, name=stage, progress=progress, cancel=cancel, log=log,
                     extra_state=lambda: {"stage": stage, "model_config": json.dumps(model.config), "seed": seed,
                                          "steps": steps, "lr": lr, "batch_size": batch_size})
    if stage == "dds" and loop.step < steps:
        # the shared part is frozen, so the probe's inputs are fixed: compute them once and fit the
        # probe to convergence (L-BFGS) instead of re-running the network for every minibatch
        loop.history = _fit_probe(model, dataset, seed, steps, probe_l2, rep, log)
        loop.position(steps)

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([seed, step])
        if stage == "detector":
            x, targets = dataset.batch(rng, batch_size)
            return model.loss(model(x), targets)["total"]
        x, targets = dataset.batch(stage, rng, batch_size)
        return model.loss(model(x), targets, stage)

    result = loop.run(step_loss)
    model.eval()
    weights = sdir / WEIGHT_FILES[stage]
    save_mathena(model, weights, {"stage": stage, "steps": str(result.steps), "crop_size": str(crop_size),
                                  "input_hw": json.dumps(list(input_hw))})
    rep(1.0, f"{stage} finished")
    result.weights = weights
    return result


def _fit_probe(model: HENA, data: "CropData", seed: int, steps: int, l2: float, rep=None, log=print,
               n_jitter: int = 1, batch_size: int = 64) -> List[float]:
    """Fit ``model.stage_probe`` (one Linear layer) on the frozen probe features of every crop with
    a stage label: original, horizontally flipped and ``n_jitter`` intensity-jittered copies.

    Features are standardised, the multinomial logistic regression (cross-entropy + ``l2`` * |W|^2)
    is solved full-batch by L-BFGS (``steps`` iterations at most), and the standardisation is then
    folded into the layer (W' = W / sd, b' = b - W' mu), so the probe stays exactly one Linear on
    the raw features. Returns the loss after every iteration."""
    idx = np.flatnonzero(data.stage >= 0)
    rng = np.random.default_rng([seed, 7])
    views = [data.crops[idx], data.crops[idx][:, :, ::-1]]
    for _ in range(n_jitter):
        views.append(np.stack([_jitter(c, rng, (0.0, 0.02)) for c in data.crops[idx]]))
    was_training = model.training
    model.eval()
    feats = []
    with torch.no_grad():
        for k, v in enumerate(views):
            if rep is not None:
                rep(0.5 * k / len(views), f"dds: probe features {k + 1}/{len(views)}")
            v = np.ascontiguousarray(v, np.float32)
            feats.extend(model(torch.from_numpy(v[i:i + batch_size])[:, None]).features
                         for i in range(0, len(v), batch_size))
    model.train(was_training)
    X = torch.cat(feats).double()
    y = torch.from_numpy(np.tile(data.stage[idx], len(views)))
    mu, sd = X.mean(0), X.std(0).clamp(min=1e-6)
    Z = (X - mu) / sd
    K = model.stage_probe.out_features
    W = torch.zeros(K, Z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max(1, int(steps)), history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    history: List[float] = []

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Z @ W.T + b, y) + l2 * (W * W).sum()
        loss.backward()
        history.append(float(loss.detach()))
        return loss

    opt.step(closure)
    with torch.no_grad():
        Wf = W / sd
        model.stage_probe.weight.copy_(Wf.float())
        model.stage_probe.bias.copy_((b - Wf @ mu).float())
        acc = float(((X @ Wf.T + (b - Wf @ mu)).argmax(1) == y).double().mean())
    log(f"dds: linear probe fitted on {len(X)} feature vectors in {len(history)} evaluations, "
        f"loss {history[-1]:.4f}, train accuracy {acc:.3f}")
    return history


# ============================================================================ metrics
# box_iou, map50, dice_scores, auroc: pantheon.metrics (imported above).


def numbering_scores(prediction: dict, ground_truth: dict, iou_thresh: float = 0.5) -> dict:
    """What a dentist sees on one image: detections (``{"boxes", "scores", "labels"}``, labels FDI)
    against the ground truth (``{"boxes", "labels"}``).

    Detections, best score first, are matched class-agnostically to the unmatched GT tooth of
    highest IoU >= ``iou_thresh``. ``correct``: matched and with the GT's FDI number;
    ``accuracy_gt`` = correct / GT teeth; ``accuracy_detected`` = correct / detections (NaN
    without detections); ``duplicates``: detections repeating an FDI number given in the image;
    ``invented``: detections matching no GT tooth (``double_boxes`` of them overlap, IoU >=
    ``iou_thresh``, a tooth another detection already took: one tooth counted twice);
    ``missed``: GT teeth no detection matched."""
    from ..models.mathena.numbering import duplicate_numbers
    pb = np.asarray(prediction["boxes"], np.float64).reshape(-1, 4)
    ps = np.asarray(prediction["scores"], np.float64).reshape(-1)
    pl = np.asarray(prediction["labels"]).reshape(-1).astype(np.int64)
    gb = np.asarray(ground_truth["boxes"], np.float64).reshape(-1, 4)
    gl = np.asarray(ground_truth["labels"]).reshape(-1).astype(np.int64)
    iou = box_iou(pb, gb)
    taken = np.zeros(len(gb), bool)
    correct = matched = double = 0
    for i in np.argsort(-ps, kind="stable"):
        if not len(gb):
            break
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_thresh:
            taken[j] = True
            matched += 1
            correct += int(pl[i] == gl[j])
        elif iou[i].max() >= iou_thresh:
            double += 1
    n_det, n_gt = len(pb), len(gb)
    return {"gt": n_gt, "detected": n_det, "matched": matched, "correct": correct,
            "accuracy_gt": correct / n_gt if n_gt else float("nan"),
            "accuracy_detected": correct / n_det if n_det else float("nan"),
            "duplicates": duplicate_numbers(pl), "invented": n_det - matched, "double_boxes": double,
            "missed": n_gt - matched}


def summarize_numbering(per_image: Sequence[dict]) -> dict:
    """Means per image of :func:`numbering_scores` (``numbering_accuracy`` = mean of
    ``accuracy_gt``, ``numbering_accuracy_detected`` = mean of ``accuracy_detected``), the pooled
    accuracy (all images' correct / all GT teeth) and the worst image's accuracy."""
    if not per_image:
        return {}
    mean = lambda k: float(np.nanmean([r[k] for r in per_image]))  # noqa: E731
    return {"numbering_accuracy": mean("accuracy_gt"), "numbering_accuracy_detected": mean("accuracy_detected"),
            "numbering_accuracy_pooled": sum(r["correct"] for r in per_image) / max(1, sum(r["gt"] for r in per_image)),
            "numbering_accuracy_worst_image": float(np.nanmin([r["accuracy_gt"] for r in per_image])),
            "duplicate_numbers_per_image": mean("duplicates"), "invented_teeth_per_image": mean("invented"),
            "double_boxes_per_image": mean("double_boxes"), "missed_teeth_per_image": mean("missed"),
            "images_with_duplicates": int(sum(r["duplicates"] > 0 for r in per_image))}


def stage_scores(pred, true) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    pred, true = np.asarray(pred).reshape(-1), np.asarray(true).reshape(-1)
    ok = true >= 0
    if not ok.any():
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    labels = sorted(set(true[ok].tolist()))
    return {"accuracy": float(accuracy_score(true[ok], pred[ok])),
            "macro_f1": float(f1_score(true[ok], pred[ok], labels=labels, average="macro", zero_division=0)),
            "n": int(ok.sum())}


@torch.no_grad()
def detect(detector: MATHEDetector, image2d: np.ndarray, input_hw=DETECTOR_INPUT_HW, score_thresh: float = 0.05):
    """Boxes in source pixels, scores and FDI numbers for one [0, 1] image."""
    img, lb = letterbox(image2d, input_hw)
    x = torch.from_numpy(img)[None, None].repeat(1, detector.config["in_channels"], 1, 1)
    det = detector.decode(detector(x), input_hw, score_thresh=score_thresh)[0]
    return {"boxes": lb.boxes_to_source(det["boxes"].numpy(), clip=True), "scores": det["scores"].numpy(),
            "labels": np.array([class_to_fdi(int(c)) for c in det["labels"]], np.int64)}


@torch.no_grad()
def predict_crops(hena: HENA, crops: np.ndarray, batch_size: int = 64, flip_average: bool = FLIP_AVERAGE) -> dict:
    """HENA on (N, H, W) crops as ToothAnalysis runs it (:func:`~pantheon.models.mathena.hena.crop_probabilities`):
    caries / anomaly probabilities, anomaly_score probability, stage index."""
    outs = {"caries": [], "anomaly": [], "anomaly_score": [], "stage": []}
    for i in range(0, len(crops), batch_size):
        p = crop_probabilities(hena, torch.from_numpy(np.ascontiguousarray(crops[i:i + batch_size]))[:, None],
                               flip_average)
        for k in ("caries", "anomaly", "anomaly_score"):
            outs[k].append(p[k].numpy())
        outs["stage"].append(p["stage"].argmax(-1).numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


@torch.no_grad()
def detect_numbered(detector: MATHEDetector, image2d: np.ndarray, input_hw=DETECTOR_INPUT_HW,
                    score_thresh: float = NUMBERING_SCORE_THRESH) -> dict:
    """What ToothAnalysis shows: one box per tooth, FDI numbers assigned along the arch
    (:func:`~pantheon.models.mathena.numbering.detect_and_number`), boxes in source pixels."""
    from ..models.mathena.numbering import detect_and_number
    d = detect_and_number(detector, image2d, score_thresh, input_hw)
    return {k: d[k] for k in ("boxes", "scores", "labels")}


def evaluate(detector: Optional[MATHEDetector], hena: Optional[HENA], opgs, input_hw=DETECTOR_INPUT_HW,
             crop_size: int = CROP_SIZE, score_thresh: float = NUMBERING_SCORE_THRESH,
             numbering_only: bool = False) -> dict:
    """Held-out metrics (module docstring): mAP@50 of ``detector`` on the images and the numbering
    a dentist sees (:func:`numbering_scores` of :func:`detect_numbered` at ``score_thresh``, the
    pipeline's default); caries / anomaly Dice, anomaly image-level accuracy, stage accuracy /
    macro-F1 of ``hena`` on ground-truth crops. ``numbering_only``: skip the mAP passes."""
    samples = load_data(opgs, input_hw)
    out: Dict[str, object] = {"images": len(samples), "teeth": sum(len(s.teeth) for s in samples),
                              "conventions": {
                                  "map50": "per-FDI-class AP at IoU 0.5 (greedy matching by score, all-point "
                                           "interpolation), mean over classes with GT",
                                  "dice": "HENA on GT-box crops as ToothAnalysis runs it: probabilities "
                                          + ("averaged with the left-right mirrored crop's, " if FLIP_AVERAGE else "")
                                          + f"mask where >= {MASK_THRESHOLD:g}; 'positive' = mean per-crop Dice "
                                          "over crops with non-empty GT, 'pooled' = Dice over all crops' pixels",
                                  "anomaly_image": "per tooth (GT-box crop): sigmoid(anomaly_score) vs 'tooth "
                                                   "has an anomaly'; accuracy at 0.5, AUROC (ties count 1/2)",
                                  "stage": "top-1 accuracy and sklearn macro-F1 over stages present in the GT",
                                  "numbering": "the pipeline's teeth (one box per tooth, numbered along the arch, "
                                               f"score >= {score_thresh:g}) matched class-agnostically to GT "
                                               "teeth at IoU >= 0.5, best score first; numbering_accuracy = "
                                               "correctly numbered / GT teeth, _detected = / detections, mean "
                                               "per image; duplicates = detections repeating a number in the "
                                               "image; invented = detections matching no GT tooth; missed = "
                                               "GT teeth no detection matched; all per image",
                                  "map50_numbered": "map50 of the numbered teeth (what is shown), same rules"}}
    if detector is not None:
        detector.eval()
        gts = [{"boxes": np.array([t["box"] for t in s.teeth]).reshape(-1, 4),
                "labels": np.array([t["fdi"] for t in s.teeth])} for s in samples]
        numbered = [detect_numbered(detector, s.image, input_hw, score_thresh) for s in samples]
        per = [numbering_scores(p, g) for p, g in zip(numbered, gts)]
        out.update(summarize_numbering(per))
        out["map50_numbered"] = map50(numbered, gts)["map50"]
        out["numbering_per_image"] = [{"image": s.name, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                           for k, v in r.items()}} for s, r in zip(samples, per)]
    if detector is not None and not numbering_only:
        preds = [detect(detector, s.image, input_hw) for s in samples]
        m = map50(preds, gts)
        out["map50"] = m["map50"]
        out["ap50_per_fdi"] = {str(k): round(v, 4) for k, v in m["per_class"].items()}
        agn = map50([{**p, "labels": np.zeros(len(p["labels"]))} for p in preds],
                    [{**g, "labels": np.zeros(len(g["labels"]))} for g in gts])
        out["map50_class_agnostic"] = agn["map50"]
    if hena is not None:
        hena.eval()
        data = CropData(samples, crop_size)
        pr = predict_crops(hena, data.crops)
        c = dice_scores(pr["caries"] >= MASK_THRESHOLD, data.caries > 0.5)
        a = dice_scores(pr["anomaly"] >= MASK_THRESHOLD, data.anomaly > 0.5)
        st = stage_scores(pr["stage"], data.stage)
        out.update({"caries_dice_positive": c["positive"], "caries_dice_pooled": c["pooled"],
                    "caries_positive_crops": c["positive_crops"], "anomaly_dice_positive": a["positive"],
                    "anomaly_dice_pooled": a["pooled"], "anomaly_positive_crops": a["positive_crops"],
                    "anomaly_image_accuracy": float(((pr["anomaly_score"] > 0.5) == (data.label > 0)).mean()),
                    "anomaly_auroc": auroc(pr["anomaly_score"], data.label > 0),
                    "anomaly_auroc_mask_max": auroc(pr["anomaly"].reshape(len(data), -1).max(1), data.label > 0),
                    "stage_accuracy": st["accuracy"], "stage_macro_f1": st["macro_f1"], "crops": len(data)})
    return out
