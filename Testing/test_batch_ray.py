"""``pantheon batch --engine ray``: the same cases as the local engine, on Ray actors.

Ray's old ``local_mode`` is deprecated (and gone from recent releases), so these tests run a small
real local Ray cluster on this machine (``ray.init(num_cpus=2)``): actors are separate worker
processes, exactly as on a cluster, with the shared file system being the local disk.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from pantheon.batch import run_batch  # noqa: E402
from pantheon.batch.ray_executor import WORKER_DIED, plan_resources  # noqa: E402
from pantheon.cli import main  # noqa: E402
from pantheon.errors import PantheonError  # noqa: E402
from pantheon.io import read_volume  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def ray_session():
    """One small local Ray for the module (started once: ~10 s on 2 cores), shut down at the end."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _manifest(out: Path) -> dict:
    return {c["case_id"]: c for c in json.loads((out / "manifest.json").read_text())["cases"]}


def _summary(out: Path) -> dict:
    with open(out / "summary.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _leftovers(out: Path):
    return [p.name for p in out.rglob("*") if p.name.startswith((".partial", ".trash", ".pantheon-partial"))]


@pytest.mark.slow
def test_ray_engine_equals_the_local_engine_records_failures_and_a_rerun_skips_done_cases(ray_session, four_phantom_cts,
                                                                                         tmp_path, capsys):
    src = tmp_path / "in"  # the 4 phantoms and a truncated file, one batch (Ray starts actors once)
    src.mkdir()
    for s in range(4):
        (src / f"ct{s:02d}.nii.gz").write_bytes((four_phantom_cts / f"ct{s:02d}.nii.gz").read_bytes())
    (src / "broken.nii.gz").write_bytes((four_phantom_cts / "ct02.nii.gz").read_bytes()[:2000])
    good = [f"ct{s:02d}" for s in range(4)]
    out_ray, out_local = tmp_path / "ray", tmp_path / "local"
    argv = ["batch", "nemesis-organs", "--input", str(src), "--quiet"]
    assert main(argv + ["--output", str(out_ray), "--engine", "ray", "--workers", "2"]) == 1  # a case failed
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["done"] == 4 and summary["failed"] == 1 and summary["ran"] == 5
    assert "warning: 1 of 5 cases failed" in captured.err
    run_batch("nemesis-organs", src, out_local, workers=1, quiet=True)

    ray_doc, local_doc = _manifest(out_ray), _manifest(out_local)
    assert sorted(ray_doc) == sorted(local_doc) == sorted(good + ["broken"])
    # the failing case: recorded with its one-sentence error (the same as the local engine's), no folder
    bad = ray_doc["broken"]
    assert bad["state"] == "failed" and "truncated" in bad["error"] and "\n" not in bad["error"]
    assert bad["error"] == local_doc["broken"]["error"] != WORKER_DIED
    assert not (out_ray / "broken").exists() and (out_ray / "logs" / "broken.log").read_text().count("FAILED") == 1
    assert _summary(out_ray)["broken"]["state"] == "failed"
    # the others: done, and equal (values) to the local engine's outputs
    assert len({ray_doc[cid]["pid"] for cid in good + ["broken"]}) == 2  # two actors, each kept its model
    for cid in good:
        c = ray_doc[cid]
        assert c["state"] == "done" and c["attempts"] == 1 and c["error"] is None
        assert [h["state"] for h in c["history"]] == ["done"]
        assert sorted(c["outputs"]) == sorted(p.name for p in (out_ray / cid).iterdir())
        assert sorted(c["outputs"]) == sorted(local_doc[cid]["outputs"])
        assert json.loads((out_ray / cid / "case.json").read_text())["attempt"] == 1
        assert (out_ray / c["log"]).is_file()
        assert c["findings"].keys() == local_doc[cid]["findings"].keys()
        np.testing.assert_allclose(list(c["findings"].values()), list(local_doc[cid]["findings"].values()),
                                   atol=1e-4)
        for name in c["outputs"]:
            if name.endswith(".nii.gz"):
                a, b = read_volume(out_ray / cid / name), read_volume(out_local / cid / name)
                assert a.same_geometry(b)
                np.testing.assert_allclose(a.array, b.array, atol=1e-5)
    assert float(_summary(out_ray)["ct00"]["max_liver"]) > 0.5
    assert _leftovers(out_ray) == []

    # resume after completion: done cases are skipped (folders untouched)
    stamps = {cid: (out_ray / cid / "case.json").stat().st_mtime_ns for cid in good}
    assert main(argv + ["--output", str(out_ray), "--engine", "ray", "--workers", "2", "--no-retry-failed"]) == 1
    again = json.loads(capsys.readouterr().out)
    assert again["skipped"] == 5 and again["ran"] == 0 and again["done"] == 4 and again["failed"] == 1
    assert {cid: (out_ray / cid / "case.json").stat().st_mtime_ns for cid in good} == stamps
    assert {cid: c["attempts"] for cid, c in _manifest(out_ray).items()} == {**{g: 1 for g in good}, "broken": 1}


def test_ray_address_needs_the_ray_engine(tmp_path, capsys):
    assert main(["batch", "nemesis-organs", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--ray-address", "auto"]) != 0
    assert "--ray-address needs --engine ray" in capsys.readouterr().err


def test_resource_plan_one_model_per_actor_gpu_aware():
    cpu_only = {"CPU": 8.0}
    assert plan_resources(2, "auto", cpu_only, [8.0]) == {"num_cpus": 4, "num_gpus": 0.0, "threads": 4,
                                                           "device": "cpu"}
    assert plan_resources(4, "cpu", {"CPU": 16.0, "GPU": 2.0}, [8.0, 8.0])["num_gpus"] == 0.0
    assert plan_resources(1, "auto", {"CPU": 16.0}, [8.0, 8.0])["num_cpus"] == 8  # fits on one node
    gpu = plan_resources(2, "auto", {"CPU": 16.0, "GPU": 4.0}, [16.0])
    assert gpu["num_gpus"] == 1.0 and gpu["device"] == "cuda"  # Ray's CUDA_VISIBLE_DEVICES picks the GPU
    shared = plan_resources(4, "cuda:1", {"CPU": 16.0, "GPU": 1.0}, [16.0])
    assert shared["num_gpus"] == 0.25 and shared["device"] == "cuda"
    with pytest.raises(PantheonError, match="no GPU"):
        plan_resources(2, "cuda", cpu_only, [8.0])
