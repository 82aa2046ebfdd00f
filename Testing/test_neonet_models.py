"""NeoNet models (pantheon.models.neonet): NeoSeg, NeoGen, PattenNet and their checkpoints.

Tiny configurations throughout (patch 32x32x16, widths (8, 16), 3 latent channels, 1-2 DDIM steps) so
the whole file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

from pantheon.errors import Cancelled, CheckpointError, InputError
from pantheon.models.neonet import (
    NeoGen,
    NeoSeg,
    PattenNet,
    attention_to_image,
    build_neoseg,
    load_neonet_component,
    masks_from_labels,
    save_neonet_component,
)

PATCH = (32, 32, 16)
TINY_GEN = dict(patch_size=PATCH, ae_channels=(8, 16), ae_num_res_blocks=1, latent_channels=3, ae_norm_num_groups=4,
                unet_channels=(8, 16), unet_attention_levels=(False, False), unet_num_head_channels=(0, 8),
                unet_num_res_blocks=1, unet_norm_num_groups=4, num_train_timesteps=100)
TINY_SEG = dict(channels=(4, 8), strides=(2,), num_res_units=1)


def _randomise_zero_params(module: torch.nn.Module, seed: int = 0) -> None:
    """Untrained MONAI diffusion nets have zero-initialised output convs (UNet ``out``, ControlNet
    zero convs), which would make every generation identical; give them small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and bool((p == 0).all()):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def gen() -> NeoGen:
    torch.manual_seed(0)
    g = NeoGen(**TINY_GEN)
    _randomise_zero_params(g)
    return g.eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand((2, 1) + PATCH, generator=g)
    labels = torch.zeros((2,) + PATCH)
    labels[:, 6:26, 6:26, 2:14] = 1
    labels[0, 12:18, 10:20, 6:10] = 2
    labels[1, 14:22, 16:24, 4:8] = 2
    return x, masks_from_labels(labels), torch.tensor([0, 1])


# ------------------------------------------------------------------------------------------ NeoSeg


def test_neoseg_sliding_window_probabilities():
    torch.manual_seed(0)
    seg = build_neoseg(**TINY_SEG)
    vol = torch.rand(20, 24, 12)
    probs = seg.predict(vol, roi_size=(16, 16, 8), sw_batch_size=2, overlap=0.25)
    assert probs.shape == (1, 3, 20, 24, 12)
    assert torch.all(probs >= 0)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 20, 24, 12))
    assert seg.training  # predict restores the mode
    assert seg(torch.rand(1, 1, 16, 16, 8)).shape == (1, 3, 16, 16, 8)
    with pytest.raises(ValueError, match="multiple of"):
        seg.predict(vol, roi_size=(15, 16, 8))
    with pytest.raises(InputError):
        seg.predict(torch.rand(2, 20, 24, 12))  # two channels
    with pytest.raises(InputError, match="NaN"):
        seg.predict(torch.full((8, 8, 8), float("nan")), roi_size=(8, 8, 8))


def test_masks_from_labels_one_hot():
    lm = torch.zeros(4, 4, 4)
    lm[1:3, 1:3, 1:3] = 1
    lm[2, 2, 2] = 2
    m = masks_from_labels(lm)
    assert m.shape == (1, 2, 4, 4, 4)
    assert m[0, 0].sum() == 1 and m[0, 1].sum() == 8  # liver includes the tumour voxel


# ------------------------------------------------------------------------------------------ NeoGen


def test_autoencoder_encode_decode_and_scale(gen, batch):
    x = batch[0]
    with torch.no_grad():
        z = gen.encode(x)
        assert z.shape == (2, 3, 16, 16, 8)
        decoded = gen.decode(z)
        assert decoded.shape == x.shape
        old = float(gen.scale_factor)
        try:
            s = gen.calibrate_scale_factor(x)
            z2 = gen.encode(x)
            torch.testing.assert_close(z2, z / old * s)
            assert abs(float(z2.std()) - 1.0) < 1e-4
            torch.testing.assert_close(gen.decode(z2), decoded, atol=1e-5, rtol=1e-4)
        finally:
            gen.scale_factor.fill_(old)


