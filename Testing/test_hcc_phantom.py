"""The liver-MRI phantom with the 3D-LLDM label set (issue 17 section 1) and the (image, label)
pair reader the trainers use."""

import numpy as np
import pytest

from pantheon.data.pairs import pair_paths, read_pairs
from pantheon.errors import InputError
from pantheon.io import write_volume
from pantheon.synth.hcc_mri_phantom import HCC_LABEL_OF, HCC_LABELS, make_hcc_mri_phantom, random_hcc_patient
from pantheon.synth.mri_phantom import sample_mri_on_grid

SHAPE = (24, 64, 72)


def test_labels_contrast_and_lesion_count():
    counts = []
    for seed in range(6):
        mri, lab, info = make_hcc_mri_phantom(seed, shape=SHAPE)
        a, m = np.asarray(lab.array), np.asarray(mri.array)
        assert lab.same_geometry(mri) and lab.array.dtype == np.uint8
        assert set(np.unique(a)) <= set(HCC_LABELS) and info["labels"] == HCC_LABELS
        for name in ("liver", "portal_vein", "hepatic_vein"):
            assert (a == HCC_LABEL_OF[name]).any(), (seed, name)
        liver = m[a == HCC_LABEL_OF["liver"]].mean()
        # hepatobiliary phase: enhancing parenchyma, dark vessels and HCC
        assert m[a == HCC_LABEL_OF["portal_vein"]].mean() < 0.8 * liver
        assert m[a == HCC_LABEL_OF["hepatic_vein"]].mean() < 0.8 * liver
        hcc = a == HCC_LABEL_OF["hcc"]
        if hcc.any():
            assert m[hcc].mean() < 0.75 * liver
        counts.append(len(info["hcc"]))
        assert info["hcc_volume_ml"] == pytest.approx(hcc.sum() * np.prod(lab.spacing) / 1000)
    assert min(counts) >= 0 and max(counts) <= 3 and len(set(counts)) > 1  # 0-3 nodules, varied


def test_hcc_nodules_lie_in_the_liver_and_n_hcc_is_obeyed():
    for n in (0, 3):
        mri, lab, info = make_hcc_mri_phantom(11, shape=(40, 96, 96), n_hcc=n, orientation="identity")
        assert len(info["hcc"]) == n and ((lab.array == HCC_LABEL_OF["hcc"]).any() == (n > 0))
        for h in info["hcc"]:
            ijk = np.rint(lab.world_to_ijk(np.array(h["centre_lps"]))[0]).astype(int)
            if np.all(ijk >= 0) and np.all(ijk < np.array(lab.size_ijk)):
                assert lab.array[ijk[2], ijk[1], ijk[0]] in (HCC_LABEL_OF["hcc"], HCC_LABEL_OF["liver"])
    with pytest.raises(ValueError):
        random_hcc_patient(0, n_hcc=9)


def test_same_patient_on_two_grids_keeps_labels_at_the_same_world_points():
    from pantheon.synth.hcc_mri_phantom import hcc_labels
    patient, _ = random_hcc_patient(3, n_hcc=2)
    from pantheon.synth.mri_phantom import random_mri_grid
    grid = random_mri_grid(0, patient, shape=(40, 90, 100), orientation="identity")
    _, nn1 = sample_mri_on_grid(patient, *grid, noise=0)
    lab1 = hcc_labels(patient, nn1)
    assert all((lab1.array == v).sum() > 50 for v in (1, 2, 3, 4)), np.bincount(lab1.array.ravel())
    # the same lattice stored with flipped and permuted axes
    perm, flip = (2, 0, 1), (True, False, True)
    ref = lab1.reoriented(perm, flip)
    _, nn2 = sample_mri_on_grid(patient, ref.shape, ref.spacing, ref.origin, ref.direction, noise=0)
    lab2 = hcc_labels(patient, nn2)
    assert lab2.same_geometry(ref)
    agree = (lab2.array == ref.array).mean()
    assert agree > 0.999, agree


def test_pairs_reader_layouts_and_refusals(tmp_path):
    mri, lab, _ = make_hcc_mri_phantom(1, shape=(16, 32, 32))
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_volume(mri, tmp_path / "images" / "a.nii.gz")
    write_volume(lab, tmp_path / "labels" / "a.nii.gz")
    (tmp_path / "pairs.csv").write_text("image,label\nimages/a.nii.gz,labels/a.nii.gz\n")
    for src in (tmp_path, tmp_path / "pairs.csv"):
        ((img, seg),) = read_pairs(src)
        assert img.same_geometry(seg, atol=1e-4) and np.array_equal(seg.array, lab.array)
    write_volume(mri, tmp_path / "images" / "b.nii.gz")
    with pytest.raises(InputError, match="No label map for 1 image"):
        pair_paths(tmp_path)
    shifted = lab.reoriented((0, 1, 2), (True, False, False)).with_array(lab.array)  # another origin
    write_volume(shifted, tmp_path / "labels" / "b.nii.gz")
    with pytest.raises(InputError, match="not on the grid of its image b.nii.gz"):
        read_pairs(tmp_path)
    (tmp_path / "bad.csv").write_text("img,lbl\n")
    with pytest.raises(InputError, match="needs 'image' and 'label' columns"):
        pair_paths(tmp_path / "bad.csv")


def test_cli_writes_pairs_the_trainers_read(tmp_path, capsys):
    import slicerio

    from pantheon.cli import main
    out = tmp_path / "set"
    assert main(["phantoms", "hcc-mri", "2", "-o", str(out), "--shape", "16", "40", "40", "--seed", "7",
                 "--quiet"]) == 0
    pairs = read_pairs(out / "cases.csv")
    assert len(pairs) == 2 and all(i.same_geometry(s, atol=1e-4) for i, s in pairs)
    _, lab, _ = make_hcc_mri_phantom(7, shape=(16, 40, 40))
    assert np.array_equal(pairs[0][1].array, lab.array)  # case n is seed + n
    seg = slicerio.read_segmentation(str(out / "labels" / "hcc-mri-00007.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == ["liver", "portal_vein", "hepatic_vein", "hcc"]
    capsys.readouterr()
    assert main(["phantoms", "ct", "1", "-o", str(out), "--quiet"]) == 2  # not an empty folder
    assert "not empty" in capsys.readouterr().err
