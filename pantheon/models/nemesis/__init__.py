"""NEMESIS: self-supervised CT foundation model (arXiv 2604.01612, IEEE AICAS 2026).

Masked autoencoder on 128^3 CT superpatches with dual (plane + axis) masking, adaptive patch
embedding with learnable summary tokens, and MATB transformer blocks. See ``mae.py``.
"""

from .loader import check_state_dict, infer_architecture, load_nemesis, read_checkpoint, save_nemesis
from .mae import NemesisMAE, Reconstruction, sinusoidal_position_codes
from .probe import BTCV_ORGANS, OrganProbe

__all__ = ["NemesisMAE", "Reconstruction", "load_nemesis", "save_nemesis", "read_checkpoint",
           "infer_architecture", "check_state_dict", "sinusoidal_position_codes", "OrganProbe", "BTCV_ORGANS"]
