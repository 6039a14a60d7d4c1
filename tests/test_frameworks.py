"""The Flax NNX and Equinox recipes of docs/layers.md, run as written there, and optax training.

Each recipe is the fenced block after ``<!-- recipe: NAME -->`` in docs/; the tests skip
when the framework is absent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference
from support import assert_close, recipe

from jax_deconv import ConvTranspose3d


def teacher_problem():
    """Input and target of a small 4 -> 2 channel, 3^3 -> 6^3 decoder made of our own layers."""
    k1, k2, k3 = jax.random.split(jax.random.key(42), 3)
    up = ConvTranspose3d.init(k1, 4, 8, 4, strides=2, pads=1)
    out = ConvTranspose3d.init(k2, 8, 2, 3, pads=1)
    x = jax.random.normal(k3, (4, 4, 3, 3, 3))
    return x, out(jax.nn.relu(up(x)))


def test_flax_nnx_recipe_matches_and_trains():
    pytest.importorskip("flax")
    optax = pytest.importorskip("optax")
    from flax import nnx

    layer_cls = recipe("flax-nnx")["ConvTranspose3d"]
    layer = layer_cls(4, 6, 3, strides=2, pads=1, group=2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 4, 3)).astype(np.float32)
    want = reference(x, layer.weight[...], layer.bias[...], kernel_shape=3, strides=2, pads=1, group=2)
    assert_close(nnx.jit(lambda m, x: m(x))(layer, x), want)

    class Decoder(nnx.Module):
        def __init__(self, rngs):
            self.up = layer_cls(4, 8, 4, strides=2, pads=1, rngs=rngs)
            self.out = layer_cls(8, 2, 3, pads=1, rngs=rngs)

        def __call__(self, x):
            return self.out(jax.nn.relu(self.up(x)))

    x, target = teacher_problem()
    model = Decoder(nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(60)]
    assert losses[-1] < losses[0] / 5, losses[::10]


def test_equinox_recipe_trains_with_optax():
    eqx = pytest.importorskip("equinox")
    optax = pytest.importorskip("optax")
    x, target = teacher_problem()
    model = recipe("equinox")["Decoder"](4, 2, key=jax.random.key(1))
    optimizer = optax.adam(1e-2)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
        updates, state = optimizer.update(grads, state, model)
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(60):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert model(x).shape == target.shape
    assert losses[-1] < losses[0] / 5, losses[::10]


def test_torch_weights_recipe_matches_torch():
    torch = pytest.importorskip("torch")
    ns = recipe("torch-weights")
    with torch.no_grad():
        want = ns["torch_layer"](ns["x"]).numpy()
    assert ns["y"].shape == want.shape == (2, 4, 10, 10, 10)
    assert_close(ns["y"], want)


def test_halo_recipe_runs_as_written():
    """On this process's devices (one, unless XLA_FLAGS gave more); 8 devices: multidevice_cases.py."""
    from jax_deconv import conv3d_transpose

    ns = recipe("halo")
    x, w, b = ns["x"], ns["w"], ns["b"]
    assert ns["y"].shape == (1, 4, 32, 16, 16)
    assert_close(ns["y"], conv3d_transpose([x, w, b], kernel_shape=4, strides=2, pads=1))
