"""The pytree layer: init statistics, transforms, training, and jax.export round trips."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from reference import reference
from support import assert_close

from jax_deconv import ConvTranspose, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, conv3d_transpose


def test_init_is_pytorch_default_uniform():
    layer = ConvTranspose3d.init(jax.random.key(0), 64, 32, kernel_shape=3, group=2)
    bound = 1.0 / math.sqrt(16 * 27)  # fan_in = (C_out / group) * prod(kernel)
    w, b = np.asarray(layer.weight), np.asarray(layer.bias)
    assert w.shape == (64, 16, 3, 3, 3) and b.shape == (32,)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.mean()) < 0.01 * bound
    np.testing.assert_allclose(w.var(), bound**2 / 3, rtol=0.02)  # variance of U(-a, a) is a^2 / 3
    assert np.abs(b).max() <= bound


def test_leaves_static_config_and_call_matches_reference():
    layer = ConvTranspose2d.init(jax.random.key(1), 4, 6, 3, strides=2, pads=(1, 0), group=2, data_format="NHWC")
    leaves, treedef = jax.tree.flatten(layer)
    assert [leaf.shape for leaf in leaves] == [(4, 3, 3, 3), (6,)]
    rebuilt = jax.tree.unflatten(treedef, [leaf * 2 for leaf in leaves])
    assert rebuilt.strides == (2, 2) and rebuilt.data_format == "NHWC"
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 4)).astype(np.float32)
    args = dict(kernel_shape=3, strides=2, pads=(1, 0), group=2, data_format="NHWC")
    assert_close(jax.jit(lambda layer, x: layer(x))(layer, x), reference(x, layer.weight, layer.bias, **args))
    # vmap over a stack of layers (leaves batched, configuration shared)
    stack = jax.tree.map(lambda a, b: jnp.stack([a, b]), layer, rebuilt)
    ys = jax.vmap(lambda layer: layer(x))(stack)
    assert_close(ys[1], reference(x, rebuilt.weight, rebuilt.bias, **args))


def plain_sgd(layers, grads, state):
    return jax.tree.map(lambda p, g: p - 0.5 * g, layers, grads), state


@pytest.mark.parametrize("optimizer", ["sgd", "optax.adam"])
def test_tiny_3d_decoder_trains(optimizer):
    keys = jax.random.split(jax.random.key(0), 4)
    model = [ConvTranspose3d.init(keys[0], 4, 8, 4, strides=2, pads=1),
             ConvTranspose3d.init(keys[1], 8, 2, 3, pads=1)]
    teacher = [ConvTranspose3d.init(keys[2], 4, 8, 4, strides=2, pads=1),
               ConvTranspose3d.init(keys[3], 8, 2, 3, pads=1)]
    x = jax.random.normal(jax.random.key(5), (4, 4, 3, 3, 3))
    if optimizer == "sgd":
        update, state, steps = plain_sgd, None, 150
    else:  # optax updates the layers' leaves like any pytree
        optax = pytest.importorskip("optax")
        adam = optax.adam(1e-2)
        state, steps = adam.init(model), 60

        def update(layers, grads, state):
            updates, state = adam.update(grads, state, layers)
            return optax.apply_updates(layers, updates), state

    def forward(layers, x):
        return layers[1](jax.nn.relu(layers[0](x)))

    target = forward(teacher, x)

    @jax.jit
    def step(layers, state):
        loss, grads = jax.value_and_grad(lambda m: jnp.mean((forward(m, x) - target) ** 2))(layers)
        return *update(layers, grads, state), loss

    first = None
    for _ in range(steps):
        model, state, loss = step(model, state)
        first = loss if first is None else first
    assert all(isinstance(layer, ConvTranspose3d) for layer in model)
    assert forward(model, x).shape == (4, 2, 6, 6, 6)
    assert loss < first / 10, (float(first), float(loss))


def test_fixed_rank_layers():
    assert ConvTranspose1d.init(jax.random.key(0), 2, 3, 4)(jnp.ones((1, 2, 5))).shape == (1, 3, 8)
    assert ConvTranspose.init(jax.random.key(0), 2, 3, (2, 2))(jnp.ones((1, 2, 5, 5))).shape == (1, 3, 6, 6)
    with pytest.raises(ValueError, match=r"ConvTranspose3d: `group` \(=3\) must divide in_channels \(=4\)"):
        ConvTranspose3d.init(jax.random.key(0), 4, 6, group=3)


def test_export_round_trip_with_symbolic_batch():
    w = jax.random.normal(jax.random.key(0), (8, 4, 4, 4, 4))

    def f(x, w):
        return conv3d_transpose([x, w], kernel_shape=4, strides=2, pads=1)

    (batch,) = export.symbolic_shape("b")
    exported = export.export(jax.jit(f))(jax.ShapeDtypeStruct((batch, 8, 5, 5, 5), jnp.float32),
                                         jax.ShapeDtypeStruct(w.shape, jnp.float32))
    restored = export.deserialize(exported.serialize())
    for n in (1, 3):
        x = jax.random.normal(jax.random.key(n), (n, 8, 5, 5, 5))
        np.testing.assert_allclose(restored.call(x, w), jax.jit(f)(x, w), rtol=2e-5, atol=2e-5)
