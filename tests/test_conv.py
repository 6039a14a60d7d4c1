"""The regular convolution on the native kernels: ``jax_deconv.lax.conv_general_dilated`` (and
``conv``, ``conv_with_general_padding``), the Flax and Equinox ``Conv`` drop-ins.

Oracle: ``jax.lax.conv_general_dilated`` itself (and Flax's / Equinox's own layers), forward and
every gradient, over random configurations in every layout; what the kernels do not take must
give exactly what ``jax.lax`` gives (it is passed to it).
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import NATIVE

from jax_deconv import lax as dlax

needs_kernels = pytest.mark.skipif(not NATIVE, reason="the native kernels are not built here")
LAYOUTS = {  # spatial rank -> dimension numbers tried
    1: [("NCH", "OIH", "NCH"), ("NHC", "HIO", "NHC"), ("HNC", "IHO", "CNH")],
    2: [("NCHW", "OIHW", "NCHW"), ("NHWC", "HWIO", "NHWC"), ("NHWC", "OIHW", "NCHW")],
    3: [("NCDHW", "OIDHW", "NCDHW"), ("NDHWC", "DHWIO", "NDHWC")],
}


def random_call(seed: int):
    """A random convolution: shapes, strides, rhs_dilation, padding (strings, pairs, negative),
    groups, dimension numbers."""
    rng = np.random.default_rng(seed)
    n = 1 + seed % 3
    groups = int(rng.choice([1, 1, 2, 3]))
    c_in, c_out = groups * int(rng.integers(1, 5)), groups * int(rng.integers(1, 5))
    kernel = [int(v) for v in rng.integers(1, 4, n)]
    dilations = [int(v) for v in rng.choice([1, 1, 2], n)]
    strides = [int(v) for v in rng.choice([1, 1, 2, 3], n)]
    spatial = [int(v) for v in rng.integers(3, 9, n)]
    r = rng.random()
    padding = ("SAME" if r < 0.25 else "VALID" if r < 0.4 else "SAME_LOWER" if r < 0.5 else
               [tuple(int(v) for v in rng.integers(-1, 3, 2)) for _ in range(n)])
    dn = LAYOUTS[n][int(rng.integers(len(LAYOUTS[n])))]
    lhs_shape = {"N": 2, "C": c_in, **dict(zip("HWD", spatial))}
    rhs_shape = {"O": c_out, "I": c_in // groups, **dict(zip("HWD", kernel))}
    x = rng.standard_normal([lhs_shape[a] for a in dn[0]])
    w = rng.standard_normal([rhs_shape[a] for a in dn[1]])
    kwargs = dict(window_strides=strides, padding=padding, rhs_dilation=dilations, dimension_numbers=dn,
                  feature_group_count=groups)
    return x, w, kwargs


@needs_kernels
@pytest.mark.parametrize("seed", range(36))
def test_matches_lax_forward_and_gradients(seed):
    """float64: y, both gradients (vjp), the tangent (jvp) and a vmap over a batch of inputs equal
    jax.lax's, under jit; 'auto' runs the kernels (a custom call) wherever the output is not empty."""
    x, w, kwargs = random_call(seed)
    with jax.enable_x64(True):
        ours = jax.jit(lambda x, w: dlax.conv_general_dilated(x, w, **kwargs))
        theirs = lambda x, w: jax.lax.conv_general_dilated(x, w, **kwargs)  # noqa: E731
        want = theirs(x, w)
        got = ours(x, w)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        if want.size == 0:
            return
        assert "jax_deconv_dx" in ours.lower(x, w).as_text()
        ct = np.random.default_rng(seed).standard_normal(want.shape)
        for a, e in zip(jax.vjp(ours, x, w)[1](ct), jax.vjp(theirs, x, w)[1](ct)):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
        tangents = (np.cos(x), np.sin(w))
        np.testing.assert_allclose(jax.jvp(ours, (x, w), tangents)[1], jax.jvp(theirs, (x, w), tangents)[1],
                                   rtol=1e-12, atol=1e-12)
        xs = np.stack([x, 2 * x])
        np.testing.assert_allclose(jax.vmap(ours, (0, None))(xs, w), jax.vmap(theirs, (0, None))(xs, w),
                                   rtol=1e-12, atol=1e-12)


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_low_precision_dtypes_against_float64(dtype):
    """float32 within 1e-5, 16-bit within their rounding (float32 accumulation, one rounding)."""
    x, w, kwargs = random_call(101)
    with jax.enable_x64(True):
        want = np.asarray(jax.lax.conv_general_dilated(x, w, **kwargs))
    xd, wd = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    got = dlax.conv_general_dilated(xd, wd, **kwargs)
    assert got.dtype == jnp.dtype(dtype)
    with jax.enable_x64(True):  # the reference of the values actually stored
        exact = np.asarray(jax.lax.conv_general_dilated(np.asarray(xd, np.float64), np.asarray(wd, np.float64),
                                                        **kwargs))
    bound = {"float32": 1e-5, "bfloat16": 2.0**-7, "float16": 2.0**-10}[dtype]
    scale = np.abs(exact).max() + 1
    np.testing.assert_allclose(np.asarray(got, np.float64), exact, rtol=bound, atol=bound * scale)
    assert np.abs(want - exact).max() < 1 + scale  # (x, w stored in dtype: exact is the oracle)
    with jax.enable_x64(True):
        up = dlax.conv_general_dilated(xd, wd, preferred_element_type=jnp.float64, **kwargs)
    assert up.dtype == jnp.float64


