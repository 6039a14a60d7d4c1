"""Train a small 3-D U-Net-style model with Flax NNX and optax, its up-sampling layers jax_deconv's.

The task is synthetic: volumes holding a few random balls, plus noise; the model learns to
segment the balls. Its decoder's transposed convolutions are ``jax_deconv.flax.nnx.ConvTranspose``
(a drop-in subclass of ``flax.nnx.ConvTranspose``: same constructor, same state), so this is
also what swapping Flax's layer for ours in an existing model looks like.

Run: ``python examples/unet_decoder_flax.py [--steps 60] [--size 16]`` (needs flax and optax:
``pip install 'jax_deconv[flax]' optax``). About 20 s on 2 cores with the defaults; the loss
falls by well over half.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_deconv.flax import nnx as deconv


def balls(key: jax.Array, batch: int, size: int) -> tuple[jax.Array, jax.Array]:
    """(noisy volumes, masks): (batch, size, size, size, 1) each, channels-last as Flax has it."""
    k_centre, k_radius, k_noise = jax.random.split(key, 3)
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(size)] * 3, indexing="ij"), -1)  # (S, S, S, 3)
    centres = jax.random.uniform(k_centre, (batch, 3, 3), minval=0.2 * size, maxval=0.8 * size)
    radii = jax.random.uniform(k_radius, (batch, 3), minval=0.1 * size, maxval=0.25 * size)
    distance = jnp.linalg.norm(grid[None, None] - centres[:, :, None, None, None], axis=-1)  # (B, 3, S, S, S)
    mask = jnp.any(distance < radii[:, :, None, None, None], axis=1)[..., None].astype(jnp.float32)
    return mask + 0.5 * jax.random.normal(k_noise, mask.shape), mask


class UNet(nnx.Module):
    """Two down-sampling convolutions, two transposed convolutions (ours) with skip connections."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.inp = nnx.Conv(1, width, (3, 3, 3), rngs=rngs)
        self.down1 = nnx.Conv(width, 2 * width, (3, 3, 3), strides=2, rngs=rngs)
        self.down2 = nnx.Conv(2 * width, 4 * width, (3, 3, 3), strides=2, rngs=rngs)
        self.up2 = deconv.ConvTranspose(4 * width, 2 * width, (4, 4, 4), strides=2, padding="SAME", rngs=rngs)
        self.up1 = deconv.ConvTranspose(4 * width, width, (4, 4, 4), strides=2, padding="SAME", rngs=rngs)
        self.out = nnx.Conv(2 * width, 1, (1, 1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        s0 = nnx.relu(self.inp(x))                                   # (B, S, S, S, w)
        s1 = nnx.relu(self.down1(s0))                                # (B, S/2, ..., 2w)
        s2 = nnx.relu(self.down2(s1))                                # (B, S/4, ..., 4w)
        u1 = nnx.relu(self.up2(s2))                                  # (B, S/2, ..., 2w)
        u0 = nnx.relu(self.up1(jnp.concatenate([u1, s1], -1)))      # (B, S, ..., w)
        return self.out(jnp.concatenate([u0, s0], -1))              # logits (B, S, S, S, 1)


def main(steps: int, size: int, batch: int = 4, width: int = 8) -> tuple[float, float]:
    model = UNet(width, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model: UNet, optimizer: nnx.Optimizer, x: jax.Array, mask: jax.Array) -> jax.Array:
        def loss_fn(model: UNet) -> jax.Array:
            return optax.sigmoid_binary_cross_entropy(model(x), mask).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    key = jax.random.key(1)
    losses = []
    for i in range(steps):
        key, sub = jax.random.split(key)
        losses.append(float(step(model, optimizer, *balls(sub, batch, size))))
        if i % 10 == 0 or i == steps - 1:
            print(f"step {i:3d}  loss {losses[-1]:.4f}", flush=True)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"mean loss of the first 5 steps {first:.4f}, of the last 5 {last:.4f}")
    return first, last


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=16, help="volume edge (a multiple of 4)")
    args = parser.parse_args()
    main(args.steps, args.size)
