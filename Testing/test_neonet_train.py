"""NeoNet preprocessing contract, per-stage resumable training, patient-level CV, metrics, demo cards."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pantheon.errors import InputError
from pantheon.io.volume import Volume
from pantheon.models.neonet.preprocess import MODEL_SPACING, PATCH_SHAPE, check_mri, normalize_mri, resample_to_model
from pantheon.synth.mri_phantom import make_liver_mri_phantom

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "neoseg": dict(channels=(4, 8), strides=(2,), num_res_units=1),
    "neogen": dict(patch_size=PATCH_SHAPE, ae_channels=(4, 8), ae_num_res_blocks=1, latent_channels=2,
                   ae_norm_num_groups=4, unet_channels=(8, 16), unet_attention_levels=(False, False),
                   unet_num_head_channels=(8, 16), unet_num_res_blocks=1, unet_norm_num_groups=4,
                   controlnet_embedding_channels=(4, 8), num_train_timesteps=100),
    "pattennet": dict(dab_channels=(8,), mask_channels=1),
}


# ------------------------------------------------------------------------------------------- preprocess
def test_check_mri_rejects_ct_2d_nan_constant():
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1000, 400, (12, 12, 12)).astype(np.float32)
    with pytest.raises(InputError, match="looks like CT"):
        check_mri(Volume(ct))
    with pytest.raises(InputError, match="2D"):
        check_mri(Volume(rng.uniform(0, 1, (12, 12)).astype(np.float32)))
    bad = rng.uniform(0, 1, (6, 6, 6)).astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_mri(Volume(bad))
    with pytest.raises(InputError, match="constant"):
        check_mri(Volume(np.ones((6, 6, 6), np.float32)))
    mri, _, _ = make_liver_mri_phantom(1, spacing=(4.0, 4.0, 5.0))
    check_mri(mri)  # a phantom MRI passes


def test_normalize_range():
    a = np.random.default_rng(1).gamma(2.0, 100.0, (10, 20, 20))
    n = normalize_mri(a)
    assert n.dtype == np.float32 and n.min() == 0.0 and n.max() == 1.0
    lo, hi = np.percentile(a, [0.5, 99.5])
    mid = (a > lo) & (a < hi)
    np.testing.assert_allclose(n[mid], ((a[mid] - lo) / (hi - lo)), rtol=1e-4, atol=1e-5)
    assert np.all(normalize_mri(np.full((3, 3, 3), 5.0)) == 0)


def test_resample_round_trip_linear_exact_and_labels():
    mri, lab, _ = make_liver_mri_phantom(2, spacing=(2.5, 3.0, 5.0), orientation="random", oblique=0.1)
    k, j, i = np.meshgrid(*[np.arange(s) for s in mri.shape], indexing="ij")
    w = mri.ijk_to_world(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    f = (w @ np.array([0.3, -0.2, 0.5]) + 7.0).reshape(mri.shape)
    model, back = resample_to_model(mri.with_array(f))
    assert np.allclose(model.spacing, MODEL_SPACING)
    assert np.allclose(back(model).array, f, atol=1e-6)
    assert back(model).same_geometry(mri)
    lm, backl = resample_to_model(lab, interpolation="nearest")
    assert lm.array.dtype == lab.array.dtype
    rt = backl(lm, "nearest").array
    # through a coarser 4 mm grid: the liver survives nearly intact, a small tumour loses its rim voxels
    for c, need in ((1, 0.95), (2, 0.85)):
        a, b = rt == c, lab.array == c
        assert 2 * np.sum(a & b) / (a.sum() + b.sum()) >= need


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def cases():
    from pantheon.train.neonet import load_cases
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is much faster on a shared CPU
    yield load_cases([11, 12, 13, 14, 15], pni_rule=lambda s: s in (11, 12))  # 2 PNI+, 3 PNI-
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(cases, tmp_path_factory):
    from pantheon.train.neonet import STAGES, train_stage
    out = tmp_path_factory.mktemp("neonet")
    paths = {st: train_stage(st, cases[:4], out, steps=2, resume=True, log=None, configs=TINY, checkpoint_every=1,
                             num_inference_steps=2, batch_size=1).weights for st in STAGES}
    return out, paths


@pytest.mark.slow
def test_each_stage_writes_checkpoint_and_weights(trained):
    from pantheon.models.neonet import load_neonet_component
    out, paths = trained
    for st, kind in (("seg", "neoseg"), ("vae", "neogen"), ("ldm", "neogen"), ("controlnet", "neogen"),
                     ("cls", "pattennet")):
        ck = torch.load(out / st / "checkpoint.pt", map_location="cpu", weights_only=True)
        assert ck["step"] == 2 and len(ck["history"]) == 2 and ck["kind"] == kind
        assert load_neonet_component(paths[st], kind) is not None


@pytest.mark.parametrize("stage", ["seg", "ldm", "cls"])
@pytest.mark.slow
def test_resume_continues(trained, cases, stage):
    from pantheon.train.neonet import train_stage
    out, _ = trained
    before = torch.load(out / stage / "checkpoint.pt", map_location="cpu", weights_only=True)["history"]
    train_stage(stage, cases[:4], out, steps=3, resume=True, log=None, configs=TINY, checkpoint_every=1,
                synthesize=False, batch_size=1)
    ck = torch.load(out / stage / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["step"] == 3 and ck["history"][:2] == before and len(ck["history"]) == 3


@pytest.mark.slow
def test_cls_with_neoseg_adds_segmented_training_crops(trained, cases, tmp_path):
    from pantheon.train.neonet import train_stage
    out, paths = trained
    logs = []
    train_stage("cls", cases[:4], tmp_path, steps=1, log=logs.append, configs=TINY, synthesize=False,
                batch_size=1, neogen=paths["controlnet"], neoseg=paths["seg"])
    assert "Added 4 NeoSeg-cropped training samples" in logs
    assert "Classifier training set: 8 real + 0 synthetic samples" in logs


@pytest.mark.slow
def test_resume_matches_uninterrupted(trained, cases, tmp_path):
    from pantheon.train.neonet import train_stage
    out, _ = trained
    train_stage("vae", cases[:4], tmp_path, steps=1, resume=True, log=None, configs=TINY, batch_size=1)
    train_stage("vae", cases[:4], tmp_path, steps=2, resume=True, log=None, configs=TINY, batch_size=1)
    a = torch.load(tmp_path / "vae" / "checkpoint.pt", weights_only=True)["history"]
    b = torch.load(out / "vae" / "checkpoint.pt", weights_only=True)["history"][:2]
    np.testing.assert_allclose(a, b, rtol=1e-4)


@pytest.mark.slow
def test_cross_validation_patient_level_stratified_synthetic_only_in_training(trained, cases, tmp_path):
    from pantheon.train import neonet as tn
    calls = []

    def recording_train(stage, data, out_dir, steps, resume, progress, log, **kw):
        calls.append((stage, [c.case_id for c in data], kw.get("samples")))
        return tn.train_stage(stage, data, out_dir, 1, resume, progress, None, **{**kw, "configs": TINY})

    res = tn.cross_validate(cases, tmp_path, k=2, seed=0, generator="per_fold", num_inference_steps=2, batch_size=1,
                            steps={"vae": 1, "ldm": 1, "controlnet": 1, "cls": 1}, log=None, train_fn=recording_train)
    assert len(res["folds"]) == 2
    all_ids = {c.case_id for c in cases}
    pni = {c.case_id: c.pni for c in cases}
    tested = []
    total_syn = 0
    for fo in res["folds"]:
        tr, te = set(fo["train_ids"]), set(fo["test_ids"])
        assert not tr & te and tr | te == all_ids
        tested += fo["test_ids"]
        assert {pni[i] for i in te} == {0, 1}  # stratified: each test fold has both classes
        assert set(fo["synthetic_sources"]) <= tr
        assert {p["case_id"] for p in fo["test_predictions"]} == te
        total_syn += fo["n_synthetic"]
    assert sorted(tested) == sorted(all_ids)
    assert total_syn > 0
    # every generator/classifier was trained on its fold's training cases only; synthetic samples only there
    for fo in res["folds"]:
        mine = [c for c in calls if set(c[1]) == set(fo["train_ids"])]
        assert [c[0] for c in mine] == ["vae", "ldm", "controlnet", "cls"]
        samples = mine[-1][2]
        assert all(s.source_id in fo["train_ids"] for s in samples)
        n_pos = sum(s.pni for s in samples)
        assert n_pos == len(samples) - n_pos  # balanced 1:1
    assert all(any(set(c[1]) == set(fo["train_ids"]) for fo in res["folds"]) for c in calls)


def test_segmented_case_gives_probability_crops(cases):
    """segment_case: NeoSeg's argmax labels and tumour probability; the classifier sample then holds
    that probability cropped with the box centred on NeoSeg's tumour (not the ground truth's)."""
    from pantheon.models.neonet import NeoSeg, apply_crop
    from pantheon.models.neonet.preprocess import tlcr_patch
    from pantheon.train.neonet import real_samples, segment_case
    torch.manual_seed(0)
    seg = NeoSeg(**TINY["neoseg"]).eval()
    case = cases[0]
    sc = segment_case(seg, case)
    prob = seg.predict(torch.as_tensor(case.image.array), roi_size=(16, 48, 48), overlap=0.25)[0]
    argmax = prob.argmax(0).numpy()
    if not (argmax == 2).any():  # an untrained net may find no tumour: the most tumour-like voxel stands in
        argmax[np.unravel_index(int(prob[2].argmax()), argmax.shape)] = 2
    assert np.array_equal(sc.labels.array, argmax)
    assert np.allclose(sc.tumour_probability, prob[2].numpy(), atol=1e-6)
    assert (sc.labels.array == 2).any() and sc.labels.same_geometry(case.labels)
    _, _, box = tlcr_patch(sc.image, sc.labels)
    want = apply_crop(sc.image.with_array(prob[2].numpy()), box, "linear", fill=0.0).array
    got = real_samples([sc])[0]
    assert got.tumour.dtype == np.float32 and got.tumour.shape == PATCH_SHAPE
    assert np.allclose(got.tumour, want, atol=1e-6)
    truth = real_samples([case])[0].tumour
    assert set(np.unique(truth).tolist()) == {0.0, 1.0} and not np.allclose(truth, got.tumour)


def test_cv_splits_groups_and_ratio():
    from pantheon.train.neonet import Case, cv_splits
    v = Volume(np.zeros((2, 2, 2), np.float32))
    cs = [Case(f"c{n}", v, v, int(n % 3 == 0), patient_id=f"p{n // 2}") for n in range(30)]
    for tr, te in cv_splits(cs, k=5, seed=3):
        assert not {cs[i].group for i in tr} & {cs[i].group for i in te}
        assert 0.15 <= np.mean([cs[i].pni for i in te]) <= 0.55


def test_binary_metrics_hand_computed():
    from pantheon.metrics import binary_metrics
    from pantheon.train.neonet import mean_sd
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.3]
    m = binary_metrics(y, s)
    # thresholded at 0.5: TP 2 / 3 positives, TN 3 / 4 negatives; accuracy 5 / 7
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    # pairs (12): 0.9 beats 4; 0.6 beats 3; 0.3 beats 2 and ties 1 -> (4 + 3 + 2 + 0.5) / 12
    assert m["auc"] == pytest.approx(9.5 / 12)
    assert np.isnan(binary_metrics([1, 1], [0.2, 0.8])["auc"])
    assert all(np.isnan(binary_metrics([1, 1], [0.2, 0.8])["auc_ci95"]))
    ms = mean_sd([0.6, 0.8])
    assert ms["mean"] == pytest.approx(0.7) and ms["sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))


def test_auc_confidence_interval_hanley_mcneil():
    from pantheon.metrics import auroc_confidence_interval as auc_confidence_interval
    from pantheon.metrics import binary_metrics
    # by hand for AUC 0.8, 30 + 30 cases: Q1 = 0.8 / 1.2, Q2 = 1.28 / 1.8,
    # var = (0.16 + 29 (Q1 - 0.64) + 29 (Q2 - 0.64)) / 900 = 0.0033284, SE 0.057692
    lo, hi = auc_confidence_interval(0.8, 30, 30)
    assert lo == pytest.approx(0.8 - 1.96 * 0.057692, abs=1e-5) and hi == pytest.approx(0.8 + 1.96 * 0.057692, abs=1e-5)
    # a perfect AUC has zero Hanley-McNeil variance; the interval is clipped to [0, 1]
    assert auc_confidence_interval(1.0, 5, 5) == [1.0, 1.0]
    assert auc_confidence_interval(0.5, 2, 2)[0] >= 0.0
    m = binary_metrics([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3])
    assert m["auc_ci95"] == auc_confidence_interval(1.0, 2, 2)


@pytest.mark.parametrize("kind", ["neoseg", "neogen", "pattennet"])
def test_demo_cards_valid_and_match(kind):
    from pantheon.registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR, load_card, sha256_file
    card_path = CARDS_DIR / f"neonet-demo-{kind}.json"
    if not card_path.is_file():
        pytest.skip("demo card not built")
    card = load_card(card_path)
    assert card.demo is True and card.model == "neonet" and card.input["modality"] == "MR"
    f = BUNDLED_WEIGHTS_DIR / card.file
    assert f.is_file() and f.stat().st_size == card.size_bytes and f.stat().st_size < 10 * 2 ** 20
    assert sha256_file(f, use_cache=False) == card.sha256
    metrics = json.loads((BUNDLED_WEIGHTS_DIR / "neonet-demo-metrics.json").read_text())
    assert metrics["demo"] is True and "auc" in metrics["classifier_held_out"]["crop_from_ground_truth"]


# ------------------------------------------------------------------------------------------- classifier training
def _blob_sample(pni: int):
    """A (24, 32, 32) image/mask pair: a centred ball, plus a thin tentacle when ``pni``."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in PATCH_SHAPE], indexing="ij")
    mask = ((k - 11.5) ** 2 + (j - 15.5) ** 2 + (i - 15.5) ** 2) <= 16
    if pni:
        mask |= (np.abs(k - 12) <= 0) & (np.abs(j - 16) <= 0) & (i >= 16) & (i <= 25)
    img = np.where(mask, 0.3, 0.85).astype(np.float32)
    return img, mask.astype(np.float32)


