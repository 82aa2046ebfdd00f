"""FOSCU's Duo-Diffusion (pantheon.models.foscu): the label-map generator (sampling, seeds, its two
training stages) and N new (image, label) pairs written resumably in the layout the trainers read."""

from __future__ import annotations

import csv
import html

import numpy as np
import pytest
import torch

from pantheon.errors import InputError
from pantheon.models.foscu.labelgen import LabelGen, build_labelgen, load_labelgen, save_labelgen, tidy_labels
from pantheon.models.lldm.model import build_lldm, save_lldm

TINY = dict(grid=(32, 32, 32), ae_channels=(8, 8, 8), unet_channels=(8, 8, 8), unet_num_head_channels=(0, 0, 8))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    labelgen = build_labelgen(**TINY).eval()
    lldm = build_lldm(ae_channels=(8, 8, 8), unet_channels=(8, 8, 8), unet_num_head_channels=(0, 0, 8),
                      controlnet_embedding_channels=(8, 8, 8), patch_size=(32, 32, 32)).eval()
    d = tmp_path_factory.mktemp("foscu-models")
    return labelgen, lldm, save_labelgen(labelgen, d / "labelgen.safetensors"), save_lldm(lldm, d / "lldm.safetensors")


def test_sampling_is_seeded_and_shaped(models):
    labelgen = models[0]
    a = labelgen.sample(2, steps=3, generator=torch.Generator().manual_seed(4))
    b = labelgen.sample(2, steps=3, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 32, 32, 32) and a.dtype == np.uint8 and a.max() <= 4
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="between 1 and 1000"):
        labelgen.sample(1, steps=0)
    with pytest.raises(InputError, match="values 0-4"):
        LabelGen.one_hot(torch.full((1, 2, 2, 2), 5))


def test_tidy_labels_keeps_the_largest_body():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[1:6, 1:6, 1:6] = 1
    lab[3, 3, 3] = 4  # an HCC inside the liver stays
    lab[8, 8, 8] = 2  # a stray vessel speck goes
    out = tidy_labels(lab)
    assert out[3, 3, 3] == 4 and out[8, 8, 8] == 0 and (out == 1).sum() == (lab == 1).sum()


def test_checkpoint_round_trip(models, tmp_path):
    labelgen, _, path, lldm_path = models
    back = load_labelgen(path)
    for k, v in labelgen.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    from pantheon.errors import CheckpointError
    with pytest.raises(CheckpointError, match="is not a Pantheon Duo-Diffusion label generator checkpoint"):
        load_labelgen(lldm_path)


def test_the_anatomy_check_measures_and_refuses_in_words():
    from pantheon.models.foscu.labelgen import anatomy_limits, anatomy_problem
    small, big = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8)
    small[:2, :2, :2] = 1  # 8 liver voxels
    big[:4, :4, :4] = 1  # 64
    big[0, 0, 0], big[3, 3, 3] = 4, 4  # two separate HCCs
    small[0, 0, 0] = 2  # 1 portal-vein voxel per 7 of liver
    big[1, 1, 1:3] = 3  # 2 hepatic-vein voxels per 60 of liver
    limits = anatomy_limits([small, big])
    assert limits == {"liver_voxels": [7, 60], "hcc_count_max": 2, "vessel_share": [2 / 60, 1 / 7], "n_maps": 2}
    assert anatomy_problem(big, limits, 0.5) is None and anatomy_problem(big, None, 0.5) is None
    huge = np.ones((8, 8, 8), np.uint8)
    assert anatomy_problem(huge, limits, 0.5) == "liver of 256 ml, outside the training maps' 4-30 ml"
    three = big.copy()
    three[0, 3, 0] = 4
    assert anatomy_problem(three, limits, 0.5) == "3 HCCs, more than the training maps' 2"
    # vessels outside the training maps' share of the liver: none at all, or flooding it
    bare = big.copy()
    bare[bare == 3] = 0  # 0 per 60
    assert anatomy_problem(bare, limits, 0.5) == "vessels 0.00 % of the liver, outside the training maps' 3.33-14.29 %"
    flooded = big.copy()
    flooded[2, :3, :3] = 2  # 11 vessel voxels per 51 of liver
    assert anatomy_problem(flooded, limits, 0.5) == ("vessels 21.57 % of the liver, outside the training maps' "
                                                     "3.33-14.29 %")
    # when the vessels are not judged (fitting the vessel offsets), or by limits measured before they were
    assert anatomy_problem(bare, limits, 0.5, check_vessels=False) is None
    assert anatomy_problem(flooded, {k: v for k, v in limits.items() if k != "vessel_share"}, 0.5) is None


