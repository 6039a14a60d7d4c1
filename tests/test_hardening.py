"""Bad or extreme input: every class of issue 11, each pinned by the message or value it must give.

Oracles: the NumPy reference (``reference.py``) for values, the argument names and limits
for messages. None of these may reach XLA with a size it cannot represent.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference
from support import ALGORITHMS, NATIVE

import jax_deconv
from jax_deconv import (
    ConvTranspose,
    ConvTranspose3d,
    choose_algorithm,
    conv1d_transpose,
    conv2d_transpose,
    conv3d_transpose,
    conv_transpose,
    conv_transpose_halo,
    conv_transpose_plan,
    onnx_to_dragon,
)

ONE = [jnp.ones((1, 1, 1, 1)), jnp.ones((1, 1, 1, 1))]


# ---------------------------------------------------------------- 1. sizes XLA cannot represent


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(output_padding=2**31), r"`output_padding` must be .*<= 2147483647"),
        (dict(output_padding=(2**63, 0)), r"`output_padding` must be .*2147483647"),
        (dict(strides=2**40), r"`strides` must be .*<= 2147483647"),
        (dict(dilations=(1, 2**62)), r"`dilations` must be .*<= 2147483647"),
        (dict(pads=(0, 0, 2**33, 0)), r"`pads` must be .*2147483647"),
        (dict(padding="SAME", output_shape=(2**31, 1)), r"`output_shape` must be .*2147483647"),
        (dict(output_padding=(2**31 - 1, 2**31 - 1)), r"the output would have shape .* than the 72057594037927936"),
        (dict(strides=2**31 - 1, output_padding=(2**31 - 2, 2**31 - 2)), r"the output would have shape"),
    ],
)
def test_huge_sizes_are_refused_by_name(kwargs, pattern):
    with pytest.raises(ValueError, match=r"conv2d_transpose: " + pattern):
        conv2d_transpose(ONE, kernel_shape=1, **kwargs)
    with pytest.raises(ValueError, match=pattern):  # the plan alone refuses it the same way
        conv_transpose_plan((1, 1, 1, 1), (1, 1, 1, 1), kernel_shape=1, **kwargs)


# ---------------------------------------------------------------- 2. no blow-up on small valid calls


def _temp_bytes(f, *args) -> int:
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize(
    "x_shape,w_shape,kwargs,chosen",
    [
        ((1, 2, 1, 1, 1), (2, 3, 2, 2, 2), dict(kernel_shape=2, strides=2000), "taps"),  # stride >> input
        ((1, 1, 5), (1, 1, 3), dict(kernel_shape=3, strides=2, dilations=20000, pads=(19990, 19995)), "phases"),
        ((1, 2, 3, 2), (2, 2, 3, 3), dict(kernel_shape=3, strides=(700, 3), dilations=(900, 1)), "taps"),
        ((1, 4, 6, 6, 6), (4, 4, 3, 3, 3), dict(kernel_shape=3, strides=2, dilations=2), "phases"),
    ],
)
def test_auto_never_builds_buffers_out_of_proportion(x_shape, w_shape, kwargs, chosen):
    """'auto' leaves the phase form where it would build a huge phase kernel or multiply mostly
    zeros: 'phases' (each phase with its own taps; an even dilation on an even stride leaves
    half the phases empty) where its phases are few, else 'taps'. Compiled temporaries
    (forward and gradient) stay within 8x x + weight + y, and the answer is the definition's."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    plan = conv_transpose_plan(x_shape, w_shape, **kwargs)
    assert choose_algorithm(plan, "float32", "gpu") == chosen
    assert choose_algorithm(plan, "float32", "cpu") == ("native" if NATIVE else chosen)
    call_bytes = 4 * (x.size + w.size + np.prod(plan.out_shape))

    def f(x, w):
        return conv_transpose([x, w], **kwargs)

    def g(x, w):
        return jax.grad(lambda x, w: (f(x, w) ** 2).sum(), (0, 1))(x, w)

    assert _temp_bytes(f, x, w) <= 8 * call_bytes + 2**20
    assert _temp_bytes(g, x, w) <= 8 * call_bytes + 2**20
    np.testing.assert_allclose(f(x, w), reference(x, w, **kwargs), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- 3. non-finite values

INF_X = np.array([[[np.inf, 1.0]]], np.float32)


EXACT = [("phases", "float32"), ("taps", "float32"), *([("native", "float32"), ("native", "bfloat16")] * NATIVE)]


@pytest.mark.parametrize(("algorithm", "dtype"), EXACT)
def test_exact_lowerings_propagate_non_finite_values_as_the_definition(algorithm, dtype):
    """x = [inf, 1], w = ones(3), stride 2: y[3] = x[1]*w[1] = 1 (inf never meets a kernel zero)."""
    want = [np.inf, np.inf, np.inf, 1.0, 1.0]
    with np.errstate(invalid="ignore"):
        assert reference(INF_X, np.ones((1, 1, 3)), kernel_shape=3, strides=2).ravel().tolist() == want
    x, w = jnp.asarray(INF_X, dtype), jnp.ones((1, 1, 3), dtype)
    y = conv1d_transpose([x, w], kernel_shape=3, strides=2, algorithm=algorithm)
    assert np.asarray(y, np.float32).ravel().tolist() == want


@pytest.mark.parametrize("algorithm", ["conv", "gemm"])
def test_phase_form_non_finite_difference_is_as_documented(algorithm):
    """Documented (docs/limits.md, "Non-finite inputs"): the phase lowerings multiply padding taps of the
    phase kernel, so an inf meets a 0 and gives NaN where the definition has a finite value;
    finite positions are unaffected and every inf of the definition stays inf or becomes NaN."""
    y = np.asarray(conv1d_transpose([INF_X, jnp.ones((1, 1, 3))], kernel_shape=3, strides=2, algorithm=algorithm))
    assert y.ravel()[:3].tolist() == [np.inf] * 3 and np.isnan(y.ravel()[3]) and y.ravel()[4] == 1.0


# ---------------------------------------------------------------- 4. unchecked or inconsistent arguments


@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda: conv1d_transpose([jnp.ones((1, 1, 3)), jnp.ones((1, 1, 3))], preferred_element_type=jnp.int32),
         TypeError, r"conv1d_transpose: `preferred_element_type` must be a floating dtype .*got int32"),
        (lambda: conv1d_transpose([jnp.ones((1, 1, 3)), jnp.ones((1, 1, 3))], preferred_element_type="nope"),
         TypeError, r"`preferred_element_type` must be a floating dtype"),
        (lambda: conv1d_transpose([jnp.ones((1, 1, 3), jnp.float8_e8m0fnu), jnp.ones((1, 1, 3))]),
         TypeError, r"conv1d_transpose: `x` must have a floating dtype that can hold zero .*float8_e8m0fnu"),
        (lambda: conv1d_transpose([None, jnp.ones((1, 1, 3))]), TypeError, r"`x` must be an array; got None"),
        (lambda: conv1d_transpose([jnp.ones((1, 1, 3)), [[[1.0, 2.0], [3.0]]]]), TypeError,
         r"conv1d_transpose: `weight` must be an array \(or a rectangular nested list"),
        (lambda: conv_transpose_plan((1, 1, 3.0), (1, 1, 3), kernel_shape=3), TypeError,
         r"conv_transpose_plan: `x_shape` must be a sequence of ints >= 0"),
        (lambda: conv_transpose_plan((1, -1, 3), (1, 1, 3), kernel_shape=3), ValueError,
         r"conv_transpose_plan: `x_shape` must be a sequence of ints >= 0 .*got \(1, -1, 3\)"),
        (lambda: conv_transpose_plan((1, 1, 3), "113", kernel_shape=3), TypeError, r"`weight_shape` must be"),
        (lambda: onnx_to_dragon((1, 1, 3.5), (1, 1, 3)), TypeError, r"onnx_conv_transpose: `x_shape` must be"),
        (lambda: onnx_to_dragon((1, 1, 3), (1, 1, -3)), ValueError, r"`weight_shape` must be a sequence of ints"),
        (lambda: onnx_to_dragon((1, 1, 3), (1, 1, 3), auto_pad="SAME_UPPER", pads=[1, 1]), ValueError,
         r"`pads` cannot be used together with auto_pad='SAME_UPPER'"),
        (lambda: onnx_to_dragon((1, 1, 3), (1, 1, 3), auto_pad="SAME_LOWER", output_shape=[5], pads=[1, 1]),
         ValueError, r"`pads` cannot be used together with auto_pad='SAME_LOWER'"),
        (lambda: conv_transpose_halo([jnp.ones((1, 1, 4)), jnp.ones((1, 1, 2))], axis_name="z", kernel_shape=2),
         ValueError, r"conv_transpose_halo: `axis_name` \(='z'\) must name a mesh axis bound by an enclosing"),
        (lambda: conv1d_transpose([jnp.ones((1, 1, 3)), jnp.ones((1, 1, 3))], strides=jnp.array([1.5])),
         TypeError, r"`strides` must be"),
    ],
)
def test_bad_arguments_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_zero_input_channels_give_the_bias(algorithm):
    """C_in = 0: every sum is empty, y = bias (the reference agrees)."""
    x, w, b = np.ones((2, 0, 3)), np.ones((0, 2, 2)), np.array([1.5, -2.0])
    y = conv1d_transpose([x, w, b], kernel_shape=2, strides=2, algorithm=algorithm)
    np.testing.assert_array_equal(y, reference(x, w, b, kernel_shape=2, strides=2))
    assert y.shape == (2, 2, 6)


