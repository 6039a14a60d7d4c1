"""``jax_deconv.lax.conv_transpose`` against the installed ``jax.lax.conv_transpose``.

Oracles: lax itself (forward and gradients, float64) wherever it accepts the call; for
groups, ``lax.conv_general_dilated`` with ``lhs_dilation`` (what lax.conv_transpose runs) and
the VJP of the grouped forward convolution; where lax refuses, the NumPy reference.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference
from support import lax_case, load_ported

from jax_deconv import lax as dlax


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def forward_and_grads(fn, lhs, rhs, gy_seed=0):
    y, vjp = jax.vjp(fn, jnp.asarray(lhs), jnp.asarray(rhs))
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape)
    return (y, *vjp(jnp.asarray(gy)))


def assert_all_close(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(12))
def test_random_against_lax(seed):
    lhs, rhs, kwargs = lax_case(seed)
    try:
        jax.eval_shape(lambda a, b: jax.lax.conv_transpose(a, b, **kwargs), lhs, rhs)
    except ValueError as e:  # the one refusal lax makes on valid inputs; see the next test
        assert "Negative padding is larger" in str(e)
        pytest.skip("lax refuses this negative padding")
    want = forward_and_grads(lambda a, b: jax.lax.conv_transpose(a, b, **kwargs), lhs, rhs, seed)
    got = forward_and_grads(lambda a, b: dlax.conv_transpose(a, b, **kwargs), lhs, rhs, seed)
    assert_all_close(got, want)


def window_reference(x, k, stride, crops):
    """The full transposed convolution (NumPy reference), cropped; zeros outside it."""
    full = reference(x, k, kernel_shape=k.shape[2:], strides=stride)  # (N, C_out, L)
    (begin, end), length = crops[0], full.shape[2]
    out = np.zeros((*full.shape[:2], max(length - begin - end, 0)))
    for o in range(out.shape[2]):
        if 0 <= begin + o < length:
            out[:, :, o] = full[:, :, begin + o]
    return out


@pytest.mark.parametrize("padding", [((-12, 14),), ((8, -6),), ((-9, -2),), ((15, 0),), ((-6, -6),), ((-7, -4),)])
def test_negative_and_large_padding_against_the_definition(padding):
    """Every padding is the definition cropped; lax agrees where it runs and refuses some (last test)."""
    rng = np.random.default_rng(1)
    x, k = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 2, 3))  # NCH, transpose_kernel (C_in, C_out, K)
    args = dict(strides=(3,), padding=padding, dimension_numbers=("NCH", "OIH", "NCH"), transpose_kernel=True)
    got = dlax.conv_transpose(x, k, **args)
    lo, hi = padding[0]
    np.testing.assert_allclose(got, window_reference(x, k, 3, [(3 - 1 - lo, 3 - 1 - hi)]), atol=1e-12)
    try:
        want = jax.lax.conv_transpose(x, k, **args)
    except ValueError as e:
        assert "Negative padding is larger" in str(e)
    else:
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_lax_refuses_what_we_answer():
    x, k = np.ones((2, 3, 4)), np.ones((3, 2, 3))
    args = dict(strides=(3,), padding=((-6, -6),), dimension_numbers=("NCH", "OIH", "NCH"), transpose_kernel=True)
    with pytest.raises(ValueError, match="Negative padding is larger"):
        jax.lax.conv_transpose(x, k, **args)
    assert dlax.conv_transpose(x, k, **args).shape == (2, 2, 0)


@pytest.mark.parametrize("seed", range(8))
def test_groups_against_grouped_lax_convolutions(seed):
    groups = 2 + seed % 2
    lhs, rhs, kwargs = lax_case(100 + seed, groups=groups)
    kwargs["padding"] = [(1, 2)] * lhs.ndim if isinstance(kwargs["padding"], str) else kwargs["padding"]
    kwargs["padding"] = kwargs["padding"][: lhs.ndim - 2]
    kwargs["use_consistent_padding"] = False
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs["dimension_numbers"] or
                                        {3: ("NHC", "HIO", "NHC"), 4: ("NHWC", "HWIO", "NHWC"),
                                         5: ("NHWDC", "HWDIO", "NHWDC")}[lhs.ndim])
    pads, strides, dil = kwargs["padding"], kwargs["strides"], kwargs["rhs_dilation"]

    def grouped_lax(a, b):
        if not kwargs["transpose_kernel"]:  # correlation of the dilated input, groups as lax defines them
            return jax.lax.conv_general_dilated(a, b, (1,) * len(strides), pads, strides, dil, dn,
                                                feature_group_count=groups)
        # transposed kernel: the input gradient of the grouped forward convolution with kernel b
        kernel = [b.shape[i] for i in dn.rhs_spec[2:]]
        fwd_pads = [(d * (kk - 1) - lo, d * (kk - 1) - hi) for kk, d, (lo, hi) in zip(kernel, dil, pads)]
        spatial = [a.shape[i] for i in dn.lhs_spec[2:]]
        out_sizes = [s * (n - 1) + 1 + lo + hi - d * (kk - 1) for s, n, (lo, hi), d, kk in
                     zip(strides, spatial, pads, dil, kernel)]
        c_out = b.shape[dn.rhs_spec[1]] * groups
        canonical = [a.shape[dn.lhs_spec[0]], c_out, *out_sizes]
        shape = [0] * a.ndim
        for c, axis in enumerate(dn.out_spec):
            shape[axis] = canonical[c]
        conv = lambda z: jax.lax.conv_general_dilated(z, b, strides, fwd_pads, None, dil,  # noqa: E731
                                                      jax.lax.ConvDimensionNumbers(dn.out_spec, dn.rhs_spec,
                                                                                   dn.lhs_spec),
                                                      feature_group_count=groups)
        return jax.vjp(conv, jnp.zeros(shape))[1](a)[0]

    ours = lambda a, b: dlax.conv_transpose(a, b, **kwargs, feature_group_count=groups)  # noqa: E731
    try:
        if min(jax.eval_shape(grouped_lax, lhs, rhs).shape) == 0:
            pytest.skip("empty output")
    except ValueError as e:  # lax's own refusal of large negative padding
        assert "Negative padding is larger" in str(e)
        pytest.skip("lax refuses this negative padding")
    assert_all_close(forward_and_grads(ours, lhs, rhs, seed), forward_and_grads(grouped_lax, lhs, rhs, seed))


def lax_grid_cases():
    """The parameter grids of jax's own lax_test.py, sampled evenly (the 2-D grids hold 19,920
    configurations each and the 1-D grid 288; jax's test samples them too); the 0-D grid runs whole."""
    grids = load_ported()["jax_lax_grids"]
    cases = []
    for name, g in grids.items():
        paddings = list(g["pad_strings"])
        if g["pad_values"]:
            pairs = list(itertools.product(g["pad_values"], repeat=2))
            paddings += [list(p) for p in itertools.product(pairs, repeat=2)]
        combos = list(itertools.product(g["b"], g["i"], g["j"], g["k"] or [None], g["strides"], paddings,
                                        g["rhs_dilation"]))
        step = 1 if len(combos) <= 40 else len(combos) // 12
        cases += [(name, g, c) for c in combos[::step]]
    return cases


