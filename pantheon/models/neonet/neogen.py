"""NeoGen: mask-conditioned 3D latent diffusion (KL autoencoder + latent UNet + ControlNet).

Papers: NeoNet (arXiv 2603.29449) states that NeoGen is "a 3D latent diffusion model with ControlNet,
conditioned on anatomical masks" that synthesises image patches to balance PNI+/PNI- to 1:1. The
group's 3D-LLDM (arXiv 2603.23845) and FOSCU (arXiv 2603.29343) describe the same family of
generator. No code or architecture table is public, so this follows the MONAI/MAISI design:

- stage "vae": ``monai.networks.nets.AutoencoderKL`` (L1 reconstruction + KL, optional perceptual);
- stage "ldm": ``monai.networks.nets.DiffusionModelUNet`` on scaled latents, epsilon prediction with
  ``DDPMScheduler`` noise, MSE; PNI class conditioning through ``num_class_embeds=2``
  (``class_labels``: 0 = PNI-, 1 = PNI+) -- class embeddings are added to the time embedding, which
  MONAI supports without cross-attention; the paper does not say whether the class is a condition;
- stage "controlnet": ``monai.networks.nets.ControlNet`` mirroring the UNet, fed the one-hot
  anatomical masks (tumour, liver) at *image* resolution (MAISI style); its conditioning embedding
  downsamples by the autoencoder's factor, so its residuals land on the latent grid. The UNet is
  frozen in this stage;
- sampling: ``DDIMScheduler`` (eta 0 by default) with the same beta schedule, ControlNet residuals
  added to the UNet at every step, then the autoencoder decodes. By default from pure noise; with
  ``init_strength`` < 1 from a noised mask-painted guide image (SDEdit-style, an assumption).

Every size and hyper-parameter default is an **assumption** (mostly MAISI's, see
``pantheon.models.neonet``) unless stated.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...defaults import NEOGEN_DDIM_STEPS
from ...errors import InputError
from ...progress import Reporter

PNI_NEGATIVE = 0
PNI_POSITIVE = 1
MASK_CHANNELS = ("tumour", "liver")
STAGES = ("vae", "ldm", "controlnet")


def _tuple(v, n: int, cast=int) -> tuple:
    if isinstance(v, (int, float, bool)):
        return (cast(v),) * n
    t = tuple(cast(x) for x in v)
    if len(t) != n:
        raise ValueError(f"expected {n} values, got {v!r}")
    return t


def masks_from_labels(label_map: torch.Tensor, tumour_label: int = 2, liver_label: int = 1) -> torch.Tensor:
    """One-hot conditioning masks (B, 2, D, H, W) = (tumour, liver) from an integer label map.

    ``label_map`` is (D, H, W), (B, D, H, W) or (B, 1, D, H, W) using NeoSeg's class ids (1 liver,
    2 tumour). The liver channel includes the tumour voxels (the tumour lies inside the liver) --
    an assumption; pass ``liver_label`` only to change which id counts as liver.
    """
    lm = torch.as_tensor(label_map)
    if lm.ndim == 3:
        lm = lm[None]
    if lm.ndim == 5:
        if lm.shape[1] != 1:
            raise InputError(f"A label map must have one channel, got shape {tuple(lm.shape)}.")
        lm = lm[:, 0]
    if lm.ndim != 4:
        raise InputError(f"A label map must be 3D, got shape {tuple(lm.shape)}.")
    lm = lm.round().long()
    tumour = lm == tumour_label
    liver = (lm == liver_label) | tumour
    return torch.stack([tumour, liver], dim=1).float()


class NeoGen(nn.Module):
    """The NeoGen generator: AutoencoderKL + latent DiffusionModelUNet + ControlNet + schedulers.

    Args (all sizes are assumptions unless noted):
        in_channels: image channels (1: T1 HBP MRI, intensities scaled to [0, 1] or [-1, 1]).
        patch_size: nominal patch (D, H, W) used to validate the configuration. Assumption: 96x96x48
            (the group's TLCR crop on sibling cohorts). Any size meeting the divisibility rules works.
        mask_channels: one-hot anatomical mask channels for the ControlNet. Assumption: 2 (tumour, liver).
        num_classes: PNI class embeddings in UNet and ControlNet (2 = PNI-/PNI+); None disables class
            conditioning. Assumption: class conditioning is used at all (the paper does not say).
        ae_channels: AutoencoderKL widths; downsampling factor is 2**(len-1). Assumption: (64, 128, 256).
        ae_num_res_blocks: residual blocks per AE level. Assumption: 2.
        ae_attention_levels: AE attention per level. Assumption: none (MAISI).
        latent_channels: latent channels. Assumption: 4 (MAISI).
        ae_norm_num_groups: GroupNorm groups in the AE. Assumption: 32.
        unet_channels: latent UNet widths. Assumption: (64, 128, 256) (3 levels fit a 24x24x12 latent).
        unet_attention_levels: attention per UNet level. Assumption: (False, True, True). MONAI's attention
            blocks (the mid block always has one) need the optional package ``einops``.
        unet_num_head_channels: channels per attention head per level. Assumption: (0, 32, 32).
        unet_num_res_blocks: residual blocks per UNet level. Assumption: 2.
        unet_norm_num_groups: GroupNorm groups in UNet/ControlNet. Assumption: 32.
        controlnet_embedding_channels: ControlNet conditioning-embedding widths; its length must be
            len(ae_channels) so that the stride-2 stages match the AE factor. Default None = the MAISI
            (8, 32, 64) pattern extended/truncated to that length. Assumption.
        num_train_timesteps, schedule, beta_start, beta_end: DDPM noise schedule. Assumption: 1000,
            "scaled_linear_beta", 0.0015, 0.0195 (MAISI / MONAI 3D-LDM).
        kl_weight: KL weight in the VAE stage. Assumption: 1e-7 (MAISI).
        perceptual_weight: perceptual-loss weight in the VAE stage. Default 0 (off); > 0 builds MONAI's
            ``PerceptualLoss(squeeze, fake 3D)``, which downloads pretrained weights.
        tumour_loss_weight: extra weight on latent voxels under the tumour in the ControlNet stage
            (MAISI uses 100 on its tumour label). Default 1 = no weighting. Assumption.
        conditioning_scale: ControlNet residual scale at sampling time. Default 1.0.
        init_strength: where DDIM starts, as a fraction of the noise schedule. 1.0 (default) = pure
            Gaussian noise, the standard sampler. Below 1, sampling starts from the latent of a coarse
            *guide image* painted from the masks (:meth:`guide_image`), noised to that level
            (SDEdit-style): the layout then comes from the masks by construction and the diffusion
            model (with the ControlNet) redraws texture, edges and everything outside the masks.
            Assumption, for small CPU-trained demo generators whose ControlNet alone follows the
            tumour mask only loosely; the demo build picks it on validation phantoms.
        scale_factor: latent scale (z_scaled = z * scale_factor); set it from data with
            :meth:`calibrate_scale_factor` (1/std of latents, common MONAI practice). Stored as a buffer.
    """

    kind = "neogen"
    #: the mask channel whose latent voxels ``tumour_loss_weight`` weights (the tumour)
    WEIGHTED_CHANNEL = 0

    def __init__(self, in_channels: int = 1, patch_size: Sequence[int] = (96, 96, 48), mask_channels: int = 2,
                 num_classes: Optional[int] = 2,
                 ae_channels: Sequence[int] = (64, 128, 256), ae_num_res_blocks: int = 2,
                 ae_attention_levels: Optional[Sequence[bool]] = None, latent_channels: int = 4,
                 ae_norm_num_groups: int = 32,
                 unet_channels: Sequence[int] = (64, 128, 256),
                 unet_attention_levels: Sequence[bool] = (False, True, True),
                 unet_num_head_channels: Sequence[int] = (0, 32, 32), unet_num_res_blocks: int = 2,
                 unet_norm_num_groups: int = 32,
                 controlnet_embedding_channels: Optional[Sequence[int]] = None,
                 num_train_timesteps: int = 1000, schedule: str = "scaled_linear_beta",
                 beta_start: float = 0.0015, beta_end: float = 0.0195,
                 kl_weight: float = 1e-7, perceptual_weight: float = 0.0, tumour_loss_weight: float = 1.0,
                 conditioning_scale: float = 1.0, scale_factor: float = 1.0, init_strength: float = 1.0):
        super().__init__()
        from monai.networks.nets import AutoencoderKL, ControlNet, DiffusionModelUNet
        from monai.networks.schedulers import DDPMScheduler

        ae_channels = _tuple(ae_channels, len(tuple(ae_channels)))
        n_ae = len(ae_channels)
        ae_attention_levels = _tuple(ae_attention_levels if ae_attention_levels is not None else False, n_ae, bool)
        unet_channels = _tuple(unet_channels, len(tuple(unet_channels)))
        n_u = len(unet_channels)
        unet_attention_levels = _tuple(unet_attention_levels, n_u, bool)
        unet_num_head_channels = _tuple(unet_num_head_channels, n_u)
        if controlnet_embedding_channels is None:
            base = (8, 32, 64, 128, 256, 512)
            controlnet_embedding_channels = base[:n_ae] if n_ae <= len(base) else base + (512,) * (n_ae - len(base))
        cn_emb = _tuple(controlnet_embedding_channels, len(tuple(controlnet_embedding_channels)))
        if len(cn_emb) != n_ae:
            raise ValueError(f"controlnet_embedding_channels {cn_emb} must have len(ae_channels) = {n_ae} entries so "
                             f"the mask is downsampled {2 ** (n_ae - 1)}x like the autoencoder")
        if num_classes is not None and int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        self.config = dict(
            in_channels=int(in_channels), patch_size=list(_tuple(patch_size, 3)), mask_channels=int(mask_channels),
            num_classes=None if num_classes is None else int(num_classes),
            ae_channels=list(ae_channels), ae_num_res_blocks=int(ae_num_res_blocks),
            ae_attention_levels=list(ae_attention_levels), latent_channels=int(latent_channels),
            ae_norm_num_groups=int(ae_norm_num_groups), unet_channels=list(unet_channels),
            unet_attention_levels=list(unet_attention_levels), unet_num_head_channels=list(unet_num_head_channels),
            unet_num_res_blocks=int(unet_num_res_blocks), unet_norm_num_groups=int(unet_norm_num_groups),
            controlnet_embedding_channels=list(cn_emb), num_train_timesteps=int(num_train_timesteps),
            schedule=str(schedule), beta_start=float(beta_start), beta_end=float(beta_end),
            kl_weight=float(kl_weight), perceptual_weight=float(perceptual_weight),
            tumour_loss_weight=float(tumour_loss_weight), conditioning_scale=float(conditioning_scale))
        if not 0.0 < float(init_strength) <= 1.0:
            raise ValueError(f"init_strength must be in (0, 1], got {init_strength}")
        if float(init_strength) != 1.0:  # absent from the config = 1.0, so older checkpoints load unchanged
            self.config["init_strength"] = float(init_strength)
        _require_einops()  # MONAI's DiffusionModelUNet/ControlNet mid block always has attention
        self.ae_factor = 2 ** (n_ae - 1)
        self.unet_factor = 2 ** (n_u - 1)
        self.check_spatial_shape(self.config["patch_size"], what="patch_size")

        self.autoencoder = AutoencoderKL(
            spatial_dims=3, in_channels=in_channels, out_channels=in_channels,
            num_res_blocks=(int(ae_num_res_blocks),) * n_ae, channels=ae_channels,
            attention_levels=ae_attention_levels, latent_channels=latent_channels,
            norm_num_groups=ae_norm_num_groups, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        block_args = dict(spatial_dims=3, in_channels=latent_channels, num_res_blocks=(int(unet_num_res_blocks),) * n_u,
                          channels=unet_channels, attention_levels=unet_attention_levels,
                          norm_num_groups=unet_norm_num_groups, num_head_channels=unet_num_head_channels,
                          num_class_embeds=self.config["num_classes"])
        self.unet = DiffusionModelUNet(out_channels=latent_channels, **block_args)
        self.controlnet = ControlNet(conditioning_embedding_in_channels=mask_channels,
                                     conditioning_embedding_num_channels=cn_emb, **block_args)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, schedule=schedule,
                                             beta_start=beta_start, beta_end=beta_end, clip_sample=False)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    # ----------------------------------------------------------------------------- shapes
    def check_spatial_shape(self, spatial: Sequence[int], what: str = "patch") -> Tuple[int, int, int]:
        """Latent spatial shape for an image ``spatial`` shape; InputError when sizes do not divide."""
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != 3:
            raise InputError(f"NeoGen works on 3D patches; {what} has shape {spatial}.")
        f, g = self.ae_factor, self.unet_factor
        if any(s % f for s in spatial):
            raise InputError(f"{what} {spatial} is not divisible by the autoencoder's downsampling factor {f} "
                             f"on every axis.")
        latent = tuple(s // f for s in spatial)
        if any(s % g for s in latent):
            raise InputError(f"{what} {spatial} gives a latent of {latent}, which is not divisible by the diffusion "
                             f"UNet's downsampling factor {g}; use a patch divisible by {f * g} on every axis.")
        return latent

    def _check_image(self, x: torch.Tensor, what: str = "image") -> None:
        if x.ndim != 5 or x.shape[1] != self.config["in_channels"]:
            raise InputError(f"NeoGen expects {what} shaped (B, {self.config['in_channels']}, D, H, W), "
                             f"got {tuple(x.shape)}.")
        self.check_spatial_shape(x.shape[2:], what)

    def _check_masks(self, masks: torch.Tensor, spatial=None) -> None:
        c = self.config["mask_channels"]
        if masks.ndim != 5 or masks.shape[1] != c:
            raise InputError(f"NeoGen expects anatomical masks shaped (B, {c}, D, H, W) (one-hot "
                             f"{', '.join(MASK_CHANNELS[:c]) if c <= len(MASK_CHANNELS) else c} channels), "
                             f"got {tuple(masks.shape)}.")
        if spatial is not None and tuple(masks.shape[2:]) != tuple(spatial):
            raise InputError(f"Masks {tuple(masks.shape[2:])} and image {tuple(spatial)} differ in size.")
        self.check_spatial_shape(masks.shape[2:], "masks")

    def _labels(self, labels, batch: int, device) -> Optional[torch.Tensor]:
        n = self.config["num_classes"]
        if n is None:
            if labels is not None:
                raise InputError("This NeoGen has no class conditioning (num_classes=None); pass labels=None.")
            return None
        if labels is None:
            raise InputError(f"This NeoGen is class-conditioned; pass labels (0 = PNI-, 1 = PNI+) for the {batch} "
                             f"sample(s).")
        lab = torch.as_tensor(labels, device=device).long().reshape(-1)
        if lab.numel() == 1 and batch > 1:
            lab = lab.expand(batch)
        if lab.numel() != batch:
            raise InputError(f"Got {lab.numel()} labels for a batch of {batch}.")
        if lab.min() < 0 or lab.max() >= n:
            raise InputError(f"Labels must be class ids in [0, {n - 1}], got {lab.tolist()}.")
        return lab.contiguous()

    # ----------------------------------------------------------------------------- autoencoder
    def encode(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Scaled latent ``z * scale_factor`` (B, latent_channels, D/f, H/f, W/f); the posterior mean
        unless ``sample`` (reparameterised draw, global RNG)."""
        self._check_image(x)
        z_mu, z_sigma = self.autoencoder.encode(x)
        z = self.autoencoder.sampling(z_mu, z_sigma) if sample else z_mu
        return z * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image (B, in_channels, D, H, W) from a scaled latent."""
        if z.ndim != 5 or z.shape[1] != self.config["latent_channels"]:
            raise InputError(f"Expected a latent shaped (B, {self.config['latent_channels']}, d, h, w), "
                             f"got {tuple(z.shape)}.")
        return self.autoencoder.decode(z / self.scale_factor)

    @torch.no_grad()
    def calibrate_scale_factor(self, x: torch.Tensor) -> float:
        """Set ``scale_factor`` = 1 / std of the unscaled latent means of ``x``; returns it."""
        self._check_image(x)
        z_mu, _ = self.autoencoder.encode(x)
        std = float(z_mu.float().std())
        if not std > 0:
            raise InputError("Cannot calibrate the latent scale: the latents have zero spread.")
        self.scale_factor.fill_(1.0 / std)
        return 1.0 / std

    # ----------------------------------------------------------------------------- training
    def stage_parameters(self, stage: str) -> Iterator[nn.Parameter]:
        """The parameters an optimiser should train in ``stage`` ("vae", "ldm" or "controlnet")."""
        return {"vae": self.autoencoder, "ldm": self.unet,
                "controlnet": self.controlnet}[self._stage(stage)].parameters()

    @staticmethod
    def _stage(stage: str) -> str:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        return stage

    def init_controlnet_from_unet(self, live_embedding: bool = False, embedding_std: float = 0.02) -> None:
        """Copy the UNet's shared encoder weights into the ControlNet (its zero convs and mask
        embedding keep their own initialisation), the usual start of the ControlNet stage.

        ``live_embedding``: draw the mask embedding's last conv from N(0, ``embedding_std``) instead of
        MONAI's zeros. With both that conv and the output convs at zero, the mask receives no gradient
        until the output convs have moved, a two-stage start that a few hundred CPU steps did not get
        past (the demo's ControlNet loss stayed flat); with a live embedding the output convs see
        the mask from the first step. The output convs stay zero, so the frozen UNet's behaviour at
        the start of training is unchanged. Assumption (ControlNet paper zero-initialises both).
        """
        self.controlnet.load_state_dict(self.unet.state_dict(), strict=False)
        if live_embedding:
            for prm in self.controlnet.controlnet_cond_embedding.conv_out.parameters():
                if prm.ndim > 1:
                    nn.init.normal_(prm, 0.0, float(embedding_std))

    def _perceptual(self):
        loss = self.__dict__.get("_perceptual_loss")
        if loss is None:
            from monai.losses import PerceptualLoss
            loss = PerceptualLoss(spatial_dims=3, network_type="squeeze", is_fake_3d=True, fake_3d_ratio=0.2)
            loss = loss.to(self.scale_factor.device).eval()
            self.__dict__["_perceptual_loss"] = loss  # not a submodule: stays out of the state dict
        return loss

    def reconstruction_weight(self, masks: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-voxel weight (B, 1, D, H, W) of the autoencoder's L1 loss, or None for a plain mean."""
        return None

    def training_losses(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None, labels=None,
                        stage: str = "ldm", generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Losses for one batch of one training stage; ``out["loss"]`` is what to backpropagate.

        - "vae": ``recon`` (L1, weighted by :meth:`reconstruction_weight` when it gives one), ``kl`` (sum
          over latent voxels, mean over batch), optional ``perceptual``;
          only the autoencoder receives gradients.
        - "ldm": ``mse`` of the UNet's noise prediction on noised scaled latents (autoencoder frozen);
          ``labels`` are the PNI classes.
        - "controlnet": ``mse`` with ControlNet residuals from ``masks`` (B, mask_channels, D, H, W) at image
          resolution; the UNet and autoencoder are frozen (they receive no gradients).
        ``generator`` makes the timestep and noise draws reproducible (the VAE's own sampling uses the
        global RNG).
        """
        stage = self._stage(stage)
        self._check_image(x)
        cfg = self.config
        if stage == "vae":
            recon, z_mu, z_sigma = self.autoencoder(x)
            weight = self.reconstruction_weight(masks, x)
            err = (recon.float() - x.float()).abs()
            rec = err.mean() if weight is None else (err * weight).sum() / (weight.sum() * err.shape[1])
            kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1,
                                 dim=list(range(1, z_mu.ndim))).mean()
            out = {"recon": rec, "kl": kl}
            loss = rec + cfg["kl_weight"] * kl
            if cfg["perceptual_weight"] > 0:
                out["perceptual"] = self._perceptual()(recon.float(), x.float())
                loss = loss + cfg["perceptual_weight"] * out["perceptual"]
            out["loss"] = loss
            return out

        B = x.shape[0]
        lab = self._labels(labels, B, x.device)
        with torch.no_grad():
            z = self.encode(x, sample=True)
        dev = generator.device if generator is not None else z.device
        t = torch.randint(0, self.noise_scheduler.num_train_timesteps, (B,), generator=generator,
                          device=dev).to(z.device)
        noise = torch.randn(z.shape, generator=generator, device=dev, dtype=z.dtype).to(z.device)
        noisy = self.noise_scheduler.add_noise(original_samples=z, noise=noise, timesteps=t)
        if stage == "ldm":
            pred = self.unet(noisy, t, class_labels=lab)
            mse = F.mse_loss(pred.float(), noise.float())
            return {"mse": mse, "loss": mse}

        if masks is None:
            raise InputError("The ControlNet stage needs anatomical masks.")
        self._check_masks(masks, x.shape[2:])
        masks = masks.to(z.device, z.dtype)
        down, mid = self.controlnet(x=noisy, timesteps=t, controlnet_cond=masks, conditioning_scale=1.0,
                                    class_labels=lab)
        with _frozen(self.unet):
            pred = self.unet(noisy, t, class_labels=lab, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid)
        err = (pred.float() - noise.float()) ** 2
        w = cfg["tumour_loss_weight"]
        if w != 1.0:
            c = self.WEIGHTED_CHANNEL
            tumour = F.adaptive_max_pool3d(masks[:, c:c + 1].float(), z.shape[2:])
            err = err * (1.0 + (w - 1.0) * tumour)
        mse = err.mean()
        return {"mse": mse, "loss": mse}

    # ----------------------------------------------------------------------------- sampling
    def make_sampler(self, num_inference_steps: int = NEOGEN_DDIM_STEPS):
        """A fresh DDIM scheduler with the training beta schedule, set to ``num_inference_steps``."""
        from monai.networks.schedulers import DDIMScheduler
        cfg = self.config
        n = int(num_inference_steps)
        if not 1 <= n <= cfg["num_train_timesteps"]:
            raise ValueError(f"The number of sampling steps must be between 1 and the model's "
                             f"{cfg['num_train_timesteps']} training steps, got {n}.")
        sched = DDIMScheduler(num_train_timesteps=cfg["num_train_timesteps"], schedule=cfg["schedule"],
                              beta_start=cfg["beta_start"], beta_end=cfg["beta_end"], clip_sample=False)
        sched.set_timesteps(n)
        return sched

    #: Guide-image intensities on the normalised [0, 1] HBP scale: outside the liver, liver, tumour
    #: (medians measured on the demo phantoms: fat/muscle mix ~0.3, liver ~0.85, tumour ~0.45).
    GUIDE_INTENSITIES = (0.3, 0.85, 0.45)

    def guide_image(self, masks: torch.Tensor) -> torch.Tensor:
        """A coarse image (B, in_channels, D, H, W) painted from one-hot (tumour, liver) masks with
        :data:`GUIDE_INTENSITIES`; the start of sampling when ``init_strength`` < 1."""
        bg, liver, tumour = self.GUIDE_INTENSITIES
        m = masks.float()
        img = torch.full_like(m[:, :1], bg)
        if m.shape[1] > 1:
            img = torch.where(m[:, 1:2] > 0.5, torch.full_like(img, liver), img)
        img = torch.where(m[:, :1] > 0.5, torch.full_like(img, tumour), img)
        return img.expand(-1, self.config["in_channels"], *img.shape[2:])

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, labels=PNI_POSITIVE, num_inference_steps: int = NEOGEN_DDIM_STEPS,
                 generator: Optional[torch.Generator] = None, progress=None, cancel=None,
                 conditioning_scale: Optional[float] = None, eta: float = 0.0,
                 init_strength: Optional[float] = None) -> torch.Tensor:
        """Synthetic images (B, in_channels, D, H, W) for one-hot masks (B, mask_channels, D, H, W).

        DDIM from Gaussian latent noise (drawn with ``generator``: same generator state, same output);
        at each step the ControlNet's residuals (scaled by ``conditioning_scale``) are added to the UNet;
        the final latent is decoded. ``init_strength`` (default: the config's, 1.0 = pure noise)
        starts from the noised latent of :meth:`guide_image` instead, skipping the DDIM steps above
        that noise level. ``labels``: an int for all samples or one per sample
        (0 = PNI-, 1 = PNI+). ``progress(fraction, message)`` is called after every step; ``cancel``
        (Event or callable) is checked before every step and raises :class:`pantheon.errors.Cancelled`.
        """
        rep = Reporter(progress, cancel)
        rep.check()
        masks = torch.as_tensor(masks)
        self._check_masks(masks)
        latent = self.check_spatial_shape(masks.shape[2:], "masks")
        p = self.scale_factor
        device, dtype = p.device, next(self.unet.parameters()).dtype
        B = masks.shape[0]
        lab = self._labels(labels, B, device)
        masks = masks.to(device, dtype)
        scale = self.config["conditioning_scale"] if conditioning_scale is None else float(conditioning_scale)
        sched = self.make_sampler(num_inference_steps)
        gdev = generator.device if generator is not None else device
        z = torch.randn((B, self.config["latent_channels"], *latent), generator=generator, device=gdev,
                        dtype=dtype).to(device)
        strength = float(self.config.get("init_strength", 1.0) if init_strength is None else init_strength)
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"init_strength must be in (0, 1], got {strength}")
        timesteps = sched.timesteps
        if strength < 1.0:
            t_start = int(round(strength * (self.config["num_train_timesteps"] - 1)))
            timesteps = timesteps[timesteps <= t_start]
            if len(timesteps) == 0:
                timesteps = sched.timesteps[-1:]
            was = self.training
            self.eval()
            z0 = self.encode(self.guide_image(masks))
            self.train(was)
            z = sched.add_noise(original_samples=z0, noise=z,
                                timesteps=torch.full((B,), int(timesteps[0]), device=device, dtype=torch.long))
        n = len(timesteps)
        was_training = self.training
        self.eval()
        try:
            for i, t in enumerate(timesteps):
                rep.check()
                tt = torch.full((B,), int(t), device=device, dtype=torch.long)
                down, mid = self.controlnet(x=z, timesteps=tt, controlnet_cond=masks, conditioning_scale=scale,
                                            class_labels=lab)
                eps = self.unet(z, tt, class_labels=lab, down_block_additional_residuals=down,
                                mid_block_additional_residual=mid)
                z, _ = sched.step(eps, int(t), z, eta=eta, generator=generator)
                rep(0.95 * (i + 1) / n, f"Denoising step {i + 1}/{n}")
            rep.check()
            images = self.decode(z)
        finally:
            self.train(was_training)
        rep(1.0, "Decoded synthetic patches")
        return images


def _require_einops() -> None:
    import importlib.util
    if importlib.util.find_spec("einops") is None:
        raise ImportError("NeoGen needs MONAI's optional dependency 'einops' (pip install einops): the attention "
                          "blocks of MONAI's DiffusionModelUNet and ControlNet are built with it.")


@contextlib.contextmanager
def _frozen(*modules: nn.Module):
    """Temporarily stop parameters from requiring grad (gradients still flow *through* them)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def build_neogen(**kw) -> NeoGen:
    """A :class:`NeoGen` with the documented defaults; keyword arguments override them."""
    return NeoGen(**kw)
