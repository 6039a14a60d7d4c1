"""``jax_deconv.equinox.ConvTranspose*`` against Equinox's own layers.

Same leaves, paths and values after construction with the same key; forward and gradients
(float64) equal over random configurations; Equinox's own test cases (``ported_cases.json``),
including its Jacobian-transpose tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import load_ported

eqx = pytest.importorskip("equinox")
from jax_deconv import equinox as deqx  # noqa: E402

PORTED = load_ported()
CLASSES = {1: "ConvTranspose1d", 2: "ConvTranspose2d", 3: "ConvTranspose3d"}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def eqx_case(seed: int):
    rng = np.random.default_rng(seed)
    n = 1 + seed % 3
    groups = int(rng.choice([1, 2]))
    stride = [int(v) for v in rng.integers(1, 4, n)]
    kwargs = dict(in_channels=2 * groups, out_channels=groups * int(rng.integers(1, 3)),
                  kernel_size=[int(v) for v in rng.integers(1, 5, n)], stride=stride,
                  output_padding=[int(rng.integers(0, s)) for s in stride],
                  dilation=[int(v) for v in rng.choice([1, 1, 2], n)], groups=groups,
                  use_bias=bool(rng.integers(0, 3)), dtype=jnp.float64)
    r = rng.random()
    kwargs["padding"] = (str(rng.choice(["SAME", "SAME_LOWER", "VALID"])) if r < 0.4 else int(rng.integers(0, 3))
                         if r < 0.6 else [tuple(int(v) for v in rng.integers(0, 3, 2)) for _ in range(n)])
    if isinstance(kwargs["padding"], str) and kwargs["padding"] != "VALID" and rng.random() < 0.4:
        kwargs["padding_mode"], kwargs["output_padding"] = "CIRCULAR", [0] * n
    x = rng.standard_normal((kwargs["in_channels"], *(int(v) for v in rng.integers(2, 7, n))))
    return n, kwargs, x


@pytest.mark.parametrize("seed", range(9))
def test_against_equinox(seed):
    n, kwargs, x = eqx_case(seed)
    key = jax.random.key(seed)
    theirs, ours = getattr(eqx.nn, CLASSES[n])(**kwargs, key=key), getattr(deqx, CLASSES[n])(**kwargs, key=key)
    flat_t, flat_o = jax.tree_util.tree_flatten_with_path(theirs)[0], jax.tree_util.tree_flatten_with_path(ours)[0]
    assert [p for p, _ in flat_t] == [p for p, _ in flat_o]  # same leaves at the same paths (eqx.tree_at carries over)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(flat_t, flat_o))
    try:
        want_y = theirs(x)
    except ValueError as e:
        assert "Negative padding is larger" in str(e)
        pytest.skip("Equinox (lax) refuses this configuration")
    np.testing.assert_allclose(ours(x), want_y, rtol=1e-10, atol=1e-10)
    gy = np.random.default_rng(seed).standard_normal(want_y.shape)

    def grads(layer):
        return eqx.filter_grad(lambda m, x: jnp.sum(m(x) * gy))(layer, x)

    g_o, g_t = grads(ours), grads(theirs)
    for a, b in zip(jax.tree.leaves(g_o), jax.tree.leaves(g_t)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def _value(spec):
    if "values" in spec:
        return jnp.asarray(spec["values"], jnp.float64)
    if "arange" in spec:
        return jnp.arange(np.prod(spec["arange"]), dtype=jnp.float64).reshape(spec["arange"])
    if "arange_from" in spec:
        start, shape = spec["arange_from"]
        return jnp.arange(start, start + np.prod(shape), dtype=jnp.float64).reshape(shape)
    start, shape, target = spec["arange_from_broadcast"]
    return jnp.broadcast_to(jnp.arange(start, start + np.prod(shape), dtype=jnp.float64).reshape(shape), target)


@pytest.mark.parametrize("case", PORTED["equinox"], ids=[c["name"] for c in PORTED["equinox"]])
def test_equinox_own_cases(case):
    layer = getattr(deqx, case["cls"])(*case["args"], **case["kwargs"], key=jax.random.key(0))
    if "y" in case:
        weight, bias = _value(case["weight"]), _value(case["bias"])
        assert weight.shape == layer.weight.shape and bias.shape == layer.bias.shape
        layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias))
        np.testing.assert_array_equal(layer(_value(case["x"])), np.asarray(case["y"]))
    else:
        x = jax.random.normal(jax.random.key(1), case["x_shape"])
        assert layer(x).shape == tuple(case["y_shape"])


@pytest.mark.parametrize("case", PORTED["equinox_jacobian_transpose"], ids=lambda c: c["name"])
def test_equinox_jacobian_is_the_transpose_of_the_convolution(case):
    """Equinox's test: with ones weights, J(ConvTranspose) is J(Conv)^T for the same geometry."""
    common = dict(in_channels=1, out_channels=1, kernel_size=case["kernel_size"], stride=case["stride"],
                  dilation=case["dilation"], padding=case["padding"], use_bias=False, padding_mode=case["padding_mode"],
                  key=jax.random.key(0))
    conv = jax.tree.map(jnp.ones_like, eqx.nn.Conv1d(**common))
    convt = jax.tree.map(jnp.ones_like, deqx.ConvTranspose1d(**common, output_padding=case["output_padding"]))
    x = jax.random.normal(jax.random.key(1), case["x_shape"])
    y = conv(x)
    jac_conv = jax.jacobian(conv)(x).reshape(-1, x.size)
    jac_convt = jax.jacobian(convt)(y).reshape(x.size, -1)
    np.testing.assert_allclose(jac_conv, jac_convt.T, atol=1e-6)


def test_rank_error_named():
    layer = deqx.ConvTranspose2d(2, 3, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"ConvTranspose: the input must have rank 3 \(C_in, \*spatial\); got shape"):
        layer(jnp.ones((1, 2, 5, 5)))


def test_is_an_equinox_layer_with_equinox_constructor():
    assert issubclass(deqx.ConvTranspose3d, eqx.nn.ConvTranspose3d)
    assert deqx.ConvTranspose3d.__init__ is eqx.nn.ConvTranspose3d.__init__
