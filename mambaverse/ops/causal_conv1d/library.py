"""The causal-conv1d package's CUDA kernel (Dao-AILab/causal-conv1d), for the plain causal case it covers."""
from __future__ import annotations


def causal_conv1d_library(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                          return_final_state=False):
    """Widths 2..4, no reverse, no state in or out: the capability table sends it nothing else."""
    from causal_conv1d import causal_conv1d_fn

    return causal_conv1d_fn(x, weight, bias, activation=activation)
