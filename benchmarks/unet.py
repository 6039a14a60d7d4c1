"""A whole small 3-D U-Net training step on CPU: Flax with jax_deconv's ``Conv`` and
``ConvTranspose`` against Flax alone and PyTorch (issue 27).

``python benchmarks/unet.py [--size 32] [--threads 2] [--repeats 5] [--dtype bfloat16]``

The network: two 3x3x3 convolutions per level (channels 16, 32, 64), 2x max-pooling down, a
k2 s2 transposed convolution up with a skip concatenation, a 1x1x1 head; batch 1, one input and
one output channel, channels-last in JAX and ``channels_last_3d`` in PyTorch. A step is loss
(mean squared error), gradients and an Adam update, jitted in JAX; median of ``--repeats``
steps after two warm-ups. PyTorch runs in its own process. ``--dtype bfloat16``: mixed
precision on both sides (float32 weights and loss; the layers compute in bfloat16: Flax's
``dtype=jnp.bfloat16``, PyTorch's ``torch.autocast('cpu', torch.bfloat16)``). ``--threads 1``
sets PyTorch's threads; run the script under ``taskset -c 1`` for one core on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WIDTHS = (16, 32, 64)


def _median_ms(step, repeats: int) -> float:
    step()
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def time_flax(size: int, ours: bool, repeats: int, dtype: str = "float32") -> float:
    import functools

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jax_deconv.flax import linen as dnn

    compute = jnp.dtype(dtype)
    conv_cls = functools.partial(dnn.Conv if ours else nn.Conv, dtype=compute)
    up_cls = functools.partial(dnn.ConvTranspose if ours else nn.ConvTranspose, dtype=compute)

    class UNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            skips = []
            for i, width in enumerate(WIDTHS):
                x = nn.relu(conv_cls(width, (3, 3, 3))(x))
                x = nn.relu(conv_cls(width, (3, 3, 3))(x))
                if i < len(WIDTHS) - 1:
                    skips.append(x)
                    x = nn.max_pool(x, (2, 2, 2), (2, 2, 2))
            for width, skip in zip(reversed(WIDTHS[:-1]), reversed(skips)):
                x = up_cls(width, (2, 2, 2), strides=(2, 2, 2))(x)
                x = jnp.concatenate([x, skip], axis=-1)
                x = nn.relu(conv_cls(width, (3, 3, 3))(x))
            return conv_cls(1, (1, 1, 1))(x).astype(jnp.float32)

    x = jax.random.normal(jax.random.key(0), (1, size, size, size, 1))
    target = jax.random.normal(jax.random.key(1), (1, size, size, size, 1))
    model = UNet()
    params = model.init(jax.random.key(2), x)
    optimizer = optax.adam(1e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - target) ** 2))(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    holder = [params, state]

    def run():
        holder[0], holder[1], loss = step(*holder)
        jax.block_until_ready(loss)

    return _median_ms(run, repeats)


def time_torch(size: int, threads: int, repeats: int, dtype: str = "float32") -> float:
    import torch

    torch.set_num_threads(threads)
    nn = torch.nn

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = (1, *WIDTHS)
            self.down = nn.ModuleList(
                nn.Sequential(nn.Conv3d(widths[i], widths[i + 1], 3, padding=1), nn.ReLU(),
                              nn.Conv3d(widths[i + 1], widths[i + 1], 3, padding=1), nn.ReLU())
                for i in range(len(WIDTHS)))
            self.up = nn.ModuleList(nn.ConvTranspose3d(WIDTHS[i + 1], WIDTHS[i], 2, stride=2)
                                    for i in reversed(range(len(WIDTHS) - 1)))
            self.merge = nn.ModuleList(nn.Conv3d(2 * WIDTHS[i], WIDTHS[i], 3, padding=1)
                                       for i in reversed(range(len(WIDTHS) - 1)))
            self.head = nn.Conv3d(WIDTHS[0], 1, 1)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x)
                if i < len(self.down) - 1:
                    skips.append(x)
                    x = torch.nn.functional.max_pool3d(x, 2)
            for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
                x = torch.relu(merge(torch.cat([up(x), skip], dim=1)))
            return self.head(x)

    fmt = torch.channels_last_3d
    model = UNet().to(memory_format=fmt)
    x = torch.randn(1, 1, size, size, size).to(memory_format=fmt)
    target = torch.randn(1, 1, size, size, size).to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def run():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            y = model(x)
        loss = torch.mean((y.float() - target) ** 2)
        loss.backward()
        optimizer.step()

    return _median_ms(run, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="what the layers compute in (bfloat16: mixed precision on both sides)")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:
        print(json.dumps(time_torch(args.size, args.threads, args.repeats, args.dtype)))
        return 0
    torch_ms = json.loads(subprocess.run(
        [sys.executable, __file__, "--torch-only", "--size", str(args.size), "--threads", str(args.threads),
         "--repeats", str(args.repeats), "--dtype", args.dtype], capture_output=True, text=True, check=True,
        env=dict(os.environ, OMP_NUM_THREADS=str(args.threads))).stdout.strip().splitlines()[-1])
    ours = time_flax(args.size, True, args.repeats, args.dtype)
    flax = time_flax(args.size, False, args.repeats, args.dtype)
    print(f"3-D U-Net {args.size}^3 {args.dtype} training step, {args.threads} threads: jax_deconv layers "
          f"{ours:.1f} ms, "
          f"Flax alone {flax:.1f} ms, PyTorch {torch_ms:.1f} ms; ours / PyTorch {ours / torch_ms:.2f}, "
          f"ours / Flax {ours / flax:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
