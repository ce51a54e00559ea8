"""The capability table: every backend serves exactly what it declares, and auto never sends a call to a
backend that lacks a capability the call needs (the chunked-training bug: a final state without gradient).

Backends that run on CPU are tested for real: naive, torch, and triton under Triton's interpreter (CI sets
TRITON_INTERPRET=1). mamba-ssm cannot run on CPU; its row is exercised on the GPU by benchmarks/gpu_parity.py,
and here through a stand-in backend that behaves as it does (final state detached from autograd).
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch

from mambaverse.errors import BackendUnavailableError
from mambaverse.ops import causal_conv1d, selective_scan, ssd_scan
from mambaverse.ops.dispatch import TABLE, Backend, backends_for, register_backend, select, unregister_backend
from mambaverse.ops.selective_scan import selective_scan_naive

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CPU_SCAN_BACKENDS = ["torch", "naive"] + (["triton"] if INTERPRET else [])


def _rel(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.is_complex() or b.is_complex():
        a, b = torch.view_as_real(a.to(torch.complex128)), torch.view_as_real(b.to(torch.complex128))
    return ((a.double() - b.double()).norm() / max(b.double().norm().item(), 1e-3)).item()


def _scan_inputs(form, initial, seed, b=2, d=4, l=13, n=3, dtype=torch.float32, cplx=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    shape = {"shared": (b, n, l), "grouped": (b, 2, n, l), "invariant": (d, n)}[form]
    if cplx:
        A = torch.complex(-torch.rand(d, n, generator=g) - 0.1, torch.randn(d, n, generator=g)).to(
            torch.complex128 if dtype == torch.float64 else torch.complex64)
        B = torch.complex(r(*shape), r(*shape)).to(A.dtype)
        C = torch.complex(r(*shape), r(*shape)).to(A.dtype)
        h0 = torch.complex(r(b, d, n), r(b, d, n)).to(A.dtype) if initial else None
    else:
        A = -torch.rand(d, n, generator=g).to(dtype if dtype == torch.float64 else torch.float32) * 2 - 0.1
        B, C = r(*shape), r(*shape)
        h0 = r(b, d, n) if initial else None
    inputs = dict(u=r(b, d, l), delta=r(b, d, l, scale=0.5), A=A, B=B, C=C, D=r(d), z=r(b, d, l),
                  delta_bias=r(d, scale=0.1), initial_state=h0)
    return {k: (v.requires_grad_() if v is not None else None) for k, v in inputs.items()}


def _run(inputs, backend, final, reverse):
    out = selective_scan(**inputs, delta_softplus=True, return_final_state=final, reverse=reverse, backend=backend)
    y, h = out if final else (out, None)
    g = torch.Generator().manual_seed(7)
    loss = (y.double() * torch.randn(y.shape, generator=g).double()).sum()
    if h is not None:  # gradient arriving through the final state too
        w = torch.randn(h.shape, generator=g, dtype=torch.float64)
        loss = loss + ((h.real if h.is_complex() else h).double() * w).sum()
    leaves = [v for v in inputs.values() if v is not None]
    return y, h, torch.autograd.grad(loss, leaves)


OPTIONS = list(itertools.product(["shared", "grouped", "invariant"], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("backend", CPU_SCAN_BACKENDS)
@pytest.mark.parametrize("form,initial,final,reverse", OPTIONS)
def test_scan_backend_serves_every_declared_option_exactly(backend, form, initial, final, reverse):
    """Values, final state and every gradient (through the output and the final state) match naive; a
    call needing an undeclared capability is refused with the capability named."""
    inputs = _scan_inputs(form, initial, seed=hash((form, initial, final, reverse)) % 1000)
    needs = {"initial_state"} if initial else set()
    needs |= {"final_state", "final_state_grad"} if final else set()
    needs |= {"reverse"} if reverse else set()
    needs |= {"grouped": {"grouped"}, "invariant": {"time_invariant"}}.get(form, set())
    row = TABLE["selective_scan"][backend]
    if not needs <= row.features:
        with pytest.raises(BackendUnavailableError, match="lacks"):
            _run(inputs, backend, final, reverse)
        return
    y0, h0, g0 = _run(inputs, "naive", final, reverse)
    y1, h1, g1 = _run(inputs, backend, final, reverse)
    assert _rel(y1, y0) < 1e-5
    if final:
        assert _rel(h1, h0) < 1e-5
    for name, a, b in zip([k for k, v in inputs.items() if v is not None], g1, g0):
        assert _rel(a, b) < 1e-4, name


@pytest.mark.parametrize("form", ["shared", "grouped", "invariant"])
def test_complex_scan_torch_matches_naive_and_mamba_ssm_interleaved_form(form):
    inputs = _scan_inputs(form, True, seed=3, cplx=True)
    y0, h0, g0 = _run(inputs, "naive", True, False)
    y1, h1, g1 = _run(inputs, "torch", True, False)
    assert y0.dtype == torch.float32 and h0.is_complex()
    assert _rel(y1, y0) < 1e-5 and _rel(h1, h0) < 1e-5
    for a, b in zip(g1, g0):
        assert _rel(a, b) < 1e-4
    if form != "invariant":  # mamba-ssm's form: a time-varying complex B/C as real (re, im) pairs along l
        flat = {k: v for k, v in inputs.items()}
        for key in ("B", "C"):
            flat[key] = torch.view_as_real(inputs[key].detach()).flatten(-2)
        y2 = selective_scan(**flat, delta_softplus=True)
        assert _rel(y2, y0) < 1e-6
    with pytest.raises(BackendUnavailableError, match="complex"):
        select("selective_scan", "triton", torch.device("cpu"), torch.float32, {"complex"})


def test_time_invariant_B_C_equal_their_broadcast():
    inputs = _scan_inputs("invariant", False, seed=4)
    b, d, l = inputs["u"].shape
    wide = dict(inputs, B=inputs["B"][None, :, :, None].expand(b, d, -1, l),
                C=inputs["C"][None, :, :, None].expand(b, d, -1, l))
    for backend in CPU_SCAN_BACKENDS:
        assert _rel(selective_scan(**inputs, backend=backend), selective_scan(**wide, backend="naive")) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("cplx", [False, True])
def test_scan_gradcheck_float64(backend, cplx):
    """float64 is computed in float64 (torch.autograd.gradcheck needs it); complex A/B/C too."""
    inputs = _scan_inputs("grouped" if not cplx else "shared", True, seed=5, b=1, d=4, l=6, n=2,
                          dtype=torch.float64, cplx=cplx)
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors):
        kw = dict(zip(names, tensors))
        y, h = selective_scan(**kw, delta_softplus=True, return_final_state=True, reverse=True, backend=backend)
        return y, (torch.view_as_real(h) if h.is_complex() else h)

    assert torch.autograd.gradcheck(f, [inputs[k] for k in names], eps=1e-6, atol=1e-5)
    y = f(*[inputs[k] for k in names])[0]
    assert y.dtype == torch.float64


def test_torch_backend_float64_matches_naive_to_float64_precision():
    inputs = _scan_inputs("shared", True, seed=6, dtype=torch.float64, l=40)
    y0, h0, _ = _run(inputs, "naive", True, False)
    y1, h1, _ = _run(inputs, "torch", True, False)
    assert _rel(y1, y0) < 1e-12 and _rel(h1, h0) < 1e-12


def test_conv_and_ssd_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, s0: causal_conv1d(x, w, activation="silu", initial_state=s0, return_final_state=True,
                                       backend="torch"), [x, w, s0])
    b, l, h, p, n = 1, 5, 2, 2, 3
    xs = torch.randn(b, l, h, p, generator=g, dtype=torch.float64, requires_grad=True)
    dt = (torch.rand(b, l, h, generator=g, dtype=torch.float64) * 0.5 + 0.1).requires_grad_()
    A = (-torch.rand(h, generator=g, dtype=torch.float64) - 0.1).requires_grad_()
    B = torch.randn(b, l, 1, n, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(b, l, 1, n, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(b, h, p, n, generator=g, dtype=torch.float64, requires_grad=True)
    for backend in ("naive", "torch"):
        assert torch.autograd.gradcheck(
            lambda *t: ssd_scan(*t[:5], initial_state=t[5], return_final_state=True, chunk_size=2, backend=backend),
            [xs, dt, A, B, C, h0])


def test_named_backend_refuses_what_it_lacks_with_the_capability_named():
    with pytest.raises(BackendUnavailableError, match="backend 'mamba_ssm'"):
        select("selective_scan", "mamba_ssm", torch.device("cpu"), torch.float32, set())
    fake = torch.device("cuda")  # the table alone: no CUDA needed to ask what a row lacks
    row = TABLE["selective_scan"]["mamba_ssm"]
    assert "final_state_grad" not in row.features and "initial_state" not in row.features
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        select("selective_scan", "cuda-magic", fake, torch.float32, set())


# ----------------------------------------------------------------------------- auto never over-reaches
CALLS = []


def _standin(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
             return_final_state=False, reverse=False):
    """Behaves as mamba-ssm's selective_scan_fn: no initial state, and a final state detached from autograd."""
    assert initial_state is None, "auto sent an initial_state to a backend without that capability"
    CALLS.append(dict(final=return_final_state, grad=torch.is_grad_enabled() and u.requires_grad))
    out = selective_scan_naive(u, delta, A, B, C, D, z, delta_bias, delta_softplus, None, return_final_state, reverse)
    if return_final_state:
        return out[0], out[1].detach()
    return out


