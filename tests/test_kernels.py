"""Parity of the Triton kernels with the naive/torch references, on CPU through the Triton interpreter.

Values and gradients, every option of the ops: D, z, delta_bias, softplus, shared or grouped B/C,
initial_state (and its gradient), return_final_state (and a gradient flowing in from it), reverse;
the fused bidirectional scan, the fused cross-scan and the causal conv1d. Shapes are tiny and the
kernels run with tiny blocks so that every program walks several chunks, including a partial one.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (the Makefile / CI also export it)

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from mambaverse.errors import BackendUnavailableError, ShapeError  # noqa: E402
from mambaverse.ops.bidirectional_scan import bidirectional_scan_reference  # noqa: E402
from mambaverse.ops.causal_conv1d import causal_conv1d_torch  # noqa: E402
from mambaverse.ops.cross_scan import cross_selective_scan_reference  # noqa: E402
from mambaverse.ops import available_backends, causal_conv1d, cross_selective_scan, selective_scan, selective_scan_naive  # noqa: E402
from mambaverse.ops.dispatch import select  # noqa: E402
from mambaverse import kernels  # noqa: E402
from mambaverse.kernels import (bidirectional_scan_triton, causal_conv1d_triton,  # noqa: E402
                                cross_selective_scan_triton, selective_scan_triton, set_rows_config)

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="CPU kernel tests need TRITON_INTERPRET=1 before triton is imported")

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def tiny_blocks():
    # the row-layout kernels (every scan op): fwd chunk 8 and checkpoint every 16 steps, two channels per
    # program (so the channel sums before dB/dC's atomics are exercised)
    old_rows = set_rows_config(fwd=(2, 8, 4), bwd=(2, 16, 4))
    yield
    set_rows_config(**old_rows)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def grads(out, leaves, seeds):
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.float() * s).sum() for o, s in zip(outs, seeds))
    return torch.autograd.grad(loss, [t for t in leaves if t is not None])


def assert_close(got, want, tol, what):
    assert torch.isfinite(got.float()).all(), f"{what}: non-finite values"
    err = rel(got, want)
    assert err < tol, f"{what}: relative error {err:.2e} >= {tol:.0e}"


def scan_inputs(b, d, l, n, dtype, groups_B=0, groups_C=0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype)

    u = r(b, d, l)
    delta = r(b, d, l, scale=0.5)
    A = -(torch.rand(d, n, generator=g) + 0.3)  # fp32, as Mamba keeps it
    B = r(b, groups_B, n, l) if groups_B else r(b, n, l)
    C = r(b, groups_C, n, l) if groups_C else r(b, n, l)
    D = torch.randn(d, generator=g)
    z = r(b, d, l)
    delta_bias = torch.randn(d, generator=g) * 0.3
    h0 = torch.randn(b, d, n, generator=g)
    return u, delta, A, B, C, D, z, delta_bias, h0


def check_scan(dtype=torch.float32, b=2, d=8, l=37, n=4, groups_B=0, groups_C=0, use_D=True, use_z=True,
               use_bias=True, softplus=True, use_h0=False, final=False, reverse=False, grad=True, seed=0):
    u, delta, A, B, C, D, z, db, h0 = scan_inputs(b, d, l, n, dtype, groups_B, groups_C, seed)
    D = D if use_D else None
    z = z if use_z else None
    db = db if use_bias else None
    h0 = h0 if use_h0 else None
    leaves = [u, delta, A, B, C, D, z, db, h0]
    for t in leaves:
        if t is not None:
            t.requires_grad_(grad)
    kw = dict(D=D, z=z, delta_bias=db, delta_softplus=softplus, initial_state=h0,
              return_final_state=final, reverse=reverse)
    want = selective_scan_naive(u, delta, A, B, C, **kw)
    got = selective_scan_triton(u, delta, A, B, C, **kw)
    wants = want if final else (want,)
    gots = got if final else (got,)
    assert gots[0].dtype == dtype and gots[0].shape == (b, d, l)
    if final:
        assert gots[1].dtype == torch.float32 and gots[1].shape == (b, d, n)
    tol = TOL[dtype]
    for w_, g_, name in zip(wants, gots, ("out", "final_state")):
        assert_close(g_, w_, tol, name)
    if not grad:
        return
    seeds = [torch.randn(w_.shape, generator=torch.Generator().manual_seed(seed + 7)) for w_ in wants]
    g_want = grads(want, leaves, seeds)
    g_got = grads(got, leaves, seeds)
    names = [nm for nm, t in zip("u delta A B C D z delta_bias initial_state".split(), leaves) if t is not None]
    for nm, gw, gg in zip(names, g_want, g_got):
        assert gg.shape == gw.shape and gg.dtype == gw.dtype, nm
        assert_close(gg, gw, 2 * tol, f"d{nm}")


# ----------------------------------------------------------------------------- selective scan
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_all_options_fp32(reverse):
    check_scan(reverse=reverse, use_h0=True, final=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_low_precision(dtype, reverse):
    check_scan(dtype=dtype, reverse=reverse, use_h0=True, final=True, seed=3)


@pytest.mark.parametrize("groups", [(2, 2), (4, 0), (0, 2)])
def test_scan_grouped_BC(groups):
    check_scan(d=8, groups_B=groups[0], groups_C=groups[1], use_h0=True, final=True, seed=5)


def test_scan_bare_no_optional_inputs():
    check_scan(use_D=False, use_z=False, use_bias=False, softplus=False, seed=11)


@pytest.mark.parametrize("l", [1, 16, 53])
def test_scan_lengths_and_padding(l):
    # odd channel count (partial channel block) and a state size that is not a power of two
    check_scan(d=6, l=l, n=3, use_h0=True, final=True, seed=l)


def test_scan_final_state_only_gradient():
    # the loss depends only on the final state: the gradient must flow in through it
    u, delta, A, B, C, D, z, db, h0 = scan_inputs(1, 4, 40, 4, torch.float32, seed=2)
    leaves = [u, delta, A, B, h0]  # C does not reach the final state
    for t in leaves:
        t.requires_grad_(True)
    seed = torch.randn(1, 4, 4)
    g_want = torch.autograd.grad((selective_scan_naive(u, delta, A, B, C, initial_state=h0,
                                                       return_final_state=True)[1] * seed).sum(), leaves)
    g_got = torch.autograd.grad((selective_scan_triton(u, delta, A, B, C, initial_state=h0,
                                                       return_final_state=True)[1] * seed).sum(), leaves)
    for nm, gw, gg in zip("u delta A B h0".split(), g_want, g_got):
        assert gw.abs().sum() > 0
        assert_close(gg, gw, 1e-5, f"d{nm}")


def test_scan_chunked_state_continues():
    # two calls carrying the final state equal one call over the whole sequence
    u, delta, A, B, C, D, z, db, _ = scan_inputs(2, 8, 48, 4, torch.float32, seed=4)
    kw = dict(D=D, delta_bias=db, delta_softplus=True)
    full, h_full = selective_scan_triton(u, delta, A, B, C, z=z, return_final_state=True, **kw)
    a, h_a = selective_scan_triton(u[..., :20], delta[..., :20], A, B[..., :20], C[..., :20], z=z[..., :20],
                                   return_final_state=True, **kw)
    b_, h_b = selective_scan_triton(u[..., 20:], delta[..., 20:], A, B[..., 20:], C[..., 20:], z=z[..., 20:],
                                    initial_state=h_a, return_final_state=True, **kw)
    assert_close(torch.cat([a, b_], -1), full, 1e-5, "out")
    assert_close(h_b, h_full, 1e-5, "final_state")


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_many_chunks_one_channel_per_program(reverse):
    # 19 forward chunks, 10 checkpoints; one channel per program (the GPU default) and a partial last chunk
    set_rows_config(fwd=(1, 8, 4), bwd=(1, 16, 4))
    check_scan(b=1, d=3, l=150, use_h0=True, final=True, reverse=reverse, seed=13)


def test_fused_ops_many_chunks_one_channel_per_program():
    # the fused kernels at the GPU's channel blocking: each program runs both directions (4 routes) over
    # 5 forward chunks and 3 checkpoints, the last ones partial (l = 37; 5 x 7 = 35 pixels)
    set_rows_config(fwd=(1, 8, 4), bwd=(1, 16, 4))
    u, delta, A, B, C, D, z, db, _ = scan_inputs(1, 3, 37, 4, torch.float32, seed=40)
    _, delta2, _, _, C2, D2, _, _, _ = scan_inputs(1, 3, 37, 4, torch.float32, seed=41)
    leaves = [u, delta, delta2, A, B, C, C2, D, D2, z, db]
    for t in leaves:
        t.requires_grad_(True)
    args = (u, (delta, delta2), A, B, (C, C2), (D, D2), z, db)
    want = bidirectional_scan_reference(*args, delta_softplus=True, combine="add", backend="naive")
    got = bidirectional_scan_triton(*args, delta_softplus=True, combine="add")
    assert_close(got, want, 2e-5, "out")
    seed = torch.randn(want.shape)
    for nm, gw, gg in zip("u delta delta2 A B C C2 D D2 z db".split(), grads(want, leaves, [seed]),
                          grads(got, leaves, [seed])):
        assert_close(gg, gw, 4e-5, f"d{nm}")
    test_cross_scan((5, 7), torch.float32)


@pytest.mark.parametrize("cfg", [((2, 8, 4), (2, 16, 4)), ((1, 32, 1), (1, 64, 1))])
def test_scan_keeps_channel_major_layout(cfg):
    # u, delta, z given as (channel, batch*L) memory viewed as (b, d, l), as the Mamba block makes them on
    # CUDA: out and the gradients come back in that layout, with the same values as contiguous inputs
    set_rows_config(*cfg)
    u, delta, A, B, C, D, z, db, _ = scan_inputs(2, 6, 70, 4, torch.float32, seed=21)
    cm = [t.permute(1, 0, 2).contiguous().permute(1, 0, 2).requires_grad_(True) for t in (u, delta, z)]
    ct = [t.detach().clone().requires_grad_(True) for t in (u, delta, z)]
    outs = []
    for uu, dd, zz in (cm, ct):
        out = selective_scan_triton(uu, dd, A, B, C, D=D, z=zz, delta_bias=db, delta_softplus=True)
        seed = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        outs.append((out, torch.autograd.grad((out * seed).sum(), (uu, dd, zz))))
    (o1, g1), (o2, g2) = outs
    assert o1.stride() == cm[0].stride() and g1[0].stride() == cm[0].stride() and g1[2].stride() == cm[2].stride()
    assert_close(o1, o2, 1e-6, "out")
    for a_, b_, nm in zip(g1, g2, ("du", "ddelta", "dz")):
        assert_close(a_, b_, 1e-6, nm)


def test_scan_no_grad_path_matches():
    with torch.no_grad():
        check_scan(grad=False, use_h0=True, final=True, seed=9)


def test_scan_bad_device_raises(monkeypatch):
    u, delta, A, B, C, *_ = scan_inputs(1, 4, 8, 4, torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):  # kernels raise plain errors; the ops layer names the backend
        selective_scan_triton(u, delta, A, B, C)
    with pytest.raises(BackendUnavailableError, match="backend 'triton' is unavailable on device cpu"):
        selective_scan(u, delta, A, B, C, backend="triton")


def test_auto_backend_is_not_triton_on_cpu():
    assert not kernels.triton_available("cpu")
    assert select("selective_scan", "auto", torch.device("cpu"), torch.float32, set()).name == "torch"
    assert available_backends("cpu")[:2] == ["torch", "naive"]  # triton only when named (interpreter)


def test_bidirectional_auto_order():
    # CPU: two passes; CUDA: mamba-ssm's pair (flips), then our fused kernel, then two passes
    from mambaverse.ops.dispatch import TABLE
    assert select("bidirectional_scan", "auto", torch.device("cpu"), torch.float32, {"grouped"}).name == "scan"
    rows = sorted((r for r in TABLE["bidirectional_scan"].values() if "cuda" in r.rank), key=lambda r: r.rank["cuda"])
    assert [r.name for r in rows] == ["mamba_ssm", "triton", "scan"]


# ----------------------------------------------------------------------------- bidirectional
def _bidir_inputs(dtype, seed):
    b, d, l, n = 2, 8, 29, 4
    u, delta, A, B, C, D, z, db, _ = scan_inputs(b, d, l, n, dtype, groups_C=2, seed=seed)
    _, delta2, A2, B2, C2, D2, _, db2, _ = scan_inputs(b, d, l, n, dtype, groups_C=2, seed=seed + 1)
    return u, delta, delta2, A, A2, B, B2, C, C2, D, D2, z, db, db2


@pytest.mark.parametrize("combine", ["add", "multiply", "stack"])
@pytest.mark.parametrize("per_direction", [False, True])
def test_bidirectional(combine, per_direction):
    ts = _bidir_inputs(torch.float32, seed=20)
    for t in ts:
        t.requires_grad_(True)
    u, delta, delta2, A, A2, B, B2, C, C2, D, D2, z, db, db2 = ts
    if per_direction:  # the Vim-v2 / Caduceus case: own delta/A/B/C/D/delta_bias per direction, shared u, z
        args = (u, (delta, delta2), (A, A2), (B, B2), (C, C2), (D, D2), z, (db, db2))
        leaves = [u, delta, delta2, A, A2, B, B2, C, C2, D, D2, z, db, db2]
    else:
        args = (u, delta, A, B, C, D, z, db)
        leaves = [u, delta, A, B, C, D, z, db]
    want = bidirectional_scan_reference(*args, delta_softplus=True, combine=combine, backend="naive")
    got = bidirectional_scan_triton(*args, delta_softplus=True, combine=combine)
    assert got.shape == want.shape
    assert_close(got, want, 2e-5, "out")
    seed = torch.randn(want.shape)
    for gw, gg in zip(grads(want, leaves, [seed]), grads(got, leaves, [seed])):
        assert_close(gg, gw, 4e-5, "grad")


def test_bidirectional_bf16():
    ts = _bidir_inputs(torch.bfloat16, seed=30)
    for t in ts:
        t.requires_grad_(True)
    u, delta, delta2, A, A2, B, B2, C, C2, D, D2, z, db, db2 = ts
    args = (u, (delta, delta2), A, B, (C, C2), D, z, db)
    leaves = [u, delta, delta2, A, B, C, C2, D, z, db]
    want = bidirectional_scan_reference(*args, delta_softplus=True, combine="add", backend="naive")
    got = bidirectional_scan_triton(*args, delta_softplus=True, combine="add")
    assert got.dtype == torch.bfloat16
    assert_close(got, want, 3e-2, "out")
    seed = torch.randn(want.shape)
    for gw, gg in zip(grads(want, leaves, [seed]), grads(got, leaves, [seed])):
        assert_close(gg, gw, 5e-2, "grad")


# ----------------------------------------------------------------------------- cross-scan
@pytest.mark.parametrize("hw", [(3, 5), (4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_scan(hw, dtype):
    h, w = hw
    b, c, n, L = 2, 4, 4, hw[0] * hw[1]
    g = torch.Generator().manual_seed(h * 10 + w)
    x = torch.randn(b, c, h, w, generator=g).to(dtype)
    delta = (torch.randn(b, 4, c, L, generator=g) * 0.5).to(dtype)
    A = -(torch.rand(4 * c, n, generator=g) + 0.3)
    B = torch.randn(b, 4, n, L, generator=g).to(dtype)
    C = torch.randn(b, 4, n, L, generator=g).to(dtype)
    D = torch.randn(4 * c, generator=g)
    db = torch.randn(4 * c, generator=g) * 0.3
    leaves = [x, delta, A, B, C, D, db]
    for t in leaves:
        t.requires_grad_(True)
    want = cross_selective_scan_reference(x, delta, A, B, C, D, db, True, backend="naive")
    got = cross_selective_scan_triton(x, delta, A, B, C, D, db, True)
    assert got.shape == (b, c, h, w) and got.dtype == dtype
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert_close(got, want, tol, "out")
    seed = torch.randn(want.shape)
    for nm, gw, gg in zip("x delta A B C D delta_bias".split(), grads(want, leaves, [seed]),
                          grads(got, leaves, [seed])):
        assert_close(gg, gw, 2 * tol, f"d{nm}")


def test_cross_scan_bad_shape():
    x = torch.randn(1, 2, 3, 3)
    args = (x, torch.randn(1, 4, 2, 8), -torch.rand(8, 4), torch.randn(1, 4, 4, 9), torch.randn(1, 4, 4, 9))
    with pytest.raises(ValueError, match="delta"):  # the kernel itself: a plain error
        cross_selective_scan_triton(*args)
    with pytest.raises(ShapeError, match="delta"):  # through the op: the project's one-line error
        cross_selective_scan(*args, backend="triton")


# ----------------------------------------------------------------------------- causal conv1d
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("l", [2, 37])
def test_causal_conv1d(reverse, activation, l):
    b, d, k = 2, 5, 4
    g = torch.Generator().manual_seed(l + 3 * reverse)
    x = torch.randn(b, d, l, generator=g, requires_grad=True)
    w = torch.randn(d, k, generator=g, requires_grad=True)
    bias = torch.randn(d, generator=g, requires_grad=True)
    s0 = torch.randn(b, d, k - 1, generator=g, requires_grad=True)
    want = causal_conv1d_torch(x, w, bias, activation, reverse, s0, True)
    got = causal_conv1d_triton(x, w, bias, activation, reverse, s0, True)
    assert_close(got[0], want[0], 1e-5, "y")
    assert torch.equal(got[1], want[1])
    seeds = [torch.randn(t.shape, generator=g) for t in want]
    for nm, gw, gg in zip("x weight bias initial_state".split(), grads(want, [x, w, bias, s0], seeds),
                          grads(got, [x, w, bias, s0], seeds)):
        assert_close(gg, gw, 1e-5, f"d{nm}")


def test_causal_conv1d_bf16_no_bias_no_state():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 40, generator=g).to(torch.bfloat16).requires_grad_(True)
    w = torch.randn(6, 3, generator=g).to(torch.bfloat16).requires_grad_(True)
    want = causal_conv1d_torch(x, w, None, "silu")
    got = causal_conv1d_triton(x, w, None, "silu")
    assert got.dtype == torch.bfloat16
    assert_close(got, want, 2e-2, "y")
    seed = torch.randn(want.shape, generator=g)
    for gw, gg in zip(grads(want, [x, w], [seed]), grads(got, [x, w], [seed])):
        assert_close(gg, gw, 3e-2, "grad")


def test_causal_conv1d_bad_state_shape():
    args = (torch.randn(1, 2, 8), torch.randn(2, 4))
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d_triton(*args, initial_state=torch.randn(1, 2, 2))
    with pytest.raises(ShapeError, match="initial_state"):
        causal_conv1d(*args, initial_state=torch.randn(1, 2, 2), backend="triton")
