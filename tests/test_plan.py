"""Shape inference: rows worked out by hand from docs/semantics.md, one comment per rule."""

from __future__ import annotations

import os

import jax
import pytest

from jax_deconv import Plan, conv_transpose_plan

ROWS = [
    # x spatial, K, s, d, kwargs, expected (out, pad_begin, pad_end)
    # explicit pads: O = s(S-1) + d(K-1) + 1 - b - e
    ((5,), 4, 2, 1, dict(pads=1), ((10,), (1,), (1,))),
    # 2n pads: all begins, then all ends
    ((5, 3), (4, 3), 2, 1, dict(pads=(0, 2, 1, 0)), ((11, 5), (0, 2), (1, 0))),
    # output_padding grows the end: a negative pad_end is a zero tail
    ((3,), 3, 2, 1, dict(pads=1, output_padding=(1,)), ((6,), (1,), (0,))),
    ((3,), 1, 1, 1, dict(output_padding=(2,)), ((5,), (0,), (-2,))),
    # dilation: L = s(S-1) + d(K-1) + 1 = 2*2 + 2*2 + 1 = 9
    ((3,), 3, 2, 2, dict(), ((9,), (0,), (0,))),
    # SEMANTICS worked example: L = 8, O = 5, total 3
    ((3,), 4, 2, 1, dict(padding="SAME_UPPER", output_shape=(5,)), ((5,), (1,), (2,))),
    ((3,), 4, 2, 1, dict(padding="SAME_LOWER", output_shape=(5,)), ((5,), (2,), (1,))),
    ((3,), 4, 2, 1, dict(padding="SAME", output_shape=(5,)), ((5,), (2,), (1,))),
    # VALID + output_shape switches to SAME; user pads are ignored in this mode
    ((3,), 4, 2, 1, dict(output_shape=(5,), pads=7), ((5,), (2,), (1,))),
    # output_padding raises the reachable maximum but does not enter the total (unlike ONNX)
    ((2,), 1, 1, 1, dict(output_shape=(3,), output_padding=(1,)), ((3,), (0,), (-1,))),
    ((3,), 4, 2, 1, dict(padding="SAME_UPPER", output_shape=(7,), output_padding=(1,)), ((7,), (0,), (1,))),
]


@pytest.mark.parametrize("size,k,s,d,kwargs,expected", ROWS)
def test_rows(size, k, s, d, kwargs, expected):
    n = len(size)
    plan = conv_transpose_plan((2, 3, *size), (3, 4, *([k] * n if isinstance(k, int) else k)),
                               kernel_shape=k, strides=s, dilations=d, **kwargs)
    assert (plan.out_spatial, plan.pad_begin, plan.pad_end) == expected
    assert plan.out_shape == (2, 4, *expected[0])


def test_nhwc_and_groups_shapes():
    plan = conv_transpose_plan((2, 5, 6, 8), (8, 3, 3, 2), (4,), kernel_shape=3, strides=2, group=2,
                               data_format="NHWC")
    assert plan.out_shape == (2, 11, 13, 4)
    assert plan.weight_shape == (8, 3, 3, 2)


def test_plan_is_frozen_and_hashable():
    a = conv_transpose_plan((1, 2, 3), (2, 2, 3), kernel_shape=3)
    b = conv_transpose_plan((1, 2, 3), (2, 2, 3), kernel_shape=(3,))
    assert isinstance(a, Plan) and a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.group = 2  # type: ignore[misc]


def test_plan_module_imports_no_jax():
    """``_plan`` (and ``_types``, which it imports) load without JAX: the package's
    ``__init__`` is bypassed by an empty package object pointing at the same directory."""
    import subprocess
    import sys

    import jax_deconv

    folder = os.path.dirname(jax_deconv.__file__)
    code = ("import importlib, sys, types; pkg = types.ModuleType('jax_deconv'); "
            f"pkg.__path__ = [{folder!r}]; sys.modules['jax_deconv'] = pkg; "
            "m = importlib.import_module('jax_deconv._plan'); "
            "print('jax' in sys.modules, m.full_length(3, 4, 2, 1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "8"]


def test_eval_shape_agrees_with_plan():
    plan = conv_transpose_plan((1, 3, 4, 5), (3, 2, 2, 3), kernel_shape=(2, 3), strides=(3, 2), pads=(1, 0, 0, 2),
                               output_padding=(2, 1), group=1)
    from jax_deconv import conv2d_transpose

    x = jax.ShapeDtypeStruct((1, 3, 4, 5), "float32")
    w = jax.ShapeDtypeStruct((3, 2, 2, 3), "float32")
    out = jax.eval_shape(lambda x, w: conv2d_transpose([x, w], kernel_shape=(2, 3), strides=(3, 2),
                                                       pads=(1, 0, 0, 2), output_padding=(2, 1)), x, w)
    assert out.shape == plan.out_shape == (1, 2, 12, 10)


@pytest.mark.parametrize("kernel,stride,dilation", [(3, 2, 1), (3, 2, 2), (5, 2, 1), (4, 3, 2), (3, 4, 6), (2, 1, 3)])
def test_phase_taps_split_the_kernel_by_full_position(kernel, stride, dilation):
    """Tap q lands at full position d*q = s*a + r: phase r, phase tap a, so offset taps-1-a in the
    flipped correlation (stride 1: one phase, offset d*(K-1-q)); every tap in exactly one phase."""
    from jax_deconv._plan import phase_taps

    plan = conv_transpose_plan((1, 1, 4), (1, 1, kernel), kernel_shape=kernel, strides=stride, dilations=dilation)
    phases = phase_taps(plan)[0]
    seen = sorted(q for taps in phases for _, q in taps)
    assert seen == list(range(kernel))
    if stride == 1:
        assert phases == (tuple((dilation * (kernel - 1 - q), q) for q in range(kernel)),)
        return
    taps = -(-(dilation * (kernel - 1) + 1) // stride)
    assert len(phases) == stride
    for r, phase in enumerate(phases):
        assert sorted(phase, key=lambda t: t[1]) == [
            (taps - 1 - dilation * q // stride, q) for q in range(kernel) if dilation * q % stride == r
        ]
