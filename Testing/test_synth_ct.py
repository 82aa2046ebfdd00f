"""Tests of pantheon.synth.ct_phantom: the synthetic abdominal CT phantom.

What matters to its users (tests, demos, NEMESIS demo weights): reproducibility, BTCV labels with
plausible sizes and HU, one geometry shared by CT and labels, and anatomy that sits at the same
world (LPS) position whatever voxel grid it is sampled on.
"""

import time

import numpy as np
import pytest
from scipy import ndimage

from pantheon.io.volume import Volume
from pantheon.synth import (
    BTCV_LABELS,
    LABEL_OF,
    make_abdomen_phantom,
    make_phantom_dataset,
    orientation_matrix,
    random_grid,
    random_patient,
    sample_phantom_on_grid,
)

REQUIRED = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
BIG_FOV = (370.0, 320.0, 360.0)  # whole organs inside, for volume and centroid checks


def _world_centroid(vol: Volume, mask: np.ndarray) -> np.ndarray:
    kji = np.array(ndimage.center_of_mass(mask))
    return vol.ijk_to_world(kji[::-1])[0]


def _label_centroids(lab: Volume, names) -> dict:
    """World centroids of several labels in one pass over the label map."""
    idx = [LABEL_OF[n] for n in names]
    kji = np.array(ndimage.center_of_mass(np.ones(lab.shape, np.float32), lab.array, idx))
    return dict(zip(names, lab.ijk_to_world(kji[:, ::-1])))


def _volume_ml(vol: Volume, mask: np.ndarray) -> float:
    return float(mask.sum() * np.prod(vol.spacing) / 1000.0)


@pytest.fixture(scope="module")
def whole_patients():
    """Three patients on 2.5 mm identity grids large enough to hold every organ entirely."""
    out = []
    for seed in (0, 1, 2):
        patient = random_patient(seed)
        grid = random_grid(seed, patient, spacing=(2.5, 2.5, 2.5), orientation="identity", fov_mm=BIG_FOV)
        out.append(sample_phantom_on_grid(patient, *grid))
    return out


@pytest.fixture(scope="module")
def random_phantoms():
    """Default phantoms: random spacing, storage orientation (flips/permutations), some oblique."""
    return [make_abdomen_phantom(seed, oblique=(seed % 2 == 1)) for seed in (10, 11, 12)]


# ----------------------------------------------------------------------------- basics
@pytest.mark.slow
def test_deterministic_by_seed():
    a_ct, a_lab = make_abdomen_phantom(123, shape=(48, 80, 80))
    b_ct, b_lab = make_abdomen_phantom(123, shape=(48, 80, 80))
    assert np.array_equal(a_ct.array, b_ct.array)
    assert np.array_equal(a_lab.array, b_lab.array)
    assert a_ct.same_geometry(b_ct)
    c_ct, _ = make_abdomen_phantom(124, shape=(48, 80, 80))
    assert not (c_ct.same_geometry(a_ct) and np.array_equal(c_ct.array, a_ct.array))
    # a Generator works as the seed too, and the same patient on the same grid is reproducible
    d_ct, _ = make_abdomen_phantom(np.random.default_rng(123), shape=(48, 80, 80))
    assert np.array_equal(d_ct.array, a_ct.array)
    patient = random_patient(5)
    grid = random_grid(5, patient, shape=(40, 64, 64))
    assert np.array_equal(sample_phantom_on_grid(patient, *grid)[0].array,
                          sample_phantom_on_grid(patient, *grid)[0].array)


@pytest.mark.slow
def test_dtypes_geometry_and_label_set(random_phantoms):
    for ct, lab in random_phantoms:
        assert ct.array.dtype == np.int16
        assert lab.array.dtype == np.uint8
        assert ct.shape == lab.shape
        assert ct.same_geometry(lab)
        assert np.allclose(ct.direction @ ct.direction.T, np.eye(3), atol=1e-9)
        assert set(np.unique(lab.array)) <= set(BTCV_LABELS)
        assert -1024 <= ct.array.min() and ct.array.max() <= 3071
    ct, lab = make_abdomen_phantom(3, shape=(40, 64, 64), dtype=np.float32, noise_hu=0)
    assert ct.array.dtype == np.float32 and np.isfinite(ct.array).all()
    assert lab.array.dtype == np.uint8 and ct.same_geometry(lab)


@pytest.mark.slow
def test_shape_spacing_and_orientation_options():
    ct, lab = make_abdomen_phantom(1, shape=(96, 160, 160))
    assert ct.shape == lab.shape == (96, 160, 160)
    ct, _ = make_abdomen_phantom(2, spacing=(3.0, 3.0, 4.0), orientation="RAS")
    assert ct.spacing == (3.0, 3.0, 4.0)
    assert np.allclose(ct.direction, np.diag([-1.0, -1.0, 1.0]))
    assert np.allclose(orientation_matrix("identity"), np.eye(3))
    assert np.allclose(orientation_matrix("ASL") @ [1, 0, 0], [0, -1, 0])  # i points Anterior = -y
    with pytest.raises(ValueError):
        orientation_matrix("LLS")
    # clinical-like random spacing (checked on the grid only: such volumes are big)
    patient = random_patient(0)
    for s in range(5):
        g = random_grid(s, patient, spacing="clinical", orientation="identity")
        assert 0.6 <= g.spacing[0] <= 1.0 and g.spacing[0] == g.spacing[1] and 1.0 <= g.spacing[2] <= 3.0
        assert abs(g.shape[1] * g.spacing[1] - 320) < 2
    # default grids are small (fast) but cover a realistic abdomen
    for s in range(5):
        g = random_grid(s, patient)
        assert np.prod(g.shape) < 8e6
        extent = np.array(g.shape[::-1]) * np.array(g.spacing)
        assert sorted(extent)[-1] > 300