class _ScriptedGenerator:
    """A label generator whose maps depend only on the draw's seed: liver voxels = seed % 1000."""
    anatomy_limits = {"liver_voxels": [500, 600], "hcc_count_max": 1}

    def sample(self, n, steps, generator=None, progress=None, cancel=None):
        lab = np.zeros((1, 10, 10, 10), np.uint8)
        lab.reshape(-1)[:generator.initial_seed() % 1000] = 1
        return lab


def test_sample_checked_draws_again_until_the_anatomy_passes():
    from pantheon.models.foscu.labelgen import MAX_DRAWS, sample_checked
    gen = _ScriptedGenerator()
    lab, g, draws, problem = sample_checked(gen, 550, 2, 1.0)  # draw 0 is the seed alone, and passes
    assert draws == 1 and problem is None and (lab == 1).sum() == 550 and g.initial_seed() == 550
    # seed 7: draw d > 0 is seeded with (7, d); only draw 3's liver is inside the limits
    livers = [7] + [int(np.random.SeedSequence([7, d]).generate_state(1)[0]) % 1000 for d in range(1, MAX_DRAWS)]
    assert livers.index(livers[3]) == 3
    gen.anatomy_limits = {"liver_voxels": [livers[3], livers[3]], "hcc_count_max": 1}
    lab, g, draws, problem = sample_checked(gen, 7, 2, 1.0)
    assert draws == 4 and problem is None and (lab == 1).sum() == livers[3]
    gen.anatomy_limits = {"liver_voxels": [10 ** 6, 10 ** 6], "hcc_count_max": 1}  # nothing passes
    lab, g, draws, problem = sample_checked(gen, 7, 2, 1.0)
    assert draws == MAX_DRAWS and problem == f"liver of {(lab == 1).sum()} ml, outside the training maps' " \
                                             "1000000-1000000 ml"
    gen.anatomy_limits = None  # weights without limits: the first draw, unchecked
    assert sample_checked(gen, 7, 2, 1.0)[2] == 1


def test_anatomy_limits_travel_in_the_weights(models, tmp_path):
    from pantheon.errors import CheckpointError
    labelgen = build_labelgen(**TINY)
    assert load_labelgen(models[2]).anatomy_limits is None
    labelgen.anatomy_limits = {"liver_voxels": [100, 200], "hcc_count_max": 3, "n_maps": 4}
    back = load_labelgen(save_labelgen(labelgen, tmp_path / "l.safetensors"))
    assert back.anatomy_limits == labelgen.anatomy_limits  # limits from before the vessel share still load
    labelgen.anatomy_limits["vessel_share"] = [0.01, 0.025]
    back = load_labelgen(save_labelgen(labelgen, tmp_path / "v.safetensors"))
    assert back.anatomy_limits == labelgen.anatomy_limits
    for bad in ({"liver_voxels": "wide"}, {"liver_voxels": [1, 2], "hcc_count_max": 1, "vessel_share": [0.1]}):
        labelgen.anatomy_limits = bad
        with pytest.raises(CheckpointError, match="its anatomy limits are unreadable"):
            load_labelgen(save_labelgen(labelgen, tmp_path / "bad.safetensors"))


@pytest.mark.slow
def test_two_stages_train_and_refuse_out_of_order(tmp_path):
    from pantheon.train import foscu as tf
    from pantheon.train.lldm import phantom_cases
    cases = phantom_cases(range(50000, 50003))
    with pytest.raises(InputError, match=r"starts from the vae stage's weights; .* train that stage first\.$"):
        tf.train_stage("ldm", cases, tmp_path, steps=1, log=None)
    small = dict(ae_channels=(8, 8, 8), unet_channels=(8, 8, 8), unet_num_head_channels=(0, 0, 8))
    vae = tf.train_stage("vae", cases, tmp_path, steps=2, log=None, config=small)
    ldm = tf.train_stage("ldm", cases, tmp_path, steps=2, log=None, vessel_fit_maps=2)
    m = load_labelgen(ldm.weights)
    assert float(m.scale_factor) != 1.0 and vae.steps == ldm.steps == 2
    # the weights carry their anatomy limits and vessel offsets (only the vessel classes move)
    assert m.anatomy_limits["n_maps"] == 3 and len(m.class_bias) == 5 and m.class_bias[:2] + m.class_bias[4:] == [0] * 3
    # the ldm stage trains only the UNet: the autoencoder is the vae stage's
    before = load_labelgen(vae.weights).autoencoder.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in m.autoencoder.state_dict().items())
    stats = tf.label_statistics([c.labels for c in cases], 0.216)
    assert stats["n"] == 3 and stats["with_liver_500ml"] == 1.0 and stats["liver_ml_mean"] > 500


