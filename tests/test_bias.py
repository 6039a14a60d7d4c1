"""A layer's bias and its gradient (``jax_deconv._native.bias``): the native ``bias_sum`` map
on CPU, XLA's reduction elsewhere, under every transform; and the layers that use it.

Oracle: the cotangent summed in float64 by NumPy (the bias gradient of ``y + b`` is the
cotangent summed over every axis but the channel's), Flax's own layers for the drop-ins.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import NATIVE

from jax_deconv._native.bias import add_bias

needs_kernels = pytest.mark.skipif(not NATIVE, reason="the native kernels are not built here")
CASES = [  # (shape, channel axis): channels-last and -first, many pieces, channel counts that fill
    ((2, 9, 10, 11, 16), -1),  # lanes evenly and not (3, 48), one channel, unit sizes
    ((2, 5, 3000), 1),
    ((3, 7, 7, 48), 3),
    ((4, 1000, 3), -1),
    ((1, 33000, 1), 2),
    ((2, 3, 5, 7), 1),
    ((1, 1), 1),
]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _truth(ct: np.ndarray, axis: int) -> np.ndarray:
    axis %= ct.ndim
    return np.sum(np.asarray(ct, np.float64), axis=tuple(a for a in range(ct.ndim) if a != axis))


def _bias_vjp(y, b, ct, axis, dtype=None):
    return jax.jit(lambda y, b, ct: jax.vjp(lambda b: add_bias(y, b, axis, dtype), b)[1](ct)[0])(y, b, ct)


def _ulp(value: np.ndarray, dtype) -> np.ndarray:
    """The spacing of ``dtype``'s values at ``value``."""
    mantissa = {"bfloat16": 8, "float16": 11, "float32": 24, "float64": 53}[np.dtype(dtype).name]
    return np.exp2(np.floor(np.log2(np.maximum(np.abs(value), 1e-30))) - (mantissa - 1))


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("dtype, bias_dtype", [("float32", "float32"), ("bfloat16", "bfloat16"),
                                               ("bfloat16", "float32"), ("float16", "float16")])
def test_bias_gradient_is_the_cotangent_summed_and_rounded_once(shape, axis, dtype, bias_dtype):
    rng = np.random.default_rng(len(shape) + shape[-1])
    y = jnp.asarray(rng.standard_normal(shape), dtype)
    ct = jnp.asarray(rng.standard_normal(shape) + 0.25, dtype)  # (a sum that does not cancel)
    b = jnp.asarray(rng.standard_normal(shape[axis]), bias_dtype)
    forward = add_bias(y, b, axis)
    expect_shape = [1] * len(shape)
    expect_shape[axis] = shape[axis]
    np.testing.assert_array_equal(np.asarray(forward, np.float64),
                                  np.asarray(y + b.astype(dtype).reshape(expect_shape), np.float64))
    got = _bias_vjp(y, b, ct, axis)
    assert got.dtype == b.dtype and got.shape == b.shape
    truth = _truth(np.asarray(ct, np.float64), axis)
    # summed in float32 at least, rounded once to the bias's dtype: within half a unit in its
    # last place, plus float32's error on the sum of the magnitudes
    slack = 0.5 * _ulp(truth, bias_dtype) + 1e-6 * _truth(np.abs(np.asarray(ct, np.float64)), axis)
    assert np.all(np.abs(np.asarray(got, np.float64) - truth) <= slack), np.max(np.abs(got - truth) / slack)


@pytest.mark.parametrize("shape, axis", CASES[:3])
def test_bias_gradient_in_float64(x64, shape, axis):
    rng = np.random.default_rng(1)
    y, ct = (jnp.asarray(rng.standard_normal(shape)) for _ in range(2))
    b = jnp.asarray(rng.standard_normal(shape[axis]))
    got = _bias_vjp(y, b, ct, axis)
    np.testing.assert_allclose(np.asarray(got), _truth(np.asarray(ct), axis), rtol=1e-13, atol=1e-12)


