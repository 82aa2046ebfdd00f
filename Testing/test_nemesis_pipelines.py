"""NEMESIS whole-volume pipelines: tiling, geometry of every output, checks, cache, cancel, probe."""

import threading

import numpy as np
import pytest
import torch
from conftest import NEMESIS_FIXTURES
from scipy.spatial.transform import Rotation

from pantheon.errors import Cancelled, InputError
from pantheon.io import Volume
from pantheon.models.nemesis import OrganProbe, load_nemesis
from pantheon.pipelines import nemesis as nem
from pantheon.train.nemesis import probe_targets, train_probe


@pytest.fixture(scope="module")
def engine():
    # the fixture checkpoint: 32^3 superpatches, 8^3 patches, width 64 -- fast on 2 cores
    return nem.NemesisEngine(load_nemesis(NEMESIS_FIXTURES / "checkpoint.pt"), "cpu", batch_size=4,
                             weights_id="fixture", weights_sha256="f" * 64)


def ct_volume(shape=(20, 36, 44), spacing=(0.9, 1.3, 2.5), direction=None, origin=(12.0, -40.0, 7.5), seed=0):
    """A CT-like volume (air, body, organs) with an oblique direction by default."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (i ** 2 + j ** 2) < 0.8
    arr = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, shape)
    arr[(i - 0.3) ** 2 + (j + 0.2) ** 2 + k ** 2 < 0.2] = 150.0
    arr[(i + 0.3) ** 2 + j ** 2 < 0.05] = 300.0
    if direction is None:
        direction = Rotation.from_euler("xyz", [12, -8, 20], degrees=True).as_matrix()
    return Volume(arr.astype(np.float32), spacing, origin, direction)


def world_grid(vol: Volume) -> np.ndarray:
    K, J, I = vol.shape
    ijk = np.stack(np.meshgrid(np.arange(I), np.arange(J), np.arange(K), indexing="ij"), -1).reshape(-1, 3)
    return ijk, vol.ijk_to_world(ijk)


def values_at_world(vol: Volume, points: np.ndarray) -> np.ndarray:
    """Values of ``vol`` at world points that must be exact voxel centres of it."""
    ijk = vol.world_to_ijk(points)
    rounded = np.rint(ijk)
    assert np.abs(ijk - rounded).max() < 1e-5, "output voxels are not on the input lattice"
    r = rounded.astype(int)
    return vol.array[r[:, 2], r[:, 1], r[:, 0]]


# ---------------------------------------------------------------- checks
@pytest.mark.parametrize("make, message", [
    (lambda v: Volume(v.array[:1], v.spacing, v.origin, v.direction), "2D"),
    (lambda v: v.with_array(np.where(v.array > 100, np.nan, v.array)), "NaN"),
    (lambda v: v.with_array((v.array + 1000) / 2000), "not a CT"),
    (lambda v: v.with_array(np.full(v.shape, 7.0, np.float32)), "constant"),
    (lambda v: v.with_array(np.stack([v.array] * 3, -1)), "components"),
])
def test_bad_ct_input_names_the_problem(make, message):
    with pytest.raises(InputError, match=message):
        nem.prepare_ct(make(ct_volume()))


def test_tile_starts_cover_the_axis():
    assert nem.tile_starts(100, 32, 32) == [0, 32, 64, 96]
    assert nem.tile_starts(96, 32, 32) == [0, 32, 64]
    assert nem.tile_starts(20, 32, 16) == [0]
    assert nem.tile_starts(48, 32, 16) == [0, 16]


def test_window_means_matches_brute_force():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(5, 6, 7, 3)).astype(np.float32)
    got = nem.window_means(t, (4, 4, 4))
    for a, b, c in [(0, 0, 0), (2, 3, 4), (4, 5, 6), (1, 0, 6)]:
        box = t[max(a - 2, 0):a + 2, max(b - 2, 0):b + 2, max(c - 2, 0):c + 2]
        np.testing.assert_allclose(got[a, b, c], box.reshape(-1, 3).mean(0), atol=1e-5)
    # several channel passes, a box longer than the grid on one axis and odd on another
    t = rng.normal(size=(4, 9, 6, 70)).astype(np.float32)
    got = nem.window_means(t, (16, 3, 4), channels_per_pass=32)
    for a, b, c in [(0, 0, 0), (3, 8, 5), (2, 4, 1)]:
        box = t[:, max(b - 1, 0):b + 2, max(c - 2, 0):c + 2]
        np.testing.assert_allclose(got[a, b, c], box.reshape(-1, 70).mean(0), atol=1e-5)


def test_probe_targets_threshold_is_more_than_100_voxels():
    tile = np.zeros((10, 10, 10), np.uint8)
    tile.flat[:100] = 6  # liver: exactly 100 voxels -> absent
    tile.flat[100:201] = 1  # spleen: 101 voxels -> present
    names = [o[0] for o in nem.BTCV_ORGANS]
    t = probe_targets(tile)
    assert t[names.index("liver")] == 0 and t[names.index("spleen")] == 1 and t.sum() == 1


# ---------------------------------------------------------------- features
def test_features_match_direct_encoding_and_token_centres(engine):
    vol = ct_volume(shape=(32, 40, 32))  # model axes (k, i, j) -> (32, 32, 40) after RAS canonicalisation
    prepared = nem.prepare_ct(vol)
    fg = nem.compute_features(prepared, engine)
    D, H, W = prepared.model_array.shape
    assert fg.tokens.shape[:3] == (-(-D // 8), -(-H // 8), -(-W // 8))
    # first tile: identical to encoding the crop directly
    crop = nem.crop_padded(prepared.model_array, (0, 0, 0), (32, 32, 32))
    with torch.no_grad():
        direct = engine.model.encode(torch.from_numpy(crop[None, None])).numpy()[0].reshape(4, 4, 4, -1)
    np.testing.assert_allclose(fg.tokens[:4, :4, :4], direct, atol=1e-5)
    # token centre (1, 2, 3) = centre of model voxels 8..15, 16..23, 24..31 -> model index (11.5, 19.5, 27.5)
    expected = prepared.model_index_to_world(np.array([[11.5, 19.5, 27.5]]))[0]
    np.testing.assert_allclose(fg.centres_lps[1, 2, 3], expected, atol=1e-6)


def test_overlapping_tiles_are_averaged(engine):
    vol = ct_volume(shape=(24, 48, 48))
    prepared = nem.prepare_ct(vol)
    fg = nem.compute_features(prepared, engine, stride=16)
    arr = prepared.model_array
    # token (0, 2, 0) in model axes lies in tiles starting at h = 0 and h = 16 (w tiles 0 and 16 too: w=0 only in
    # tile 0)
    tiles = [(0, 0, 0), (0, 16, 0)]
    with torch.no_grad():
        toks = [engine.model.encode(torch.from_numpy(nem.crop_padded(arr, t, (32,) * 3)[None, None])).numpy()[0]
                .reshape(4, 4, 4, -1) for t in tiles]
    expected = (toks[0][0, 2, 0] + toks[1][0, 0, 0]) / 2
    np.testing.assert_allclose(fg.tokens[0, 2, 0], expected, atol=1e-5)


def test_feature_cache_reused(engine, tmp_path, monkeypatch):
    vol = ct_volume()
    first = nem.features(vol, engine, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("nemesis-features-*.npz"))) == 1
    monkeypatch.setattr(engine, "encode_batch", lambda batch: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = nem.features(vol, engine, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.tokens, again.tokens)


def test_bad_stride_is_refused(engine):
    with pytest.raises(ValueError, match="multiples of the patch size"):
        nem.features(ct_volume(), engine, stride=12)


# ---------------------------------------------------------------- geometry of outputs
def test_token_map_upsampling_puts_token_values_at_token_centres(engine):
    vol = ct_volume(shape=(40, 48, 56))
    prepared = nem.prepare_ct(vol)
    G = [-(-n // 8) for n in prepared.model_array.shape]
    a = np.arange(G[0], dtype=np.float32)[:, None, None] * np.ones(G, np.float32)
    out = nem.token_map_to_input(prepared, a, (8, 8, 8))
    assert out.same_geometry(vol)
    # voxel at model depth d gets (d - 3.5) / 8 in the interior (linear interpolation between token centres)
    ijk, world = world_grid(vol)
    d = prepared.world_to_model_index(world)[:, 0]
    interior = (d >= 3.5) & (d <= (G[0] - 1) * 8 + 3.5)
    got = out.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    np.testing.assert_allclose(got[interior], (d[interior] - 3.5) / 8, atol=1e-4)


@pytest.mark.parametrize("perm, flip", [((2, 0, 1), (True, False, True)), ((1, 2, 0), (False, True, False)),
                                        ((0, 1, 2), (True, True, True))])
def test_results_follow_the_anatomy_not_the_storage_order(engine, perm, flip):
    """The same voxels stored in another axis order/direction give the same values at the same world points."""
    vol = ct_volume()
    other = vol.reoriented(perm, flip)
    probe = OrganProbe(64)
    torch.manual_seed(0)
    torch.nn.init.normal_(probe.linear.weight)
    point = vol.ijk_to_world([[20, 18, 10]])[0]
    for run in (lambda v: nem.organ_maps(v, engine, probe, organs=["liver", "spleen"]).heatmaps["liver"].volume,
                lambda v: nem.similarity(v, engine, point).heatmaps["similarity"].volume,
                lambda v: nem.pca(v, engine).volumes["pca"]):
        a, b = run(vol), run(other)
        assert a.same_geometry(vol) and b.same_geometry(other)
        _, world = world_grid(vol)
        np.testing.assert_allclose(values_at_world(a, world), values_at_world(b, world), atol=1e-4)


def test_similarity_is_one_at_the_point(engine):
    vol = ct_volume()
    prepared = nem.prepare_ct(vol)
    fg = nem.compute_features(prepared, engine)
    point = fg.centres_lps[1, 2, 3]
    res = nem.similarity(vol, engine, point, feature_grid=fg)
    heat = res.heatmaps["similarity"].volume
    assert heat.same_geometry(vol)
    # the voxel nearest the token centre carries (nearly) the token's own similarity, 1
    ijk = np.rint(vol.world_to_ijk(point)[0]).astype(int)
    assert heat.array[ijk[2], ijk[1], ijk[0]] > 0.9
    assert heat.array.min() >= -1.0001 and heat.array.max() <= 1.0001
    with pytest.raises(InputError, match="outside the image"):
        nem.similarity(vol, engine, point + 1000, feature_grid=fg)


def test_pca_is_three_components_in_unit_range(engine):
    res = nem.pca(ct_volume(), engine)
    v = res.volumes["pca"]
    assert v.components == 3 and v.array.shape[-1] == 3
    assert 0 <= v.array.min() and v.array.max() <= 1
    ev = [res.scalars[f"pca_explained_variance_{i}"] for i in (1, 2, 3)]
    assert ev[0] >= ev[1] >= ev[2] > 0 and sum(ev) <= 1


def test_pca_colours_do_not_depend_on_the_sign_of_the_features(engine):
    """Eigenvector signs are arbitrary: each component is oriented by its map (longer tail bright),
    so features that differ by a sign (or by int8 rounding) give the same colours."""
    vol = ct_volume()
    fg = nem.compute_features(nem.prepare_ct(vol), engine)
    a = nem.pca(vol, engine, feature_grid=fg).volumes["pca"].array
    flipped = nem.FeatureGrid(-fg.tokens, fg.centres_lps, fg.patch_size, fg.superpatch_size, fg.stride)
    b = nem.pca(vol, engine, feature_grid=flipped).volumes["pca"].array
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, 1 - a, atol=0.05)  # not a map that looks the same either way


def test_reconstruct_outputs_on_the_input_lattice(engine):
    vol = ct_volume(shape=(30, 40, 44))
    point = vol.ijk_to_world([[22, 20, 15]])[0]
    res = nem.reconstruct(vol, engine, point, mask_ratio=(0.5, 0.5), noise_std=0.0, seed=3)
    masked, recon, err = res.volumes["masked_input"], res.volumes["reconstruction"], res.heatmaps["error"].volume
    assert masked.shape == (32, 32, 32) and masked.same_geometry(recon) and masked.same_geometry(err)
    np.testing.assert_allclose(masked.direction, vol.direction, atol=1e-9)
    ijk, world = world_grid(masked)
    src = vol.world_to_ijk(world)
    assert np.abs(src - np.rint(src)).max() < 1e-5  # every output voxel is an input voxel centre
    inside = np.all((np.rint(src) >= 0) & (np.rint(src) < np.array(vol.size_ijk)), axis=1)
    m = masked.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    orig = np.clip(values_at_world(vol, world[inside]), -175, 250)
    visible = m[inside] != nem.MASKED_HU  # masked patches carry a value below the window
    np.testing.assert_allclose(m[inside][visible], orig[visible], atol=1e-3)
    assert (m == nem.MASKED_HU).mean() == pytest.approx(0.75)  # 75 % of tokens masked
    e = err.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]][inside]
    r = recon.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]][inside]
    np.testing.assert_allclose(r[visible], orig[visible], atol=1e-3)  # visible patches pasted from the input
    np.testing.assert_allclose(e, np.abs(r - orig), atol=1e-2)
    assert res.scalars["masked_fraction"] == pytest.approx(0.75)
    assert np.isfinite(res.scalars["psnr_db"]) and -1 <= res.scalars["ssim"] <= 1


# ---------------------------------------------------------------- progress and cancel
def test_progress_is_ordered_and_cancel_stops(engine):
    seen = []
    nem.pca(ct_volume(shape=(40, 64, 64)), engine, progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 3
    flag = threading.Event()

    def cancel_after_first(f, m):
        if f > 0:
            flag.set()
    with pytest.raises(Cancelled):
        nem.pca(ct_volume(shape=(40, 64, 64)), engine, progress=cancel_after_first, cancel=flag)


# ---------------------------------------------------------------- probe training
def test_train_probe_on_phantoms(engine, tmp_path):
    from pantheon.models.nemesis.probe import load_probe
    from pantheon.synth import make_abdomen_phantom
    pairs = [make_abdomen_phantom(s, shape=(40, 64, 64)) for s in range(4)]
    probe, metrics = train_probe(pairs, engine, tmp_path / "probe.safetensors", holdout_fraction=0.25, epochs=50)
    assert metrics["cases"] == {"train": 3, "held_out": 1}
    assert set(metrics["held_out"]) == {o[0] for o in nem.BTCV_ORGANS} | {"mean"}
    loaded, meta = load_probe(tmp_path / "probe.safetensors", engine.weights_sha256)
    assert meta["encoder_sha256"] == engine.weights_sha256 and "liver" in meta["organs"]
    x = torch.randn(2, 64)
    torch.testing.assert_close(loaded(x), probe(x))
    from pantheon.errors import CheckpointError
    with pytest.raises(CheckpointError, match="different NEMESIS encoder"):
        load_probe(tmp_path / "probe.safetensors", "0" * 64)
    with pytest.raises(InputError, match="geometry"):
        ct, lab = pairs[0]
        train_probe([(ct, lab.reoriented((1, 0, 2), (False,) * 3)), pairs[1]], engine)
