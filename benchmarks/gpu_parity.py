"""Quick GPU parity of every Triton op against the torch backend (values and gradients), no timing.

    python benchmarks/gpu_parity.py            # on a CUDA machine; prints one line per op and dtype

Use it after editing a kernel, before `benchmarks/kernels.py`. The cotangent is drawn with an explicit
shape (not randn_like), because the backends return outputs with different strides.
"""
from __future__ import annotations

import torch

from mambaverse.ops import bidirectional_scan, causal_conv1d, cross_selective_scan, selective_scan

DEVICE = "cuda"


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-6)).item()


def check(name, fn, inputs):
    results = {}
    for backend in ("triton", "torch"):
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        y = fn(backend, *xs)
        y = y[0] if isinstance(y, tuple) else y
        torch.manual_seed(1)
        cotangent = torch.randn(y.shape, device=y.device, dtype=y.dtype)
        grads = torch.autograd.grad((y.float() * cotangent.float()).sum(), xs, allow_unused=True)
        results[backend] = [y] + [g for g in grads if g is not None]
    errors = [rel(a, b) for a, b in zip(results["triton"], results["torch"])]
    print(f"{name:32s} out {errors[0]:.1e}  grads max {max(errors[1:]):.1e}", flush=True)
    return max(errors)


def main():
    torch.manual_seed(0)
    worst = {}
    for dtype in (torch.float32, torch.bfloat16):
        b, d, l, n = 2, 256, 4099, 16
        u = torch.randn(b, d, l, device=DEVICE, dtype=dtype)
        delta = torch.randn(b, d, l, device=DEVICE, dtype=dtype) * 0.5
        A = -torch.rand(d, n, device=DEVICE) - 0.1
        B = torch.randn(b, 2, n, l, device=DEVICE, dtype=dtype)
        C = torch.randn(b, n, l, device=DEVICE, dtype=dtype)
        D, z = torch.randn(d, device=DEVICE), torch.randn(b, d, l, device=DEVICE, dtype=dtype)
        bias, h0 = torch.randn(d, device=DEVICE) * 0.1, torch.randn(b, d, n, device=DEVICE)
        for reverse in (False, True):
            worst[f"scan {dtype} reverse={reverse}"] = check(
                f"scan {dtype} reverse={reverse}",
                lambda be, *a, r=reverse: selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7], delta_softplus=True,
                                                         initial_state=a[8], return_final_state=True, reverse=r,
                                                         backend=be),
                [u, delta, A, B, C, D, z, bias, h0])
        worst[f"bidirectional {dtype}"] = check(
            f"bidirectional {dtype}",
            lambda be, *a: bidirectional_scan(a[0], a[1], (a[2], a[2] * 0.5), a[3], a[4], a[5], a[6], a[7], True,
                                              "add", backend=be),
            [u, delta, A, B, C, D, z, bias])
        weight, conv_bias = torch.randn(d, 4, device=DEVICE), torch.randn(d, device=DEVICE)
        for reverse in (False, True):
            worst[f"conv {dtype} reverse={reverse}"] = check(
                f"conv {dtype} reverse={reverse}",
                lambda be, *a, r=reverse: causal_conv1d(a[0], a[1], a[2], "silu", reverse=r, backend=be),
                [u, weight, conv_bias])
        c, h, w = 32, 14, 18
        x = torch.randn(b, c, h, w, device=DEVICE, dtype=dtype)
        d4 = torch.randn(b, 4, c, h * w, device=DEVICE, dtype=dtype) * 0.5
        A4 = -torch.rand(4 * c, n, device=DEVICE) - 0.1
        B4 = torch.randn(b, 4, n, h * w, device=DEVICE, dtype=dtype)
        C4 = torch.randn(b, 4, n, h * w, device=DEVICE, dtype=dtype)
        D4, bias4 = torch.randn(4 * c, device=DEVICE), torch.randn(4 * c, device=DEVICE) * 0.1
        worst[f"cross-scan {dtype}"] = check(
            f"cross-scan {dtype}", lambda be, *a: cross_selective_scan(*a, True, backend=be), [x, d4, A4, B4, C4, D4, bias4])
    limit = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
    failed = [k for k, v in worst.items() if v > limit[torch.float32 if "float32" in k else torch.bfloat16]]
    print("parity failures:", failed or "none")


if __name__ == "__main__":
    main()
