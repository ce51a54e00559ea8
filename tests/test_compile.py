"""torch.compile(fullgraph=True) over the public ops, which are torch custom ops under compile
(``mambaverse.ops.custom``): no graph breaks for any backend, values and gradients equal to eager ones.

Most cases compile with ``backend="aot_eager"``: it runs Dynamo (graph breaks), AOTAutograd with fake
tensors (the ops' fake shapes) and the ops' registered autograd, which is everything the custom ops add;
Inductor's code generation for the rest of a model takes over a minute for a whole backbone on two shared
CPU cores, so one test runs Inductor on a single Mamba block. The Triton backends run in Triton's
interpreter (TRITON_INTERPRET=1, as ``make test``) at tiny shapes. mamba-ssm and causal-conv1d run only on
CUDA; a stand-in backend that Dynamo cannot trace shows that any backend compiles behind the op, and the
CUDA-only tests at the end compile and capture CUDA graphs with every backend available there.
"""
import os

import pytest
import torch

import mambaverse as mv
from mambaverse.mixers import Mamba, Mamba2
from mambaverse.ops import bidirectional_scan, causal_conv1d, cross_selective_scan, selective_scan, state_correction
from mambaverse.ops.bidirectional_scan import bidirectional_scan_op
from mambaverse.ops.causal_conv1d import causal_conv1d_op
from mambaverse.ops.cross_scan import cross_selective_scan_op
from mambaverse.ops.dispatch import ALL_DTYPES, TABLE, Backend, register_backend, unregister_backend
from mambaverse.ops.selective_scan import selective_scan_naive, selective_scan_op
from mambaverse.ops.ssd import ssd_scan, ssd_scan_op
from mambaverse.ops.state_correction import state_correction_op

HAS_TRITON = "triton" in TABLE["selective_scan"] and TABLE["selective_scan"]["triton"].available(torch.device("cpu"))
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton (interpreter) not available")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each test compiles anew: no recompile limit shared across cases
    yield
    torch._dynamo.reset()


def _leaf(*shape, scale=1.0, shift=0.0, dtype=torch.float32):
    return (torch.randn(*shape, dtype=dtype) * scale + shift).requires_grad_()


# ----------------------------------------------------------------------------- cases: (fn, inputs, custom op)
def _scan_case(backend, reverse=False, grouped=False, dtype=torch.float32, state=True):
    b, d, n, l = 2, 4, 3, 9
    BC = (b, 2, n, l) if grouped else (b, n, l)
    # activations in ``dtype``; A, D, delta_bias and the state stay fp32, as in a mixed-precision model
    inputs = [_leaf(b, d, l, dtype=dtype), _leaf(b, d, l, scale=0.5, dtype=dtype),
              (-torch.rand(d, n) - 0.5).requires_grad_(), _leaf(*BC, dtype=dtype), _leaf(*BC, dtype=dtype), _leaf(d),
              _leaf(b, d, l, dtype=dtype), _leaf(d, scale=0.1), _leaf(b, d, n, scale=0.5)]

    if not state:  # mamba-ssm: no initial state, and its final state carries no gradient
        inputs = inputs[:-1]

    def fn(u, delta, A, B, C, D, z, delta_bias, h0=None):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, initial_state=h0,
                              return_final_state=state, reverse=reverse, backend=backend)

    return fn, inputs, "mambaverse.selective_scan"


def _complex_scan_case(backend):
    """S4D-style complex A, B, C and a complex state (the torch and naive backends serve it)."""
    b, d, n, l = 2, 4, 3, 6
    inputs = [_leaf(b, d, l), _leaf(b, d, l, scale=0.5),
              torch.complex(-torch.rand(d, n) - 0.5, torch.randn(d, n)).requires_grad_(),
              _leaf(b, n, l, dtype=torch.complex64), _leaf(b, n, l, dtype=torch.complex64),
              _leaf(b, d, n, dtype=torch.complex64)]

    def fn(u, delta, A, B, C, h0):
        out, state = selective_scan(u, delta, A, B, C, delta_softplus=True, initial_state=h0, return_final_state=True,
                                    backend=backend)
        return out, torch.view_as_real(state)

    return fn, inputs, "mambaverse.selective_scan"


def _conv_case(backend, reverse=False, state=True):
    b, d, k, l = 2, 4, 4, 7
    inputs = [_leaf(b, d, l), _leaf(d, k), _leaf(d), _leaf(b, d, k - 1)][:4 if state else 3]

    def fn(x, w, bias, s0=None):
        return causal_conv1d(x, w, bias, "silu", reverse=reverse, initial_state=s0, return_final_state=state,
                             backend=backend)

    return fn, inputs, "mambaverse.causal_conv1d"


