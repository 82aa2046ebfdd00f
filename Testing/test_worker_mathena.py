"""MATHENA (``mathena.analyze``) through a real worker subprocess: outputs on the input's exact
geometry (oblique, flipped, offset, anisotropic; grayscale and RGB), findings consistent with the
segments, the dental chart, progress, cancel, input errors and the model cache.

The demo weights are retrained from time to time, so nothing here depends on how many teeth they
find: only structure, geometry and consistency are checked.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from slicer_standins import worker_client  # noqa: E402

from pantheon.io import Volume, read_volume, write_volume  # noqa: E402
from pantheon.models.mathena.tasks import add_tooth_geometry  # noqa: E402
from pantheon.synth.opg import make_opg  # noqa: E402
from pantheon.worker.client import WorkerError  # noqa: E402

PIPELINE = "mathena.analyze"


def oblique_geometry(angle_deg=25.0):
    """An in-plane rotation with a flipped j axis, anisotropic spacing and an offset origin."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    direction = rot @ np.diag([1.0, -1.0, -1.0])
    return dict(spacing=(0.31, 0.27, 1.5), origin=(-40.5, 12.25, 7.0), direction=direction)


@pytest.fixture(scope="module")
def client():
    yield from worker_client(preload=True, cache_budget_mb=1024)


@pytest.fixture(scope="module")
def opg(tmp_path_factory):
    d = tmp_path_factory.mktemp("worker-opg")
    gray = make_opg(4, size=(256, 512)).image.array[0]
    vol = Volume(gray[None], **oblique_geometry())
    rgb = Volume(np.repeat(gray[None, ..., None], 3, axis=-1), **oblique_geometry(), components=3)
    return {"gray": (write_volume(vol, d / "opg.nrrd"), vol), "rgb": (write_volume(rgb, d / "opg-rgb.nrrd"), rgb),
            "dir": d}


@pytest.fixture(scope="module")
def first_run(client, opg):
    path, _ = opg["gray"]
    events = []
    t0 = time.perf_counter()
    doc = client.run(PIPELINE, {"device": "cpu"}, {"volume": str(path)},
                     progress=lambda f, m: events.append((f, m)), timeout=300)
    return doc, events, time.perf_counter() - t0


def _read(doc, name):
    return read_volume(Path(doc["output_dir"]) / doc["outputs"][name]["file"])


def test_tooth_geometry_helper():
    vol = Volume(np.zeros((1, 100, 200), np.uint8), **oblique_geometry())
    rows = add_tooth_geometry(vol, [{"box_x0": 10.0, "box_y0": 20.0, "box_x1": 30.0, "box_y1": 60.0}])
    # pixel-edge box [10, 30] x [20, 60] -> centre pixel index (19.5, 39.5)
    expect = vol.ijk_to_world([19.5, 39.5, 0.0])[0]
    np.testing.assert_allclose([rows[0][f"centre_lps_{a}"] for a in "xyz"], expect, atol=1e-3)
    assert rows[0]["box_width_mm"] == pytest.approx(20 * 0.31) and rows[0]["box_height_mm"] == pytest.approx(40 * 0.27)
    assert add_tooth_geometry(vol, []) == []


@pytest.mark.slow
def test_outputs_on_the_input_geometry(first_run, opg):
    doc, events, _ = first_run
    _, vol = opg["gray"]
    assert {"teeth", "caries", "anomaly"} <= {k for k, v in doc["outputs"].items() if v["kind"] == "labels"}
    assert {"caries_probability", "anomaly_probability"} <= {k for k, v in doc["outputs"].items()
                                                             if v["kind"] == "heatmap"}
    for name in doc["outputs"]:
        out = _read(doc, name)
        assert out.shape == vol.shape and out.components == 1, name
        assert out.same_geometry(vol, atol=1e-6), name
    teeth = _read(doc, "teeth").array
    assert np.issubdtype(teeth.dtype, np.integer)
    for name in ("caries_probability", "anomaly_probability"):
        p = _read(doc, name).array
        assert p.dtype == np.float32 and 0.0 <= p.min() and p.max() <= 1.0
    # progress: several events, in order, within [0, 1], ending at 1
    fractions = [f for f, _ in events]
    assert len(events) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert "warning" in doc["notes"] or "demo" not in doc["notes"].get("detector", "")


