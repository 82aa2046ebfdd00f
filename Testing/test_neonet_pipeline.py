"""PNIPredict pipelines (pantheon.pipelines.neonet) with tiny random-init NeoNet models.

What the Slicer panel and the command line rely on: every output of ``predict`` has exactly the
input MRI's geometry (oblique, anisotropic, flipped), the crop box is centred on the tumour,
bad inputs fail with a one-sentence InputError naming the problem, a tumour at the volume edge
still works (padded crop), and ``synthesize`` returns patches on the masks' grid, reproducible by seed.
"""

import threading

import numpy as np
import pytest
import torch

from pantheon.errors import Cancelled, InputError
from pantheon.io.volume import Volume
from pantheon.models.neonet import NeoGen, NeoSeg, PattenNet, largest_component
from pantheon.pipelines.neonet import NeoNetModels, predict, synthesize
from pantheon.synth.mri_phantom import make_liver_mri_phantom

PATCH = (8, 16, 16)  # (K, J, I) TLCR crop of the tiny models
SPACING = (9.0, 9.0, 12.0)  # coarse model grid: a 144 x 144 x 96 mm box, as the demo's 150 x 150 x 96
TINY_GEN = dict(patch_size=PATCH[::-1], ae_channels=(8, 16), ae_num_res_blocks=1, latent_channels=3,
                ae_norm_num_groups=4, unet_channels=(8, 16), unet_attention_levels=(False, False),
                unet_num_head_channels=(0, 8), unet_num_res_blocks=1, unet_norm_num_groups=4,
                num_train_timesteps=100)
TINY_SEG = dict(channels=(4, 8), strides=(2,), num_res_units=1)


