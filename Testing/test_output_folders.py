"""Output folders that cannot mix patients (issue 14, section 5).

A single-case command refuses (one sentence, status 2, nothing touched, before any work) an output
folder that already holds results, unless --overwrite, which replaces the folder whole by a swap (a
failure leaves the old results as they were); a second command into a folder being written is
refused while the first holds its lock. Folders of the user's other files are written beside.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NEMESIS_FIXTURES
from test_nemesis_pipelines import ct_volume

from pantheon.cli import build_parser, main
from pantheon.errors import PantheonError
from pantheon.io import write_volume
from pantheon.outputs import FileLock, OutputFolder

WEIGHTS = str(NEMESIS_FIXTURES / "checkpoint.pt")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "ct.nii.gz"
    write_volume(ct_volume(shape=(30, 40, 44)), path)
    return path


def pca(ct, out, *extra):
    return ["nemesis", "pca", str(ct), "-o", str(out), "--weights", WEIGHTS, "--quiet", *extra]


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` (and the folder beside it) with its bytes and modification time."""
    return {str(p.relative_to(folder.parent)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.parent.rglob("*"))}


def earlier_results(folder: Path) -> None:
    """Another patient's organ maps, as an earlier run left them."""
    folder.mkdir(parents=True)
    (folder / "liver.nii.gz").write_bytes(b"patient A's liver")
    (folder / "spleen.nii.gz").write_bytes(b"patient A's spleen")
    (folder / "preview.png").write_bytes(b"patient A's picture")
    (folder / "result.json").write_text(json.dumps({"outputs": {
        "liver": {"kind": "heatmap", "file": "liver.nii.gz"}, "spleen": {"kind": "heatmap", "file": "spleen.nii.gz"}}}))


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pantheon: error: ") and "Traceback" not in err[0], err
    return err[0]


def no_model(monkeypatch):
    """Refusals come before any work: loading the model fails the test."""
    import pantheon.models.nemesis.cli as nemesis_cli

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output folder was checked")
    monkeypatch.setattr(nemesis_cli, "_engine", boom)


# ---------------------------------------------------------------------------- refusing and replacing
def test_a_folder_with_results_is_refused_and_untouched(ct_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "case"
    earlier_results(out)
    before = snapshot(out)
    no_model(monkeypatch)
    assert main(pca(ct_file, out)) == 2
    line = one_line(capsys)
    assert line == (f"pantheon: error: The output folder {out} already holds results (result.json of an earlier "
                    "run); choose a new folder, or add --overwrite to replace it.")
    assert snapshot(out) == before  # no lock file, no staging folder, not a byte changed


def test_overwrite_replaces_the_folder_whole(ct_file, tmp_path, capsys):
    out = tmp_path / "case"
    earlier_results(out)
    assert main(pca(ct_file, out, "--overwrite")) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["pca.nii.gz", "preview.png", "result.json"]  # no old liver
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]  # nothing staged or locked left beside it
    assert list(json.loads((out / "result.json").read_text())["outputs"]) == ["pca"]


