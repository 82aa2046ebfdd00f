"""Rebuild Pantheon's sample cases (files, thumbnails, manifest) from the phantom generators.

    python -m pantheon.sampledata.build              # rewrite pantheon/sampledata/data/
    python -m pantheon.sampledata.build -o DIR       # somewhere else
    python -m pantheon.sampledata.build --check      # rebuild in a temporary folder, compare bytes

Deterministic: fixed seeds and grids, NRRD written with pynrrd (gzip through zlib, which puts no
time stamp in the stream), thumbnails with Pillow (no metadata). A rebuild with the same numpy /
scipy / zlib / Pillow gives the same bytes; ``--check`` says which file differs otherwise.

Choices (sizes: each file well under 1 MB; zlib gains little on noisy 16-bit data, so grid size
is the lever):

- CT: :func:`pantheon.synth.make_abdomen_phantom` seed 0, 48 x 128 x 128 voxels of 2.5 x 2.5 x
  5 mm (a routine 5 mm abdominal reconstruction over 320 x 320 x 240 mm), LPS storage, int16 HU.
  The air *outside the body* is set to exactly -1000 HU (noise-free, like a scanner's padding):
  880 KB -> 530 KB, and NEMESIS never sees it (its input window clips everything below -175 HU;
  the organ maps are identical with and without). Lungs and bowel gas keep their noise. Labels:
  the 8 BTCV organs of the NEMESIS probe (names and codes of :data:`pantheon.anatomy.BTCV_ORGANS`,
  so probe training accepts the segmentation as is); the phantom's other labels (oesophagus, IVC,
  portal vein, adrenals) are left out.
- OPG: :func:`pantheon.synth.opg.make_opg` seed 2, 512 x 1024 uint8, pixel 280/1024 mm (kept in
  the NRRD, so Tooth Analysis reports caries areas in mm2; a PNG would lose it). An adult with 28
  teeth, caries on 23, 27 and 36, no anomaly.
- MRI: :func:`pantheon.synth.mri_phantom.make_liver_mri_phantom` seed 0, PNI positive, 36 x 100 x
  120 voxels of 2.5 x 2.5 x 4.75 mm (the generator's 300 x 250 x 171 mm field), LPS, rounded to
  int16 (arbitrary units, 0..~1500, as scanners store them). Labels as the phantom makes them:
  1 liver, 2 tumour (NeoSeg's ids), 3 bile duct, 4 hepatic vessels (the NeoNet pipelines ignore 3
  and 4); segment names "liver"/"tumour" are what PNI Predict's synthesis finds automatically.
- HCC MRI: :func:`pantheon.synth.hcc_mri_phantom.make_hcc_mri_phantom` seed 0 with two HCCs (37
  and 10 mm), on the MRI case's grid, LPS, int16. Labels are the 3D-LLDM set (1 liver, 2 portal
  vein, 3 hepatic vein, 4 HCC), named and coded as Liver Synthesis reads them, so "Synthesize"
  works on it as loaded and "remove HCC 2" has a small second tumour to take away.

Seeds were picked for a clear demo with the bundled demo weights: CT seed 0 as it came (organ-map
AUROCs are alike across seeds); OPG among seeds 0-39 (all 28 teeth found with their FDI numbers,
plus one duplicate box; caries found on 2 of 3 teeth with one false caries, where most seeds have
several); MRI among PNI-positive seeds 0-15 (a 43 mm tumour NeoSeg finds with Dice ~0.9; PNI
probability ~1.0 from the label map and 0.71 end to end through NeoSeg -- that last value moves
between 0.5 and 0.8 with small grid changes: the demo weights' end-to-end PNI is fragile, see the
README). Testing/test_sampledata.py checks these results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import CASES, DATA_DIR, MANIFEST_NAME, case

CT_SEED, CT_SHAPE, CT_SPACING = 0, (48, 128, 128), (2.5, 2.5, 5.0)
OPG_SEED, OPG_SIZE = 2, (512, 1024)
MRI_SEED, MRI_SHAPE, MRI_SPACING, MRI_PNI = 0, (36, 100, 120), (2.5, 2.5, 4.75), True
HCC_SEED, HCC_COUNT = 0, 2
AIR_HU = -1000
THUMBNAIL_SIZE = (288, 260)  # (width, height) of Slicer's own sample thumbnails (e.g. CTLiver.png)

# liver / tumour as in pantheon.pipelines.neonet.SEGMENTS (that module is not imported here: its
# package pulls torch); bile duct SCT 28273000 as in Slicer's DICOM anatomic region list.
MRI_SEGMENTS = ((1, "liver", (0.87, 0.51, 0.28), ("SCT", "10200004", "Liver")),
                (2, "tumour", (0.80, 0.20, 0.55), ("SCT", "108369006", "Neoplasm")),
                (3, "bile duct", (0.0, 0.57, 0.12), ("SCT", "28273000", "Bile duct")),
                (4, "hepatic vessels", (0.0, 0.59, 0.81), None))


def hcc_segments():
    """(value, name, colour, code) of the 3D-LLDM labels: 3D-LLDM's own segments, names as a reader
    of the segment list would write them ("portal vein", "HCC")."""
    from ..models.lldm.synthesis import label_segments
    return tuple((s.value, "HCC" if s.name == "hcc" else s.name.replace("_", " "), tuple(s.color), s.code)
                 for s in label_segments())


# ---------------------------------------------------------------------------- writers
def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _drop_header_comments(path: Path) -> Path:
    """Remove the ``#`` comment lines of a NRRD header in place: pynrrd writes the time of writing
    there, which would make every rebuild differ. Comments carry no data (NRRD spec)."""
    data = Path(path).read_bytes()
    end = data.index(b"\n\n") + 1  # the header ends with an empty line
    lines = data[:end].split(b"\n")
    kept = b"\n".join(line for line in lines if not line.startswith(b"#"))
    Path(path).write_bytes(kept + data[end:])
    return Path(path)


def write_nrrd(volume, path: Path, content: str) -> Path:
    """A gzip NRRD in LPS with the volume's exact geometry (pynrrd; deterministic bytes)."""
    import nrrd
    header = OrderedDict()
    header["space"] = "left-posterior-superior"
    header["space directions"] = (np.asarray(volume.direction) @ np.diag(volume.spacing)).T  # row n = axis n
    header["kinds"] = ["domain", "domain", "domain"]
    header["endian"] = "little"
    header["encoding"] = "gzip"
    header["content"] = content
    header["space origin"] = np.asarray(volume.origin, dtype=float)
    arr = np.ascontiguousarray(volume.array)
    nrrd.write(str(path), arr.astype(arr.dtype.newbyteorder("<"), copy=False), header, index_order="C",
               compression_level=9)
    return _drop_header_comments(Path(path))


