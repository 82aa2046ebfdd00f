"""NeoNet pipelines (``pni.predict``, ``pni.synthesize``) through a real worker subprocess.

What the PNIPredict panel relies on: outputs in the input's exact geometry (oblique, flipped,
anisotropic), a probability in [0, 1], the crop box, the supplied-mask path, one-sentence
``input`` errors, cancel, cached models, and synthesis on the mask's grid, reproducible by seed.
Uses the bundled demo weights (being retrained: nothing here depends on what they predict) and
small MRI phantoms; a tiny NeoSeg that never says "tumour" makes the "no tumour" case certain.
"""

import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from pantheon.io import read_volume, write_volume
from pantheon.io.volume import Volume
from pantheon.synth.mri_phantom import make_liver_mri_phantom
from pantheon.worker.client import WorkerClient, WorkerError

# every test talks to one module-scoped worker running the NeoNet models (about 40 s in all)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    c = WorkerClient(cache_budget_mb=512)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def mri(tmp_path_factory):
    """Oblique, flipped (LPI), anisotropic phantom: 24 x 64 x 72 voxels of 4 x 3.5 x 6 mm."""
    d = tmp_path_factory.mktemp("pni-worker")
    img, lab, info = make_liver_mri_phantom(3, shape=(24, 64, 72), spacing=(4.0, 3.5, 6.0), orientation="LPI",
                                            oblique=True)
    return d, write_volume(img, d / "mri.nrrd"), img, write_volume(lab, d / "labels.nrrd"), lab, info


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _out(result, name):
    return read_volume(Path(result["output_dir"]) / result["outputs"][name]["file"])


def _exact(v, ref):
    return v.shape == ref.shape and v.same_geometry(ref, atol=1e-5)


def test_pipelines_are_served(client):
    names = client.check_environment()
    assert names["missing"] == []
    with pytest.raises(WorkerError) as e:
        client.run("pni.nothing", {}, {}, timeout=30)
    assert "pni.predict" in e.value.message and "pni.synthesize" in e.value.message


def test_predict_with_neoseg_in_input_geometry(client, mri):
    d, path, img, _, _, _ = mri
    assert not np.allclose(np.abs(img.direction), np.eye(3)) and len(set(img.spacing)) == 3
    before = _digest(path)
    seen = []
    r = client.run("pni.predict", {"device": "cpu"}, {"volume": str(path)}, timeout=180,
                   progress=lambda f, m: seen.append(f))
    assert seen and all(0.0 <= f <= 1.0 for f in seen)
    assert set(r["outputs"]) == {"tumour", "pni_attention"}
    assert r["outputs"]["tumour"]["kind"] == "labels" and r["outputs"]["pni_attention"]["kind"] == "heatmap"
    tum, heat = _out(r, "tumour"), _out(r, "pni_attention")
    assert _exact(tum, img) and _exact(heat, img)
    assert (tum.array == 2).any() and set(np.unique(tum.array)) <= {0, 1, 2}
    assert 0.0 <= heat.array.min() and heat.array.max() <= 1.0 and (heat.array == 0).any()
    p = r["scalars"]["pni_probability"]
    assert 0.0 <= p <= 1.0 and r["notes"]["pni_prediction"] in ("positive", "negative")
    assert r["scalars"]["tumour_volume_ml"] > 0 and r["notes"]["tumour_source"] == "NeoSeg"
    assert "warning" in r["notes"] or "demo" not in r["notes"]["weights"]
    assert "research_only" in r["notes"] and "threshold" in r["notes"]
    box = __import__("json").loads(r["notes"]["crop_box"])
    assert {"centre_ras", "size_mm", "orientation_ras", "object_to_world_ras"} <= set(box)
    assert len(r["tables"]["crop_box"]) == 1 and "centre_r" in r["tables"]["crop_box"][0]
    assert _digest(path) == before  # the input is never written
    client.release(r)


def test_predict_with_supplied_mask_and_model_cache(client, mri, tmp_path):
    d, path, img, lab_path, lab, info = mri
    r = client.run("pni.predict", {"device": "cpu"}, {"volume": str(path), "tumour_mask": str(lab_path)}, timeout=120)
    assert r["notes"]["tumour_source"] == "supplied tumour mask"
    assert r["notes"]["model_cache"] == "hit"  # PattenNet was loaded by the NeoSeg run
    tum = _out(r, "tumour")
    assert _exact(tum, img) and np.array_equal(tum.array == 2, lab.array == 2)
    assert r["scalars"]["tumour_volume_ml"] == pytest.approx(info["tumour_volume_ml"], rel=1e-3)
    assert 0.0 <= r["scalars"]["pni_probability"] <= 1.0
    # a binary mask (e.g. one segment exported from Slicer) is the same tumour
    binary = write_volume(lab.with_array((lab.array == 2).astype(np.uint8)), tmp_path / "tumour.nrrd")
    r2 = client.run("pni.predict", {"device": "cpu"}, {"volume": str(path), "tumour_mask": str(binary)}, timeout=120)
    assert r2["notes"]["crop_box"] == r["notes"]["crop_box"]
    assert r2["scalars"]["pni_probability"] == pytest.approx(r["scalars"]["pni_probability"], abs=1e-5)
    # weights are cached by file: the same weights under a path is one load, then hits
    from pantheon.registry import get_card, resolve_weights
    copy = tmp_path / "my-pattennet.safetensors"
    shutil.copy(resolve_weights(get_card("neonet-demo-pattennet")), copy)
    params = {"device": "cpu", "pattennet": str(copy)}
    inputs = {"volume": str(path), "tumour_mask": str(lab_path)}
    first = client.run("pni.predict", params, inputs, timeout=120)
    second = client.run("pni.predict", params, inputs, timeout=120)
    assert first["notes"]["model_cache"] == "miss" and second["notes"]["model_cache"] == "hit"
    assert "my-pattennet" in second["notes"]["weights"]
    assert client.stats()["cache"]["by_kind"]["neonet"]["count"] >= 3
    for res in (r, r2, first, second):
        client.release(res)


