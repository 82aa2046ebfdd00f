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
says it is an assumption.** Where a default is not a guess of ours it comes from the group's sibling
PNI works on other cohorts (SCINTILLA-SNN; the MMA-Former code, github.com/youngunghan/mma-former:
1.5625 x 1.5625 x 4 mm spacing, 96 x 96 x 48 tumour-centred crops, patient-level 5-fold CV with the
checkpoint chosen by validation AUC, AdamW, flips + intensity jitter) or from MONAI's MAISI configs
(Project-MONAI/tutorials ``generation/maisi``). The paper does not give the crop, the network sizes,
the sampler or the classifier head. No published weights exist.

Modules: ``neoseg`` (NeoSeg), ``neogen`` (NeoGen), ``pattennet`` (PattenNet), ``checkpoint``
(safetensors save/load). TLCR lives in ``tlcr``.
"""

from .. import lazy_exports

_EXPORTS = {
    "KINDS": ".checkpoint",
    "check_component_state": ".checkpoint",
    "load_neonet_component": ".checkpoint",
    "read_neonet_checkpoint": ".checkpoint",
    "save_neonet_component": ".checkpoint",
    "MASK_CHANNELS": ".neogen",
    "PNI_NEGATIVE": ".neogen",
    "PNI_POSITIVE": ".neogen",
    "NeoGen": ".neogen",
    "build_neogen": ".neogen",
    "masks_from_labels": ".neogen",
    "NEOSEG_CLASSES": ".neoseg",
    "NeoSeg": ".neoseg",
    "build_neoseg": ".neoseg",
    "DualAttentionBlock3D": ".pattennet",
    "PattenNet": ".pattennet",
    "attention_to_image": ".pattennet",
    "build_pattennet": ".pattennet",
    "CropBox": ".tlcr",
    "apply_crop": ".tlcr",
    "box_as_roi": ".tlcr",
    "invert_crop": ".tlcr",
    "largest_component": ".tlcr",
    "tlcr_box": ".tlcr",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["NeoSeg", "build_neoseg", "NEOSEG_CLASSES", "NeoGen", "build_neogen", "masks_from_labels",
           "MASK_CHANNELS", "PNI_NEGATIVE", "PNI_POSITIVE", "PattenNet", "build_pattennet", "DualAttentionBlock3D",
           "attention_to_image", "save_neonet_component", "load_neonet_component", "read_neonet_checkpoint",
           "check_component_state", "KINDS", "CropBox", "tlcr_box", "apply_crop", "invert_crop", "box_as_roi",
           "largest_component"]
