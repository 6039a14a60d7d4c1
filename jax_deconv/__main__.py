"""``python -m jax_deconv`` (installed as the command ``jax-deconv``): a self-check to run on new hardware.

Prints the JAX version and device, whether the native CPU kernels run (and, if not, why and
what to do), runs Dragon's documentation example, then checks a bundled set
of cases computed by the real Dragon 0.3.0 (``data/golden_selfcheck.npz``: every 10th case
of the small golden set and every 8th of the large one) on the current backend: forward and
the dx, dw, db of the VJP under the stored upstream gradient. Exit status 0 when all match.

Benchmarks live outside the package, in the repository's ``benchmarks/`` folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jax_deconv
from jax_deconv._types import ALGORITHMS

FORWARD_TOL, GRADIENT_TOL = 1e-4, 1e-3  # golden README: exact float32 implementations


SELFCHECK_DATA = os.path.join(os.path.dirname(__file__), "data", "golden_selfcheck.npz")


def golden_cases(path: str = SELFCHECK_DATA):
    """Yield ``(name, args, inputs, y, gy, grads)`` from a golden ``.npz``.

    Dragon reports the NHWC weight gradient under the NCHW weight shape (its data is in NHWC
    order), so ``dw`` is reshaped to the weight's shape.
    """
    z = np.load(path)
    for case in sorted({k.rsplit("_", 1)[0] for k in z.files if k.endswith("_args")}):
        args = json.loads(str(z[case + "_args"]))
        inputs = [z[case + "_x"], z[case + "_w"]]
        grads = [z[case + "_dx"], z[case + "_dw"].reshape(inputs[1].shape)]
        if args.pop("bias"):
            inputs.append(z[case + "_b"])
            grads.append(z[case + "_db"])
        yield case, args, inputs, z[case + "_y"], z[case + "_gy"], grads


def check_case(args, inputs, y_want, gy, grads_want, algorithm: Any = "auto") -> bool:
    """Forward and VJP of one golden case under ``jit``, within the golden tolerances."""

    @jax.jit
    def forward_and_vjp(gy, *arrays):  # one compilation for the forward and the VJP
        y, vjp = jax.vjp(lambda *a: jax_deconv.conv_transpose(list(a), **args, algorithm=algorithm), *arrays)
        return y, vjp(gy)

    y, grads = forward_and_vjp(jnp.asarray(gy), *inputs)
    ok = y.shape == y_want.shape and np.allclose(y, y_want, FORWARD_TOL, FORWARD_TOL)
    for got, want in zip(grads, grads_want):
        ok = ok and got.shape == want.shape and np.allclose(got, want, GRADIENT_TOL, GRADIENT_TOL)
    return bool(ok)


def jaxlib_version() -> str:
    import jaxlib

    return getattr(jaxlib, "__version__", "?")


def selfcheck(algorithm: str, require_native: bool = False) -> int:
    print(f"jax_deconv {jax_deconv.__version__} from {os.path.dirname(os.path.abspath(jax_deconv.__file__))}, "
          f"jax {jax.__version__}, jaxlib {jaxlib_version()}")
    print(f"backend {jax.default_backend()}: {', '.join(str(d) for d in jax.devices())}")
    isa = jax_deconv.native_kernels()
    if isa:
        print(f"native CPU kernels: built, running {isa}")
    else:
        print(f"native CPU kernels: NOT AVAILABLE, the slower XLA lowerings run on CPU instead: "
              f"{jax_deconv.native_kernels_unavailable()}")
        if require_native:
            print("FAILED (--require-native)")
            return 1
    x, w = jnp.ones((1, 2, 2, 2, 2)), jnp.ones((2, 3, 1, 1, 1))
    y = jax_deconv.conv3d_transpose([x, w], kernel_shape=1, output_padding=(1, 1, 1), output_shape=(3, 3, 3))
    print(f"Dragon documentation example: conv3d_transpose -> shape {y.shape}, sum {float(y.sum())} (expected 48.0)")
    seed_ok = y.shape == (1, 3, 3, 3, 3) and float(y.sum()) == 48.0
    cases = list(golden_cases())
    print(f"Dragon golden cases: {len(cases)}, each compiled once (forward and VJP)", flush=True)
    matched = 0
    for done, (name, args, inputs, y_want, gy, grads) in enumerate(cases, 1):
        if check_case(args, inputs, y_want, gy, grads, algorithm):
            matched += 1
        else:
            print(f"  MISMATCH {name}: {args}", flush=True)
        if done % 10 == 0 or done == len(cases):
            print(f"  {done}/{len(cases)} checked", flush=True)
    total = len(cases)
    print(f"Dragon golden cases (forward, dx, dw, db; algorithm={algorithm!r}): {matched}/{total} match")
    ok = seed_ok and matched == total
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m jax_deconv",
        description="Self-check of jax_deconv on this machine's JAX backend: Dragon's documentation example, "
        "then bundled cases computed by the real Dragon (forward and gradients). Exit status 0 when all match. "
        "Installed as the command jax-deconv too.",
        epilog="The only command is the self-check; benchmarks are in the repository's benchmarks/ folder "
        "(python benchmarks/run.py --help).",
    )
    parser.add_argument("--algorithm", default="auto", choices=ALGORITHMS,
                        help="lowering to check (default: auto)")
    parser.add_argument("--require-native", action="store_true",
                        help="fail (exit status 1) when the native CPU kernels are not available")
    args = parser.parse_args(argv)
    return selfcheck(args.algorithm, args.require_native)


if __name__ == "__main__":
    sys.exit(main())
