"""3D-LLDM (pantheon.models.lldm): label maps read and refused in one sentence, the whole field of
view on the model grid and back onto the label map's exact grid in any orientation, seeded
determinism, the checkpoint, the three training stages and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pantheon.cli import main
from pantheon.errors import CheckpointError, InputError
from pantheon.io import read_volume, write_volume
from pantheon.io.volume import Volume
from pantheon.models.lldm.model import LABEL_CHANNELS, build_lldm, load_lldm, save_lldm
from pantheon.models.lldm.synthesis import lldm_labels, one_hot, prepare_labels, synthesize
from pantheon.synth.hcc_mri_phantom import make_hcc_mri_phantom


@pytest.fixture(scope="module")
def phantom():
    """An oblique phantom in a permuted, flipped orientation, with three HCCs drawn (on this coarse grid
    two may merge or one vanish)."""
    mri, labels, info = make_hcc_mri_phantom(7, shape=(24, 64, 72), orientation="PIL", oblique=12.0, n_hcc=3)
    return mri, labels


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_lldm().eval()


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


# ------------------------------------------------------------------------------ label maps
def test_label_values_and_named_segments(phantom):
    _, labels = phantom
    values = lldm_labels(labels)
    assert values.dtype == np.uint8 and set(np.unique(values)) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(values, labels.array)
    # a .seg.nrrd names its segments: names decide, whatever the values
    arr = np.zeros(labels.shape, np.uint8)
    arr[labels.array == 1], arr[labels.array == 4] = 7, 3
    named = Volume(arr, labels.spacing, labels.origin, labels.direction,
                   metadata={"segments": {7: "Liver", 3: "Hepatocellular carcinoma"}})
    out = lldm_labels(named)
    assert ((out == 1) == (labels.array == 1)).all() and ((out == 4) == (labels.array == 4)).all()
    assert not np.isin(out, (2, 3)).any()


@pytest.mark.parametrize("make, words", [
    (lambda v: v.with_array(np.zeros(v.shape, np.uint8)), r"^The label map is empty \(every voxel is 0\)"),
    (lambda v: v.with_array(np.where(v.array == 1, 0, v.array)), r"^The label map has no liver \(label 1"),
    (lambda v: v.with_array(np.where(v.array == 4, 6, v.array)), r"^The label map has labels 6 and no segment names"),
    (lambda v: Volume(v.array[:1], v.spacing, v.origin, v.direction), r"3D"),
    (lambda v: v.with_array(v.array.astype(np.float32) + 0.5), r"fractional values"),
    (lambda v: Volume(v.array, v.spacing, v.origin, v.direction, metadata={"segments": {1: "liver", 2: "spleen",
                                                                                       3: "hv", 4: "hcc"}}),
     r"segments 3D-LLDM does not know \(spleen\)"),
])
def test_bad_label_maps_are_one_sentence(phantom, model, make, words):
    _, labels = phantom
    with pytest.raises(InputError, match=words) as e:
        synthesize(make(labels), model, steps=1)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_too_large_a_field_is_refused(model):
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    huge = Volume(lab, (120.0, 120.0, 120.0))  # 960 mm a side
    with pytest.raises(InputError, match=r"spans 960 x 960 x 960 mm; .* crop it to the abdomen\.$"):
        synthesize(huge, model, steps=1)


# ------------------------------------------------------------------------------ geometry
def test_the_labels_land_on_the_exact_grid_in_any_orientation(phantom):
    """Model grid and back: a liver painted on the model grid comes back onto the label map's own
    voxels (permuted, flipped, tilted axes), where the liver is."""
    _, labels = phantom
    model_labels, back, shape = prepare_labels(labels.with_array(lldm_labels(labels)))
    assert all(s % 16 == 0 for s in model_labels.shape) and model_labels.shape >= shape
    assert not model_labels[shape[0]:].any() and not model_labels[:, shape[1]:].any()  # padding is background
    liver = back((model_labels == 1).astype(np.float32))
    assert liver.same_geometry(labels) and liver.shape == labels.shape
    assert _dice(liver.array > 0.5, labels.array == 1) > 0.85  # 6 mm against ~1.6 x 5 mm voxels
    hcc = back((model_labels == 4).astype(np.float32))
    assert _dice(hcc.array > 0.5, labels.array == 4) > 0.6


def test_synthesis_is_on_the_label_grid_and_seeded(phantom, model):
    _, labels = phantom
    steps = []
    res = synthesize(labels, model, steps=2, seed=3, progress=lambda f, m: steps.append((f, m)))
    vol = res.volumes["synthetic_mri"]
    assert vol.same_geometry(labels) and vol.shape == labels.shape and vol.array.dtype == np.float32
    assert 0.0 <= vol.array.min() and vol.array.max() <= 1.0
    again = synthesize(labels, model, steps=2, seed=3).volumes["synthetic_mri"]
    np.testing.assert_array_equal(again.array, vol.array)
    other = synthesize(labels, model, steps=2, seed=4).volumes["synthetic_mri"]
    assert not np.allclose(other.array, vol.array)
    assert steps[-1] == (1.0, "Done") and any("Denoising step 2/2" in m for _, m in steps)
    voxel_ml = float(np.prod(labels.spacing)) / 1000
    assert res.scalars["hcc_ml"] == pytest.approx((labels.array == 4).sum() * voxel_ml)
    assert "64 x 48 x 32" in res.notes["model_grid"] or "padded to" in res.notes["model_grid"]
    with pytest.raises(InputError, match="number of DDIM steps"):
        synthesize(labels, model, steps=1001)


def test_one_hot_channels():
    lab = np.array([[[0, 1, 2, 3, 4]]], np.uint8)
    oh = one_hot(lab)
    assert oh.shape == (1, 4, 1, 1, 5) and LABEL_CHANNELS == ("liver", "portal_vein", "hepatic_vein", "hcc")
    assert oh[0, :, 0, 0].argmax(0).tolist() == [0, 0, 1, 2, 3] and oh[0, :, 0, 0, 0].sum() == 0
    # labels left out of the conditioning join the liver channel; theirs is empty
    part = one_hot(lab, ("liver", "hcc"))
    assert part[0, :, 0, 0].tolist() == [[0, 1, 1, 1, 0], [0] * 5, [0] * 5, [0, 0, 0, 0, 1]]


@pytest.mark.parametrize("use, words", [
    ("liver,spleen", "Unknown label 'spleen' to steer the synthesis; choose from liver, portal_vein"),
    ("hcc,portal_vein", "The liver always steers a 3D-LLDM synthesis; keep 'liver' among the labels."),
    (7, "must be names among liver, portal_vein, hepatic_vein, hcc, got 7."),
])
def test_which_labels_steer_is_checked(use, words):
    from pantheon.models.lldm.synthesis import check_use
    assert check_use(None) == LABEL_CHANNELS
    assert check_use("HCC, liver,Portal-Vein") == ("liver", "portal_vein", "hcc")  # channel order
    with pytest.raises(InputError) as e:
        check_use(use)
    assert words in str(e.value)


def test_labels_left_out_are_synthesised_as_liver(phantom, model):
    """Leaving the vessels out equals giving a map whose vessels are liver, and the result says so."""
    _, labels = phantom
    lab = lldm_labels(labels)
    res = synthesize(labels, model, steps=2, seed=2, use=["liver", "hcc"])
    merged = synthesize(labels.with_array(np.where(np.isin(lab, (2, 3)), 1, lab).astype(np.uint8)), model,
                        steps=2, seed=2)
    np.testing.assert_array_equal(res.volumes["synthetic_mri"].array, merged.volumes["synthetic_mri"].array)
    assert res.notes["labels_used"] == ("steered by liver, hcc; portal_vein, hepatic_vein left to the model "
                                        "(merged into the liver)")
    assert "labels_used" not in merged.notes
    # the label map written beside the image is the user's, vessels kept
    np.testing.assert_array_equal(res.labels["labels"].volume.array, lab)


# ------------------------------------------------------------------------------ checkpoint
def test_checkpoint_round_trip_and_refusals(model, tmp_path):
    path = save_lldm(model, tmp_path / "m.safetensors")
    back = load_lldm(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    from pantheon.models.neonet import build_neogen, save_neonet_component
    other = save_neonet_component(build_neogen(ae_channels=(8, 16), ae_norm_num_groups=8, unet_channels=(16, 32),
                                               unet_attention_levels=(False, False), unet_num_head_channels=(16, 32),
                                               unet_norm_num_groups=8, controlnet_embedding_channels=(8, 16),
                                               patch_size=(16, 16, 16)), tmp_path / "neogen.safetensors")
    with pytest.raises(CheckpointError, match="is not a Pantheon 3D-LLDM checkpoint"):
        load_lldm(other)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_lldm(tmp_path / "empty.safetensors")


# ------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_three_stages_train_resume_and_refuse_out_of_order(tmp_path):
    from pantheon.train import lldm as tl
    cases = tl.phantom_cases(range(50000, 50003))
    assert cases[0].image.shape == tl.DEMO_TRAIN_SHAPE and cases[0].image.max() == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"starts from the ldm stage's weights; .* train that stage first\.$"):
        tl.train_stage("controlnet", cases, tmp_path, steps=1, log=None)
    small = dict(ae_channels=(8, 8, 8), unet_channels=(8, 8, 8), unet_num_head_channels=(0, 0, 8),
                 controlnet_embedding_channels=(8, 8, 8))
    first = tl.train_stage("vae", cases, tmp_path, steps=2, log=None, config=small)
    assert first.steps == 2 and first.weights.is_file()
    resumed = tl.train_stage("vae", cases, tmp_path, steps=3, log=None, config=small)
    assert resumed.steps == 3 and len(resumed.history) == 3  # steps 0-1 restored, one more trained
    ldm = tl.train_stage("ldm", cases, tmp_path, steps=2, log=None)
    m = load_lldm(ldm.weights)
    assert float(m.scale_factor) != 1.0  # the latent scale was calibrated from the data
    cn = tl.train_stage("controlnet", cases, tmp_path, steps=2, log=None)
    trained = load_lldm(cn.weights)
    # the ControlNet stage trains only the ControlNet: the UNet is the ldm stage's
    for k, v in m.unet.state_dict().items():
        assert torch.equal(v, trained.unet.state_dict()[k]), k


# ------------------------------------------------------------------------------ command line
def test_cli_synthesize_and_errors(phantom, model, tmp_path, capsys):
    _, labels = phantom
    write_volume(labels, tmp_path / "labels.nii.gz")
    weights = save_lldm(model, tmp_path / "w.safetensors")
    code = main(["lldm", "synthesize", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "out"), "--steps", "2",
                 "--seed", "5", "--weights", str(weights), "--quiet"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    vol = read_volume(next((tmp_path / "out").glob("synthetic_mri*.nii.gz")))
    assert vol.same_geometry(labels, atol=1e-4) and vol.shape == labels.shape
    doc = json.loads((tmp_path / "out" / "result.json").read_text())
    assert doc["scalars"]["seed"] == 5 and doc["notes"]["weights"] == "w.safetensors"
    # bad input: one sentence, exit 2, nothing written
    write_volume(labels.with_array(np.zeros(labels.shape, np.uint8)), tmp_path / "empty.nii.gz")
    code = main(["lldm", "synthesize", str(tmp_path / "empty.nii.gz"), "-o", str(tmp_path / "bad"), "--steps", "1",
                 "--weights", str(weights), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is empty (every voxel is 0)" in err[0], err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    code = main(["lldm", "synthesize", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "bad2"), "--steps", "1",
                 "--weights", str(weights), "--labels", "liver,veins", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Unknown label 'veins' to steer the synthesis" in err[0], err
    assert not (tmp_path / "bad2").exists()
    code = main(["lldm", "synthesize", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "part"), "--steps", "2",
                 "--seed", "5", "--weights", str(weights), "--labels", "liver,hcc", "--quiet"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "part" / "result.json").read_text())
    assert doc["notes"]["labels_used"].startswith("steered by liver, hcc;")


# ------------------------------------------------------------------------------ lesion edits
def test_lesion_edits_in_millimetres_inside_the_liver(phantom):
    from pantheon.models.lldm.edits import add_hcc, apply_edits, grow_hcc, hcc_components, remove_hcc
    _, labels = phantom
    lab = lldm_labels(labels)
    comp = hcc_components(lab)
    sizes = [int((comp == n).sum()) for n in range(1, comp.max() + 1)]
    assert len(sizes) >= 2 and sizes == sorted(sizes, reverse=True)  # numbered from the largest
    voxel_ml = float(np.prod(labels.spacing)) / 1000
    # remove the largest: its voxels are liver again, the others untouched, vessels untouched
    out = remove_hcc(lab, [1])
    assert set(np.unique(out[comp == 1])) == {1} and (out[comp == 2] == 4).all()
    assert ((out == 2) == (lab == 2)).all() and ((out == 3) == (lab == 3)).all()
    # grow by 5 mm: only into liver parenchyma; every new voxel within 5 mm of the old tumour
    grown = grow_hcc(labels, lab, 5.0, [2])
    new = (grown == 4) & (lab != 4)
    assert new.any() and (lab[new] == 1).all() and ((grown == 4) >= (lab == 4)).all()
    pts = labels.ijk_to_world(np.argwhere(new)[:, ::-1].astype(float))
    old = labels.ijk_to_world(np.argwhere(comp == 2)[:, ::-1].astype(float))
    nearest = np.min(np.linalg.norm(pts[:200, None] - old[None], axis=2), axis=1)
    assert nearest.max() <= 5.0 + 1e-6
    shrunk = grow_hcc(labels, lab, -3.0)
    assert (shrunk == 4).sum() < (lab == 4).sum() and ((shrunk == 4) <= (lab == 4)).all()
    # add a 20 mm HCC at the liver's centre voxel: about the ball's volume where liver was
    liver = np.argwhere(lab == 1)
    centre_kji = liver[len(liver) // 2]
    centre = labels.ijk_to_world(centre_kji[::-1].astype(float))[0]
    added = add_hcc(labels, lab, centre, 20.0)
    ball_ml = 4 / 3 * np.pi * 10 ** 3 / 1000
    gained = ((added == 4) & (lab != 4)).sum() * voxel_ml
    assert 0.4 * ball_ml < gained <= 1.15 * ball_ml and ((added == 4) & (lab == 2)).sum() == 0
    both = apply_edits(labels, lab, remove=[1], grow_mm=2.0, add=[(centre, 20.0)])
    assert (both[comp == 1] != 4).sum() > 0 and (both == 4).sum() > (out == 4).sum()
    # refusals, one sentence each
    n = len(sizes)
    with pytest.raises(InputError, match=rf"^HCC {n + 1} does not exist: the label map has {n} HCCs, numbered 1 to "
                                         rf"{n}"):
        remove_hcc(lab, [n + 1])
    with pytest.raises(InputError, match=r"is not in the liver; place it inside the liver\.$"):
        add_hcc(labels, lab, labels.ijk_to_world(np.zeros((1, 3)))[0], 20.0)
    with pytest.raises(InputError, match="no HCC"):
        remove_hcc(np.where(lab == 4, 1, lab).astype(np.uint8))


def test_cli_edits_are_written_with_the_volume(phantom, model, tmp_path, capsys):
    _, labels = phantom
    write_volume(labels, tmp_path / "labels.nii.gz")
    weights = save_lldm(model, tmp_path / "w.safetensors")
    code = main(["lldm", "synthesize", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "out"), "--steps", "1",
                 "--weights", str(weights), "--remove-hcc", "1", "--quiet"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    written = read_volume(next((tmp_path / "out").glob("labels*.nii.gz")))
    assert written.same_geometry(labels, atol=1e-4)
    assert (written.array == 4).sum() < (labels.array == 4).sum() and (written.array == 1).sum() > 0
    code = main(["lldm", "synthesize", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "bad"), "--steps", "1",
                 "--weights", str(weights), "--remove-hcc", "9", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "HCC 9 does not exist" in err[0], err


# ------------------------------------------------------------------------------ worker
@pytest.mark.slow
def test_worker_task_synthesizes_on_the_label_grid(phantom, model, tmp_path):
    from pantheon.worker.client import WorkerError
    _, labels = phantom
    path = write_volume(labels, tmp_path / "labels.nrrd")
    weights = str(save_lldm(model, tmp_path / "w.safetensors"))
    from pantheon.worker.client import WorkerClient
    client = WorkerClient(cache_budget_mb=256)
    try:
        params = {"weights": weights, "device": "cpu", "steps": 2, "seed": 1, "remove_hcc": [1]}
        doc = client.run("lldm.synthesize", params, {"labels": str(path)}, timeout=120)
        assert doc["notes"]["model_cache"] == "miss" and set(doc["outputs"]) == {"synthetic_mri", "labels"}
        vol = read_volume(f"{doc['output_dir']}/{doc['outputs']['synthetic_mri']['file']}")
        lab = read_volume(f"{doc['output_dir']}/{doc['outputs']['labels']['file']}")
        assert vol.same_geometry(labels) and lab.same_geometry(labels)
        assert (lab.array == 4).sum() < (labels.array == 4).sum()  # the edit reached the conditioning
        # the same seed in-process: the same volume
        from pantheon.models.lldm.edits import remove_hcc
        want = synthesize(labels.with_array(remove_hcc(lldm_labels(labels), [1])), model, steps=2, seed=1)
        np.testing.assert_allclose(vol.array, want.volumes["synthetic_mri"].array, atol=1e-5)
        again = client.run("lldm.synthesize", dict(params, remove_hcc=[]), {"labels": str(path)}, timeout=120)
        assert again["notes"]["model_cache"] == "hit"
        for bad, words in (({"remove_hcc": [9]}, "HCC 9 does not exist"), ({"steps": 0}, "'steps' must be"),
                           ({"add_hcc": [[0, 0]]}, "'add_hcc' must be"),
                           ({"use": ["hcc"]}, "keep 'liver' among the labels")):
            with pytest.raises(WorkerError) as e:
                client.run("lldm.synthesize", dict(params, **bad), {"labels": str(path)}, timeout=60)
            assert e.value.kind == "input" and words in e.value.message, e.value.message
    finally:
        client.shutdown()


# ------------------------------------------------------------------------------ measuring
def test_metrics_on_hand_made_sets():
    from pantheon.models.lldm import evaluate as ev
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (4, 32, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(ev.ms_ssim(a, a), 1.0, atol=1e-5)
    assert (ev.ms_ssim(a, 1 - a) < 0.2).all()
    f = torch.from_numpy(rng.normal(size=(40, 3)))
    assert abs(ev.frechet_distance(f, f)) < 1e-6
    # shifting every feature by 2 adds |mu difference|^2 = 3 * 4 to the distance
    assert ev.frechet_distance(f, f + 2.0) == pytest.approx(12.0, abs=1e-6)
    with pytest.raises(InputError, match="at least two real and two synthetic"):
        ev.frechet_distance(f[:1], f)
    truth = np.zeros((2, 4, 4, 4), np.uint8)
    truth[0, :2] = 1
    truth[0, 3, 0, 0] = 4
    truth[1, :, :2] = 2
    pred = truth.copy()
    pred[0, 1] = 0  # half the liver of volume 0 missed: Dice 2*16/(16+32)
    pred[1, :, 0] = 3  # half the portal vein called hepatic vein: vessels still right
    d = ev.label_dice(pred, truth)
    assert d["liver"] == pytest.approx(2 * 16 / 48) and d["hcc"] == 1.0 and d["portal_vein"] == pytest.approx(2 / 3)
    assert d["vessels"] == 1.0 and np.isnan(d["hepatic_vein"])  # no volume has a hepatic vein
    ci = ev.mean_ci95([1.0, 2.0, 3.0])  # t(0.975, 2) = 4.3027, sd 1, n 3
    assert ci["mean"] == 2.0 and ci["ci95"] == pytest.approx([2 - 4.3027 / 3 ** 0.5, 2 + 4.3027 / 3 ** 0.5], abs=1e-3)


def test_every_segmenter_of_the_augmentation_experiment_maps_a_volume_to_five_classes():
    from pantheon.errors import InputError
    from pantheon.models.lldm import evaluate as ev
    x = torch.zeros(1, 1, 16, 16, 16)
    for name in ev.SEGMENTERS:
        assert ev.build_segmenter(name).eval()(x).shape == (1, 5, 16, 16, 16), name
    # SegResNet at 16 filters: at 8 it found no vessel or HCC within the protocol's 300 steps
    assert ev.build_segmenter("segresnet").convInit.conv.out_channels == 16
    with pytest.raises(InputError, match="Unknown segmenter 'vnet': use one of unet, segresnet, attentionunet"):
        ev.build_segmenter("vnet")


@pytest.mark.slow
def test_evaluation_and_augmentation_experiment_at_toy_size():
    from pantheon.models.lldm import evaluate as ev
    from pantheon.train.lldm import phantom_cases
    cases = phantom_cases(range(50000, 50006))
    img, lab = np.stack([c.image for c in cases]), np.stack([c.labels for c in cases])
    same = ev.evaluate_synthetic(img, lab, img, encoder="random")
    assert abs(same["frechet_distance"]) < 1e-3 and same["ms_ssim_fidelity"] == pytest.approx(1.0, abs=1e-4)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.2, img.shape), 0, 1).astype(np.float32)
    worse = ev.evaluate_synthetic(img, lab, noisy, encoder="random")
    assert worse["frechet_distance"] > 1.0 and worse["ms_ssim_fidelity"] < 0.9
    out = ev.augmentation_experiment((img[:2], lab[:2]), (img[2:4], lab[2:4]), (img[4:], lab[4:]), nets=("unet",),
                                     seeds=(0,), steps=2)
    run = out["runs"][0]
    assert run["gain"]["hcc"] == pytest.approx(run["real+synthetic"]["hcc"] - run["real"]["hcc"])
    assert out["n_real"] == 2 and out["n_synthetic"] == 2 and set(out["gain"]) == {"hcc", "vessels", "liver"}


@pytest.mark.slow
def test_cli_evaluate_a_synthetic_set(tmp_path, capsys):
    for name, seed in (("real", 0), ("synthetic", 10)):
        assert main(["phantoms", "hcc-mri", "3", "-o", str(tmp_path / name), "--seed", str(seed), "--quiet"]) == 0
    capsys.readouterr()
    code = main(["lldm", "evaluate", "--real", str(tmp_path / "real"), "--synthetic", str(tmp_path / "synthetic"),
                 "--encoder", "random", "--segmenter-steps", "2", "--quiet"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    out = json.loads(cap.out)
    assert out["n_real"] == out["n_synthetic"] == 3 and not out["paired"] and "ms_ssim_fidelity" not in out
    assert out["frechet_distance"] > 0 and 0 < out["ms_ssim_diversity_real"] < 1
    assert set(out["label_dice_synthetic"]) == {"liver", "portal_vein", "hepatic_vein", "hcc", "vessels"}
    code = main(["lldm", "evaluate", "--real", str(tmp_path / "real"), "--synthetic", str(tmp_path / "nothing"),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nothing" in err[0], err


def test_the_hcc_channel_is_the_weighted_one():
    """``tumour_loss_weight`` weights the latent voxels under the HCC channel (NeoGen's is its channel 0).
    A fresh ControlNet's output convolutions are zero, so the labels change the loss only through it."""
    torch.manual_seed(0)
    small = build_lldm(ae_channels=(8, 8, 8), unet_channels=(8, 8, 8), unet_num_head_channels=(0, 0, 8),
                       controlnet_embedding_channels=(8, 8, 8), patch_size=(32, 32, 32), tumour_loss_weight=50.0)
    x = torch.rand(1, 1, 32, 32, 32)

    def loss(channel):
        masks = torch.zeros(1, 4, 32, 32, 32)
        if channel is not None:
            masks[:, channel, 8:24, 8:24, 8:24] = 1
        with torch.no_grad():
            return float(small.training_losses(x, masks, stage="controlnet",
                                               generator=torch.Generator().manual_seed(1))["mse"])
    assert small.WEIGHTED_CHANNEL == LABEL_CHANNELS.index("hcc") == 3
    assert loss(0) == pytest.approx(loss(None), rel=1e-6)  # liver: weight 1
    assert loss(3) > 3 * loss(None)  # HCC: weight 50 on an eighth of the latent voxels


def test_the_autoencoder_loss_weights_vessels_and_hccs():
    """``recon_label_weight`` w: the L1 loss is sum(|err| * (1 + (w - 1) * vessel_or_hcc)) / sum(weight),
    computed here by hand from the same autoencoder draw; without masks it is the plain mean."""
    small = dict(ae_channels=(8, 8, 8), unet_channels=(8, 8, 8), unet_num_head_channels=(0, 0, 8),
                 controlnet_embedding_channels=(8, 8, 8), patch_size=(16, 16, 16))
    torch.manual_seed(0)
    net = build_lldm(recon_label_weight=4.0, **small)
    assert net.config["recon_label_weight"] == 4.0
    assert "recon_label_weight" not in build_lldm(**{**small, "recon_label_weight": 1.0}).config
    x = torch.rand(2, 1, 16, 16, 16)
    masks = torch.zeros(2, 4, 16, 16, 16)
    masks[:, 0] = 1
    masks[0, 0, :4], masks[0, 1, :4] = 0, 1  # portal vein
    masks[1, 0, 8:], masks[1, 3, 8:] = 0, 1  # HCC
    with torch.no_grad():
        torch.manual_seed(1)
        got = net.training_losses(x, masks, stage="vae")["recon"]
        torch.manual_seed(1)
        recon = net.autoencoder(x)[0]
        torch.manual_seed(1)
        plain = net.training_losses(x, None, stage="vae")["recon"]
    weight = torch.ones_like(x)
    weight[0, :, :4], weight[1, :, 8:] = 4.0, 4.0
    err = (recon - x).abs()
    assert float(got) == pytest.approx(float((err * weight).sum() / weight.sum()), rel=1e-5)
    assert float(got) != pytest.approx(float(err.mean()), rel=1e-3)
    assert float(plain) == pytest.approx(float(err.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="recon_label_weight must be >= 1"):
        build_lldm(recon_label_weight=0.5, **small)


def test_training_batches_drop_vessel_labels_but_never_the_hcc():
    """The ControlNet sees vessels merged into the liver at CONTROL_DROPOUT's rate (so leaving them out
    at synthesis means "draw them yourself"); the HCC channel is never dropped; the autoencoder gets
    whole volumes with their labels."""
    from pantheon.train import lldm as tl
    rng = np.random.default_rng(0)
    lab = np.ones((16, 16, 16), np.uint8)
    lab[:4], lab[4:8], lab[8:10] = 2, 3, 4
    cases = [tl.VolumeCase(rng.random((16, 16, 16), dtype=np.float32), lab, f"c{i}") for i in range(4)]
    x, masks, _ = tl._batch(cases, "vae", 0, 0)
    assert x.shape == (2, 1, 16, 16, 16) and masks.shape == (2, 4, 16, 16, 16)
    dropped = {"portal_vein": 0, "hepatic_vein": 0}
    n = 0
    for step in range(300):
        _, masks, _ = tl._batch(cases, "controlnet", step, 0)
        for m in masks:
            n += 1
            assert m[3].sum() == 2 * 16 * 16  # the HCC channel is always there
            for c, name in ((1, "portal_vein"), (2, "hepatic_vein")):
                if m[c].sum() == 0:
                    dropped[name] += 1
            assert torch.equal(m.sum(0), torch.from_numpy((lab != 0).astype(np.float32)))  # one channel each
    for name, count in dropped.items():
        assert abs(count / n - tl.CONTROL_DROPOUT[name]) < 0.04, (name, count / n)


@pytest.mark.slow
def test_demo_weights_put_the_liver_where_the_labels_say():
    """The bundled demo weights on a held-out phantom: the enhancing liver lands on the liver label,
    the volume correlates with the real phantom, and the HCC and the vessels come out darker than the
    parenchyma, as in the hepatobiliary phase (measured with the sampling chosen from the wider grid,
    ControlNet scale 3 from 0.8 of the schedule: HCC 0.54 and vessels 0.70 of the liver on this grid,
    0.71 and 0.79-0.85 at scale 1 from 0.6; the real phantom 0.48 and 0.41)."""
    from pantheon.models.lldm.synthesis import load_model
    from pantheon.models.neonet.preprocess import normalize_mri
    model, wid, demo = load_model()
    assert wid == "lldm-demo" and demo
    mri, labels, _ = make_hcc_mri_phantom(56003, oblique=True)
    res = synthesize(labels, model, steps=20, seed=0, weights_id=wid, demo=demo)
    syn = res.volumes["synthetic_mri"].array
    liver, outside = labels.array == 1, labels.array == 0
    assert syn[liver].mean() - syn[outside].mean() > 0.4
    assert syn[labels.array == 4].mean() < 0.65 * syn[liver].mean()
    vessels = np.isin(labels.array, (2, 3))
    assert syn[vessels].mean() < 0.8 * syn[liver].mean()
    # labels left out: the vessels no longer steer (their voxels come out brighter: measured 0.77 against
    # 0.61 steered), and an HCC left out is liver
    free = synthesize(labels, model, steps=20, seed=0, use=("liver", "hcc")).volumes["synthetic_mri"].array
    assert free[vessels].mean() > syn[vessels].mean() + 0.08
    no_hcc = synthesize(labels, model, steps=20, seed=0, use=("liver", "portal_vein", "hepatic_vein"))
    no_hcc = no_hcc.volumes["synthetic_mri"].array
    assert no_hcc[labels.array == 4].mean() > 0.95 * no_hcc[liver].mean()
    assert np.corrcoef(syn.ravel(), normalize_mri(mri.array).ravel())[0, 1] > 0.75
    assert "Demo weights" in res.notes["warning"]


@pytest.mark.slow
def test_cli_train_one_step_and_refuse_both_sources(tmp_path, capsys):
    code = main(["lldm", "train", "--stage", "vae", "--phantoms", "2", "--seed", "50000", "-o", str(tmp_path / "run"),
                 "--steps", "1", "--quiet"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert json.loads(cap.out)["steps"] == 1 and (tmp_path / "run" / "vae" / "lldm.safetensors").is_file()
    code = main(["lldm", "train", "--stage", "vae", "--phantoms", "2", "--data", str(tmp_path), "-o",
                 str(tmp_path / "run2"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "either --phantoms N or --data" in err[0], err


def test_label_fidelity_and_the_sampling_choice_on_a_stub_model():
    """label_fidelity's figures hand-computed on a stub whose volume depends on the sampling asked
    for; choose_sampling keeps the choice with the best validation r as the model's default (an init
    strength of 1.0 is stored as absent, what older checkpoints mean by it)."""
    from pantheon.train.lldm import VolumeCase, choose_sampling, label_fidelity
    label_map = np.zeros((4, 6, 8), np.uint8)
    label_map[1:3, 1:5, 1:7] = 1
    label_map[2, 2, 2:4] = 2  # portal vein
    label_map[1, 3, 5] = 4  # HCC
    image = np.where(label_map == 1, 0.8, np.where(label_map == 2, 0.4, np.where(label_map == 4, 0.5, 0.1)))
    image = (image + np.linspace(0, 0.05, image.size).reshape(image.shape)).astype(np.float32)
    case = VolumeCase(image=image, labels=label_map)

    class Stub:
        config = {"conditioning_scale": 1.0, "init_strength": 0.6}

        def generate(self, masks, labels=None, num_inference_steps=20, generator=None, conditioning_scale=None,
                     init_strength=None):
            out = torch.from_numpy(image).clone()
            if (conditioning_scale, init_strength) != (3.0, 0.8):
                out = out.flip(-1)  # a worse volume: the real one mirrored
            out[torch.from_numpy(label_map == 2)] *= 1.25  # vessels brighter than real
            return out[None, None]

    stub = Stub()
    f = label_fidelity(stub, [case], conditioning_scale=3.0, init_strength=0.8)
    syn = np.where(label_map == 2, image * 1.25, image)
    assert f["pearson_r_mean"] == pytest.approx(np.corrcoef(syn.ravel(), image.ravel())[0, 1], abs=1e-6)
    assert f["portal_vein_to_liver_real"] == pytest.approx(image[label_map == 2].mean() / image[label_map == 1].mean())
    assert f["portal_vein_to_liver_synthetic"] == pytest.approx(syn[label_map == 2].mean() / syn[label_map == 1].mean())
    assert f["hcc_synthetic_mean"] == pytest.approx(image[label_map == 4].mean()) and "hepatic_vein_real_mean" not in f
    table = choose_sampling(stub, [case], choices=((1.0, 0.6), (3.0, 0.8), (2.0, 1.0)), log=lambda *_: None)
    assert list(table) == ["1/0.6", "3/0.8", "2/1"]
    assert max(table, key=lambda k: table[k]["pearson_r_mean"]) == "3/0.8"
    assert stub.config == {"conditioning_scale": 3.0, "init_strength": 0.8}
    assert table["3/0.8"]["portal_vein_to_liver_synthetic"] == pytest.approx(f["portal_vein_to_liver_synthetic"])
    stub.generate = lambda masks, **kw: torch.from_numpy(image)[None, None].clone()  # every choice the same
    choose_sampling(stub, [case], choices=((2.0, 1.0), (1.0, 0.6)), log=lambda *_: None)
    assert stub.config == {"conditioning_scale": 2.0}
