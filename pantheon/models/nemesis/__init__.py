"""NEMESIS: self-supervised CT foundation model (arXiv 2604.01612, IEEE AICAS 2026).

Masked autoencoder on 128^3 CT superpatches with dual (plane + axis) masking, adaptive patch
embedding with learnable summary tokens, and MATB transformer blocks. See ``mae.py``.
"""

from .. import lazy_exports

_EXPORTS = {
    "check_state_dict": ".loader",
    "infer_architecture": ".loader",
    "load_nemesis": ".loader",
    "read_checkpoint": ".loader",
    "save_nemesis": ".loader",
    "NemesisMAE": ".mae",
    "Reconstruction": ".mae",
    "sinusoidal_position_codes": ".mae",
    "BTCV_ORGANS": ".probe",
    "OrganProbe": ".probe",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["NemesisMAE", "Reconstruction", "load_nemesis", "save_nemesis", "read_checkpoint",
           "infer_architecture", "check_state_dict", "sinusoidal_position_codes", "OrganProbe", "BTCV_ORGANS"]