def _write_seg(labels, segments, path: Path) -> Path:
    from ..io.segnrrd import write_seg_nrrd
    from ..results import LabelOutput, Segment
    segs = [Segment(v, name, color, code) for v, name, color, code in segments]
    out = write_seg_nrrd(LabelOutput(labels, segs), path)
    os.chmod(out, 0o644)  # shipped read-only data: the same mode whatever the builder's umask
    return _drop_header_comments(out)


# ---------------------------------------------------------------------------- cases
def make_ct():
    """(CT Volume int16 with the exterior air flattened, organ label Volume, info)."""
    from scipy import ndimage

    from ..synth import make_abdomen_phantom
    ct, lab = make_abdomen_phantom(CT_SEED, shape=CT_SHAPE, spacing=CT_SPACING, orientation="LPS")
    a = ct.array.copy()
    # body = what is enclosed by tissue in each axial slice (k is axial: LPS storage), grown by two
    # voxels in-plane so the blurred skin edge stays as rendered
    body = np.stack([ndimage.binary_fill_holes(s > -500) for s in a])
    body = ndimage.binary_dilation(body, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool), iterations=2)
    a[~body] = AIR_HU
    info = {"seed": CT_SEED, "generator": "pantheon.synth.make_abdomen_phantom",
            "exterior_air_hu": AIR_HU, "body_fraction": round(float(body.mean()), 4)}
    return ct.with_array(a), lab, info