def test_shape_checks_are_clear(gen, batch):
    with pytest.raises(InputError, match="autoencoder's downsampling factor 2"):
        NeoGen(**{**TINY_GEN, "patch_size": (31, 32, 16)})
    with pytest.raises(InputError, match="diffusion UNet's downsampling factor 2"):
        gen.generate(torch.zeros(1, 2, 34, 32, 16), labels=1, num_inference_steps=1)
    with pytest.raises(InputError, match="tumour, liver"):
        gen.generate(torch.zeros(1, 3, 32, 32, 16), labels=1, num_inference_steps=1)
    with pytest.raises(InputError, match="class ids"):
        gen.generate(batch[1], labels=[0, 2], num_inference_steps=1)
    with pytest.raises(InputError, match="pass labels"):
        gen.training_losses(batch[0], batch[1], None, stage="ldm")
    with pytest.raises(ValueError, match="len\\(ae_channels\\)"):
        NeoGen(**{**TINY_GEN, "controlnet_embedding_channels": (8, 16, 32)})
    with pytest.raises(ValueError, match="stage"):
        gen.training_losses(batch[0], batch[1], batch[2], stage="gan")


@pytest.mark.parametrize("stage, trained", [("vae", "autoencoder"), ("ldm", "unet"), ("controlnet", "controlnet")])
def test_training_losses_only_train_their_stage(gen, batch, stage, trained):
    x, masks, labels = batch[0][1:], batch[1][1:], batch[2][1:]
    gen.train()
    gen.zero_grad(set_to_none=True)
    try:
        out = gen.training_losses(x, masks, labels, stage=stage, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
        for name in ("autoencoder", "unet", "controlnet"):
            grads = [p.grad for p in getattr(gen, name).parameters()]
            if name == trained:
                assert any(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name
            else:
                assert all(g is None for g in grads), f"{name} got gradients in stage {stage}"
        assert all(p.requires_grad for p in gen.parameters())  # the temporary freeze is undone
        assert {id(p) for p in gen.stage_parameters(stage)} == {id(p) for p in getattr(gen, trained).parameters()}
    finally:
        gen.zero_grad(set_to_none=True)
        gen.eval()
    if stage == "vae":
        assert set(out) == {"recon", "kl", "loss"}


def test_generate_reproducible_counts_steps_and_reports(gen, batch):
    masks, labels = batch[1][:1], batch[2][1:]
    calls = []
    handle = gen.unet.register_forward_hook(lambda *a: calls.append(1))
    reports = []
    try:
        a = gen.generate(masks, labels, num_inference_steps=2, generator=torch.Generator().manual_seed(7),
                         progress=lambda f, m: reports.append((f, m)))
        assert len(calls) == 2
        b = gen.generate(masks, labels, num_inference_steps=1, generator=torch.Generator().manual_seed(7))
        assert len(calls) == 3
    finally:
        handle.remove()
    assert a.shape == (1, 1) + PATCH and torch.isfinite(a).all()
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 3
    c = gen.generate(masks, labels, num_inference_steps=2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert not torch.equal(a, b)


@pytest.mark.slow
def test_generate_guided_start_skips_noisy_steps(gen, batch):
    """init_strength < 1 starts from the noised latent of the mask-painted guide image and runs only
    the DDIM steps at or below that noise level; 1.0 is the plain sampler."""
    masks, labels = batch[1][:1], batch[2][1:]
    guide = gen.guide_image(masks)
    assert guide.shape == (1, 1) + PATCH
    tumour, liver = masks[0, 0] > 0.5, (masks[0, 1] > 0.5) & ~(masks[0, 0] > 0.5)
    lo, li, tu = gen.GUIDE_INTENSITIES
    assert torch.all(guide[0, 0][tumour] == tu) and torch.all(guide[0, 0][liver] == li)
    assert torch.all(guide[0, 0][masks[0, 1] < 0.5] == lo)
    calls = []
    handle = gen.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        g = torch.Generator().manual_seed(3)
        a = gen.generate(masks, labels, num_inference_steps=10, generator=g, init_strength=0.5)
        n_guided = len(calls)
        gen.generate(masks, labels, num_inference_steps=10, generator=torch.Generator().manual_seed(3))
    finally:
        handle.remove()
    assert 4 <= n_guided <= 6 and len(calls) - n_guided == 10
    assert a.shape == (1, 1) + PATCH and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="init_strength"):
        gen.generate(masks, labels, num_inference_steps=2, init_strength=0.0)
    with pytest.raises(ValueError, match="init_strength"):
        NeoGen(**TINY_GEN, init_strength=1.5)
    steps = gen.config["num_train_timesteps"]
    with pytest.raises(ValueError, match=rf"^The number of sampling steps must be between 1 and the model's {steps} "
                                         rf"training steps, got {steps + 1}\.$"):
        gen.make_sampler(steps + 1)
    assert "init_strength" not in gen.config  # the default leaves older configs unchanged
    assert NeoGen(**TINY_GEN, init_strength=0.6).config["init_strength"] == 0.6


def test_generate_cancel(gen, batch):
    ev = threading.Event()
    calls = []
    handle = gen.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(Cancelled):
            gen.generate(batch[1][:1], 1, num_inference_steps=5, progress=lambda f, m: ev.set(), cancel=ev)
    finally:
        handle.remove()
    assert len(calls) == 1
    with pytest.raises(Cancelled):
        gen.generate(batch[1][:1], 1, num_inference_steps=5, cancel=lambda: True)


def test_class_and_mask_conditioning_change_output(gen, batch):
    masks = batch[1][:1]

    def run(label, m):
        return gen.generate(m, label, num_inference_steps=1, generator=torch.Generator().manual_seed(3))

    neg, pos = run(0, masks), run(1, masks)
    assert (neg - pos).abs().max() > 1e-6
    other = run(1, torch.zeros_like(masks))
    assert (other - pos).abs().max() > 1e-6


# ------------------------------------------------------------------------------------------ PattenNet


def test_pattennet_shapes_and_frozen_encoder(gen, batch):
    x = batch[0]
    torch.manual_seed(0)
    net = PattenNet.from_neogen(gen, dab_channels=(8, 16), reduction=4, spatial_kernel=3)
    assert all(not p.requires_grad for p in net.frozen_parameters())
    net.train()
    assert not net.encoder.training and net.blocks.training
    with torch.no_grad():
        torch.testing.assert_close(net.encode(x), gen.encode(x))
    logit, att = net(x)
    assert logit.shape == (2,) and att.shape == (2, 1, 16, 16, 8)
    assert torch.all((att > 0) & (att < 1))
    up = attention_to_image(att, x.shape)
    assert up.shape == (2, 1) + PATCH
    assert PattenNet.attention_to_image(att, PATCH).shape == (2, 1) + PATCH
    torch.nn.functional.binary_cross_entropy_with_logits(logit, batch[2].float()).backward()
    assert all(p.grad is None for p in net.frozen_parameters())
    assert net.head.weight.grad is not None and net.blocks[0].spatial_attention.conv.weight.grad is not None
    with pytest.raises(InputError):
        net(torch.rand(1, 1, 31, 32, 16))

    masked = PattenNet(gen.config, dab_channels=(8,), mask_channels=1)
    logit, att = masked(x, batch[1][:, :1])
    assert logit.shape == (2,) and att.shape == (2, 1, 16, 16, 8)
    with pytest.raises(InputError, match="masks"):
        masked(x)


def test_pattennet_mask_stem_radial_and_avgmax(gen, batch, tmp_path):
    """The learned mask stem lands on the latent grid; the radial input grows away from the crop
    centre; avg+max pooling doubles the head input; the options survive a checkpoint round trip."""
    from pantheon.models.neonet.pattennet import _radial_map
    x, masks, _ = batch
    torch.manual_seed(0)
    net = PattenNet.from_neogen(gen, dab_channels=(8,), mask_channels=1, pooling="avgmax", mask_pooling="conv",
                                radial_channel=True, mask_embed_channels=4)
    assert net.head.in_features == 16 and net.mask_stem[0].in_channels == 2
    assert net.mask_stem(torch.zeros((2, 2) + PATCH)).shape == (2, 4, 16, 16, 8)  # latent grid
    logit, att = net(x, masks[:, :1])
    assert logit.shape == (2,) and att.shape == (2, 1, 16, 16, 8)
    r = _radial_map(PATCH, x)[0, 0]
    assert float(r.min()) < 0.2 and float(r.max()) == pytest.approx(3.0)
    assert float(r[16, 16, 8]) < float(r[30, 16, 8]) < float(r[31, 31, 15])
    # a tumour voxel far from the centre changes the output; the mask reaches the head
    far = masks[:1, :1].clone()
    far[..., 28:31, 14:17, 6:9] = 1
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x[:1], masks[:1, :1])[0], net(x[:1], far)[0])
    save_neonet_component(net, tmp_path / "p.safetensors")
    loaded = load_neonet_component(tmp_path / "p.safetensors", "pattennet")
    assert loaded.config == net.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, masks[:, :1])[0], net(x, masks[:, :1])[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="radial_channel"):
        PattenNet(gen.config, dab_channels=(8,), mask_channels=1, radial_channel=True)
    with pytest.raises(ValueError, match="pooling"):
        PattenNet(gen.config, dab_channels=(8,), pooling="median")