GRID = lax_grid_cases()


@pytest.mark.parametrize("name,grid,combo", GRID, ids=[f"{c[0]}-{i}" for i, c in enumerate(GRID)])
def test_jax_lax_test_grids(name, grid, combo):
    b, i, j, k, strides, padding, dilation = combo
    lhs_shape = eval(grid["lhs"], {}, dict(b=b, i=i, j=j, k=k))  # shape templates such as "(b, 9, 10, i)"
    rhs_shape = eval(grid["rhs"], {}, dict(b=b, i=i, j=j, k=k))
    rng = np.random.default_rng(len(GRID))
    lhs, rhs = rng.standard_normal(lhs_shape), rng.standard_normal(rhs_shape)
    padding = padding if isinstance(padding, str) else [tuple(p) for p in padding]
    kwargs = dict(strides=tuple(strides), padding=padding, rhs_dilation=None if dilation is None else tuple(dilation),
                  dimension_numbers=tuple(grid["dimension_numbers"]), transpose_kernel=grid["transpose_kernel"])
    if grid["use_consistent_padding"]:
        kwargs["use_consistent_padding"] = True
    want = forward_and_grads(lambda a, c: jax.lax.conv_transpose(a, c, **kwargs), lhs, rhs)
    got = forward_and_grads(lambda a, c: dlax.conv_transpose(a, c, **kwargs), lhs, rhs)
    assert_all_close(got, want)


