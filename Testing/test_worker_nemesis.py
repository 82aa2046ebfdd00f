"""NEMESIS pipelines through a real worker subprocess: feature cache, geometry, inputs untouched,
cancel inside the encoder. Uses the bundled demo weights and small phantoms."""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from slicer_standins import worker_client

from pantheon.io import read_volume, write_volume
from pantheon.io.volume import Volume
from pantheon.synth import make_abdomen_phantom
from pantheon.worker.client import WorkerError

# every test talks to one module-scoped worker that preloads torch and the model (about 20 s to start)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    yield from worker_client(preload=True, cache_budget_mb=512)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    d = tmp_path_factory.mktemp("worker-ct")
    img, _ = make_abdomen_phantom(3, shape=(48, 80, 80))
    return write_volume(img, d / "ct.nrrd"), img


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_ping_reports_torch(client):
    info = client.ping()
    assert info["protocol"] == 1 and info["torch"] and info["cuda"] is False and "cpu" in info["device_names"]
    env = client.check_environment()
    assert env["missing"] == [] and env["torch"] == info["torch"]


def test_features_cache_geometry_and_inputs_untouched(client, ct):
    path, img = ct
    before, mtime = _digest(path), os.stat(path).st_mtime_ns
    centre = img.ijk_to_world(np.array(img.size_ijk) / 2.0)[0].tolist()

    first = client.run("nemesis.features", {}, {"volume": str(path)}, timeout=120)
    assert first["notes"]["feature_cache"] == "miss"
    assert first["scalars"]["embed_dim"] == 96 and first["notes"]["grid"].endswith("x96")

    t0 = time.perf_counter()
    organs = client.run("nemesis.organs", {"organs": ["liver", "spleen"]}, {"volume": str(path)}, timeout=120)
    assert organs["notes"]["feature_cache"] == "hit" and organs["notes"]["model_cache"] == "hit"
    assert set(organs["outputs"]) == {"liver", "spleen"}
    heat = read_volume(Path(organs["output_dir"]) / organs["outputs"]["liver"]["file"])
    assert heat.shape == img.shape and heat.same_geometry(img)
    assert heat.array.dtype == np.float32 and 0.0 <= heat.array.min() <= heat.array.max() <= 1.0

    # a copy of the same image in a new file (as Slicer writes per request) still hits the cache
    copy = Path(client.input_dir()) / "copy.nrrd"
    copy.write_bytes(Path(path).read_bytes())
    sims = []
    for dx in (0.0, 10.0):
        point = [centre[0] + dx, centre[1], centre[2]]
        t0 = time.perf_counter()
        sims.append(client.run("nemesis.similarity", {"point_lps": point}, {"volume": str(copy)}, timeout=60))
        sims[-1]["elapsed"] = time.perf_counter() - t0
    assert all(s["notes"]["feature_cache"] == "hit" for s in sims)
    assert all(s["elapsed"] < 3.0 for s in sims)
    sim = read_volume(Path(sims[1]["output_dir"]) / sims[1]["outputs"]["similarity"]["file"])
    assert sim.same_geometry(img)
    assert float(sims[0]["notes"]["worker_seconds"]) < float(first["notes"]["worker_seconds"])

    stats = client.stats()["cache"]
    assert stats["by_kind"]["features"]["count"] == 1 and stats["hits"] >= 3
    assert stats["bytes"] <= stats["budget_bytes"]
    assert _digest(path) == before and os.stat(path).st_mtime_ns == mtime  # input never written
    assert sorted(os.listdir(Path(path).parent)) == ["ct.nrrd"]
    for r in [first, organs] + sims:
        client.release(r)
        assert not os.path.exists(r["output_dir"])


