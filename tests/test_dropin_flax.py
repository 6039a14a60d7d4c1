"""``jax_deconv.flax.linen/nnx.ConvTranspose`` against Flax's own ``ConvTranspose``.

Same variables after ``init`` with the same key; forward and gradients (float64) equal over
random configurations; Flax's own hand-computed test cases (``ported_cases.json``); groups
against per-group Flax layers concatenated.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import load_ported

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
from jax_deconv.flax import linen as dnn  # noqa: E402
from jax_deconv.flax import nnx as dnnx  # noqa: E402

PORTED = load_ported()


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def flax_case(seed: int):
    rng = np.random.default_rng(seed)
    n = 1 + seed % 3
    kernel = tuple(int(v) for v in rng.integers(1, 5, n))
    r = rng.random()
    pairs = [tuple(int(v) for v in rng.integers(-2, 4, 2)) for _ in range(n)]
    padding = ("SAME" if r < 0.25 else "VALID" if r < 0.45 else "CIRCULAR" if r < 0.6 else
               int(rng.integers(0, 3)) if r < 0.7 else pairs)
    attrs = dict(features=int(rng.integers(1, 4)), kernel_size=kernel,
                 strides=tuple(int(v) for v in rng.integers(1, 4, n)), padding=padding,
                 kernel_dilation=tuple(int(v) for v in rng.choice([1, 1, 2], n)),
                 use_bias=bool(rng.integers(0, 3)), transpose_kernel=bool(rng.integers(2)),
                 param_dtype=jnp.float64)
    batch = [(), (2,), (2, 3)][int(rng.integers(3))]
    x = rng.standard_normal((*batch, *(int(v) for v in rng.integers(2, 6, n)), int(rng.integers(1, 4))))
    return attrs, x


def max_abs(tree_a, tree_b):
    return max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b), initial=0.0)), tree_a, tree_b)))


@pytest.mark.parametrize("seed", range(8))
def test_linen_against_flax(seed):
    attrs, x = flax_case(seed)
    ours, theirs = dnn.ConvTranspose(**attrs), nn.ConvTranspose(**attrs)
    try:
        variables = theirs.init(jax.random.key(seed), x)
    except ValueError as e:  # lax's refusal of large negative padding (we answer; see test_dropin_lax)
        assert "Negative padding is larger" in str(e)
        pytest.skip("Flax (lax) refuses this negative padding")
    assert max_abs(ours.init(jax.random.key(seed), x), variables) == 0.0  # same names, shapes, values
    gy = np.random.default_rng(seed).standard_normal(theirs.apply(variables, x).shape)

    def loss(module):
        return lambda v, x: jnp.sum(module.apply(v, x) * gy)

    assert max_abs(ours.apply(variables, x), theirs.apply(variables, x)) < 1e-10
    assert max_abs(jax.grad(loss(ours), (0, 1))(variables, x), jax.grad(loss(theirs), (0, 1))(variables, x)) < 1e-10


@pytest.mark.parametrize("seed", range(4))
def test_nnx_against_flax(seed):
    attrs, x = flax_case(100 + seed)
    features, kernel, strides = attrs.pop("features"), attrs.pop("kernel_size"), attrs.pop("strides")
    ours = dnnx.ConvTranspose(x.shape[-1], features, kernel, strides, rngs=nnx.Rngs(seed), **attrs)
    theirs = nnx.ConvTranspose(x.shape[-1], features, kernel, strides, rngs=nnx.Rngs(seed), **attrs)
    assert max_abs(nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)) == 0.0
    try:
        want = theirs(x)
    except ValueError as e:
        assert "Negative padding is larger" in str(e)
        pytest.skip("Flax (lax) refuses this negative padding")
    assert max_abs(ours(x), want) < 1e-10
    grads = [nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(m) for m in (ours, theirs)]
    assert max_abs(nnx.state(grads[0], nnx.Param), nnx.state(grads[1], nnx.Param)) < 1e-10


def _array(spec):
    if spec == "ones":
        return None
    return np.asarray(spec["values"], np.float64) if "values" in spec else np.ones(spec["ones"])


@pytest.mark.parametrize("module", ["linen", "nnx"])
@pytest.mark.parametrize("case", PORTED["flax_linen"], ids=[c["name"] for c in PORTED["flax_linen"]])
def test_flax_own_cases(case, module):
    x = _array(case["x"])
    attrs = dict(case["attrs"])
    inits = {"ones": jax.nn.initializers.ones, "zeros": jax.nn.initializers.zeros}
    if isinstance(case.get("kernel"), dict):
        value = _array(case["kernel"])
        attrs["kernel_init"] = lambda *_: jnp.asarray(value)
    elif "kernel" in case:
        attrs["kernel_init"] = inits[case["kernel"]]
    if "bias" in case:
        attrs["bias_init"] = inits[case["bias"]]
    if case.get("mask"):
        attrs["mask"] = jnp.tril(jnp.ones((3, 3, 4)))
    if module == "linen":
        y, variables = dnn.ConvTranspose(**attrs).init_with_output(jax.random.key(0), x)
        kernel_shape = variables["params"]["kernel"].shape
    else:
        features, kernel = attrs.pop("features"), attrs.pop("kernel_size")
        strides = attrs.pop("strides", None)
        layer = dnnx.ConvTranspose(x.shape[-1], features, kernel, strides, rngs=nnx.Rngs(0), **attrs)
        y, kernel_shape = layer(x), layer.kernel.shape
    assert kernel_shape == tuple(case["kernel_shape"])
    if "y" in case:
        np.testing.assert_allclose(y, np.asarray(case["y"]), rtol=1e-12)
    elif "y_repeat" in case:
        (b1, b2), block = case["y_repeat"]
        np.testing.assert_allclose(y, np.broadcast_to(np.asarray(block), (b1, b2, *np.shape(block))), rtol=1e-12)
    else:
        assert y.shape == tuple(case["y_shape"])


def circular_constant_cases():
    grid = PORTED["flax_linen_circular_constant"]
    keys_1d = ("n_batch", "n_features", "kernel_size", "n_input_features", "input_size")
    keys_2d = ("n_batch", "n_features", "kernel_lin_size", "n_input_features", "input_x_size", "input_y_size")
    one = [(1, *c) for c in itertools.product(*(grid["1d"][k] for k in keys_1d))]
    two = [(2, *c) for c in itertools.product(*(grid["2d"][k] for k in keys_2d))]
    return one[::8] + two[::16]


@pytest.mark.parametrize("case", circular_constant_cases())
def test_flax_circular_constant_grid(case):
    """Flax's rule: ones in, ones kernel, CIRCULAR -> x's spatial shape, every value prod(kernel) * C_in."""
    n, batch, features, k, c_in, *size = case
    x = jnp.ones((batch, *size, c_in))
    layer = dnn.ConvTranspose(features=features, kernel_size=(k,) * n, padding="CIRCULAR",
                              kernel_init=jax.nn.initializers.ones, bias_init=jax.nn.initializers.zeros)
    y, _ = layer.init_with_output(jax.random.key(0), x)
    np.testing.assert_allclose(y, np.full((batch, *size, features), k**n * c_in))


@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_groups_are_flax_layers_side_by_side(transpose_kernel):
    groups, c_in, features = 3, 6, 9
    x = np.random.default_rng(0).standard_normal((2, 5, 4, c_in))
    attrs = dict(kernel_size=(3, 2), strides=(2, 3), padding="SAME", transpose_kernel=transpose_kernel)
    layer = dnn.ConvTranspose(features=features, feature_group_count=groups, **attrs)
    variables = layer.init(jax.random.key(0), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    assert kernel.shape == ((3, 2, features // groups, c_in) if transpose_kernel else (3, 2, c_in // groups, features))
    parts = []
    for g in range(groups):
        xs = x[..., g * 2:(g + 1) * 2]
        ks = kernel[..., g * 2:(g + 1) * 2] if transpose_kernel else kernel[..., g * 3:(g + 1) * 3]
        single = {"params": {"kernel": ks, "bias": bias[g * 3:(g + 1) * 3]}}
        parts.append(nn.ConvTranspose(features=features // groups, **attrs).apply(single, xs))
    np.testing.assert_allclose(layer.apply(variables, x), np.concatenate(parts, -1), atol=1e-12)
    nnx_layer = dnnx.ConvTranspose(c_in, features, (3, 2), (2, 3), padding="SAME", transpose_kernel=transpose_kernel,
                                   feature_group_count=groups, rngs=nnx.Rngs(0))
    assert nnx_layer.kernel.shape == kernel.shape


def test_bad_groups_named():
    with pytest.raises(ValueError, match=r"ConvTranspose: `feature_group_count` \(=4\) must be an int >= 1 dividing"):
        layer = dnn.ConvTranspose(features=6, kernel_size=(3,), feature_group_count=4)
        layer.init(jax.random.key(0), jnp.ones((1, 5, 6)))
    with pytest.raises(ValueError, match=r"ConvTranspose: `feature_group_count` \(=4\) must be an int >= 1 dividing"):
        dnnx.ConvTranspose(6, 6, (3,), feature_group_count=4, rngs=nnx.Rngs(0))
