"""Complex inputs: the operator is bilinear, so a complex call is four real ones.

For ``x = xr + i*xi`` and ``w = wr + i*wi``, ``f(x, w) = f(xr, wr) - f(xi, wi) + i*(f(xr, wi) +
f(xi, wr))``, each ``f`` a real call through the chosen lowering (the native kernels on CPU).
The parts are taken and joined with ``jnp.real``, ``jnp.imag`` and ``lax.complex``, so
``grad``, ``vjp`` and ``jvp`` follow JAX's complex convention exactly as they do for
``lax.conv_transpose`` (a real loss's gradient in a complex input is the conjugate of its
derivative), and every other transform composes as for a real call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_deconv._plan import Plan

Apply = Callable[..., jax.Array]


def real_part_dtype(dtype: Any) -> np.dtype | None:
    """``float32`` for ``complex64``, ``float64`` for ``complex128``; None for a real dtype."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.complexfloating):
        return None
    return jnp.finfo(dtype).dtype


def complex_apply(apply: Apply) -> Apply:
    """``apply(x, w, b, plan=...)`` (a real lowering, see ``jax_deconv._lowering.bind``) for
    complex ``x`` and ``w`` (and a complex ``b``, added to the complex result)."""

    def run(x: jax.Array, w: jax.Array, b: jax.Array | None, *, plan: Plan) -> jax.Array:
        xr, xi, wr, wi = jnp.real(x), jnp.imag(x), jnp.real(w), jnp.imag(w)
        real = apply(xr, wr, None, plan=plan) - apply(xi, wi, None, plan=plan)
        imag = apply(xr, wi, None, plan=plan) + apply(xi, wr, None, plan=plan)
        y = lax.complex(real, imag)
        if b is None:
            return y
        shape = [1] * y.ndim
        shape[1 if plan.data_format == "NCHW" else -1] = plan.out_channels
        return y + b.astype(y.dtype).reshape(shape)

    return run
