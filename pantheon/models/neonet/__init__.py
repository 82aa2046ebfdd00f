"""NeoNet: MRI-based prediction of perineural invasion (PNI) in cholangiocarcinoma.

Papers (Seoul National University, IMSI Lab, with Samsung Medical Center and NVIDIA):

- NeoNet, arXiv 2603.29449: NeoSeg (segmentation + Tumor-Localized ROI Crop), NeoGen (3D latent
  diffusion with ControlNet conditioned on anatomical masks, used to balance PNI+/PNI- to 1:1) and
  NeoCls/PattenNet (frozen LDM encoder + 3D Dual Attention Blocks); 5-fold CV, maximum AUC 0.7903.
- 3D-LLDM, arXiv 2603.23845 (ISBI 2026): label-guided 3D latent diffusion with ControlNet for
  hepatobiliary-phase MRI, the group's generator design NeoGen follows.
- FOSCU, arXiv 2603.29343 (APCCAS 2025): Duo-Diffusion (3D LDM + ControlNet) and an enhanced 3D U-Net.

Only the abstracts are available, so the architectures are built from MONAI components
(``AutoencoderKL``, ``DiffusionModelUNet``, ``ControlNet``, ``DDPMScheduler``/``DDIMScheduler``,
``UNet``, ``sliding_window_inference``). **Every inferred size is a constructor argument whose docstring
says it is an assumption** (see the project's NeoNet spec, §7 and §10). No published weights exist.

Modules: ``neoseg`` (NeoSeg), ``neogen`` (NeoGen), ``pattennet`` (PattenNet), ``checkpoint``
(safetensors save/load). TLCR lives in ``tlcr``.
"""

from .checkpoint import (KINDS, check_component_state, load_neonet_component, read_neonet_checkpoint,
                         save_neonet_component)
from .neogen import MASK_CHANNELS, PNI_NEGATIVE, PNI_POSITIVE, NeoGen, build_neogen, masks_from_labels
from .neoseg import NEOSEG_CLASSES, NeoSeg, build_neoseg
from .pattennet import DualAttentionBlock3D, PattenNet, attention_to_image, build_pattennet
from .tlcr import CropBox, apply_crop, box_as_roi, invert_crop, largest_component, tlcr_box

__all__ = ["NeoSeg", "build_neoseg", "NEOSEG_CLASSES", "NeoGen", "build_neogen", "masks_from_labels",
           "MASK_CHANNELS", "PNI_NEGATIVE", "PNI_POSITIVE", "PattenNet", "build_pattennet", "DualAttentionBlock3D",
           "attention_to_image", "save_neonet_component", "load_neonet_component", "read_neonet_checkpoint",
           "check_component_state", "KINDS", "CropBox", "tlcr_box", "apply_crop", "invert_crop", "box_as_roi",
           "largest_component"]
