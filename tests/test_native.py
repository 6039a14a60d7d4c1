"""The native CPU kernels (``algorithm='native'``): build, instruction sets, batching rules, export.

The numbers themselves are checked where every algorithm is: the golden, reference, transform,
sweep, hardening and memory suites run ``'native'`` wherever the kernels are built (CI builds
them: ``.ci/run`` sets ``JAX_DECONV_REQUIRE_NATIVE``). Here: what is particular to them.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference
from support import NATIVE

from jax_deconv import conv_transpose, native_kernels

HERE = os.path.dirname(os.path.abspath(__file__))
needs_kernels = pytest.mark.skipif(not NATIVE, reason="the native kernels are not built here")


def test_kernels_are_built_where_required():
    if os.environ.get("JAX_DECONV_REQUIRE_NATIVE"):
        assert native_kernels() is not None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


@needs_kernels
def test_the_best_instruction_set_of_this_processor_is_chosen():
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo")
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512_bf16"} <= flags:
        assert native_kernels() == "avx512bf16"
    elif {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
        assert native_kernels() == "avx512f"
    elif {"avx2", "fma"} <= flags:
        assert native_kernels() == "avx2+fma"
    else:
        assert native_kernels() in ("x86-64 baseline", "portable C++")


def _sweep(env: dict, *args: str) -> None:
    out = subprocess.run([sys.executable, os.path.join(HERE, "sweep.py"), *args], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == f"SWEEP {args[1]} 0", out.stdout[-3000:]


# What native_kernels() reports under each lower variant that JAX_DECONV_ISA forces.
LOWER_VARIANTS = {"avx512f": "avx512f", "avx2+fma": "avx2+fma", "baseline": "x86-64 baseline"}


def _lower_variant_env(isa: str) -> dict:
    """The environment that forces variant ``isa``; skips where this processor cannot run it, or
    where it is the default already (``'avx512f'`` without AVX512-BF16)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the instruction-set variants are x86-64's")
    flags = _cpu_flags()
    if isa == "avx512f" and not {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512_bf16"} <= flags:
        pytest.skip("'avx512f' is the default here, or this processor has no AVX-512")
    if isa == "avx2+fma" and not {"avx2", "fma"} <= flags:
        pytest.skip("this processor has no AVX2/FMA")
    return dict(os.environ, JAX_DECONV_ISA=isa)


@needs_kernels
@pytest.mark.parametrize("isa", list(LOWER_VARIANTS))
def test_every_instruction_set_variant_matches_the_reference(isa):
    """The lower variants, forced by JAX_DECONV_ISA, through the randomised sweeps in a
    subprocess: float64 (forward, VJP and JVP against the NumPy reference) and bfloat16
    (forward and both gradients, element by element, with up to 40 channels per group)."""
    env = _lower_variant_env(isa)
    expected = LOWER_VARIANTS[isa]
    code = f"import jax_deconv; assert jax_deconv.native_kernels() == {expected!r}, jax_deconv.native_kernels()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    _sweep(env, "41", "12", "native")
    _sweep(env, "43", "10", "native", "bfloat16")


@needs_kernels
def test_bfloat16_sweep_at_this_processors_instruction_set():
    """bfloat16 through the kernels this processor runs (``vdpbf16ps`` where it has
    AVX512-BF16): forward, input and weight gradients element by element against the reference."""
    _sweep(dict(os.environ), "47", "30", "native", "bfloat16")


def test_reference_vjp_is_the_adjoint_of_the_reference():
    """The oracle of the bfloat16 sweep: <gy, ref(u, w)> == <dx, u> and <gy, ref(x, v)> == <dw, v>."""
    from reference import reference_vjp
    from support import random_config

    rng = np.random.default_rng(5)
    for _ in range(20):
        cfg, x_shape, w_shape, _ = random_config(rng)
        x, u = rng.standard_normal(x_shape), rng.standard_normal(x_shape)
        w, v = rng.standard_normal(w_shape), rng.standard_normal(w_shape)
        gy = rng.standard_normal(reference(x, w, **cfg).shape)
        dx, dw = reference_vjp(x, w, gy, **cfg)
        assert dx.shape == x.shape and dw.shape == w.shape
        np.testing.assert_allclose(np.vdot(gy, reference(u, w, **cfg)), np.vdot(dx, u), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(np.vdot(gy, reference(x, v, **cfg)), np.vdot(dw, v), rtol=1e-10, atol=1e-10)


ARGS = dict(kernel_shape=3, strides=2, pads=1, group=2)


def _loss(x, w):
    return jnp.sum(jnp.sin(conv_transpose([x, w], **ARGS, algorithm="native")))


@needs_kernels
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (2, 1)])
def test_batching_rules_of_all_three_kernels(in_axes):
    """``vmap`` of forward, dx and dw (a per-example gradient maps x and dy together) against a
    Python loop over the mapped axis, which needs no batching rule."""
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(5)
        x, w = rng.standard_normal((2, 4, 3, 5)), rng.standard_normal((4, 3, 3, 3))
        size = 3
        xs = np.stack([x * (i + 1) for i in range(size)], axis=in_axes[0]) if in_axes[0] is not None else x
        ws = np.stack([w - i for i in range(size)], axis=in_axes[1]) if in_axes[1] is not None else w

        def take(a, axis, i):
            return a if axis is None else np.take(a, i, axis=axis)

        for f in (_loss, jax.grad(_loss, (0, 1))):
            got = jax.jit(jax.vmap(f, in_axes=in_axes))(xs, ws)
            for i in range(size):
                want = f(take(xs, in_axes[0], i), take(ws, in_axes[1], i))
                for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                    np.testing.assert_allclose(np.asarray(g)[i], e, rtol=1e-12, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


@needs_kernels
def test_results_are_deterministic_and_match_the_reference():
    """Each output element is summed by one thread in a fixed order: repeated calls agree bit for bit."""
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((3, 16, 9, 7, 5)).astype(np.float32), rng.standard_normal((16, 8, 4, 4, 4))
    w = w.astype(np.float32)
    f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(conv_transpose([x, w], kernel_shape=4, strides=2, pads=1,
                                                                       algorithm="native") ** 2), (0, 1)))
    first = jax.tree.map(np.asarray, f(x, w))
    for _ in range(3):
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(f(x, w))):
            np.testing.assert_array_equal(a, b)
    y = conv_transpose([x, w], kernel_shape=4, strides=2, pads=1, algorithm="native")
    np.testing.assert_allclose(y, reference(x, w, kernel_shape=4, strides=2, pads=1), rtol=1e-4, atol=1e-4)