def _ssd_case(backend):
    b, l, h, p, g, n = 2, 10, 4, 3, 2, 5
    inputs = [_leaf(b, l, h, p), (torch.rand(b, l, h) * 0.5 + 0.05).requires_grad_(),
              (-torch.rand(h) - 0.5).requires_grad_(), _leaf(b, l, g, n), _leaf(b, l, g, n), _leaf(h),
              _leaf(b, h, p, n, scale=0.5)]

    def fn(x, dt, A, B, C, D, h0):
        return ssd_scan(x, dt, A, B, C, D, initial_state=h0, return_final_state=True, chunk_size=4, backend=backend)

    return fn, inputs, "mambaverse.ssd_scan"


def _bidirectional_case(backend):
    b, d, n, l = 2, 4, 3, 8
    A = lambda: (-torch.rand(d, n) - 0.5).requires_grad_()  # noqa: E731
    # u and z shared; delta, A, B, C, delta_bias per direction; D only on the reverse direction
    inputs = [_leaf(b, d, l), _leaf(b, d, l, scale=0.5), _leaf(b, d, l, scale=0.5), A(), A(), _leaf(b, n, l),
              _leaf(b, n, l), _leaf(b, n, l), _leaf(b, n, l), _leaf(d), _leaf(b, d, l), _leaf(d, scale=0.1),
              _leaf(d, scale=0.1)]

    def fn(u, dt_f, dt_r, A_f, A_r, B_f, B_r, C_f, C_r, D_r, z, db_f, db_r):
        return bidirectional_scan(u, (dt_f, dt_r), (A_f, A_r), (B_f, B_r), (C_f, C_r), (None, D_r), z, (db_f, db_r),
                                  delta_softplus=True, combine="stack", backend=backend)

    return fn, inputs, "mambaverse.bidirectional_scan" if backend == "triton" else "mambaverse.selective_scan"


def _cross_case(backend):
    b, c, h, w, n = 1, 2, 3, 3, 3
    L = h * w
    inputs = [_leaf(b, c, h, w), _leaf(b, 4, c, L, scale=0.5), (-torch.rand(4 * c, n) - 0.5).requires_grad_(),
              _leaf(b, 4, n, L), _leaf(b, 4, n, L), _leaf(4 * c), _leaf(4 * c, scale=0.1)]

    def fn(x, delta, A, B, C, D, db):
        return cross_selective_scan(x, delta, A, B, C, D, db, delta_softplus=True, backend=backend)

    return fn, inputs, "mambaverse.cross_selective_scan" if backend == "triton" else "mambaverse.selective_scan"


def _correction_case(backend, reverse=False):
    b, d, n, l = 2, 4, 3, 9
    inputs = [_leaf(b, d, l, scale=0.5), (-torch.rand(d, n) - 0.5).requires_grad_(), _leaf(b, n, l),
              _leaf(b, d, n), _leaf(b, d, l), _leaf(d, scale=0.1), torch.rand(b, d, n).requires_grad_()]

    def fn(delta, A, C, h_in, z, db, decay_in):
        return state_correction(delta, A, C, h_in, z, db, delta_softplus=True, reverse=reverse, decay_in=decay_in,
                                backend=backend)

    return fn, inputs, "mambaverse.state_correction"


CASES = {
    "scan-naive": lambda: _scan_case("naive"),
    "scan-torch-reverse-grouped": lambda: _scan_case("torch", reverse=True, grouped=True),
    "scan-torch-bf16": lambda: _scan_case("torch", dtype=torch.bfloat16),
    "scan-torch-complex": lambda: _complex_scan_case("torch"),
    "scan-triton": lambda: _scan_case("triton"),
    "scan-triton-reverse-grouped": lambda: _scan_case("triton", reverse=True, grouped=True),
    "conv-torch": lambda: _conv_case("torch"),
    "conv-triton-reverse": lambda: _conv_case("triton", reverse=True),
    "ssd-naive": lambda: _ssd_case("naive"),
    "ssd-torch": lambda: _ssd_case("torch"),
    "bidirectional-scan": lambda: _bidirectional_case("scan"),
    "bidirectional-triton": lambda: _bidirectional_case("triton"),
    "cross-scan": lambda: _cross_case("scan"),
    "cross-triton": lambda: _cross_case("triton"),
    "correction-naive": lambda: _correction_case("naive"),
    "correction-torch-reverse": lambda: _correction_case("torch", reverse=True),
    "correction-triton": lambda: _correction_case("triton"),
}


