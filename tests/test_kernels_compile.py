"""The Triton kernels compile for an H100/H200 (sm_90) on this CPU-only machine.

The rest of the suite runs the kernels in Triton's interpreter, which runs their Python semantics but not
the compiler's rules: a constexpr assigned twice in a ``static_range`` loop, or a loop-carried value that
changes shape, passes every interpreted test and fails only on the GPU. ``compile_check`` compiles every
kernel variant with Triton's own compiler and ptxas for sm_90, with no device (about a minute on two cores).
"""
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton build carries no ptxas for NVIDIA targets")
def test_every_kernel_variant_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    res = subprocess.run([sys.executable, "-m", "mambaverse.kernels.compile_check"], env=env,
                         capture_output=True, text=True, timeout=900)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(lines) >= 20 and all(" ok " in ln for ln in lines), res.stdout


def test_compile_check_refuses_unknown_options():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "mambaverse.kernels.compile_check", "--fast"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown option" in res.stdout and "--fast" in res.stdout
