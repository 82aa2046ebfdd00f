"""NEMESIS masked autoencoder on CT superpatches.

Paper: "NEMESIS: Noise-suppressed Efficient MAE with Enhanced Superpatch Integration Strategy",
IEEE AICAS 2026, arXiv 2604.01612. Public code: github.com/whilethis00/NEMESIS-public
(``nemesis.models.mae.MAEgic3DMAE``); published weights: Hugging Face ``whilethis/NEMESIS``.

This is an independent implementation that keeps the published state-dict layout exactly (so the
released checkpoints load strictly) and reproduces the reference numbers. Differences from the
reference code, each deliberate:

- Attention runs through ``F.scaled_dot_product_attention`` on the same ``in_proj_weight`` /
  ``out_proj`` parameters as ``nn.MultiheadAttention`` (identical maths and keys), with the
  head split done by views, avoiding the layout copies of ``nn.MultiheadAttention``.
- Visible tokens are gathered in ascending index order on every device. The reference takes the
  order from ``torch.argsort(mask)``, which is stable only on CUDA; on CPU it scrambles the
  depth-slice grouping the blocks rely on (the weights were trained on CUDA; the fixtures in
  ``Testing/fixtures/nemesis`` use the ascending order).
- Masking is explicit (``mask_ratio`` argument, optional ``torch.Generator``) instead of a
  training-mode switch, so masked reconstruction can be explored in eval mode reproducibly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

Triple = Tuple[int, int, int]
MaskRatio = Union[float, Tuple[float, float]]


def _triple(v) -> Triple:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 values, got {v!r}")
    return t


def sinusoidal_position_codes(grid: Triple, embed_dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N, E) fixed codes: concat(z-code, y-code, x-code) of each token's (d, h, w) grid index."""
    dx = dy = embed_dim // 3
    dz = embed_dim - 2 * (embed_dim // 3)

    def axis_codes(length: int, width: int) -> torch.Tensor:
        half = width // 2
        pos = torch.arange(length, dtype=torch.float32)[:, None]
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        angles = pos * freqs[None]
        codes = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        return F.pad(codes, (0, width - codes.shape[1]))  # odd widths get one zero column

    D, H, W = grid
    d, h, w = torch.meshgrid(torch.arange(D), torch.arange(H), torch.arange(W), indexing="ij")
    return torch.cat([axis_codes(D, dz)[d.reshape(-1)],
                      axis_codes(H, dy)[h.reshape(-1)],
                      axis_codes(W, dx)[w.reshape(-1)]], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names and maths."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention from already projected (S, L, 3E) q|k|v; returns (S, L, E) after out_proj."""
        S, L, _ = qkv.shape
        qkv = qkv.view(S, L, 3, self.num_heads, self.embed_dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2],
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(S, L, self.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(F.linear(x, self.in_proj_weight, self.in_proj_bias))


class MATBlock(nn.Module):
    """Masked Anatomical Transformer Block: in-plane and through-depth attention in parallel.

    Tokens (B, N, E) are viewed as (B, T depth slices, L tokens per slice, E). Pre-norm attention
    with the two branches averaged, then a *post-norm* FFN whose residual is the normed stream, as
    in the released model.
    """

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.spatial_attn = SelfAttention(embed_dim, num_heads, dropout)
        self.depth_attn = SelfAttention(embed_dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        # indices 0 and 3 carry weights: the layout of the published state dict
        self.ffn = nn.Sequential(nn.Linear(embed_dim, ffn_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, embed_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, depth_slices: int) -> torch.Tensor:
        B, N, E = x.shape
        T, L = depth_slices, N // depth_slices
        h = self.norm1(x)
        spatial = self.spatial_attn(h.view(B * T, L, E)).view(B, T, L, E)
        # transpose the (small) input rather than the three-times-wider projections
        h_depth = h.view(B, T, L, E).transpose(1, 2).reshape(B * L, T, E)
        depth = self.depth_attn(h_depth).view(B, L, T, E).transpose(1, 2)
        x = x + 0.5 * (spatial + depth).reshape(B, N, E)
        x = self.norm2(x)
        return x + self.ffn(x)


class AdaptivePatchEmbedding(nn.Module):
    """Patch embedding with NEMESIS tokens: a gated mix of a linear projection and an
    attention summary of the patch's depth rows by ``num_tokens`` learnable tokens."""

    def __init__(self, embed_dim: int, patch_size: Triple, num_tokens: int = 8, num_heads: int = 8,
                 dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_tokens:
            raise ValueError(f"The embedding width ({embed_dim}) must be divisible by the number of summary "
                             f"tokens ({num_tokens}).")
        pd, ph, pw = patch_size
        sub = embed_dim // num_tokens
        self.num_tokens = num_tokens
        self.linear = nn.Linear(pd * ph * pw, embed_dim)
        self.embed = nn.Linear(ph * pw, sub)
        self.pos_embed = nn.Parameter(torch.zeros(1, pd, sub))
        nn.init.trunc_normal_(self.pos_embed, std=0.01)
        self.mt = nn.Parameter(torch.zeros(1, num_tokens, sub))
        nn.init.xavier_uniform_(self.mt)
        self.norm_qkv = nn.LayerNorm(sub)
        self.attn = SelfAttention(sub, num_heads, dropout)
        self.proj = nn.Linear(sub, sub)
        self.alpha = nn.Parameter(torch.tensor(0.5))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (B, N, pd, ph*pw) -> embeddings (B, N, E)."""
        B, N, pd, phw = patches.shape
        linear = self.linear(patches.reshape(B, N, pd * phw))
        rows = self.embed(patches).reshape(B * N, pd, -1) + self.pos_embed
        seq = torch.cat([rows, self.mt.expand(B * N, -1, -1)], dim=1)
        seq = self.attn(self.norm_qkv(seq))
        summary = self.proj(seq[:, -self.num_tokens:]).reshape(B, N, -1)
        gate = torch.sigmoid(self.alpha)
        return (1 - gate) * linear + gate * summary


class NemesisEncoder(nn.Module):
    def __init__(self, superpatch_size: Triple, patch_size: Triple, embed_dim: int, depth: int,
                 num_heads: int, num_maegic_tokens: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.grid = tuple(s // p for s, p in zip(superpatch_size, patch_size))
        self.embed_dim = embed_dim
        self.adaptive_agg = AdaptivePatchEmbedding(embed_dim, patch_size, num_maegic_tokens, num_heads, dropout)
        self.pe_scale = nn.Parameter(torch.tensor(0.1))
        self.register_buffer("position_codes", sinusoidal_position_codes(self.grid, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(MATBlock(embed_dim, num_heads, ffn_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, patches: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """patches (B, N, pd, ph*pw), ids_keep (B, n_visible) ascending -> tokens (B, n_visible, E)."""
        B = patches.shape[0]
        if ids_keep.shape[1] != patches.shape[1]:
            patches = torch.gather(patches, 1, ids_keep[:, :, None, None].expand(-1, -1, *patches.shape[2:]))
        h = self.adaptive_agg(patches)
        codes = self.position_codes.to(h.dtype)[ids_keep.reshape(-1)].reshape(B, -1, self.embed_dim)
        h = h + self.pe_scale * codes
        for block in self.blocks:
            h = block(h, self.grid[0])
        return self.norm(h)


class NemesisDecoder(nn.Module):
    def __init__(self, superpatch_size: Triple, patch_size: Triple, embed_dim: int, depth: int,
                 num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.grid = tuple(s // p for s, p in zip(superpatch_size, patch_size))
        self.embed_dim = embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.xavier_uniform_(self.mask_token)
        self.pe_scale = nn.Parameter(torch.tensor(0.1))
        self.register_buffer("position_codes", sinusoidal_position_codes(self.grid, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(MATBlock(embed_dim, num_heads, ffn_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, math.prod(patch_size))

    def forward(self, tokens: torch.Tensor, ids_keep: torch.Tensor, pe_scale: torch.Tensor) -> torch.Tensor:
        """Visible tokens (B, n_visible, E) -> predicted patches (B, N, pd*ph*pw)."""
        B, N = tokens.shape[0], math.prod(self.grid)
        x = self.mask_token.to(tokens.dtype).expand(B, N, -1).clone()
        x.scatter_(1, ids_keep[:, :, None].expand(-1, -1, self.embed_dim), tokens)
        x = x + pe_scale * self.position_codes.to(x.dtype)
        for block in self.blocks:
            x = block(x, self.grid[0])
        return self.head(self.norm(x))


@dataclass
class Reconstruction:
    """Output of :meth:`NemesisMAE.reconstruct`."""

    volume: torch.Tensor  # (B, 1, D, H, W) the decoder's prediction for every patch
    mask: torch.Tensor  # (B, N) bool, True = masked (hidden from the encoder)
    ids_keep: torch.Tensor  # (B, n_visible) ascending token indices seen by the encoder
    model_input: torch.Tensor  # (B, 1, D, H, W) the input after noise was added
    loss: torch.Tensor  # scalar: per-patch MSE to the clean input, averaged over masked patches (all if none)


class NemesisMAE(nn.Module):
    """NEMESIS masked autoencoder. Defaults are the paper's main model (MAE_768_0.5.pt)."""

    def __init__(self, superpatch_size: Sequence[int] = (128, 128, 128), patch_size: Sequence[int] = (8, 8, 8),
                 embed_dim: int = 768, depth: int = 6, num_heads: int = 8, decoder_depth: int = 3,
                 decoder_num_heads: int = 8, num_maegic_tokens: int = 8, ffn_dim: int = 1024,
                 dropout: float = 0.1, in_channels: int = 1):
        super().__init__()
        if in_channels != 1:
            raise ValueError("NEMESIS takes single-channel CT (in_channels=1)")
        self.superpatch_size = _triple(superpatch_size)
        self.patch_size = _triple(patch_size)
        for s, p in zip(self.superpatch_size, self.patch_size):
            if s % p:
                raise ValueError(f"superpatch size {self.superpatch_size} is not a multiple of "
                                 f"patch size {self.patch_size}")
        self.grid = tuple(s // p for s, p in zip(self.superpatch_size, self.patch_size))
        self.config = dict(superpatch_size=list(self.superpatch_size), patch_size=list(self.patch_size),
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, num_maegic_tokens=num_maegic_tokens,
                           ffn_dim=ffn_dim, dropout=dropout)
        self.embed_dim = embed_dim
        self.encoder = NemesisEncoder(self.superpatch_size, self.patch_size, embed_dim, depth, num_heads,
                                      num_maegic_tokens, ffn_dim, dropout)
        self.decoder = NemesisDecoder(self.superpatch_size, self.patch_size, embed_dim, decoder_depth,
                                      decoder_num_heads, ffn_dim, dropout)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    # -------------------------------------------------------------- patches
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, N, pd, ph*pw): depth-major tokens, each pd rows of an in-plane block."""
        self._check_input(x)
        B = x.shape[0]
        (Dp, Hp, Wp), (pd, ph, pw) = self.grid, self.patch_size
        x = x.reshape(B, Dp, pd, Hp, ph, Wp, pw).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(B, Dp * Hp * Wp, pd, ph * pw)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, pd*ph*pw) -> (B, 1, D, H, W)."""
        B = patches.shape[0]
        (Dp, Hp, Wp), (pd, ph, pw) = self.grid, self.patch_size
        x = patches.reshape(B, Dp, Hp, Wp, pd, ph, pw).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, 1, Dp * pd, Hp * ph, Wp * pw)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.superpatch_size:
            raise ValueError(f"NEMESIS expects (B, 1, {', '.join(map(str, self.superpatch_size))}) superpatches, "
                             f"got {tuple(x.shape)}")

    # -------------------------------------------------------------- masking
    def dual_mask(self, batch: int, mask_ratio: MaskRatio = 0.0, generator: Optional[torch.Generator] = None,
                  device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Plane-wise then axis-wise masking -> (mask (B, N) bool True=masked, ids_keep (B, n) ascending).

        Plane-wise keeps ``int(Hp*Wp*(1-r_plane))`` in-plane positions shared by all depths; axis-wise
        keeps ``int(kept*(1-r_axis))`` of them per depth slice (each at least 1), so every slice keeps
        the same number of tokens.
        """
        r_plane, r_axis = (mask_ratio, mask_ratio) if isinstance(mask_ratio, (int, float)) else mask_ratio
        for r in (r_plane, r_axis):
            if not 0.0 <= float(r) < 1.0:
                raise ValueError(f"mask ratios must be in [0, 1), got {mask_ratio!r}")
        Dp, Hp, Wp = self.grid
        plane = Hp * Wp
        kept_plane = max(1, min(plane, int(plane * (1.0 - r_plane))))
        kept_axis = max(1, min(kept_plane, int(kept_plane * (1.0 - r_axis))))
        if kept_axis == plane:
            ids = torch.arange(self.num_tokens, device=device).expand(batch, -1)
            return torch.zeros(batch, self.num_tokens, dtype=torch.bool, device=device), ids
        rows = []
        for _ in range(batch):
            shared = torch.randperm(plane, generator=generator)[:kept_plane]
            per_slice = [d * plane + shared[torch.randperm(kept_plane, generator=generator)[:kept_axis]]
                         for d in range(Dp)]
            rows.append(torch.sort(torch.cat(per_slice)).values)
        ids_keep = torch.stack(rows).to(device)
        mask = torch.ones(batch, self.num_tokens, dtype=torch.bool, device=device)
        mask.scatter_(1, ids_keep, False)
        return mask, ids_keep

    # -------------------------------------------------------------- public API
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Superpatches (B, 1, D, H, W) in [0, 1] -> tokens (B, N, E), every token, natural order."""
        patches = self.patchify(x)
        ids = torch.arange(self.num_tokens, device=x.device).expand(x.shape[0], -1)
        return self.encoder(patches, ids)

    def reconstruct(self, x: torch.Tensor, mask_ratio: MaskRatio = 0.0, noise_std: float = 0.0,
                    generator: Optional[torch.Generator] = None) -> Reconstruction:
        """Noise-enhanced masked reconstruction. ``generator`` makes mask and noise reproducible."""
        self._check_input(x)
        with torch.no_grad():  # the reference copies the encoder's pe_scale into the decoder each forward
            self.decoder.pe_scale.copy_(self.encoder.pe_scale)
        model_input = x
        if noise_std > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            model_input = x + noise_std * noise
        mask, ids_keep = self.dual_mask(x.shape[0], mask_ratio, generator, device=x.device)
        tokens = self.encoder(self.patchify(model_input), ids_keep)
        pred = self.decoder(tokens, ids_keep, self.encoder.pe_scale)
        volume = self.unpatchify(pred)
        per_patch = ((pred.float() - self.patchify(x).flatten(2).float()) ** 2).mean(-1)
        loss = (per_patch * mask).sum() / mask.sum() if mask.any() else per_patch.mean()
        return Reconstruction(volume, mask, ids_keep, model_input, loss)

    def forward(self, x: torch.Tensor, mask_ratio: MaskRatio = 0.0, noise_std: float = 0.0,
                generator: Optional[torch.Generator] = None) -> Reconstruction:
        return self.reconstruct(x, mask_ratio, noise_std, generator)