def test_controlnet_gets_mask_at_image_size_and_live_embedding(batch):
    """The ControlNet's conditioning embedding receives the one-hot masks at patch size and turns
    them into a map on the latent grid; the live-embedding start is non-zero while the output
    convs stay zero (so the frozen UNet is untouched at step 0)."""
    x, masks, labels = batch
    torch.manual_seed(0)
    g = NeoGen(**TINY_GEN)
    g.init_controlnet_from_unet(live_embedding=True)
    emb = g.controlnet.controlnet_cond_embedding
    assert float(emb.conv_out.conv.weight.detach().abs().sum()) > 0
    assert all(float(p.detach().abs().sum()) == 0 for b in g.controlnet.controlnet_down_blocks for p in b.parameters())
    seen = {}
    hook = emb.register_forward_hook(lambda m, i, o: seen.update(inp=tuple(i[0].shape), out=tuple(o.shape)))
    try:
        g.training_losses(x, masks=masks, labels=labels, stage="controlnet", generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert seen["inp"] == (2, 2) + PATCH
    assert seen["out"][2:] == g.check_spatial_shape(PATCH)  # latent grid
    with torch.no_grad():
        emb_out = emb(masks)
    assert not torch.allclose(emb_out[0], emb_out[1])  # different masks, different conditioning


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trips(gen, batch, tmp_path):
    x, masks, labels = batch
    torch.manual_seed(0)
    seg = NeoSeg(**TINY_SEG).eval()
    net = PattenNet.from_neogen(gen, dab_channels=(8,)).eval()
    vol = torch.rand(1, 1, 16, 16, 8)
    for module, kind in ((seg, "neoseg"), (gen, "neogen"), (net, "pattennet")):
        save_neonet_component(module, tmp_path / f"{kind}.safetensors")
        loaded = load_neonet_component(tmp_path / f"{kind}.safetensors", kind)
        assert type(loaded) is type(module) and not loaded.training and loaded.config == module.config
        with torch.no_grad():
            if kind == "neoseg":
                torch.testing.assert_close(loaded(vol), seg(vol), rtol=0, atol=0)
            elif kind == "pattennet":
                for a, b in zip(loaded(x), net(x)):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)
            else:
                assert float(loaded.scale_factor) == float(gen.scale_factor)
                t = torch.tensor([5, 50])
                z = gen.encode(x)
                torch.testing.assert_close(loaded.encode(x), z, rtol=0, atol=0)
                torch.testing.assert_close(loaded.unet(z, t, class_labels=labels), gen.unet(z, t, class_labels=labels),
                                           rtol=0, atol=0)
                d1, m1 = loaded.controlnet(x=z, timesteps=t, controlnet_cond=masks, class_labels=labels)
                d2, m2 = gen.controlnet(x=z, timesteps=t, controlnet_cond=masks, class_labels=labels)
                torch.testing.assert_close(m1, m2, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="holds a neoseg component, not a pattennet"):
        load_neonet_component(tmp_path / "neoseg.safetensors", "pattennet")