def test_sizes_as_arrays_are_accepted_everywhere():
    """NumPy and concrete JAX arrays (and their scalars) as sizes: every entry point agrees."""
    x, w = jnp.ones((1, 2, 3, 3)), jnp.ones((2, 1, 3, 3))
    want = conv2d_transpose([x, w], kernel_shape=3, strides=2, pads=1, output_padding=(1, 1))
    for cast in (np.array, jnp.array, lambda v: tuple(jnp.int32(i) for i in v)):
        got = conv2d_transpose([x, w], kernel_shape=cast([3, 3]), strides=cast([2, 2]), pads=cast([1, 1]),
                               output_padding=cast([1, 1]), group=jnp.int32(1))
        np.testing.assert_array_equal(got, want)
        plan = conv_transpose_plan(cast([1, 2, 3, 3]), cast([2, 1, 3, 3]), kernel_shape=cast([3, 3]),
                                   strides=cast([2, 2]), pads=cast([1, 1]), output_padding=cast([1, 1]))
        assert plan.out_shape == want.shape
        kw = onnx_to_dragon(cast([1, 2, 3, 3]), cast([2, 1, 3, 3]), strides=cast([2, 2]), pads=cast([1, 1, 1, 1]))
        assert kw["pads"] == (1, 1, 1, 1) and kw["strides"] == (2, 2)
        layer = ConvTranspose.init(jax.random.key(0), 2, 1, cast([3, 3]), strides=cast([2, 2]), pads=cast([1, 1]))
        assert jax.jit(lambda layer, x: layer(x))(layer, x).shape == (1, 1, 5, 5)