def test_pca_and_reconstruct(client, ct):
    path, img = ct
    pca = client.run("nemesis.pca", {}, {"volume": str(path)}, timeout=120)
    vol = read_volume(Path(pca["output_dir"]) / pca["outputs"]["pca"]["file"])
    assert vol.components == 3 and vol.same_geometry(img)
    centre = img.ijk_to_world(np.array(img.size_ijk) / 2.0)[0].tolist()
    rec = client.run("nemesis.reconstruct", {"point_lps": centre, "mask_ratio": [0.5, 0.5], "seed": 1},
                     {"volume": str(path)}, timeout=120)
    assert {"masked_input", "reconstruction", "error"} <= set(rec["outputs"])
    assert rec["scalars"]["psnr_db"] > 0 and -1 <= rec["scalars"]["ssim"] <= 1


def test_atypicality_map_on_the_ct_grid(client, ct):
    """The worker's map is the pipeline's, voxel for voxel, on the input's grid; bad parameters are
    one sentence each, before any model run."""
    from pantheon.models.nemesis.atypicality import atypicality
    from pantheon.pipelines import nemesis as nem
    path, img = ct
    doc = client.run("nemesis.atypicality", {"draws": 2, "seed": 3}, {"volume": str(path)}, timeout=120)
    assert set(doc["outputs"]) == {"atypicality"} and doc["scalars"]["mask_draws"] == 2
    amap = read_volume(Path(doc["output_dir"]) / doc["outputs"]["atypicality"]["file"])
    assert amap.same_geometry(img) and amap.array.dtype == np.float32
    want = atypicality(read_volume(path), nem.load_engine(device="cpu"), draws=2, seed=3)
    np.testing.assert_allclose(amap.array, want.heatmaps["atypicality"].volume.array, atol=1e-4)
    assert doc["scalars"]["mean_error_in_body_hu"] == pytest.approx(want.scalars["mean_error_in_body_hu"], rel=1e-5)
    client.release(doc)
    for params, words in (({"draws": 0}, "at least 1; got 0"), ({"draws": 2.5}, "whole number of mask draws"),
                          ({"mask_ratio": [0.5, 1.0]}, "mask ratio"), ({"mask_ratio": "half"}, "[plane, axis]"),
                          ({"seed": -1}, "seed")):
        with pytest.raises(WorkerError) as e:
            client.run("nemesis.atypicality", params, {"volume": str(path)}, timeout=60)
        assert e.value.kind == "input" and words in e.value.message, e.value.message


def test_input_errors(client, ct, tmp_path):
    path, img = ct
    with pytest.raises(WorkerError) as e:
        client.run("nemesis.organs", {}, {"volume": str(tmp_path / "missing.nrrd")}, timeout=60)
    assert e.value.kind == "input" and "missing.nrrd" in e.value.message
    with pytest.raises(WorkerError) as e:
        client.run("nemesis.similarity", {}, {"volume": str(path)}, timeout=60)
    assert e.value.kind == "input" and "point_lps" in e.value.message
    with pytest.raises(WorkerError) as e:
        client.run("nemesis.similarity", {"point_lps": [1e5, 0, 0]}, {"volume": str(path)}, timeout=60)
    assert e.value.kind == "input" and "outside" in e.value.message
    with pytest.raises(WorkerError) as e:
        client.run("nemesis.features", {"weights": str(tmp_path / "nope.safetensors")}, {"volume": str(path)})
    assert e.value.kind == "checkpoint"
    assert client.run("nemesis.features", {}, {"volume": str(path)}, timeout=60)["notes"]["feature_cache"] == "hit"


