"""Pantheon's synthetic sample cases: one per model, small files shipped with the package.

Why: a user or a demo presenter opens Slicer's Sample Data module, clicks once under "Pantheon"
and has something each panel can run on, without patient data and without a network. The same
files work from the command line (``pantheon nemesis organs``, ``pantheon tooth analyze``,
``pantheon pni predict``, ``pantheon lldm synthesize``).

=====================================  ===================================================  =============
sample name                            files (``data/``)                                    for module
=====================================  ===================================================  =============
PantheonAbdominalCTPhantom             CT (int16 HU) + 8 BTCV organs (.seg.nrrd)            NemesisSlicer
PantheonPanoramicXrayPhantom           panoramic dental X-ray (uint8, 0.273 mm pixels)      ToothAnalysis
PantheonLiverMRIPhantom                HBP-like liver MRI (int16) + liver, tumour, bile     PNIPredict
                                       duct, hepatic vessels (.seg.nrrd, 1/2/3/4)
PantheonLiverHCCMRIPhantom             HBP-like liver MRI (int16) + liver, portal vein,     LiverSynthesis
                                       hepatic vein, HCC (.seg.nrrd, 1/2/3/4: 3D-LLDM's)
=====================================  ===================================================  =============

The files, their thumbnails and ``data/manifest.json`` (SHA256 and geometry of every file) are
written by ``python -m pantheon.sampledata.build`` from the phantom generators in
:mod:`pantheon.synth`; it is deterministic, so the committed files can be checked against a rebuild.
:func:`pantheon.slicerbridge.sampledata.register_sample_data` registers them with Slicer.

This module is read inside the Slicer process: standard library only, Python 3.9 syntax. The data
is package data of ``pantheon``, so ``DATA_DIR`` is right both in a source checkout and in the
built extension (where the package sits next to the modules in qt-scripted-modules).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

__all__ = ["CATEGORY", "CATEGORY_TITLE", "DATA_DIR", "MANIFEST_NAME", "SampleFile", "SampleCase", "CASES",
           "case", "data_dir", "load_manifest", "checksum_of"]

#: Sample Data category (the key in ``slicer.modules.sampleDataSources``) and its displayed title.
CATEGORY = "Pantheon"
CATEGORY_TITLE = "Pantheon"
DATA_DIR = Path(__file__).resolve().parent / "data"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SampleFile:
    """One file of a case. ``load_file_type`` is the Slicer IO file type that reads it."""

    file_name: str  # also its name in Slicer's download cache, shared by all extensions: hence the prefix
    node_name: str
    load_file_type: str  # "VolumeFile" or "SegmentationFile"


@dataclass(frozen=True)
class SampleCase:
    """One sample: what Sample Data shows (``sample_name``, ``title`` under the thumbnail) and loads."""

    sample_name: str  # unique across all categories: SampleData.downloadSample(name) searches them all
    title: str
    module: str  # the Pantheon module the case is meant for
    files: Tuple[SampleFile, ...]
    thumbnail: str


CASES: Tuple[SampleCase, ...] = (
    SampleCase(
        "PantheonAbdominalCTPhantom", "Abdominal CT phantom\n(NEMESIS)", "NemesisSlicer",
        (SampleFile("PantheonAbdominalCTPhantom.nrrd", "PantheonAbdominalCTPhantom", "VolumeFile"),
         SampleFile("PantheonAbdominalCTPhantom_Organs.seg.nrrd", "PantheonAbdominalCTPhantom_Organs",
                    "SegmentationFile")),
        "PantheonAbdominalCTPhantom.png"),
    SampleCase(
        "PantheonPanoramicXrayPhantom", "Panoramic X-ray phantom\n(Tooth Analysis)", "ToothAnalysis",
        (SampleFile("PantheonPanoramicXrayPhantom.nrrd", "PantheonPanoramicXrayPhantom", "VolumeFile"),),
        "PantheonPanoramicXrayPhantom.png"),
    SampleCase(
        "PantheonLiverMRIPhantom", "Liver MRI phantom\n(PNI Predict)", "PNIPredict",
        (SampleFile("PantheonLiverMRIPhantom.nrrd", "PantheonLiverMRIPhantom", "VolumeFile"),
         SampleFile("PantheonLiverMRIPhantom_Segments.seg.nrrd", "PantheonLiverMRIPhantom_Segments",
                    "SegmentationFile")),
        "PantheonLiverMRIPhantom.png"),
    SampleCase(
        "PantheonLiverHCCMRIPhantom", "Liver HCC MRI phantom\n(Liver Synthesis)", "LiverSynthesis",
        (SampleFile("PantheonLiverHCCMRIPhantom.nrrd", "PantheonLiverHCCMRIPhantom", "VolumeFile"),
         SampleFile("PantheonLiverHCCMRIPhantom_Segments.seg.nrrd", "PantheonLiverHCCMRIPhantom_Segments",
                    "SegmentationFile")),
        "PantheonLiverHCCMRIPhantom.png"),
)


def case(sample_name: str) -> SampleCase:
    """The case called ``sample_name`` (KeyError naming the known ones otherwise)."""
    for c in CASES:
        if c.sample_name == sample_name:
            return c
    raise KeyError(f"no Pantheon sample {sample_name!r}; known: {', '.join(c.sample_name for c in CASES)}")


def data_dir(path: Union[str, Path, None] = None) -> Path:
    """``path`` or the package's own ``data`` folder."""
    return Path(path) if path is not None else DATA_DIR


def load_manifest(path: Union[str, Path, None] = None) -> Dict[str, dict]:
    """``manifest.json`` of a data folder: {file name: {"sha256", "bytes", ...}} under "files"."""
    with open(data_dir(path) / MANIFEST_NAME, encoding="utf-8") as f:
        return json.load(f)


def checksum_of(file_name: str, manifest: Optional[dict] = None) -> str:
    """Slicer's checksum string for a file, ``SHA256:<lower-case hex>`` (what SampleData verifies)."""
    m = load_manifest() if manifest is None else manifest
    return "SHA256:" + m["files"][file_name]["sha256"]
