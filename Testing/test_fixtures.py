"""The in-repository NEMESIS reference fixtures are the files their README describes."""

import hashlib
import re

from conftest import NEMESIS_FIXTURES


def test_nemesis_fixtures_match_their_readme_checksums():
    readme = (NEMESIS_FIXTURES / "README.md").read_text(encoding="utf-8")
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    on_disk = {p.name for p in NEMESIS_FIXTURES.iterdir() if p.name != "README.md"}
    assert set(listed) == on_disk == {"checkpoint.pt", "config.json", "golden.npz", "manifest_768.json"}
    for name, digest in listed.items():
        # A changed or Git-LFS-pointer file would silently change what the model tests compare against.
        assert hashlib.sha256((NEMESIS_FIXTURES / name).read_bytes()).hexdigest() == digest, name
