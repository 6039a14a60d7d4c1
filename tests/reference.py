"""Direct-definition NumPy oracle for Dragon's conv_transpose, written from docs/semantics.md.

It shares no code with jax_deconv: every size rule is re-derived here, and the output is built
by scattering ``x[p] * w[q]`` to full position ``s*p + d*q`` one kernel tap at a time.
"""

from __future__ import annotations

import itertools

import numpy as np


def _per_axis(value, n):
    values = [value] if np.isscalar(value) else list(value)
    return values * n if len(values) == 1 else values


def _sizes(x_shape, w_shape, *, kernel_shape, strides=1, pads=0, dilations=1, group=1, padding="VALID",
           output_padding=None, output_shape=None):
    """Per-axis (kernel, stride, dilation, crop at the beginning, output size, full-result length)
    for NCHW shapes."""
    n = len(x_shape) - 2
    k = _per_axis(kernel_shape, n)
    s = _per_axis(strides, n)
    d = _per_axis(dilations, n)
    pads = _per_axis(pads, n)
    begin, end = (pads[:n], pads[n:]) if len(pads) == 2 * n else (pads, pads)
    size = x_shape[2:]
    full = [s[i] * (size[i] - 1) + d[i] * (k[i] - 1) + 1 for i in range(n)]
    extra = list(output_padding) if output_padding is not None else [0] * n
    if output_shape is None and padding == "VALID":
        out = [full[i] - begin[i] - end[i] + extra[i] for i in range(n)]
    else:
        out = list(output_shape)
        total = [max(full[i] - out[i], 0) for i in range(n)]
        if padding == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
    # full result, long enough for the kept window even past its end
    length = [max(full[i], begin[i] + out[i]) for i in range(n)]
    return k, s, d, begin, out, length


def _nchw(x, w, data_format):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    if data_format == "NHWC":  # work in NCHW: x (N, C, S...), w (C_in, Cg_out, K...)
        x = np.moveaxis(x, -1, 1)
        w = np.moveaxis(w, -1, 1)
    return x, w


def _tap(q, k, s, d, size):
    """The full-result positions that tap ``q`` of every input position lands on."""
    return tuple(slice(d[i] * q[i], d[i] * q[i] + s[i] * (size[i] - 1) + 1, s[i]) for i in range(len(k)))


def reference(x, w, b=None, *, group=1, data_format="NCHW", **config):
    x, w = _nchw(x, w, data_format)
    n = x.ndim - 2
    k, s, d, begin, out, length = _sizes(x.shape, w.shape, group=group, **config)
    batch, c_in = x.shape[:2]
    cg_in, cg_out = c_in // group, w.shape[1]
    c_out = cg_out * group
    y_full = np.zeros((batch, c_out, *length))
    for g in range(group):
        xg = x[:, g * cg_in:(g + 1) * cg_in]
        wg = w[g * cg_in:(g + 1) * cg_in]
        for q in itertools.product(*(range(ki) for ki in k)):
            contrib = np.einsum("nc...,co->no...", xg, wg[(slice(None), slice(None), *q)])
            y_full[(slice(None), slice(g * cg_out, (g + 1) * cg_out), *_tap(q, k, s, d, x.shape[2:]))] += contrib
    y = y_full[(slice(None), slice(None), *(slice(begin[i], begin[i] + out[i]) for i in range(n)))]
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape(1, -1, *[1] * n)
    if data_format == "NHWC":
        y = np.moveaxis(y, 1, -1)
    return y


def reference_vjp(x, w, gy, *, group=1, data_format="NCHW", **config):
    """``(dx, dw)``: the gradients of ``sum(gy * reference(x, w))``, by the same scatter read
    backwards (each tap gathers ``gy`` at the positions it wrote), in the caller's layout."""
    x, w = _nchw(x, w, data_format)
    gy = np.asarray(gy, np.float64)
    if data_format == "NHWC":
        gy = np.moveaxis(gy, -1, 1)
    n = x.ndim - 2
    k, s, d, begin, out, length = _sizes(x.shape, w.shape, group=group, **config)
    cg_in, cg_out = x.shape[1] // group, w.shape[1]
    gy_full = np.zeros((gy.shape[0], gy.shape[1], *length))
    gy_full[(slice(None), slice(None), *(slice(begin[i], begin[i] + out[i]) for i in range(n)))] = gy
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for g in range(group):
        ci, co = slice(g * cg_in, (g + 1) * cg_in), slice(g * cg_out, (g + 1) * cg_out)
        for q in itertools.product(*(range(ki) for ki in k)):
            part = gy_full[(slice(None), co, *_tap(q, k, s, d, x.shape[2:]))]
            tap = (slice(None), slice(None), *q)
            dx[:, ci] += np.einsum("no...,co->nc...", part, w[ci][tap])
            summed = [0, *range(2, n + 2)]  # batch and space
            dw[(ci, slice(None), *q)] += np.tensordot(x[:, ci], part, axes=(summed, summed))
    if data_format == "NHWC":
        dx, dw = np.moveaxis(dx, 1, -1), np.moveaxis(dw, 1, -1)
    return dx, dw