@pytest.mark.slow
def test_findings_match_segments_and_centres(first_run, opg):
    doc, _, _ = first_run
    _, vol = opg["gray"]
    rows = doc["tables"]["findings"]
    segs = doc["outputs"]["teeth"]["segments"]
    seg_values = {s["value"] for s in segs}
    assert [r["tooth"] for r in rows] == sorted({r["tooth"] for r in rows}), "one row per tooth, by FDI"
    assert {r["tooth"] for r in rows} == seg_values, "every findings row has a tooth segment and back"
    assert all(s["name"] == f"tooth {s['value']}" for s in segs)
    teeth = _read(doc, "teeth").array
    assert set(np.unique(teeth).tolist()) - {0} <= seg_values
    for fdi in seg_values:
        q, t = divmod(fdi, 10)
        assert 1 <= q <= 8 and 1 <= t <= 8
    H, W = vol.shape[1:]
    for r in rows:
        for key in ("centre_lps_x", "centre_lps_y", "centre_lps_z", "box_width_mm", "box_height_mm", "score"):
            assert isinstance(r[key], float), key
        i, j, k = vol.world_to_ijk([r["centre_lps_x"], r["centre_lps_y"], r["centre_lps_z"]])[0]
        assert abs(k) < 1e-4
        assert r["box_x0"] - 0.5 <= i <= r["box_x1"] - 0.5 and r["box_y0"] - 0.5 <= j <= r["box_y1"] - 0.5
        assert 0 <= i < W and 0 <= j < H
    assert doc["scalars"]["n_teeth"] == len(rows)


@pytest.mark.slow
def test_chart_and_result_json(first_run):
    doc, _, _ = first_run
    chart = Path(doc["output_dir"]) / doc["files"]["chart"]
    assert chart.is_file() and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((Path(doc["output_dir"]) / "result.json").read_text())
    assert on_disk["files"] == {"chart": "chart.png"}
    assert on_disk["tables"]["findings"] == doc["tables"]["findings"]


@pytest.mark.slow
def test_rgb_input_and_model_cache(client, first_run, opg):
    doc, _, first_s = first_run
    assert doc["notes"]["model_cache"] == "miss"
    path, rgb = opg["rgb"]
    again = client.run(PIPELINE, {"device": "cpu"}, {"volume": str(path)}, timeout=300)
    assert again["notes"]["model_cache"] == "hit", "the second request reuses the loaded models"
    for name in again["outputs"]:
        out = _read(again, name)
        assert out.components == 1 and out.shape == rgb.shape and out.same_geometry(rgb, atol=1e-6), name
    # an RGB picture of the same grey image is analysed as that grey image (BT.601 luma of R=G=B)
    a, b = _read(doc, "teeth").array, _read(again, "teeth").array
    assert np.mean(a == b) > 0.99
    stats = client.stats()["cache"]
    assert stats["by_kind"]["mathena"]["count"] == 1
    client.release(again)


@pytest.mark.slow
def test_input_errors(client, opg, tmp_path):
    d = tmp_path
    ct = write_volume(Volume(np.random.default_rng(0).integers(0, 255, (6, 128, 128)).astype(np.uint8)), d / "ct.nrrd")
    with pytest.raises(WorkerError) as e:
        client.run(PIPELINE, {}, {"volume": str(ct)}, timeout=60)
    assert e.value.kind == "input" and "3D volume" in e.value.message and "2D panoramic" in e.value.message
    tiny = write_volume(Volume(np.random.default_rng(1).integers(0, 255, (1, 40, 48)).astype(np.uint8)), d / "t.nrrd")
    with pytest.raises(WorkerError) as e:
        client.run(PIPELINE, {}, {"volume": str(tiny)}, timeout=60)
    assert e.value.kind == "input" and "48x40" in e.value.message and "at least 64" in e.value.message
    path, _ = opg["gray"]
    with pytest.raises(WorkerError) as e:
        client.run(PIPELINE, {"score_thresh": 1.5}, {"volume": str(path)}, timeout=60)
    assert e.value.kind == "input" and "score_thresh" in e.value.message
    with pytest.raises(WorkerError) as e:
        client.run(PIPELINE, {"device": "tpu"}, {"volume": str(path)}, timeout=60)
    assert e.value.kind == "input" and "device" in e.value.message
    with pytest.raises(WorkerError) as e:
        client.run(PIPELINE, {"detector": str(d / "nope.safetensors")}, {"volume": str(path)}, timeout=60)
    assert e.value.kind == "checkpoint"


@pytest.mark.slow
def test_cancel(client, opg):
    path, _ = opg["gray"]
    job = client.submit(PIPELINE, {"device": "cpu", "score_thresh": 0.0}, {"volume": str(path)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (job.state == "running" and job.progress[0] > 0.0):
        job.poll()
        time.sleep(0.02)
    assert job.state == "running", (job.state, job.error)
    job.cancel()
    assert job.wait(60), "a cancel lands between tooth batches"
    assert job.state == "cancelled" and job.error["kind"] == "cancelled"
    assert not os.path.exists(job.output_dir)
    assert client.stats()["running"] is None and client.ping()
