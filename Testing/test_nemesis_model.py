"""NEMESIS model: published-format loading, golden outputs, architecture manifest, masking."""

import collections
import json
import math

import numpy as np
import pytest
import torch
from conftest import NEMESIS_FIXTURES

from pantheon.errors import CheckpointError
from pantheon.models.nemesis import NemesisMAE, load_nemesis, read_checkpoint, save_nemesis, sinusoidal_position_codes

CKPT = NEMESIS_FIXTURES / "checkpoint.pt"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(NEMESIS_FIXTURES / "golden.npz"))


@pytest.fixture(scope="module")
def fixture_model():
    return load_nemesis(CKPT)


def test_fixture_checkpoint_architecture_from_shapes_and_config(fixture_model):
    config = json.loads((NEMESIS_FIXTURES / "config.json").read_text())
    for key, value in config.items():
        if key == "in_channels":
            continue
        got = fixture_model.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == value, key
    assert not fixture_model.training


def test_encode_matches_golden(fixture_model, golden):
    with torch.no_grad():
        tokens = fixture_model.encode(torch.from_numpy(golden["input"]))
    assert tokens.shape == golden["tokens"].shape == (1, 64, 64)
    assert np.abs(tokens.numpy() - golden["tokens"]).max() <= 1e-4


def test_reconstruct_matches_golden(fixture_model, golden):
    x = torch.from_numpy(golden["input"])
    with torch.no_grad():
        out = fixture_model.reconstruct(x)
    assert out.volume.shape == x.shape
    assert out.mask.dtype == torch.bool and out.mask.shape == (1, 64) and not out.mask.any()
    assert np.abs(out.volume.numpy() - golden["reconstruction"]).max() <= 1e-4
    psnr = -10 * math.log10(float(((out.volume - x) ** 2).mean()))
    assert psnr == pytest.approx(float(golden["psnr"]), abs=1e-4)


def test_768_configuration_matches_published_manifest():
    manifest = json.loads((NEMESIS_FIXTURES / "manifest_768.json").read_text())
    with torch.device("meta"):  # shapes only, no 230 MB allocation
        model = NemesisMAE()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest
    assert len(shapes) == 168
    assert sum(math.prod(s) for s in shapes.values()) == sum(math.prod(s) for s in manifest.values())


def test_position_codes_hand_computed():
    codes = sinusoidal_position_codes((2, 3, 4), 10)  # dz = 4, dy = dx = 3 (odd: padded)
    assert codes.shape == (24, 10)
    # token (d=1, h=2, w=3) -> index 1*12 + 2*4 + 3 = 23
    z = [math.sin(1.0), math.sin(1.0 * 10000 ** -0.5), math.cos(1.0), math.cos(1.0 * 10000 ** -0.5)]
    y = [math.sin(2.0), math.cos(2.0), 0.0]
    x = [math.sin(3.0), math.cos(3.0), 0.0]
    np.testing.assert_allclose(codes[23].numpy(), z + y + x, atol=1e-6)


@pytest.mark.parametrize("ratio, plane_kept, axis_kept", [(0.5, 8, 4), ((0.5, 0.5), 8, 4), ((0.25, 0.0), 12, 12),
                                                         ((0.0, 0.75), 16, 4), (0.99, 1, 1)])
