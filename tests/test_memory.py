"""Memory bound: XLA's own estimate of a call's temporaries, in proportion to x + weight + y.

Over seeded random layers of realistic size (1-D to 3-D, groups, strides up to 40, dilations
up to 25, heavy crops, kernels larger than the input), compiled (never run) under
``algorithm='auto'`` for CPU, forward and gradient. The bounds are stated in docs/memory.md
and in ``choose_algorithm``'s docstring. The values are checked elsewhere; here only
``.compile().memory_analysis()`` is read.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import NATIVE

from jax_deconv import conv_transpose, conv_transpose_plan
from jax_deconv._cost import choose

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the bounds are stated for XLA:CPU")

MiB = 2**20
FORWARD_BOUND, GRADIENT_BOUND = 6, 10  # times x + weight + y, plus the im2col allowance and 1 MiB
DEFAULT_IM2COL = 32 * MiB  # what 'gemm' builds at once when no max_buffer_bytes is given


def random_layer(seed: int) -> tuple[dict, tuple, tuple]:
    """A layer of realistic size, with odd strides, dilations and crops mixed in."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4))
    kernel = [int(v) for v in rng.integers(1, 6, n)]
    strides = [int(v) for v in rng.choice([1, 2, 2, 3, 4, 40], n)]
    dilations = [int(v) for v in rng.choice([1, 1, 1, 2, 3, 25], n)]
    size = [int(v) for v in rng.integers(1, {1: 2048, 2: 64, 3: 20}[n] + 1, n)]
    group = int(rng.choice([1, 1, 2, 4]))
    c_in, cg_out, batch = group * int(rng.integers(4, 33)), int(rng.integers(4, 33)), int(rng.integers(1, 3))
    full = [s * (i - 1) + d * (k - 1) + 1 for s, i, d, k in zip(strides, size, dilations, kernel)]
    begin = [int(rng.integers(0, f)) if rng.random() < 0.3 else min(k // 2, f - 1) for f, k in zip(full, kernel)]
    end = [int(rng.integers(0, f - b)) if rng.random() < 0.3 else 0 for f, b in zip(full, begin)]
    layout = str(rng.choice(["NCHW", "NHWC"]))
    args = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=group, pads=begin + end,
                data_format=layout)
    x_shape = (batch, c_in, *size) if layout == "NCHW" else (batch, *size, c_in)
    w_shape = (c_in, cg_out, *kernel) if layout == "NCHW" else (c_in, *kernel, cg_out)
    return args, x_shape, w_shape


def temporaries(args: dict, x_shape, w_shape, budget: int | None, xla_only: bool = False) -> tuple[int, int, int]:
    """(bytes of x + w + y, forward temporaries, gradient temporaries), float32, compiled for CPU
    under 'auto' (``xla_only``: what 'auto' runs without the native kernels)."""
    plan = conv_transpose_plan(x_shape, w_shape, **args)
    x, w = jax.ShapeDtypeStruct(x_shape, jnp.float32), jax.ShapeDtypeStruct(w_shape, jnp.float32)
    call = 4 * (int(np.prod(x_shape)) + int(np.prod(w_shape)) + int(np.prod(plan.out_shape)))
    algorithm = choose(plan, 4, "cpu", budget).algorithm if xla_only else "auto"

    def forward(x, w):
        return conv_transpose([x, w], **args, max_buffer_bytes=budget, algorithm=algorithm)

    def gradient(x, w):
        return jax.vjp(forward, x, w)[1](jnp.ones(plan.out_shape, jnp.float32))

    def temp(f) -> int:
        return jax.jit(f).lower(x, w).compile().memory_analysis().temp_size_in_bytes

    return call, temp(forward), temp(gradient)


@pytest.mark.parametrize("budget", ["x+w+y", None], ids=["max_buffer_bytes=x+w+y", "default"])
@pytest.mark.parametrize("seed", range(8))
def test_auto_temporaries_stay_in_proportion(seed, budget):
    args, x_shape, w_shape = random_layer(seed)
    plan = conv_transpose_plan(x_shape, w_shape, **args)
    call_bytes = 4 * (int(np.prod(x_shape)) + int(np.prod(w_shape)) + int(np.prod(plan.out_shape)))
    limit = call_bytes if budget else None
    call, forward, gradient = temporaries(args, x_shape, w_shape, limit)
    allowance = (limit or DEFAULT_IM2COL) + MiB
    assert forward <= FORWARD_BOUND * call + allowance, (forward / call, args, x_shape)
    assert gradient <= GRADIENT_BOUND * call + 2 * allowance, (gradient / call, args, x_shape)


def test_max_buffer_bytes_shrinks_a_large_im2col():
    """A 3-D layer whose whole im2col is 108 MiB (N1 32->32 32^3 k3 s1, 3.4 MiB per phase row):
    with max_buffer_bytes of 4 MiB 'gemm' steps one row at a time, and the forward's
    temporaries fall to about y + one step, the gradient's by half; with 2 MiB (less than a
    row) 'auto' takes 'conv', which builds no im2col."""
    args = dict(kernel_shape=3, pads=1, data_format="NHWC")
    shapes = ((1, 32, 32, 32, 32), (32, 3, 3, 3, 32))
    _, whole, whole_grad = temporaries(args, *shapes, budget=2**40, xla_only=True)  # all at once
    _, stepped, stepped_grad = temporaries(args, *shapes, budget=4 * MiB, xla_only=True)
    _, lean, lean_grad = temporaries(args, *shapes, budget=2 * MiB, xla_only=True)
    y_bytes = 4 * 32**4
    assert whole >= 27 * 4 * 32**4  # the im2col: 27 taps x the padded input
    assert stepped <= y_bytes + 2 * 4 * MiB + MiB, stepped / MiB
    assert stepped_grad < whole_grad / 2, (stepped_grad / MiB, whole_grad / MiB)
    assert lean <= y_bytes + MiB and lean_grad < whole_grad / 2, (lean / MiB, lean_grad / MiB)


# one im2col phase row of this call: M2 * M3 * 27 taps * C_in * 4 bytes = 8 * 8 * 27 * 8 * 4
X_F, W_F = jnp.ones((1, 8, 6, 6, 6)), jnp.ones((8, 4, 3, 3, 3))


@pytest.mark.parametrize(
    "value,error,pattern",
    [
        (1.5, TypeError, r"conv3d_transpose: `max_buffer_bytes` must be None or an int \(bytes\); got 1.5"),
        (True, TypeError, r"`max_buffer_bytes` must be None or an int \(bytes\); got True"),
        ("1MiB", TypeError, r"`max_buffer_bytes` must be None or an int"),
        (0, ValueError, r"`max_buffer_bytes` must be between 1 and \d+; got 0"),
        (-5, ValueError, r"`max_buffer_bytes` must be between 1 and \d+; got -5"),
    ],
)
def test_max_buffer_bytes_is_checked(value, error, pattern):
    from jax_deconv import conv3d_transpose

    with pytest.raises(error, match=pattern):
        conv3d_transpose([X_F, W_F], max_buffer_bytes=value)


def test_explicit_gemm_refuses_a_budget_below_one_step():
    from jax_deconv import conv3d_transpose

    with pytest.raises(ValueError, match=r"algorithm='gemm' would need an im2col step of 55296 bytes \(one phase row "
                                         r".*more than the limit in force, max_buffer_bytes=1000; .*'conv'"):
        conv3d_transpose([X_F, W_F], algorithm="gemm", max_buffer_bytes=1000)
    conv3d_transpose([X_F, W_F], algorithm="gemm", max_buffer_bytes=55296)  # exactly one row: accepted


def test_auto_choice_follows_the_budget():
    from jax_deconv import choose_algorithm

    plan = conv_transpose_plan(X_F.shape, W_F.shape, kernel_shape=3)
    assert choose(plan, 4, "cpu").algorithm == "gemm"  # without the native kernels
    assert choose(plan, 4, "cpu", 55296).algorithm == "gemm"
    assert choose(plan, 4, "cpu", 55295).algorithm == "conv"
    assert choose_algorithm(plan, "float32", "gpu", max_buffer_bytes=55296) == "conv"
    # the native kernels build no im2col: no budget changes their choice
    assert choose_algorithm(plan, "float32", "cpu", max_buffer_bytes=1) == ("native" if NATIVE else "conv")


def test_layers_take_and_check_the_budget():
    from reference import reference

    from jax_deconv import ConvTranspose3d

    layer = ConvTranspose3d.init(jax.random.key(0), 8, 4, 3, max_buffer_bytes=np.int64(55296))
    assert layer.max_buffer_bytes == 55296 and type(layer.max_buffer_bytes) is int
    x = np.random.default_rng(0).standard_normal(X_F.shape).astype(np.float32)
    want = reference(x, np.asarray(layer.weight), np.asarray(layer.bias), kernel_shape=3)
    np.testing.assert_allclose(jax.jit(lambda layer, x: layer(x))(layer, x), want, rtol=2e-5, atol=2e-5)
    with pytest.raises(TypeError, match=r"ConvTranspose3d: `max_buffer_bytes` must be None or an int"):
        ConvTranspose3d.init(jax.random.key(0), 8, 4, 3, max_buffer_bytes=2.0)
