"""The sign of zero: every result of every algorithm is +0.0 where it is zero.

A sum of products that starts from +0.0, as the native kernels' and PyTorch's do, is +0.0 where
every product is -0.0 (``+0.0 + -0.0 = +0.0``); XLA's convolutions and dots may give -0.0
there. Two linear primitives make the XLA lowerings follow the same rule, in their results and
in their gradients:

* ``positive_zero_p``: -0.0 made +0.0 on the bits (``v + 0.0`` does it in IEEE arithmetic, but
  XLA folds it to ``v``, and LLVM may fold it where XLA does not: neither touches integers);
  its transpose is ``gradient_zero_p``;
* ``gradient_zero_p``: the identity (no op at all); its transpose is ``positive_zero_p``.

A lowering ``F`` runs as ``positive_zero(F(gradient_zero(x), gradient_zero(w)))``: the forward
pays one elementwise pass over ``y`` (fused by XLA where ``y`` is made by a fusion), the
backward one over ``dx`` and over ``dw``; tangents (``jvp``) go through ``positive_zero`` as
``y`` does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

positive_zero_p = Primitive("jax_deconv_positive_zero")
gradient_zero_p = Primitive("jax_deconv_gradient_zero")


_BITS = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def _clear_negative_zero(v: jax.Array) -> jax.Array:
    bits_type = _BITS[jnp.dtype(v.dtype).itemsize]
    bits = lax.bitcast_convert_type(v, bits_type)
    negative_zero = jnp.asarray(jnp.iinfo(bits_type).min, bits_type)  # only the sign bit set
    return lax.bitcast_convert_type(jnp.where(bits == negative_zero, jnp.zeros((), bits_type), bits), v.dtype)


positive_zero_p.def_impl(lambda v: jax.jit(_clear_negative_zero)(v))
gradient_zero_p.def_impl(lambda v: v)
for _prim in (positive_zero_p, gradient_zero_p):
    _prim.def_abstract_eval(lambda v: v)
    batching.defvectorized(_prim)
mlir.register_lowering(positive_zero_p, mlir.lower_fun(_clear_negative_zero, multiple_results=False))
mlir.register_lowering(gradient_zero_p, lambda ctx, v: [v])
ad.deflinear(positive_zero_p, lambda ct: [gradient_zero_p.bind(ct)])
ad.deflinear(gradient_zero_p, lambda ct: [positive_zero_p.bind(ct)])


def positive_zero(v: jax.Array) -> jax.Array:
    """``v`` with -0.0 made +0.0 (the identity on every other value, NaN included)."""
    return positive_zero_p.bind(v)


def gradient_zero(v: jax.Array) -> jax.Array:
    """``v`` itself; the cotangent that reaches it through a transpose gets -0.0 made +0.0."""
    return gradient_zero_p.bind(v)
