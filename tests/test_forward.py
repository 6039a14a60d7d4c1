"""Randomised comparisons with the direct-definition NumPy reference, across every argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference
from support import ALGORITHMS, VARIANTS, assert_close, random_config, variant_kwargs

from jax_deconv import conv1d_transpose, conv2d_transpose, conv3d_transpose, conv_transpose

FIXED = {1: conv1d_transpose, 2: conv2d_transpose, 3: conv3d_transpose}


def shapes(n, layout, batch, c_in, size, kernel, cg_out):
    if layout == "NCHW":
        return (batch, c_in, *size), (c_in, cg_out, *kernel)
    return (batch, *size, c_in), (c_in, *kernel, cg_out)


def random_case(seed: int):
    """A random configuration over every argument (explicit pads for odd seeds, automatic for even)."""
    rng = np.random.default_rng(seed)
    args, x_shape, w_shape, c_out = random_config(
        rng, n=1 + seed % 3, layout=("NCHW", "NHWC")[(seed // 3) % 2], explicit=bool(seed % 2), max_size=6,
        groups=(1, 2, 4),
    )
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    return args, x, w, b


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", range(16))
def test_random_against_reference(seed, variant):
    args, x, w, b = random_case(seed)
    fn = FIXED[x.ndim - 2]
    run = variant_kwargs(variant, x.shape, w.shape, args)
    assert_close(fn([x, w, b], **args, **run), reference(x, w, b, **args))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_dtypes(dtype, layout, algorithm):
    rng = np.random.default_rng(7)
    x_shape, w_shape = shapes(3, layout, 2, 4, (3, 4, 2), (3, 2, 4), 3)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    w = jnp.asarray(rng.standard_normal(w_shape), dtype)
    b = jnp.asarray(rng.standard_normal(6), dtype)
    args = dict(kernel_shape=(3, 2, 4), strides=(2, 1, 3), pads=(1, 0, 2, 0, 1, 1), group=2, data_format=layout)
    y = conv3d_transpose([x, w, b], **args, algorithm=algorithm)
    assert y.dtype == dtype
    # the reference runs on the same rounded inputs, in float64
    assert_close(y, reference(np.asarray(x, np.float64), np.asarray(w, np.float64), np.asarray(b, np.float64),
                              **args), dtype)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float64(algorithm):
    args, x, w, b = random_case(5)
    with jax.enable_x64(True):
        y = conv_transpose([x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)], **args,
                           algorithm=algorithm)
        assert y.dtype == jnp.float64
        assert_close(y, reference(x, w, b, **args), jnp.float64)


def test_mixed_dtypes_follow_jax_promotion():
    x = jnp.ones((1, 2, 3), jnp.bfloat16)
    w = jnp.ones((2, 1, 2), jnp.float32)
    y = conv1d_transpose([x, w, jnp.zeros(1, jnp.float16)], kernel_shape=2)
    assert y.dtype == jnp.promote_types(jnp.bfloat16, jnp.float32)
    assert_close(y, reference(np.ones((1, 2, 3)), np.ones((2, 1, 2)), kernel_shape=2))


def test_preferred_element_type_and_precision():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((1, 2, 5, 5)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((2, 3, 3, 3)), jnp.bfloat16)
    for algorithm in ALGORITHMS:
        y = conv2d_transpose([x, w], strides=2, preferred_element_type=jnp.float32,
                             precision=jax.lax.Precision.HIGHEST, algorithm=algorithm)
        assert y.dtype == jnp.float32
        assert_close(y, reference(np.asarray(x, np.float64), np.asarray(w, np.float64), kernel_shape=3, strides=2),
                     jnp.bfloat16)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_kernel1_stride1_crop_gives_the_definition(layout, algorithm):
    """Dragon's CPU kernel is wrong here (docs/semantics.md bug 1); the definition is the answer."""
    rng = np.random.default_rng(1)
    x_shape, w_shape = shapes(2, layout, 1, 3, (4, 5), (1, 1), 2)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    for args in (dict(output_shape=(3, 2), padding="SAME_UPPER"), dict(output_padding=(2, 1))):
        y = conv2d_transpose([x, w], kernel_shape=1, data_format=layout, algorithm=algorithm, **args)
        assert_close(y, reference(x, w, kernel_shape=1, data_format=layout, **args))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_zero_tail_and_all_zero_window(algorithm):
    x, w, b = np.ones((1, 1, 2)), np.ones((1, 1, 2)), np.array([0.5])
    # full = [1, 2, 1]; output_padding grows the output by a zero tail (+ bias)
    y = conv1d_transpose([x, w, b], kernel_shape=2, output_padding=[2], algorithm=algorithm)
    np.testing.assert_array_equal(y, [[[1.5, 2.5, 1.5, 0.5, 0.5]]])
    # pads crop all of `full`: every kept position is past its end
    y = conv1d_transpose([x, w, b], kernel_shape=2, pads=(3, 0), output_padding=[2], algorithm=algorithm)
    np.testing.assert_array_equal(y, [[[0.5, 0.5]]])
    g = jax.grad(lambda x: conv1d_transpose([x, w], kernel_shape=2, pads=(3, 0), output_padding=[2]).sum())(x)
    np.testing.assert_array_equal(g, np.zeros_like(x))


