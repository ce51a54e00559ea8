"""Our Triton conv kernel behind the causal_conv1d contract."""
from __future__ import annotations


def causal_conv1d_triton(x, weight, bias=None, activation=None, reverse=False, initial_state=None,
                         return_final_state=False):
    """Same contract as ``mambaverse.ops.causal_conv1d``; reverse by index arithmetic, no flips."""
    from ...kernels import causal_conv1d_triton as kernel  # only the ops layer imports kernels

    return kernel(x, weight, bias, activation, reverse, initial_state, return_final_state)