@pytest.mark.slow
def test_no_nan_and_air_outside(random_phantoms):
    for ct, _ in random_phantoms:
        a = ct.array.astype(np.float32)
        assert np.isfinite(a).all()
        # air around the body (the field of view may cut a broad patient, as in real scans)
        outside = a[a < -800]
        assert outside.size > 0.1 * a.size
        assert abs(np.median(outside) + 1000) < 15


# ----------------------------------------------------------------------------- organs
# plausible whole-organ volumes (mL) for an adult-sized phantom
VOLUME_ML = {
    "liver": (800, 2600), "spleen": (50, 500), "right_kidney": (60, 300), "left_kidney": (60, 300),
    "gallbladder": (8, 100), "stomach": (150, 1000), "pancreas": (20, 140), "aorta": (40, 250),
    "inferior_vena_cava": (30, 250), "portal_and_splenic_vein": (5, 60), "esophagus": (1, 40),
    "right_adrenal_gland": (0.5, 25), "left_adrenal_gland": (0.5, 25),
}
# HU of the organ interior (1-voxel erosion removes partial-volume edges)
HU_RANGE = {
    "liver": (45, 80), "spleen": (35, 70), "right_kidney": (100, 185), "left_kidney": (100, 185),
    "gallbladder": (-10, 30), "pancreas": (25, 65), "aorta": (150, 270), "inferior_vena_cava": (100, 190),
    "portal_and_splenic_vein": (110, 200),
}


@pytest.mark.slow
def test_all_organs_present_with_plausible_volumes(whole_patients, random_phantoms):
    for ct, lab in whole_patients:
        for name, (lo, hi) in VOLUME_ML.items():
            v = _volume_ml(lab, lab.array == LABEL_OF[name])
            assert lo <= v <= hi, f"{name}: {v:.1f} mL not in [{lo}, {hi}]"
    # the default (smaller) field of view still contains every required organ
    for _, lab in random_phantoms:
        present = set(np.unique(lab.array))
        assert {LABEL_OF[n] for n in REQUIRED} <= present


@pytest.mark.slow
def test_hu_statistics(whole_patients):
    for ct, lab in whole_patients:
        a = ct.array.astype(np.float32)
        for name, (lo, hi) in HU_RANGE.items():
            m = ndimage.binary_erosion(lab.array == LABEL_OF[name])
            mean = float(a[m].mean())
            assert lo <= mean <= hi, f"{name}: mean {mean:.1f} HU not in [{lo}, {hi}]"
        # kidneys: enhancing cortex
        kid = lab.array == LABEL_OF["right_kidney"]
        assert np.percentile(a[kid], 90) > 130
        # stomach: wall/fluid plus a gas pocket
        st = a[lab.array == LABEL_OF["stomach"]]
        assert st.min() < -600  # some gas (partial volume at 2.5 mm blurs small pockets)
        assert ((st > -20) & (st < 70)).mean() > 0.3
        body = a > -500
        inside = a[body]
        # fat (subcutaneous + visceral) is a good part of the body; soft tissue too
        assert ((inside > -140) & (inside < -60)).mean() > 0.10
        assert ((inside > 20) & (inside < 90)).mean() > 0.2
        # bone: the skeleton reaches cortical values but stays in a CT-like range
        assert np.percentile(a, 99.9) > 450
        assert (a > 500).sum() > 1000 and a.max() < 1500
        # the whole body is inside the field of view with air around
        assert not body[:, :, 0].any() and not body[:, :, -1].any()


def test_noise_level():
    patient = random_patient(4)
    grid = random_grid(4, patient, shape=(64, 128, 128), orientation="identity")
    liver = LABEL_OF["liver"]
    stds = {}
    for noise in (0.0, 15.0):
        ct, lab = sample_phantom_on_grid(patient, *grid, noise_hu=noise)
        m = ndimage.binary_erosion(lab.array == liver, iterations=2)
        stds[noise] = float(ct.array[m].std())
    assert stds[0.0] < 8  # texture only
    assert 10 < stds[15.0] < 25


