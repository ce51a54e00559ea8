"""The public ops as torch custom ops (``torch.library``), so that ``torch.compile(model, fullgraph=True)`` sees
each op as one opaque node with known output shapes, for every backend, and CUDA graphs can capture it.

Every op ``mambaverse::<name>`` is registered with

- one implementation for all devices: it runs the backend named by its ``backend`` argument (the row of
  ``dispatch.TABLE``) under ``torch.no_grad``, so a kernel saves nothing for backward there;
- a fake (meta) implementation: the output shapes and dtypes, from the same ``outputs`` function that the real
  implementation checks its results against, so the two cannot drift apart;
- autograd (``torch.library.register_autograd``): the backward is a second op, ``mambaverse::<name>_backward``,
  which runs the same backend forward again with autograd on and differentiates it with the backend's own
  backward. The gradients are therefore those of an eager call on the same backend, for every input, including
  the gradient that flows back through a returned final state; the price is one extra forward pass inside the
  backward. Double backward is not supported (no backend supports it either).

Which backend serves a call is decided outside the op, in the public Python function, by ``resolve_backend``
(``dispatch.select``); under ``torch.compile`` that choice is taken once at trace time (it depends only on the
device, dtype, ``requires_grad`` and flags, which Dynamo guards on) and becomes the op's ``backend`` string.
Eager calls do not go through these ops: they call the backend directly, with its own autograd and no
recomputation. ``torch.compiler.is_compiling()`` picks the path.

Outputs an op does not produce (the final state when ``return_final_state`` is false) are empty float32
placeholders: a custom op cannot return ``None``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .dispatch import select

NAMESPACE = "mambaverse"


@torch.compiler.assume_constant_result
def _resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype, needs: tuple) -> str:
    return select(op, backend, device, dtype, set(needs)).name


def resolve_backend(op: str, backend: str, device, dtype: torch.dtype, needs: set[str]) -> str:
    """The name of the backend that serves this call (``dispatch.select``), as a constant under ``torch.compile``.

    Args:
        op: the op's row in ``dispatch.TABLE`` (e.g. ``"selective_scan"``).
        backend: what the caller asked for (``"auto"`` or a backend name).
        device, dtype: the call's device and compute dtype.
        needs: the capabilities the call needs (keys of ``dispatch.FEATURES``).

    Raises:
        BackendUnavailableError: as ``dispatch.select`` (under ``torch.compile``, Dynamo wraps it in its own
            exception whose message carries this one's).
    """
    if torch.compiler.is_compiling():
        # traced once as a constant: the availability probes (imports, environment) stay out of the graph
        return _resolve(op, backend, torch.device(device), dtype, tuple(sorted(needs)))
    return select(op, backend, torch.device(device), dtype, needs).name


def compiling() -> bool:
    """True while ``torch.compile`` / ``torch.export`` traces the caller: the public ops then call their custom op."""
    return torch.compiler.is_compiling()


def _placeholder(device) -> torch.Tensor:
    return torch.empty(0, device=device, dtype=torch.float32)


def _unaliased(outs: list, inputs) -> list:
    """``outs`` with every tensor that shares memory with an input or an earlier output cloned: a custom op's
    outputs may alias neither (a kernel may return views of one buffer, or hand an input back)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor) and t.numel()}
    result = []
    for t in outs:
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
        result.append(t)
    return result


def _with_autograd():
    """A guard that turns autograd back on inside a custom op's implementation.

    The dispatcher runs a custom op's implementation below autograd (its autograd dispatch keys excluded), so
    operations there record no graph even under ``torch.enable_grad()``. The backward op needs the backend's
    own autograd to differentiate the recomputed forward, so it lifts exactly those exclusions (autocast stays
    excluded, as in the forward op) for the duration of the recomputation."""
    C = torch._C
    keep = C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor", "ADInplaceOrView"):
        keep = keep.remove(getattr(C.DispatchKey, key))
    return C._ForceDispatchKeyGuard(C._dispatch_tls_local_include_set(), keep)