def test_similarity_over_another_ct(client, tmp_path):
    """nemesis.similarity with input "target": the map lies on the target's voxels (an oblique,
    permuted grid), its best match is in the target's liver for a point in the query's liver; a moved
    point, in new files of both scans (as Slicer writes per request), costs no encoder pass for either."""
    from scipy import ndimage
    a, lab_a = make_abdomen_phantom(0, shape=(40, 64, 64))
    b, lab_b = make_abdomen_phantom(5, shape=(40, 64, 64), orientation="random", oblique=True)
    from pantheon.anatomy import BTCV_ORGANS
    value = {name: v for name, v, *_ in BTCV_ORGANS}

    def centre(organ):  # the organ voxel a user would click: the deepest inside it
        depth = ndimage.distance_transform_edt(lab_a.array == value[organ])
        kji = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return a.ijk_to_world(np.array(kji[::-1], float))[0]
    liver_a = centre("liver")
    runs = []
    for n, point in enumerate((liver_a, centre("spleen"))):  # the point moved to another organ
        files = {name: Path(client.input_dir()) / f"{name}{n}.nrrd" for name in ("volume", "target")}
        write_volume(a, files["volume"])
        write_volume(b, files["target"])
        runs.append(client.run("nemesis.similarity", {"point_lps": point.tolist()},
                               {k: str(v) for k, v in files.items()}, timeout=180))
    first, second = runs
    assert (first["notes"]["query_feature_cache"], first["notes"]["target_feature_cache"]) == ("miss", "miss")
    assert first["notes"]["feature_cache"] == "miss"
    assert (second["notes"]["query_feature_cache"], second["notes"]["target_feature_cache"]) == ("hit", "hit")
    assert second["notes"]["feature_cache"] == "hit"
    assert float(second["notes"]["worker_seconds"]) < float(first["notes"]["worker_seconds"])
    maps = [read_volume(Path(r["output_dir"]) / r["outputs"]["similarity"]["file"]) for r in runs]
    for heat in maps:
        assert heat.shape == b.shape and heat.same_geometry(b) and not heat.same_geometry(a)
    assert not np.array_equal(maps[0].array, maps[1].array)
    assert -1.0 <= first["scalars"]["best_similarity"] <= 1.0
    best = np.array(json.loads(first["notes"]["best_match_lps"]))
    np.testing.assert_allclose(json.loads(first["notes"]["best_match_ras"]), best * [-1, -1, 1], atol=1e-3)
    ijk = np.rint(b.world_to_ijk(best)[0]).astype(int)
    assert lab_b.array[ijk[2], ijk[1], ijk[0]] == value["liver"]  # the target's liver
    for r in runs:
        client.release(r)

    # a point outside the query CT, and a target that is not a CT: one sentence each, nothing computed
    files = {"volume": str(write_volume(a, tmp_path / "a.nrrd")), "target": str(write_volume(b, tmp_path / "b.nrrd"))}
    outside = (np.array(a.origin) - 500.0).tolist()
    labels = {**files, "target": str(write_volume(lab_b, tmp_path / "labels.nrrd"))}
    for params, inputs, words in (({"point_lps": outside}, files, "outside the query CT"),
                                  ({"point_lps": liver_a.tolist()}, labels, "target")):
        with pytest.raises(WorkerError) as e:
            client.run("nemesis.similarity", params, inputs, timeout=60)
        message = e.value.message
        assert e.value.kind == "input" and words in message, message
        assert message.endswith(".") and "\n" not in message and "Traceback" not in message, message


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_strokes_on_the_ct_grid_and_warm_on_the_next_stroke(client, tmp_path):
    """nemesis.strokes: the segmentation lies on the CT's voxels; a second call for the same CT
    (another file, as Slicer writes per request) with one more stroke pair reuses the Volume and
    the prepared state (strokes_cache hit: no features asked for, no encoder pass)."""
    from pantheon.models.nemesis.strokes import SEGMENT_NAME, simulate_strokes
    img, lab = make_abdomen_phantom(3, shape=(40, 56, 56), oblique=10.0)
    liver = lab.array == 6
    path = write_volume(img, tmp_path / "ct.nrrd")
    runs = []
    for n in (3, 4):
        strokes = write_volume(img.with_array(simulate_strokes(liver, n, seed=0, body=img.array > -500)),
                               tmp_path / f"strokes{n}.nrrd")
        ct = path if n == 3 else Path(client.input_dir()) / "ct-copy.nrrd"
        if n == 4:
            ct.write_bytes(Path(path).read_bytes())
        params = {} if n == 3 else {"probability": False}
        runs.append(client.run("nemesis.strokes", params, {"volume": str(ct), "strokes": str(strokes)}, timeout=120))
    first, second = runs
    assert first["notes"]["strokes_cache"] == "miss" and first["notes"]["feature_cache"] == "miss"
    assert second["notes"]["strokes_cache"] == "hit" and "feature_cache" not in second["notes"]
    assert float(second["notes"]["worker_seconds"]) < float(first["notes"]["worker_seconds"])
    assert set(first["outputs"]) == {"segmentation", "stroke_probability"}
    assert set(second["outputs"]) == {"segmentation"}  # probability: false writes the label map only
    assert [s["name"] for s in second["outputs"]["segmentation"]["segments"]] == [SEGMENT_NAME]
    for r in runs:
        seg = read_volume(Path(r["output_dir"]) / r["outputs"]["segmentation"]["file"])
        assert seg.shape == img.shape and seg.same_geometry(img)
        assert set(np.unique(seg.array)) <= {0, 1}
        assert _dice(seg.array > 0, liver) > 0.7  # measured 0.80 on this phantom
        client.release(r)