def test_corrupted_and_mismatched_checkpoints(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    seg = NeoSeg(**TINY_SEG)
    good = save_neonet_component(seg, tmp_path / "seg.safetensors")
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_neonet_component(truncated)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_neonet_component(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_neonet_component(tmp_path / "missing.safetensors")

    pickled = tmp_path / "evil.safetensors"
    torch.save({"state": seg.state_dict()}, pickled)  # a pickle, not safetensors: refused, never unpickled
    with pytest.raises(CheckpointError):
        load_neonet_component(pickled)

    state = {k: v.clone() for k, v in seg.state_dict().items()}
    dropped = sorted(state)[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(1)
    reshaped = next(k for k in sorted(state) if k.endswith("conv.weight"))
    state[reshaped] = torch.zeros(2, 2)
    meta = {"format": "pantheon-neonet-v1", "kind": "neoseg", "config": json.dumps(seg.config)}
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_neonet_component(bad, "neoseg")
    msg = str(err.value)
    assert "1 missing: " + dropped in msg and "1 unexpected: extra.weight" in msg
    assert "wrong-shaped: " + reshaped + " (2, 2)" in msg

    foreign = tmp_path / "foreign.safetensors"
    save_file(seg.state_dict(), str(foreign), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match="not a Pantheon NeoNet checkpoint"):
        load_neonet_component(foreign)
    badcfg = tmp_path / "badcfg.safetensors"
    save_file(seg.state_dict(), str(badcfg), metadata={**meta, "config": json.dumps({"channels": [4, 8], "bogus": 1})})
    with pytest.raises(CheckpointError, match="cannot build a neoseg"):
        load_neonet_component(badcfg)
