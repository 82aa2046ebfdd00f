"""Ready for the Slicer Extensions Index: catalog entry, CMake metadata, license, line endings.

The entry ``ExtensionsIndex/Pantheon.json`` is validated against a copy of the index's schema
(``Testing/extensions_index``) and put through the checks of the index's
``scripts/check_description_files.py`` that need no network (Slicer/ExtensionsIndex @07f1d1b).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from extension_layout import MODEL_MODULES, find, png_size, read_cmake

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "ExtensionsIndex" / "Pantheon.json"
SCHEMA = Path(__file__).resolve().parent / "extensions_index" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
# ACCEPTED_EXTENSION_CATEGORIES of the index's scripts/check_description_files.py (same commit).
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis",
    "IGT", "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning",
    "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking",
    "Tractography", "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality",
    "VisSimTools", "Web System Tools",
}
# The index reads these from the CMakeLists.txt text, without CMake (check_cmakelists_content).
ICON_RE = re.compile(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', re.IGNORECASE | re.MULTILINE)
SCREENSHOTS_RE = re.compile(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', re.IGNORECASE | re.MULTILINE)
# md5 of https://www.apache.org/licenses/LICENSE-2.0.txt, the canonical Apache 2.0 text.
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cmake_vars() -> dict:
    return {c.args[0]: c.args[1:] for c in find(read_cmake(REPO / "CMakeLists.txt"), "set") if c.args}


def test_catalog_entry_validates_against_the_index_schema(entry):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the dev extras")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    assert entry["$schema"] == schema["$id"]
    errors = [e.message for e in validator.iter_errors(entry)]
    assert errors == []
    # The validator does reject what the index rejects.
    for bad in ({**entry, "homepage": "x"}, {k: v for k, v in entry.items() if k != "scm_url"},
                {**entry, "tier": 7}, {**entry, "scm_type": "svn"}):
        assert list(validator.iter_errors(bad)), bad


def test_catalog_entry_passes_the_index_offline_checks(entry, cmake_vars):
    assert b"\r" not in ENTRY.read_bytes(), "the index accepts LF line endings only"
    assert entry["category"] in ACCEPTED_CATEGORIES
    url = urllib.parse.urlsplit(entry["scm_url"])
    assert url.scheme in ("git", "https") and url.netloc
    name = ENTRY.stem
    assert not name.lower().startswith("slicer"), "the extension name should not start with 'Slicer'"
    repo_name = Path(url.path.rstrip("/")).stem
    assert repo_name.startswith(("Slicer", "SlicerExtension-", "SlicerExtension_")), \
        "the index expects the git repository name to start with 'Slicer'"
    project = find(read_cmake(REPO / "CMakeLists.txt"), "project")[0].args[0]
    assert project == name, "the entry's file name must be the CMake project (extension) name"
    license_names = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
    assert any((REPO / n).is_file() for n in license_names)


def test_cmake_metadata_agrees_with_the_catalog_entry(entry, cmake_vars):
    repo_url = cmake_vars["PANTHEON_REPOSITORY_URL"][0]
    assert entry["scm_url"] == repo_url + ".git"
    assert cmake_vars["EXTENSION_CATEGORY"] == [entry["category"]]
    assert cmake_vars["EXTENSION_DEPENDS"] == ["NA"] and entry["build_dependencies"] == []
    assert cmake_vars["EXTENSION_HOMEPAGE"][0].startswith(repo_url)
    description = cmake_vars["EXTENSION_DESCRIPTION"][0]
    assert description.strip() and "\n" not in description
    assert cmake_vars["EXTENSION_CONTRIBUTORS"][0].strip()

    # Icon and screenshots: literal URLs (found by the index's own patterns) into the repository
    # at the entry's revision, naming files of this checkout.
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    icon = ICON_RE.findall(text)
    shots = SCREENSHOTS_RE.findall(text)
    assert len(icon) == 1 and len(shots) == 1, "EXTENSION_ICONURL / EXTENSION_SCREENSHOTURLS must be literal strings"
    owner_repo = urllib.parse.urlsplit(repo_url).path.strip("/")
    raw = f"https://raw.githubusercontent.com/{owner_repo}/{entry['scm_revision']}/"
    assert icon[0] == cmake_vars["EXTENSION_ICONURL"][0] == raw + "Resources/Icons/Pantheon.png"
    assert png_size(REPO / "Resources" / "Icons" / "Pantheon.png") == (128, 128)
    urls = shots[0].split()
    assert urls == cmake_vars["EXTENSION_SCREENSHOTURLS"][0].split()
    # one screenshot per model panel (as in the README); tool modules (PantheonReview) have none
    assert urls == [f"{raw}Resources/Screenshots/{m}.png" for m in MODEL_MODULES]


def test_screenshots_exist():
    shots = [REPO / "Resources" / "Screenshots" / f"{m}.png" for m in MODEL_MODULES]
    missing = [str(p.relative_to(REPO)) for p in shots if not p.is_file()]
    if missing:
        pytest.skip(f"screenshots not made yet: {', '.join(missing)} (EXTENSION_SCREENSHOTURLS names them)")
    for p in shots:
        w, h = png_size(p)
        assert w >= 320 and h >= 200, f"{p.name} is {w}x{h}: too small to show a panel"


def test_license_is_the_apache_2_text_everywhere(cmake_vars):
    text = (REPO / "LICENSE.txt").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_MD5, "LICENSE.txt is not the verbatim Apache 2.0 text"
    assert cmake_vars["EXTENSION_LICENSE_FILE"] == ["${CMAKE_CURRENT_SOURCE_DIR}/LICENSE.txt"]
    if tomllib is None:
        pytest.skip("tomllib needs Python >= 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE.txt"]
    for path in (REPO / "pantheon" / "registry" / "cards").glob("*.json"):
        card = json.loads(path.read_text(encoding="utf-8"))
        if card["demo"]:  # demo weights are the project's own, under its license
            assert card.get("license") == "Apache-2.0", path.name


# --- line endings and repository size ------------------------------------------------------------


@pytest.fixture(scope="module")
def git_checkout() -> Path:
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: file lists and attributes come from git")
    return REPO


@pytest.fixture(scope="module")
def repo_files(git_checkout) -> list[Path]:
    """Tracked files plus new files not ignored, as the next commit would hold them."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True, timeout=60).stdout
    return [REPO / p for p in sorted(set(out.decode().split("\0"))) if p and (REPO / p).is_file()]