def test_input_errors(client, mri, tmp_path):
    d, path, img, lab_path, lab, _ = mri

    def err(params, inputs):
        with pytest.raises(WorkerError) as e:
            client.run("pni.predict", dict(params, device="cpu"), inputs, timeout=120)
        return e.value

    ct = write_volume(img.with_array(img.array.astype(np.float32) - 1024.0), tmp_path / "ct.nrrd")
    e = err({}, {"volume": str(ct), "tumour_mask": str(lab_path)})
    assert e.kind == "input" and "CT" in e.message
    flat = write_volume(Volume(img.array[5:6].copy(), img.spacing, img.origin, img.direction), tmp_path / "slice.nrrd")
    e = err({}, {"volume": str(flat)})
    assert e.kind == "input" and "2D" in e.message
    empty = write_volume(lab.with_array(np.zeros_like(lab.array)), tmp_path / "empty.nrrd")
    e = err({}, {"volume": str(path), "tumour_mask": str(empty)})
    assert e.kind == "input" and "No tumour was found" in e.message
    e = err({}, {"volume": str(tmp_path / "missing.nrrd")})
    assert e.kind == "input" and "missing.nrrd" in e.message
    e = err({"pattennet": str(tmp_path / "nope.safetensors")}, {"volume": str(path), "tumour_mask": str(lab_path)})
    assert e.kind in ("checkpoint", "input")
    # NeoSeg that never says "tumour": the user is told to supply a tumour mask
    torch = pytest.importorskip("torch")
    from pantheon.models.neonet import NeoSeg, save_neonet_component
    torch.manual_seed(1)
    seg = NeoSeg(channels=(4, 8), strides=(2,), num_res_units=1).eval()
    with torch.no_grad():
        last = [m for m in seg.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
        last.bias[2] = -1e4
    blind = save_neonet_component(seg, tmp_path / "blind-neoseg.safetensors")
    e = err({"neoseg": str(blind)}, {"volume": str(path)})
    assert e.kind == "input" and "No tumour was found" in e.message and "tumour mask" in e.message
    # bad synthesis parameters
    for params, word in (({"steps": 0}, "steps"), ({"pni": 2}, "pni"), ({"seed": "x"}, "seed")):
        with pytest.raises(WorkerError) as ex:
            client.run("pni.synthesize", dict(params, device="cpu"), {"mask": str(lab_path)}, timeout=60)
        assert ex.value.kind == "input" and word in ex.value.message
    with pytest.raises(WorkerError) as ex:
        client.run("pni.synthesize", {"device": "cpu", "steps": 2}, {"mask": str(empty)}, timeout=60)
    assert ex.value.kind == "input" and "empty" in ex.value.message
    assert client.ping()  # still alive and usable


def test_synthesize_in_mask_geometry_and_deterministic(client, mri):
    d, _, _, lab_path, lab, _ = mri
    params = {"device": "cpu", "steps": 2, "seed": 7, "pni": 1}
    a = client.run("pni.synthesize", params, {"mask": str(lab_path)}, timeout=180)
    assert set(a["outputs"]) == {"synthetic_mri_1"} and a["outputs"]["synthetic_mri_1"]["kind"] == "volume"
    va = _out(a, "synthetic_mri_1")
    assert _exact(va, lab) and va.array.dtype == np.float32
    assert np.isfinite(va.array).all() and (va.array != 0).any() and (va.array == 0).any()
    assert a["scalars"]["steps"] == 2 and a["scalars"]["seed"] == 7 and a["scalars"]["pni_class"] == 1
    assert "crop_box" in a["notes"] and "2 steps" in a["notes"]["synthesis"]
    b = client.run("pni.synthesize", params, {"mask": str(lab_path)}, timeout=180)
    assert b["notes"]["model_cache"] == "hit"
    np.testing.assert_array_equal(_out(b, "synthetic_mri_1").array, va.array)
    c = client.run("pni.synthesize", dict(params, seed=8, steps=3), {"mask": str(lab_path)}, timeout=180)
    assert c["scalars"]["steps"] == 3 and not np.array_equal(_out(c, "synthetic_mri_1").array, va.array)
    for res in (a, b, c):
        client.release(res)


def test_cancel_synthesis(client, mri):
    d, _, _, lab_path, _, _ = mri
    job = client.submit("pni.synthesize", {"device": "cpu", "steps": 1000, "n": 1}, {"mask": str(lab_path)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (job.state == "running" and "step" in job.progress[1]):
        job.poll()
        time.sleep(0.02)
    assert job.state == "running" and "step" in job.progress[1], (job.state, job.progress, job.error)
    t0 = time.monotonic()
    job.cancel()
    assert job.wait(10.0)
    assert job.state == "cancelled" and time.monotonic() - t0 < 10.0
    assert not os.path.exists(job.output_dir)
    assert client.stats()["running"] is None and client.ping()
