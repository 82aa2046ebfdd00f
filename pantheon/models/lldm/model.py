"""The 3D-LLDM network (arXiv 2603.23845): NeoGen's VAE + latent UNet + ControlNet with one
conditioning channel per 3D-LLDM label, and its safetensors checkpoint.

The ControlNet reads the label map as four one-hot channels at image resolution
(:data:`LABEL_CHANNELS`: liver parenchyma, portal vein, hepatic veins, HCC; the background is
all-zero), its conditioning embedding downsampling by the autoencoder's factor (MAISI style, as
NeoGen). No class conditioning: the label map is the only condition. Sampling starts from pure
Gaussian latent noise by default (the paper's setting as far as the abstract tells);
``init_strength`` < 1 starts instead from a noised guide image painted from the labels with
:data:`LLDM.GUIDE_INTENSITIES` (SDEdit-style, an assumption kept from NeoGen for small demo models).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from ...errors import CheckpointError
from ..checkpoints import check_state_dict, read_safetensors, save_safetensors
from ..neonet.neogen import NeoGen

FORMAT = "pantheon-lldm-v1"
#: ControlNet input channels, in order; the label map's values 1-4 (see
#: :data:`pantheon.synth.hcc_mri_phantom.HCC_LABELS`).
LABEL_CHANNELS: Tuple[str, ...] = ("liver", "portal_vein", "hepatic_vein", "hcc")

#: The CPU demo configuration (assumption: sized so a 2-core CPU trains it in under an hour on
#: 32 x 48 x 64 model grids). Autoencoder factor 4, UNet factor 4: grids divisible by 16.
DEMO_CONFIG: Dict[str, object] = dict(
    ae_channels=(8, 16, 32), ae_num_res_blocks=1, latent_channels=8, ae_norm_num_groups=8,
    unet_channels=(16, 32, 48), unet_attention_levels=(False, False, True), unet_num_head_channels=(0, 0, 16),
    unet_num_res_blocks=1, unet_norm_num_groups=8, controlnet_embedding_channels=(8, 16, 32),
    # recon_label_weight 20: at 5 the autoencoder's own reconstructions of held-out phantoms had the
    # vessels at 0.68-0.76 of the liver (real 0.48-0.50), at 20 at 0.54-0.64 (1285 steps, one thread)
    num_train_timesteps=1000, tumour_loss_weight=5.0, recon_label_weight=20.0)


class LLDM(NeoGen):
    """NeoGen with ``mask_channels`` = len(:data:`LABEL_CHANNELS`) and no class conditioning. Every
    other argument as :class:`~pantheon.models.neonet.neogen.NeoGen` (``patch_size`` is only the
    nominal grid used to validate the configuration: any grid divisible by :attr:`size_multiple`
    works). ``tumour_loss_weight`` weights the latent voxels under the HCC channel in the ControlNet
    stage; ``recon_label_weight`` weights the autoencoder's L1 loss on vessel and HCC voxels (small
    dark structures a plain mean lets the autoencoder blur into the parenchyma; assumption, default 1
    = unweighted)."""

    kind = "lldm"
    WEIGHTED_CHANNEL = LABEL_CHANNELS.index("hcc")  # ``tumour_loss_weight`` weights the HCC
    #: Guide-image intensities on the normalised [0, 1] HBP scale, background then one per label
    #: channel (medians on the demo phantoms: enhancing parenchyma bright, vessels and HCC dark).
    GUIDE_INTENSITIES = (0.25, 0.82, 0.4, 0.4, 0.45)

    def __init__(self, patch_size=(32, 48, 64), recon_label_weight: float = 1.0, **kw):
        kw.setdefault("mask_channels", len(LABEL_CHANNELS))
        kw.setdefault("num_classes", None)
        if kw["mask_channels"] != len(LABEL_CHANNELS):
            raise ValueError(f"3D-LLDM conditions on {len(LABEL_CHANNELS)} label channels "
                             f"({', '.join(LABEL_CHANNELS)}), got mask_channels={kw['mask_channels']}")
        super().__init__(patch_size=patch_size, **kw)
        if not float(recon_label_weight) >= 1.0:
            raise ValueError(f"recon_label_weight must be >= 1, got {recon_label_weight}")
        if float(recon_label_weight) != 1.0:  # absent = 1.0: earlier checkpoints load unchanged
            self.config["recon_label_weight"] = float(recon_label_weight)

    @property
    def size_multiple(self) -> int:
        """Every side of a model grid must be a multiple of this (autoencoder x UNet downsampling)."""
        return self.ae_factor * self.unet_factor

    def reconstruction_weight(self, masks, x):
        w = self.config.get("recon_label_weight", 1.0)
        if masks is None or w == 1.0:
            return None
        self._check_masks(masks, x.shape[2:])
        small = masks[:, 1:].float().amax(dim=1, keepdim=True).to(x.device)  # vessels and HCC
        return 1.0 + (w - 1.0) * small

    def guide_image(self, masks: torch.Tensor) -> torch.Tensor:
        """A coarse image (B, in_channels, D, H, W) painted from the one-hot label channels."""
        m = masks.float()
        img = torch.full_like(m[:, :1], self.GUIDE_INTENSITIES[0])
        for c in range(m.shape[1]):  # later channels (vessels, HCC) paint over the parenchyma
            img = torch.where(m[:, c:c + 1] > 0.5, torch.full_like(img, self.GUIDE_INTENSITIES[c + 1]), img)
        return img.expand(-1, self.config["in_channels"], *img.shape[2:])


def build_lldm(**kw) -> LLDM:
    """An :class:`LLDM` with the demo configuration; keyword arguments override it."""
    return LLDM(**{**DEMO_CONFIG, **kw})


def save_lldm(model: LLDM, path, extra_metadata: Dict[str, str] = None):
    """Write the weights and the constructor config (safetensors metadata; nothing executable)."""
    import json
    if not isinstance(model, LLDM):
        raise TypeError(f"expected an LLDM, got {type(model).__name__}")
    meta = {**(extra_metadata or {}), "format": FORMAT, "kind": LLDM.kind, "config": json.dumps(model.config)}
    return save_safetensors(model.state_dict(), path, meta)


def load_lldm(path, map_location="cpu") -> LLDM:
    """Rebuild the model from the file's config, load its weights strictly, eval mode."""
    state, meta = read_safetensors(path, FORMAT, "Pantheon 3D-LLDM")
    if meta.get("kind") != LLDM.kind:
        raise CheckpointError(f"Checkpoint {path} holds a {meta.get('kind')!r}, not a 3D-LLDM.")
    try:
        model = LLDM(**dict(meta["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build a 3D-LLDM from its stored config: {exc}") from None
    check_state_dict(model, state, path, "3D-LLDM")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