def test_what_the_kernels_do_not_take_is_lax():
    """Passed to jax.lax as it is: lhs_dilation, batch_group_count, integers, complex, mixed
    dtypes, 4 spatial axes; the same results, and lax's own errors."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 4, 5, 6)).astype(np.float32), rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    cases = [
        ((x, w, (1, 1), "SAME"), dict(lhs_dilation=(2, 1))),
        ((x, w.reshape(6, 4, 3, 3), (1, 1), "VALID"), dict(batch_group_count=2)),
        ((x.astype(np.int32), w.astype(np.int32), (1, 1), "SAME"), {}),
        ((x.astype(np.complex64), w.astype(np.complex64), (1, 1), "SAME"), {}),
        ((np.ones((1, 1, 3, 3, 3, 3), np.float32), np.ones((1, 1, 2, 2, 2, 2), np.float32), (1, 1, 1, 1), "VALID"),
         {}),
    ]
    for args, kwargs in cases:
        try:
            want = jax.lax.conv_general_dilated(*args, **kwargs)
        except Exception as error:  # lax refuses it: so do we, with lax's own error
            with pytest.raises(type(error)):
                dlax.conv_general_dilated(*args, **kwargs)
            continue
        got = dlax.conv_general_dilated(*args, **kwargs)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError):  # mixed dtypes: lax refuses them
        jax.lax.conv_general_dilated(x, w.astype(np.float16), (1, 1), "SAME")
    with pytest.raises(TypeError):
        dlax.conv_general_dilated(x, w.astype(np.float16), (1, 1), "SAME")


@needs_kernels
def test_algorithm_argument():
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    f = jax.jit(lambda x, w: dlax.conv_general_dilated(x, w, (1, 1), "SAME", algorithm="xla"))
    assert "jax_deconv_dx" not in f.lower(x, w).as_text()
    with pytest.raises(ValueError, match=r"jax_deconv.lax.conv_general_dilated: algorithm='native' cannot run this "
                                         r"call: lhs_dilation is not 1"):
        dlax.conv_general_dilated(x, w, (1, 1), "SAME", lhs_dilation=(2, 2), algorithm="native")
    with pytest.raises(ValueError, match=r"`algorithm` must be one of \('auto', 'native', 'xla'\); got 'gemm'"):
        dlax.conv_general_dilated(x, w, (1, 1), "SAME", algorithm="gemm")  # type: ignore[arg-type]
    np.testing.assert_allclose(dlax.conv(x, w, (1, 1), "SAME"), jax.lax.conv(x, w, (1, 1), "SAME"), rtol=1e-6)
    np.testing.assert_allclose(dlax.conv_with_general_padding(x, w, (2, 1), [(1, 0), (0, 2)], None, (2, 1)),
                               jax.lax.conv_with_general_padding(x, w, (2, 1), [(1, 0), (0, 2)], None, (2, 1)),
                               rtol=1e-6)


@needs_kernels
def test_export_runs_lax_convolution():
    """An exported program carries no custom call (XLA's lowering of the same maps) and gives
    the same forward and gradients, with a symbolic batch too."""
    x, w = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32), np.ones((4, 3, 3, 3), np.float32)
    f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(dlax.conv(x, w, (2, 2), "SAME") ** 2), (0, 1)))
    for shape in [x.shape, jax.export.symbolic_shape("n, 3, 6, 6")]:
        exported = jax.export.export(f)(jax.ShapeDtypeStruct(shape, np.float32), w)
        assert "custom_call @jax_deconv" not in exported.mlir_module()
        for a, e in zip(jax.tree.leaves(exported.call(x, w)), jax.tree.leaves(f(x, w))):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("flax") is None, reason="Flax is not installed")
def test_flax_conv_equals_flax():
    from flax import linen as nn
    from flax import nnx

    from jax_deconv.flax import linen as dnn
    from jax_deconv.flax import nnx as dnnx

    x = np.random.default_rng(4).standard_normal((2, 7, 6, 5, 4)).astype(np.float32)
    attrs = dict(features=6, kernel_size=(3, 3, 3), strides=(2, 1, 1), padding="SAME", feature_group_count=2)
    variables = nn.Conv(**attrs).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, dnn.Conv(**attrs).init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
    loss = lambda m: lambda v, x: jnp.sum(m.apply(v, x) ** 2)  # noqa: E731
    for a, e in zip(jax.tree.leaves(jax.grad(loss(dnn.Conv(**attrs)), (0, 1))(variables, x)),
                    jax.tree.leaves(jax.grad(loss(nn.Conv(**attrs)), (0, 1))(variables, x))):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    ours, theirs = dnnx.Conv(4, 6, (3, 3, 3), rngs=nnx.Rngs(1)), nnx.Conv(4, 6, (3, 3, 3), rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(ours.kernel[...], theirs.kernel[...])
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("equinox") is None, reason="Equinox is not installed")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_equinox_conv_equals_equinox(n):
    import equinox as eqx

    from jax_deconv import equinox as deqx

    theirs_cls = [eqx.nn.Conv1d, eqx.nn.Conv2d, eqx.nn.Conv3d][n - 1]
    ours_cls = [deqx.Conv1d, deqx.Conv2d, deqx.Conv3d][n - 1]
    kwargs = dict(kernel_size=3, stride=2, padding=1, dilation=1, groups=2, key=jax.random.key(n))
    ours, theirs = ours_cls(4, 6, **kwargs), theirs_cls(4, 6, **kwargs)
    x = np.random.default_rng(n).standard_normal((4, *(7,) * n)).astype(np.float32)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    g = lambda m: jax.grad(lambda m, x: jnp.sum(m(x) ** 2))(m, x)  # noqa: E731
    for a, e in zip(jax.tree.leaves(g(ours)), jax.tree.leaves(g(theirs))):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    circular = ours_cls(4, 6, kernel_size=3, padding="SAME", padding_mode="CIRCULAR", key=jax.random.key(0))
    reference = theirs_cls(4, 6, kernel_size=3, padding="SAME", padding_mode="CIRCULAR", key=jax.random.key(0))
    np.testing.assert_allclose(circular(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_functional_conv_equals_pytorch(n):
    import torch

    from jax_deconv import functional as F

    rng = np.random.default_rng(10 + n)
    x = rng.standard_normal((2, 4, *(7,) * n))
    w = rng.standard_normal((6, 2, *(3,) * n))
    b = rng.standard_normal(6)
    ops = {1: (F.conv1d, torch.nn.functional.conv1d), 2: (F.conv2d, torch.nn.functional.conv2d),
           3: (F.conv3d, torch.nn.functional.conv3d)}[n]
    for kwargs in (dict(stride=2, padding=1, dilation=1, groups=2), dict(padding="same", dilation=2, groups=2),
                   dict(padding="valid", stride=3, groups=2)):
        want = ops[1](torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **kwargs).numpy()
        with jax.enable_x64(True):
            got = ops[0](x, w, b, **kwargs)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(ops[0](x[0], w, b, **kwargs), want[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=rf"conv{n}d: padding='same' is not supported for strided convolutions"):
        ops[0](x, w, stride=2, padding="same", groups=2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_functional_conv_16_bit_with_a_bias_is_rounded_once(dtype):
    """100 * 1 + 0.4375 * 1 - 100 (PyTorch's one rounding): the 16-bit product 100.5 (100.4375 is
    not a bfloat16) plus the bias would give 0.5; summed and biased in float32, 0.4375 (float16
    holds 100.4375: there both ways give it)."""
    from jax_deconv import functional as F

    x = jnp.ones((1, 2, 1), dtype)
    w = jnp.array([100.0, 0.4375], dtype).reshape(1, 2, 1)
    b = jnp.array([-100.0], dtype)
    y = F.conv1d(x, w, b)
    assert y.dtype == jnp.dtype(dtype)
    assert float(y[0, 0, 0]) == 0.4375
    with pytest.raises(ValueError, match=r"conv1d: `bias` must have shape \(C_out,\) = \(1,\); got shape \(2,\)"):
        F.conv1d(x, w, jnp.zeros(2, dtype))


@needs_kernels
@pytest.mark.parametrize("c_in,c_out", [(1, 5), (5, 1), (1, 1)])
def test_one_channel_sides_against_lax(c_in, c_out):
    """A one-channel input or output (a network's first and last layers): the kernels' products
    are one column wide there and run vectorised along rows or sums; y and both gradients in
    float64 against jax.lax, 3-D with stride and padding."""
    rng = np.random.default_rng(c_in * 10 + c_out)
    x, w = rng.standard_normal((2, 9, 7, 20, c_in)), rng.standard_normal((3, 3, 3, c_in, c_out))
    kwargs = dict(window_strides=(1, 2, 1), padding=[(1, 1), (0, 2), (1, 0)],
                  dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    with jax.enable_x64(True):
        ours = jax.jit(lambda x, w: dlax.conv_general_dilated(x, w, **kwargs))
        theirs = lambda x, w: jax.lax.conv_general_dilated(x, w, **kwargs)  # noqa: E731
        np.testing.assert_allclose(ours(x, w), theirs(x, w), rtol=1e-12, atol=1e-12)
        ct = rng.standard_normal(theirs(x, w).shape)
        for a, e in zip(jax.vjp(ours, x, w)[1](ct), jax.vjp(theirs, x, w)[1](ct)):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
