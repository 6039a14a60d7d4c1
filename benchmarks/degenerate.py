"""Small valid calls that the phase form blows up: compile time, XLA's temporaries and run time
of each algorithm, forward and gradient.

    python benchmarks/degenerate.py [--algorithms auto conv gemm phases taps] [--run-limit-gib 4]

Temporaries are XLA's compiled estimate (``memory_analysis().temp_size_in_bytes``), shown as a
multiple of the bytes of x + weight + y. A compiled call is run (median of 3) only when its
estimate is below ``--run-limit-gib``; an algorithm that refuses the call says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_deconv import ALGORITHMS, choose_algorithm, conv_transpose, conv_transpose_plan

CASES = {
    "stride 2000, 1-voxel 3-D, k3, 8->8": ((1, 8, 1, 1, 1), (8, 8, 3, 3, 3), dict(kernel_shape=3, strides=2000)),
    "1-D dilation 20000, stride 2, k3": ((1, 1, 16), (1, 1, 3), dict(kernel_shape=3, strides=2, dilations=20000)),
    "2-D dilation 3000, pads 2990, k5, 4->4": (
        (1, 4, 8, 8), (4, 4, 5, 5), dict(kernel_shape=5, dilations=3000, pads=2990)),
    "3-D stride 50, k4, 4^3, 16->8": ((2, 16, 4, 4, 4), (16, 8, 4, 4, 4), dict(kernel_shape=4, strides=50)),
    "3-D stride 2, dilation 2, k3, 12^3, 32->32": (
        (1, 32, 12, 12, 12), (32, 32, 3, 3, 3), dict(kernel_shape=3, strides=2, dilations=2, pads=2)),
}


def measure(name: str, algorithm: str, run_limit: float) -> None:
    x_shape, w_shape, kwargs = CASES[name]
    plan = conv_transpose_plan(x_shape, w_shape, **kwargs)
    call_bytes = 4 * (np.prod(x_shape) + np.prod(w_shape) + np.prod(plan.out_shape))
    chosen = choose_algorithm(plan, "float32", "cpu") if algorithm == "auto" else algorithm
    x, w = jnp.ones(x_shape), jnp.ones(w_shape)

    def forward(x, w):
        return conv_transpose([x, w], **kwargs, algorithm=algorithm)

    def gradient(x, w):
        return jax.grad(lambda x, w: jnp.sum(forward(x, w) ** 2), (0, 1))(x, w)

    for mode, fn in (("forward", forward), ("gradient", gradient)):
        label = f"{name:42s} {algorithm}->{chosen:6s} {mode:8s}"
        try:
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(x, w).compile()
        except ValueError as e:
            print(f"{label} refused: {str(e)[:110]}", flush=True)
            return
        compile_s = time.perf_counter() - start
        temp = compiled.memory_analysis().temp_size_in_bytes
        text = f"{label} compile {compile_s:6.2f} s  temp {temp / 2**20:12.1f} MiB = {temp / call_bytes:10.1f}x x+w+y"
        if temp < run_limit * 2**30:
            jax.block_until_ready(compiled(x, w))
            times = []
            for _ in range(3):
                start = time.perf_counter()
                jax.block_until_ready(compiled(x, w))
                times.append(time.perf_counter() - start)
            text += f"  run {1e3 * statistics.median(times):9.1f} ms"
        else:
            text += "  (not run: temporaries above --run-limit-gib)"
        print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--cases", nargs="*", default=list(range(len(CASES))), type=int,
                        help="indices into: " + "; ".join(f"{i}: {n}" for i, n in enumerate(CASES)))
    parser.add_argument("--run-limit-gib", type=float, default=4.0)
    args = parser.parse_args()
    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, float32", flush=True)
    for i in args.cases:
        for algorithm in args.algorithms:
            measure(list(CASES)[i], algorithm, args.run_limit_gib)


if __name__ == "__main__":
    main()