def test_traced_sizes_refused_with_a_message():
    x, w = jnp.ones((1, 1, 3)), jnp.ones((1, 1, 2))

    @jax.jit
    def f(strides):
        return conv1d_transpose([x, w], kernel_shape=2, strides=strides)

    with pytest.raises(TypeError, match=r"conv1d_transpose: `strides` must be static"):
        f(jnp.array([2]))


@pytest.mark.parametrize("symbolic", ["b, 2, 5, 5", "b, 2, s, 5", "2, 2, s, 5"])
def test_auto_exports_with_symbolic_sizes(symbolic):
    """'auto' never compares a symbolic size; the exported function runs and matches the reference."""
    shape = jax.export.symbolic_shape(symbolic)
    w = np.random.default_rng(1).standard_normal((2, 3, 3, 3)).astype(np.float32)

    def f(x):
        return conv2d_transpose([x, w], kernel_shape=3, strides=2, pads=1)

    exported = jax.export.export(jax.jit(f))(jax.ShapeDtypeStruct(shape, jnp.float32))
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(exported.call(x), reference(x, w, kernel_shape=3, strides=2, pads=1),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- 5. layers


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(strides=0), ValueError, r"ConvTranspose3d: `strides` must be"),
        (dict(dilations=(1, 2)), ValueError, r"ConvTranspose3d: `dilations` must be .*\(2 values\)"),
        (dict(pads=-1), ValueError, r"ConvTranspose3d: `pads` must be"),
        (dict(padding="FULL"), ValueError, r"ConvTranspose3d: `padding` must be one of"),
        (dict(padding="SAME"), ValueError, r"ConvTranspose3d: `output_shape` is required for padding='SAME'"),
        (dict(data_format="NDHWC"), ValueError, r"ConvTranspose3d: `data_format` must be one of"),
        (dict(algorithm="fast"), ValueError, r"ConvTranspose3d: `algorithm` must be one of"),
        (dict(group=3), ValueError, r"ConvTranspose3d: `group` \(=3\) must divide"),
        (dict(output_padding=(1, 1)), ValueError, r"ConvTranspose3d: `output_padding` must be"),
        (dict(kernel_shape=2.0), TypeError, r"ConvTranspose3d: `kernel_shape` must be"),
    ],
)
def test_layer_validates_at_init_naming_the_class(kwargs, exc, pattern):
    kwargs = {"kernel_shape": 2, **kwargs}
    with pytest.raises(exc, match=pattern):
        ConvTranspose3d.init(jax.random.key(0), 4, 2, **kwargs)


