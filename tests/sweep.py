"""Randomised sweep of valid configurations; ``test_sweep.py`` runs it in a subprocess.

An XLA abort kills this process, not pytest. Each configuration compiles one ``jit`` of the
forward, the VJP and the JVP (float64) and checks them against the NumPy reference:
``y == ref(x, w, b)`` and, for a random direction ``(u, v, c)``,
``jvp == ref(u, w, c) + ref(x, v)`` and ``<gy, jvp> == <dx, u> + <dw, v> + <db, c>``.
The shapes favour small volumes under large, dilated kernels with large crops: the ones
that abort XLA under the plain lhs-dilated lowering. The last line printed is
``SWEEP <cases> <mismatches>``; the line before an abort names the case.

With ``bfloat16`` as a fourth argument, each configuration gets up to 40 channels per group
and volumes up to 10 per axis, inputs in bfloat16, and the forward and both gradients are
checked element by element against the reference (``reference`` and ``reference_vjp`` of the
same bfloat16 values): within ``2**-8 |ref| + 2**-14 ref(|x|, |w|)`` (the output's rounding and
the float32 sum's).

Usage: ``python tests/sweep.py SEED COUNT ALGORITHM [bfloat16]``.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import reference, reference_vjp
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


def check_bfloat16(rng: np.random.Generator, cfg: dict, x_shape, w_shape, algorithm: str) -> bool:
    bf16 = jnp.bfloat16
    x = np.asarray(jnp.asarray(rng.standard_normal(x_shape), bf16), np.float64)
    w = np.asarray(jnp.asarray(rng.standard_normal(w_shape), bf16), np.float64)
    want = reference(x, w, **cfg)
    gy = np.asarray(jnp.asarray(rng.standard_normal(want.shape), bf16), np.float64)
    dx_want, dw_want = reference_vjp(x, w, gy, **cfg)
    ax, aw = np.abs(x), np.abs(w)
    bounds = [reference(ax, aw, **cfg), *reference_vjp(ax, aw, np.abs(gy), **cfg)]

    @jax.jit
    def everything(x, w, gy):
        y, vjp = jax.vjp(lambda x, w: conv_transpose([x, w], **cfg, algorithm=algorithm), x, w)
        return y, *vjp(gy)

    got = everything(jnp.asarray(x, bf16), jnp.asarray(w, bf16), jnp.asarray(gy, bf16))
    return all(
        g.dtype == bf16 and g.shape == e.shape
        and bool(np.all(np.abs(np.asarray(g, np.float64) - e) <= 2**-8 * np.abs(e) + 2**-14 * bound))
        for g, e, bound in zip(got, (want, dx_want, dw_want), bounds)
    )


def wide_channels(rng: np.random.Generator, cfg: dict, x_shape, w_shape) -> tuple[tuple, tuple]:
    """The shapes with up to 40 channels per group in and out."""
    cg_in, cg_out = int(rng.integers(1, 41)), int(rng.integers(1, 41))
    c_in = cfg["group"] * cg_in
    if cfg["data_format"] == "NCHW":
        return (x_shape[0], c_in, *x_shape[2:]), (c_in, cg_out, *w_shape[2:])
    return (*x_shape[:-1], c_in), (c_in, *w_shape[1:-1], cg_out)


def main(seed: int, count: int, algorithm: str, dtype: str = "float64") -> None:
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(seed)
    bad = 0
    for i in range(count):
        if dtype == "bfloat16":
            cfg, x_shape, w_shape, _ = random_config(rng, max_size=10)
            x_shape, w_shape = wide_channels(rng, cfg, x_shape, w_shape)
            print(i, x_shape, w_shape, cfg, flush=True)
            if not check_bfloat16(rng, cfg, x_shape, w_shape, algorithm):
                bad += 1
                print("MISMATCH", i, flush=True)
            continue
        cfg, x_shape, w_shape, c_out = random_config(rng)
        print(i, x_shape, w_shape, cfg, flush=True)
        if not check(rng, cfg, x_shape, w_shape, c_out, algorithm):
            bad += 1
            print("MISMATCH", i, flush=True)
    print(f"SWEEP {count} {bad}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (3, 4) or not args[0].isdigit() or not args[1].isdigit() or args[3:] not in ([], ["bfloat16"]):
        print("usage: python tests/sweep.py SEED COUNT ALGORITHM [bfloat16]\n"
              "       (ALGORITHM: auto, conv, gemm, phases, taps or native)\n"
              "e.g.:  python tests/sweep.py 0 500 gemm", file=sys.stderr)
        sys.exit(2)
    main(int(args[0]), int(args[1]), *args[2:])
