"""MATHENA: Mamba-based tooth detection and per-tooth analysis on panoramic radiographs.

Paper: "MATHENA: Mamba-based Architectural Tooth Hierarchical Estimator and Holistic Evaluation
Network for Anatomy", Kim et al., arXiv 2604.00537 (2026). No public code; this is a
reconstruction from the paper's abstract and the authors' blog post (team-sudal.tistory.com/134:
VSS blocks at P4/P5, BiFPN neck, GCST at the HENA bottleneck, binary caries/anomaly labels), with
VMamba / Mamba-UNet / EfficientDet / FCOS building blocks; every assumption is a constructor argument.

- :class:`MATHEDetector` (``detector.py``): CNN backbone with four-directional VSS blocks at P4/P5,
  BiFPN neck, FCOS-style anchor-free head over FDI tooth classes.
- :class:`HENA` (``hena.py``): lightweight Mamba-UNet on per-tooth crops with a Global Context
  State Token at the bottleneck and caries / anomaly / developmental-stage heads.
- :class:`SS2D`, :class:`VSSBlock` (``vss.py``): the VMamba v0 building blocks, on
  :mod:`pantheon.models.ssm` kernels.
- ``save_mathena`` / ``load_mathena`` (``checkpoint.py``): safetensors with config metadata.
"""

from .. import lazy_exports

_EXPORTS = {
    "check_state_dict": ".checkpoint",
    "load_mathena": ".checkpoint",
    "read_mathena": ".checkpoint",
    "save_mathena": ".checkpoint",
    "ALL_FDI": ".detector",
    "PERMANENT_FDI": ".detector",
    "PRIMARY_FDI": ".detector",
    "BiFPN": ".detector",
    "MATHEBackbone": ".detector",
    "MATHEDetector": ".detector",
    "class_to_fdi": ".detector",
    "fdi_mirror": ".detector",
    "fdi_to_class": ".detector",
    "DEMIRJIAN_STAGES": ".hena",
    "GCST": ".hena",
    "HENA": ".hena",
    "STAGES": ".hena",
    "HENAOutput": ".hena",
    "FLIP_AVERAGE": ".hena",
    "MASK_THRESHOLD": ".hena",
    "crop_probabilities": ".hena",
    "SS2D": ".vss",
    "VSSBlock": ".vss",
    "set_scan_backend": ".vss",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

PAPER = "arXiv:2604.00537"

__all__ = ["MATHEDetector", "MATHEBackbone", "BiFPN", "HENA", "HENAOutput", "GCST", "SS2D", "VSSBlock",
           "set_scan_backend", "class_to_fdi", "fdi_to_class", "fdi_mirror", "PERMANENT_FDI", "PRIMARY_FDI",
           "ALL_FDI", "STAGES", "DEMIRJIAN_STAGES", "save_mathena", "load_mathena", "read_mathena",
           "check_state_dict", "PAPER"]