@pytest.fixture
def standin():
    """Register the stand-in first in auto's CPU order; remove it afterwards."""
    CALLS.clear()
    register_backend(Backend("selective_scan", "standin", _standin,
                             frozenset({"final_state", "reverse", "grouped", "time_invariant"}),
                             available=lambda device: True, rank={"cpu": -1}, note="test stand-in for mamba_ssm"))
    yield CALLS
    unregister_backend("selective_scan", "standin")


def test_auto_prefers_the_standin_only_where_it_can_serve(standin):
    assert backends_for("selective_scan", "cpu")[0] == "standin"
    inputs = _scan_inputs("shared", False, seed=8)
    selective_scan(**inputs)  # plain call: the stand-in serves it
    assert len(standin) == 1
    selective_scan(**inputs, return_final_state=True)  # final state with grad: must not go to the stand-in
    with torch.no_grad():
        selective_scan(**inputs, return_final_state=True)  # without autograd it may
    selective_scan(**dict(inputs, initial_state=torch.zeros(2, 4, 3)))
    assert [c["final"] for c in standin] == [False, True] and standin[1]["grad"] is False


def test_chunked_training_is_exact_under_auto_with_a_backend_like_mamba_ssm(standin):
    """Issue 9's bug, reproduced with the stand-in: chunked gradients equal unchunked ones under auto."""
    from mambaverse.backbones import CausalBackbone

    torch.manual_seed(0)
    plain = CausalBackbone(8, n_layer=2).train()
    chunked = CausalBackbone(8, n_layer=2, chunk_len=10).train()
    chunked.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 37, 8, generator=g, requires_grad=True)
    weight = torch.randn(2, 37, 8, generator=g)
    grads = []
    for model in (plain, chunked):
        params = [hidden] + list(model.parameters())
        grads.append(torch.autograd.grad((model(hidden) * weight).sum(), params))
    assert any(not c["final"] for c in standin), "auto never used the stand-in where it could"
    assert not any(c["final"] and c["grad"] for c in standin)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- edges