def _maybe_skip(case):
    if "triton" in case and not HAS_TRITON:
        pytest.skip("Triton (interpreter) not available")


def _outputs(res):
    return res if isinstance(res, tuple) else (res,)


def _loss(outs):
    """A loss that reaches every output with a different weight per element (a fixed pattern, not ones)."""
    total = 0
    for o in outs:
        w = torch.linspace(-1.0, 2.0, o.numel(), dtype=o.dtype, device=o.device).reshape(o.shape)
        total = total + (o * w).sum()
    return total


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_op_is_one_graph_with_its_custom_op(case):
    """Dynamo's explain: one graph, no break, and the op is in it as its custom op."""
    _maybe_skip(case)
    fn, inputs, op_name = CASES[case]()
    explanation = torch._dynamo.explain(fn)(*inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    code = explanation.graphs[0].code
    assert f"torch.ops.{op_name}" in code
    if case.startswith(("bidirectional-scan", "cross-scan")):  # the unfused paths: scan ops, no fused op
        assert code.count("torch.ops.mambaverse.selective_scan") == (2 if case.startswith("bi") else 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_op_values_and_gradients_equal_eager(case):
    """fullgraph compile (aot_eager) against eager, values and the gradient of every input, including the
    gradient that flows back through a returned final state."""
    _maybe_skip(case)
    fn, inputs, _ = CASES[case]()
    _check_compiled_against_eager(fn, inputs, "aot_eager")


def _check_compiled_against_eager(fn, inputs, backend, tol=1e-5):
    eager = _outputs(fn(*inputs))
    grads = torch.autograd.grad(_loss(eager), inputs)
    compiled = _outputs(torch.compile(fn, fullgraph=True, backend=backend)(*inputs))
    got = torch.autograd.grad(_loss(compiled), inputs)
    assert len(compiled) == len(eager)
    for a, b in zip(compiled, eager):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol / 10)
    for i, (a, b) in enumerate(zip(got, grads)):
        assert a is not None and a.dtype == b.dtype, f"input {i}"
        # the same kernels in the same order: equal to fp32 rounding (bf16 gradients: the loss's bf16 sums)
        tols = dict(rtol=1.6e-2, atol=1e-2) if a.dtype == torch.bfloat16 else dict(rtol=tol, atol=tol)
        torch.testing.assert_close(a, b, **tols, msg=f"gradient of input {i}")


# ----------------------------------------------------------------------------- opcheck
def _opcheck_args():
    torch.manual_seed(1)
    b, d, n, l = 1, 2, 2, 5
    u, dt, z = torch.randn(b, d, l), torch.randn(b, d, l) * 0.5, torch.randn(b, d, l)
    A, B, C = -torch.rand(d, n) - 0.5, torch.randn(b, n, l), torch.randn(b, n, l)
    D, db, h0 = torch.randn(d), torch.randn(d) * 0.1, torch.randn(b, d, n)
    req = lambda *ts: [t.clone().requires_grad_() for t in ts]  # noqa: E731
    x4, dt3 = torch.randn(1, 6, 2, 2), torch.rand(1, 6, 2) * 0.5
    cx = torch.randn(1, 1, 2, 2)
    return {
        "selective_scan": (selective_scan_op, (*req(u, dt, A, B, C, D, z, db), True, *req(h0), True, True, "torch")),
        "selective_scan-no-state": (selective_scan_op, (*req(u, dt, A, B, C), None, None, None, False, None, False,
                                                        False, "naive")),
        "causal_conv1d": (causal_conv1d_op, (*req(u, torch.randn(d, 3), D), "silu", False,
                                             *req(torch.randn(b, d, 2)), True, "torch")),
        "ssd_scan": (ssd_scan_op, (*req(x4, dt3, -torch.rand(2), torch.randn(1, 6, 1, 3), torch.randn(1, 6, 1, 3)),
                                   None, None, True, 4, "torch")),
        "state_correction": (state_correction_op, (*req(dt, A, C, h0, z, db), True, False, None, "torch")),
        # (forward, reverse) slots of u, delta, A, B, C, D, delta_bias; only delta is a pair here
        "bidirectional_scan": (bidirectional_scan_op, (*req(u), None, *req(dt, dt * 0.5, A), None, *req(B), None,
                                                       *req(C), None, None, None, *req(db), None, *req(z), True,
                                                       "add", [False, True, False, False, False, False, False],
                                                       "scan")),
        "cross_selective_scan": (cross_selective_scan_op, (*req(cx, torch.randn(1, 4, 1, 4) * 0.5,
                                                                -torch.rand(4, 2) - 0.5, torch.randn(1, 4, 2, 4),
                                                                torch.randn(1, 4, 2, 4)), None, None, True, "scan")),
    }


@pytest.mark.parametrize("name", sorted(_opcheck_args()))
def test_opcheck(name):
    """torch.library.opcheck: schema, autograd registration, fake tensors, AOT dispatch with dynamic shapes."""
    op, args = _opcheck_args()[name]
    torch.library.opcheck(op.forward_op, args)


# ----------------------------------------------------------------------------- a backend Dynamo cannot trace
def test_a_backend_dynamo_cannot_trace_compiles_whole_behind_the_op():
    """mamba-ssm's and causal-conv1d's kernels are C++/CUDA that Dynamo cannot trace, and they do not run on
    CPU; this stand-in (the naive scan behind ``torch._dynamo.disable``, which alone would break the graph)
    shows that such a backend compiles in one graph behind the op, with the eager gradients."""
    register_backend(Backend("selective_scan", "opaque_stand_in", torch._dynamo.disable(selective_scan_naive),
                             TABLE["selective_scan"]["naive"].features, ALL_DTYPES, lambda device: True, {},
                             "test stand-in for a backend Dynamo cannot trace"))
    try:
        fn, inputs, _ = _scan_case("opaque_stand_in")
        explanation = torch._dynamo.explain(fn)(*inputs)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
        ref_fn, _, _ = _scan_case("naive")
        want = torch.autograd.grad(_loss(ref_fn(*inputs)), inputs)
        got = torch.autograd.grad(_loss(torch.compile(fn, fullgraph=True, backend="aot_eager")(*inputs)), inputs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    finally:
        unregister_backend("selective_scan", "opaque_stand_in")


# ----------------------------------------------------------------------------- models
def _params_grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _check_model_compiles(model, x, backend="aot_eager", rtol=1e-5, atol=1e-6):
    y0 = model(x)
    _loss((y0,)).backward()
    want = _params_grads(model)
    model.zero_grad(set_to_none=True)
    y1 = torch.compile(model, fullgraph=True, backend=backend)(x)
    _loss((y1,)).backward()
    got = _params_grads(model)
    torch.testing.assert_close(y1, y0, rtol=rtol, atol=atol)
    assert got.keys() == want.keys() and len(got) == len(list(model.parameters()))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("preset", ["causal_tiny", "bimamba_tiny", "causal_mamba2_tiny"])
def test_backbone_compiles_fullgraph_with_eager_outputs_and_gradients(preset):
    """Whole backbones (Mamba-1 causal, bidirectional Caduceus-style, Mamba-2) with the CPU auto backend."""
    model = mv.create_model(preset)
    _check_model_compiles(model, torch.randn(2, 12, 64), atol=1e-5)


@needs_triton
def test_bidirectional_backbone_compiles_with_the_fused_triton_scan():
    """The fused bidirectional kernel (backend="triton") under compile; tiny, as the interpreter is slow."""
    model = mv.create_model("bimamba_tiny", d_model=4, n_layer=1, d_state=2, backend="triton")
    _check_model_compiles(model, torch.randn(1, 6, 4), atol=1e-5)


def test_mixer_state_in_and_out_compiles_with_gradient_through_the_state():
    """Mamba's state API under compile: conv and SSM state in, state out, gradient through both (the
    chunked long-context path); and a Mamba2 mixer on its own."""
    mixer = Mamba(16, d_state=4, expand=2)
    h = torch.randn(2, 6, 16)
    state = (torch.randn(2, 32, 3).requires_grad_(), torch.randn(2, 32, 4).requires_grad_())

    def run(hidden, conv, ssm):
        y, (conv_out, ssm_out) = mixer(hidden, initial_state=(conv, ssm), return_final_state=True)
        return y, conv_out, ssm_out

    eager = run(h, *state)
    want = torch.autograd.grad(_loss(eager), [*state, *mixer.parameters()])
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(h, *state)
    got = torch.autograd.grad(_loss(compiled), [*state, *mixer.parameters()])
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    _check_model_compiles(Mamba2(32, d_state=8, headdim=8, chunk_size=4), torch.randn(2, 10, 32), atol=1e-5)


def test_inductor_compiles_a_mamba_block():
    """The one Inductor case (its code generation is the slow part on CPU): a Mamba block, outputs and
    gradients equal to eager within fp32 rounding (Inductor fuses and reorders the projections' arithmetic)."""
    block = Mamba(16, d_state=4, expand=2)
    _check_model_compiles(block, torch.randn(2, 8, 16), backend="inductor", rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- CUDA only
# conftest turns the interpreter on unless TRITON_INTERPRET is set: run these with TRITON_INTERPRET=0
cuda = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                          reason="needs CUDA with compiled Triton kernels (TRITON_INTERPRET=0)")


def _cuda_backends():
    return [name for name in ("torch", "triton", "mamba_ssm")
            if TABLE["selective_scan"][name].available(torch.device("cuda"))]


@cuda
@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "mamba_ssm"])
def test_cuda_graphs_capture_the_compiled_model(backend):
    """mode="reduce-overhead" (CUDA graph trees): fullgraph, no cudagraph skips, eager values and gradients.
    Run on a GPU without TRITON_INTERPRET; mamba_ssm only where it is installed."""
    if backend != "auto" and backend not in _cuda_backends():
        pytest.skip(f"{backend} unavailable on this CUDA machine")
    from torch._dynamo.utils import counters

    counters.clear()
    model = mv.create_model("causal_tiny", backend=backend).cuda()
    x = torch.randn(2, 64, 64, device="cuda")
    y0 = model(x)
    _loss((y0,)).backward()
    want = _params_grads(model)
    compiled = torch.compile(model, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):  # warm-up, record, replay
        model.zero_grad(set_to_none=True)
        y1 = compiled(x)
        _loss((y1,)).backward()
    assert not counters["inductor"].get("cudagraph_skips"), dict(counters["inductor"])
    torch.testing.assert_close(y1, y0, rtol=1e-3, atol=1e-3)
    got = _params_grads(model)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-3, msg=name)


