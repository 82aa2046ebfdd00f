"""NEMESIS masked reconstruction as a person sees it: visible patches pasted back from the input (as
MAE papers show it), metrics over named voxels on the [0, 1] window scale, the bundled demo weights
really inpainting held-out phantoms, and the four-panel preview at one grey window."""

import math

import numpy as np
import pytest
import torch
from conftest import NEMESIS_FIXTURES

from pantheon.io import Volume
from pantheon.models.nemesis import NemesisMAE, load_nemesis
from pantheon.models.nemesis.reconstruction import paste_visible, reconstruction_metrics, voxel_mask
from pantheon.pipelines import nemesis as nem


@pytest.fixture(scope="module")
def fixture_engine():
    # 32^3 superpatches, 8^3 patches, width 64: the reference-format fixture checkpoint
    return nem.NemesisEngine(load_nemesis(NEMESIS_FIXTURES / "checkpoint.pt"), "cpu", batch_size=1,
                             weights_id="fixture", weights_sha256="f" * 64)


def _two_token_mask():
    """A (1, 8) token mask over a 2x2x2 grid of 4^3 patches: tokens 1, 2 and 7 hidden."""
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, [1, 2, 7]] = True
    return mask


# ---------------------------------------------------------------- metrics, by hand
def test_voxel_mask_follows_depth_major_token_order():
    vm = voxel_mask(_two_token_mask(), (2, 2, 2), (4, 4, 4))[0, 0]
    # token t = d*4 + h*2 + w covers [4d:4d+4, 4h:4h+4, 4w:4w+4]
    assert vm[0:4, 0:4, 4:8].all() and vm[0:4, 4:8, 0:4].all() and vm[4:8, 4:8, 4:8].all()
    assert int(vm.sum()) == 3 * 64


def test_paste_visible_keeps_the_input_where_the_encoder_saw_it():
    pred = torch.full((1, 1, 8, 8, 8), 1.7)  # out of range on purpose: clipped to the window's top
    seen = torch.rand(1, 1, 8, 8, 8)
    vm = voxel_mask(_two_token_mask(), (2, 2, 2), (4, 4, 4))
    shown = paste_visible(pred, seen, vm)
    assert torch.equal(shown[~vm], seen[~vm])
    assert torch.all(shown[vm] == 1.0)


def test_metrics_hand_computed_on_flat_volumes():
    target = torch.full((1, 1, 32, 32, 32), 0.5)
    pred = torch.full((1, 1, 32, 32, 32), 0.4)  # every prediction off by 0.1 -> MSE 0.01 -> 20 dB
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask[0, :384] = True  # 6 of 8 depth slices of 4^3 patches hidden: depths 0-23
    m = reconstruction_metrics(pred, target, target, mask, (8, 8, 8), (4, 4, 4))
    assert m["psnr_masked_db"][0] == pytest.approx(20.0, abs=1e-4)
    assert m["psnr_raw_db"][0] == pytest.approx(20.0, abs=1e-4)
    assert m["psnr_db"][0] == pytest.approx(-10 * math.log10(0.01 * 0.75), abs=1e-4)  # visible quarter exact
    # an encoder input of 0.4 everywhere (noise moved it) is pasted as is: both images constant, so
    # SSIM is the luminance term alone, (2*0.4*0.5 + C1) / (0.4^2 + 0.5^2 + C1), C1 = (0.01 * range)^2
    m = reconstruction_metrics(pred, target, pred, mask, (8, 8, 8), (4, 4, 4))
    lum = (2 * 0.4 * 0.5 + 1e-4) / (0.4 ** 2 + 0.5 ** 2 + 1e-4)
    # 1e-3: MONAI computes sigma = E[x^2] - E[x]^2 in float32, ~4e-7 of cancellation against C2 = 9e-4
    assert m["ssim_masked"][0] == pytest.approx(lum, abs=1e-3)
    assert m["ssim"][0] == pytest.approx(lum, abs=1e-3)
    assert m["psnr_db"][0] == pytest.approx(20.0, abs=1e-4)


