"""The regular convolution on the native kernels (``jax_deconv.lax.conv_general_dilated``).

A convolution ``y[o] = sum_q x[s*o + d*q - lo] . w[q]`` (per spatial axis; stride ``s``,
``rhs_dilation`` ``d``, low padding ``lo``) is, term for term, the input-gradient map of the
transposed convolution that takes ``y``'s positions to ``x``'s: the native ``dx_p`` with the
roles of the two sides exchanged (its "input" is the convolution's output, its "output" the
convolution's input, cropped by ``lo`` at the front; padding past the end reads nothing). So the
convolution is one call of that kernel, and its gradients are the transposes already registered
for it: the input gradient a transposed convolution (``forward_p``), the weight gradient
``dw_p``; every transform works as for the transposed convolution. Negative padding crops ``x``
first.

Canonical layouts here: ``x`` ``(N, S.., C_in)``, ``w`` ``(K.., C_in/G, C_out)`` (lax's
``HWIO``), ``y`` ``(N, O.., C_out)``; :mod:`jax_deconv.lax` converts dimension numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_deconv import _native as native
from jax_deconv._cost import native_overhead_bound


def out_size(size: int, kernel: int, stride: int, dilation: int, lo: int, hi: int) -> int:
    """Positions of a convolution's output along one axis (0 when the window never fits)."""
    return max(0, (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1)


def geometry(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int], pads: Sequence[tuple[int, int]],
             dilations: Sequence[int], groups: int) -> native.Geometry:
    """The transposed convolution (native ``Geometry``) whose input gradient is this convolution.

    ``pads`` non-negative; every output size at least 1.
    """
    spatial, kernel = tuple(x_shape[1:-1]), tuple(w_shape[:-2])
    outs = tuple(out_size(*a, lo, hi) for a, (lo, hi) in zip(zip(spatial, kernel, strides, dilations), pads))
    return native.Geometry.of_axes(x_shape[0], groups, w_shape[-1] // groups, x_shape[-1] // groups, outs, spatial,
                                   kernel, strides, dilations, [lo for lo, _ in pads])


def crop_negative_padding(x: jax.Array, pads: Sequence[tuple[int, int]]) -> tuple[jax.Array, list[tuple[int, int]]]:
    """``x`` (channels-last) cropped where a padding is negative, and the padding left (>= 0)."""
    for axis, (lo, hi) in enumerate(pads):
        if lo < 0 or hi < 0:
            size = x.shape[1 + axis]
            x = lax.slice_in_dim(x, max(0, -lo), size + min(0, hi), axis=1 + axis)
    return x, [(max(0, lo), max(0, hi)) for lo, hi in pads]


def unsupported(x_shape: Sequence[Any], dtype: Any, n: int) -> str | None:
    """Why the native kernels cannot run this convolution, or None."""
    if not native.AVAILABLE:
        return native.UNAVAILABLE_BECAUSE
    if not 1 <= n <= native.MAX_NDIM:
        return f"{n} spatial axes (the kernels take 1 to {native.MAX_NDIM})"
    if not all(isinstance(v, int) for v in x_shape):
        return "symbolic sizes (jax.export)"
    if not jnp.issubdtype(dtype, jnp.floating) or np.dtype(dtype).itemsize > 8:
        return f"dtype {np.dtype(dtype)} (the kernels take float16, bfloat16, float32 and float64)"
    return None


def worth_it(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
             pads: Sequence[tuple[int, int]], dilations: Sequence[int], groups: int) -> bool:
    """Whether ``'auto'`` runs the kernels on CPU: unless they would run many tiny matrix
    products (:func:`jax_deconv._cost.native_overhead_bound`) or the output is empty."""
    geo = geometry(x_shape, w_shape, strides, [(max(0, a), max(0, b)) for a, b in pads], dilations, groups)
    return min(geo.in_spatial) >= 1 and not native_overhead_bound(geo.plan())


def conv_native(x: jax.Array, w: jax.Array, strides: Sequence[int], pads: Sequence[tuple[int, int]],
                dilations: Sequence[int], groups: int, dtype: Any) -> jax.Array:
    """The convolution through the native kernels, computed and returned in ``dtype`` (float16
    widened to float32 and rounded once). Canonical layouts (module docstring)."""
    wide = np.dtype(dtype) if np.dtype(dtype) in native.DTYPES else np.dtype(np.float32)
    x, pads = crop_negative_padding(x.astype(wide), pads)
    n = x.ndim - 2
    geo = geometry(x.shape, w.shape, strides, pads, dilations, groups)
    c_out = w.shape[-1]
    if min(geo.in_spatial) < 1 or min(x.shape) == 0:  # the window never fits, or nothing to read
        return jnp.zeros((x.shape[0], *geo.in_spatial[3 - n:], c_out), dtype)
    kernel = w.shape[:-2]
    w = w.astype(wide).reshape(*kernel, w.shape[-2], groups, c_out // groups)  # (K.., Cg_in, G, Cg_out)
    # the transposed view's weight (G, K.., its Cg_in, its Cg_out) = (G, K.., Cg_out, Cg_in) here
    wf = jnp.swapaxes(jnp.moveaxis(w, -2, 0), -1, -2)
    y = native.input_gradient(x, wf, geo)
    return y.astype(dtype)
