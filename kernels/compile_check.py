"""Compile every Triton kernel variant for sm_90 on a machine without a GPU, and report registers/spills.

    python -m mambaverse.kernels.compile_check             (do NOT set TRITON_INTERPRET)
    python -m mambaverse.kernels.compile_check --rows-only  the scan kernels only
    python -m mambaverse.kernels.compile_check --stats      the scan kernels' per-state loop, as the GPU runs it

The interpreter (CI) runs the kernels' Python semantics but not the compiler's rules: a loop-carried
variable that changes shape, or a constexpr assigned twice in a ``static_range`` loop, passes every
interpreted test and fails only when compiled. This tool compiles through Triton's own ptxas for an H100/H200
target with no device, so such errors show up before a GPU run is spent on them. It prints ptxas' register
and stack (spill) figures per variant.

``--stats`` compiles the way Triton's JIT specialises a real call (unit innermost strides become constants,
every other integer and pointer is taken as divisible by 16, as at the benchmark shapes): without that,
Triton cannot vectorise and picks one step per thread per wrap, a different kernel. It then counts the
instructions of the per-state loop body (the largest block that branches to itself) in the PTX: shuffles,
barriers, shared and global memory operations. Counts, not times: they locate costs (a reverse
``tl.associative_scan`` shows up as butterfly shuffles), a GPU run says what they cost.
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile

BF16_PTRS = {"u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddt_ptr", "dz_ptr",
             "x_ptr", "y_ptr", "dy_ptr", "dx_ptr"}
# innermost (step) strides: 1 for contiguous inputs, so Triton's JIT makes them constants
UNIT_STRIDES = {"su_l", "sdt_l", "sB_l", "sC_l", "sz_l", "so_l", "sdo_l", "sdu_l", "sddt_l", "sdz_l"}


def _compile(fn, consts, num_warps, like_gpu=False):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(fn.fn).parameters)
    consts = {k: v for k, v in consts.items() if k in params}  # E.g. a block size one kernel version lacks
    if like_gpu:
        consts.update({p: 1 for p in params if p in UNIT_STRIDES})
    sig = {p: ("constexpr" if p in consts else (("*bf16" if p in BF16_PTRS else "*fp32") if p.endswith("_ptr") else "i32"))
           for p in params}
    attrs = {(params.index(p),): [["tt.divisibility", 16]] for p in params if p not in consts} if like_gpu else {}
    src = ASTSource(fn=fn, signature=sig, constexprs={(params.index(k),): v for k, v in consts.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))


def _ptxas_report(ptx: str) -> str:
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(ptx)
    try:
        res = subprocess.run([ptxas, "-arch=sm_90a", "-v", fh.name, "-o", os.devnull], capture_output=True, text=True)
        m = re.search(r"Used (\d+) registers.*", res.stderr)
        return m.group(0) if m else res.stderr.strip()[-200:]
    finally:
        os.unlink(fh.name)


def loop_stats(ptx: str) -> str:
    """Instruction counts of the largest PTX basic block that branches back to itself (the per-state loop)."""
    blocks, label, lines = [], None, []
    for ln in ptx.splitlines():
        m = re.match(r"^(\$L__BB\d+_\d+):", ln)
        if m:
            blocks.append((label, lines))
            label, lines = m.group(1), []
        else:
            lines.append(ln.strip())
    blocks.append((label, lines))
    loops = [(lab, body) for lab, body in blocks if lab and any(re.search(rf"bra(\.uni)?\s+{re.escape(lab)};", x) for x in body)]
    if not loops:
        return "no loop found"
    _, body = max(loops, key=lambda b: len(b[1]))
    ins = [x for x in body if x and not x.startswith(("//", ".", "{", "}"))]
    ops = [x.split()[1] if x.startswith("@") else x.split()[0] for x in ins]  # the opcode after a predicate
    count = {key: sum(1 for op in ops if op.startswith(key))
             for key in ("shfl.sync.bfly", "shfl.sync.up", "bar.sync", "ld.shared", "st.shared", "ld.global",
                         "st.global", "red.", "atom.", "ex2.")}
    return f"{len(ins)} instructions: " + ", ".join(f"{k.rstrip('.')} {v}" for k, v in count.items() if v)


def _rows_cases(KW, configs, rev_at):
    opts = dict(HAS_D=True, HAS_Z=True, HAS_DB=True, SOFTPLUS=True, BLOCK_N=16)
    fwd = dict(HAS_H0=True, STORE_HT=True, STORE_CK=True, CK_EVERY=1, NDIR=1, MODE=0, ACC_OUT=False)
    bwd = dict(HAS_DHT=True, STORE_DH0=True, NDIR=1, MODE=0, ACC_DU=False, ACC_DDT=False)

    def blocks(bd, bl, w):
        return dict(BLOCK_D=bd, BLOCK_L=bl, E=max(1, bl // (32 * w)))

    def bwd_extra(bl, w):
        return dict(NT=32 * w, STRIPED=bl % (32 * w) == 0, ATOMICS=True)

    cases = []
    for i, (bd, bl, w) in enumerate(dict.fromkeys(configs)):
        for rev in (False, True) if i in rev_at else (False,):
            cases.append((f"rows_fwd rev={rev} {bd},{bl},{w}", KW._rows_fwd_kernel,
                          dict(opts, **fwd, REV=rev, **blocks(bd, bl, w)), w))
            cases.append((f"rows_bwd rev={rev} {bd},{bl},{w}", KW._rows_bwd_kernel,
                          dict(opts, **bwd, REV=rev, **blocks(bd, bl, w), **bwd_extra(bl, w)), w))
    # the fused ops: bidirectional (2 directions, outputs and shared-input gradients summed in-kernel) and
    # the 4-route cross-scan, at the default config (no initial/final state in their contracts)
    (bd, bl, w), (bdb, blb, wb) = KW._CONFIG["fwd"], KW._CONFIG["bwd"]
    nostate_f = dict(HAS_H0=False, STORE_HT=False, STORE_CK=True, CK_EVERY=1)
    nostate_b = dict(HAS_DHT=False, STORE_DH0=False)
    for name, ndir, mode, o in (("bidir", 2, 0, opts), ("cross", 4, 1, dict(opts, HAS_Z=False))):
        cases.append((f"rows_fwd {name} {bd},{bl},{w}", KW._rows_fwd_kernel,
                      dict(o, **nostate_f, NDIR=ndir, MODE=mode, REV=False, ACC_OUT=True, **blocks(bd, bl, w)), w))
        cases.append((f"rows_bwd {name} {bdb},{blb},{wb}", KW._rows_bwd_kernel,
                      dict(o, **nostate_b, NDIR=ndir, MODE=mode, REV=False, ACC_DU=True, ACC_DDT=mode == 0,
                           **blocks(bdb, blb, wb), **bwd_extra(blb, wb)), wb))
    return cases


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: unset TRITON_INTERPRET (the interpreter replaces the compiler)")
        return 2
    from mambaverse.kernels import _conv as KC
    from mambaverse.kernels import _correction as KR
    from mambaverse.kernels import _rows as KW

    flags = set(sys.argv[1:])
    if flags - {"--rows-only", "--stats"}:
        print(f"compile_check: unknown option(s) {sorted(flags - {'--rows-only', '--stats'})}; "
              "expected --rows-only or --stats")
        return 2
    default = [KW._CONFIG["fwd"], KW._CONFIG["bwd"]]
    if "--stats" in flags:
        cases = _rows_cases(KW, default + [(1, 512, 4)], rev_at=(0,))
    else:
        configs = default + [(1, 512, 4), (2, 1024, 4), (4, 512, 4), (1, 2048, 8), (1, 256, 2), (1, 512, 2),
                             (1, 1024, 8)]
        cases = _rows_cases(KW, configs, rev_at=(0,))
    if not flags:
        for layout, cfg in KC._CONFIG.items():  # step-contiguous and channel-last tiles, forward and backward
            for which, kernel in (("fwd", KC._conv_fwd_kernel), ("bwd", KC._conv_bwd_kernel)):
                bd, bl, w = cfg[which]
                conv = dict(K=4, REV=which == "bwd", HAS_BIAS=True, HAS_S0=True, SILU=True, BLOCK_D=bd, BLOCK_L=bl)
                cases.append((f"conv_{which} {layout}", kernel, conv, w))
        (rdf, rlf, rwf), (rdb, rlb, rwb) = KR._CONFIG["fwd"], KR._CONFIG["bwd"]
        corr = dict(HAS_Z=True, HAS_DB=True, SOFTPLUS=True, HAS_P0=True, BLOCK_N=16)
        for rev in (False, True):
            cases.append((f"correction_fwd rev={rev}", KR._corr_fwd_kernel, dict(corr, REV=rev, BLOCK_D=rdf, BLOCK_L=rlf), rwf))
            cases.append((f"correction_bwd rev={rev}", KR._corr_bwd_kernel, dict(corr, REV=rev, BLOCK_D=rdb, BLOCK_L=rlb), rwb))
    failed = 0
    for name, fn, consts, warps in cases:
        try:
            k = _compile(fn, dict(consts), warps, like_gpu="--stats" in flags)
            line = f"{name:28s} ok   {_ptxas_report(k.asm['ptx'])}"
            if "--stats" in flags:
                line += f"\n{'':33s}per-state loop: {loop_stats(k.asm['ptx'])}"
            print(line, flush=True)
        except Exception as exc:  # noqa: BLE001
            failed += 1
            print(f"{name:28s} FAIL {type(exc).__name__}: {str(exc).splitlines()[-1][:200]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
