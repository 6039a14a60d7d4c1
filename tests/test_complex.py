"""Complex inputs (complex64 and complex128) in every entry point, against the peers that
compute them: ``jax.lax.conv_transpose`` (values and gradients, JAX's complex convention),
PyTorch's ``conv_transpose*d``, Flax's and Equinox's ``ConvTranspose``, all in complex128.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import ALGORITHMS

from jax_deconv import ConvTranspose2d, conv2d_transpose, conv_transpose, functional, onnx_conv_transpose
from jax_deconv import lax as dlax


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _complex(rng, shape, dtype=np.complex128):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _lax_reference(x, w, b, strides, pads, dilation=1, group=1):
    """Dragon's NCHW call as ``jax.lax``'s own complex convolution: the transpose of a
    convolution (kernel (C_in, C_out/group, K..) read as OIHW, flipped), cropped by ``pads``."""
    n = x.ndim - 2
    k = w.shape[2:]
    c_in, per_group = w.shape[0], w.shape[1]
    # OIHW of the forward convolution whose transpose this is: (C_out, C_in/group, K..), flipped
    wg = w.reshape(group, c_in // group, per_group, *k)
    rhs = jnp.flip(jnp.swapaxes(wg, 1, 2).reshape(group * per_group, c_in // group, *k), axis=tuple(range(2, 2 + n)))
    padding = [(dilation * (kk - 1) - pads, dilation * (kk - 1) - pads) for kk in k]
    y = jax.lax.conv_general_dilated(x, rhs, (1,) * n, padding, lhs_dilation=(strides,) * n,
                                     rhs_dilation=(dilation,) * n, feature_group_count=group)
    return y if b is None else y + b.reshape(1, -1, *(1,) * n)


CASES = {  # x shape (NCHW), weight shape, strides, pads, dilation, group
    "2-D k3 s2 p1": ((2, 4, 5, 6), (4, 3, 3, 3), 2, 1, 1, 1),
    "1-D k4 s2 p1 d2 g2": ((1, 4, 7), (4, 2, 4), 2, 1, 2, 2),
    "3-D k2 s2": ((1, 2, 3, 3, 2), (2, 3, 2, 2, 2), 2, 0, 1, 1),
}


@pytest.mark.parametrize("algorithm", ["auto", *ALGORITHMS])
@pytest.mark.parametrize("name", CASES)
def test_values_and_gradients_match_lax(name, algorithm):
    """y and the gradients of a real loss in x, w and b (JAX's convention: the conjugate of the
    derivative), complex128, every algorithm, against lax's complex convolution."""
    x_shape, w_shape, s, p, d, g = CASES[name]
    rng = np.random.default_rng(3)
    x, w, b = _complex(rng, x_shape), _complex(rng, w_shape), _complex(rng, (w_shape[1] * g,))
    kwargs = dict(kernel_shape=w_shape[2:], strides=s, pads=p, dilations=d, group=g)

    def ours(x, w, b):
        return conv_transpose([x, w, b], algorithm=algorithm, **kwargs)

    def theirs(x, w, b):
        return _lax_reference(x, w, b, s, p, d, g)

    y = ours(x, w, b)
    assert y.dtype == jnp.complex128
    np.testing.assert_allclose(y, theirs(x, w, b), rtol=1e-12, atol=1e-12)

    def loss(f):
        return lambda x, w, b: jnp.sum(jnp.abs(f(x, w, b)) ** 2 + jnp.real(f(x, w, b) * (0.5 - 2j)))

    got = jax.jit(jax.grad(loss(ours), (0, 1, 2)))(x, w, b)
    want = jax.grad(loss(theirs), (0, 1, 2))(x, w, b)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11)
    # forward mode and a complex cotangent too
    t = (_complex(rng, x_shape), _complex(rng, w_shape), _complex(rng, b.shape))
    np.testing.assert_allclose(jax.jvp(ours, (x, w, b), t)[1], jax.jvp(theirs, (x, w, b), t)[1], rtol=1e-12,
                               atol=1e-12)
    ct = _complex(rng, y.shape)
    for a, e in zip(jax.vjp(ours, x, w, b)[1](ct), jax.vjp(theirs, x, w, b)[1](ct)):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


