"""State-space-model building blocks: the selective scan and VMamba's four-directional scan.

* Selective scan (S6) with mamba-ssm's signature: Gu & Dao, "Mamba: Linear-Time Sequence
  Modeling with Selective State Spaces", arXiv 2312.00752 (2023).
* Cross scan / merge for 2D feature maps (SS2D): Liu et al., "VMamba: Visual State Space
  Model", NeurIPS 2024 (arXiv 2401.10166).

Backends of :func:`selective_scan_fn`: ``"ref"`` (sequential oracle), ``"chunked"`` (pure
PyTorch, runs anywhere, differentiable) and ``"cuda"`` (mamba-ssm's kernel, when installed);
``"auto"`` picks the kernel on GPU tensors when it imports, else ``"chunked"``.
"""

from .cross_scan import cross_merge, cross_scan
from .module import SelectiveScan
from .selective_scan import (
                             BACKENDS,
                             cuda_kernel_available,
                             default_chunk_size,
                             selective_scan_chunked,
                             selective_scan_fn,
                             selective_scan_ref,
)

__all__ = ["selective_scan_fn", "selective_scan_ref", "selective_scan_chunked", "cuda_kernel_available",
           "default_chunk_size", "BACKENDS", "cross_scan", "cross_merge", "SelectiveScan"]
