"""The computation shared by the Flax linen and NNX ``ConvTranspose`` drop-ins (no Flax import).

Flax's ``ConvTranspose`` is ``lax.conv_transpose`` on channels-last inputs with any number of
batch axes (flattened into one, or added when absent), plus ``'CIRCULAR'`` padding: the
``'VALID'`` result is folded onto a period of ``stride * S`` positions per axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jax_deconv._native.bias import add_bias
from jax_deconv.lax import conv_transpose


def _broadcast(value: int | Sequence[int] | None, n: int) -> tuple[int, ...]:
    """Flax's convention: None is 1, an int is used for every axis."""
    value = 1 if value is None else value
    return (value,) * n if isinstance(value, int) else tuple(value)


def _lax_padding(op: str, padding: Any, n: int) -> Any:
    """Flax's padding forms -> lax's: a string as is, an int or per-axis ints -> (p, p) pairs."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return [(padding, padding)] * n
    if isinstance(padding, Sequence) and len(padding) == n:
        pairs = [(p, p) if isinstance(p, int) else p for p in padding]
        if all(isinstance(p, Sequence) and len(p) == 2 for p in pairs):
            return [tuple(p) for p in pairs]
    raise ValueError(
        f"{op}: `padding` must be a string, an int, or a sequence of {n} ints or (low, high) pairs; got {padding!r}."
    )


def _fold_circular(y: jax.Array, periods: Sequence[int], transpose_kernel: bool) -> jax.Array:
    """Wrap each spatial axis of a channels-last ``y`` onto its period (Flax's alignment).

    Each axis is zero-padded to an odd multiple of its period ``P`` (total length
    ``= P mod 2P``), centred with the odd element in front (behind with ``transpose_kernel``),
    then summed over the period blocks.
    """
    config = [(0, 0)] * y.ndim
    for i, period in enumerate(periods):
        extra = -(y.shape[1 + i] - period) % (2 * period)
        half = extra // 2 if transpose_kernel else (extra + 1) // 2
        config[1 + i] = (half, extra - half)
    y = jnp.pad(y, config)
    for i, period in enumerate(periods):
        axis = 1 + i
        y = y.reshape(*y.shape[:axis], -1, period, *y.shape[axis + 1:]).sum(axis=axis)
    return y


def channels_last_transpose(
    op: str,
    inputs: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    kernel_size: Sequence[int],
    strides: Any,
    padding: Any,
    kernel_dilation: Any,
    transpose_kernel: bool,
    precision: Any,
    preferred_element_type: Any,
    feature_group_count: int,
) -> jax.Array:
    """Flax ``ConvTranspose.__call__`` after its parameters are read, masked and promoted."""
    n = len(kernel_size)
    batch_axes = inputs.ndim - (n + 1)
    batch_shape = inputs.shape[:batch_axes]
    if batch_axes != 1:
        inputs = inputs.reshape(-1, *inputs.shape[batch_axes:])
    strides_ = _broadcast(strides, n)
    lax_padding = _lax_padding(op, padding, n)
    circular = lax_padding == "CIRCULAR"
    y = conv_transpose(
        inputs, kernel, strides_, "VALID" if circular else lax_padding, rhs_dilation=_broadcast(kernel_dilation, n),
        transpose_kernel=transpose_kernel, precision=precision, preferred_element_type=preferred_element_type,
        feature_group_count=feature_group_count,
    )
    if circular:
        periods = [size * s for size, s in zip(inputs.shape[1:-1], strides_)]
        y = _fold_circular(y, periods, transpose_kernel)
    if bias is not None:
        y = add_bias(y, bias, -1, jnp.result_type(y, bias))
    if batch_axes != 1:
        y = y.reshape(*batch_shape, *y.shape[1:])
    return y