@needs_kernels
def test_export_carries_the_xla_lowering_with_the_same_answer():
    """``jax.export`` of a call that runs the kernels under ``jit``: the exported program has no
    custom call, and its forward and gradients equal the kernels' own."""
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 6, 5, 4)).astype(np.float32), rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    f = jax.jit(jax.value_and_grad(_loss, (0, 1)))
    assert "custom_call @jax_deconv" in f.lower(x, w).as_text()
    exported = jax.export.export(f)(x, w)
    assert "custom_call @jax_deconv" not in exported.mlir_module()
    for got, want in zip(jax.tree.leaves(exported.call(x, w)), jax.tree.leaves(f(x, w))):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_explicit_native_beyond_three_spatial_axes_is_refused_by_name():
    x, w = jnp.ones((1, 1, 2, 2, 2, 2)), jnp.ones((1, 1, 2, 2, 2, 2))
    pattern = (r"conv_transpose: algorithm='native' would need the native kernels, which cannot run it: "
               r".*(4 spatial axes \(the kernels take at most 3\)|load|not built)")
    with pytest.raises(ValueError, match=pattern):
        conv_transpose([x, w], kernel_shape=2, algorithm="native")


# ---------------------------------------------------------------- how the work is visited and split

OUTER_AXIS_CASES = {  # NHWC x shape, weight shape (C_in, K.., Cg_out), arguments
    "2-D, long kernel on the first axis, gcd(s, d) = 2": (
        (2, 23, 3, 2), (2, 17, 2, 3), dict(kernel_shape=(17, 2), strides=(6, 1), dilations=(4, 1), pads=(5, 0, 3, 1))),
    "3-D, both outer axes strided and dilated": (
        (1, 5, 6, 4, 3), (3, 5, 4, 2, 2), dict(kernel_shape=(5, 4, 2), strides=(3, 2, 2), dilations=(2, 3, 1),
                                                pads=1, output_padding=(1, 0, 1))),
    "3-D, stride 4 dilation 6, SAME": (
        (2, 4, 3, 5, 2), (2, 3, 3, 3, 2), dict(kernel_shape=3, strides=(4, 4, 1), dilations=(6, 6, 1),
                                                padding="SAME", output_shape=(13, 10, 7))),
    "1-D, batch 1, long (cut in segments over the threads)": (
        (1, 300, 3), (3, 5, 2), dict(kernel_shape=5, strides=3, dilations=2, pads=4)),
    "2-D, batch 1, one row of x": (
        (1, 1, 257, 2), (2, 1, 3, 4), dict(kernel_shape=(1, 3), strides=2, pads=(0, 1, 0, 1))),
    "3-D, 1x1x1 kernel (weight gradient split over positions)": ((1, 6, 7, 9, 3), (3, 1, 1, 1, 2),
                                                                  dict(kernel_shape=1)),
}


