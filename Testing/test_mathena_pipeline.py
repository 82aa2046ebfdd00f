"""ToothAnalysis pipeline (pantheon.pipelines.mathena) and the dental chart (pantheon.chart)."""


import numpy as np
import pytest
import torch

from pantheon.errors import InputError
from pantheon.io.volume import Volume
from pantheon.models.mathena import HENA, MATHEDetector, fdi_to_class, save_mathena
from pantheon.models.mathena.hena import HENAOutput
from pantheon.pipelines import mathena as mt
from pantheon.results import Result


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Random-init tiny MATHE + HENA saved with save_mathena (fast on 2 CPU cores)."""
    d = tmp_path_factory.mktemp("mathena-w")
    torch.manual_seed(0)
    det = MATHEDetector(widths=(8, 16, 32, 32, 32), neck_channels=16, num_vss=1, bifpn_repeats=1, head_convs=1,
                        d_state=4)
    hena = HENA(embed_dim=8, depths=(1, 1), d_state=4)
    save_mathena(det, d / "det.safetensors")
    save_mathena(hena, d / "hena.safetensors")
    return d / "det.safetensors", d / "hena.safetensors"


@pytest.fixture(scope="module")
def models(tiny_weights):
    return mt.load_mathena_models(str(tiny_weights[0]), str(tiny_weights[1]))


class StubDetector:
    """Returns fixed boxes (in detector-input pixels) whatever the image."""

    num_classes = 32
    config = {"in_channels": 1}

    def __init__(self, boxes, fdis, scores):
        self.boxes, self.fdis, self.scores = boxes, fdis, scores
        self.seen = None

    def __call__(self, x):
        self.seen = tuple(x.shape)
        return {}

    def decode(self, outputs, image_size, score_thresh=0.05, **kw):
        # no "class_scores": the numbering step treats the stub as certain of its labels
        keep = [i for i, s in enumerate(self.scores) if s > score_thresh]
        return [{"boxes": torch.tensor([self.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4),
                 "scores": torch.tensor([self.scores[i] for i in keep], dtype=torch.float32),
                 "labels": torch.tensor([fdi_to_class(self.fdis[i]) for i in keep], dtype=torch.long)}]


class StubHENA:
    """Caries logit +10 in the top-left quadrant of every crop, -10 elsewhere; no anomaly; stage C."""

    config = {"in_channels": 1}

    def __call__(self, x):
        B, _, S, _ = x.shape
        car = torch.full((B, 1, S, S), -10.0)
        car[:, :, :S // 2, :S // 2] = 10.0
        stage = torch.zeros(B, 8)
        stage[:, 2] = 3.0
        return HENAOutput(caries=car, anomaly=torch.full((B, 1, S, S), -10.0), anomaly_score=torch.full((B,), -2.0),
                          stage=stage, features=torch.zeros(B, 4), gcst=None)


def _opg(H=256, W=512, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    a = rng.random((H, W))
    hi = 255 if dtype == np.uint8 else 65535
    return (a * hi).astype(dtype)


def _same_geometry(a: Volume, b: Volume):
    assert a.shape == b.shape
    assert a.spacing == b.spacing and a.origin == b.origin
    np.testing.assert_array_equal(a.direction, b.direction)
    assert a.components == 1


# ---------------------------------------------------------------------------- geometry and pasting
def test_geometry_matches_input_dicom_like(models):
    from pantheon.synth.opg import make_opg
    o = make_opg(1, size=(256, 512))
    direction = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    vol = Volume(o.image.array, spacing=(0.1, 0.1, 1.0), origin=(-12.5, 40.0, 3.0), direction=direction)
    res = mt.analyze(vol, models, None, score_thresh=0.0)
    for name in ("teeth", "caries", "anomaly"):
        _same_geometry(res.labels[name].volume, vol)
    for h in res.heatmaps.values():
        _same_geometry(h.volume, vol)
    rows = res.tables["findings"]
    assert rows, "score 0 must keep at least one detection"
    assert set(rows[0]) >= {"tooth", "score", "caries_area_mm2", "anomaly_probability", "stage", "stage_probability"}
    teeth = res.labels["teeth"]
    assert {s.value for s in teeth.segments} == {r["tooth"] for r in rows}
    assert all(s.name == f"tooth {s.value}" for s in teeth.segments)
    assert set(np.unique(teeth.volume.array)) <= {0} | {r["tooth"] for r in rows}
    assert res.labels["caries"].segments[0].code == ("SCT", "80967001", "Dental caries")
    assert res.scalars["n_teeth"] == len(rows)
    for r in rows:  # area = pixels x spacing^2, spacing known here
        assert r["caries_area_mm2"] == pytest.approx(r["caries_pixels"] * 0.01, abs=1e-3)
        assert r["stage"] in "ABCDEFGH" and 0 < r["stage_probability"] <= 1
    assert "0.1 x 0.1" in res.notes["spacing"]


def test_paste_lands_in_the_right_box_hand_computed():
    # Source 512x1024 -> detector input 256x512: scale 0.5, no padding.
    # Model box (100, 50, 140, 110) -> source (200, 100, 280, 220): w 80, h 120.
    # Margin 0.15: enlarged (188, 82, 292, 238); square side 156 centred (240, 160): origin (162, 82),
    # 64 px crop -> s = 64/156. The stub's positive top-left crop quadrant ends at crop 32 ->
    # source x = 162 + 32/s = 240, y = 82 + 78 = 160. Inside the enlarged box: rows 82..159, cols 188..239.
    vol = Volume(_opg(512, 1024)[None], spacing=(0.2, 0.3, 1.0), origin=(5.0, -7.0, 0.0))
    det = StubDetector([(100, 50, 140, 110), (300, 20, 320, 60), (10, 10, 30, 30)], [36, 11, 36],
                       [0.9, 0.2, 0.5])
    # plain HENA output at 0.5 (the stub's quadrant does not mirror with its input, and the
    # hand computation below is of one crop's probabilities)
    res = mt.analyze(vol, det, StubHENA(), score_thresh=0.3, flip_average=False, mask_thresh=0.5)
    assert det.seen == (1, 1, 256, 512)
    rows = res.tables["findings"]
    assert [r["tooth"] for r in rows] == [36]  # 11 is below the threshold, the best 36 wins
    assert rows[0]["score"] == pytest.approx(0.9)
    assert (rows[0]["box_x0"], rows[0]["box_y0"], rows[0]["box_x1"], rows[0]["box_y1"]) == (200, 100, 280, 220)
    caries = res.labels["caries"].volume.array[0]
    expected = np.zeros_like(caries)
    expected[82:160, 188:240] = 1
    # The corner pixel (row 159, col 239) has centre at crop (31.795, 31.795): bilinear over the four
    # crop pixels (only (31, 31) is +10) gives 10 * (2 * 0.705**2 - 1) < 0, so it is not caries.
    expected[159, 239] = 0
    np.testing.assert_array_equal(caries, expected)
    n = 78 * 52 - 1
    assert rows[0]["caries_pixels"] == n
    assert rows[0]["caries_area_mm2"] == pytest.approx(n * 0.2 * 0.3)
    assert res.scalars["caries_area_mm2"] == pytest.approx(n * 0.06)
    assert res.labels["anomaly"].volume.array.sum() == 0
    assert rows[0]["stage"] == "C" and rows[0]["anomaly_probability"] == pytest.approx(1 / (1 + np.e ** 2), abs=1e-4)
    teeth = res.labels["teeth"].volume.array[0]
    assert (teeth[100:220, 200:280] == 36).all() and teeth.sum() == 36 * 80 * 120


def test_png_spacing_unknown_gives_no_mm2():
    vol = Volume(_opg()[None])  # spacing (1, 1, 1), as a PNG reads
    res = mt.analyze(vol, StubDetector([(100, 50, 140, 110)], [46], [0.8]), StubHENA())
    row = res.tables["findings"][0]
    assert row["caries_area_mm2"] is None and row["caries_pixels"] > 0
    assert "unknown" in res.notes["spacing"] and "caries_area_mm2" not in res.scalars


def test_large_image_processed_at_model_resolution():
    H, W = 2048, 4096
    vol = Volume(np.tile(np.arange(W, dtype=np.uint16), (H, 1))[None], spacing=(0.05, 0.05, 1.0))
    det = StubDetector([(100, 50, 140, 110)], [21], [0.9])
    res = mt.analyze(vol, det, StubHENA(), flip_average=False, mask_thresh=0.5)
    assert det.seen == (1, 1, 256, 512)
    assert res.labels["caries"].volume.shape == (1, H, W)
    # scale 1/8: box (800, 400, 1120, 880); everything 4x the hand-computed 512x1024 case
    caries = res.labels["caries"].volume.array[0]
    ys, xs = np.nonzero(caries)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (4 * 82, 4 * 160, 4 * 188, 4 * 240)


# ---------------------------------------------------------------------------- inputs
def test_rgb_and_16bit_inputs_accepted():
    det, hena = StubDetector([(100, 50, 140, 110)], [36], [0.9]), StubHENA()
    rgb = np.stack([_opg(), _opg(seed=1), _opg(seed=2)], -1)[None]
    res = mt.analyze(Volume(rgb, components=3, spacing=(0.1, 0.1, 1)), det, hena)
    assert res.labels["caries"].volume.components == 1 and res.labels["caries"].volume.shape == (1, 256, 512)
    res16 = mt.analyze(Volume(_opg(dtype=np.uint16)[None]), det, hena)
    assert res16.tables["findings"][0]["tooth"] == 36


@pytest.mark.parametrize("array,match", [
    (np.zeros((3, 256, 512), np.uint8) + np.arange(512, dtype=np.uint8), "3D volume"),
    (np.arange(32 * 40, dtype=np.float32).reshape(1, 32, 40), "at least 64 pixels"),
    (np.full((1, 256, 512), 7, np.uint8), "constant"),
    (np.where(np.eye(256, 512, dtype=bool), np.nan, 1.0)[None].astype(np.float32), "NaN"),
])
def test_bad_inputs_raise_clear_errors(array, match):
    with pytest.raises(InputError, match=match):
        mt.analyze(Volume(array), StubDetector([], [], []), StubHENA())


def test_cancel_and_progress():
    from pantheon.errors import Cancelled
    seen = []
    mt.analyze(Volume(_opg()[None]), StubDetector([(100, 50, 140, 110)], [36], [0.9]), StubHENA(),
               progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(Cancelled):
        mt.analyze(Volume(_opg()[None]), StubDetector([], [], []), StubHENA(), cancel=lambda: True)


# ---------------------------------------------------------------------------- chart
def test_dental_chart_png(tmp_path):
    from PIL import Image
    rows = [dict(tooth=f, score=0.9, caries_pixels=10 * (f == 36), anomaly_pixels=0,
                 anomaly_probability=0.8 if f == 11 else 0.1, stage="H", stage_probability=0.7)
            for f in (11, 12, 36, 46, 55)]
    res = Result(tables={"findings": rows}, notes={"warning": "Demo weights: not for clinical use."})
    path = mt.dental_chart(res, tmp_path / "chart.png")
    with Image.open(path) as im:
        w, h = im.size
        px = np.asarray(im.convert("RGB"))
    assert 800 <= w <= 2000 and 300 <= h <= 1000
    # red (caries), orange (anomaly), green (healthy) and grey (missing) are all drawn
    for rgb in ((0xe5, 0x39, 0x35), (0xfb, 0x8c, 0x00), (0x4c, 0xaf, 0x50), (0xc8, 0xc8, 0xc8)):
        assert (np.abs(px.astype(int) - rgb).sum(-1) < 10).sum() > 500, rgb


def test_tooth_colours_and_demo_cards_if_present(tmp_path):
    assert mt.tooth_color(11) != mt.tooth_color(21) != mt.tooth_color(31)
    try:
        models = mt.load_mathena_models()
    except Exception:
        pytest.skip("demo MATHENA weights not built yet")
    from pantheon.synth.opg import make_opg
    res = mt.analyze(make_opg(3, size=(256, 512)).image, models, None)
    assert res.notes.get("warning") and res.labels["teeth"].volume.shape == (1, 256, 512)


def test_findings_are_called_by_area_and_probability_not_by_stray_pixels():
    """A few caries pixels (< MIN_CARIES_FRACTION of the crop) and an anomaly probability below
    ANOMALY_THRESHOLD: the heat maps keep them, the calls and the segmentations do not."""
    from pantheon.chart import tooth_status

    class SpeckHENA(StubHENA):
        def __call__(self, x):
            out = super().__call__(x)
            caries = torch.full_like(out.caries, -10.0)
            caries[..., 31:33, 30:34] = 10.0  # 8 of 4096 crop pixels, mirror-symmetric: 0.20% < 0.25%
            anomaly = torch.full_like(out.anomaly, -10.0)
            anomaly[..., 10:20, 22:42] = 10.0  # a clear blob (mirror-symmetric), but the tooth's probability is low
            score = torch.full_like(out.anomaly_score, float(np.log(0.15 / 0.85)))
            return HENAOutput(caries=caries, anomaly=anomaly, anomaly_score=score, stage=out.stage,
                          features=out.features, gcst=None)

    vol = Volume(_opg()[None], spacing=(0.2, 0.3, 1.0))
    res = mt.analyze(vol, StubDetector([(200, 100, 280, 220)], [36], [0.9]), SpeckHENA())
    row = res.tables["findings"][0]
    assert 8 / 4096 < mt.MIN_CARIES_FRACTION and 0.15 < mt.ANOMALY_THRESHOLD
    assert row["caries"] is False and row["anomaly"] is False
    assert row["caries_pixels"] == 0 and row["anomaly_pixels"] == 0
    assert res.labels["caries"].volume.array.sum() == 0 and res.labels["anomaly"].volume.array.sum() == 0
    assert res.heatmaps["caries_probability"].volume.array.max() > 0.99
    assert res.heatmaps["anomaly_probability"].volume.array.max() > 0.99
    assert res.scalars["n_caries"] == 0 and res.scalars["n_anomaly"] == 0
    assert tooth_status(row) == {"caries": False, "anomaly": False}
    # the same maps with a probability above the threshold: the tooth and its blob are kept
    res2 = mt.analyze(vol, StubDetector([(200, 100, 280, 220)], [36], [0.9]), SpeckHENA(), anomaly_thresh=0.1)
    row2 = res2.tables["findings"][0]
    assert row2["anomaly"] is True and row2["anomaly_pixels"] > 0
    assert res2.labels["anomaly"].volume.array.sum() == row2["anomaly_pixels"]
    assert res2.scalars["n_anomaly"] == 1 and tooth_status(row2)["anomaly"] is True