def test_overwrite_that_fails_leaves_the_old_results(ct_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "case"
    earlier_results(out)
    before = snapshot(out)
    import errno

    import pantheon.preview as preview

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(preview, "save_preview", full)
    assert main(pca(ct_file, out, "--overwrite")) == 2
    assert "disk is full" in one_line(capsys)
    assert snapshot(out) == before


def test_a_swap_that_fails_puts_the_old_results_back(tmp_path):
    out = tmp_path / "case"
    earlier_results(out)
    before = snapshot(out)
    real = os.replace

    def fail_second(src, dst):
        if Path(src).name.startswith(".case.pantheon-partial-"):
            raise OSError("the new results cannot be moved in")
        return real(src, dst)
    folder = OutputFolder(out, overwrite=True).open()
    try:
        with pytest.raises(OSError, match="cannot be moved in"):
            with folder.staged() as stage:
                (stage / "result.json").write_text("{}")
                os.replace = fail_second
    finally:
        os.replace = real
        folder.close()
    assert snapshot(out) == before


def test_overwrite_never_deletes_what_pantheon_did_not_write(ct_file, tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    out = tmp_path / "case"
    earlier_results(out)
    (out / "notes.txt").write_text("the radiologist's notes")
    before = snapshot(out)
    assert main(pca(ct_file, out, "--overwrite")) == 2
    assert "holds files Pantheon did not write (notes.txt)" in one_line(capsys)
    assert snapshot(out) == before
    # the input inside the folder: Pantheon's own phantom from `pantheon demo`, used as the input
    demo = tmp_path / "demo"
    earlier_results(demo)
    write_volume(ct_volume(shape=(30, 40, 44)), demo / "phantom_ct.nii.gz")
    before = snapshot(demo)
    assert main(pca(demo / "phantom_ct.nii.gz", demo, "--overwrite")) == 2
    assert one_line(capsys) == (f"pantheon: error: --overwrite would delete {demo / 'phantom_ct.nii.gz'}, an input "
                                f"of this command inside {demo}; choose another output folder.")
    assert snapshot(demo) == before


def test_other_files_without_results_are_kept_beside_the_results(ct_file, tmp_path, capsys):
    out = tmp_path / "patient"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    (out / ".pantheon-partial-abc123").mkdir()  # a staging folder of a run that was killed
    assert main(pca(ct_file, out)) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "pca.nii.gz", "preview.png", "result.json"]
    assert (out / "notes.txt").read_text() == "kept"
    assert main(pca(ct_file, out)) == 2  # now it holds results
    assert "already holds results" in one_line(capsys)


def test_a_new_folder_appears_whole_and_a_failure_leaves_no_folders(ct_file, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "case"
    bad = tmp_path / "bad.nii.gz"
    write_volume(ct_volume().with_array(ct_volume().array * 0 + 5), bad)  # constant: refused by the pipeline
    assert main(pca(bad, out)) == 2
    assert "constant" in one_line(capsys)
    assert not (tmp_path / "a").exists()  # the folders made for it are gone again
    assert main(pca(ct_file, out)) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == ["case"]


def test_a_batch_folder_is_not_a_case_folder(ct_file, tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    out = tmp_path / "batch"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    (out / "summary.csv").write_text("case_id\n")
    assert main(pca(ct_file, out, "--overwrite")) == 2
    assert "holds a pantheon batch" in one_line(capsys)


# ---------------------------------------------------------------------------- locking
HOLD = """
import sys, time
from pantheon.outputs import OutputFolder
folder = OutputFolder(sys.argv[1]).open()
print("holding", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_a_folder_being_written_is_refused(ct_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "case"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert (tmp_path / ".case.pantheon-lock").exists()
        with monkeypatch.context() as m:
            no_model(m)
            assert main(pca(ct_file, out)) == 2
        assert one_line(capsys) == (f"pantheon: error: Another pantheon command is writing to {out}; wait for it to "
                                    "finish or choose another output folder.")
        assert not out.exists()
    finally:
        holder.kill()  # killed, not finished: the operating system drops its lock
        holder.wait(timeout=30)
    assert main(pca(ct_file, out)) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]  # its lock file is gone too


def test_file_lock_within_one_process_and_its_removal(tmp_path):
    path = tmp_path / ".x.lock"
    first = FileLock(path, "busy", remove=True).acquire()
    with pytest.raises(PantheonError, match="^busy$"):
        FileLock(path, "busy", remove=True).acquire()  # another open file: refused even in the same process
    first.release()
    assert not path.exists()
    with FileLock(path, "busy", remove=True):
        assert path.exists()
    assert not path.exists()


# ---------------------------------------------------------------------------- which commands
SINGLE_CASE = [["demo"], ["nemesis", "features", "x"], ["nemesis", "organs", "x"], ["nemesis", "pca", "x"],
               ["nemesis", "similar", "x", "--voxel", "1", "1", "1"],
               ["nemesis", "reconstruct", "x", "--voxel", "1", "1", "1"], ["nemesis", "train-probe"],
               ["tooth", "analyze", "x"], ["pni", "predict", "x"], ["pni", "synthesize", "x"]]
RESUMABLE = [["nemesis", "pretrain"], ["tooth", "train", "--stage", "detector"], ["pni", "train", "--stage", "seg"],
             ["batch", "nemesis-pca", "--input", "x"]]


@pytest.mark.parametrize("argv", SINGLE_CASE, ids=lambda a: " ".join(a[:2]))
def test_single_case_commands_take_overwrite(argv):
    args = build_parser().parse_args(argv + ["-o", "out", "--overwrite"])
    assert args.overwrite is True
    assert build_parser().parse_args(argv + ["-o", "out"]).overwrite is False


@pytest.mark.parametrize("argv", RESUMABLE, ids=lambda a: " ".join(a[:2]))
def test_resumable_run_folders_have_their_own_rules(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv + ["-o", "out", "--overwrite"])
    assert exc.value.code == 2 and "unrecognized arguments: --overwrite" in capsys.readouterr().err
    assert getattr(build_parser().parse_args(argv + ["-o", "out"]), "overwrite", None) is None


def test_a_resumable_run_folder_is_not_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text("{}")  # whatever it holds, pretraining resumes there
    code = main(["nemesis", "pretrain", "--phantoms", "1", "--batch-size", "1", "--embed-dim", "32", "--superpatch",
                 "32", "--steps", "1", "--device", "cpu", "--quiet", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "result.json").read_text() == "{}" and (out / "checkpoint.pt").is_file()