@pytest.mark.slow
def test_anatomical_sides_in_world_coordinates(random_phantoms, whole_patients):
    """Left/right and front/back in LPS world coordinates, whatever the storage orientation."""
    for ct, lab in list(random_phantoms) + list(whole_patients):
        a, _ = ct.array, lab.array
        body = _world_centroid(ct, a > -500)
        c = _label_centroids(lab, ("liver", "spleen", "right_kidney", "left_kidney", "aorta",
                                   "inferior_vena_cava", "stomach", "gallbladder"))
        assert c["liver"][0] < body[0] - 20  # patient right = -x in LPS
        assert c["spleen"][0] > body[0] + 40  # patient left
        assert c["spleen"][1] > c["stomach"][1]  # spleen posterior to the stomach
        assert c["right_kidney"][0] < body[0] - 30 < body[0] + 30 < c["left_kidney"][0]
        assert c["right_kidney"][1] > body[1] and c["left_kidney"][1] > body[1]  # posterior (+y)
        assert c["inferior_vena_cava"][0] < c["aorta"][0]
        assert c["aorta"][0] > body[0] - 5  # aorta just left of the midline
        assert c["stomach"][0] > body[0]
        assert c["gallbladder"][1] < c["right_kidney"][1]  # gallbladder anterior
        bone = _world_centroid(ct, a > 400)
        assert bone[1] > body[1]  # the spine is posterior
        assert abs(bone[0] - body[0]) < 25


@pytest.mark.slow
def test_same_patient_any_grid_same_world_anatomy():
    """Identity grid vs flipped / permuted / oblique anisotropic grids: same world anatomy."""
    patient = random_patient(7)
    ref_grid = random_grid(0, patient, spacing=(2.5, 2.5, 2.5), orientation="identity", fov_mm=BIG_FOV)
    ref_ct, ref_lab = sample_phantom_on_grid(patient, *ref_grid)
    others = [
        random_grid(1, patient, spacing=(2.0, 3.2, 2.6), orientation="ASL", oblique=12.0, fov_mm=BIG_FOV),
        random_grid(2, patient, spacing=(3.0, 2.2, 2.5), orientation="RAI", fov_mm=BIG_FOV),
    ]
    liver = LABEL_OF["liver"]
    ref_c = _world_centroid(ref_lab, ref_lab.array == liver)
    ref_v = _volume_ml(ref_lab, ref_lab.array == liver)
    depth = ndimage.distance_transform_edt(ref_lab.array == liver)
    deepest = np.unravel_index(np.argmax(depth), depth.shape)
    probe = ref_lab.ijk_to_world(np.array(deepest[::-1]))[0]  # the point deepest inside the liver
    for g in others:
        ct, lab = sample_phantom_on_grid(patient, *g)
        assert not np.allclose(lab.direction, ref_lab.direction)
        c = _world_centroid(lab, lab.array == liver)
        assert np.linalg.norm(c - ref_c) < 1.0, (c, ref_c)
        assert abs(_volume_ml(lab, lab.array == liver) - ref_v) < 0.03 * ref_v
        for name in ("spleen", "right_kidney", "left_kidney", "pancreas"):
            m_ref, m = ref_lab.array == LABEL_OF[name], lab.array == LABEL_OF[name]
            assert np.linalg.norm(_world_centroid(lab, m) - _world_centroid(ref_lab, m_ref)) < 1.5, name
        i, j, k = np.rint(lab.world_to_ijk(probe)[0]).astype(int)
        assert lab.array[k, j, i] == liver
        i, j, k = np.rint(ref_lab.world_to_ijk(probe)[0]).astype(int)
        assert ref_lab.array[k, j, i] == liver


@pytest.mark.slow
def test_speed_128x192x192():
    make_abdomen_phantom(0, shape=(32, 48, 48))  # warm-up (imports, caches)
    t = time.perf_counter()
    ct, _ = make_abdomen_phantom(1, shape=(128, 192, 192))
    elapsed = time.perf_counter() - t
    assert ct.shape == (128, 192, 192)
    assert elapsed < 6.0, f"{elapsed:.1f} s (target < 2 s on 2 cores; generous bound for busy machines)"


# ----------------------------------------------------------------------------- dataset
@pytest.mark.slow
def test_dataset_iterator_and_files(tmp_path):
    import SimpleITK as sitk

    kw = dict(shape=(32, 48, 48))
    pairs = list(make_phantom_dataset(2, seed=9, **kw))
    assert len(pairs) == 2 and all(isinstance(v, Volume) for p in pairs for v in p)
    assert not np.array_equal(pairs[0][0].array, pairs[1][0].array)
    # case c depends on (seed, c) only
    (first,) = list(make_phantom_dataset(1, seed=9, **kw))
    assert np.array_equal(first[0].array, pairs[0][0].array)

    paths = make_phantom_dataset(2, seed=9, out_dir=str(tmp_path / "ds"), **kw)
    assert len(paths) == 2
    for (p_ct, p_lab), (ct, lab) in zip(paths, pairs):
        for path, vol in ((p_ct, ct), (p_lab, lab)):
            img = sitk.ReadImage(path)
            assert np.array_equal(sitk.GetArrayFromImage(img), vol.array)
            assert np.allclose(img.GetSpacing(), vol.spacing, atol=1e-4)
            assert np.allclose(img.GetOrigin(), vol.origin, atol=1e-3)
            assert np.allclose(np.reshape(img.GetDirection(), (3, 3)), vol.direction, atol=1e-5)
