"""Every case computed by the real Dragon 0.3.0: forward, and dx, dw, db of the VJP."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from support import GOLDEN_FORWARD_TOL, GOLDEN_GRADIENT_TOL, NATIVE, VARIANTS, load_golden, variant_kwargs

from jax_deconv import choose_algorithm, conv_transpose, conv_transpose_plan

CASES = load_golden("dragon_small") + load_golden("dragon_large")


def test_all_cases_present():
    assert len(CASES) == 540


# What 'auto' runs on CPU ('native' where the kernels are built; else 'gemm', or 'phases' where
# the phase form would multiply mostly zeros) runs on every case; 'gemm', 'phases' and 'conv'
# (the phase form through XLA's convolution, what 'auto' runs on GPU) on every 12th case
# besides; 'taps' (one product per kernel tap, compiles about 2x slower) and 'gemm' in steps (a
# loop, rematerialised, about as slow) on every 36th (different ones); 'native' on every 6th
# (where 'auto' is not 'native'). Each runs on every case of the random and transform suites
# against the reference. A case costs about 0.15-0.7 s, nearly all of it compiling: these
# samples were 125 of the suite's ~980 s of tests at every 6th and 18th (2 cores, 2026-12-08).
SAMPLED = {"conv": (12, 1), "gemm": (12, 2), "phases": (12, 5), "taps": (36, 0), "gemm-steps": (36, 9),
           "native": (6, 3)}


def _auto_on_cpu(case) -> str:
    _, args, inputs, *_ = case
    return choose_algorithm(conv_transpose_plan(inputs[0].shape, inputs[1].shape, **args), "float32", "cpu")


AUTO = [_auto_on_cpu(case) for case in CASES]
RUNS = [(case, variant) for i, case in enumerate(CASES) for variant in VARIANTS
        if variant == AUTO[i] or i % SAMPLED[variant][0] == SAMPLED[variant][1]]


def test_auto_runs_native_where_built_on_cpu():
    assert set(AUTO) == ({"native", "gemm"} if NATIVE else {"gemm", "phases"})
    if NATIVE:  # the XLA lowering only where 'gemm' runs NCHW channels-first
        assert AUTO.count("native") > len(AUTO) // 2


@pytest.mark.parametrize("case,variant", RUNS, ids=[f"{c[0]}-{a}" for c, a in RUNS])
def test_golden(case, variant):
    _, args, inputs, y_want, gy, grads_want = case
    run = variant_kwargs(variant, inputs[0].shape, inputs[1].shape, args)

    def forward_and_vjp(gy, *inputs):
        y, vjp = jax.vjp(lambda *a: conv_transpose(list(a), **args, **run), *inputs)
        return y, vjp(gy)

    compiled = jax.jit(forward_and_vjp).lower(gy, *inputs).compile()  # LLVM level 0: see conftest.py
    y, grads = compiled(gy, *inputs)
    assert y.shape == y_want.shape
    np.testing.assert_allclose(y, y_want, rtol=GOLDEN_FORWARD_TOL, atol=GOLDEN_FORWARD_TOL)
    assert len(grads) == len(grads_want)
    for got, want in zip(grads, grads_want):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=GOLDEN_GRADIENT_TOL, atol=GOLDEN_GRADIENT_TOL)