def test_worked_example_from_semantics():
    """S=3, K=4, s=2: full length 8, output_shape=5, total=3 (docs/semantics.md)."""
    x, w = np.ones((1, 1, 3)), np.ones((1, 1, 4))
    full = reference(x, w, kernel_shape=4, strides=2)[0, 0]
    assert full.shape == (8,)
    for padding, keep in [("SAME_UPPER", slice(1, 6)), ("SAME", slice(2, 7)), ("SAME_LOWER", slice(2, 7)),
                          ("VALID", slice(2, 7))]:
        y = conv1d_transpose([x, w], kernel_shape=4, strides=2, padding=padding, output_shape=[5])
        np.testing.assert_array_equal(y[0, 0], full[keep])


def test_nhwc_groups_match_nchw():
    """Dragon refuses NHWC groups; ours equals the NCHW answer in the NHWC layout."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 3, 4, 2))
    w = rng.standard_normal((6, 2, 3, 1, 2))
    args = dict(kernel_shape=(3, 1, 2), strides=(2, 1, 2), group=3)
    y = conv3d_transpose([x, w], **args)
    y_nhwc = conv3d_transpose([np.moveaxis(x, 1, -1), np.moveaxis(w, 1, -1)], **args, data_format="NHWC")
    assert_close(np.moveaxis(y_nhwc, -1, 1), y)


def test_array_valued_sizes():
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    want = conv2d_transpose([x, w], kernel_shape=2, strides=2, output_shape=(5, 6), output_padding=(0, 1))
    for shape, opad in [(np.array([5, 6]), np.array([0, 1])), (jnp.array([5, 6]), jnp.array([0, 1])),
                        ([jnp.int32(5), np.int64(6)], (0, 1))]:
        got = conv2d_transpose([x, w], kernel_shape=2, strides=2, output_shape=shape, output_padding=opad)
        np.testing.assert_array_equal(got, want)


def test_nd_beyond_three_axes():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 2, 2, 3, 2, 2)), rng.standard_normal((2, 1, 2, 1, 2, 3))
    args = dict(kernel_shape=(2, 1, 2, 3), strides=(2, 1, 1, 2), pads=1)
    for algorithm in ALGORITHMS:
        if algorithm == "native":  # the kernels take at most 3 spatial axes; refused by name
            with pytest.raises(ValueError, match=r"algorithm='native' would need .*4 spatial axes"):
                conv_transpose([x, w], **args, algorithm=algorithm)
            continue
        assert_close(conv_transpose([x, w], **args, algorithm=algorithm), reference(x, w, **args))
    assert_close(conv_transpose([x, w], **args), reference(x, w, **args))  # 'auto' takes an XLA lowering