def test_classifier_augmentation_is_label_preserving_and_geometry_correct():
    from scipy import ndimage

    from pantheon.train.neonet import augment_classifier_patch
    img0, mask0 = _blob_sample(1)
    k, j, i = np.meshgrid(*[np.arange(n) - (s - 1) / 2 for n, s in zip(PATCH_SHAPE, PATCH_SHAPE)], indexing="ij")
    r = np.sqrt(k * k + j * j + i * i)
    r0 = r[mask0 > 0].max()
    seen = set()
    for n in range(40):
        rng = np.random.default_rng(n)
        img, mask = augment_classifier_patch(img0, mask0, rng, max_shift=2)  # the widest shift still preserves it
        assert img.shape == mask.shape == PATCH_SHAPE and img.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert mask.sum() == mask0.sum()  # nothing shifted out: the structure is central
        assert 0.0 <= img.min() and img.max() <= 1.0
        # the same geometric transform hit image and mask: every mask voxel is darker than every voxel
        # of the shell around it (the shell is central too, so no zero-filled border is involved)
        shell = ndimage.binary_dilation(mask > 0, iterations=2) & (mask == 0)
        assert img[mask > 0].max() < img[shell].min()
        # the tentacle's reach from the crop centre (the PNI evidence) moves by at most the shift
        assert abs(r[mask > 0].max() - r0) <= 2 * np.sqrt(3) + 1e-6
        seen.add(tuple(np.round(np.argwhere(mask > 0).mean(0) - np.argwhere(mask0 > 0).mean(0), 1)))
    assert len(seen) > 5  # flips, rotations and shifts really vary the sample


