"""Every op backend against its naive oracle: values and gradients, on shapes drawn by hypothesis."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mambaverse import BackendUnavailableError, MambaverseError, ShapeError, selective_scan
from mambaverse.ops import causal_conv1d, cross_merge, cross_scan, cross_selective_scan
from mambaverse.ops import bidirectional_scan
from mambaverse.ops import selective_scan_naive, selective_scan_torch
from mambaverse.ops.ssd import ssd_scan_chunked, ssd_scan_naive


def rel_err(a, b):
    """Relative error of a against reference b; a floor keeps exactly-zero references meaningful."""
    return ((a.float() - b.float()).norm() / max(b.float().norm().item(), 0.1)).item()


def make_scan_inputs(b, d, l, n, groups, dtype, with_state, seed):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    bc_shape = (b, groups, n, l) if groups else (b, n, l)
    return dict(
        u=r(b, d, l), delta=r(b, d, l, scale=0.5),
        A=(-torch.rand(d, n, generator=g) * 2 - 0.1).requires_grad_(),
        B=r(*bc_shape), C=r(*bc_shape), D=torch.randn(d, generator=g).requires_grad_(),
        z=r(b, d, l), delta_bias=(torch.randn(d, generator=g) * 0.1).requires_grad_(),
        initial_state=torch.randn(b, d, n, generator=g).requires_grad_() if with_state else None,
    )


def run_and_grad(fn, inputs, reverse, final, **kw):
    out = fn(**inputs, delta_softplus=True, return_final_state=final, reverse=reverse, **kw)
    y, h = out if final else (out, None)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    loss = (y * gy).float().sum()
    if h is not None:  # gradients flowing in through the final state too
        loss = loss + (h * torch.randn(h.shape, generator=torch.Generator().manual_seed(2))).sum()
    leaves = [v for v in inputs.values() if v is not None]
    grads = torch.autograd.grad(loss, leaves)
    return y, h, grads


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), groups=st.sampled_from([0, 1, 2]), e=st.integers(1, 3), l=st.integers(1, 40),
       n=st.integers(1, 6), with_state=st.booleans(), final=st.booleans(), reverse=st.booleans(),
       chunk=st.sampled_from([None, 1, 7]), seed=st.integers(0, 10_000))
def test_torch_backend_matches_naive_fp32(b, groups, e, l, n, with_state, final, reverse, chunk, seed):
    d = max(groups, 1) * e * 2
    inputs = make_scan_inputs(b, d, l, n, groups, torch.float32, with_state, seed)
    y0, h0, g0 = run_and_grad(selective_scan_naive, inputs, reverse, final)
    y1, h1, g1 = run_and_grad(selective_scan_torch, inputs, reverse, final, chunk_size=chunk)
    assert rel_err(y1, y0) < 1e-5
    if final:
        assert rel_err(h1, h0) < 1e-5
    for a, ref in zip(g1, g0):
        assert rel_err(a, ref) < 1e-4


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_backend_matches_naive_half(dtype, reverse):
    inputs = make_scan_inputs(2, 8, 33, 4, 2, dtype, True, seed=3)
    y0, h0, g0 = run_and_grad(selective_scan_naive, inputs, reverse, True)
    y1, h1, g1 = run_and_grad(selective_scan_torch, inputs, reverse, True, chunk_size=5)
    assert y1.dtype == dtype and h1.dtype == torch.float32  # the state stays fp32
    assert rel_err(y1, y0) < 1e-2 and rel_err(h1, h0) < 1e-3
    for a, ref in zip(g1, g0):
        assert a.dtype == ref.dtype
        assert rel_err(a, ref) < 2e-2


def test_public_op_dispatches_and_reports_unavailable_backends(monkeypatch):
    # triton.jit picks interpreter or compiler when a kernel is defined: import the kernels (under the
    # interpreter) before switching it off, or every later CPU test would get compiled kernels
    pytest.importorskip("mambaverse.kernels")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # without the interpreter, Triton kernels need CUDA
    inputs = make_scan_inputs(1, 4, 9, 3, 0, torch.float32, False, seed=0)
    ref = selective_scan(**inputs, backend="naive")
    assert rel_err(selective_scan(**inputs), ref) < 1e-6  # auto on CPU = torch
    for backend in ("mamba_ssm", "triton"):
        with pytest.raises(BackendUnavailableError, match=backend):
            selective_scan(**inputs, backend=backend)
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        selective_scan(**inputs, backend="cuda-magic")


def test_state_carries_across_calls_exactly():
    """Scanning [0, l) in two calls, passing the final state on, equals one call."""
    inputs = make_scan_inputs(2, 6, 30, 4, 0, torch.float32, False, seed=5)
    whole, h_whole = selective_scan(**inputs, return_final_state=True)
    first = {k: (v[..., :12] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
    second = {k: (v[..., 12:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
    y1, h1 = selective_scan(**first, return_final_state=True)
    second["initial_state"] = h1
    y2, h2 = selective_scan(**second, return_final_state=True)
    assert rel_err(torch.cat([y1, y2], -1), whole) < 1e-6 and rel_err(h2, h_whole) < 1e-6


@pytest.mark.parametrize("bad, message", [
    (dict(u=torch.randn(2, 4)), "u has shape"),
    (dict(delta=torch.randn(2, 4, 7)), "delta has shape"),
    (dict(A=torch.randn(5, 3)), "A has shape"),
    (dict(B=torch.randn(2, 3, 3, 9)), "B has shape"),
    (dict(initial_state=torch.randn(2, 4, 2)), "initial_state has shape"),
    (dict(u=torch.randint(0, 3, (2, 4, 9))), "u has dtype"),
])
def test_bad_scan_inputs_raise_one_line_errors(bad, message):
    inputs = dict(u=torch.randn(2, 4, 9), delta=torch.randn(2, 4, 9), A=-torch.rand(4, 3), B=torch.randn(2, 3, 9),
                  C=torch.randn(2, 3, 9))
    inputs.update(bad)
    with pytest.raises(ShapeError, match=message) as info:
        selective_scan(**inputs)
    assert isinstance(info.value, MambaverseError) and "\n" not in str(info.value)


@pytest.mark.parametrize("reverse", [False, True])
def test_conv_reverse_is_flip_composition_and_state_continues(reverse):
    x, w, bias = torch.randn(2, 6, 20), torch.randn(6, 4), torch.randn(6)
    y = causal_conv1d(x, w, bias, "silu", reverse=reverse)
    if reverse:
        assert torch.allclose(y, causal_conv1d(x.flip(-1), w, bias, "silu").flip(-1), atol=1e-6)
    else:  # against an explicit sum over the window
        xp = torch.nn.functional.pad(x, (3, 0))
        ref = sum(w[:, j, None] * xp[..., j:j + 20] for j in range(4)) + bias[:, None]
        assert torch.allclose(y, torch.nn.functional.silu(ref), atol=1e-5)
    # two calls that pass the conv tail on equal one call
    a, b = (x[..., :11], x[..., 11:]) if not reverse else (x[..., 11:], x[..., :11])
    ya, tail = causal_conv1d(a, w, bias, "silu", reverse=reverse, return_final_state=True)
    yb = causal_conv1d(b, w, bias, "silu", reverse=reverse, initial_state=tail)
    joined = torch.cat([ya, yb], -1) if not reverse else torch.cat([yb, ya], -1)
    assert torch.allclose(joined, y, atol=1e-6)


@pytest.mark.parametrize("combine", ["add", "multiply", "stack"])
def test_bidirectional_scan_is_forward_plus_flipped_forward(combine):
    f = make_scan_inputs(2, 4, 15, 3, 0, torch.float32, False, seed=7)
    r = make_scan_inputs(2, 4, 15, 3, 0, torch.float32, False, seed=8)
    pair = {k: (f[k], r[k]) for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")}
    out = bidirectional_scan(**pair, z=f["z"], delta_softplus=True, combine=combine)
    fwd = selective_scan_naive(**{**f, "initial_state": None}, delta_softplus=True)
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "B", "C") else v) for k, v in r.items() if k != "initial_state"}
    flipped["z"] = f["z"].flip(-1)
    rev = selective_scan_naive(**flipped, delta_softplus=True).flip(-1)
    want = {"add": fwd + rev, "multiply": fwd * rev, "stack": torch.stack([fwd, rev])}[combine]
    assert rel_err(out, want) < 1e-5


def test_cross_merge_of_cross_scan_reconstructs():
    x = torch.randn(2, 3, 5, 7)
    routes = cross_scan(x)
    assert routes.shape == (2, 4, 3, 35)
    assert torch.equal(routes[:, 1, :, :5], x[:, :, :, 0])  # column-major route reads down the first column
    assert torch.equal(routes[:, 2], routes[:, 0].flip(-1))
    assert torch.allclose(cross_merge(routes, 5, 7), 4 * x)


def test_cross_selective_scan_equals_four_separate_scans():
    b, c, h, w, n = 1, 3, 4, 5, 2
    x = torch.randn(b, c, h, w)
    delta, B, C = torch.randn(b, 4, c, h * w), torch.randn(b, 4, n, h * w), torch.randn(b, 4, n, h * w)
    A, D, bias = -torch.rand(4 * c, n), torch.randn(4 * c), torch.randn(4 * c)
    out = cross_selective_scan(x, delta, A, B, C, D, bias)
    routes = cross_scan(x)
    ys = torch.stack([selective_scan_naive(routes[:, k], delta[:, k], A[k * c:(k + 1) * c], B[:, k], C[:, k],
                                           D[k * c:(k + 1) * c], None, bias[k * c:(k + 1) * c], True)
                      for k in range(4)], dim=1)
    assert rel_err(out, cross_merge(ys, h, w)) < 1e-5


@settings(max_examples=10, deadline=None)
@given(l=st.integers(1, 50), chunk=st.sampled_from([4, 16]), g=st.sampled_from([1, 2]),
       with_state=st.booleans(), seed=st.integers(0, 1000))
def test_ssd_chunked_matches_naive(l, chunk, g, with_state, seed):
    gen = torch.Generator().manual_seed(seed)
    b, h, p, n = 2, 4, 3, 5
    x = torch.randn(b, l, h, p, generator=gen, requires_grad=True)
    dt = torch.rand(b, l, h, generator=gen).requires_grad_()
    A = (-torch.rand(h, generator=gen) * 4).requires_grad_()
    B = torch.randn(b, l, g, n, generator=gen, requires_grad=True)
    C = torch.randn(b, l, g, n, generator=gen, requires_grad=True)
    D = torch.randn(h, generator=gen, requires_grad=True)
    h0 = torch.randn(b, h, p, n, generator=gen, requires_grad=True) if with_state else None
    leaves = [t for t in (x, dt, A, B, C, D, h0) if t is not None]
    results = []
    for fn in (ssd_scan_naive, ssd_scan_chunked):
        y, s = fn(x, dt, A, B, C, D, h0, True, chunk_size=chunk)
        results.append((y, s, torch.autograd.grad((y * y).sum() + s.sum(), leaves)))
    (y0, s0, g0), (y1, s1, g1) = results
    assert rel_err(y1, y0) < 1e-5 and rel_err(s1, s0) < 1e-5
    for a, ref in zip(g1, g0):
        assert rel_err(a, ref) < 1e-4


def test_conv_and_ssd_refuse_integer_inputs_instead_of_truncating():
    with pytest.raises(ShapeError, match="causal_conv1d: x has dtype torch.int64"):
        causal_conv1d(torch.zeros(1, 4, 8, dtype=torch.long), torch.randn(4, 3))
    with pytest.raises(ShapeError, match="ssd_scan: x has dtype torch.int64"):
        from mambaverse import ssd_scan
        ssd_scan(torch.zeros(1, 4, 2, 3, dtype=torch.long), torch.rand(1, 4, 2), -torch.rand(2),
                 torch.randn(1, 4, 1, 5), torch.randn(1, 4, 1, 5))
