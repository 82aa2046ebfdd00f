"""Synthetic data for tests, demos and demo weights (no patient data needed).

- :mod:`pantheon.synth.ct_phantom`: abdominal CT phantoms with BTCV organ labels, rendered on any
  voxel geometry from anatomy defined in world (LPS mm) coordinates.
"""

from pantheon.synth.ct_phantom import (
    BTCV_LABELS,
    DEFAULT_FOV_MM,
    LABEL_OF,
    Grid,
    PatientParams,
    make_abdomen_phantom,
    make_phantom_dataset,
    orientation_matrix,
    random_grid,
    random_patient,
    sample_phantom_on_grid,
)

__all__ = [
    "BTCV_LABELS",
    "DEFAULT_FOV_MM",
    "LABEL_OF",
    "Grid",
    "PatientParams",
    "make_abdomen_phantom",
    "make_phantom_dataset",
    "orientation_matrix",
    "random_grid",
    "random_patient",
    "sample_phantom_on_grid",
]
