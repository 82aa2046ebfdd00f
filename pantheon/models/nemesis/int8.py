"""CPU int8 inference for NEMESIS: dynamic quantisation of every Linear, the attention q|k|v
projection included, for the encoder and the decoder.

Why torch's dynamic quantisation (fbgemm): on a 2-core AVX2 CPU without VNNI it measured 1.4-1.6x
fp32 with token cosine >= 0.9995 (``shared/docs/nemesis-cpu-notes.md``); ONNX Runtime's int8 is
as fast only with ``reduce_range`` and brings an ONNX export, torchao's eager CPU int8 path is 23x
slower than fp32, OpenVINO's int8 modes were no faster. Activations are quantised per call to
7-bit unsigned (fbgemm's ``reduce_range``, which avoids the u8 x s8 saturation of AVX2 without
VNNI), weights to int8 per output channel. torch marks its quantized-tensor API deprecated: this
module is the only place that uses it, so another backend swaps in here.

The q|k|v projection is a bare parameter in :class:`~.mae.SelfAttention` (the published state
dict's layout); int8 needs it as a Linear, so a quantised copy of the model carries
:class:`ProjectedAttention` modules instead. The fp32 model is never changed.

Quantised weights are built once per weights file and cached as safetensors (int8 values,
per-channel scales and zero points; no pickle), keyed by the weights' sha256 and torch's version.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from .mae import NemesisMAE, SelfAttention

INT8_FORMAT = "pantheon-nemesis-int8-v1"


class ProjectedAttention(nn.Module):
    """:class:`SelfAttention` with its q|k|v projection as a Linear module (same maths), so that
    dynamic quantisation reaches it."""

    def __init__(self, attention: SelfAttention):
        super().__init__()
        E = attention.embed_dim
        self.embed_dim, self.num_heads, self.dropout = E, attention.num_heads, attention.dropout
        self.in_proj = nn.Linear(E, 3 * E)
        with torch.no_grad():
            self.in_proj.weight.copy_(attention.in_proj_weight)
            self.in_proj.bias.copy_(attention.in_proj_bias)
        self.out_proj = attention.out_proj

    attend = SelfAttention.attend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(self.in_proj(x))


def _with_projected_attention(model: NemesisMAE) -> NemesisMAE:
    """A deep copy of ``model`` (eval mode, CPU) whose attention modules are ProjectedAttention."""
    twin = copy.deepcopy(model).cpu().eval()
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SelfAttention):
                setattr(parent, name, ProjectedAttention(child))
    return twin.eval()  # new modules start in training mode: attention dropout would be on


def _quiet_quantisation():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    # torch >= 2.10 warns on every quantised-tensor creation that the API is deprecated (see above)
    warnings.filterwarnings("ignore", message=r".*(deprecated|torch\.ao\.quantization).*")
    return ctx


def quantize_int8(model: NemesisMAE) -> NemesisMAE:
    """An int8 copy of ``model`` for CPU inference (``encode`` and ``reconstruct`` as before)."""
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    if "fbgemm" not in torch.backends.quantized.supported_engines and \
            "x86" not in torch.backends.quantized.supported_engines:
        from ...errors import InvalidParameter
        raise InvalidParameter("This PyTorch build has no x86 int8 kernels (fbgemm); use --precision fp32.")
    twin = _with_projected_attention(model)
    ctx = _quiet_quantisation()
    try:
        quantize_dynamic(twin, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    finally:
        ctx.__exit__(None, None, None)
    left = [n for n, m in twin.named_modules() if type(m) is nn.Linear]
    assert not left and any(isinstance(m, nnqd.Linear) for m in twin.modules()), left
    return twin


# ---------------------------------------------------------------------------- cache
def int8_state(qmodel: nn.Module) -> Dict[str, torch.Tensor]:
    """The quantised Linear weights of ``qmodel`` as plain tensors (int8 values, float64 scales,
    int64 zero points, float32 bias), for safetensors."""
    from torch.ao.nn.quantized import dynamic as nnqd
    out = {}
    for name, m in qmodel.named_modules():
        if isinstance(m, nnqd.Linear):
            w, b = m.weight(), m.bias()
            out[f"{name}.int8"] = w.int_repr()
            out[f"{name}.scales"] = w.q_per_channel_scales().to(torch.float64)
            out[f"{name}.zero_points"] = w.q_per_channel_zero_points().to(torch.int64)
            if b is not None:
                out[f"{name}.bias"] = b.detach().float()
    return out


def _load_int8_state(qmodel: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    from torch.ao.nn.quantized import dynamic as nnqd
    ctx = _quiet_quantisation()
    try:
        for name, m in qmodel.named_modules():
            if isinstance(m, nnqd.Linear):
                values, scales = state[f"{name}.int8"], state[f"{name}.scales"]
                if tuple(values.shape) != (m.out_features, m.in_features):
                    raise KeyError(name)
                qweight = torch._make_per_channel_quantized_tensor(values, scales, state[f"{name}.zero_points"], 0)
                m.set_weight_bias(qweight, state.get(f"{name}.bias"))
    finally:
        ctx.__exit__(None, None, None)


def _int8_skeleton(model: NemesisMAE) -> NemesisMAE:
    """The int8 model's modules with empty quantised Linears, for weights from the cache."""
    from torch.ao.nn.quantized import dynamic as nnqd
    twin = _with_projected_attention(model)
    ctx = _quiet_quantisation()
    try:
        for parent in list(twin.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, nnqd.Linear(child.in_features, child.out_features, dtype=torch.qint8))
    finally:
        ctx.__exit__(None, None, None)
    return twin.eval()


def default_int8_cache_dir() -> Path:
    from ...registry.resolve import default_cache_dir
    return default_cache_dir().parent / "int8"


def _cache_key(weights_sha256: str, model: NemesisMAE) -> str:
    config = json.dumps(model.config, sort_keys=True)
    return hashlib.sha256(f"{weights_sha256}|{config}|{torch.__version__}|{INT8_FORMAT}".encode()).hexdigest()[:24]


def load_int8(model: NemesisMAE, weights_sha256: str = "", cache_dir: Optional[Path] = None) -> NemesisMAE:
    """The int8 model for ``model``: from the cache when its weights (``weights_sha256``) were
    quantised before, else quantised now and cached. Without a sha256 nothing is cached. A cache
    file that cannot be read or does not fit is rebuilt, never trusted."""
    if not weights_sha256:
        return quantize_int8(model)
    from ...errors import CheckpointError
    from ..checkpoints import read_safetensors, save_safetensors
    path = Path(cache_dir or default_int8_cache_dir()) / f"nemesis-{_cache_key(weights_sha256, model)}.safetensors"
    if path.is_file():
        try:
            state, meta = read_safetensors(path, INT8_FORMAT, "NEMESIS int8")
            if meta.get("weights_sha256") != weights_sha256:
                raise CheckpointError("another model")
            qmodel = _int8_skeleton(model)
            _load_int8_state(qmodel, state)
            return qmodel
        except (CheckpointError, KeyError, RuntimeError):
            pass  # rebuilt and rewritten below
    qmodel = quantize_int8(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(int8_state(qmodel), path, {"format": INT8_FORMAT, "weights_sha256": weights_sha256,
                                                    "torch": torch.__version__,
                                                    "config": json.dumps(model.config)})
    except OSError:
        pass  # a read-only cache costs a re-quantisation next time, nothing else
    return qmodel
