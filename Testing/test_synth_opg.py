"""Synthetic OPG generator: determinism, geometry, FDI layout, lesions, stages, noise."""

import numpy as np
import pytest

from pantheon.synth.opg import STAGES, make_opg, make_opg_dataset

SMALL = (256, 512)


@pytest.fixture(scope="module")
def opgs():
    return [make_opg(s, size=SMALL, caries_rate=0.25, periapical_rate=0.15, impacted_rate=0.8) for s in range(6)]


def test_deterministic_by_seed():
    a, b, c = make_opg(3, size=SMALL), make_opg(3, size=SMALL), make_opg(4, size=SMALL)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.tooth_labels.array, b.tooth_labels.array)
    assert [t["box"] for t in a.teeth] == [t["box"] for t in b.teeth]
    assert not np.array_equal(a.image.array, c.image.array)


def test_volume_dtype_range_and_noise(opgs):
    o = opgs[0]
    assert o.image.shape == (1,) + SMALL and o.image.is_2d
    a = o.image.array[0]
    assert a.dtype == np.uint8 and a.max() >= 200 and a.min() <= 60
    assert o.tooth_labels.array.dtype == np.uint8 and o.caries_mask.array.dtype == np.uint8
    assert o.tooth_labels.same_geometry(o.image) and o.anomaly_mask.same_geometry(o.image)
    # noise: the difference with a smoothed copy is not negligible in a flat region
    from scipy import ndimage
    f = a.astype(float)
    resid = f - ndimage.uniform_filter(f, 5)
    assert resid[5:40, 5:100].std() > 1.0
    u16 = make_opg(0, size=SMALL, dtype="uint16", noise=0.0)
    assert u16.image.array.dtype == np.uint16 and u16.image.array.max() > 50000
    r16 = u16.image.array[0].astype(float)
    assert (r16 - ndimage.uniform_filter(r16, 5))[5:40, 5:100].std() < resid[5:40, 5:100].std() * 257


def test_boxes_masks_labels_consistent(opgs):
    for o in opgs:
        H, W = o.image.shape[1:]
        lab = o.tooth_labels.array[0]
        for idx, t in enumerate(o.teeth):
            x0, y0, x1, y1 = t["box"]
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            assert t["mask"].shape == (y1 - y0, x1 - x0) and t["mask"].any()
            assert t["label"] == idx + 1 and t["stage"] in STAGES
            assert (lab == t["label"]).sum() > 0
            assert (lab[y0:y1, x0:x1][t["mask"]] > 0).all()
        assert set(np.unique(lab)) <= set(range(len(o.teeth) + 1))
        fdi_map = o.fdi_label_map().array[0]
        assert set(np.unique(fdi_map)) - {0} <= {t["fdi"] for t in o.teeth}


