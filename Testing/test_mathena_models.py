"""MATHENA models (arXiv 2604.00537): SS2D / VSS blocks, MATHE detector, HENA, checkpoints.

Tiny configurations only (CPU, 2 cores): every test runs in well under a second or two.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pantheon.errors import CheckpointError
from pantheon.models.mathena import (
    ALL_FDI,
    HENA,
    PERMANENT_FDI,
    SS2D,
    MATHEDetector,
    VSSBlock,
    class_to_fdi,
    fdi_mirror,
    fdi_to_class,
    load_mathena,
    save_mathena,
    set_scan_backend,
)
from pantheon.models.ssm import cross_merge, cross_scan


def tiny_detector(**kw):
    args = dict(widths=(8, 8, 16, 16, 32), num_vss=1, d_state=4, neck_channels=16, bifpn_repeats=1,
                head_convs=1)
    args.update(kw)
    return MATHEDetector(**args)


def tiny_hena(**kw):
    args = dict(embed_dim=8, depths=(1, 1, 1), d_state=4)
    args.update(kw)
    return HENA(**args)


# ------------------------------------------------------------------------------------------------
# SS2D / VSS
# ------------------------------------------------------------------------------------------------


def test_ss2d_chunked_matches_reference_scan():
    torch.manual_seed(0)
    block = VSSBlock(12, d_state=4, mlp_ratio=2.0).eval()
    x = torch.randn(2, 5, 7, 12)
    set_scan_backend(block, "ref")
    ref = block(x)
    set_scan_backend(block, "chunked")
    fast = block(x)
    assert fast.shape == x.shape
    assert (fast - ref).abs().max().item() <= 1e-4
    cf = VSSBlock(12, d_state=4, mlp_ratio=2.0, channel_first=True).eval()
    cf.load_state_dict(block.state_dict())
    assert torch.allclose(cf(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), fast, atol=1e-5)


def test_cross_scan_transpose_swaps_row_and_column_scans():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0 1 2], [3 4 5]]
    xs = cross_scan(x)
    assert xs[0, :, 0].tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5],
                                    [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    xt = cross_scan(x.transpose(2, 3))
    assert torch.equal(xt[:, [1, 0, 3, 2]], xs)
    assert torch.equal(cross_merge(xs, 2, 3), 4 * x)


def test_ss2d_transpose_equivariance_with_swapped_directions():
    """Transposing H<->W and swapping the row/column direction parameters transposes the output."""
    torch.manual_seed(1)
    D = 16
    a = SS2D(8, d_state=4, backend="ref").eval()
    b = copy.deepcopy(a)
    perm = [1, 0, 3, 2]
    with torch.no_grad():
        b.x_proj_weight.copy_(a.x_proj_weight[perm])
        b.dt_projs_weight.copy_(a.dt_projs_weight[perm])
        b.dt_projs_bias.copy_(a.dt_projs_bias[perm])
        b.A_logs.copy_(a.A_logs.view(4, D, -1)[perm].reshape(4 * D, -1))
        b.Ds.copy_(a.Ds.view(4, D)[perm].reshape(-1))
        b.conv2d.weight.copy_(a.conv2d.weight.transpose(2, 3))
    x = torch.randn(1, 4, 6, 8)
    y = a(x)
    yt = b(x.transpose(1, 2))
    assert torch.allclose(yt.transpose(1, 2), y, atol=1e-5)
    assert not torch.allclose(a(x.transpose(1, 2)).transpose(1, 2), y, atol=1e-3)  # directions do matter


# ------------------------------------------------------------------------------------------------
# Detector
# ------------------------------------------------------------------------------------------------


def test_fdi_mapping_round_trip():
    assert [fdi_to_class(f) for f in ALL_FDI] == list(range(52))
    assert all(class_to_fdi(fdi_to_class(f)) == f for f in ALL_FDI)
    assert fdi_to_class(11) == 0 and fdi_to_class(48) == 31 and fdi_to_class(51) == 32 and fdi_to_class(85) == 51
    assert len(PERMANENT_FDI) == 32 and fdi_mirror(17) == 27 and fdi_mirror(84) == 74
    for bad in (10, 19, 56, 0, 99):
        with pytest.raises(ValueError):
            fdi_to_class(bad)
    with pytest.raises(ValueError):
        class_to_fdi(52)
    assert MATHEDetector(include_primary=True, widths=(8, 8, 8, 8, 8), num_vss=0, neck_channels=8,
                         bifpn_repeats=1, head_convs=1).num_classes == 52


def test_detector_shapes_and_decode_inside_image():
    torch.manual_seed(0)
    det = tiny_detector().eval()
    with torch.no_grad():
        out = det(torch.randn(1, 3, 256, 512))
    assert [tuple(c.shape) for c in out["cls"]] == [(1, 32, 32, 64), (1, 32, 16, 32), (1, 32, 8, 16)]
    assert [tuple(r.shape) for r in out["reg"]] == [(1, 4, 32, 64), (1, 4, 16, 32), (1, 4, 8, 16)]
    assert [tuple(c.shape) for c in out["ctr"]] == [(1, 1, 32, 64), (1, 1, 16, 32), (1, 1, 8, 16)]
    for r in out["reg"]:  # push boxes far outside the image: decode must clip them
        r.mul_(40.0)
    res = det.decode(out, (256, 512), score_thresh=0.0, max_det=50)
    boxes = res[0]["boxes"]
    assert len(boxes) > 0 and len(boxes) <= 50
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 512).all() and (boxes[:, 3] <= 256).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert res[0]["labels"].dtype == torch.long and res[0]["scores"].shape == (len(boxes),)
    with pytest.raises(ValueError):
        det(torch.randn(1, 3, 250, 512))


def _hand_made_outputs(num_classes=32):
    """Strides 8/16/32 on a 64x64 image; two P3 locations predict almost the same box of class 5,
    one predicts a distant box of class 5 and one an overlapping box of class 7."""
    cls = [torch.full((1, num_classes, 64 // s, 64 // s), -20.0) for s in (8, 16, 32)]
    reg = [torch.full((1, 4, 64 // s, 64 // s), 4.0) for s in (8, 16, 32)]
    ctr = [torch.full((1, 1, 64 // s, 64 // s), 10.0) for s in (8, 16, 32)]
    for (i, j, c, score) in [(2, 2, 5, 5.0), (2, 3, 5, 4.0), (6, 6, 5, 3.0), (2, 2, 7, 2.0)]:
        cls[0][0, c, i, j] = score
        reg[0][0, :, i, j] = 16.0
    return {"cls": cls, "reg": reg, "ctr": ctr, "strides": [8, 16, 32]}


def test_decode_nms_removes_duplicates():
    det = tiny_detector()
    out = _hand_made_outputs()
    res = det.decode(out, (64, 64), score_thresh=0.5, nms_thresh=0.5)[0]
    # (2,2) and (2,3): 32x32 boxes centred 8 px apart, IoU 0.6 > 0.5; the (6,6) box is clipped.
    pairs = sorted(zip(res["labels"].tolist(), [tuple(b) for b in res["boxes"].round().tolist()]))
    assert pairs == [(5, (4.0, 4.0, 36.0, 36.0)), (5, (36.0, 36.0, 64.0, 64.0)), (7, (4.0, 4.0, 36.0, 36.0))]
    assert res["scores"].max() == res["scores"][res["labels"] == 5].max()
    agnostic = det.decode(out, (64, 64), score_thresh=0.5, nms_thresh=0.5, class_agnostic=True)[0]
    assert sorted(agnostic["labels"].tolist()) == [5, 5]
    loose = det.decode(out, (64, 64), score_thresh=0.5, nms_thresh=0.95)[0]
    assert len(loose["boxes"]) == 4


@pytest.mark.slow
def test_detector_loss_finite_with_gradients_everywhere():
    torch.manual_seed(0)
    det = tiny_detector(size_ranges=((0, 32), (32, 64), (64, float("inf")))).train()
    out = det(torch.randn(2, 3, 128, 256))
    targets = [  # one box per level's size range (max ltrb ~ half the long side)
        {"boxes": torch.tensor([[10.0, 15.0, 30.0, 60.0], [75.0, 10.0, 115.0, 110.0],
                                [130.0, 0.0, 240.0, 128.0]]), "labels": torch.tensor([0, 9, 31])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    idx, _ = det.assign_targets(*det._flatten(out)[3:], targets[0]["boxes"], targets[0]["labels"])
    assert set(idx.unique().tolist()) == {-1, 0, 1, 2}
    losses = det.loss(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    no_grad = [n for n, p in det.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert no_grad == []


# ------------------------------------------------------------------------------------------------
# HENA
# ------------------------------------------------------------------------------------------------


def test_hena_shapes():
    torch.manual_seed(0)
    model = tiny_hena().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.caries.shape == (2, 1, 64, 64) and out.anomaly.shape == (2, 1, 64, 64)
    assert out.anomaly_score.shape == (2,) and out.stage.shape == (2, 8)
    assert out.features.shape == (2, model.feature_dim) == (2, 64) and out.gcst.shape == (2, 32)
    with pytest.raises(ValueError):
        model(torch.randn(1, 1, 60, 64))


@pytest.mark.slow
def test_gcst_switch_changes_parameters_and_output():
    torch.manual_seed(0)
    on = tiny_hena(use_gcst=True).eval()
    off = tiny_hena(use_gcst=False).eval()
    n_on, n_off = (sum(p.numel() for p in m.parameters()) for m in (on, off))
    assert n_on > n_off
    assert not any(k.startswith("gcst.") for k in off.state_dict())
    shared = {k: v for k, v in on.state_dict().items() if k in off.state_dict()
              and v.shape == off.state_dict()[k].shape}
    off.load_state_dict(shared, strict=False)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a, b = on(x), off(x)
    assert b.gcst is None and b.stage.shape == (1, 8)
    assert not torch.allclose(a.caries, b.caries, atol=1e-4)


@pytest.mark.slow
def test_hena_staged_training_and_freezing():
    torch.manual_seed(0)
    model = tiny_hena()
    x = torch.randn(2, 1, 32, 32)
    targets = {"caries": (torch.rand(2, 1, 32, 32) > 0.8).float(),
               "anomaly": (torch.rand(2, 1, 32, 32) > 0.9).float(), "stage": torch.tensor([0, 7])}
    all_names = {id(p): n for n, p in model.named_parameters()}
    shared = {id(p) for p in model.shared_parameters()}

    # Stage 1, CarSeg: shared representation + caries head all receive gradients.
    params = model.set_stage("carseg")
    loss = model.loss(model.train()(x), targets, "carseg")
    assert torch.isfinite(loss)
    loss.backward()
    assert shared <= {id(p) for p in params}
    missing = [all_names[id(p)] for p in params if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    model.zero_grad(set_to_none=True)

    # Stages 2 and 3: shared frozen (no grads, eval mode), only the stage's head trains.
    for stage, head in (("ad", ("ad_branch", "ad_head", "ad_mask", "ad_image")), ("dds", ("stage_probe",))):
        params = model.set_stage(stage)
        assert {all_names[id(p)].split(".")[0] for p in params} == set(head)
        out = model.train()(x)
        assert not model.encoder.training and model.ad_head.training
        loss = model.loss(out, targets, stage)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in model.shared_parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        model.zero_grad(set_to_none=True)
    probe = model.trainable_parameters("dds")
    assert sum(p.numel() for p in probe) == model.feature_dim * 8 + 8  # a linear probe, exactly
    with pytest.raises(ValueError):
        model.trainable_parameters("detector")


@pytest.mark.slow
def test_ad_branch_starts_as_the_shared_decoder_and_trains_alone():
    torch.manual_seed(0)
    model = tiny_hena()
    x = torch.randn(2, 1, 32, 32)
    b = model.ad_branch
    assert float(b.ready) == 0 and not torch.equal(b.final_expand.expand.weight, model.final_expand.expand.weight)
    model.set_stage("carseg")
    opt = torch.optim.SGD(model.trainable_parameters("carseg"), lr=0.1)
    model.loss(model.train()(x), {"caries": (torch.rand(2, 1, 32, 32) > 0.7).float()}, "carseg").backward()
    opt.step()  # the shared decoder moves in carseg; the untouched branch does not follow it
    params = model.set_stage("ad")
    assert float(b.ready) == 1
    for mine, shared in ((b.expands, model.expands), (b.concat_back, model.concat_back), (b.decoder, model.decoder),
                         (b.final_expand, model.final_expand)):
        s1, s2 = mine.state_dict(), shared.state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert {id(p) for p in b.parameters()} <= {id(p) for p in params}
    shared_before = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in HENA._SHARED}
    opt = torch.optim.SGD(params, lr=0.1)
    targets = {"anomaly": (torch.rand(2, 1, 32, 32) > 0.8).float()}
    model.ad_loss(model.train()(x), targets).backward()
    opt.step()
    assert not torch.equal(b.final_expand.expand.weight, model.final_expand.expand.weight)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in shared_before.items())
    trained = b.final_expand.expand.weight.clone()
    model.set_stage("ad")  # re-entering the stage (a resumed run) must not reset the branch
    assert torch.equal(trained, b.final_expand.expand.weight)
    # without the branch the AD head reads the shared decoder (the original layout)
    plain = tiny_hena(ad_branch=False)
    assert plain.ad_branch is None and plain.ad_image.in_features == 8 + plain.feature_dim
    assert {n.split(".")[0] for n, _ in plain.named_parameters()} & {"ad_branch"} == set()


def test_ad_loss_dice_only_on_anomalous_crops_and_logit_offset():
    import torch.nn.functional as F

    from pantheon.models.mathena.hena import HENAOutput
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2] = 1  # crop 0 anomalous, crop 1 normal
    score = torch.tensor([0.3, -0.2])
    out = HENAOutput(caries=logits, anomaly=logits, anomaly_score=score, stage=torch.zeros(2, 8),
                     features=torch.zeros(2, 4), gcst=None)
    p = torch.sigmoid(logits[0]).flatten()
    t = mask[0].flatten()
    dice0 = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    label = torch.tensor([1.0, 0.0])
    for offset in (0.0, 2.5):
        want = (F.binary_cross_entropy_with_logits(logits, mask) + dice0
                + F.binary_cross_entropy_with_logits(score + offset, label))
        got = HENA.ad_loss(out, {"anomaly": mask, "anomaly_logit_offset": offset})
        assert torch.allclose(got, want, atol=1e-6), (offset, got, want)
    # no anomalous crop in the batch: no Dice term at all (BCE terms only)
    empty = torch.zeros_like(mask)
    want = (F.binary_cross_entropy_with_logits(logits, empty)
            + F.binary_cross_entropy_with_logits(score, torch.zeros(2)))
    assert torch.allclose(HENA.ad_loss(out, {"anomaly": empty}), want, atol=1e-6)


def test_legacy_hena_checkpoint_without_ad_branch_loads(tmp_path):
    torch.manual_seed(0)
    old = tiny_hena(ad_branch=False).eval()
    del old.config["ad_branch"]  # as written before the option existed
    path = tmp_path / "old.safetensors"
    save_mathena(old, path)
    loaded = load_mathena(path)
    assert loaded.ad_branch is None and loaded.config["ad_branch"] is False
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(old(x).anomaly, loaded(x).anomaly)


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_hena, tiny_detector])
def test_checkpoint_round_trip(tmp_path, make):
    torch.manual_seed(0)
    model = make().eval()
    path = tmp_path / "m.safetensors"
    save_mathena(model, path)
    loaded = load_mathena(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randn(1, 1, 32, 32) if isinstance(model, HENA) else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    ref, got = (a.caries, b.caries) if isinstance(model, HENA) else (a["cls"][0], b["cls"][0])
    assert torch.equal(ref, got)


def test_checkpoint_mismatch_names_keys(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    path = tmp_path / "h.safetensors"
    save_mathena(tiny_hena(), path)
    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    del state["stage_probe.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["caries_head.bias"] = torch.zeros(3)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_mathena(bad)
    msg = str(err.value)
    assert "stage_probe.weight" in msg and "extra.weight" in msg and "caries_head.bias" in msg
    with pytest.raises(CheckpointError, match="HENA"):
        load_mathena(path, kind="MATHEDetector")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_mathena(tmp_path / "none.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_mathena(tmp_path / "trunc.safetensors")


# ----------------------------------------------------------------------------- inference
class _FixedMapHENA:
    """Caries logit = column index - 2 whatever the input (so a mirrored pass is told apart);
    anomaly logit = 4 * (input - 0.5) per pixel (mirrors with its input); fixed score and stage."""

    def __call__(self, x):
        from pantheon.models.mathena import HENAOutput
        B, _, H, W = x.shape
        cols = torch.arange(W, dtype=torch.float32).expand(B, 1, H, W) - 2.0
        score = x.mean(dim=(1, 2, 3)) * 0 + torch.tensor(0.7)
        stage = torch.zeros(B, 8)
        stage[:, 3] = 2.0
        stage = stage + x[:, 0, 0, :1]  # the unmirrored crop's first pixel nudges the stage logits
        return HENAOutput(caries=cols.clone(), anomaly=4.0 * (x - 0.5), anomaly_score=score, stage=stage,
                          features=torch.zeros(B, 4), gcst=None)


def test_crop_probabilities_mirror_average_hand_computed():
    from pantheon.models.mathena import MASK_THRESHOLD, crop_probabilities
    x = torch.rand(2, 1, 3, 5, generator=torch.Generator().manual_seed(0))
    plain = crop_probabilities(_FixedMapHENA(), x, flip_average=False)
    avg = crop_probabilities(_FixedMapHENA(), x, flip_average=True)
    cols = torch.arange(5, dtype=torch.float32) - 2.0
    # column c of the mirrored pass's output lands on column 4 - c: (sigmoid(c-2) + sigmoid(2-c)) / 2 = 0.5
    torch.testing.assert_close(plain["caries"], torch.sigmoid(cols).expand(2, 3, 5))
    torch.testing.assert_close(avg["caries"], torch.full((2, 3, 5), 0.5))
    # a per-pixel model mirrors with its input: averaging changes nothing
    torch.testing.assert_close(avg["anomaly"], torch.sigmoid(4.0 * (x[:, 0] - 0.5)))
    torch.testing.assert_close(avg["anomaly"], plain["anomaly"])
    # score and stage from the unmirrored crop only
    torch.testing.assert_close(avg["anomaly_score"], torch.sigmoid(torch.full((2,), 0.7)))
    want = torch.zeros(2, 8)
    want[:, 3] = 2.0
    torch.testing.assert_close(avg["stage"], torch.softmax(want + x[:, 0, 0, :1], -1))
    assert 0.0 < MASK_THRESHOLD < 0.5
