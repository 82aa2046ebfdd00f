"""Tests of pantheon.synth.mri_phantom: the synthetic hepatobiliary-phase liver MRI phantom.

What its users (NeoNet tests and demos) rely on: reproducibility, MRI-like (not CT-like) values,
labels sharing the image geometry, a tumour inside the liver, the documented PNI rule, and
anatomy fixed in world coordinates whatever the voxel grid.
"""

import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from pantheon.synth.mri_phantom import (
    MRI_LABEL_OF,
    MRI_LABELS,
    make_liver_mri_phantom,
    random_mri_grid,
    random_mri_patient,
    sample_mri_on_grid,
)

TUMOUR = MRI_LABEL_OF["tumour"]


def _world(vol, mask):
    kji = np.argwhere(mask)
    return vol.ijk_to_world(kji[:, ::-1].astype(np.float64))


@pytest.fixture(scope="module")
def phantoms():
    """Default phantoms (random grids, some oblique), forced PNI positive and negative."""
    out = []
    for seed, pni in ((0, True), (1, False), (2, True), (3, False)):
        out.append(make_liver_mri_phantom(seed, oblique=(seed % 2 == 1), pni=pni))
    return out


@pytest.mark.slow
def test_deterministic_and_seed_dependent():
    a = make_liver_mri_phantom(5)
    b = make_liver_mri_phantom(5)
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[1].array, b[1].array)
    assert a[2] == b[2] and a[2]["seed"] == 5
    assert a[0].same_geometry(b[0])
    c = make_liver_mri_phantom(6)
    assert c[0].shape != a[0].shape or not np.array_equal(c[0].array, a[0].array)


def test_geometry_values_and_labels(phantoms):
    for mri, lab, info in phantoms:
        assert mri.same_geometry(lab)
        assert mri.array.dtype == np.float32 and lab.array.dtype == np.uint8
        a = mri.array
        assert np.isfinite(a).all() and a.min() >= 0.0  # magnitude MRI, not HU
        assert 400 < np.percentile(a, 99) < 2500
        assert set(np.unique(lab.array)) <= set(MRI_LABELS)
        for name in ("liver", "tumour", "bile_duct", "hepatic_vessels"):
            assert np.any(lab.array == MRI_LABEL_OF[name]), name
        liver = np.median(a[lab.array == MRI_LABEL_OF["liver"]])
        assert np.median(a[lab.array == TUMOUR]) < 0.7 * liver  # hypointense tumour in HBP
        assert np.median(a[lab.array == MRI_LABEL_OF["bile_duct"]]) < 0.7 * liver
        assert 15 <= info["tumour_diameter_mm"] <= 50
        vol_nominal = np.pi / 6 * info["tumour_diameter_mm"] ** 3 / 1000.0
        assert 0.5 * vol_nominal < info["tumour_volume_ml"] < 3.0 * vol_nominal
        assert set(info) >= {"pni", "tumour_centre_lps", "tumour_volume_ml", "seed"}


def test_tumour_mostly_inside_liver(phantoms):
    for mri, lab, info in phantoms:
        t = lab.array == TUMOUR
        shell = ndimage.binary_dilation(t, np.ones((3, 3, 3), bool)) & ~t
        frac = np.isin(lab.array[shell], [1, 3, 4]).mean()
        assert frac > 0.8, frac
        centroid = _world(lab, t).mean(axis=0)
        assert np.linalg.norm(centroid - info["tumour_centre_lps"]) < info["tumour_main_radius_mm"] * 0.6


def test_pni_rule(phantoms):
    for mri, lab, info in phantoms:
        pts = _world(lab, lab.array == TUMOUR)
        d = np.linalg.norm(pts - np.asarray(info["tumour_centre_lps"]), axis=1)
        beyond = pts[d > info["tumour_main_radius_mm"]]
        if info["pni"]:
            assert info["pni_extent_mm"] >= 10
            # tumour beyond the main mass, all of it along the nerve, reaching >= 10 mm beyond
            dn, _ = cKDTree(np.asarray(info["nerve_path_lps"])).query(beyond)
            assert len(beyond) > 5 and dn.max() < 5.0
            vox = max(lab.spacing)
            assert d.max() - info["tumour_main_radius_mm"] >= 10.0 - vox
        else:
            assert info["pni_extent_mm"] == 0 and len(beyond) == 0
    labels = [random_mri_patient(s).pni for s in range(40)]  # p = 0.5 when not forced
    assert 10 <= sum(labels) <= 30


def test_pni_visible_in_image():
    """The tentacle is in the image too: the nerve path beyond the mass is dark only when PNI+."""
    means = {}
    for pni in (True, False):
        patient = random_mri_patient(11, pni=pni)
        grid = random_mri_grid(11, patient, spacing=(1.5, 1.5, 3.0), orientation="LPS", fov_mm=(170, 170, 150))
        mri, lab = sample_mri_on_grid(patient, *grid)
        c = patient.world_of(patient.tumour_centre)[0]
        path = patient.world_of(patient.nerve_path)
        dist = np.linalg.norm(path - c, axis=1)
        start = int(np.argmin(dist))
        sel = path[(dist > patient.tumour_main_radius + 3) & (dist < patient.tumour_main_radius + 10)
                   & (np.arange(len(path)) > start)]
        ijk = np.round(mri.world_to_ijk(sel)).astype(int)
        means[pni] = float(mri.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]].mean())
        liver = float(np.median(mri.array[lab.array == 1]))
        if pni:
            assert means[pni] < 0.7 * liver
    assert means[True] < 0.8 * means[False]


def test_same_patient_any_grid():
    patient = random_mri_patient(21, pni=True)
    fov = (170.0, 170.0, 150.0)
    g1 = random_mri_grid(1, patient, spacing=(1.5, 1.5, 1.5), orientation="identity", fov_mm=fov)
    g2 = random_mri_grid(2, patient, spacing=(1.3, 1.9, 3.5), orientation="ASL", oblique=20.0, fov_mm=fov)
    cents = []
    for g in (g1, g2):
        mri, lab = sample_mri_on_grid(patient, *g)
        cents.append(_world(lab, lab.array == TUMOUR).mean(axis=0))
    assert np.linalg.norm(cents[0] - cents[1]) < 1.5
    assert not np.allclose(g2.direction, np.eye(3))


def test_fast_enough():
    make_liver_mri_phantom(30)  # warm-up
    t0 = time.perf_counter()
    make_liver_mri_phantom(31, oblique=True)
    assert time.perf_counter() - t0 < 2.5  # ~0.4 s on 2 cores; headroom for a busy CI machine
