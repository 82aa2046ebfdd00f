"""3D-LLDM: label-guided 3D latent diffusion for hepatobiliary-phase liver MRI.

Paper: 3D-LLDM, arXiv 2603.23845 (ISBI 2026; Seoul National University, IMSI Lab): a VAE, a latent
diffusion model and a ControlNet on the one-hot anatomical label map (liver, portal vein, hepatic
veins, hepatocellular carcinoma) turn label maps into whole hepatobiliary-phase MR volumes (FID
28.31; synthetic data raised HCC segmentation Dice by up to 11.15 % across five CNNs). Only the
abstract is available.

Built on NeoNet's generator (:class:`pantheon.models.neonet.neogen.NeoGen`: MONAI ``AutoencoderKL``,
``DiffusionModelUNet``, ``ControlNet``, DDPM training, DDIM sampling), which the same group's papers
describe as the same family; here with four label channels, no class conditioning, and whole
volumes instead of tumour-centred patches. **Assumptions** (the abstract gives none of them): the
model grid (closest-RAS axes at :data:`~pantheon.models.lldm.synthesis.MODEL_SPACING`, the label
map's whole field of view, padded to the networks' size multiple), the network sizes of the demo
configuration, the intensity scale (0.5th / 99.5th percentile of each training image = 0 / 1).

Modules: ``model`` (the network and its safetensors checkpoint), ``synthesis`` (label map ->
MR volume on the label map's exact grid), ``cli`` (``pantheon lldm``), ``plugin``.
"""

from .. import lazy_exports

_EXPORTS = {
    "LLDM": ".model",
    "LABEL_CHANNELS": ".model",
    "build_lldm": ".model",
    "save_lldm": ".model",
    "load_lldm": ".model",
    "lldm_labels": ".synthesis",
    "synthesize": ".synthesis",
    "prepare_labels": ".synthesis",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
