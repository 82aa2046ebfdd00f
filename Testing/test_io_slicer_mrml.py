"""Volume.to_slicer / from_slicer against the real MRML library (PyPI slicer-core), no Slicer app.

Also cross-checks the file layer against Slicer's own readers and writers
(vtkMRMLVolumeArchetypeStorageNode), an implementation independent of ours.
"""

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (MRML without the Slicer app) is not installed")
try:  # the PyPI package provides MRML and slicer.util; skip cleanly if this build lacks them
    import vtk
    from slicer import (
        vtkMRMLScalarVolumeNode,
        vtkMRMLScene,  # noqa: F401 -- availability check: skip the module if this build lacks it
        vtkMRMLVectorVolumeNode,
        vtkMRMLVolumeArchetypeStorageNode,
    )
except ImportError as exc:  # pragma: no cover
    pytest.skip(f"slicer-core lacks MRML volume classes: {exc}", allow_module_level=True)

from test_io_support import assert_same_voxels, random_volume, voxel_indices  # noqa: E402

from pantheon.io import Volume, read_volume, write_volume  # noqa: E402


@pytest.fixture
def scene(mrml_scene):
    return mrml_scene


def _node_from_volume(scene, v: Volume):
    node = vtkMRMLVectorVolumeNode() if v.components > 1 else vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    arr, m = v.to_slicer()
    slicer.util.updateVolumeFromArray(node, arr)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
    return node


def _volume_from_node(node) -> Volume:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return Volume.from_slicer(slicer.util.arrayFromVolume(node), slicer.util.arrayFromVTKMatrix(m))


@pytest.mark.parametrize("seed,left,comps", [(0, False, 1), (1, True, 1), (2, False, 3), (3, True, 1)])
def test_volume_node_round_trip(scene, seed, left, comps):
    v = random_volume(seed, left_handed=left, components=comps, dtype=np.uint8 if comps > 1 else np.int16)
    node = _node_from_volume(scene, v)
    arr, m = v.to_slicer()
    got = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(got)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(got), m, atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), arr)
    np.testing.assert_allclose(node.GetSpacing(), v.spacing, atol=1e-12)
    np.testing.assert_allclose(node.GetOrigin(), v.index_to_ras()[:3, 3], atol=1e-9)
    # Slicer's own IJK -> RAS for a few voxels, against ours
    for ijk in voxel_indices(v.shape)[::7]:
        ras = np.array(m @ np.append(ijk, 1.0))[:3]
        np.testing.assert_allclose(ras, v.ijk_to_world(ijk, ras=True)[0], atol=1e-9)
    assert_same_voxels(v, _volume_from_node(node), atol_mm=1e-9)


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".mha"])
def test_slicer_reads_our_files(scene, tmp_path, ext):
    v = random_volume(4, left_handed=True, dtype=np.float32)
    path = write_volume(v, tmp_path / f"ours{ext}")
    node = vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    storage = vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    assert_same_voxels(v, _volume_from_node(node))


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_we_read_slicer_files(scene, tmp_path, ext):
    v = random_volume(5, dtype=np.int16)
    node = _node_from_volume(scene, v)
    storage = vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    path = tmp_path / f"slicer{ext}"
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    assert_same_voxels(v, read_volume(path))
