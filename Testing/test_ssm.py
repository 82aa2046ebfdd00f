"""pantheon.models.ssm: selective scan (ref / chunked / dispatcher) and the SS2D cross scan."""

from __future__ import annotations

import math

import pytest
import torch

from pantheon.models.ssm import (
    BACKENDS,
    SelectiveScan,
    cross_merge,
    cross_scan,
    cuda_kernel_available,
    default_chunk_size,
    selective_scan_chunked,
    selective_scan_fn,
    selective_scan_ref,
)

LN2 = math.log(2.0)


def make_inputs(batch=2, dim=8, dstate=4, length=13, groups=None, dtype=torch.float32, seed=0,
                bc="variable", extras=True):
    """Random mamba-ssm inputs; ``groups`` gives (batch, G, N, L) B/C, ``bc="invariant"`` (D, N)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    inputs = dict(u=r(batch, dim, length), delta=r(batch, dim, length, scale=0.5),
                  A=-torch.exp(r(dim, dstate, scale=0.5)).to(dtype))
    if bc == "invariant":
        inputs["B"], inputs["C"] = r(dim, dstate), r(dim, dstate)
    elif groups:
        inputs["B"], inputs["C"] = r(batch, groups, dstate, length), r(batch, groups, dstate, length)
    else:
        inputs["B"], inputs["C"] = r(batch, dstate, length), r(batch, dstate, length)
    if extras:
        inputs.update(D=r(dim), z=r(batch, dim, length), delta_bias=r(dim, scale=0.5))
    return inputs


# --------------------------------------------------------------------------------------------
# A case computed by hand
# --------------------------------------------------------------------------------------------

# D=1, N=1, L=3; A = -ln 2 and delta = (1, 1, 2) give decays exp(delta*A) = (1/2, 1/2, 1/4).
# B = (1, 2, 1), u = (2, 1, 4): inputs delta*B*u = (2, 2, 8).
# h = (2, 1/2*2 + 2 = 3, 1/4*3 + 8 = 8.75); C = (1, 1, 1/2): C*h = (2, 3, 4.375);
# D = 1/2 adds D*u = (1, 0.5, 2): out = (3, 3.5, 6.375); last state 8.75.
HAND = dict(u=[2.0, 1.0, 4.0], B=[1.0, 2.0, 1.0], C=[1.0, 1.0, 0.5])
HAND_OUT, HAND_LAST = [3.0, 3.5, 6.375], 8.75


def _hand(delta, **extra):
    t = lambda v: torch.tensor(v, dtype=torch.float32).view(1, 1, -1)  # noqa: E731
    return dict(u=t(HAND["u"]), delta=t(delta), A=torch.tensor([[-LN2]]), B=t(HAND["B"]), C=t(HAND["C"]),
                D=torch.tensor([0.5]), return_last_state=True, **extra)


@pytest.mark.parametrize("impl", [
    selective_scan_ref,
    lambda **kw: selective_scan_chunked(**kw, chunk_size=1),
    lambda **kw: selective_scan_chunked(**kw, chunk_size=2),
    lambda **kw: selective_scan_chunked(**kw, chunk_size=3),
    selective_scan_fn,
], ids=["ref", "chunk1", "chunk2", "chunk3", "fn"])
def test_hand_computed_case(impl):
    out, last = impl(**_hand([1.0, 1.0, 2.0]))
    assert out.shape == (1, 1, 3) and last.shape == (1, 1, 1)
    torch.testing.assert_close(out.view(-1), torch.tensor(HAND_OUT), rtol=0, atol=1e-6)
    assert abs(last.item() - HAND_LAST) < 1e-6
    # the same delta reached through delta_bias + softplus: softplus(ln(e - 1)) = 1,
    # softplus(ln(e^2 - 1)) = 2
    raw = [0.0, 0.0, math.log(math.e ** 2 - 1) - math.log(math.e - 1)]
    out2, last2 = impl(**_hand(raw, delta_bias=torch.tensor([math.log(math.e - 1)]), delta_softplus=True))
    torch.testing.assert_close(out2.view(-1), torch.tensor(HAND_OUT), rtol=0, atol=1e-5)
    assert abs(last2.item() - HAND_LAST) < 1e-5
    # gate: out * silu(z); silu(0) = 0 and silu(z) -> z for large z
    z = torch.tensor([0.0, 30.0, 1.0]).view(1, 1, 3)
    out3 = impl(**{**_hand([1.0, 1.0, 2.0]), "return_last_state": False}, z=z)
    expected = torch.tensor(HAND_OUT) * torch.nn.functional.silu(z.view(-1))
    torch.testing.assert_close(out3.view(-1), expected, rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------------
# ref vs chunked: forward
# --------------------------------------------------------------------------------------------

FORWARD_CASES = [
    # (length, chunk_size, B/C kind, groups, softplus)
    (1, None, "variable", None, True),          # L = 1
    (1, 4, "variable", None, False),
    (13, None, "variable", None, True),         # odd L, automatic chunk
    (13, 4, "variable", None, True),            # L not divisible by the chunk
    (37, 5, "variable", 2, True),               # grouped B/C
    (37, 8, "variable", 8, False),              # one group per channel
    (20, 3, "invariant", None, True),           # time-invariant (D, N) B/C
    (64, 16, "variable", 4, True),              # exact multiple
    (50, 100, "variable", None, True),          # chunk longer than L
]


@pytest.mark.parametrize("length,chunk,bc,groups,softplus", FORWARD_CASES)
def test_chunked_matches_reference_forward(length, chunk, bc, groups, softplus):
    inputs = make_inputs(length=length, groups=groups, bc=bc, seed=length)
    if not softplus:  # keep delta >= 0 (decays <= 1) as a real model would
        inputs["delta"], inputs["delta_bias"] = inputs["delta"].abs(), inputs["delta_bias"].abs()
    ref, ref_last = selective_scan_ref(**inputs, delta_softplus=softplus, return_last_state=True)
    out, last = selective_scan_chunked(**inputs, delta_softplus=softplus, return_last_state=True,
                                       chunk_size=chunk)
    assert out.shape == ref.shape == (2, 8, length) and out.dtype == torch.float32
    assert last.shape == ref_last.shape == (2, 8, 4)
    assert (out - ref).abs().max().item() <= 1e-4
    assert (last - ref_last).abs().max().item() <= 1e-4


def test_optional_arguments_and_mixed_groups():
    inputs = make_inputs(length=19, extras=False, groups=2, seed=3)
    inputs["delta"] = inputs["delta"].abs()
    for kwargs in ({}, {"delta_softplus": True}):
        torch.testing.assert_close(selective_scan_chunked(**inputs, chunk_size=6, **kwargs),
                                   selective_scan_ref(**inputs, **kwargs), rtol=0, atol=1e-4)
    # grouped B with a shared C
    inputs["C"] = inputs["C"][:, 0]
    torch.testing.assert_close(selective_scan_chunked(**inputs, chunk_size=4),
                               selective_scan_ref(**inputs), rtol=0, atol=1e-4)


def test_low_precision_inputs_accumulate_in_float32():
    inputs = {k: v.to(torch.bfloat16) for k, v in make_inputs(length=11, seed=5).items()}
    out, last = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True, chunk_size=4)
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=1e-2)


def test_extreme_values_stay_finite():
    inputs = make_inputs(length=30, seed=7)
    inputs["delta"] = inputs["delta"] * 1e4          # softplus(huge) = huge steps
    inputs["A"] = inputs["A"] * 1e4                  # very negative A: exp(delta*A) underflows to 0
    for kw in ({"delta_softplus": True}, {"delta_softplus": False}):
        delta = inputs["delta"].abs() if not kw["delta_softplus"] else inputs["delta"]
        args = {**inputs, "delta": delta}
        out, last = selective_scan_chunked(**args, **kw, return_last_state=True, chunk_size=7)
        ref, ref_last = selective_scan_ref(**args, **kw, return_last_state=True)
        assert torch.isfinite(out).all() and torch.isfinite(last).all()
        scale = ref.abs().max().item()
        assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, scale)
    # long sequence of moderate decays: the cumulative log-decay reaches -1e4, no overflow
    inputs = make_inputs(length=200, seed=8)
    inputs["delta"] = inputs["delta"].abs() + 5.0
    inputs["A"] = inputs["A"] * 10
    u = inputs["u"].requires_grad_(True)
    out = selective_scan_chunked(**inputs, chunk_size=64)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(u.grad).all()
    torch.testing.assert_close(out, selective_scan_ref(**inputs), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# ref vs chunked: gradients (float64 for a tight comparison)
# --------------------------------------------------------------------------------------------

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.mark.parametrize("length,chunk,groups", [(1, None, None), (17, 5, None), (24, 8, 2), (9, 4, None)])
def test_chunked_gradients_match_reference(length, chunk, groups):
    base = make_inputs(length=length, groups=groups, dtype=torch.float64, seed=100 + length)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(2, 8, length, generator=g, dtype=torch.float64)
    w_last = torch.randn(2, 8, 4, generator=g, dtype=torch.float64)
    grads = []
    for fn in (selective_scan_ref, lambda **kw: selective_scan_chunked(**kw, chunk_size=chunk)):
        leaves = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
        assert out.dtype == torch.float64
        ((out * w_out).sum() + (last * w_last).sum()).backward()
        grads.append({k: leaves[k].grad for k in GRAD_NAMES})
    for name in GRAD_NAMES:
        assert grads[1][name] is not None, name
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-9, atol=1e-10, msg=name)


def test_chunked_gradcheck_tiny():
    inputs = make_inputs(batch=1, dim=2, dstate=2, length=5, dtype=torch.float64, seed=11)
    names = ("u", "delta", "A", "B", "C", "D")
    leaves = [inputs[k].clone().requires_grad_(True) for k in names]

    def fn(*xs):
        out, last = selective_scan_chunked(**dict(zip(names, xs)), z=inputs["z"], delta_softplus=True,
                                           return_last_state=True, chunk_size=2)
        return out, last

    assert torch.autograd.gradcheck(fn, leaves)


# --------------------------------------------------------------------------------------------
# Dispatcher, module and errors
# --------------------------------------------------------------------------------------------


def test_dispatcher_backends_on_cpu():
    inputs = make_inputs(length=10, seed=21)
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    for backend in ("auto", "ref", "chunked"):
        out = selective_scan_fn(**inputs, delta_softplus=True, backend=backend)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    assert set(BACKENDS) == {"auto", "ref", "chunked", "cuda"}
    with pytest.raises(ValueError, match="backend"):
        selective_scan_fn(**inputs, backend="triton")
    with pytest.raises(RuntimeError, match="cuda"):
        selective_scan_fn(**inputs, backend="cuda")  # CPU tensors (and here no mamba_ssm)
    module = SelectiveScan(backend="chunked", chunk_size=3)
    out, last = module(**inputs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    assert last.shape == (2, 8, 4) and "chunked" in repr(module)


@pytest.mark.skipif(cuda_kernel_available(), reason="mamba_ssm is installed here")
def test_cuda_backend_without_mamba_ssm_is_a_clear_error():
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan_fn(**make_inputs(length=4), backend="cuda")


def test_shape_errors():
    inputs = make_inputs(length=6)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_chunked(**{**inputs, "B": inputs["B"][:, :, :5]})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_ref(**{**inputs, "A": inputs["A"][:3]})
    with pytest.raises(ValueError, match="G dividing D"):
        selective_scan_chunked(**{**inputs, "B": torch.randn(2, 3, 4, 6)})
    assert default_chunk_size(4096) == 91 and default_chunk_size(1) == 1


@pytest.mark.parametrize("length,chunk,groups,extras", [(13, 4, None, True), (24, 8, 2, True), (17, 5, None, False),
                                                       (30, None, 2, False)])
def test_chunked_inference_path_matches_autograd_path(length, chunk, groups, extras):
    """Without autograd the chunked scan takes its in-place path; both paths give the same numbers."""
    inputs = make_inputs(length=length, groups=groups, seed=length, extras=extras)
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    with torch.no_grad():
        fast, fast_last = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=chunk,
                                                 return_last_state=True)
    leaf = {k: (v.clone().requires_grad_(True) if k == "u" else v) for k, v in inputs.items()}
    slow, slow_last = selective_scan_chunked(**leaf, delta_softplus=True, chunk_size=chunk, return_last_state=True)
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_last, slow_last.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_chunked_on_gpu_matches_cpu():
    inputs = make_inputs(length=33, groups=2, seed=31)
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    out = selective_scan_chunked(**{k: v.cuda() for k, v in inputs.items()}, delta_softplus=True, chunk_size=8)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-4)
    if cuda_kernel_available():
        kern = selective_scan_fn(**{k: v.cuda() for k, v in inputs.items()}, delta_softplus=True, backend="cuda")
        torch.testing.assert_close(kern.cpu(), ref, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Cross scan / merge (SS2D)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 7), (1, 1, 3, 3)])
def test_cross_merge_of_cross_scan_is_four_times_x(shape):
    x = torch.randn(*shape)
    xs = cross_scan(x)
    assert xs.shape == (shape[0], 4, shape[1], shape[2] * shape[3])
    torch.testing.assert_close(cross_merge(xs, shape[2], shape[3]), 4 * x)
    torch.testing.assert_close(cross_merge(xs, width=shape[3]), 4 * x)
    torch.testing.assert_close(cross_merge(xs.view(*xs.shape[:3], shape[2], shape[3])), 4 * x)


def test_cross_scan_directions():
    x = torch.arange(6.0).view(1, 1, 2, 3)       # [[0, 1, 2], [3, 4, 5]]
    xs = cross_scan(x)[0, :, 0]
    assert xs[0].tolist() == [0, 1, 2, 3, 4, 5]   # row-major
    assert xs[1].tolist() == [0, 3, 1, 4, 2, 5]   # column-major
    assert xs[2].tolist() == [5, 4, 3, 2, 1, 0]   # row-major reversed
    assert xs[3].tolist() == [5, 2, 4, 1, 3, 0]   # column-major reversed
    with pytest.raises(ValueError):
        cross_merge(xs.unsqueeze(0), 4, 2)        # 4 * 2 != 6
    with pytest.raises(ValueError):
        cross_scan(x[0])


def test_scan_ignores_autocast():
    inputs = make_inputs(length=12, seed=41)
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan_fn(**inputs, delta_softplus=True)
        out_module = SelectiveScan()(**inputs, delta_softplus=True)
    assert out.dtype == out_module.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(out_module, ref, rtol=0, atol=1e-4)
