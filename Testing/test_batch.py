"""``pantheon batch``: resumable, crash-safe batch runs with one folder per case.

Every run here is a real batch (spawned worker processes, bundled demo weights) on tiny phantoms.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pantheon.batch import discover_cases, run_batch
from pantheon.cli import main
from pantheon.errors import PantheonError
from pantheon.io import Volume, read_volume, write_volume
from pantheon.synth import make_abdomen_phantom

SHAPE = (32, 48, 48)
ORGANS = ["aorta", "gallbladder", "spleen", "left_kidney", "right_kidney", "liver", "stomach", "pancreas"]


def _phantoms(folder: Path, n: int, seed0: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n):  # every third one oblique: outputs must keep the input's lattice
        ct, _ = make_abdomen_phantom(seed0 + s, shape=SHAPE, oblique=(s % 3 == 2))
        write_volume(ct, folder / f"ct{s:02d}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    return _phantoms(tmp_path_factory.mktemp("six"), 6)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _hidden_leftovers(out: Path):
    return [str(p) for p in out.rglob("*") if p.name.startswith((".partial", ".trash", ".pantheon-partial"))
            or p.name.endswith(".tmp")]


def _summary(out: Path):
    with open(out / "summary.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_kill_9_mid_batch_then_rerun_finishes_every_case_exactly_once(six, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pantheon", "batch", "nemesis-organs", "--input", str(six), "--output", str(out),
           "--workers", "1", "--quiet"]
    env = dict(os.environ, PANTHEON_BATCH_TEST_CASE_DELAY="0.4")  # each case pauses half-written
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        try:
            done = sum(c["state"] == "done" for c in _manifest(out)["cases"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 2 or proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"batch ended before it could be killed: {proc.stderr.read().decode()}"
    time.sleep(0.25)  # land inside the next case (its folder is being staged)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its worker, no clean-up at all
    proc.wait()
    first = _manifest(out)
    first_done = {c["case_id"]: c for c in first["cases"] if c["state"] == "done"}
    assert 1 <= len(first_done) < 6
    stamps = {cid: (out / cid / "case.json").stat().st_mtime_ns for cid in first_done}
    # a killed batch leaves no half case under a final name
    assert all(json.loads((out / cid / "case.json").read_text())["attempt"] == 1 for cid in first_done)

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["done"] == 6 and summary["skipped"] == len(first_done)
    doc = _manifest(out)
    assert len(doc["cases"]) == 6 and {c["state"] for c in doc["cases"]} == {"done"}
    for c in doc["cases"]:
        completions = [h for h in c["history"] if h["state"] == "done"]
        assert len(completions) == 1, c  # done exactly once
        assert all(h["state"] in ("done", "interrupted") for h in c["history"])
        if c["case_id"] in first_done:
            assert c["attempts"] == 1 and (out / c["case_id"] / "case.json").stat().st_mtime_ns == stamps[c["case_id"]]
        assert sorted(c["outputs"]) == sorted(p.name for p in (out / c["case_id"]).iterdir())
        assert json.loads((out / c["case_id"] / "case.json").read_text())["attempt"] == c["attempts"]
        assert (out / c["log"]).is_file()
    assert _hidden_leftovers(out) == []
    assert set(_summary(out)) == {f"ct{s:02d}" for s in range(6)}
    assert "thumbnail.png" in (out / "index.html").read_text()


@pytest.mark.slow
def test_failed_cases_are_recorded_the_rest_completes_and_a_rerun_redoes_them(six, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("ct00.nii.gz", "ct02.nii.gz"):
        (src / name).write_bytes((six / name).read_bytes())
    good = (six / "ct01.nii.gz").read_bytes()
    (src / "broken.nii.gz").write_bytes(good[:2000])  # truncated NIfTI
    write_volume(Volume(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)), src / "photo.png")  # 2D
    (src / "notes.txt").write_text("not an image")  # ignored
    out = tmp_path / "out"
    argv = ["batch", "nemesis-organs", "--input", str(src), "--output", str(out), "--quiet"]
    assert main(argv) == 1  # some cases failed, the others are written: status 1 and a warning
    err = capsys.readouterr().err
    assert "warning: 2 of 4 cases failed" in err and f"the 2 done are written in {out}" in err
    rows = _summary(out)
    assert set(rows) == {"ct00", "ct02", "broken", "photo"}
    assert rows["ct00"]["state"] == rows["ct02"]["state"] == "done"
    assert rows["broken"]["state"] == "failed" and "truncated" in rows["broken"]["error"]
    assert rows["photo"]["state"] == "failed" and "2D" in rows["photo"]["error"]
    assert float(rows["ct00"]["max_liver"]) > 0.5
    assert not (out / "broken").exists() and (out / "logs" / "broken.log").read_text().count("FAILED") == 1
    assert _hidden_leftovers(out) == []

    (src / "broken.nii.gz").write_bytes(good)  # the annotator fixes the file
    assert main(argv + ["--strict"]) == 2  # photo.png still fails -> an error with --strict
    assert "1 of 4 cases failed" in capsys.readouterr().err
    doc = {c["case_id"]: c for c in _manifest(out)["cases"]}
    assert doc["broken"]["state"] == "done" and doc["broken"]["attempts"] == 2
    assert doc["photo"]["attempts"] == 2 and doc["ct00"]["attempts"] == 1  # done cases skipped
    assert main(argv + ["--no-retry-failed"]) == 1  # the folder still holds a failed case
    capsys.readouterr()
    assert {c["case_id"]: c["attempts"] for c in _manifest(out)["cases"]}["photo"] == 2


@pytest.mark.slow
def test_csv_input_two_workers_equal_one_worker_and_outputs_keep_the_input_geometry(six, tmp_path, capsys):
    table = tmp_path / "cases.csv"
    table.write_text("case_id,image\nA,%s\nB,%s\n,%s\n" % (six / "ct00.nii.gz", six / "ct02.nii.gz",
                                                          six / "ct04.nii.gz"))
    assert [c.case_id for c in discover_cases(table)] == ["A", "B", "ct04"]
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"w{n}"
        assert main(["batch", "nemesis-organs", "--input", str(table), "--output", str(outs[n]), "--workers", str(n),
                     "--organs", "liver", "spleen", "--quiet"]) == 0
    capsys.readouterr()
    for cid, src in (("A", "ct00"), ("B", "ct02"), ("ct04", "ct04")):
        ct = read_volume(six / f"{src}.nii.gz")
        names = sorted(p.name for p in (outs[1] / cid).iterdir())
        assert names == ["case.json", "liver.nii.gz", "result.json", "spleen.nii.gz", "thumbnail.png"]
        for organ in ("liver", "spleen"):
            a, b = read_volume(outs[1] / cid / f"{organ}.nii.gz"), read_volume(outs[2] / cid / f"{organ}.nii.gz")
            assert a.same_geometry(ct) and b.same_geometry(ct)
            np.testing.assert_allclose(a.array, b.array, atol=1e-5)
    f1 = {c["case_id"]: c["findings"] for c in _manifest(outs[1])["cases"]}
    f2 = {c["case_id"]: c["findings"] for c in _manifest(outs[2])["cases"]}
    assert f1.keys() == f2.keys() and all(np.allclose(list(f1[k].values()), list(f2[k].values()), atol=1e-4)
                                          for k in f1)


def test_case_discovery_and_refusals(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a b.nii.gz").write_bytes(b"x")
    (d / "a b.nrrd").write_bytes(b"x")
    (d / "series1").mkdir()
    (d / ".hidden.nii.gz").write_bytes(b"x")
    (d / "readme.txt").write_text("x")
    assert [c.case_id for c in discover_cases(d)] == ["a_b", "a_b-nrrd", "series1"]
    with pytest.raises(PantheonError, match="No images"):
        discover_cases(tmp_path / "d" / "series1")
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nx.nii.gz\n")
    with pytest.raises(PantheonError, match="'image'"):
        discover_cases(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("image,case_id\nx.nii.gz,a\ny.nii.gz,a\n")
    with pytest.raises(PantheonError, match="twice"):
        discover_cases(dup)
    with pytest.raises(PantheonError, match="Unknown batch pipeline"):
        run_batch("nope", d, tmp_path / "o")


def test_a_folder_from_another_pipeline_or_other_options_is_refused(tmp_path):
    from pantheon.batch.manifest import Manifest
    out = tmp_path / "o"
    out.mkdir()
    Manifest(out, "nemesis-organs", {"organs": None}).save()
    with pytest.raises(PantheonError, match="nemesis-organs"):
        Manifest.open(out, "nemesis-pca", {})
    with pytest.raises(PantheonError, match="organs"):
        Manifest.open(out, "nemesis-organs", {"organs": ["liver"]})