class DifferentiableOp:
    """One public op as a pair of custom ops (forward and backward) with fake shapes and autograd.

    Args:
        name: the op's name; registers ``mambaverse::<name>`` and ``mambaverse::<name>_backward``.
        params: ``(schema type, argument name)`` pairs in call order, e.g. ``("Tensor?", "D")``, ``("bool",
            "reverse")``, ``("str", "backend")``. Arguments of type ``Tensor`` / ``Tensor?`` are differentiable.
        n_out: how many tensors the op returns.
        outputs: ``outputs(**arguments) -> tuple`` of ``(shape, dtype)`` per output, or ``None`` for an output
            this call does not produce (an empty placeholder). Called with fake tensors for the fake
            implementation and with real ones to check the real results.
        impl: ``impl(**arguments) -> tuple`` of output tensors (``None`` where ``outputs`` says ``None``): the
            backend's computation, differentiable by autograd.

    ``op(*args)`` calls the forward custom op and returns its tuple of outputs.
    """

    def __init__(self, name: str, params: Sequence[tuple[str, str]], n_out: int, outputs: Callable, impl: Callable):
        self.name, self.params, self.n_out, self.outputs, self.impl = name, list(params), n_out, outputs, impl
        self.names = [n for _, n in self.params]
        self.tensor_idx = [i for i, (t, _) in enumerate(self.params) if t.startswith("Tensor")]
        args = ", ".join(f"{t} {n}" for t, n in self.params)
        rets = "Tensor" if self.n_out == 1 else "(" + ", ".join(["Tensor"] * self.n_out) + ")"
        self.forward_op = torch.library.custom_op(f"{NAMESPACE}::{name}", self._forward, mutates_args=(),
                                                  schema=f"({args}) -> {rets}")
        self.forward_op.register_fake(self._fake)
        self.backward_op = torch.library.custom_op(f"{NAMESPACE}::{name}_backward", self._backward,
                                                   mutates_args=(),
                                                   schema=f"(Tensor?[] grads, {args}, bool[] needs) -> Tensor[]")
        self.backward_op.register_fake(self._backward_fake)
        self.forward_op.register_autograd(self._autograd_backward, setup_context=self._setup_context)

    def __call__(self, *args):
        out = self.forward_op(*args)
        return (out,) if self.n_out == 1 else tuple(out)

    # ------------------------------------------------------------------ forward
    def _kwargs(self, args) -> dict:
        return dict(zip(self.names, args))

    def _device(self, kwargs):
        return kwargs[self.names[self.tensor_idx[0]]].device

    def _fake(self, *args):
        kwargs = self._kwargs(args)
        device = self._device(kwargs)
        outs = tuple(_placeholder(device) if meta is None else torch.empty(meta[0], dtype=meta[1], device=device)
                     for meta in self.outputs(**kwargs))
        return outs[0] if self.n_out == 1 else outs

    def _finish(self, kwargs, results):
        """The backend's results as the fake implementation promised them: dtype, contiguous, not an input."""
        device = self._device(kwargs)
        outs = []
        for meta, t in zip(self.outputs(**kwargs), results):
            if meta is None:
                outs.append(_placeholder(device))
                continue
            if tuple(t.shape) != tuple(meta[0]):
                raise RuntimeError(f"{NAMESPACE}::{self.name}: backend {kwargs.get('backend')!r} returned shape "
                                   f"{tuple(t.shape)}, expected {tuple(meta[0])}")
            outs.append(t.to(meta[1]).contiguous())
        return _unaliased(outs, kwargs.values())

    def _run(self, kwargs):
        results = self.impl(**kwargs)
        return results if isinstance(results, tuple) else (results,)

    def _forward(self, *args):
        kwargs = self._kwargs(args)
        with torch.no_grad():  # nothing is saved for backward: the backward op recomputes
            outs = self._finish(kwargs, self._run(kwargs))
        return outs[0] if self.n_out == 1 else tuple(outs)

    # ------------------------------------------------------------------ backward
    def _setup_context(self, ctx, inputs, output):
        ctx.save_for_backward(*(inputs[i] for i in self.tensor_idx))
        ctx.others = {i: v for i, v in enumerate(inputs) if i not in self.tensor_idx}

    def _autograd_backward(self, ctx, *grads):
        needs = [bool(ctx.needs_input_grad[i]) for i in self.tensor_idx]
        n = len(self.params)
        if not any(needs):
            return (None,) * n
        saved = iter(ctx.saved_tensors)
        args = [next(saved) if i in self.tensor_idx else ctx.others[i] for i in range(n)]
        got = self.backward_op(list(grads), *args, needs)
        result = [None] * n
        for k, i in enumerate(self.tensor_idx):
            if needs[k] and args[i] is not None:
                result[i] = got[k]
        return tuple(result)

    def _backward_fake(self, grads, *rest):
        *args, needs = rest
        kwargs = self._kwargs(args)
        device = self._device(kwargs)
        out = []
        for k, i in enumerate(self.tensor_idx):
            t = args[i]
            out.append(torch.empty(t.shape, dtype=t.dtype, device=t.device) if needs[k] and t is not None
                       else _placeholder(device))
        return out

    def _backward(self, grads, *rest):
        *args, needs = rest
        args = list(args)
        device = self._device(self._kwargs(args))
        leaves = {}
        for k, i in enumerate(self.tensor_idx):
            if args[i] is not None:
                args[i] = args[i].detach()
                if needs[k]:
                    args[i].requires_grad_(True)
                    leaves[k] = args[i]
        kwargs = self._kwargs(args)
        with _with_autograd(), torch.enable_grad():
            results = self._run(kwargs)
            pairs = []
            for meta, t, g in zip(self.outputs(**kwargs), results, grads):
                if meta is None or g is None or t is None or not t.requires_grad:
                    continue  # a placeholder, an unused output, or one the backend keeps constant (mamba-ssm's state)
                pairs.append((t.to(meta[1]), g))
            got = (torch.autograd.grad([t for t, _ in pairs], list(leaves.values()), [g for _, g in pairs],
                                       allow_unused=True) if pairs and leaves else [None] * len(leaves))
        by_k = dict(zip(leaves, got))
        out = []
        for k, i in enumerate(self.tensor_idx):
            if k in by_k:
                g = by_k[k]
                out.append((torch.zeros_like(args[i]) if g is None else g.to(args[i].dtype)).detach().contiguous())
            else:
                out.append(_placeholder(device))
        return _unaliased(out, [*args, *grads])

