"""Every case computed by the real Dragon 0.3.0: forward, and dx, dw, db of the VJP."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from support import ALGORITHMS, GOLDEN_FORWARD_TOL, GOLDEN_GRADIENT_TOL, load_golden

from jax_deconv import conv_transpose

CASES = load_golden("dragon_small") + load_golden("dragon_large")
# 1,080 programs are compiled here, and LLVM's optimisation of the CPU code is most of the time
# each takes. The HLO (what the lowering computes) is the same at every LLVM level, so this suite
# compiles at level 0 (about 40 % less time); the reference, transform and peer suites compile
# with the defaults users get.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def test_all_cases_present():
    assert len(CASES) == 540


# 'taps' (one product per kernel tap) compiles about 2x slower than the phase lowerings;
# it runs on every 6th case here and on every case of the random sweep against the reference.
RUNS = [(case, algorithm) for i, case in enumerate(CASES) for algorithm in ALGORITHMS
        if algorithm != "taps" or i % 6 == 0]


@pytest.mark.parametrize("case,algorithm", RUNS, ids=[f"{c[0]}-{a}" for c, a in RUNS])
def test_golden(case, algorithm):
    _, args, inputs, y_want, gy, grads_want = case

    def forward_and_vjp(gy, *inputs):
        y, vjp = jax.vjp(lambda *a: conv_transpose(list(a), **args, algorithm=algorithm), *inputs)
        return y, vjp(gy)

    compiled = jax.jit(forward_and_vjp).lower(gy, *inputs).compile(FAST_COMPILE)
    y, grads = compiled(gy, *inputs)
    assert y.shape == y_want.shape
    np.testing.assert_allclose(y, y_want, rtol=GOLDEN_FORWARD_TOL, atol=GOLDEN_FORWARD_TOL)
    assert len(grads) == len(grads_want)
    for got, want in zip(grads, grads_want):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=GOLDEN_GRADIENT_TOL, atol=GOLDEN_GRADIENT_TOL)
