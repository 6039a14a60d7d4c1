"""``jax_deconv.lax.conv_general_dilated`` (and ``conv``, ``conv_with_general_padding``):
``jax.lax``'s regular convolutions on jax_deconv's native CPU kernels.

Same signatures, defaults, dimension numbers, dtypes and results as the installed ``jax.lax``
functions; switching is one import (``from jax_deconv import lax as dlax``). On CPU, where the
native kernels are built and take the call, they compute it (:mod:`jax_deconv._conv`): forward,
both gradients and every transform. Everything else is passed to ``jax.lax`` itself, which then
computes it (or refuses it) exactly as it always does: ``lhs_dilation`` other than 1,
``batch_group_count`` other than 1, ``out_sharding``, inputs with an explicit sharding, more than
3 spatial axes, integer or complex inputs, ``lhs`` and ``rhs`` of different dtypes, and calls
``jax.lax`` would refuse (its message, not ours). Off CPU (GPU, TPU), and in ``jax.export``,
the computation is ``jax.lax``'s own convolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax as _lax

from jax_deconv import _native as native
from jax_deconv._conv import conv_native, unsupported, worth_it
from jax_deconv._types import CONV_ALGORITHMS, ConvAlgorithm


def conv_general_dilated(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: _lax.PrecisionLike = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
    *,
    algorithm: ConvAlgorithm = "auto",
) -> jax.Array:
    """``jax.lax.conv_general_dilated`` on jax_deconv's native CPU kernels.

    Every argument is ``jax.lax.conv_general_dilated``'s (``dimension_numbers`` None means
    ``('NCH..', 'OIH..', 'NCH..')``), with the same result: ``lhs`` ``(N, C_in, S..)`` and ``rhs``
    ``(C_out, C_in/G, K..)`` in the default layouts give ``(N, C_out, O..)``, ``O = floor((S + lo
    + hi - d*(K-1) - 1) / s) + 1``. See the module docstring for what is passed to ``jax.lax``.

    ``lhs``, ``rhs``, ``window_strides``, ``padding``, ``lhs_dilation``, ``rhs_dilation``,
    ``dimension_numbers``, ``feature_group_count``, ``batch_group_count``, ``precision``,
    ``preferred_element_type`` and ``out_sharding`` are ``jax.lax.conv_general_dilated``'s.

    Args:
      algorithm: ``'auto'`` (the native kernels on CPU where they take the call and would not
        run many tiny matrix products, else ``jax.lax``), ``'native'`` (refused by name where
        the kernels cannot run the call) or ``'xla'`` (``jax.lax`` itself).

    Returns:
      The convolution in ``dimension_numbers``' output layout.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax_deconv import lax as dlax
      >>> x = jnp.arange(32.0).reshape(1, 2, 4, 4)               # NCHW
      >>> k = jnp.ones((3, 2, 3, 3))                              # OIHW
      >>> y = dlax.conv_general_dilated(x, k, (1, 1), "SAME")
      >>> y.shape, bool(jnp.allclose(y, jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")))
      ((1, 3, 4, 4), True)
    """
    op = "jax_deconv.lax.conv_general_dilated"
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"{op}: `algorithm` must be one of {CONV_ALGORITHMS}; got {algorithm!r}.")

    def original() -> jax.Array:
        return _lax.conv_general_dilated(
            lhs,  # pyright: ignore[reportArgumentType] (lax takes array-likes)
            rhs,  # pyright: ignore[reportArgumentType]
            window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count, precision, preferred_element_type, out_sharding,
        )

    if algorithm == "xla":
        return original()
    call = _resolve(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, batch_group_count, preferred_element_type, out_sharding)
    if isinstance(call, str):
        if algorithm == "native":
            raise ValueError(f"{op}: algorithm='native' cannot run this call: {call}; use 'auto' or 'xla'.")
        native.warn_unavailable_once()
        return original()
    x, w, strides, pads, dilations, dtype, dn = call
    groups = int(feature_group_count)
    if algorithm == "auto" and not worth_it(x.shape, w.shape, strides, pads, dilations, groups):
        return original()
    n = x.ndim - 2
    spatial = "HWD"[:n] if n <= 3 else None

    def on_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
        return conv_native(x, w, strides, pads, dilations, groups, dtype)

    def elsewhere(x: jax.Array, w: jax.Array) -> jax.Array:
        return _lax.conv_general_dilated(
            x, w, strides, pads, None, dilations, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"), groups, 1,
            precision, preferred_element_type,
        )

    y = on_cpu(x, w) if algorithm == "native" else _lax.platform_dependent(x, w, cpu=on_cpu, default=elsewhere)
    # canonical (N, O.., C_out) -> the output spec: axis out_spec[0] holds N, out_spec[1] C, out_spec[2+i] O_i
    perm = [0] * (n + 2)
    perm[dn.out_spec[0]], perm[dn.out_spec[1]] = 0, n + 1
    for i, axis in enumerate(dn.out_spec[2:]):
        perm[axis] = 1 + i
    return y if perm == list(range(n + 2)) else jnp.transpose(y, perm)


def _resolve(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups,
             batch_group_count, preferred, out_sharding):
    """The call in canonical layouts for the native kernels, or why they do not take it (a str:
    the call then goes to ``jax.lax`` as it is)."""
    if out_sharding is not None:
        return "out_sharding is given"
    try:
        lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    except (TypeError, ValueError):
        return "lhs or rhs is not an array"
    if lhs.dtype != rhs.dtype:
        return f"lhs and rhs have different dtypes ({lhs.dtype}, {rhs.dtype})"
    n = lhs.ndim - 2
    reason = unsupported(lhs.shape, lhs.dtype, n) or unsupported(rhs.shape, rhs.dtype, n)
    if reason is not None:
        return reason
    for value in (lhs, rhs):
        spec = getattr(getattr(jax.typeof(value), "sharding", None), "spec", None) if hasattr(jax, "typeof") else None
        if spec is not None and any(entry is not None for entry in spec):
            return "an input carries an explicit sharding"
    if lhs_dilation is not None and any(int(v) != 1 for v in lhs_dilation):
        return "lhs_dilation is not 1 (a transposed convolution: jax_deconv.lax.conv_transpose)"
    if batch_group_count != 1:
        return "batch_group_count is not 1"
    dtype = np.dtype(lhs.dtype) if preferred is None else np.dtype(preferred)
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.promote_types(dtype, lhs.dtype) != dtype:
        return f"preferred_element_type {dtype} is not a float at least as wide as {lhs.dtype}"
    try:
        dn = _lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        groups = int(groups)
        strides = tuple(int(s) for s in window_strides)
        dilations = (1,) * n if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
    except (TypeError, ValueError) as error:
        return f"its arguments ({error})"
    x = jnp.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))
    w = jnp.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))  # (K.., I, O)
    kernel = w.shape[:-2]
    if (len(strides) != n or len(dilations) != n or groups < 1 or min(strides + dilations, default=1) < 1
            or x.shape[-1] != w.shape[-2] * groups or w.shape[-1] % groups or min(x.shape[1:]) < 1
            or min(kernel) < 1 or w.shape[-1] < 1):
        return "its shapes or sizes (jax.lax says which)"
    if isinstance(padding, str):
        try:
            window = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
            pads = [tuple(p) for p in _lax.padtype_to_pads(x.shape[1:-1], window, strides, padding)]
        except (TypeError, ValueError) as error:
            return f"its padding ({error})"
    else:
        try:
            pads = [(int(lo), int(hi)) for lo, hi in padding]
        except (TypeError, ValueError):
            return "its padding"
        if len(pads) != n:
            return "its padding"
    return x, w, strides, pads, dilations, dtype, dn


def conv(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    window_strides: Sequence[int],
    padding: str,
    precision: _lax.PrecisionLike = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``jax.lax.conv``: :func:`conv_general_dilated` with its defaults (NCHW, OIHW)."""
    return conv_general_dilated(lhs, rhs, window_strides, padding, precision=precision,
                                preferred_element_type=preferred_element_type)


def conv_with_general_padding(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None,
    rhs_dilation: Sequence[int] | None,
    precision: _lax.PrecisionLike = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``jax.lax.conv_with_general_padding``: :func:`conv_general_dilated` with its defaults."""
    return conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                precision=precision, preferred_element_type=preferred_element_type)
