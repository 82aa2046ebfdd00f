"""MATHENA: Mamba-based tooth detection and per-tooth analysis on panoramic radiographs.

Paper: "MATHENA: Mamba-based Architectural Tooth Hierarchical Estimator and Holistic Evaluation
Network for Anatomy", Kim et al., arXiv 2604.00537 (2026). No public code; this is a
reconstruction following ``docs/mathena-spec.md`` (assumptions are constructor arguments).

- :class:`MATHEDetector` (``detector.py``): CNN backbone with four-directional VSS blocks at P4/P5,
  BiFPN neck, FCOS-style anchor-free head over FDI tooth classes.
- :class:`HENA` (``hena.py``): lightweight Mamba-UNet on per-tooth crops with a Global Context
  State Token at the bottleneck and caries / anomaly / developmental-stage heads.
- :class:`SS2D`, :class:`VSSBlock` (``vss.py``): the VMamba v0 building blocks, on
  :mod:`pantheon.models.ssm` kernels.
- ``save_mathena`` / ``load_mathena`` (``checkpoint.py``): safetensors with config metadata.
"""

from .checkpoint import check_state_dict, load_mathena, read_mathena, save_mathena
from .detector import (ALL_FDI, PERMANENT_FDI, PRIMARY_FDI, BiFPN, MATHEBackbone, MATHEDetector, class_to_fdi,
                       fdi_mirror, fdi_to_class)
from .hena import DEMIRJIAN_STAGES, GCST, HENA, STAGES, HENAOutput
from .vss import SS2D, VSSBlock, set_scan_backend

PAPER = "arXiv:2604.00537"

__all__ = ["MATHEDetector", "MATHEBackbone", "BiFPN", "HENA", "HENAOutput", "GCST", "SS2D", "VSSBlock",
           "set_scan_backend", "class_to_fdi", "fdi_to_class", "fdi_mirror", "PERMANENT_FDI", "PRIMARY_FDI",
           "ALL_FDI", "STAGES", "DEMIRJIAN_STAGES", "save_mathena", "load_mathena", "read_mathena",
           "check_state_dict", "PAPER"]
