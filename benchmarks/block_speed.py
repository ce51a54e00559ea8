"""Block speed: our Mamba, BidirectionalMamba and Mamba2 mixers against mamba-ssm's, forward+backward, same run.

    PYTHONPATH=/tmp/anchor python benchmarks/block_speed.py          # GPU -> results/block_speed_<gpu>.md
    BENCH_DRY=1 python benchmarks/block_speed.py                     # CPU dry run, tiny shapes (tests the script)

Setting (issue 14, item 3): d_model=768, batch 4, L=8192, fp32 parameters under bf16 autocast, bf16 input,
loss = sum(out * g) for a fixed random g. Parity first, at full size with the same weights: our Mamba vs
mamba-ssm's Mamba on its fused fast path (``mamba_inner_fn`` with causal-conv1d), our untied
BidirectionalMamba vs two mamba-ssm blocks with flips, our Mamba2 vs mamba-ssm's Mamba2 (outputs, the input
gradient and every weight gradient, relative L2 error). Then fwd+bwd times (CUDA events, median of --iters
after --warmup) of:

- our Mamba with backend "auto" (what a user gets: the dispatcher picks mamba_ssm / causal_conv1d or Triton
  per call) and "triton" (our kernels only), against mamba-ssm ``Mamba`` fast path (and its slow path);
- our BidirectionalMamba (Caduceus, add; tied projections = one fused bidirectional scan, and untied) against
  two mamba-ssm ``Mamba`` fast-path blocks, the second on the flipped sequence;
- our Mamba2 (headdim 64, d_state 128, chunk 256) against mamba-ssm ``Mamba2`` (its fused path).

Ratios are ours / anchor (below 1.0 = we are faster). The markdown table is rewritten after every row, so a
timeout leaves the rows measured so far. dt_rank is ceil(d_model / 16) on both sides (mamba-ssm's "auto").
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mambaverse  # noqa: E402

try:  # installed: kernels/ is mambaverse.kernels; from a bare checkout, look for it in the repo
    import mambaverse.kernels  # noqa: F401
except ImportError:
    mambaverse.__path__.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mambaverse.mixers import BidirectionalMamba, Mamba, Mamba2  # noqa: E402
from mambaverse.pretrained.convert import MAMBA1_MIXER, MAMBA2_MIXER  # noqa: E402

DRY = os.environ.get("BENCH_DRY", "0") == "1"


def versions() -> dict:
    v = {"torch": torch.__version__, "python": platform.python_version()}
    for name, mod in (("triton", "triton"), ("mamba-ssm", "mamba_ssm"), ("causal-conv1d", "causal_conv1d")):
        try:
            v[name] = __import__(mod).__version__
        except Exception:  # not installed (or a broken build): the anchor rows say so
            v[name] = "-"
    return v


class Report:
    """The markdown table, rewritten atomically after every row."""

    def __init__(self, path: str, header: list[str]):
        self.path, self.header, self.parity, self.rows, self.notes = path, header, [], [], []

    def write(self):
        lines = list(self.header)
        if self.parity:
            lines += ["", "## Parity (same weights, same shapes and precision as the timings; relative L2 error)", "",
                      "| ours | anchor | output | input grad | worst weight grad (name) | pass |", "|---|---|---|---|---|---|"]
            lines += self.parity
        lines += ["", "## Forward + backward", "", "| block | ours ms | anchor | anchor ms | ours / anchor |",
                  "|---|---|---|---|---|"] + self.rows
        if self.notes:
            lines += [""] + self.notes
        text = "\n".join(lines) + "\n"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.path + ".tmp", self.path)
        return text


def mapped(theirs, mapping) -> dict:
    """mamba-ssm module ``theirs``'s weights under our names (``mapping``: theirs' key -> ours)."""
    return {mapping[k]: (v.squeeze(1) if k == "conv1d.weight" else v)
            for k, v in theirs.state_dict().items() if k in mapping}


def rel(a, b) -> float:
    a, b = a.float().reshape(b.shape), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_grads(fn, params, h, g, ctx):
    x = h.detach().clone().requires_grad_(True)
    with ctx():
        out = fn(x)
    grads = torch.autograd.grad((out.float() * g).sum(), [x] + params)
    return out.detach(), grads


def parity(report, name, anchor_name, ours_fn, ours_params, anchor_fn, anchor_params, names, h, g, ctx, tol):
    o1, g1 = run_grads(ours_fn, ours_params, h, g, ctx)
    o2, g2 = run_grads(anchor_fn, anchor_params, h, g, ctx)
    e_out, e_in = rel(o1, o2), rel(g1[0], g2[0])
    worst = max(((rel(a, b), n) for a, b, n in zip(g1[1:], g2[1:], names)), default=(0.0, "-"))
    ok = max(e_out, e_in, worst[0]) < tol
    report.parity.append(f"| {name} | {anchor_name} | {e_out:.1e} | {e_in:.1e} | {worst[0]:.1e} ({worst[1]}) | "
                         f"{'yes' if ok else 'NO'} (< {tol:g}) |")
    print(report.parity[-1], flush=True)
    report.write()
    return ok


def timer(device):
    if device.type == "cuda":
        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:
        def measure(fn):
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
    return measure


def fwd_bwd_ms(module_fn, modules, h, g, ctx, warmup, iters, measure):
    """Median ms of one forward+backward of module_fn(h) with loss sum(out * g); grads reset outside timing."""
    x = h.detach().clone().requires_grad_(True)

    def step():
        with ctx():
            out = module_fn(x)
        out.backward(g)

    times = []
    for i in range(warmup + iters):
        for m in modules:
            m.zero_grad(set_to_none=True)
        x.grad = None
        t = measure(step)
        if i >= warmup:
            times.append(t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="same as BENCH_DRY=1: CPU, tiny shapes")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--budget-s", type=float, default=200.0, help="a section (bidirectional, Mamba2) starts only "
                   "before this many seconds (the whole run stays under 4 minutes)")
    args = p.parse_args(argv)
    dry = DRY or args.smoke or not torch.cuda.is_available()
    if not torch.cuda.is_available() and not (DRY or args.smoke):
        raise SystemExit("benchmarks/block_speed.py needs a CUDA GPU (or BENCH_DRY=1 / --smoke for the CPU dry run)")
    device = torch.device("cpu" if dry else "cuda")
    d_model, batch, L = (16, 2, 64) if dry else (768, 4, 8192)
    m2_state, m2_headdim, m2_chunk = (8, 8, 16) if dry else (128, 64, 256)
    iters = args.iters or (2 if dry else 20)
    warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    dt_rank = math.ceil(d_model / 16)
    t0 = time.time()
    name = torch.cuda.get_device_name() if not dry else "CPU dry run (BENCH_DRY=1; tiny shapes, not a result)"
    out = args.out or (os.path.join("/tmp", "block_speed_dry.md") if dry else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"block_speed_{name.split()[-1].lower()}.md"))
    v = versions()
    header = [f"# Block speed: our mixers vs mamba-ssm's ({name})", "",
              f"Date: {datetime.date.today()}. Device: {name}. " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".",
              "", f"d_model={d_model}, batch {batch}, L={L}, expand 2, d_state 16, d_conv 4, dt_rank {dt_rank} "
              f"(both sides); Mamba2: headdim {m2_headdim}, d_state {m2_state}, chunk {m2_chunk}. "
              + ("fp32 parameters under bf16 autocast, bf16 input" if not dry else "fp32 throughout")
              + ", forward + backward of sum(out * g). Times: "
              + ("CUDA events" if not dry else "wall clock") + f", median of {iters} after {warmup} warm-up. "
              "Ours = mambaverse mixers (backend as named; 'auto' picks among mamba_ssm, causal_conv1d and our "
              "Triton kernels per call); anchor = mamba-ssm modules, same run. Generated by "
              "benchmarks/block_speed.py."]
    report = Report(out, header)
    report.write()
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if not dry else (lambda: torch.autocast("cpu", enabled=False))
    act_dtype = torch.bfloat16 if not dry else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(batch, L, d_model, generator=gen).to(device, act_dtype)
    g = torch.randn(batch, L, d_model, generator=gen).to(device, act_dtype)  # the dtype of every block output
    measure = timer(device)
    have_anchor = v["mamba-ssm"] != "-" and not dry
    fast_path = have_anchor and v["causal-conv1d"] != "-"
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    our_backends = ["auto", "triton"] if (not dry or interp) else ["auto"]
    if dry:
        report.notes.append("Dry run: no mamba-ssm here; 'ours' is forced channel-major (what CUDA runs) and the "
                            "'anchor' is our own block in the (B, L, .) row layout (layout='rows'): this exercises "
                            "the script and the layout equivalence, it is not a comparison.")
    tol = 3e-2 if not dry else 1e-4

    def ours_layout(m):
        """On CUDA the blocks run channel-major by themselves; the dry run forces it so the CPU exercises it."""
        if dry:
            m.layout = "channels"
        return m

    def add_row(label, ours_ms, anchor_label, anchor_ms):
        ratio = f"{ours_ms / anchor_ms:.2f}" if anchor_ms else "-"
        report.rows.append(f"| {label} | {ours_ms:.3f} | {anchor_label} | "
                           + (f"{anchor_ms:.3f}" if anchor_ms else "-") + f" | {ratio} |")
        print(report.rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
        report.write()

    def timed(fn, modules):
        return fwd_bwd_ms(fn, modules, h, g, ctx, warmup, iters, measure)

    # ------------------------------------------------------------------ Mamba
    torch.manual_seed(0)
    ours = ours_layout(Mamba(d_model, dt_rank=dt_rank).to(device))
    if have_anchor:
        from mamba_ssm import Mamba as AnchorMamba

        anchor = AnchorMamba(d_model, use_fast_path=fast_path).to(device)
        ours.load_state_dict(mapped(anchor, MAMBA1_MIXER))
        anchor_label = "mamba-ssm Mamba " + ("fast path (mamba_inner_fn, causal-conv1d)" if fast_path else "slow path")
    else:
        anchor = Mamba(d_model, dt_rank=dt_rank).to(device)
        anchor.load_state_dict(ours.state_dict())
        anchor.layout = "rows"
        anchor_label = "stand-in: ours, layout='rows'"
    names = [n for n, _ in ours.named_parameters()]
    anchor_params = dict(anchor.named_parameters())
    inv = {v2: k2 for k2, v2 in MAMBA1_MIXER.items()}
    aligned = [anchor_params[inv[n]] if have_anchor else anchor_params[n] for n in names]
    for be in our_backends:
        ours.backend = be
        parity(report, f"Mamba (backend {be})", anchor_label, ours, list(ours.parameters()), anchor, aligned, names,
               h, g, ctx, tol)
    t_anchor = timed(anchor, [anchor])
    ours_ms = {}
    for be in our_backends:
        ours.backend = be
        ours_ms[be] = timed(ours, [ours])
        add_row(f"Mamba, backend {be}", ours_ms[be], anchor_label, t_anchor)
    if have_anchor and fast_path:
        slow = AnchorMamba(d_model, use_fast_path=False).to(device)
        slow.load_state_dict(anchor.state_dict())
        add_row("Mamba, backend auto", ours_ms["auto"], "mamba-ssm Mamba slow path (use_fast_path=False)",
                timed(slow, [slow]))
        del slow
    del ours

    def over_budget(section):
        if time.time() - t0 > args.budget_s:
            report.notes.append(f"{section}: skipped, {time.time() - t0:.0f} s spent (--budget-s {args.budget_s:.0f}).")
            report.write()
            return True
        return False

    # ------------------------------------------------------------------ bidirectional
    if over_budget("BidirectionalMamba"):
        print(report.write())
        return 0
    def two_anchor_blocks():
        torch.manual_seed(1)
        if have_anchor:
            f, r = AnchorMamba(d_model, use_fast_path=fast_path).to(device), AnchorMamba(d_model, use_fast_path=fast_path).to(device)
        else:
            f, r = Mamba(d_model, dt_rank=dt_rank).to(device), Mamba(d_model, dt_rank=dt_rank).to(device)
            f.layout = r.layout = "rows"
        return f, r

    fa, ra = two_anchor_blocks()

    def anchor_bidir(x):
        return fa(x) + ra(x.flip(1)).flip(1)

    bi_label = "2 x mamba-ssm Mamba" + (" fast path" if fast_path else "") + " + flips" if have_anchor else \
        "stand-in: 2 x ours (rows) + flips"
    untied = ours_layout(BidirectionalMamba(d_model, dt_rank=dt_rank, variant="caduceus", combine="add",
                                            tie_projections=False).to(device))
    mapping = MAMBA1_MIXER if have_anchor else {k: k for k in fa.state_dict()}
    fwd_map = {k: v2.replace("ssm.", "ssm_fwd.") for k, v2 in mapping.items()}
    rev_map = {k: v2.replace("ssm.", "ssm_rev.").replace("in_proj", "in_proj_rev").replace("out_proj", "out_proj_rev")
               for k, v2 in mapping.items()}
    untied.load_state_dict({**mapped(fa, fwd_map), **mapped(ra, rev_map)})
    b_names = [n for n, _ in untied.named_parameters()]
    fwd_inv = {v2: k for k, v2 in fwd_map.items()}
    rev_inv = {v2: k for k, v2 in rev_map.items()}
    fa_p, ra_p = dict(fa.named_parameters()), dict(ra.named_parameters())
    b_aligned = [fa_p[fwd_inv[n]] if n in fwd_inv else ra_p[rev_inv[n]] for n in b_names]
    for be in our_backends:
        untied.backend = be
        parity(report, f"BidirectionalMamba untied (backend {be})", bi_label, untied, list(untied.parameters()),
               anchor_bidir, b_aligned, b_names, h, g, ctx, tol)
    t_bi = timed(anchor_bidir, [fa, ra])
    torch.manual_seed(0)
    tied = ours_layout(BidirectionalMamba(d_model, dt_rank=dt_rank, variant="caduceus", combine="add").to(device))
    for be in our_backends:
        tied.backend = be
        add_row(f"BidirectionalMamba caduceus add, tied (fused bidirectional scan), backend {be}",
                timed(tied, [tied]), bi_label, t_bi)
        untied.backend = be
        add_row(f"BidirectionalMamba caduceus add, untied (two scans), backend {be}", timed(untied, [untied]),
                bi_label, t_bi)
    del tied, untied, fa, ra

    # ------------------------------------------------------------------ Mamba2
    if over_budget("Mamba2"):
        print(report.write())
        return 0
    torch.manual_seed(0)
    ours2 = ours_layout(Mamba2(d_model, d_state=m2_state, headdim=m2_headdim, chunk_size=m2_chunk).to(device))
    anchor2 = None
    if have_anchor:
        try:
            from mamba_ssm import Mamba2 as AnchorMamba2

            anchor2 = AnchorMamba2(d_model, d_state=m2_state, headdim=m2_headdim, chunk_size=m2_chunk).to(device)
            ours2.load_state_dict(mapped(anchor2, MAMBA2_MIXER))
            label2 = "mamba-ssm Mamba2 (fused path)"
            inv2 = {v2: k for k, v2 in MAMBA2_MIXER.items()}
        except Exception as exc:  # its Triton kernels failed to build or import: say so in the table
            report.notes.append(f"mamba-ssm Mamba2 unavailable: {type(exc).__name__}: {exc}")
            anchor2 = None
    if anchor2 is None:
        anchor2 = Mamba2(d_model, d_state=m2_state, headdim=m2_headdim, chunk_size=m2_chunk).to(device)
        anchor2.load_state_dict(ours2.state_dict())
        anchor2.layout = "rows"
        label2, inv2 = "stand-in: ours, layout='rows'", None
    n2 = [n for n, _ in ours2.named_parameters()]
    a2 = dict(anchor2.named_parameters())
    parity(report, "Mamba2 (backend auto)", label2, ours2, list(ours2.parameters()), anchor2,
           [a2[inv2[n]] if inv2 else a2[n] for n in n2], n2, h, g, ctx, tol)
    add_row("Mamba2, backend auto", timed(ours2, [ours2]), label2, timed(anchor2, [anchor2]))
    report.notes.append(f"Total {time.time() - t0:.0f} s.")
    print(report.write())
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