def _binary_attr(paths: list[Path]) -> dict[str, str]:
    rel = "\0".join(p.relative_to(REPO).as_posix() for p in paths) + "\0"
    out = subprocess.run(["git", "check-attr", "-z", "--stdin", "binary"], cwd=REPO, input=rel.encode(),
                         capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    return {out[i]: out[i + 2] for i in range(0, len(out) - 2, 3)}


def test_text_files_have_lf_line_endings_and_binaries_are_marked(repo_files):
    attrs = _binary_attr(repo_files)
    with_cr, unmarked = [], []
    for p in repo_files:
        rel = p.relative_to(REPO).as_posix()
        data = p.read_bytes()
        if b"\0" in data:
            if attrs.get(rel) != "set":
                unmarked.append(rel)
        elif attrs.get(rel) != "set" and b"\r" in data:
            with_cr.append(rel)
    assert with_cr == [], f"CR characters in text files (use LF line endings): {with_cr}"
    assert unmarked == [], f"binary files not marked binary in .gitattributes: {unmarked}"


def test_attribute_check_can_fail(git_checkout):
    attrs = _binary_attr([REPO / "weights.safetensors", REPO / "notes.md", REPO / "ct.nii.gz"])
    assert attrs == {"weights.safetensors": "set", "notes.md": "unspecified", "ct.nii.gz": "set"}


def test_repository_stays_under_the_index_size_limit(repo_files):
    total = sum(p.stat().st_size for p in repo_files)
    assert total < 100 * 2 ** 20, f"{total / 2 ** 20:.1f} MB: the index refuses repositories over 100 MB"