def test_layer_normalises_and_checks_rank():
    layer = ConvTranspose3d.init(jax.random.key(0), 2, 2, np.int64(2), strides=np.array([2, 2, 2]),
                                 pads=np.array([0, 0, 0]), output_padding=1)
    assert layer.strides == (2, 2, 2) and layer.pads == (0,) * 6 and layer.output_padding == (1, 1, 1)
    assert all(type(v) is int for v in (*layer.strides, *layer.pads, *layer.output_padding))
    y = jax.jit(lambda layer, x: layer(x))(layer, jnp.ones((1, 2, 3, 3, 3)))
    assert y.shape == (1, 2, 7, 7, 7)
    with pytest.raises(ValueError, match=re.escape("ConvTranspose3d: input `x` must have rank 5")):
        layer(jnp.ones((1, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"ConvTranspose3d: `weight` must have shape"):
        layer(jnp.ones((1, 3, 3, 3, 3)))


# ---------------------------------------------------------------- 6. every platform, without a device


@pytest.mark.parametrize("algorithm", ["auto", *ALGORITHMS])
def test_exports_for_every_platform(algorithm):
    """Lowering for CPU, CUDA, ROCm and TPU at once catches a lowering one backend would refuse;
    'auto' stages a per-platform choice, and the CPU part of the export runs here."""
    x = np.random.default_rng(3).standard_normal((2, 4, 3, 3)).astype(np.float32)
    w = np.random.default_rng(4).standard_normal((4, 2, 3, 3)).astype(np.float32)
    kw = dict(kernel_shape=3, strides=2, pads=1, group=2, algorithm=algorithm)

    def loss(x, w):
        return (conv2d_transpose([x, w], **kw) ** 2).sum()

    platforms = ("cpu", "cuda", "rocm", "tpu")
    fwd = jax.export.export(jax.jit(lambda x, w: conv2d_transpose([x, w], **kw)), platforms=platforms)(x, w)
    grad = jax.export.export(jax.jit(jax.grad(loss, (0, 1))), platforms=platforms)(x, w)
    assert fwd.platforms == grad.platforms == platforms
    for exported in (fwd, grad):  # exported programs carry no custom call: 'native' exports XLA's lowering
        assert "custom_call @jax_deconv" not in exported.mlir_module()
    want = reference(x, w, kernel_shape=3, strides=2, pads=1, group=2)
    np.testing.assert_allclose(fwd.call(x, w), want, rtol=1e-4, atol=1e-4)
    dx, dw = grad.call(x, w)
    assert dx.shape == x.shape and dw.shape == w.shape


def test_package_names_every_algorithm():
    assert jax_deconv.ALGORITHMS == ("auto", "conv", "gemm", "phases", "taps", "native")


@pytest.mark.parametrize(
    "padding,pattern",
    [
        (((-(2**40), 0), (0, 0)), r"`padding` must be .* each of magnitude <= 2147483647"),
        (((0, 2**31 - 1), (0, 2**31 - 1)), r"the output would have shape \(1, 3, 2147483652, 2147483652\)"),
    ],
)
def test_lax_dropin_refuses_huge_padding_by_name(padding, pattern):
    from jax_deconv import lax as dlax

    with pytest.raises(ValueError, match=r"jax_deconv.lax.conv_transpose: " + pattern):
        dlax.conv_transpose(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3)), (2, 2), padding)


@pytest.mark.parametrize("algorithm", ["conv", "gemm"])
def test_explicit_phase_lowering_refuses_what_xla_cannot_index(algorithm):
    """Stride 2000 on a 1-voxel 3-D input: the phase form needs 2000**3 * C_out phase channels
    (under 'gemm' XLA aborted the process on an int32 overflow); refused by name, and 'auto'
    computes it with 'taps'."""
    x, w = np.ones((1, 8, 1, 1, 1), np.float32), np.ones((8, 8, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=rf"conv3d_transpose: algorithm='{algorithm}' would build prod\(strides\) "
                                         r"\* C_out = 64000000000 phase channels .* algorithm='auto', .*'taps'"):
        conv3d_transpose([x, w], kernel_shape=3, strides=2000, algorithm=algorithm)
    y = conv3d_transpose([x, w], kernel_shape=3, strides=2000)
    np.testing.assert_array_equal(y, reference(x, w, kernel_shape=3, strides=2000))


def test_explicit_phases_refuses_too_many_phases():
    """'phases' unrolls one matrix product per phase; past MAX_PHASES it is refused by name."""
    x, w = np.ones((1, 8, 1, 1, 1), np.float32), np.ones((8, 8, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv3d_transpose: algorithm='phases' would need prod\(strides\) = "
                                         r"8000000000 phases to unroll, .*\(limit 512\); algorithm='auto', .*'taps'"):
        conv3d_transpose([x, w], kernel_shape=3, strides=2000, algorithm="phases")