def test_dual_masking_counts_and_order(fixture_model, ratio, plane_kept, axis_kept):
    gen = torch.Generator().manual_seed(0)
    mask, ids = fixture_model.dual_mask(3, ratio, gen)
    Dp, Hp, Wp = fixture_model.grid
    assert mask.shape == (3, 64) and ids.shape == (3, Dp * axis_kept)
    for b in range(3):
        assert torch.equal(ids[b], torch.sort(ids[b]).values), "visible tokens must be in ascending order"
        assert torch.equal(torch.nonzero(~mask[b]).flatten(), ids[b])
        per_slice = collections.Counter((ids[b] // (Hp * Wp)).tolist())
        assert all(per_slice[d] == axis_kept for d in range(Dp))
        shared = set((ids[b] % (Hp * Wp)).tolist())
        assert len(shared) <= plane_kept  # every depth draws from the same plane-wise subset


def test_masking_reproducible_with_generator(fixture_model, golden):
    x = torch.from_numpy(golden["input"])
    with torch.no_grad():
        a = fixture_model.reconstruct(x, mask_ratio=(0.5, 0.5), noise_std=0.03,
                                      generator=torch.Generator().manual_seed(7))
        b = fixture_model.reconstruct(x, mask_ratio=(0.5, 0.5), noise_std=0.03,
                                      generator=torch.Generator().manual_seed(7))
        c = fixture_model.reconstruct(x, mask_ratio=(0.5, 0.5), noise_std=0.03,
                                      generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.volume, b.volume)
    assert not torch.equal(a.mask, c.mask)
    assert a.mask.float().mean().item() == pytest.approx(0.75)
    noise = (a.model_input - x)
    assert 0.02 < float(noise.std()) < 0.04


def test_bad_mask_ratio_and_input_shape(fixture_model):
    with pytest.raises(ValueError, match="mask ratios"):
        fixture_model.dual_mask(1, 1.0)
    with pytest.raises(ValueError, match=r"expects \(B, 1, 32, 32, 32\)"):
        fixture_model.encode(torch.zeros(1, 1, 32, 32, 16))
    with pytest.raises(ValueError, match=r"^The embedding width \(36\) must be divisible by the number of summary "
                                         r"tokens \(8\)\.$"):
        NemesisMAE(superpatch_size=32, patch_size=8, embed_dim=36, depth=1, num_heads=1, decoder_depth=1,
                   decoder_num_heads=1, num_maegic_tokens=8, ffn_dim=16)


def test_bare_state_dict_with_module_prefix_and_overrides(tmp_path, fixture_model, golden):
    state, _ = read_checkpoint(CKPT)
    bare = tmp_path / "bare.pt"
    torch.save({"module." + k: v for k, v in state.items()}, bare)
    # no config: heads and superpatch fall back to paper defaults unless overridden
    model = load_nemesis(bare, num_heads=4, decoder_num_heads=4, superpatch_size=32)
    with torch.no_grad():
        tokens = model.encode(torch.from_numpy(golden["input"]))
    assert np.abs(tokens.numpy() - golden["tokens"]).max() <= 1e-4
    assert load_nemesis(bare).config["superpatch_size"] == [128, 128, 128]


def test_safetensors_round_trip(tmp_path, fixture_model, golden):
    path = tmp_path / "m.safetensors"
    save_nemesis(fixture_model, path)
    again = load_nemesis(path)
    x = torch.from_numpy(golden["input"])
    with torch.no_grad():
        assert torch.equal(again.encode(x), fixture_model.encode(x))


def test_strict_mismatch_names_missing_unexpected_and_wrong_shaped(tmp_path):
    state, config = read_checkpoint(CKPT)
    state = dict(state)
    del state["decoder.head.bias"]
    state["encoder.extra_thing"] = torch.zeros(3)
    state["encoder.norm.weight"] = torch.zeros(65)
    path = tmp_path / "bad.pt"
    torch.save({"model_state_dict": state, "config": config}, path)
    with pytest.raises(CheckpointError) as err:
        load_nemesis(path)
    msg = str(err.value)
    assert "1 missing: decoder.head.bias" in msg
    assert "1 unexpected: encoder.extra_thing" in msg
    assert "encoder.norm.weight (65,) (model (64,))" in msg


def test_corrupted_checkpoints_are_refused(tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(CKPT.read_bytes()[: 100_000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_nemesis(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_nemesis(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_nemesis(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(CheckpointError, match="not a NEMESIS checkpoint"):
        load_nemesis(other)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"holds a Python object \(print\) besides tensors.*never runs code"):
        load_nemesis(path)
    assert "this must never run" not in capsys.readouterr().out