def test_masked_metrics_ignore_visible_voxels_and_raw_sees_them():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.random((1, 1, 16, 16, 16), dtype=np.float32))
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, ::2] = True
    vm = voxel_mask(mask, (4, 4, 4), (4, 4, 4))
    pred = torch.where(vm, target, torch.zeros_like(target))  # perfect where hidden, garbage where visible
    m = reconstruction_metrics(pred, target, target, mask, (4, 4, 4), (4, 4, 4))
    assert math.isinf(m["psnr_masked_db"][0]) or m["psnr_masked_db"][0] > 100
    assert m["psnr_raw_db"][0] < 10  # the paper's formula on the raw output counts the untrained visible patches


def test_masked_loss_trains_only_hidden_patches():
    """The loss (paper: per-patch MSE over masked patches) has no gradient through visible patches'
    predictions: why the raw decoder output is noise there and must be replaced by the input."""
    torch.manual_seed(0)
    model = NemesisMAE(superpatch_size=(16, 16, 16), patch_size=(8, 8, 8), embed_dim=32, depth=1, num_heads=2,
                       decoder_depth=1, decoder_num_heads=2, ffn_dim=32, dropout=0.0).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    grads = {}

    def keep_grad(module, inputs, output):
        output.register_hook(lambda g: grads.setdefault("pred", g.clone()))
    model.decoder.head.register_forward_hook(keep_grad)
    out = model(x, mask_ratio=(0.5, 0.5), generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    g = grads["pred"][0].abs().sum(-1)  # (N,) gradient per token's predicted patch
    assert out.mask.any() and (~out.mask).any()
    assert torch.all(g[~out.mask[0]] == 0) and torch.all(g[out.mask[0]] > 0)


# ---------------------------------------------------------------- the pipeline
def _ct(shape=(40, 48, 48), seed=0):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    a = np.where(i ** 2 + j ** 2 < 0.8, 40.0, -1000.0) + rng.normal(0, 10, shape)
    a[(i - 0.3) ** 2 + j ** 2 + k ** 2 < 0.15] = 180.0
    return Volume(a.astype(np.float32), (1.5, 1.5, 2.0), (10.0, -20.0, 5.0), np.eye(3))


def test_reconstruct_shows_input_on_visible_patches_and_metrics_match_the_volumes(fixture_engine):
    vol = _ct()
    point = vol.ijk_to_world([[24, 24, 20]])[0]
    res = nem.reconstruct(vol, fixture_engine, point, (0.5, 0.5), 0.0, seed=2)
    masked, recon = res.volumes["masked_input"].array, res.volumes["reconstruction"].array
    err = res.heatmaps["error"].volume.array
    hidden = masked == nem.MASKED_HU
    assert hidden.mean() == pytest.approx(0.75)  # 32^3 superpatch, 16 of 64 tokens visible
    # the model works in RAS (i, j flipped on this LPS grid: i' = 47 - i), the superpatch starts 16
    # voxels before the point there: k in [4, 36), i' and j' in [7, 39), i.e. i and j in [9, 41)
    window = np.clip(vol.array[4:36, 9:41, 9:41], -175, 250)
    np.testing.assert_allclose(masked[~hidden], window[~hidden], atol=0.02)  # what the encoder saw
    np.testing.assert_allclose(recon[~hidden], window[~hidden], atol=0.02)  # pasted back
    assert np.all(err[~hidden] < 0.02)
    assert recon.min() >= -175 - 1e-3 and recon.max() <= 250 + 1e-3
    # the scalars are the numbers of these very volumes, on the [0, 1] window scale
    t, r = (window + 175) / 425, (recon + 175) / 425
    assert res.scalars["psnr_db"] == pytest.approx(-10 * math.log10(np.mean((r - t) ** 2)), abs=0.01)
    assert res.scalars["psnr_masked_db"] == pytest.approx(
        -10 * math.log10(np.mean((r[hidden] - t[hidden]) ** 2)), abs=0.01)
    assert res.scalars["psnr_masked_db"] < res.scalars["psnr_db"]
    np.testing.assert_allclose(err, np.abs(recon - window), atol=0.5)


def test_reconstruct_with_noise_shows_what_the_encoder_saw(fixture_engine):
    vol = _ct()
    point = vol.ijk_to_world([[24, 24, 20]])[0]
    res = nem.reconstruct(vol, fixture_engine, point, (0.5, 0.5), 0.05, seed=2)
    masked, recon = res.volumes["masked_input"].array, res.volumes["reconstruction"].array
    visible = masked != nem.MASKED_HU
    window = np.clip(vol.array[4:36, 9:41, 9:41], -175, 250)
    np.testing.assert_array_equal(recon[visible], masked[visible])
    noise = (masked[visible] - window[visible]) / 425
    assert 0.03 < noise.std() < 0.06  # the 0.05 noise, a little less where the window clips it


# ---------------------------------------------------------------- the demo weights
@pytest.fixture(scope="module")
def demo_engine():
    return nem.load_engine(device="cpu", batch_size=8)


@pytest.mark.slow
def test_demo_weights_inpaint_held_out_phantoms(demo_engine):
    """Phantoms never seen in pretraining, the paper's 0.5/0.5 masking, the sampler of pretraining."""
    from pantheon.synth import make_abdomen_phantom
    from pantheon.train.nemesis import evaluate_reconstruction, held_out_superpatches
    x = held_out_superpatches([make_abdomen_phantom(s)[0] for s in (52_000, 52_001)], demo_engine.superpatch, 8)
    m = evaluate_reconstruction(demo_engine.model, x, (0.5, 0.5))
    assert m["psnr_masked_db"] > PINNED_MASKED_PSNR, m
    assert m["psnr_db"] > PINNED_WHOLE_PSNR and m["ssim"] > PINNED_WHOLE_SSIM, m


# Floors just under what the bundled demo encoder measures here (masked 15.2 dB, whole 16.4 dB /
# SSIM 0.41): a regression guard, far from issue 14's target (>= 25 dB), which needs a longer
# pretraining of the demo weights.
PINNED_MASKED_PSNR = 14.5
PINNED_WHOLE_PSNR = 15.8
PINNED_WHOLE_SSIM = 0.38


# ---------------------------------------------------------------- the preview
@pytest.mark.slow
def test_reconstruction_panel_four_panels_one_window_box_on_the_superpatch(fixture_engine, tmp_path):
    from pantheon.preview import reconstruction_panel
    vol = _ct()
    point = vol.ijk_to_world([[24, 24, 20]])[0]
    res = nem.reconstruct(vol, fixture_engine, point, (0.5, 0.5), 0.0, seed=2)
    fig, info = reconstruction_panel(vol, res, tmp_path / "preview.png")
    assert (tmp_path / "preview.png").stat().st_size > 10_000
    assert info["panels"] == ["input", "masked input", "reconstruction", "error"]
    by_title = {}
    for ax in fig.axes:
        if ax.get_title():
            by_title[ax.get_title()] = ax
    for name in info["panels"]:
        assert name in by_title, by_title.keys()
    grey = [by_title[n].get_images()[0] for n in ("input", "masked input", "reconstruction")]
    assert {im.get_clim() for im in grey} == {(-175.0, 250.0)}  # one intensity scale
    assert {im.get_cmap().name for im in grey} == {"gray"}
    err_img = by_title["error"].get_images()[0]
    assert err_img.get_clim() == (0.0, 100.0) and err_img.get_cmap().name == "hot"
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert any("absolute error (HU)" in text for text in labels)
    assert any("-175" in text and "250" in text for text in labels)
    # identity LPS volume: the axial picture's columns are i, rows j; the superpatch is voxels
    # i, j in [9, 41) -> edges 8.5 .. 40.5; coronal rows are K-1-k = 39-k for k in [4, 36) -> 3.5 .. 35.5
    assert info["box_axial"] == pytest.approx((8.5, 8.5, 40.5, 40.5))
    assert info["box_coronal"] == pytest.approx((8.5, 3.5, 40.5, 35.5))
    ctx = by_title["whole slice (box: superpatch)"]
    rects = [p for p in ctx.patches if p.get_label() == "superpatch"]
    assert len(rects) == 1 and rects[0].get_xy() == pytest.approx((8.5, 8.5))
    assert rects[0].get_width() == pytest.approx(32) and rects[0].get_height() == pytest.approx(32)
    # hidden patches drawn in colour, not as black (air is black in this window too)
    overlay = by_title["masked input"].get_images()[1].get_array()
    assert overlay[..., 3].mean() == pytest.approx(0.75, abs=0.13)
    assert "PSNR" in info["title"] and "hidden patches only" in info["title"]
    import matplotlib.pyplot as plt
    plt.close(fig)
