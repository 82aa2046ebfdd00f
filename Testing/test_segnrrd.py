"""Label outputs as Slicer .seg.nrrd, checked by loading them with slicer-core's real storage node."""

import numpy as np
import pytest
from test_terminology import SlicerLists

from pantheon.anatomy import BTCV_ORGANS
from pantheon.io import Volume
from pantheon.io.segnrrd import write_seg_nrrd
from pantheon.results import LabelOutput, Segment
from pantheon.slicerbridge.terms import parse_terminology, terminology_string
from pantheon.synth import make_abdomen_phantom


def test_seg_nrrd_loads_in_slicer_with_names_colours_terms_and_voxels_on_the_oblique_grid(tmp_path, mrml_scene):
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    _, lab = make_abdomen_phantom(3, shape=(20, 26, 30), oblique=True)
    assert not np.allclose(np.abs(lab.direction), np.eye(3), atol=1e-3)  # really oblique
    segs = [Segment(idx, name, col, ("SCT", code, meaning)) for name, idx, col, code, meaning in BTCV_ORGANS]
    path = write_seg_nrrd(LabelOutput(lab, segs), tmp_path / "labels.seg.nrrd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.seg.nrrd"]  # nothing temporary left

    lists = SlicerLists()
    storage = slicer.vtkMRMLSegmentationStorageNode()
    mrml_scene.AddNode(storage)
    node = slicer.vtkMRMLSegmentationNode()
    mrml_scene.AddNode(node)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == len(segs)
    expected_ras = lab.index_to_ras()
    wanted = np.where(np.isin(lab.array, [s.value for s in segs]), lab.array, 0)
    for n, s in enumerate(segs):
        segment = seg.GetSegment(seg.GetNthSegmentID(n))
        assert segment.GetName() == s.name
        assert np.allclose(segment.GetColor(), s.color, atol=1e-5)
        assert segment.GetLabelValue() == s.value
        ref = vtk.reference("")
        assert segment.GetTag("TerminologyEntry", ref)
        assert str(ref) == terminology_string(s.code)
        parts = parse_terminology(str(ref))  # an entry of Slicer's own lists (kidneys: Kidney + side)
        assert lists.problems(parts) == [], s.name
        if "kidney" in s.name:
            assert (parts["type"][1], parts["modifier"][2]) == ("64033007", s.name.split()[0].capitalize())
        image = segment.GetRepresentation("Binary labelmap")
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        assert np.allclose(ijk_to_ras, expected_ras, atol=1e-4)  # same oblique lattice as the input
        i0, i1, j0, j1, k0, k1 = image.GetExtent()
        dims = image.GetDimensions()
        arr = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
        full = np.zeros(lab.shape, dtype=arr.dtype)
        full[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = arr
        # every voxel: the shared layer holds exactly the label map (non-segment labels cleared)
        np.testing.assert_array_equal(full, wanted)
        assert (full == s.value).sum() == (lab.array == s.value).sum() > 0


def test_seg_nrrd_rejects_bad_label_values(tmp_path):
    _, lab = make_abdomen_phantom(0, shape=(8, 10, 12))
    with pytest.raises(ValueError):
        write_seg_nrrd(LabelOutput(lab, [Segment(70000, "x", (1, 0, 0))]), tmp_path / "x.seg.nrrd")


def test_slicer_reads_the_reference_image_geometry_of_the_label_grid(tmp_path):
    """Slicer's own reader (slicer-core) finds the label map's grid as the segmentation's reference
    image geometry: an oblique, anisotropic LPS grid, compared voxel corner by voxel corner in RAS."""
    slicer = pytest.importorskip("slicer")
    import vtk

    theta = np.deg2rad(20)
    direction = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1.0]])
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[1:3, 2:4, 3:6] = 1
    vol = Volume(labels, spacing=(0.7, 1.3, 2.9), origin=(-12.25, 40.5, 7.125), direction=direction)
    path = write_seg_nrrd(LabelOutput(vol, [Segment(1, "liver", (1, 0, 0), None)]), tmp_path / "s.seg.nrrd")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    text = node.GetSegmentation().GetConversionParameter("Reference image geometry")
    geometry = slicer.vtkOrientedImageData()
    assert slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, geometry)
    assert geometry.GetExtent() == (0, 6, 0, 5, 0, 4)  # (i, j, k) extents of a (K, J, I) = (5, 6, 7) array
    m = vtk.vtkMatrix4x4()
    geometry.GetImageToWorldMatrix(m)
    got = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1, -1, 1]) @ direction @ np.diag(vol.spacing)
    expected[:3, 3] = np.array([-1, -1, 1]) * np.array(vol.origin)
    np.testing.assert_allclose(got, expected, atol=1e-9)
