"""Compile every Triton kernel variant for sm_90 on a machine without a GPU, and report registers/spills.

    python -m mambaverse.kernels.compile_check        (do NOT set TRITON_INTERPRET)

The interpreter (CI) runs the kernels' Python semantics but not the compiler's rules: a loop-carried
variable that changes shape, for example, passes every interpreted test and fails only when compiled.
This tool compiles through Triton's own ptxas for an H100 target with no device, so such errors show up
before a GPU run is spent on them. It prints ptxas' register and stack (spill) figures per variant.
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile


def _compile(fn, consts, num_warps, bf16_ptrs):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(fn.fn).parameters)
    sig = {p: ("constexpr" if p in consts else (("*bf16" if p in bf16_ptrs else "*fp32") if p.endswith("_ptr") else "i32"))
           for p in params}
    src = ASTSource(fn=fn, signature=sig, constexprs={(params.index(k),): v for k, v in consts.items()})
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


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: unset TRITON_INTERPRET (the interpreter replaces the compiler)")
        return 2
    from mambaverse.kernels import _conv as KC
    from mambaverse.kernels import _correction as KR
    from mambaverse.kernels import _rows as KW

    bf = {"u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddt_ptr", "dz_ptr",
          "x_ptr", "y_ptr", "dy_ptr", "dx_ptr"}
    opts = dict(HAS_D=True, HAS_Z=True, HAS_DB=True, SOFTPLUS=True, BLOCK_N=16)
    fwd = dict(HAS_H0=True, STORE_HT=True, STORE_CK=True, CK_EVERY=1)
    bwd = dict(HAS_DHT=True, STORE_DH0=True)
    cases = []
    configs = [KW._CONFIG["fwd"], KW._CONFIG["bwd"]] + [(1, 512, 4), (2, 1024, 4), (4, 512, 4), (1, 2048, 8)]
    rows_only = len(sys.argv) > 1 and sys.argv[1] == "--rows-only"
    if rows_only:
        cases = []
    plain = dict(NDIR=1, MODE=0, ACC_OUT=False)
    plain_b = dict(NDIR=1, MODE=0, ACC_DU=False, ACC_DDT=False)
    for i, (bd, bl, w) in enumerate(dict.fromkeys(configs)):
        for rev in (False, True) if i == 0 else (False,):
            cases.append((f"rows_fwd rev={rev} {bd},{bl},{w}", KW._rows_fwd_kernel,
                          dict(opts, **fwd, **plain, REV=rev, BLOCK_D=bd, BLOCK_L=bl), w))
            cases.append((f"rows_bwd rev={rev} {bd},{bl},{w}", KW._rows_bwd_kernel,
                          dict(opts, **bwd, **plain_b, REV=rev, BLOCK_D=bd, BLOCK_L=bl, NT=32 * w,
                               STRIPED=bl % (32 * w) == 0, ATOMICS=True), w))
    # the fused ops: bidirectional (2 directions, outputs and shared-input gradients summed in-kernel) and
    # the 4-route cross-scan, at the default config (no initial/final state in their contracts)
    (bd, bl, w), (bdb, blb, wb) = KW._CONFIG["fwd"], KW._CONFIG["bwd"]
    nostate_f = dict(HAS_H0=False, STORE_HT=False, STORE_CK=True, CK_EVERY=1)
    nostate_b = dict(HAS_DHT=False, STORE_DH0=False)
    for name, ndir, mode, o in (("bidir", 2, 0, opts), ("cross", 4, 1, dict(opts, HAS_Z=False))):
        cases.append((f"rows_fwd {name} {bd},{bl},{w}", KW._rows_fwd_kernel,
                      dict(o, **nostate_f, NDIR=ndir, MODE=mode, REV=False, ACC_OUT=True, BLOCK_D=bd, BLOCK_L=bl), w))
        cases.append((f"rows_bwd {name} {bdb},{blb},{wb}", KW._rows_bwd_kernel,
                      dict(o, **nostate_b, NDIR=ndir, MODE=mode, REV=False, ACC_DU=True, ACC_DDT=mode == 0,
                           BLOCK_D=bdb, BLOCK_L=blb, NT=32 * wb, STRIPED=blb % (32 * wb) == 0, ATOMICS=True), wb))
    rows_cases = list(cases)
    if not rows_only:
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
    if rows_only:
        cases = rows_cases
    failed = 0
    for name, fn, consts, warps in cases:
        try:
            k = _compile(fn, dict(consts), warps, bf)
            print(f"{name:28s} ok   {_ptxas_report(k.asm['ptx'])}")
        except Exception as exc:  # noqa: BLE001
            failed += 1
            print(f"{name:28s} FAIL {type(exc).__name__}: {str(exc).splitlines()[-1][:200]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
