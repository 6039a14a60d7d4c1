"""Reliability round 3 (issue 16): batch 0, compile size, dtype rules, messages and entry points.

The sharding classes (a wrong weight gradient under explicit sharding, crashes inside
``jax.set_mesh``) need 8 devices and live in ``multidevice_cases.py``. Oracles: the NumPy
reference for values, the arguments' names and limits for messages.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference
from support import ALGORITHMS

import jax_deconv
from jax_deconv import (
    ConvTranspose3d,
    choose_algorithm,
    conv1d_transpose,
    conv2d_transpose,
    conv3d_transpose,
    conv_transpose,
    conv_transpose_plan,
    functional,
    onnx_conv_transpose,
)
from jax_deconv import lax as dlax
from jax_deconv._cost import choose

# ---------------------------------------------------------------- 2. batch 0

EMPTY_CASES = {  # name: (x shape NCHW, kernel, arguments)
    "k3 s2": ((0, 4, 3, 3), 3, dict(strides=2)),
    "k2 s2 (one phase tap)": ((0, 4, 3, 3), 2, dict(strides=2)),
    "k3 s2 d2 (phases)": ((0, 4, 3, 3), 3, dict(strides=2, dilations=2)),
    "k3 s1 p1": ((0, 4, 5, 5), 3, dict(pads=1)),
}
EMPTY_RUNS = [(name, layout, algorithm) for i, name in enumerate(EMPTY_CASES) for layout in ("NCHW", "NHWC")
              for algorithm in ("auto", *ALGORITHMS, "gemm-steps")
              if algorithm in ("auto", "gemm", "gemm-steps", "phases") or i % 2 == (layout == "NHWC")]


@pytest.mark.parametrize("name,layout,algorithm", EMPTY_RUNS)
def test_batch_0_gives_an_empty_output_and_zero_gradients(name, layout, algorithm):
    x_shape, k, args = EMPTY_CASES[name]
    w_shape = (4, 3, k, k) if layout == "NCHW" else (4, k, k, 3)
    if layout == "NHWC":
        x_shape = (0, *x_shape[2:], x_shape[1])
    kwargs = dict(kernel_shape=k, data_format=layout, **args)
    want = reference(np.ones(x_shape), np.ones(w_shape), np.ones(3), **kwargs)
    assert want.shape[0] == 0
    if algorithm == "gemm-steps":  # the smallest step 'gemm' accepts
        kwargs.update(algorithm="gemm", max_buffer_bytes=1)
    else:
        kwargs.update(algorithm=algorithm)

    def loss(x, w, b):
        return jnp.sum(conv2d_transpose([x, w, b], **kwargs) ** 2)

    x, w, b = jnp.ones(x_shape), jnp.ones(w_shape), jnp.ones(3)
    y = conv2d_transpose([x, w, b], **kwargs)
    assert y.shape == want.shape
    for grads in (jax.grad(loss, (0, 1, 2))(x, w, b), jax.jit(jax.grad(loss, (0, 1, 2)))(x, w, b)):
        assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]
        assert all(not np.any(np.asarray(g)) for g in grads)


def test_batch_0_in_layers_and_drop_ins():
    layer = ConvTranspose3d.init(jax.random.key(0), 4, 2, kernel_shape=3, strides=2)
    assert layer(jnp.ones((0, 4, 2, 2, 2))).shape == (0, 2, 5, 5, 5)
    dw = jax.grad(lambda layer: jnp.sum(layer(jnp.ones((0, 4, 2, 2, 2)))))(layer)
    assert not np.any(np.asarray(dw.weight)) and not np.any(np.asarray(dw.bias))
    assert functional.conv_transpose2d(jnp.ones((0, 4, 3, 3)), jnp.ones((4, 3, 3, 3)), stride=2).shape == (0, 3, 7, 7)
    assert dlax.conv_transpose(jnp.ones((0, 3, 3, 4)), jnp.ones((3, 3, 4, 2)), (2, 2), "SAME").shape == (0, 6, 6, 2)


# ---------------------------------------------------------------- 3. compile size


COMPILE_SIZE_CASES = {  # long or dilated kernels on short inputs: thousands of taps to unroll
    "1-D k4096 on one position": ((1, 1, 1), (1, 1, 4096), dict(kernel_shape=4096)),
    "3-D k10 d2 on 6^3": ((1, 1, 6, 6, 6), (1, 1, 10, 10, 10), dict(kernel_shape=10, dilations=2)),
}


@pytest.mark.parametrize("name", COMPILE_SIZE_CASES)
def test_auto_keeps_compile_size_small(name):
    """'auto' never unrolls thousands of ops: the gradient's HLO stays short (the per-tap
    lowering it once chose emitted four ops per tap) and the answer is the definition's."""
    x_shape, w_shape, kwargs = COMPILE_SIZE_CASES[name]
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
    plan = conv_transpose_plan(x_shape, w_shape, **kwargs)
    # 'auto' here, and the XLA lowerings it takes without the native kernels on CPU and on GPU
    for algorithm in {"auto", choose(plan, 4, "cpu").algorithm, choose(plan, 4, "gpu").algorithm}:

        def grad(x, w, algorithm=algorithm):
            loss = lambda x, w: jnp.sum(conv_transpose([x, w], **kwargs, algorithm=algorithm) ** 2)  # noqa: E731
            return jax.grad(loss, (0, 1))(x, w)

        hlo = jax.jit(grad).lower(x, w).as_text()
        assert len(hlo.splitlines()) < 400, (algorithm, len(hlo.splitlines()))
        y = conv_transpose([x, w], **kwargs, algorithm=algorithm)
        np.testing.assert_allclose(y, reference(x, w, **kwargs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: conv1d_transpose([jnp.ones((1, 1, 1)), jnp.ones((1, 1, 8192))], kernel_shape=8192, algorithm="taps"),
         r"conv1d_transpose: algorithm='taps' would need 32768 ops to unroll \(limit 4096\); "
         r"algorithm='auto'(, 'conv' or 'native'| or 'conv') computes it"),
        (lambda: conv1d_transpose([jnp.ones((1, 1, 1)), jnp.ones((1, 1, 8192))], kernel_shape=8192, algorithm="gemm"),
         r"algorithm='gemm' would need 8193 ops to unroll \(limit 4096\)"),
        (lambda: conv3d_transpose([jnp.ones((1, 1, 2, 2, 2)), jnp.ones((1, 1, 2, 2, 2))], kernel_shape=2,
                                  dilations=1000, pads=497, algorithm="conv"),
         r"conv3d_transpose: algorithm='conv' would build a phase-form buffer of 4096770048 bytes .* for a call "
         r"whose x \+ weight \+ y hold 2112 bytes; algorithm='auto', 'phases'(,| or) 'taps'( or 'native')? "
         r"computes it"),
    ],
)
def test_explicit_choices_past_their_caps_are_refused_by_name(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_auto_computes_what_the_refused_choices_would_not():
    x, w = np.ones((1, 1, 2, 2, 2), np.float32), np.arange(8, dtype=np.float32).reshape(1, 1, 2, 2, 2)
    args = dict(kernel_shape=2, dilations=1000, pads=497)
    np.testing.assert_allclose(conv3d_transpose([x, w], **args), reference(x, w, **args))


# ---------------------------------------------------------------- 5. dtype rules


@pytest.mark.parametrize("algorithm", ["auto", *ALGORITHMS])
def test_narrower_preferred_element_type_is_refused_by_every_algorithm(algorithm):
    x, w = jnp.ones((1, 2, 4, 4)), jnp.ones((2, 2, 3, 3))
    with pytest.raises(TypeError, match=r"conv2d_transpose: `preferred_element_type` must be at least as wide "
                                        r"as the inputs' dtype float32 .*got bfloat16"):
        conv2d_transpose([x, w], strides=2, preferred_element_type=jnp.bfloat16, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_16_bit_inputs_accumulate_in_float32(algorithm):
    """bfloat16, a 256-tap kernel: within a few roundings of the exact answer of the rounded
    inputs (adding 256 products in bfloat16, as 'taps' once did, gave 6e-2)."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((1, 8, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((8, 4, 256)), jnp.bfloat16)
    y = conv1d_transpose([x, w], kernel_shape=256, algorithm=algorithm)
    want = reference(np.asarray(x, np.float64), np.asarray(w, np.float64), kernel_shape=256)
    assert y.dtype == jnp.bfloat16
    assert np.linalg.norm(np.asarray(y, np.float64) - want) / np.linalg.norm(want) < 5e-3


# ---------------------------------------------------------------- 6. messages and entry points


@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda: functional.conv_transpose2d(None, jnp.ones((2, 2, 3, 3))), TypeError,
         r"conv_transpose2d: `input` must be an array; got None"),
        (lambda: functional.conv_transpose2d(jnp.ones((1, 2, 3, 3), jnp.int32), jnp.ones((2, 2, 3, 3))), TypeError,
         r"conv_transpose2d: `input` must have a floating dtype .*got int32"),
        (lambda: conv2d_transpose([jnp.ones((1, 16, 2, 100000)), jnp.ones((16, 1, 3, 3))], algorithm="gemm"),
         ValueError, r"algorithm='gemm' would need an im2col step of \d+ bytes .*the limit in force, the default "
                     r"\(33554432 bytes\)"),
        (lambda: conv2d_transpose([jnp.ones((1, 2, 4, 4)), jnp.ones((2, 2, 3, 3))], precision={}), TypeError,
         r"conv2d_transpose: `precision` must be None, a jax.lax.Precision .*got \{\}"),
        (lambda: conv2d_transpose([jnp.ones((1, 2, 4, 4)), jnp.ones((2, 2, 3, 3))], precision="foo"), ValueError,
         r"conv2d_transpose: `precision` must be .*got 'foo'"),
        (lambda: onnx_conv_transpose([jnp.ones((1, 1, 3)), jnp.ones((1, 1, 2))], auto_pad=b"\xff"), ValueError,
         r"onnx_conv_transpose: `auto_pad` must be one of 'NOTSET', .*got b'\\xff'"),
        (lambda: ConvTranspose3d(weight=jnp.ones((8, 4, 3, 3, 3)), bias=None, kernel_shape=4), ValueError,
         r"ConvTranspose3d: `weight` must have shape \(C_in, C_out/group, \*kernel\) with kernel \(4, 4, 4\)"),
        (lambda: ConvTranspose3d(weight=jnp.ones((8, 4, 4, 4, 4)), bias=jnp.ones(3), kernel_shape=4), ValueError,
         r"ConvTranspose3d: `bias` must have shape \(C_out,\) = \(4,\); got shape \(3,\)"),
        (lambda: ConvTranspose3d(weight=jnp.ones((8, 4, 4, 4, 4)), bias=None, kernel_shape=4, pads=-1), ValueError,
         r"ConvTranspose3d: `pads` must be a non-negative int"),
    ],
)
def test_messages_name_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_choose_algorithm_validates_its_arguments():
    plan = conv_transpose_plan((2, 32, 16, 16, 16), (32, 16, 4, 4, 4), kernel_shape=4, strides=2)
    assert choose_algorithm(plan, "float32", "CPU") == choose_algorithm(plan, "float32", "cpu") != "conv"
    assert choose_algorithm(plan, "float32", "Cuda") == "conv"
    cases = [
        (dict(backend="foo"), ValueError, r"choose_algorithm: `backend` must be None or one of \('cpu', 'gpu'"),
        (dict(max_buffer_bytes=0), ValueError, r"choose_algorithm: `max_buffer_bytes` must be between 1 and"),
        (dict(max_buffer_bytes=1.5), TypeError, r"choose_algorithm: `max_buffer_bytes` must be None or an int"),
        (dict(dtype="foo"), TypeError, r"choose_algorithm: `dtype` must be a floating dtype .*got 'foo'"),
        (dict(plan="plan"), TypeError, r"choose_algorithm: `plan` must be a Plan"),
    ]
    for change, exc, pattern in cases:
        kwargs = {"plan": plan, "dtype": "float32", **change}
        with pytest.raises(exc, match=pattern):
            choose_algorithm(**kwargs)


# ---------------------------------------------------------------- round 4: messages


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: conv1d_transpose([jnp.ones((1, 2, 3), jnp.float8_e4m3fn), jnp.ones((2, 1, 3), jnp.float8_e5m2)]),
         r"conv1d_transpose: `inputs` have dtypes with no common dtype to compute in \(x float8_e4m3fn, weight "
         r"float8_e5m2\).*cast them to one dtype"),
        (lambda: conv1d_transpose([jnp.ones((1, 2, 3), jnp.bfloat16), jnp.ones((2, 1, 3), jnp.float8_e4m3fn)]),
         r"`inputs` have dtypes with no common dtype .*\(x bfloat16, weight float8_e4m3fn\)"),
        (lambda: functional.conv_transpose1d(jnp.ones((1, 2, 3), jnp.float8_e4m3fn), jnp.ones((2, 1, 3)),
                                             bias=jnp.ones(1, jnp.float8_e5m2)),
         r"conv_transpose1d: `inputs` have dtypes with no common dtype .*bias float8_e5m2"),
        (lambda: conv1d_transpose([jnp.ones((1, 2, 3), jnp.bfloat16), jnp.ones((2, 1, 3), jnp.bfloat16)],
                                  preferred_element_type=jnp.float8_e4m3fn),
         r"conv1d_transpose: `preferred_element_type` must be at least as wide as the inputs' dtype bfloat16"),
    ],
)
def test_float8_mixes_are_refused_naming_the_inputs(call, pattern):
    """JAX's own TypePromotionError named no argument."""
    with pytest.raises(TypeError, match=pattern):
        call()


@pytest.mark.parametrize("layout,w_shape,axis", [("NCHW", (2, 0, 3), 1), ("NHWC", (2, 3, 0), 2)])
def test_weight_with_no_output_channels_says_so(layout, w_shape, axis):
    x = jnp.ones((1, 2, 4)) if layout == "NCHW" else jnp.ones((1, 4, 2))
    with pytest.raises(ValueError, match=rf"conv1d_transpose: `weight` has shape \({w_shape[0]}, .*axis {axis} "
                                         r"\(C_out/group .*\) is 0; the output channels per group must be at least 1"):
        conv1d_transpose([x, jnp.ones(w_shape)], data_format=layout)


def test_halo_axis_name_given_as_a_list_is_refused_by_name():
    from jax_deconv import conv_transpose_halo

    with pytest.raises(TypeError, match=r"conv_transpose_halo: `axis_name` must be a mesh axis name .*got list "
                                        r"\['z'\]: pass \('z',\)"):
        conv_transpose_halo([jnp.ones((1, 2, 4)), jnp.ones((2, 1, 3))], axis_name=["z"])


@pytest.mark.parametrize("algorithm", ["native", "gemm"])
def test_explicit_algorithms_export_with_a_symbolic_spatial_size(algorithm):
    """They failed inside the cost model (JAX's InconclusiveDimensionOperation): the exported
    program (the XLA lowering for 'native'; 'gemm' without steps) gives the eager answer."""
    from jax import export

    if algorithm == "native" and "native" not in ALGORITHMS:
        pytest.skip("the native kernels are not built here")

    def f(x, w):
        return jnp.sum(conv2d_transpose([x, w], kernel_shape=3, strides=2, pads=1, algorithm=algorithm) ** 2)

    g = jax.jit(jax.value_and_grad(f, (0, 1)))
    x = jax.ShapeDtypeStruct(export.symbolic_shape("n, 4, h, 6"), jnp.float32)
    exported = export.export(g)(x, jax.ShapeDtypeStruct((4, 2, 3, 3), jnp.float32))
    rng = np.random.default_rng(8)
    xv, wv = rng.standard_normal((2, 4, 5, 6)).astype(np.float32), rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    for got, want in zip(jax.tree.leaves(exported.call(xv, wv)), jax.tree.leaves(g(xv, wv))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not jax_deconv.native_kernels(), reason="the native kernels are not built here")
def test_isa_request_by_the_names_the_library_prints():
    """JAX_DECONV_ISA takes every name native_kernels() reports ('x86-64 baseline' was ignored)
    and warns, naming the value, when it names none or one that cannot run here."""
    code = "import jax_deconv; print(jax_deconv.native_kernels())"

    def run(value: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, JAX_DECONV_ISA=value)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)

    running = jax_deconv.native_kernels()
    out = run(running)
    assert out.stdout.strip() == running and "RuntimeWarning" not in out.stderr
    if running != "portable C++":
        out = run("x86-64 baseline")
        assert out.stdout.strip() == "x86-64 baseline" and "RuntimeWarning" not in out.stderr, out.stderr
    out = run("avx-9000")
    assert out.stdout.strip() == running
    assert "JAX_DECONV_ISA='avx-9000' names no instruction set of the native kernels" in out.stderr
    assert f"running {running!r}" in out.stderr
    if running != "portable C++":
        out = run("portable C++")
        assert "JAX_DECONV_ISA='portable C++': the native kernels cannot run it" in out.stderr


def test_export_with_symbolic_spatial_size_and_output_shape_is_refused_by_name():
    from jax import export

    def f(x, w):
        return conv2d_transpose([x, w], strides=2, output_shape=(8, 8))

    x = jax.ShapeDtypeStruct(export.symbolic_shape("n, 2, h, 4"), jnp.float32)
    w = jax.ShapeDtypeStruct((2, 2, 3, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"conv2d_transpose: `output_shape` \(=\[8, 8\]\) needs the input's spatial "
                                         r"sizes, which are symbolic \(h on spatial axis 0"):
        export.export(jax.jit(f))(x, w)


def test_layer_built_around_existing_arrays_is_normalised():
    rng = np.random.default_rng(3)
    w, b, x = rng.standard_normal((8, 4, 4, 4, 4)), rng.standard_normal(4), rng.standard_normal((1, 8, 3, 3, 3))
    layer = ConvTranspose3d(weight=jnp.asarray(w), bias=jnp.asarray(b), kernel_shape=4, strides=2, pads=1)
    assert (layer.kernel_shape, layer.strides, layer.pads) == ((4, 4, 4), (2, 2, 2), (1,) * 6)
    want = reference(x, w, b, kernel_shape=4, strides=2, pads=1)
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-4)
    stack = jax.vmap(lambda k: ConvTranspose3d.init(k, 8, 4, 4, strides=2))(jax.random.split(jax.random.key(0), 3))
    assert stack.weight.shape == (3, 8, 4, 4, 4, 4)  # JAX rebuilds stacked layers without the shape check


def test_layer_repr_shows_shapes_not_values():
    layer = ConvTranspose3d.init(jax.random.key(0), 64, 32, kernel_shape=4, strides=2, pads=1, data_format="NHWC")
    text = repr(layer)
    assert text == ("ConvTranspose3d(weight=float32[64,4,4,4,32], bias=float32[32], kernel_shape=(4, 4, 4), "
                    "strides=(2, 2, 2), pads=(1, 1, 1, 1, 1, 1), data_format='NHWC')")


def test_framework_adapters_load_on_attribute_access():
    pytest.importorskip("flax")
    pytest.importorskip("equinox")
    code = (
        "import sys, jax_deconv\n"
        "before = sorted(m for m in ('flax', 'equinox') if m in sys.modules)\n"
        "names = [jax_deconv.flax.nnx.ConvTranspose.__name__, jax_deconv.flax.linen.ConvTranspose.__name__,\n"
        "         jax_deconv.equinox.ConvTranspose3d.__name__]\n"
        "print(before, names)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] ['ConvTranspose', 'ConvTranspose', 'ConvTranspose3d']"
    with pytest.raises(AttributeError, match=r"module 'jax_deconv' has no attribute 'nope'"):
        _ = jax_deconv.nope  # pyright: ignore[reportAttributeAccessIssue]


def test_self_check_help_and_progress(capsys, monkeypatch):
    from jax_deconv import __main__ as selfcheck

    with pytest.raises(SystemExit):
        selfcheck.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "jax-deconv" in text
    cases = list(selfcheck.golden_cases())[:10]
    monkeypatch.setattr(selfcheck, "golden_cases", lambda: iter(cases))
    assert selfcheck.main([]) == 0
    assert "10/10 checked" in capsys.readouterr().out


def test_installed_command_is_the_self_check():
    script = os.path.join(os.path.dirname(sys.executable), "jax-deconv")
    if not os.path.exists(script):
        pytest.skip("the jax-deconv command is not installed in this environment")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Self-check of jax_deconv" in out.stdout


def test_missing_kernels_are_reported_with_a_remedy_and_warned_once(monkeypatch):
    """Without the kernels (simulated): native_kernels_unavailable() says why and what to do,
    the first CPU call that falls back to XLA warns once, later ones do not, and the answer is
    still right; with them it is None."""
    import warnings

    from jax_deconv import _native

    if jax_deconv.native_kernels() is not None:
        assert jax_deconv.native_kernels_unavailable() is None
    monkeypatch.setattr(_native, "AVAILABLE", False)
    monkeypatch.setattr(_native, "UNAVAILABLE_BECAUSE", "they were not built (simulated)")
    monkeypatch.setattr(_native, "_warned", [])
    why = jax_deconv.native_kernels_unavailable()
    assert why is not None and why.startswith("they were not built (simulated); ") and "C++ compiler" in why
    x, w = jnp.ones((1, 2, 3, 3)), jnp.ones((2, 1, 2, 2))
    with pytest.warns(RuntimeWarning, match=r"native CPU kernels are not available.*C\+\+ compiler"):
        y = jax_deconv.conv2d_transpose([x, w], kernel_shape=2, strides=2)
    assert float(y.sum()) == 72.0  # 36 outputs, each the sum of 2 channels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax_deconv.conv2d_transpose([x, w], kernel_shape=2, strides=2)
        jax_deconv.lax.conv_general_dilated(x, jnp.ones((1, 2, 2, 2)), (1, 1), "SAME")
