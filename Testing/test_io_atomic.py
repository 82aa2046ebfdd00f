"""pantheon.io.atomic: a target holds the whole new content or its old content, never a part, and
no temporary file is left behind either way."""

import pytest

from pantheon.io.atomic import atomic_path, write_bytes_atomic, write_text_atomic


def test_new_content_replaces_old_whole(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    write_text_atomic(target, '{"new": 1}\n')
    assert target.read_text() == '{"new": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old weights")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".weights.safetensors.") and tmp.name.endswith(".tmp")
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]


def test_a_writer_given_the_path_creates_the_target(tmp_path):
    import numpy as np
    target = tmp_path / "features.npz"
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:  # numpy adds .npz to a bare path name; a file object keeps ours
            np.savez(f, x=np.arange(3))
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npz"]


def test_permissions_are_those_of_a_plain_write_or_the_mode_given(tmp_path):
    import os
    umask = os.umask(0)
    os.umask(umask)
    plain = write_text_atomic(tmp_path / "plain.json", "{}\n")  # not mkstemp's private 0600
    assert (plain.stat().st_mode & 0o777) == (0o666 & ~umask)
    shared = write_text_atomic(tmp_path / "shared.json", "{}\n", mode=0o644)
    assert (shared.stat().st_mode & 0o777) == 0o644
