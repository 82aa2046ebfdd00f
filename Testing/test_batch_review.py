"""Review of a batch's pseudo-labels (issue 18 section 1): decisions, ratings and comments in the
batch folder, corrected segmentations beside the originals, a crash that loses nothing, a restart at
the first unreviewed case, the batch reports, and the reviewed set exported as a training set."""

import csv
import json

import numpy as np
import pytest

from pantheon.anatomy import BTCV_ORGANS
from pantheon.batch.review import ReviewSession
from pantheon.cli import main
from pantheon.errors import InputError, PantheonError
from pantheon.io import read_volume, write_volume
from pantheon.outputs import FileLock
from pantheon.synth import make_abdomen_phantom

SHAPE = (32, 48, 48)
VALUE = {name: value for name, value, *_ in BTCV_ORGANS}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A real nemesis-organs batch over three phantoms (one oblique), and their label maps."""
    root = tmp_path_factory.mktemp("review")
    cts, labels = root / "cts", {}
    cts.mkdir()
    for s in range(3):
        ct, lab = make_abdomen_phantom(s, shape=SHAPE, oblique=(s == 2))
        write_volume(ct, cts / f"ct{s}.nii.gz")
        labels[f"ct{s}"] = lab
    out = root / "out"
    code = main(["batch", "nemesis-organs", "--input", str(cts), "--output", str(out), "--quiet", "--organs", "liver"])
    assert code == 0
    return out, cts, labels


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def test_decisions_corrections_reports_and_restart(batch, tmp_path):
    out = _copy(batch[0], tmp_path / "out")
    labels = batch[2]
    session = ReviewSession(out, reviewer="dr-a")
    assert [c["case_id"] for c in session.cases()] == ["ct0", "ct1", "ct2"]
    assert session.next_unreviewed() == "ct0" and session.status()["unreviewed"] == 3
    files = session.files("ct0")
    assert files["input"].endswith("ct0.nii.gz") and "liver" in files["heatmaps"]

    session.record("ct0", "accepted", rating=4, comment="fine")
    liver_only = labels["ct1"].with_array((labels["ct1"].array == VALUE["liver"]).astype(np.uint8) * VALUE["liver"])
    entry = session.record("ct1", "corrected", rating=2, comment="liver edge fixed", corrected={"liver": liver_only})
    assert entry["corrected"] == ["ct1/liver.corrected.nii.gz"]
    fixed = read_volume(out / "ct1" / "liver.corrected.nii.gz")
    assert fixed.same_geometry(liver_only) and np.array_equal(fixed.array, liver_only.array)
    assert (out / "ct1" / "liver.nii.gz").is_file()  # the original stays

    # a fresh session (Slicer restarted) resumes at the first unreviewed case
    again = ReviewSession(out)
    assert again.next_unreviewed() == "ct2" and again.status() == {"cases": 3, "unreviewed": 1, "accepted": 1,
                                                                   "rejected": 0, "corrected": 1}
    # a second correction never overwrites the first; the earlier decision is kept in the history
    entry = again.record("ct1", "corrected", rating=3, corrected={"liver": liver_only})
    assert entry["corrected"] == ["ct1/liver.corrected-2.nii.gz"] and entry["history"][0]["rating"] == 2
    assert (out / "ct1" / "liver.corrected.nii.gz").is_file()

    rows = _summary(out)
    assert (rows["ct0"]["review"], rows["ct0"]["rating"], rows["ct0"]["review_comment"]) == ("accepted", "4", "fine")
    assert rows["ct1"]["review"] == "corrected" and rows["ct1"]["corrected"] == "ct1/liver.corrected-2.nii.gz"
    assert rows["ct2"]["review"] == "unreviewed"
    html = (out / "index.html").read_text()
    assert "review: 1 accepted, 1 corrected, 1 unreviewed" in html and "liver.corrected-2.nii.gz" in html

    # the batch rerun skips the done cases and keeps every review
    code = main(["batch", "nemesis-organs", "--input", str(batch[1]), "--output", str(out), "--quiet",
                 "--organs", "liver"])
    assert code == 0
    assert ReviewSession(out).case("ct1")["review"]["rating"] == 3


def test_a_crash_while_recording_loses_nothing(batch, tmp_path, monkeypatch):
    out = _copy(batch[0], tmp_path / "out")
    labels = batch[2]
    session = ReviewSession(out)
    session.record("ct0", "accepted", rating=5)
    before = (out / "manifest.json").read_bytes()
    import pantheon.batch.review as R

    def crash(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(R, "atomic_write_text", crash)
    with pytest.raises(OSError):
        session.record("ct1", "corrected", corrected={"liver": labels["ct1"]})
    monkeypatch.undo()
    assert (out / "manifest.json").read_bytes() == before  # the earlier decision intact
    assert not list((out / "ct1").glob("*corrected*"))  # no orphan correction
    assert ReviewSession(out).next_unreviewed() == "ct1"


def test_refusals_in_one_sentence(batch, tmp_path):
    out = _copy(batch[0], tmp_path / "out")
    session = ReviewSession(out)
    for call, words in [(lambda: session.record("ct0", "maybe"), "must be one of"),
                        (lambda: session.record("ct0", "accepted", rating=7), "from 1 to 5"),
                        (lambda: session.record("ct0", "corrected"), "needs the corrected"),
                        (lambda: session.record("nope", "accepted"), "no case 'nope'"),
                        (lambda: session.record("ct0", "corrected", corrected={"liver": batch[2]["ct2"]}),
                         "not on the grid"),  # another case's grid
                        (lambda: ReviewSession(tmp_path), "not a Pantheon batch output folder")]:
        with pytest.raises(InputError, match=words) as info:
            call()
        assert "\n" not in str(info.value)
    lock = FileLock(out / ".batch.lock", busy="busy").acquire()  # a batch is running in the folder
    try:
        with pytest.raises(PantheonError, match="A batch is writing"):
            session.record("ct0", "accepted")
    finally:
        lock.release()


def test_cli_record_status_and_export_as_a_training_set(batch, tmp_path, capsys):
    out = _copy(batch[0], tmp_path / "out")
    labels = batch[2]
    for cid in ("ct0", "ct2"):
        write_volume(labels[cid], tmp_path / f"{cid}-fixed.nii.gz")
        assert main(["review", "record", str(out), cid, "--corrected", f"liver={tmp_path / f'{cid}-fixed.nii.gz'}",
                     "--rating", "3", "--comment", "redrawn"]) == 0
    assert main(["review", "record", str(out), "ct1", "--reject", "--rating", "1"]) == 0
    capsys.readouterr()
    assert main(["review", "status", str(out)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["corrected"] == 2 and status["rejected"] == 1 and status["next"] is None

    train = tmp_path / "train"
    assert main(["review", "export", str(out), "-o", str(train)]) == 0
    rows = list(csv.DictReader(open(train / "cases.csv")))
    assert [r["case_id"] for r in rows] == ["ct0", "ct2"]
    for r in rows:
        img, lab = read_volume(train / r["image"]), read_volume(train / r["label"])
        assert img.same_geometry(lab, atol=1e-4)
        assert np.array_equal(lab.array, labels[r["case_id"]].array)
    # the trainers read it (--data: images/ and labels/, or the CSV)
    from pantheon.data.pairs import read_pairs
    for source in (train, train / "cases.csv"):
        pairs = read_pairs(source)
        assert len(pairs) == 2 and all(p[0].same_geometry(p[1], atol=1e-4) for p in pairs)

    # a non-empty export folder, and nothing to export, are refused
    assert main(["review", "export", str(out), "-o", str(train)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["review", "export", str(out), "-o", str(tmp_path / "acc"), "--decisions", "accepted"]) == 2
    assert "No case" in capsys.readouterr().err
