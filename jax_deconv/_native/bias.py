"""A layer's bias, ``y + b`` along the channel axis, with its gradient summed by the native kernels.

Two linear primitives, each the other's transpose:

* ``spread_p(b) -> B``: ``b`` (``(C,)``) broadcast to ``shape`` along ``axis`` and cast to
  ``dtype`` (``lax.broadcast_in_dim``, which XLA fuses into the add);
* ``sum_p(B) -> b``: ``B`` summed over every axis but ``axis``, in float32 at least, and rounded
  once to ``dtype``: the bias gradient.

On CPU with the kernels built, ``sum_p`` is one pass of the native ``bias_sum`` map (its cut
into pieces does not depend on the threads, so neither does the result); elsewhere, in
``jax.export``, under ``vmap`` and for operands XLA partitions over several devices, it is
XLA's reduction. XLA:CPU computes ``jnp.sum`` of a bfloat16 gradient well on its own, but
fuses the rounding of a 16-bit result into the reduction and then runs one scalar sum per
channel (2 ms, against 0.1 ms unfused, for a 32^3 x 16 gradient: ~10 % of a mixed-precision 3-D
U-Net training step), which is what ``sum_p`` avoids.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jax_deconv import _native as native

spread_p = Primitive("jax_deconv_bias_spread")
sum_p = Primitive("jax_deconv_bias_sum")

# (gradient dtype, bias dtype) pairs the kernel sums; others are XLA's
_KERNEL_DTYPES = {(np.dtype(np.float32),) * 2, (np.dtype(np.float64),) * 2, (np.dtype(jnp.bfloat16),) * 2,
                  (np.dtype(jnp.bfloat16), np.dtype(np.float32)), (np.dtype(np.float32), np.dtype(jnp.bfloat16))}


def add_bias(y: jax.Array, b: jax.Array, axis: int, dtype: Any = None) -> jax.Array:
    """``y + b`` with ``b`` (``(C,)``) along ``y``'s axis ``axis``, both cast to ``dtype``
    (default ``y``'s) first: what ``y + b.reshape(...)`` computes, with its gradient in ``b``
    summed by :data:`sum_p`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv._native.bias import add_bias
      >>> add_bias(jnp.zeros((2, 3, 2)), jnp.array([1.0, 2.0]), axis=-1)[1, 2]
      Array([1., 2.], dtype=float32)
    """
    dtype = np.dtype(y.dtype if dtype is None else dtype)
    axis = axis % y.ndim
    return y.astype(dtype) + spread_p.bind(b, shape=tuple(y.shape), axis=axis, dtype=dtype)


def _replicated(aval: Any) -> Any:
    return jax.sharding.NamedSharding(aval.sharding.mesh, jax.sharding.PartitionSpec())


def _spread_abstract(b, *, shape, axis, dtype):
    del axis
    return b.update(shape=shape, dtype=dtype, weak_type=False, sharding=_replicated(b))


def _sum_abstract(ct, *, axis, dtype):
    return ct.update(shape=(ct.shape[axis],), dtype=dtype, weak_type=False, sharding=_replicated(ct))


def _spread(b, *, shape, axis, dtype):
    return lax.broadcast_in_dim(b.astype(dtype), shape, (axis,))


def _summed(ct, kept: tuple[int, ...], dtype) -> jax.Array:
    """``ct`` summed over every axis not in ``kept``, in float32 at least, rounded once to ``dtype``."""
    others = tuple(a for a in range(ct.ndim) if a not in kept)
    return jnp.sum(ct.astype(native._wide(jnp.promote_types(ct.dtype, dtype))), axis=others).astype(dtype)


def _xla_sum(ct, *, axis, dtype):
    return _summed(ct, (axis,), dtype)


def _spread_transpose(ct, b, *, shape, axis, dtype):
    del shape, dtype
    if type(ct) is ad.Zero:
        return [ad.Zero(b.aval)]
    if native._partitioned([ct]):  # XLA partitions its own reduction (the kernel would gather dy)
        return [_xla_sum(ct, axis=axis, dtype=b.aval.dtype)]
    return [sum_p.bind(ct, axis=axis, dtype=np.dtype(b.aval.dtype))]


def _sum_transpose(ct, dy, *, axis, dtype):
    del dtype
    if type(ct) is ad.Zero:
        return [ad.Zero(dy.aval)]
    return [spread_p.bind(ct, shape=tuple(dy.aval.shape), axis=axis, dtype=np.dtype(dy.aval.dtype))]


def _spread_batch(args, dims, *, shape, axis, dtype):
    (b,), (d,) = args, dims
    b = jnp.moveaxis(b, d, 0)
    return lax.broadcast_in_dim(b.astype(dtype), (b.shape[0], *shape), (0, axis + 1)), 0


def _sum_batch(args, dims, *, axis, dtype):
    (ct,), (d,) = args, dims
    return _summed(jnp.moveaxis(ct, d, 0), (0, axis + 1), dtype), 0


def _sum_lowering(ctx, ct, *, axis, dtype):
    aval = ctx.avals_in[0]
    if not native.AVAILABLE or native.for_export(ctx) or (np.dtype(aval.dtype), dtype) not in _KERNEL_DTYPES \
            or math.prod(aval.shape) == 0:
        return mlir.lower_fun(lambda v: _xla_sum(v, axis=axis, dtype=dtype), multiple_results=False)(ctx, ct)
    shape = np.array([math.prod(aval.shape[:axis]), aval.shape[axis], math.prod(aval.shape[axis + 1:])], np.int64)

    def call(v):
        return jax.ffi.ffi_call("jax_deconv_bias_sum", jax.ShapeDtypeStruct((aval.shape[axis],), dtype))(v, shape=shape)

    return mlir.lower_fun(call, multiple_results=False)(ctx, ct)


spread_p.def_abstract_eval(_spread_abstract)
sum_p.def_abstract_eval(_sum_abstract)
spread_p.def_impl(lambda b, **params: jax.jit(_spread, static_argnames=tuple(params))(b, **params))
sum_p.def_impl(lambda ct, **params: jax.jit(sum_p.bind, static_argnames=tuple(params))(ct, **params))
ad.deflinear2(spread_p, _spread_transpose)
ad.deflinear2(sum_p, _sum_transpose)
batching.primitive_batchers[spread_p] = _spread_batch
batching.primitive_batchers[sum_p] = _sum_batch
mlir.register_lowering(spread_p, mlir.lower_fun(_spread, multiple_results=False))
mlir.register_lowering(sum_p, mlir.lower_fun(_xla_sum, multiple_results=False))
mlir.register_lowering(sum_p, _sum_lowering, platform="cpu")