def test_balanced_batches():
    from pantheon.train.neonet import Sample, balanced_batch
    z = np.zeros(PATCH_SHAPE, np.float32)
    samples = [Sample(z, z, int(n < 3), f"c{n}") for n in range(12)]  # 3 PNI+, 9 PNI-
    counts = np.zeros(2)
    for n in range(50):
        idx = balanced_batch(samples, np.random.default_rng(n), 8)
        ys = [samples[i].pni for i in idx]
        assert sum(ys) == 4
        counts += np.bincount(ys, minlength=2)
    assert counts[0] == counts[1]
    only_neg = [Sample(z, z, 0, f"n{n}") for n in range(4)]
    assert len(balanced_batch(only_neg, np.random.default_rng(0), 3)) == 3


@pytest.mark.slow
def test_cls_keeps_best_validation_checkpoint(trained, cases, tmp_path):
    """With validation samples the classifier stage keeps the weights of its best validation AUC and
    can stop early; the chosen step is recorded in the weights' metadata."""
    from pantheon.models.neonet import read_neonet_checkpoint
    from pantheon.train.neonet import real_samples, train_stage
    out, paths = trained
    val = real_samples(cases)
    lines = []
    path = train_stage("cls", cases[:4], tmp_path, steps=6, resume=True, log=lines.append, configs=TINY,
                       neogen=paths["controlnet"], synthesize=False, batch_size=2, val_samples=val, eval_every=2,
                       patience=2).weights
    _, meta = read_neonet_checkpoint(path)
    assert int(meta["best_step"]) in (2, 4, 6) and 0.0 <= float(meta["validation_auc"]) <= 1.0
    assert any("validation AUC" in ln for ln in lines)
    ck = torch.load(tmp_path / "cls" / "checkpoint.pt", weights_only=True)
    assert ck["best_step"] == int(meta["best_step"]) and ck["best_state"] is not None