def test_pairs_are_written_resumably_in_the_training_layout(models, tmp_path):
    from pantheon.data.pairs import read_pairs
    from pantheon.models.foscu.pairs import generate_pairs
    labelgen, lldm, _, _ = models
    out = tmp_path / "pairs"
    first = generate_pairs(2, out, labelgen, lldm, seed=10, label_steps=2, image_steps=2)
    assert first["pairs"] == 2 and first["made_now"] == 2
    pairs = read_pairs(out / "cases.csv")  # the trainers' reader: same grid, checked
    assert len(pairs) == 2 and all(img.same_geometry(lab) for img, lab in pairs)
    img, lab = pairs[1]
    assert img.shape == (32, 32, 32) and np.allclose(np.abs(np.diag(img.direction)), 1) and img.spacing == (6.0,) * 3
    rows = list(csv.DictReader(open(out / "cases.csv")))
    assert [r["seed"] for r in rows] == ["10", "11"] and "hcc_count" in rows[0]
    from pantheon.io import read_volume
    for r in rows:  # the vessels' volume beside the liver's, from the label map written
        lab = read_volume(out / r["label"])
        assert float(r["vessels_ml"]) == round(float(np.isin(lab.array, (2, 3)).sum()) * 0.216, 1)
    assert [r["label_draws"] for r in rows] == ["1", "1"] and rows[0]["anatomy_problem"] == ""  # no limits
    assert (out / "labels" / "pair-00001.seg.nrrd").is_file()
    png = (out / "thumbnails" / "pair-00000.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.count("<figure>") == 2 and "pair-00001" in page
    # interrupted before pair 1's label map landed: a rerun makes exactly that pair, identically
    before = (out / "images" / "pair-00001.nii.gz").read_bytes()
    (out / "labels" / "pair-00001.nii.gz").unlink()
    (out / "images" / "pair-00001.nii.gz").unlink()
    again = generate_pairs(3, out, labelgen, lldm, seed=10, label_steps=2, image_steps=2)
    assert again["made_now"] == 2 and again["pairs"] == 3  # pair 1 again, and the new pair 2
    assert (out / "images" / "pair-00001.nii.gz").read_bytes() == before
    rows = list(csv.DictReader(open(out / "cases.csv")))
    assert [r["label_draws"] for r in rows] == ["1", "1", "1"]  # pair 0's count kept from the first run


def test_pairs_outside_the_anatomy_are_drawn_again_and_flagged(models, tmp_path):
    from pantheon.models.foscu.labelgen import MAX_DRAWS
    from pantheon.models.foscu.pairs import generate_pairs
    labelgen, lldm, path, _ = models
    strict = load_labelgen(path)
    strict.anatomy_limits = {"liver_voxels": [10 ** 6, 10 ** 6], "hcc_count_max": 0,  # nothing passes
                             "vessel_share": [0.01, 0.025]}
    summary = generate_pairs(1, tmp_path / "p", strict, lldm, seed=3, label_steps=1, image_steps=1)
    assert summary["anatomy_flagged"] == 1
    row = next(csv.DictReader(open(tmp_path / "p" / "cases.csv")))
    assert row["label_draws"] == str(MAX_DRAWS) and row["anatomy_problem"].startswith("liver of ")
    page = html.unescape((tmp_path / "p" / "index.html").read_text())
    assert ("Anatomy check: a map whose liver lies outside the training maps' 216000-216000 ml or with more than 0 "
            "HCCs or with vessels outside the training maps' 1.00-2.50 % of the liver is drawn again") in page
    assert f"anatomy check failed: {row['anatomy_problem']}</b>" in page


# ------------------------------------------------------------------------------ command line and worker
def test_cli_generate_and_errors(models, tmp_path, capsys):
    from pantheon.cli import main
    from pantheon.data.pairs import read_pairs
    _, _, labelgen_path, lldm_path = models
    common = ["--labelgen", str(labelgen_path), "--lldm", str(lldm_path), "--label-steps", "2", "--image-steps", "2",
              "--quiet"]
    code = main(["foscu", "generate", "2", "-o", str(tmp_path / "pairs"), "--seed", "3", *common])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert len(read_pairs(tmp_path / "pairs" / "cases.csv")) == 2
    # the same command with a larger N continues the folder (no --overwrite needed: it only adds pairs)
    assert main(["foscu", "generate", "3", "-o", str(tmp_path / "pairs"), "--seed", "3", *common]) == 0
    capsys.readouterr()
    assert len(read_pairs(tmp_path / "pairs" / "cases.csv")) == 3
    # the same pairs as the library call with the same seeds
    from pantheon.io import read_volume
    from pantheon.models.foscu.pairs import generate_pairs
    generate_pairs(2, tmp_path / "lib", models[0], models[1], seed=3, label_steps=2, image_steps=2)
    for sub in ("images", "labels"):
        a = read_volume(tmp_path / "pairs" / sub / "pair-00001.nii.gz").array
        np.testing.assert_array_equal(a, read_volume(tmp_path / "lib" / sub / "pair-00001.nii.gz").array)
    # a file where the folder should be: one sentence, exit 2, the file untouched
    (tmp_path / "file").write_text("keep")
    code = main(["foscu", "generate", "1", "-o", str(tmp_path / "file"), *common])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a file, not a folder" in err[0], err
    assert (tmp_path / "file").read_text() == "keep"
    # weights of the wrong kind: one sentence, exit 2
    code = main(["foscu", "generate", "1", "-o", str(tmp_path / "x"), "--labelgen", str(lldm_path), "--lldm",
                 str(lldm_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a Pantheon Duo-Diffusion label generator checkpoint" in err[0], err


@pytest.mark.slow
def test_worker_task_generates_pairs_and_refuses_bad_requests(models, tmp_path):
    from pantheon.worker.client import WorkerClient, WorkerError
    _, _, labelgen_path, lldm_path = models
    client = WorkerClient(cache_budget_mb=256)
    try:
        params = {"labelgen": str(labelgen_path), "lldm": str(lldm_path), "device": "cpu", "label_steps": 2,
                  "image_steps": 2, "seed": 7, "n": 2, "output": str(tmp_path / "pairs")}
        doc = client.run("foscu.generate", params, {}, timeout=120)
        s = doc["summary"]
        assert (s["pairs"], s["made_now"]) == (2, 2) and doc["notes"]["model_cache"] == "miss"
        assert s["index"] == str(tmp_path / "pairs" / "index.html") and (tmp_path / "pairs" / "index.html").is_file()
        rows = list(csv.DictReader(open(s["csv"])))
        assert [r["seed"] for r in rows] == ["7", "8"]
        again = client.run("foscu.generate", dict(params, n=3), {}, timeout=120)
        assert (again["summary"]["pairs"], again["summary"]["made_now"]) == (3, 1)
        assert again["notes"]["model_cache"] == "hit"
        (tmp_path / "file").write_text("x")
        for bad, words in (({"n": 0}, "'n' must be a whole number from 1 to 1000"), ({"output": ""}, "'output' must"),
                           ({"seed": -1}, "'seed' must be"), ({"image_steps": 2.5}, "'image_steps' must be"),
                           ({"output": str(tmp_path / "file")}, "exists and is not a folder")):
            with pytest.raises(WorkerError) as e:
                client.run("foscu.generate", dict(params, **bad), {}, timeout=60)
            assert e.value.kind == "input" and words in e.value.message, e.value.message
    finally:
        client.shutdown()


@pytest.mark.slow
def test_demo_label_generator_with_the_anatomy_check_gives_livers_of_real_size():
    """The bundled demo weights carry the limits of their 160 training maps (980-3516 ml, at most 3
    HCCs, vessels 0.97-2.63 % of the liver); checked, pairs 0-7 get livers of the held-out phantoms'
    size (1966 ml, SD 617), where the unchecked first draws include livers filling the field (seeds 1
    and 2: 5.8 l and 9.7 l)."""
    from pantheon.models.foscu.labelgen import load_labelgen_argument, sample_checked
    model, wid, demo = load_labelgen_argument(None)
    assert demo and model.anatomy_limits["liver_voxels"] == [4539, 16278] and model.anatomy_limits["hcc_count_max"] == 3
    # and their vessels' share of the liver: 0.97-2.63 %
    assert [round(v, 4) for v in model.anatomy_limits["vessel_share"]] == [0.0097, 0.0263]
    livers, vessels = [], []
    for seed in range(8):
        lab, _, draws, problem = sample_checked(model, seed, 50, 0.216)
        assert problem is None
        livers.append((lab == 1).sum() * 0.216)
        vessels.append(np.isin(lab, (2, 3)).sum() * 0.216)
        assert 0.0096 < vessels[-1] / livers[-1] < 0.0264
    assert all(980 <= v <= 3517 for v in livers) and 1300 < np.mean(livers) < 2600, livers
    # with the fitted vessel offsets (portal +2.96, hepatic +3.70) the vessels come out near the real
    # 30 ml (held-out SD 5.5): measured 25 ml on pairs 0-7 (10.6-36.5); without the offsets 10 ml
    assert model.class_bias[2] > 1 and model.class_bias[3] > 1
    assert 17 < np.mean(vessels) < 40, vessels


class _RampLogits:
    """A generator whose every sample is one 4x10x10 block of liver (logit 0) in background (logit 10
    outside, -10 inside), with portal-vein logits -i/100 on the block's voxels i = 0..399 (hepatic
    veins never): an offset b turns ceil(100 b) voxels into portal vein (ties stay liver)."""

    anatomy_limits = None

    def sample_logits(self, n, steps, generator=None, progress=None, cancel=None):
        if self.anatomy_limits and generator.initial_seed() % 2:  # odd seeds: liver filling the field, all
            logits = torch.full((1, 5, 6, 12, 12), -100.0)       # of it portal vein at any offset > -1
            logits[0, 1], logits[0, 2] = 0.0, 1.0
            return logits
        logits = torch.full((1, 5, 6, 12, 12), -100.0)
        logits[0, 0] = 10.0
        block = (slice(1, 5), slice(1, 11), slice(1, 11))
        logits[(0, 0) + block] = -10.0
        logits[(0, 1) + block] = 0.0
        logits[(0, 2) + block] = -torch.arange(400, dtype=torch.float32).reshape(4, 10, 10) / 100
        return logits


def test_vessel_offsets_fitted_hand_computed():
    """Training maps with 10 portal-vein voxels per 90 of liver: 40 of the block's 400 voxels must turn
    portal vein (40 / 360 = 1/9), which offsets just above 0.39 do (0.39 itself gives 39)."""
    from pantheon.models.foscu.labelgen import fit_vessel_bias, vessel_share
    train = np.zeros((4, 10, 10), np.uint8)
    train[0, :9] = 1
    train[0, 9] = 2
    assert vessel_share([train]) == {"portal_vein": 10 / 90, "hepatic_vein": 0.0}
    fit = fit_vessel_bias(_RampLogits(), [train], n=2, steps=1)
    assert 0.39 < fit["bias"][2] <= 0.39 + 12 / 2 ** 18 and fit["bias"][3] <= 0 and fit["bias"][:2] == [0.0, 0.0]
    assert fit["sampled_before"]["portal_vein"] == 0.0
    assert fit["sampled_after"]["portal_vein"] == pytest.approx(1 / 9)
    assert fit["n_maps"] == 2 and fit["target"]["portal_vein"] == pytest.approx(1 / 9)
    # maps the anatomy check refuses (here every other one, filling the field) do not count
    gen = _RampLogits()
    gen.anatomy_limits = {"liver_voxels": [300, 400], "hcc_count_max": 1}
    fit = fit_vessel_bias(gen, [train], n=4, steps=1, seed0=10)
    assert fit["n_maps_in_range"] == 2 and 0.39 < fit["bias"][2] <= 0.39 + 12 / 2 ** 18


def test_class_offsets_change_the_argmax_and_travel_in_the_weights(models, tmp_path):
    from pantheon.errors import CheckpointError
    labelgen = build_labelgen(**TINY)
    logits = torch.zeros(1, 5, 1, 1, 2)
    logits[0, 1] = 1.0  # liver leads by 1 everywhere
    logits[0, 2, 0, 0, 1] = 0.5
    assert labelgen.labels_from_logits(logits).tolist() == [[[[1, 1]]]]
    labelgen.class_bias = [0.0, 0.0, 0.6, 0.0, 0.0]
    assert labelgen.labels_from_logits(logits).tolist() == [[[[1, 2]]]]
    assert load_labelgen(models[2]).class_bias is None
    back = load_labelgen(save_labelgen(labelgen, tmp_path / "l.safetensors"))
    assert back.class_bias == [0.0, 0.0, 0.6, 0.0, 0.0]
    torch.manual_seed(0)
    z = back.sample_logits(1, 2, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(back.sample(1, 2, torch.Generator().manual_seed(3)), back.labels_from_logits(z))
    labelgen.class_bias = [0.0, 1.0]
    with pytest.raises(CheckpointError, match="its class offsets are unreadable"):
        load_labelgen(save_labelgen(labelgen, tmp_path / "bad.safetensors"))
