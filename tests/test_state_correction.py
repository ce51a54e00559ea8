"""The state correction op (``mambaverse.ops.state_correction``) against the two-pass formulation it replaces.

Reference: autograd through the naive sequential scan started from ``h_in`` (``decay_in * h_in``), versus
the same scan started from zero plus the correction: outputs and the gradients of every input (delta, A,
C, h_in, z, delta_bias, decay_in), forward and reverse, shared and grouped C. The Triton kernel runs on CPU through the
interpreter, with tiny blocks so that each program walks several chunks, including a partial one.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (the Makefile / CI also export it)

import pytest  # noqa: E402
import torch  # noqa: E402

from mambaverse.errors import BackendUnavailableError, ShapeError  # noqa: E402
from mambaverse.ops import selective_scan, state_correction  # noqa: E402
from mambaverse.ops.dispatch import backends_for  # noqa: E402

B, D, N, L = 2, 8, 5, 29


def _inputs(grouped, gate, dtype, dt_scale=1.0, seed=0, decay=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    t = dict(u=r(B, D, L), delta=r(B, D, L) * 0.5, A=-torch.rand(D, N, generator=g, dtype=torch.float64) - 0.2,
             B=r(B, 2, N, L) if grouped else r(B, N, L), C=r(B, 2, N, L) if grouped else r(B, N, L),
             D=r(D), z=r(B, D, L) if gate else None, delta_bias=r(D) + dt_scale, h_in=r(B, D, N), w=r(B, D, L),
             decay_in=torch.rand(B, D, N, generator=g, dtype=torch.float64) if decay else None)
    return {k: (v.to(dtype) if v is not None else None) for k, v in t.items()}


def _two_pass(t, reverse, backend):
    """(reference output, its gradients; corrected output, its gradients) w.r.t. the differentiable inputs."""
    names = [k for k in ("delta", "A", "C", "h_in", "z", "delta_bias", "decay_in") if t[k] is not None]
    ins = {k: t[k].clone().requires_grad_(True) for k in names}
    args = dict(u=t["u"], delta=ins["delta"], A=ins["A"], B=t["B"], C=ins["C"], D=t["D"], z=ins.get("z"),
                delta_bias=ins["delta_bias"], delta_softplus=True, reverse=reverse, backend="naive")
    entering = ins["h_in"] if "decay_in" not in ins else ins["h_in"] * ins["decay_in"]
    ref = selective_scan(**args, initial_state=entering)
    ref_grads = torch.autograd.grad((ref * t["w"]).sum(), list(ins.values()))
    out = selective_scan(**args) + state_correction(ins["delta"], ins["A"], ins["C"], ins["h_in"], z=ins.get("z"),
                                                    delta_bias=ins["delta_bias"], delta_softplus=True,
                                                    reverse=reverse, decay_in=ins.get("decay_in"), backend=backend)
    grads = torch.autograd.grad((out * t["w"]).sum(), list(ins.values()))
    return ref, ref_grads, out, grads, names


@pytest.mark.parametrize("backend", ["naive", "torch"])
@pytest.mark.parametrize("grouped,gate,reverse,decay", [(False, True, False, False), (True, False, True, True),
                                                        (False, True, True, False)])
def test_reference_backends_equal_scan_from_state(backend, grouped, gate, reverse, decay):
    ref, ref_grads, out, grads, names = _two_pass(_inputs(grouped, gate, torch.float64, decay=decay), reverse, backend)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for name, a, b in zip(names, grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name}: {m}")


def test_torch_blocks_and_skip_match_naive():
    """Several checkpointed blocks (block=4), and a decay fast enough to underflow: the skipped tail is 0."""
    from mambaverse.ops.state_correction import state_correction_naive, state_correction_torch

    t = _inputs(False, True, torch.float32, dt_scale=40.0)
    ins = [t[k].clone().requires_grad_(True) for k in ("delta", "A", "C", "h_in", "z", "delta_bias")]
    outs = []
    for fn, kw in ((state_correction_naive, {}), (state_correction_torch, {"block": 4})):
        y = fn(*ins[:5], delta_bias=ins[5], delta_softplus=True, **kw)
        outs.append((y, torch.autograd.grad((y * t["w"]).sum(), ins)))
    assert outs[0][0][..., 16:].abs().max() == 0  # dt ~ 40: exp(-40 * 0.2 * t) is 0 in fp32 before t = 16
    torch.testing.assert_close(outs[1][0], outs[0][0])
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b)


@pytest.fixture
def tiny_blocks():
    kernels = pytest.importorskip("mambaverse.kernels")
    old = kernels.set_correction_config(fwd=(4, 8, 2), bwd=(2, 4, 1))
    yield
    kernels.set_correction_config(**old)


@pytest.mark.parametrize("grouped,gate,reverse,dt_scale,decay",
                         [(False, True, False, 1.0, False), (True, True, True, 1.0, True),
                          (False, False, False, 40.0, True)])
def test_triton_kernel_equals_scan_from_state(tiny_blocks, grouped, gate, reverse, dt_scale, decay):
    """fp32 kernel vs the float64 two-pass reference; dt_scale=40 makes every program stop early."""
    if "triton" not in backends_for("state_correction", "cpu"):
        pytest.skip("Triton is not installed")
    t = _inputs(grouped, gate, torch.float64, dt_scale, decay=decay)
    ref, ref_grads, _, _, names = _two_pass(t, reverse, "naive")
    t32 = {k: (v.float() if v is not None else None) for k, v in t.items()}
    ins = [t32[k].clone().requires_grad_(True) for k in names]
    kw = dict(zip(names, ins))
    out = selective_scan(t32["u"], kw["delta"], kw["A"], t32["B"], kw["C"], t32["D"], kw.get("z"), kw["delta_bias"],
                         True, reverse=reverse, backend="naive")
    out = out + state_correction(kw["delta"], kw["A"], kw["C"], kw["h_in"], z=kw.get("z"),
                                 delta_bias=kw["delta_bias"], delta_softplus=True, reverse=reverse,
                                 decay_in=kw.get("decay_in"), backend="triton")
    grads = torch.autograd.grad((out * t32["w"]).sum(), ins)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    for name, a, b in zip(names, grads, ref_grads):
        scale = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_zero_decay_in_gives_exact_zeros(tiny_blocks, backend):
    """A state whose decay has underflowed: nothing to add, no gradient; the loops stop at once."""
    if backend not in backends_for("state_correction", "cpu"):
        pytest.skip("Triton is not installed")
    t = _inputs(False, True, torch.float32)
    h = t["h_in"].clone().requires_grad_(True)
    out = state_correction(t["delta"], t["A"], t["C"], h, z=t["z"], delta_bias=t["delta_bias"], delta_softplus=True,
                           decay_in=torch.zeros_like(h), backend=backend)
    (grad,) = torch.autograd.grad((out * t["w"]).sum(), [h])
    assert out.abs().max() == 0 and grad.abs().max() == 0


def test_bad_inputs_raise():
    t = _inputs(False, False, torch.float32)
    with pytest.raises(ShapeError, match="h_in has shape"):
        state_correction(t["delta"], t["A"], t["C"], t["h_in"][:, :3])
    with pytest.raises(ShapeError, match="decay_in has shape"):
        state_correction(t["delta"], t["A"], t["C"], t["h_in"], decay_in=t["h_in"][0])
    with pytest.raises(ShapeError, match="C has shape"):
        state_correction(t["delta"], t["A"], t["C"][..., :4], t["h_in"])
    with pytest.raises(BackendUnavailableError):
        state_correction(t["delta"], t["A"], t["C"], t["h_in"], backend="mamba_ssm")
