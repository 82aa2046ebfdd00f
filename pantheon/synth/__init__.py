"""Synthetic data for tests, demos and demo weights (no patient data needed).

- :mod:`pantheon.synth.ct_phantom`: abdominal CT phantoms with BTCV organ labels, rendered on any
  voxel geometry from anatomy defined in world (LPS mm) coordinates.
- :mod:`pantheon.synth.opg`: panoramic dental X-rays with FDI-numbered teeth, caries, anomalies and
  Demirjian stages (MATHENA).
- :mod:`pantheon.synth.mri_phantom`: hepatobiliary-phase-like liver MRI with a cholangiocarcinoma
  and a documented perineural-invasion rule (NeoNet).
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
from pantheon.synth.mri_phantom import PNI_RULE, make_liver_mri_phantom, random_mri_patient, sample_mri_on_grid
from pantheon.synth.opg import SyntheticOPG, make_opg, make_opg_dataset

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
    "make_liver_mri_phantom",
    "random_mri_patient",
    "sample_mri_on_grid",
    "PNI_RULE",
    "make_opg",
    "make_opg_dataset",
    "SyntheticOPG",
]