@needs_kernels
@pytest.mark.parametrize("name", OUTER_AXIS_CASES)
def test_native_maps_against_the_reference(name):
    """Forward, dx and dw in float64 against the reference, on the shapes where the kernels
    enumerate (position, tap) pairs arithmetically (stride and dilation sharing a factor, a long
    kernel on a large stride) and where they cut rows in segments or the weight gradient over
    positions to use every thread."""
    from reference import reference_vjp

    x_shape, w_shape, args = OUTER_AXIS_CASES[name]
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(11)
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        kwargs = dict(args, data_format="NHWC")
        want = reference(x, w, **kwargs)
        gy = rng.standard_normal(want.shape)
        def f(x, w):
            return conv_transpose([x, w], algorithm="native", **kwargs)

        y, vjp = jax.vjp(jax.jit(f), x, w)
        dx, dw = vjp(gy)
        want_dx, want_dw = reference_vjp(x, w, gy, **kwargs)
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw, want_dw, rtol=1e-12, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


GROUP_CASES = {  # NHWC x shape, weight shape (C_in, K.., Cg_out), arguments: 1-16 channels per group
    "3-D, 4 groups 8 -> 8, stride 2": ((1, 4, 5, 6, 32), (32, 3, 3, 3, 8),
                                        dict(kernel_shape=3, strides=2, pads=1, output_padding=(1, 1, 1), group=4)),
    "2-D, 5 groups 8 -> 3": ((2, 5, 7, 40), (40, 2, 2, 3), dict(kernel_shape=2, strides=2, group=5)),
    "2-D, 6 groups 4 -> 8, stride 1": ((1, 6, 9, 24), (24, 3, 3, 8), dict(kernel_shape=3, pads=1, group=6)),
    "3-D, 3 groups 16 -> 16": ((1, 3, 4, 5, 48), (48, 3, 3, 3, 16), dict(kernel_shape=3, strides=2, pads=1, group=3)),
    "2-D, 8 groups 8 -> 16": ((1, 6, 6, 64), (64, 4, 4, 16), dict(kernel_shape=4, strides=2, pads=1, group=8)),
    "1-D, 4 groups 8 -> 8, dilated": ((2, 40, 32), (32, 3, 8), dict(kernel_shape=3, strides=3, dilations=2, group=4)),
    # depthwise (one channel per group): all channels at once, in vectors of channels with the
    # half, quarter and single tails, and three stride-1 taps sharing their rows
    "3-D depthwise, 32 channels": ((1, 5, 6, 9, 32), (32, 3, 3, 3, 1), dict(kernel_shape=3, pads=1, group=32)),
    "2-D depthwise, 29 channels, stride 2": ((2, 5, 6, 29), (29, 3, 3, 1),
                                             dict(kernel_shape=3, strides=2, pads=1, output_padding=(1, 1), group=29)),
    "2-D depthwise 7x7, 24 channels": ((1, 9, 11, 24), (24, 7, 7, 1), dict(kernel_shape=7, pads=3, group=24)),
    "1-D depthwise, 5 channels, dilated": ((2, 30, 5), (5, 5, 1), dict(kernel_shape=5, dilations=2, pads=2, group=5)),
}


def small_group_failures() -> list[str]:
    """The GROUP_CASES in float32 and bfloat16 (forward, dx, dw) against the float64 reference of
    the same rounded values, within the float32 sums' rounding (bfloat16: and the result's)."""
    from reference import reference_vjp

    failures = []
    rng = np.random.default_rng(23)
    for name, (x_shape, w_shape, args) in GROUP_CASES.items():
        kwargs = dict(args, data_format="NHWC")
        for dtype, rel in ((jnp.float32, 0.0), (jnp.bfloat16, 2.0**-8)):
            x, w = (np.asarray(jnp.asarray(rng.standard_normal(s), dtype), np.float64) for s in (x_shape, w_shape))
            want = reference(x, w, **kwargs)
            gy = np.asarray(jnp.asarray(rng.standard_normal(want.shape), dtype), np.float64)
            bounds = [reference(abs(x), abs(w), **kwargs), *reference_vjp(abs(x), abs(w), abs(gy), **kwargs)]

            @jax.jit
            def everything(x, w, gy, kwargs=kwargs):
                y, vjp = jax.vjp(lambda x, w: conv_transpose([x, w], algorithm="native", **kwargs), x, w)
                return y, *vjp(gy)

            got = everything(*(jnp.asarray(v, dtype) for v in (x, w, gy)))
            for what, g, e, bound in zip(("y", "dx", "dw"), got, (want, *reference_vjp(x, w, gy, **kwargs)), bounds):
                error = np.abs(np.asarray(g, np.float64) - e)
                if g.dtype != dtype or not np.all(error <= rel * np.abs(e) + 2.0**-16 * bound):
                    failures.append(f"{name} {jnp.dtype(dtype).name} {what}: off by {error.max():.3g}")
    return failures