def test_strokes_bad_maps_are_one_sentence(client, ct, tmp_path):
    path, img = ct
    only_fg = np.zeros(img.shape, np.uint8)
    only_fg[20:24, 30:34, 30:34] = 1
    cases = {"no background stroke": img.with_array(only_fg),
             "not on the image's grid": Volume(only_fg[:, :-1].copy(), img.spacing, img.origin, img.direction)}
    for words, strokes in cases.items():
        stroke_path = write_volume(strokes, tmp_path / f"strokes{len(words)}.nrrd")
        with pytest.raises(WorkerError) as e:
            client.run("nemesis.strokes", {}, {"volume": str(path), "strokes": str(stroke_path)}, timeout=60)
        message = e.value.message
        assert e.value.kind == "input" and words in message, message
        assert message.endswith(".") and message.count(". ") == 0 and "\n" not in message, message
    with pytest.raises(WorkerError) as e:
        client.run("nemesis.strokes", {}, {"volume": str(path)}, timeout=60)
    assert e.value.kind == "input" and "'strokes'" in e.value.message


def test_cancel_inside_encoder_within_one_second(client, tmp_path):
    img, _ = make_abdomen_phantom(5, shape=(64, 144, 144))
    path = write_volume(img, tmp_path / "big.nrrd")
    latencies = []
    # A loaded 2-core machine can stall any process for a moment: the requirement is judged on the
    # best of up to three cancels, and none may take more than 3 s.
    for attempt in range(3):
        job = client.submit("nemesis.pca", {"stride": 8}, {"volume": str(path)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (job.state == "running" and job.progress[0] > 0.1):
            time.sleep(0.02)
        assert job.state == "running", job.error
        t0 = time.monotonic()
        job.cancel()
        assert job.wait(3.0)
        latencies.append(time.monotonic() - t0)
        assert job.state == "cancelled", job.state
        assert not os.path.exists(job.output_dir)
        assert client.stats()["running"] is None  # the worker is idle and usable again
        if latencies[-1] < 1.0:
            break
    assert min(latencies) < 1.0, latencies


def test_train_probe(client, tmp_path):
    inputs = {}
    for n in range(3):
        img, lab = make_abdomen_phantom(10 + n, shape=(48, 80, 80))
        inputs[f"image_{n}"] = str(write_volume(img, tmp_path / f"i{n}.nrrd"))
        inputs[f"label_{n}"] = str(write_volume(lab, tmp_path / f"l{n}.nrrd"))
    r = client.run("nemesis.train_probe", {"epochs": 20, "holdout_fraction": 0.34, "output": str(tmp_path / "probe")},
                   inputs, timeout=120)
    assert Path(r["notes"]["probe"]).is_file() and "mean_auroc_held_out" in r["scalars"]
    assert {row["organ"] for row in r["tables"]["auroc"]} >= {"liver", "spleen", "mean"}
    organs = client.run("nemesis.organs", {"probe": r["notes"]["probe"], "organs": ["liver"]},
                        {"volume": inputs["image_0"]}, timeout=60)
    assert organs["notes"]["feature_cache"] in ("hit", "miss") and "liver" in organs["outputs"]