@pytest.mark.slow
def test_demo_classifier_separates_fresh_phantoms():
    """The bundled demo PattenNet ranks PNI+ above PNI- on phantoms it has never seen (seeds outside
    the demo's training, validation and held-out ranges; ground-truth TLCR crops)."""
    from pantheon.registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR
    from pantheon.train.neonet import evaluate_classifier, load_cases
    card = CARDS_DIR / "neonet-demo-pattennet.json"
    weights = BUNDLED_WEIGHTS_DIR / "neonet-demo-pattennet.safetensors"
    if not card.is_file() or not weights.is_file():
        pytest.skip("demo weights not built")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cases = load_cases(list(range(50_000, 50_008)), pni_rule=lambda s: s % 2 == 0)  # 4 PNI+, 4 PNI-
        res = evaluate_classifier(weights, cases)
    finally:
        torch.set_num_threads(threads)
    assert res["n"] == 8 and res["n_positive"] == 4
    assert res["auc"] >= 0.75, res["cases"]


@pytest.mark.slow
def test_demo_end_to_end_beats_chance_on_fresh_phantoms():
    """End to end (NeoSeg's tumour, TLCR crop on it, PattenNet on NeoSeg's probability) the bundled
    demo models rank PNI+ above PNI- on 24 phantoms outside every demo seed range."""
    from pantheon.registry import BUNDLED_WEIGHTS_DIR, CARDS_DIR
    from pantheon.train.neonet import evaluate_classifier, load_cases
    weights = {k: BUNDLED_WEIGHTS_DIR / f"neonet-demo-{k}.safetensors" for k in ("neoseg", "pattennet")}
    if not all(w.is_file() for w in weights.values()) or not (CARDS_DIR / "neonet-demo-neoseg.json").is_file():
        pytest.skip("demo weights not built")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cases = load_cases(list(range(51_000, 51_024)), pni_rule=lambda s: s % 2 == 0)  # 12 PNI+, 12 PNI-
        res = evaluate_classifier(weights["pattennet"], cases, neoseg=weights["neoseg"])
    finally:
        torch.set_num_threads(threads)
    assert res["crop_from"] == "neoseg" and res["n"] == 24 and res["n_positive"] == 12
    assert res["auc"] >= 0.75, res["cases"]  # bundled weights: 0.83 here, 0.83 on the 100 held-out
    assert res["auc_ci95"][0] > 0.5  # above chance, not by luck