def _randomise_zero_params(module, seed=0):
    """Untrained MONAI diffusion nets have zero output convs; give them small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and bool((p == 0).all()):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def tiny_components():
    """(NeoSeg, NeoGen, PattenNet) random-init, deterministic, eval mode."""
    torch.manual_seed(0)
    gen = NeoGen(**TINY_GEN)
    _randomise_zero_params(gen)
    seg = NeoSeg(**TINY_SEG)
    net = PattenNet.from_neogen(gen, dab_channels=(8,), reduction=4, spatial_kernel=3, mask_channels=1)
    return seg.eval(), gen.eval(), net.eval()


def tiny_models(**kw) -> NeoNetModels:
    seg, gen, net = tiny_components()
    return NeoNetModels(seg, gen, net, spacing=SPACING, patch_shape=PATCH, roi=(16, 32, 32), **kw)


def tiny_phantom(seed=3):
    """An oblique, anisotropic, flipped (LPI) liver MRI phantom, 20 x 56 x 64 voxels."""
    return make_liver_mri_phantom(seed, shape=(20, 56, 64), spacing=(5.0, 4.5, 9.0), orientation="LPI", oblique=True)


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def phantom():
    return tiny_phantom()


def _exact_geometry(v: Volume, ref: Volume) -> bool:
    return (v.shape == ref.shape and v.spacing == ref.spacing and v.origin == ref.origin
            and np.array_equal(v.direction, ref.direction))


def _box_centre_lps(result):
    row = result.tables["crop_box"][0]
    r, a, s = row["centre_r"], row["centre_a"], row["centre_s"]
    return np.array([-r, -a, s])


# --------------------------------------------------------------------------------------------- predict
def test_predict_outputs_in_input_geometry(models, phantom):
    mri, lab, _ = phantom
    assert not np.allclose(np.abs(mri.direction), np.eye(3))  # oblique and flipped
    seen = []
    res = predict(mri, models, progress=lambda f, m: seen.append(f))
    tum, heat = res.labels["tumour"], res.heatmaps["pni_attention"]
    assert _exact_geometry(tum.volume, mri) and _exact_geometry(heat.volume, mri)
    assert tum.volume.array.dtype == np.uint8 and set(np.unique(tum.volume.array)) <= {0, 1, 2}
    assert {s.value: s.name for s in tum.segments}.get(2) == "tumour"
    h = heat.volume.array
    assert h.dtype == np.float32 and h.min() >= 0 and h.max() <= 1 and h.max() > 0
    assert (h == 0).any()  # zero outside the crop box
    p = res.scalars["pni_probability"]
    assert 0 < p < 1 and res.notes["pni_prediction"] == ("positive" if p >= 0.5 else "negative")
    assert res.scalars["tumour_volume_ml"] > 0 and res.notes["tumour_source"] == "NeoSeg"
    row = res.tables["crop_box"][0]
    assert np.allclose([row["size_i_mm"], row["size_j_mm"], row["size_k_mm"]], (144, 144, 96))
    o = np.array([[row[f"orientation_{r}{c}"] for c in range(3)] for r in range(3)])
    assert np.allclose(o.T @ o, np.eye(3), atol=1e-6)
    assert "threshold" in res.notes and "research_only" in res.notes
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_supplied_mask_centres_box_on_tumour(models, phantom):
    mri, lab, info = phantom
    res = predict(mri, models, tumour_mask=lab)
    assert res.notes["tumour_source"] == "supplied tumour mask"
    comp = largest_component(lab.array == 2)
    kji = np.argwhere(comp).mean(0)
    centroid = lab.ijk_to_world(kji[::-1])[0]
    assert np.linalg.norm(_box_centre_lps(res) - centroid) < min(mri.spacing)
    assert np.array_equal(res.labels["tumour"].volume.array == 2, lab.array == 2)
    assert res.scalars["tumour_volume_ml"] == pytest.approx(info["tumour_volume_ml"], rel=1e-3)
    # a binary mask means the same tumour
    binary = predict(mri, models, tumour_mask=lab.with_array((lab.array == 2).astype(np.uint8)))
    assert np.allclose(_box_centre_lps(binary), _box_centre_lps(res), atol=1e-6)
    assert _exact_geometry(binary.heatmaps["pni_attention"].volume, mri)


def test_classifier_reads_neoseg_probability_or_supplied_mask(models, phantom):
    """End to end, PattenNet's tumour channel is NeoSeg's tumour probability cropped with the TLCR box
    (what it was trained on); with a supplied mask it is that binary mask."""
    mri, lab, _ = phantom
    seen = []
    hook = models.pattennet.register_forward_pre_hook(lambda mod, args: seen.append(args[1].detach().clone()))
    try:
        predict(mri, models)
        predict(mri, models, tumour_mask=lab)
    finally:
        hook.remove()
    soft, given = seen
    assert soft.shape == given.shape == (1, 1) + PATCH
    assert soft.min() >= 0 and soft.max() <= 1
    assert ((soft > 0.01) & (soft < 0.99)).any()  # probabilities, not a thresholded mask
    assert set(torch.unique(given).tolist()) == {0.0, 1.0}


def test_tumour_at_volume_edge_is_padded(models, phantom):
    mri, lab, _ = phantom
    kji = np.argwhere(lab.array == 2).mean(0).round().astype(int)
    start = np.array([0, 0, kji[2]])  # cut the i axis through the tumour centre

    def sub(v):
        return Volume(v.array[:, :, start[2]:].copy(), v.spacing, tuple(v.ijk_to_world(start[::-1])[0]),
                      v.direction)

    mri_e, lab_e = sub(mri), sub(lab)
    res = predict(mri_e, models, tumour_mask=lab_e)
    heat = res.heatmaps["pni_attention"].volume
    assert _exact_geometry(heat, mri_e) and np.isfinite(heat.array).all()
    centre_ijk = mri_e.world_to_ijk(_box_centre_lps(res))[0]
    assert centre_ijk[0] < 3  # the box centre sits at the edge: half the box is padding


def test_bad_inputs_fail_with_clear_messages(models, phantom):
    mri, lab, _ = phantom
    with pytest.raises(InputError, match="CT"):
        predict(mri.with_array(mri.array.astype(np.float32) - 1024.0), models)
    with pytest.raises(InputError, match="2D"):
        predict(Volume(mri.array[5:6].copy(), mri.spacing, mri.origin, mri.direction), models)
    with pytest.raises(InputError, match="No tumour was found in the supplied tumour mask"):
        predict(mri, models, tumour_mask=lab.with_array(np.zeros_like(lab.array)))
    other = Volume(lab.array, (1.0, 1.0, 1.0), lab.origin, lab.direction)
    with pytest.raises(InputError, match="geometry"):
        predict(mri, models, tumour_mask=other)
    torch.manual_seed(1)
    seg = NeoSeg(**TINY_SEG).eval()
    with torch.no_grad():  # a NeoSeg that never says "tumour"
        last = [m for m in seg.modules() if isinstance(m, torch.nn.Conv3d) or
                isinstance(m, torch.nn.ConvTranspose3d)][-1]
        last.bias[2] = -1e4
    blind = NeoNetModels(seg, models.neogen, models.pattennet, spacing=SPACING, patch_shape=PATCH, roi=(16, 32, 32))
    with pytest.raises(InputError, match="No tumour was found .*--tumour-mask"):
        predict(mri, blind)


def test_predict_cancel(models, phantom):
    mri, lab, _ = phantom
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        predict(mri, models, tumour_mask=lab, cancel=ev)


# --------------------------------------------------------------------------------------------- synthesize
def test_synthesize_on_mask_grid_and_reproducible(models, phantom):
    _, lab, _ = phantom
    a = synthesize(lab, models, pni=1, n=2, steps=2, seed=7)
    b = synthesize(lab, models, pni=1, n=1, steps=2, seed=7)
    assert sorted(a.volumes) == ["synthetic_mri_1", "synthetic_mri_2"]
    for v in a.volumes.values():
        assert _exact_geometry(v, lab) and v.array.dtype == np.float32 and np.isfinite(v.array).all()
        assert (v.array == 0).any() and (v.array != 0).any()  # zero outside the box
    np.testing.assert_array_equal(a.volumes["synthetic_mri_1"].array, b.volumes["synthetic_mri_1"].array)
    assert not np.array_equal(a.volumes["synthetic_mri_1"].array, a.volumes["synthetic_mri_2"].array)
    assert a.scalars["pni_class"] == 1 and a.tables["crop_box"]
    with pytest.raises(InputError, match="PNI class"):
        synthesize(lab, models, pni=2)
    with pytest.raises(InputError, match="empty"):
        synthesize(lab.with_array(np.zeros_like(lab.array)), models, steps=1)


def test_batch_pipeline_registered(models, phantom):
    from pantheon.batch.pipelines import get_pipeline
    mri, _, _ = phantom
    pipe = get_pipeline("neonet-predict")
    res = pipe.run(mri, {"models": models}, dict(pipe.options))
    assert set(pipe.findings(res)) == {"pni_probability", "tumour_volume_ml"}
    assert pipe.main_map(res)[0] == "pni_attention"
