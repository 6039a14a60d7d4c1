"""Rounding: long sums, bfloat16 results rounded once, the bias gradient's sum, the sign of zero.

Oracles: exact sums computed in float64 (or by hand) from the values actually stored, the
NumPy reference, and the rules written in docs/limits.md. Every algorithm is run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference
from support import ALGORITHMS, NATIVE

from jax_deconv import conv1d_transpose, conv2d_transpose, conv3d_transpose

# ---------------------------------------------------------------- long sums in the weight gradient


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_weight_gradient_of_2_to_the_20_constant_terms(algorithm):
    """A sum of 2^20 equal terms: one running float32 sum is 1.4e-2 off (the native kernels did
    that); the sums must stay within 1e-5 of the exact value. 'conv' is XLA's own convolution,
    whose sums are XLA's (1.9e-5 here on CPU): within 1e-4 (docs/limits.md)."""
    n = 2**20
    x = jnp.ones((1, 1, n), jnp.float32)
    dy = jnp.full((1, 1, n), 0.01, jnp.float32)
    _, vjp = jax.vjp(lambda w: conv1d_transpose([x, w], kernel_shape=1, algorithm=algorithm), jnp.ones((1, 1, 1)))
    (dw,) = vjp(dy)
    exact = n * float(np.float32(0.01))
    bound = 1e-4 if algorithm == "conv" else 1e-5
    assert abs(float(dw[0, 0, 0]) - exact) <= bound * exact, (float(dw[0, 0, 0]), exact)


@pytest.mark.skipif(not NATIVE, reason="the native kernels are not built here")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_native_weight_gradient_of_a_3d_batch_of_ones(dtype):
    """8 x 64^3 positions summed into each weight element (a 1x1x1 kernel, 1 -> 2 channels; the
    sums then run on both threads): float32 within 1e-5 (one running sum: 1.9e-2), bfloat16
    (float32 sums, one rounding) within a bfloat16 half-ulp."""
    x = jnp.ones((8, 64, 64, 64, 1), dtype)
    dy = jnp.full((8, 64, 64, 64, 2), 0.01, dtype)
    def f(w):
        return conv3d_transpose([x, w], kernel_shape=1, data_format="NHWC", algorithm="native")

    (dw,) = jax.vjp(f, jnp.ones((1, 1, 1, 1, 2), dtype))[1](dy)
    exact = 8 * 64**3 * float(np.asarray(jnp.asarray(0.01, dtype), np.float64))
    got = np.asarray(dw, np.float64)
    bound = 1e-5 if dtype == "float32" else 2.0**-8
    assert np.all(np.abs(got - exact) <= bound * exact), (got.min(), got.max(), exact)


# ---------------------------------------------------------------- bfloat16: one rounding


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bfloat16_with_a_bias_is_rounded_once(algorithm):
    """100 * 1 + 0.4375 * 1 - 100: rounding the product to bfloat16 first (100.5 -> 100.5; 100.4375
    is not a bfloat16) and adding the bias after gives 0.5; rounded once, 0.4375."""
    x = jnp.ones((1, 2, 1), jnp.bfloat16)
    w = jnp.array([100.0, 0.4375], jnp.bfloat16).reshape(2, 1, 1)
    b = jnp.array([-100.0], jnp.bfloat16)
    y = conv1d_transpose([x, w, b], kernel_shape=1, algorithm=algorithm)
    assert y.dtype == jnp.bfloat16
    assert float(y[0, 0, 0]) == 0.4375


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bfloat16_bias_gradient_is_summed_in_float32(algorithm):
    """100,000 cotangents of bfloat16(0.01): summed in bfloat16 they stall at 984; in float32
    and rounded once, the bfloat16 nearest the exact 1000.9765625, i.e. 1000."""
    x = jnp.zeros((1, 1, 100_000), jnp.bfloat16)
    w = jnp.ones((1, 1, 1), jnp.bfloat16)
    ct = jnp.full((1, 1, 100_000), 0.01, jnp.bfloat16)
    def f(b):
        return conv1d_transpose([x, w, b], kernel_shape=1, algorithm=algorithm)

    (db,) = jax.vjp(f, jnp.zeros((1,), jnp.bfloat16))[1](ct)
    exact = 100_000 * float(np.asarray(ct[0, 0, 0], np.float64))
    assert float(db[0]) == float(jnp.asarray(exact, jnp.bfloat16)) == 1000.0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bfloat16_with_a_bias_matches_the_reference_rounded_once(algorithm):
    """Random bfloat16 values: y is the float64 reference (product plus bias) rounded once to
    bfloat16, within one bfloat16 ulp (the float32 accumulation's own error is far below)."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 6, 5, 5)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(6, 4, 3, 3)), jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=(4,)) * 30, jnp.bfloat16)
    kwargs = dict(kernel_shape=(3, 3), strides=2, pads=1)
    y = np.asarray(jax.jit(lambda x, w, b: conv2d_transpose([x, w, b], algorithm=algorithm, **kwargs))(x, w, b),
                   np.float64)
    want = reference(np.asarray(x, np.float64), np.asarray(w, np.float64), np.asarray(b, np.float64), **kwargs)
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(want), 1e-30))) - 7)
    assert np.all(np.abs(y - want) <= ulp), np.max(np.abs(y - want) / ulp)



# ---------------------------------------------------------------- the sign of zero


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_zero_result_is_positive_zero_in_every_map(algorithm, dtype):
    """docs/limits.md: every sum starts from +0.0, so a zero result is +0.0 (as PyTorch gives it)
    in y, dx and dw, also where every product is -0.0 (XLA's lowerings gave -0.0 there) and with
    a bias of -0.0."""
    x = jnp.array([[[1.0, -0.0]]], dtype)                 # (1, 1, 2)
    w = jnp.array([[[-0.0, 2.0]]], dtype)                 # (1, 1, 2): y = [-0, 2 - 0, -0] products
    b = jnp.array([-0.0], dtype)
    def f(x, w):
        return conv1d_transpose([x, w, b], kernel_shape=2, strides=2, algorithm=algorithm)

    y, vjp = jax.vjp(f, x, w)
    dx, dw = vjp(jnp.array([[[-0.0, 0.0, 1.0, -0.0]]], dtype))
    for name, got, want in (("y", y, [0, 2, 0, 0]), ("dx", dx, [0, 0]), ("dw", dw, [0, 0])):
        got = np.asarray(got, np.float32).ravel()
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert not np.signbit(got[got == 0]).any(), (name, got)
