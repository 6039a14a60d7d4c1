"""No valid configuration may abort the process: a randomised sweep in a subprocess.

The sweep (``sweep.py``) favours the shapes that abort XLA's algebraic simplifier under the
plain lhs-dilated lowering: kernels larger than the input, dilations, large crops.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import ALGORITHMS

SWEEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweep.py")
COUNT = 24


def run_sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SWEEP, *args], capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sweep_never_aborts_and_matches_reference(algorithm):
    out = run_sweep(str(11 + ALGORITHMS.index(algorithm)), str(COUNT), algorithm)
    tail = "\n".join(out.stdout.splitlines()[-3:])
    assert out.returncode == 0, f"sweep died with {out.returncode} after:\n{tail}\n{out.stderr[-2000:]}"
    assert out.stdout.splitlines()[-1] == f"SWEEP {COUNT} 0", tail


def test_issue_minimal_abort_case_runs():
    """The weight gradient that aborts the plain lowering (issue 2), through our op."""
    code = """
import jax, jax.numpy as jnp
from jax_deconv import conv3d_transpose
x, w = jnp.ones((2, 3, 2, 3, 1)), jnp.ones((3, 2, 3, 2, 3))
for algorithm in ("conv", "gemm"):
    f = lambda x, w: conv3d_transpose([x, w], kernel_shape=(3, 2, 3), strides=2, dilations=(2, 1, 1),
                                      pads=(0, 1, 0, 0, 1, 0), algorithm=algorithm).sum()
    print(jax.grad(f, argnums=(0, 1))(x, w)[1].shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(3,", "2,", "3,", "2,", "3)"] * 2