def make_opg_case():
    """(OPG Volume uint8, SyntheticOPG with the ground truth, info)."""
    from ..synth.opg import make_opg
    o = make_opg(OPG_SEED, size=OPG_SIZE)
    info = {"seed": OPG_SEED, "generator": "pantheon.synth.opg.make_opg",
            "teeth_fdi": [int(t["fdi"]) for t in o.teeth],
            "caries_fdi": [int(t["fdi"]) for t in o.teeth if t["caries"]],
            "anomalies": {str(t["fdi"]): t["anomaly"] for t in o.teeth if t["anomaly"]}}
    return o.image, o, info


def make_mri():
    """(MRI Volume int16, label Volume uint8 0..4, info)."""
    from ..synth.mri_phantom import make_liver_mri_phantom
    mri, lab, meta = make_liver_mri_phantom(MRI_SEED, shape=MRI_SHAPE, spacing=MRI_SPACING, orientation="LPS",
                                            pni=MRI_PNI)
    a = np.clip(np.rint(mri.array), 0, np.iinfo(np.int16).max).astype(np.int16)
    info = {"seed": MRI_SEED, "generator": "pantheon.synth.mri_phantom.make_liver_mri_phantom",
            "pni": bool(meta["pni"]), "pni_extent_mm": round(meta["pni_extent_mm"], 2),
            "tumour_diameter_mm": round(meta["tumour_diameter_mm"], 2),
            "tumour_volume_ml": round(meta["tumour_volume_ml"], 3),
            "tumour_centre_lps": [round(v, 2) for v in meta["tumour_centre_lps"]],
            "labels": {str(v): name for v, name, _c, _code in MRI_SEGMENTS}}
    return mri.with_array(a), lab, info


def make_hcc_mri():
    """(MRI Volume int16, 3D-LLDM label Volume uint8 0..4, info)."""
    from ..synth.hcc_mri_phantom import make_hcc_mri_phantom
    mri, lab, meta = make_hcc_mri_phantom(HCC_SEED, shape=MRI_SHAPE, spacing=MRI_SPACING, orientation="LPS",
                                          n_hcc=HCC_COUNT)
    a = np.clip(np.rint(mri.array), 0, np.iinfo(np.int16).max).astype(np.int16)
    info = {"seed": HCC_SEED, "generator": "pantheon.synth.hcc_mri_phantom.make_hcc_mri_phantom",
            "hcc": [{"centre_lps": [round(v, 2) for v in h["centre_lps"]], "diameter_mm": round(h["diameter_mm"], 2)}
                    for h in meta["hcc"]],
            "hcc_volume_ml": round(meta["hcc_volume_ml"], 3),
            "labels": {str(v): name for v, name, _c, _code in hcc_segments()}}
    return mri.with_array(a), lab, info


