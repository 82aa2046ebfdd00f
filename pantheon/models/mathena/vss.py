"""Four-directional Vision State Space blocks (VMamba SS2D / VSSBlock) used by MATHE and HENA.

Paper: MATHENA (arXiv 2604.00537) builds both its detector (MATHE, VSS blocks at P4/P5) and its
crop network (HENA, a Mamba-UNet) from "four-directional Vision State Space (VSS) blocks". The
block itself follows VMamba v0 (Liu et al., arXiv 2401.10166), as reproduced in Mamba-UNet
``code/networks/mamba_sys.py`` ``SS2D.forward_corev0`` (github.com/ziyangwang007/Mamba-UNet):

    in_proj -> (x, z);  x -> depthwise conv -> SiLU -> cross_scan (4 directions: row-major,
    column-major, both reversed) -> x_proj (dt, B, C per direction) -> dt_proj -> selective scan
    -> cross_merge (sum of the 4 directions) -> out_norm -> * SiLU(z) -> out_proj

Layout: :class:`SS2D` and :class:`VSSBlock` take **channels-last** tensors ``(B, H, W, C)`` like
VMamba v0; ``VSSBlock(channel_first=True)`` accepts and returns ``(B, C, H, W)`` instead.

The scan kernels come from :mod:`pantheon.models.ssm` (``selective_scan_fn`` with mamba-ssm
semantics, ``cross_scan`` / ``cross_merge``), imported when first needed.

:class:`SS2D` can additionally carry a *context token* (used by HENA's GCST): the token is
placed at the start of each of the four scan sequences (so every direction starts from a state
that already holds the global context) and again at the end (so its output there has seen the
whole image in that direction); the four end outputs are summed into one token output.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

K_DIRECTIONS = 4


def _ssm():
    """(selective_scan_fn, cross_scan, cross_merge) from pantheon.models.ssm, imported lazily."""
    from .. import ssm
    return ssm.selective_scan_fn, ssm.cross_scan, ssm.cross_merge


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016); identity in eval mode or with p = 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class SS2D(nn.Module):
    """VMamba v0 2-D selective scan over four directions (channels-last ``(B, H, W, C)``).

    Args:
        d_model: channels C of input and output.
        d_state: SSM state size N (VMamba v0: 16).
        ssm_ratio: expansion D = ssm_ratio * C (VMamba v0: 2).
        dt_rank: rank R of the dt projection; ``"auto"`` = ceil(C / 16) (VMamba v0).
        d_conv: depthwise conv kernel size (VMamba v0: 3).
        conv_bias: bias of the depthwise conv (VMamba v0: True).
        dt_min, dt_max, dt_init_floor, dt_scale: dt initialisation (VMamba / mamba-ssm defaults).
        dropout: dropout on the output.
        backend: ``backend`` passed to ``selective_scan_fn`` ("auto", "ref", "chunked", ...);
            an attribute, so it can be switched after construction.
    """

    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: float = 2.0,
                 dt_rank: Union[int, str] = "auto", d_conv: int = 3, conv_bias: bool = True,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.d_model = int(d_model)
        self.d_state = int(d_state)
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        K, D, N, R = K_DIRECTIONS, self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * D, bias=False)
        self.conv2d = nn.Conv2d(D, D, d_conv, padding=(d_conv - 1) // 2, groups=D, bias=conv_bias)
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, D))
        nn.init.uniform_(self.x_proj_weight, -D ** -0.5, D ** -0.5)  # nn.Linear(D, R+2N) default init
        std = R ** -0.5 * dt_scale
        self.dt_projs_weight = nn.Parameter(torch.empty(K, D, R).uniform_(-std, std))
        dt = torch.exp(torch.rand(K, D) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(K * D, 1)
        self.A_logs = nn.Parameter(torch.log(A))  # S4D-real
        self.Ds = nn.Parameter(torch.ones(K * D))
        self.out_norm = nn.LayerNorm(D)
        self.out_proj = nn.Linear(D, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _scan(self, xs: torch.Tensor) -> torch.Tensor:
        """Selective scan of (B, K, D, L) sequences -> (B, K, D, L), all four directions at once."""
        selective_scan_fn, _, _ = _ssm()
        B, K, D, L = xs.shape
        N, R = self.d_state, self.dt_rank
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        out = selective_scan_fn(
            xs.reshape(B, K * D, L).float(), dts.reshape(B, K * D, L).float(),
            -torch.exp(self.A_logs.float()), Bs.float().contiguous(), Cs.float().contiguous(),
            self.Ds.float(), z=None, delta_bias=self.dt_projs_bias.reshape(-1).float(),
            delta_softplus=True, backend=self.backend)
        return out.view(B, K, D, L).to(xs.dtype)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """``x`` (B, H, W, C) -> (B, H, W, C). With ``context`` (B, C): also returns its output (B, C)."""
        _, cross_scan, cross_merge = _ssm()
        B, H, W, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))  # (B, D, H, W)
        xs = cross_scan(x)  # (B, 4, D, H*W), each in its own scan order
        if context is not None:
            cx, cz = self.in_proj(context).chunk(2, dim=-1)
            tok = F.silu(cx)[:, None, :, None].expand(B, K_DIRECTIONS, self.d_inner, 1)
            xs = torch.cat([tok, xs, tok], dim=-1)  # token first (state init) and last (read-out)
        ys = self._scan(xs)
        if context is not None:
            ctx = ys[..., -1].sum(dim=1)  # (B, D): sum of the four read-outs
            ys = ys[..., 1:-1]
        y = cross_merge(ys, H, W)  # (B, D, H, W), sum of the four directions
        y = self.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z)
        y = self.dropout(self.out_proj(y))
        if context is None:
            return y
        c = self.dropout(self.out_proj(self.out_norm(ctx) * F.silu(cz)))
        return y, c


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (VMamba v2 block MLP)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class VSSBlock(nn.Module):
    """``x + DropPath(SS2D(LN(x)))`` [+ ``x + DropPath(MLP(LN(x)))``].

    ``mlp_ratio=0`` (default) is the VMamba v0 / Mamba-UNet block; ``mlp_ratio=4`` the VMamba v2
    block (MzeroMiko/VMamba ``classification/models/vmamba.py``). Channels-last ``(B, H, W, C)``
    unless ``channel_first=True``.

    Args:
        d_model, d_state, ssm_ratio, dt_rank, d_conv, backend: see :class:`SS2D`.
        drop_path: stochastic-depth rate.
        mlp_ratio: hidden width of the optional MLP relative to ``d_model`` (0 = no MLP).
        channel_first: take and return ``(B, C, H, W)``.
    """

    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: float = 2.0,
                 dt_rank: Union[int, str] = "auto", d_conv: int = 3, drop_path: float = 0.0,
                 mlp_ratio: float = 0.0, channel_first: bool = False, backend: str = "auto"):
        super().__init__()
        self.channel_first = channel_first
        self.norm = nn.LayerNorm(d_model)
        self.op = SS2D(d_model, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                       backend=backend)
        self.drop_path = DropPath(drop_path)
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(d_model)
            self.mlp = Mlp(d_model, int(d_model * mlp_ratio))
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.channel_first:
            x = x.permute(0, 3, 1, 2).contiguous()
        return x


def set_scan_backend(module: nn.Module, backend: str) -> None:
    """Set the selective-scan backend of every :class:`SS2D` inside ``module``."""
    for m in module.modules():
        if isinstance(m, SS2D):
            m.backend = backend