def test_grid_sizes():
    """How many cases each ported grid contributes (quoted in the README)."""
    counts = {name: sum(1 for case in GRID if case[0] == name) for name in load_ported()["jax_lax_grids"]}
    assert counts == {"ConvTranspose2DT": 12, "ConvTranspose2D": 12, "ConvTranspose1D": 12, "ConvTranspose0D": 32}


BAD = [
    (dict(padding="FULL"), ValueError, r"`padding` must be 'SAME', 'VALID' or a sequence of 1 \(low, high\)"),
    (dict(padding="same"), ValueError, r"`padding` must be .*; got 'same'"),
    (dict(padding=(1, 1)), ValueError, r"`padding` must be .*; got \(1, 1\)"),
    (dict(padding=[(1, 1.5)]), ValueError, r"`padding` must be"),
    (dict(strides=(0,)), ValueError, r"`strides` must be .* each >= 1; got \(0,\)"),
    (dict(strides=(1, 2)), ValueError, r"`strides` must be .*\(2 values\)"),
    (dict(rhs_dilation=(0,)), ValueError, r"`rhs_dilation` must be .* each >= 1"),
    (dict(feature_group_count=0), ValueError, r"`feature_group_count` must be an integer >= 1; got 0"),
    (dict(feature_group_count=2), ValueError, r"the kernel's I axis times `feature_group_count` \(=2\)"),
    (dict(dimension_numbers=("NCH", "OIH")), TypeError, r"`dimension_numbers` \('NCH', 'OIH'\) do not fit"),
    (dict(transpose_kernel=True, rhs=np.ones((3, 2, 3))), ValueError,
     r"with transpose_kernel=True the kernel's O axis"),
    (dict(rhs=np.ones((3, 2))), ValueError, r"`lhs` and `rhs` must have the same rank"),
    (dict(lhs=np.ones((1, 5, 2), np.int32)), TypeError, r"`lhs` must have a floating dtype .*; got int32"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD, ids=[str(i) for i in range(len(BAD))])
def test_errors_name_the_argument(kwargs, exc, pattern):
    args = dict(lhs=np.ones((1, 5, 2)), rhs=np.ones((3, 2, 1)), strides=(2,), padding="SAME")
    args.update(kwargs)
    with pytest.raises(exc, match=r"jax_deconv\.lax\.conv_transpose: " + pattern):
        dlax.conv_transpose(args.pop("lhs"), args.pop("rhs"), args.pop("strides"), args.pop("padding"), **args)


def test_under_jit_vmap_and_zero_size():
    x, k = np.ones((2, 5, 3)), np.ones((3, 3, 4))
    f = jax.jit(lambda a, b: dlax.conv_transpose(a, b, (2,), "SAME"))
    np.testing.assert_allclose(f(x, k), jax.lax.conv_transpose(x, k, (2,), "SAME"))
    ys = jax.vmap(lambda b: dlax.conv_transpose(x, b, (2,), "SAME"))(np.stack([k, 2 * k]))
    np.testing.assert_allclose(ys[1], 2 * jax.lax.conv_transpose(x, k, (2,), "SAME"))
    empty = dlax.conv_transpose(x, k, (2,), [(-4, -5)])  # negative size: empty, as lax does
    assert empty.shape == jax.lax.conv_transpose(x, k, (2,), [(-4, -5)]).shape == (2, 0, 4)