@cuda
@pytest.mark.parametrize("backend", ["torch", "triton", "mamba_ssm"])
def test_cuda_graph_captures_each_scan_backend(backend):
    """torch.cuda.graph capture of the scan's custom op itself, replayed on new inputs."""
    if backend not in _cuda_backends():
        pytest.skip(f"{backend} unavailable on this CUDA machine")
    b, d, n, l = 2, 64, 16, 128
    u, delta, z = (torch.randn(b, d, l, device="cuda") for _ in range(3))
    A = -torch.rand(d, n, device="cuda") - 0.5
    B, C = torch.randn(b, n, l, device="cuda"), torch.randn(b, n, l, device="cuda")
    D, db = torch.randn(d, device="cuda"), torch.randn(d, device="cuda")
    args = lambda: (u, delta, A, B, C, D, z, db, True, None, True, False, backend)  # noqa: E731
    selective_scan_op(*args())  # warm-up (Triton compiles, mamba-ssm loads) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, state = selective_scan_op(*args())
    u.copy_(torch.randn_like(u))
    graph.replay()
    want, want_state = selective_scan(u, delta, A, B, C, D, z, db, True, return_final_state=True, backend="naive")
    torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(state, want_state, rtol=1e-3, atol=1e-3)


def test_dispatch_errors_still_name_the_backend_under_compile():
    """A backend that cannot serve the call fails at trace time with the dispatcher's message."""
    fn, inputs, _ = _scan_case("mamba_ssm")
    with pytest.raises(Exception, match="mamba_ssm"):
        torch.compile(fn, fullgraph=True, backend="aot_eager")(*inputs)



# the CUDA-only backends' cases (the CPU cases' Triton ones run compiled on the GPU too)
CUDA_CASES = {
    "scan-mamba_ssm": lambda: _scan_case("mamba_ssm", state=False),
    "scan-mamba_ssm-reverse-grouped": lambda: _scan_case("mamba_ssm", reverse=True, grouped=True, state=False),
    "ssd-mamba_ssm": lambda: _ssd_case("mamba_ssm"),
    "conv-causal_conv1d": lambda: _conv_case("causal_conv1d", state=False),
}


@cuda
@pytest.mark.parametrize("case", sorted(CASES) + sorted(CUDA_CASES))
def test_cuda_each_op_compiles_with_inductor_and_eager_gradients(case):
    """Every op case on CUDA, compiled by Inductor with fullgraph, against eager (values and every gradient)."""
    fn, inputs, _ = {**CASES, **CUDA_CASES}[case]()
    inputs = [t.detach().cuda().requires_grad_(t.requires_grad) for t in inputs]
    try:
        fn(*inputs)
    except mv.BackendUnavailableError as exc:  # mamba-ssm / causal-conv1d not installed here
        pytest.skip(str(exc))
    _check_compiled_against_eager(fn, inputs, "inductor", tol=1e-4)