# ---------------------------------------------------------------------------- thumbnails
def _to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.rint(np.clip((a.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _on_canvas(img, size=THUMBNAIL_SIZE):
    """``img`` scaled to fit ``size`` (aspect kept), centred on black."""
    from PIL import Image
    w, h = img.size
    s = min(size[0] / w, size[1] / h)
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    canvas = Image.new("RGB", size, (0, 0, 0))
    canvas.paste(img.convert("RGB"), ((size[0] - img.size[0]) // 2, (size[1] - img.size[1]) // 2))
    return canvas


def _display_size(volume, rows: int, cols: int) -> Tuple[float, float]:
    """Size (w, h) in mm of a (rows, cols) axial slice, to show it with square millimetres."""
    si, sj = volume.spacing[:2]
    return cols * si, rows * sj


def thumbnail_ct(ct, lab):
    """Axial slice showing the most of the 8 probe organs, cropped to the body; abdomen window
    (level 40, width 400 HU).

    LPS storage: columns run to the patient's left, rows to posterior, which is Slicer's axial view
    (patient right on the screen's left, anterior up)."""
    from PIL import Image

    from ..anatomy import BTCV_ORGANS
    counts = np.stack([(lab.array == idx).sum(axis=(1, 2)) for _n, idx, *_ in BTCV_ORGANS], axis=1)
    score = (counts >= 30).sum(axis=1) * 10 ** 6 + counts.sum(axis=1)  # organs shown first, then their area
    k = int(np.argmax(score))
    rows, cols = np.nonzero(ct.array[k] > -500)
    m = 3  # voxels of air around the body
    r0, r1 = max(0, rows.min() - m), min(ct.shape[1], rows.max() + m + 1)
    c0, c1 = max(0, cols.min() - m), min(ct.shape[2], cols.max() + m + 1)
    sl = ct.array[k, r0:r1, c0:c1]
    img = Image.fromarray(_to_uint8(sl, 40 - 200, 40 + 200), "L")
    if ct.spacing[0] != ct.spacing[1]:  # non-square pixels: show millimetres square
        w, h = _display_size(ct, *sl.shape)
        img = img.resize((round(w / min(ct.spacing[:2])), round(h / min(ct.spacing[:2]))), Image.LANCZOS)
    return _on_canvas(img)


def thumbnail_opg(image, opg=None):
    """The dentition with some jaw around it (from the phantom's tooth boxes), 1.6:1, so the teeth
    stay readable at thumbnail size; the whole image without ``opg``."""
    from PIL import Image
    a = np.asarray(image.array[0])
    if opg is not None and opg.teeth:
        boxes = np.array([t["box"] for t in opg.teeth], dtype=float)  # (x0, y0, x1, y1), half-open
        H, W = a.shape
        x0, x1 = max(0.0, boxes[:, 0].min() - 0.06 * W), min(float(W), boxes[:, 2].max() + 0.06 * W)
        h = min(float(H), (x1 - x0) / 1.6)
        yc = (boxes[:, 1].min() + boxes[:, 3].max()) / 2
        y0 = min(max(0.0, yc - h / 2), H - h)
        a = a[int(round(y0)):int(round(y0 + h)), int(round(x0)):int(round(x1))]
    return _on_canvas(Image.fromarray(np.ascontiguousarray(a), "L"))


def thumbnail_mri(mri, lab, tumour_value=2, colour=MRI_SEGMENTS[1][2]):
    """Axial slice through the most tumour (label ``tumour_value``), window 0..99.5th percentile,
    tumour outlined in ``colour`` (its segment's)."""
    from PIL import Image
    from scipy import ndimage
    tumour = lab.array == tumour_value
    k = int(np.argmax(tumour.sum(axis=(1, 2))))
    sl = mri.array[k].astype(np.float64)
    hi = float(np.percentile(sl, 99.5))
    rows, cols = sl.shape
    w, h = _display_size(mri, rows, cols)
    scale = min(THUMBNAIL_SIZE[0] / w, THUMBNAIL_SIZE[1] / h)
    size = (round(w * scale), round(h * scale))
    gray = Image.fromarray(_to_uint8(sl, 0.0, hi), "L").resize(size, Image.LANCZOS).convert("RGB")
    mask = np.asarray(Image.fromarray(tumour[k].astype(np.uint8) * 255, "L").resize(size, Image.NEAREST)) > 0
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    rgb = np.asarray(gray).copy()
    rgb[edge] = [round(255 * c) for c in colour]
    return _on_canvas(Image.fromarray(rgb, "RGB"))


def _save_png(img, path: Path) -> Path:
    img.save(str(path), format="PNG", optimize=False)  # no text chunks, no time stamp
    return Path(path)


# ---------------------------------------------------------------------------- build / check
def _geometry(volume) -> dict:
    return {"shape_kji": [int(s) for s in volume.shape], "spacing": [float(s) for s in volume.spacing],
            "origin": [round(float(o), 6) for o in volume.origin],
            "direction": np.asarray(volume.direction).round(9).tolist(), "dtype": str(volume.array.dtype)}


def build(out_dir=None) -> dict:
    """Write every sample file, thumbnail and the manifest into ``out_dir`` (default the package's
    data folder); returns the manifest."""
    from ..anatomy import BTCV_ORGANS
    out = Path(out_dir) if out_dir is not None else DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    files: Dict[str, dict] = {}
    cases: Dict[str, dict] = {}

    def record(path: Path, **extra) -> None:
        files[path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size, **extra}

    c = case("PantheonAbdominalCTPhantom")
    ct, lab, info = make_ct()
    p = write_nrrd(ct, out / c.files[0].file_name,
                   "Pantheon synthetic abdominal CT phantom (HU; not patient data)")
    record(p, **_geometry(ct), value_range=[int(ct.array.min()), int(ct.array.max())])
    organs = [(idx, name, color, ("SCT", code, meaning)) for name, idx, color, code, meaning in BTCV_ORGANS]
    p = _write_seg(lab, organs, out / c.files[1].file_name)
    record(p, **_geometry(lab), segments={name: idx for name, idx, *_ in BTCV_ORGANS})
    record(_save_png(thumbnail_ct(ct, lab), out / c.thumbnail))
    cases[c.sample_name] = info

    c = case("PantheonPanoramicXrayPhantom")
    image, opg, info = make_opg_case()
    p = write_nrrd(image, out / c.files[0].file_name,
                   "Pantheon synthetic panoramic dental X-ray (not patient data)")
    record(p, **_geometry(image))
    record(_save_png(thumbnail_opg(image, opg), out / c.thumbnail))
    cases[c.sample_name] = info

    c = case("PantheonLiverMRIPhantom")
    mri, lab, info = make_mri()
    p = write_nrrd(mri, out / c.files[0].file_name,
                   "Pantheon synthetic hepatobiliary-phase liver MRI with a tumour (not patient data)")
    record(p, **_geometry(mri), value_range=[int(mri.array.min()), int(mri.array.max())])
    p = _write_seg(lab, MRI_SEGMENTS, out / c.files[1].file_name)
    record(p, **_geometry(lab), segments={name: v for v, name, _c, _code in MRI_SEGMENTS})
    record(_save_png(thumbnail_mri(mri, lab), out / c.thumbnail))
    cases[c.sample_name] = info

    c = case("PantheonLiverHCCMRIPhantom")
    mri, lab, info = make_hcc_mri()
    segments = hcc_segments()
    p = write_nrrd(mri, out / c.files[0].file_name,
                   "Pantheon synthetic hepatobiliary-phase liver MRI with two HCCs (not patient data)")
    record(p, **_geometry(mri), value_range=[int(mri.array.min()), int(mri.array.max())])
    p = _write_seg(lab, segments, out / c.files[1].file_name)
    record(p, **_geometry(lab), segments={name: v for v, name, _c, _code in segments})
    hcc = next(s for s in segments if s[1] == "HCC")
    record(_save_png(thumbnail_mri(mri, lab, hcc[0], hcc[2]), out / c.thumbnail))
    cases[c.sample_name] = info

    manifest = {"about": "Written by `python -m pantheon.sampledata.build`; do not edit by hand. Synthetic "
                         "phantoms, not patient data.",
                "cases": cases, "files": files}
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    (out / MANIFEST_NAME).write_bytes(text.encode("utf-8"))  # LF on every platform, as git checks it out
    return manifest


def expected_files() -> List[str]:
    """Every file name the build writes (cases' files, thumbnails, the manifest)."""
    names = [f.file_name for c in CASES for f in c.files] + [c.thumbnail for c in CASES]
    return names + [MANIFEST_NAME]


def check(data_dir=None) -> List[str]:
    """Rebuild in a temporary folder and compare with ``data_dir``; the differences, one line each."""
    ref = Path(data_dir) if data_dir is not None else DATA_DIR
    tmp = Path(tempfile.mkdtemp(prefix="pantheon-sampledata-"))
    try:
        build(tmp)
        problems = []
        for name in expected_files():
            a, b = ref / name, tmp / name
            if not a.is_file():
                problems.append(f"{name}: missing in {ref}")
            elif a.read_bytes() != b.read_bytes():
                problems.append(f"{name}: differs from a rebuild (sha256 {_sha256(a)[:12]} != {_sha256(b)[:12]})")
        return problems
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pantheon.sampledata.build", description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", help=f"output folder (default {DATA_DIR})")
    ap.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare, write nothing")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.output)
        for line in problems:
            print(line, file=sys.stderr)
        print("sample data: " + ("up to date" if not problems else f"{len(problems)} file(s) differ"))
        return 1 if problems else 0
    manifest = build(args.output)
    out = Path(args.output) if args.output else DATA_DIR
    for name, entry in sorted(manifest["files"].items()):
        print(f"{os.path.join(str(out), name)}  {entry['bytes'] / 1024:.0f} KB  sha256 {entry['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