@needs_kernels
@pytest.mark.parametrize("isa", [None, *LOWER_VARIANTS])
def test_small_groups_against_the_reference(isa):
    """Grouped layers of 4-16 channels per group (a group's products half a vector wide or less,
    3-8 groups, 1-D to 3-D, strided, dilated) and depthwise ones (5-32 groups of one channel, up to
    7x7): forward, dx and dw in float32 and bfloat16, on this processor's kernels and on the lower
    variants (JAX_DECONV_ISA, in a subprocess). The random sweeps draw 1-40 channels per group and
    seldom these counts, where the kernels' tiles are narrowest or their own."""
    if isa is None:
        assert small_group_failures() == []
        return
    env = _lower_variant_env(isa)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import jax_deconv, test_native; "
            "print(jax_deconv.native_kernels()); print(test_native.small_group_failures())")
    out = subprocess.run([sys.executable, "-c", code, HERE], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    kernels, failures = out.stdout.strip().splitlines()[-2:]
    assert kernels == LOWER_VARIANTS[isa]
    assert failures == "[]", failures


def _geometry(x_shape, w_shape, **args):
    from jax_deconv import conv_transpose_plan
    from jax_deconv._native import Geometry

    plan = conv_transpose_plan(x_shape, w_shape, data_format="NHWC", **args)
    return [int(v) for v in Geometry.of(plan).as_attribute()]


@needs_kernels
def test_batch_1_calls_and_1x1_kernels_are_split_over_every_thread():
    """Forward and dx cut rows into segments when a call has fewer rows than 4 per thread
    (a batch-1 1-D call had one item: one thread); dw splits x's positions between threads
    when there are fewer weight blocks than threads (a 1x1 kernel had one)."""
    from jax_deconv._native import _kernels

    one_d = _geometry((1, 4096, 8), (8, 4, 8), kernel_shape=4, strides=2, pads=1)
    for threads in (2, 8):
        items, segment, _ = _kernels.split("forward", one_d, threads)
        assert items >= 4 * threads and segment * items >= 8192
        items, segment, _ = _kernels.split("dx", one_d, threads)
        assert items >= 4 * threads and segment * items >= 4096
    assert _kernels.split("forward", one_d, 1)[0] == 4  # a row in 4 chunks of at least 16 positions
    big = _geometry((64, 16, 16, 8), (8, 3, 3, 8), kernel_shape=3)
    assert _kernels.split("forward", big, 2)[:2] == (64 * 18, 18)  # enough rows: whole rows
    one_by_one = _geometry((1, 32, 32, 32, 8), (8, 1, 1, 1, 8), kernel_shape=1)
    tasks, _, blocks = _kernels.split("dw", one_by_one, 2)
    assert (tasks, blocks) == (2, 2)
    tasks, _, blocks = _kernels.split("dw", _geometry((1, 8, 8, 8, 8), (8, 3, 3, 3, 8), kernel_shape=3), 2)
    assert (tasks, blocks) == (2, 1)  # 27 weight blocks: one task per thread, no partial sums


def test_auto_leaves_runs_of_tiny_products_to_xla():
    """A kernel of 1024 taps on the first axis of a one-channel 2-D call: the native kernels would
    run 2 M matrix products of one multiply-add each (16 ns apiece: 32 ms where 'gemm' takes
    1 ms); 'auto' takes the XLA choice. An ordinary layer keeps the kernels, and so does a
    depthwise one (counted per group, its 221,184 runs of 16 multiply-adds were left to XLA)."""
    from jax_deconv import choose_algorithm, conv_transpose_plan

    plan = conv_transpose_plan((1, 2000, 1, 1), (1, 1024, 1, 1), kernel_shape=(1024, 1), strides=(256, 1),
                               data_format="NHWC")
    assert choose_algorithm(plan, "float32", "cpu") == "gemm"
    layer = conv_transpose_plan((1, 16, 16, 16, 32), (32, 3, 3, 3, 32), kernel_shape=3, strides=2,
                                data_format="NHWC")
    assert choose_algorithm(layer, "float32", "cpu") == ("native" if NATIVE else "gemm")
    # depthwise, 32 groups of one channel: the kernels take the 32 at once, one run per (position
    # of the outer axes, tap), not 32 runs of one multiply-add per position
    depthwise = conv_transpose_plan((1, 16, 16, 16, 32), (32, 3, 3, 3, 1), kernel_shape=3, strides=2, pads=1,
                                    output_padding=(1, 1, 1), group=32, data_format="NHWC")
    assert choose_algorithm(depthwise, "float32", "cpu") == ("native" if NATIVE else "gemm")
