"""Shared test data: the Dragon golden cases and the dtype-keyed tolerance table."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
ALGORITHMS = ("conv", "gemm")

# rtol = atol, relative to the scale of the output (see `assert_close`)
TOLERANCE = {
    jnp.dtype(jnp.float64): 1e-10,
    jnp.dtype(jnp.float32): 2e-5,
    jnp.dtype(jnp.float16): 5e-3,
    jnp.dtype(jnp.bfloat16): 3e-2,
}


def assert_close(got, want, dtype=None) -> None:
    """``|got - want| <= tol * (1 + max|want|)`` with ``tol`` from the dtype table."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    tol = TOLERANCE[jnp.dtype(dtype or jnp.float32)]
    scale = 1.0 + (np.abs(want).max() if want.size else 0.0)
    err = np.abs(got - want).max() if want.size else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} * {scale:.3g}"


def load_golden(name: str) -> list:
    """``[(case_id, args, inputs, y, gy, grads)]`` from ``tests/data/<name>.npz``.

    Dragon reports the NHWC weight gradient under the NCHW weight shape with NHWC-ordered
    data (SEMANTICS.md, bug 3), so ``dw`` is reshaped to the weight's own shape.
    """
    z = np.load(os.path.join(DATA, name + ".npz"))
    cases = []
    for case in sorted({k.split("_")[0] for k in z.files}):
        args = json.loads(str(z[case + "_args"]))
        inputs = [z[case + "_x"], z[case + "_w"]]
        grads = [z[case + "_dx"], z[case + "_dw"].reshape(inputs[1].shape)]
        if args.pop("bias"):
            inputs.append(z[case + "_b"])
            grads.append(z[case + "_db"])
        cases.append((f"{name}:{case}", args, inputs, z[case + "_y"], z[case + "_gy"], grads))
    return cases
