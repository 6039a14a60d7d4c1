"""Randomised sweep of valid configurations; ``test_sweep.py`` runs it in a subprocess.

An XLA abort kills this process, not pytest. Each configuration compiles one ``jit`` of the
forward, the VJP and the JVP (float64) and checks them against the NumPy reference:
``y == ref(x, w, b)`` and, for a random direction ``(u, v, c)``,
``jvp == ref(u, w, c) + ref(x, v)`` and ``<gy, jvp> == <dx, u> + <dw, v> + <db, c>``.
The shapes favour small volumes under large, dilated kernels with large crops: the ones
that abort XLA under the plain lhs-dilated lowering. The last line printed is
``SWEEP <cases> <mismatches>``; the line before an abort names the case.

Usage: ``python tests/sweep.py SEED COUNT ALGORITHM``.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import reference
from support import random_config

from jax_deconv import conv_transpose


def check(rng: np.random.Generator, cfg: dict, x_shape, w_shape, c_out: int, algorithm: str) -> bool:
    x, u = rng.standard_normal(x_shape), rng.standard_normal(x_shape)
    w, v = rng.standard_normal(w_shape), rng.standard_normal(w_shape)
    b, c = rng.standard_normal(c_out), rng.standard_normal(c_out)
    want = reference(x, w, b, **cfg)
    gy = rng.standard_normal(want.shape)

    def f(x, w, b):
        return conv_transpose([x, w, b], **cfg, algorithm=algorithm)

    @jax.jit
    def everything(x, w, b, u, v, c, gy):
        y, vjp = jax.vjp(f, x, w, b)
        return y, vjp(gy), jax.jvp(f, (x, w, b), (u, v, c))[1]

    y, (dx, dw, db), ty = everything(x, w, b, u, v, c, gy)
    t_want = reference(u, w, c, **cfg) + reference(x, v, None, **cfg)
    return bool(
        np.allclose(y, want, 1e-10, 1e-10)
        and np.allclose(ty, t_want, 1e-10, 1e-10)
        and np.isclose(np.vdot(gy, t_want), np.vdot(dx, u) + np.vdot(dw, v) + np.vdot(db, c), 1e-10, 1e-10)
    )


def main(seed: int, count: int, algorithm: str) -> None:
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(seed)
    bad = 0
    for i in range(count):
        cfg, x_shape, w_shape, c_out = random_config(rng)
        print(i, x_shape, w_shape, cfg, flush=True)
        if not check(rng, cfg, x_shape, w_shape, c_out, algorithm):
            bad += 1
            print("MISMATCH", i, flush=True)
    print(f"SWEEP {count} {bad}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or not sys.argv[1].isdigit() or not sys.argv[2].isdigit():
        print("usage: python tests/sweep.py SEED COUNT ALGORITHM\n"
              "       (ALGORITHM: auto, conv, gemm, phases, taps or native)\n"
              "e.g.:  python tests/sweep.py 0 500 gemm", file=sys.stderr)
        sys.exit(2)
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