@needs_kernels
def test_cpu_gradient_runs_the_kernel_and_export_does_not():
    y, ct = jnp.ones((2, 4, 4, 8), jnp.bfloat16), jnp.ones((2, 4, 4, 8), jnp.bfloat16)
    b = jnp.zeros((8,), jnp.bfloat16)

    def f(y, b, ct):
        return jax.vjp(lambda b: add_bias(y, b, -1), b)[1](ct)[0]

    assert "jax_deconv_bias_sum" in jax.jit(f).lower(y, b, ct).as_text()
    exported = jax.export.export(jax.jit(f))(y, b, ct)
    assert "custom_call" not in exported.mlir_module()
    np.testing.assert_array_equal(np.asarray(exported.call(y, b, ct), np.float32), np.full(8, 32.0, np.float32))


def test_transforms_of_the_bias():
    rng = np.random.default_rng(2)
    y = jnp.asarray(rng.standard_normal((3, 2, 5, 4)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(4), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 2, 5, 4)), jnp.float32)

    def loss(b, y):
        return jnp.sum(jnp.tanh(add_bias(y, b, -1)) * w)

    def want(b, y):
        return jnp.sum(jnp.tanh(y + b) * w)

    for transform in (jax.grad, jax.jacfwd, jax.jacrev, jax.hessian):
        np.testing.assert_allclose(jax.jit(transform(loss))(b, y), transform(want)(b, y), rtol=2e-5, atol=1e-5)
    # per-example gradients: vmap over y's batch, and over b
    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0))(b, y[:, None])
    np.testing.assert_allclose(per_example, jax.vmap(jax.grad(want), in_axes=(None, 0))(b, y[:, None]), rtol=2e-5,
                               atol=1e-6)
    bs = jnp.stack([b, 2 * b])
    np.testing.assert_allclose(jax.vmap(jax.grad(loss), in_axes=(0, None))(bs, y),
                               jax.vmap(jax.grad(want), in_axes=(0, None))(bs, y), rtol=2e-5, atol=1e-6)
    tangent = jax.jvp(lambda b: add_bias(y, b, -1), (b,), (jnp.ones(4),))[1]
    np.testing.assert_array_equal(tangent, jnp.ones_like(y))


needs_flax = pytest.mark.skipif(importlib.util.find_spec("flax") is None, reason="flax is not installed")


@needs_flax
@pytest.mark.parametrize("shape", [(1, 12, 12, 12, 4), (2, 3, 6, 6, 4)])
def test_flax_conv_same_variables_and_output_and_a_bfloat16_bias_gradient_summed_in_float32(shape):
    import flax.linen as nn

    from jax_deconv.flax import linen as dnn

    x = jax.random.normal(jax.random.key(1), shape)
    kernel = (3,) * (len(shape) - 2)
    ours, theirs = dnn.Conv(8, kernel, dtype=jnp.bfloat16), nn.Conv(8, kernel, dtype=jnp.bfloat16)
    variables = ours.init(jax.random.key(0), x)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(theirs.init(jax.random.key(0), x))):
        np.testing.assert_array_equal(got, want)
    y = ours.apply(variables, x)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(theirs.apply(variables, x), np.float32))
    grads = jax.grad(lambda v: jnp.sum(ours.apply(v, x).astype(jnp.float32) ** 2))(variables)["params"]
    # the loss's cotangent is 2y (in bfloat16); its sum over positions, rounded once to bfloat16
    # and widened to the float32 parameter
    truth = _truth(2 * np.asarray(y, np.float64), -1)
    slack = 0.5 * _ulp(truth, jnp.bfloat16) + 1e-6 * _truth(np.abs(2 * np.asarray(y, np.float64)), -1)
    assert np.all(np.abs(np.asarray(grads["bias"], np.float64) - truth) <= slack)