def test_fdi_order_left_to_right(opgs):
    for o in opgs:
        mid = o.params["midline_x"]
        cx = {t["fdi"]: (t["box"][0] + t["box"][2]) / 2 for t in o.teeth if t["anomaly"] != "impacted"}
        fdis = [t["fdi"] for t in o.teeth]
        assert fdis == sorted(fdis)
        for q_left, q_right in ((1, 2), (4, 3)):
            left = [cx[f] for f in range(10 * q_left + 8, 10 * q_left, -1) if f in cx]  # 18 .. 11
            right = [cx[f] for f in range(10 * q_right + 1, 10 * q_right + 9) if f in cx]  # 21 .. 28
            seq = left + right
            assert seq == sorted(seq)
            assert all(x < mid for x in left) and all(x > mid for x in right)
        # upper quadrants above lower ones
        up = [(t["box"][1] + t["box"][3]) / 2 for t in o.teeth if t["fdi"] // 10 in (1, 2)]
        lo = [(t["box"][1] + t["box"][3]) / 2 for t in o.teeth if t["fdi"] // 10 in (3, 4)]
        assert np.mean(up) < np.mean(lo)


def test_caries_inside_tooth_and_anomalies_present(opgs):
    n_car = n_imp = n_pa = 0
    for o in opgs:
        teeth_union = o.tooth_labels.array[0] > 0
        for t in o.teeth:
            assert not (t["caries_mask"] & ~t["mask"]).any()
            assert t["caries"] == bool(t["caries_mask"].any())
            if t["caries"]:
                n_car += 1
                # the lesion is darker than the rest of the crown
            if t["anomaly"] == "impacted":
                n_imp += 1
                assert np.array_equal(t["anomaly_mask"], t["mask"]) and "Impacted" in t["diagnoses"]
            elif t["anomaly"] == "periapical_lesion":
                n_pa += 1
                assert t["anomaly_mask"].sum() > 10 and not (t["anomaly_mask"] & t["mask"]).any()
            else:
                assert not t["anomaly_mask"].any()
        car = o.caries_mask.array[0] > 0
        assert not (car & ~teeth_union).any()
        any_anom = any(t["anomaly"] for t in o.teeth)
        assert bool(o.anomaly_mask.array.any()) == any_anom
    assert n_car > 3 and n_imp >= 1 and n_pa >= 1


def test_caries_is_dark():
    o = make_opg(5, size=SMALL, caries_rate=1.0, noise=0.0, restoration_rate=0.0)
    img = o.image.array[0].astype(float)
    diffs = []
    for t in o.teeth:
        if t["caries"]:
            x0, y0, x1, y1 = t["box"]
            patch = img[y0:y1, x0:x1]
            sound = t["mask"] & ~t["caries_mask"]
            diffs.append(patch[sound].mean() - patch[t["caries_mask"]].mean())
    assert len(diffs) > 5 and np.median(diffs) > 5


def test_stages_change_root_length():
    heights = {}
    for st in ("A", "D", "F", "H"):
        hs = []
        for s in range(2):
            o = make_opg(s, size=SMALL, stage=st, impacted_rate=0.0, periapical_rate=0.0)
            hs += [t["mask"].any(axis=1).sum() for t in o.teeth if not t["primary"]]
            assert all(t["stage"] == st for t in o.teeth)
        heights[st] = np.mean(hs)
    assert heights["A"] < heights["D"] < heights["F"] < heights["H"]


def test_missing_rate_over_20_images():
    n_present = 0
    for o in make_opg_dataset(20, seed=1, size=(128, 256)):
        perm = [t for t in o.teeth if not t["primary"]]
        assert len({t["fdi"] for t in perm}) == len(perm)
        n_present += len(perm)
    rate = 1 - n_present / (20 * 32)
    assert 0.04 <= rate <= 0.16


def test_primary_dentition():
    o = make_opg(2, size=SMALL, primary_teeth=True)
    fdis = {t["fdi"] for t in o.teeth}
    prim = {f for f in fdis if f >= 51}
    assert len(prim) >= 14 and all(f % 10 <= 5 for f in prim)
    assert any(t["stage"] in "ABCDE" for t in o.teeth if not t["primary"])
    cx = {t["fdi"]: (t["box"][0] + t["box"][2]) / 2 for t in o.teeth}
    mid = o.params["midline_x"]
    assert all(cx[f] < mid for f in prim if f // 10 in (5, 8))
    assert all(cx[f] > mid for f in prim if f // 10 in (6, 7))


def test_dataset_independent_of_n():
    a = list(make_opg_dataset(2, seed=9, size=(128, 256)))
    b = list(make_opg_dataset(3, seed=9, size=(128, 256)))
    assert np.array_equal(a[1].image.array, b[1].image.array)


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_opg(0, size=(10, 10))
    with pytest.raises(ValueError):
        make_opg(0, size=SMALL, stage="Z")
    with pytest.raises(ValueError):
        make_opg(0, size=SMALL, dtype="float32")