def test_complex64_and_mixed_real_inputs():
    """complex64 stays complex64; a real weight or bias is promoted as lax promotes it."""
    rng = np.random.default_rng(4)
    x = _complex(rng, (1, 3, 4, 4), np.complex64)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y = conv2d_transpose([x, w, np.ones(2, np.float32)], strides=2)
    assert y.dtype == jnp.complex64
    want = _lax_reference(x.astype(np.complex128), w.astype(np.complex128), np.ones(2), 2, 0)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert conv2d_transpose([x, w], preferred_element_type=jnp.complex128).dtype == jnp.complex128
    with pytest.raises(TypeError, match=r"conv2d_transpose: `preferred_element_type` must be None or a complex "
                                        r"dtype at least as wide as the inputs' complex64; got <class"):
        conv2d_transpose([x, w], preferred_element_type=jnp.float32)


def test_lax_dropin_equals_lax_conv_transpose():
    rng = np.random.default_rng(5)
    x, k = _complex(rng, (2, 5, 6, 3)), _complex(rng, (3, 3, 3, 4))  # NHWC, HWIO
    dn = ("NHWC", "HWIO", "NHWC")
    for padding in ("SAME", "VALID", [(1, 2), (0, 1)]):
        want = jax.lax.conv_transpose(x, k, (2, 2), padding, dimension_numbers=dn)
        got = dlax.conv_transpose(x, k, (2, 2), padding, dimension_numbers=dn)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

        def loss(x, k, op, padding=padding):
            return jnp.sum(jnp.abs(op(x, k, (2, 2), padding, dimension_numbers=dn)) ** 2)

        ours = jax.grad(loss, (0, 1))(x, k, dlax.conv_transpose)
        theirs = jax.grad(loss, (0, 1))(x, k, jax.lax.conv_transpose)
        for a, e in zip(ours, theirs):
            np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11)


def test_layer_and_onnx_node_compute_complex():
    rng = np.random.default_rng(6)
    x, w, b = _complex(rng, (1, 4, 3, 3)), _complex(rng, (4, 2, 3, 3)), _complex(rng, (2,))
    want = _lax_reference(x, w, b, 2, 1)
    layer = ConvTranspose2d(weight=jnp.asarray(w), bias=jnp.asarray(b), kernel_shape=3, strides=2, pads=1)
    np.testing.assert_allclose(layer(x), want, rtol=1e-12, atol=1e-12)
    node = onnx_conv_transpose([x, w, b], strides=[2, 2], pads=[1, 1, 1, 1])
    np.testing.assert_allclose(node, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_functional_equals_pytorch():
    import torch

    rng = np.random.default_rng(7)
    x, w, b = _complex(rng, (2, 4, 5, 5)), _complex(rng, (4, 3, 3, 3)), _complex(rng, (6,))
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    want = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                                **kwargs).numpy()
    np.testing.assert_allclose(functional.conv_transpose2d(x, w, b, **kwargs), want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("flax") is None, reason="Flax is not installed")
def test_flax_layer_equals_flax():
    from flax import linen as nn

    from jax_deconv.flax import linen as dnn

    rng = np.random.default_rng(8)
    x = _complex(rng, (2, 5, 5, 3))
    attrs = dict(features=4, kernel_size=(3, 3), strides=(2, 2), padding="SAME", param_dtype=jnp.complex128)
    variables = nn.ConvTranspose(**attrs).init(jax.random.key(0), x)
    want = nn.ConvTranspose(**attrs).apply(variables, x)
    np.testing.assert_allclose(dnn.ConvTranspose(**attrs).apply(variables, x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("equinox") is None, reason="Equinox is not installed")
def test_equinox_layer_equals_equinox():
    import equinox as eqx

    from jax_deconv import equinox as deqx

    rng = np.random.default_rng(9)
    x = _complex(rng, (3, 6, 6))
    theirs = eqx.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, key=jax.random.key(1),
                                    dtype=jnp.complex128)
    ours = deqx.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, key=jax.random.key(1),
                                dtype=jnp.complex128)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
