"""A volume split along depth over 8 devices: the same layer two ways, checked against one device.

1. ``conv3d_transpose`` called as usual on an ``x`` sharded along depth (JAX's explicit
   sharding, the default of ``jax.make_mesh``): jax_deconv runs it under ``shard_map`` with a
   halo exchange, and the output keeps the split.
2. ``conv_transpose_halo`` inside your own ``jax.shard_map``: the same exchange, explicitly.

Both are compared with the unsharded call, forward and weight gradient. The 8 devices are
simulated on the CPU (the ``XLA_FLAGS`` line below; leave it out on real devices).

Run: ``python examples/sharded_volume.py [--size 16]``. A few seconds.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before JAX starts

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_deconv import conv3d_transpose, conv_transpose_halo

CONFIG = dict(kernel_shape=4, strides=2, pads=1)  # a "same"-sized decoder layer: output depth = 2 x input


def main(size: int) -> float:
    devices = len(jax.devices())
    print(f"{devices} devices: {jax.devices()[0].platform}")
    mesh = jax.make_mesh((devices,), ("z",))
    split = P(None, None, "z")  # (N, C, D, H, W): depth over "z"
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((1, 8, size, size, size)).astype(np.float32)
    w = jnp.asarray(rng.standard_normal((8, 4, 4, 4, 4)).astype(np.float32))
    x = jax.device_put(x_host, NamedSharding(mesh, split))
    print("x:", x.shape, "depth blocks of", size // devices, "on each device")

    def forward_and_weight_gradient(layer):
        """layer(x, w) -> y, and the gradient of sum(y ** 2) in w, both jitted."""
        return jax.jit(layer), jax.jit(jax.grad(lambda x, w: jnp.sum(layer(x, w) ** 2), argnums=1))

    def usual(x, w):
        return conv3d_transpose([x, w], **CONFIG)

    forward, gradient = forward_and_weight_gradient(usual)
    y_want, dw_want = forward(jnp.asarray(x_host), w), gradient(jnp.asarray(x_host), w)  # one device

    # 1. as usual, on the sharded x
    y1, dw1 = forward(x, w), gradient(x, w)
    print("as usual:  y", y1.shape, "sharded", y1.sharding.spec)

    # 2. explicit halo exchange inside shard_map
    layer = partial(conv_transpose_halo, axis_name="z", **CONFIG)
    halo = jax.shard_map(lambda x, w: layer([x, w]), mesh=mesh, in_specs=(split, P()), out_specs=split)
    forward, gradient = forward_and_weight_gradient(halo)
    y2, dw2 = forward(x, w), gradient(x, w)
    print("halo:      y", y2.shape, "sharded", y2.sharding.spec)

    worst = 0.0
    for name, got, want in [("y as usual", y1, y_want), ("dw as usual", dw1, dw_want),
                            ("y halo", y2, y_want), ("dw halo", dw2, dw_want)]:
        error = float(jnp.abs(got - want).max() / (1 + jnp.abs(want).max()))
        worst = max(worst, error)
        print(f"{name:12s} against one device: {error:.1e}")
    assert worst < 1e-5, worst
    print("both sharded forms match the unsharded call")
    return worst


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16, help="volume edge (a multiple of the device count)")
    main(parser.parse_args().size)