@pytest.mark.parametrize("backend", CPU_SCAN_BACKENDS)
def test_zero_length_scan_returns_empty_output_and_passes_the_state(backend):
    inputs = _scan_inputs("shared", True, seed=9, l=0)
    y, h = selective_scan(**inputs, return_final_state=True, backend=backend)
    assert y.shape == (2, 4, 0) and torch.equal(h, inputs["initial_state"])


@pytest.mark.skipif(not INTERPRET, reason="Triton kernels run on CPU only in Triton's interpreter")
def test_triton_fp16_gradients_meet_mamba_ssm_tolerances():
    """mamba-ssm's test_selective_scan case: u, delta, z (2, 4, 372) fp16, A (4, 8) fp32, B and C
    (2, 1, 8, 372), softplus; dA within rtol 1e-3 / atol 5e-3, dz within rtol 1e-3 / atol 1e-3 of an fp32
    reference on the same inputs."""
    g = torch.Generator().manual_seed(0)
    b, d, l, n = 2, 4, 372, 8
    half = torch.float16
    u = torch.randn(b, d, l, generator=g).to(half).requires_grad_()
    delta = (0.5 * torch.rand(b, d, l, generator=g)).to(half).requires_grad_()
    z = torch.randn(b, d, l, generator=g).to(half).requires_grad_()
    A = (-0.5 * torch.rand(d, n, generator=g)).requires_grad_()
    B = torch.randn(b, 1, n, l, generator=g).to(half).requires_grad_()
    C = torch.randn(b, 1, n, l, generator=g).to(half).requires_grad_()
    D = torch.randn(d, generator=g).requires_grad_()
    db = (0.1 * torch.rand(d, generator=g)).requires_grad_()
    leaves = [u, delta, A, B, C, D, z, db]
    refs = [t.detach().float().requires_grad_() for t in leaves]
    out = selective_scan(u, delta, A, B, C, D, z, db, True, backend="triton")
    ref = selective_scan(*refs[:7], refs[7], True, backend="naive")
    seed = torch.randn(out.shape, generator=g).half().float()  # the same fp16 cotangent for both, as mamba-ssm's test
    got = torch.autograd.grad((out.float() * seed).sum(), leaves)
    want = torch.autograd.grad((ref * seed).sum(), refs)
    torch.testing.assert_close(out.float(), ref, rtol=1e-3, atol=5e-3)
    torch.testing.assert_close(got[2], want[2], rtol=1e-3, atol=5e-3)  # dA
    torch.testing.assert_close(got[6].float(), want[6], rtol=1e-3, atol=1e-3)  # dz
