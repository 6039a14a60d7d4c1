"""Lowering of a :class:`~jax_deconv._plan.Plan` onto XLA (``lax`` ops only).

``'conv'`` and ``'gemm'`` use the sub-pixel (phase) form derived in ``_plan.py``: the kernel is split
into ``prod(strides)`` phase sub-kernels, a stride-1 correlation of the *undilated* input
computes every phase at once, and a depth-to-space shuffle interleaves the phases. No
``lhs_dilation`` is ever emitted, so

* XLA never multiplies inserted zeros (``prod(strides)`` times less work than the plain
  lowering),
* plain autodiff gives the gradients: ``dx`` is a stride-1 correlation of ``dy`` (the
  forward strided convolution in phase form) and ``dw`` a stride-1 filter gradient, which
  cuDNN and XLA's CPU dot emitter run directly; every transform (``jvp``, ``vjp``, ``vmap``,
  ``hessian``, ``remat``...) works with no custom rule,
* negative padding never reaches XLA (crops are slices), which avoids the XLA aborts of the
  plain lowering on small volumes.

``'phases'`` and ``'taps'`` have all three without multiplying the phase form's zeros.
``'gemm'``, ``'phases'`` and ``'taps'`` multiply and accumulate 16-bit inputs in float32 and round
the result once (``'conv'`` leaves that to the convolution's backend).

Algorithms (``algorithm=``):

``'conv'``  one ``lax.conv_general_dilated`` (feature_group_count = group, phases as extra
            output features); the choice for GPU/TPU, where it maps onto cuDNN / the MXU.
``'gemm'``  im2col over the ``prod(taps)`` phase taps + one ``lax.dot_general`` batched over
            groups (groups lead, so no operand is transposed); the choice on CPU, where dots
            reach a fast GEMM and XLA's 3-D convolution does not. Its im2col is
            ``prod(taps)`` times the (cropped, padded) input, in float32; above 32 MiB (or
            ``max_buffer_bytes``) it steps through the first spatial axis (``lax.map``), each
            step's im2col rebuilt in the backward (``jax.checkpoint``) rather than kept, so it
            holds one step's im2col at a time.
``'phases'`` the phase form without its zeros: per phase, an im2col over the kernel taps
            that phase really takes and one matrix product; empty phases are zeros. The
            definition's work; ``prod(strides)`` products (at most 512), so right where a
            dilation shares a factor with the stride (k3 s2 d2: 8x less work than
            ``'gemm'`` in 3-D), wrong for large strides or kernels (a k5 s2 phase im2col
            holds up to 27 copies of x, the 8 together 125).
``'taps'``  the definition itself, one matrix product per kernel tap scatter-added in place
            into the output: no phase kernel, no zero ever multiplied (non-finite inputs
            propagate exactly as the definition says), buffers that follow the taps reaching
            the output; slow for large kernels, right for large dilations or strides above the
            input's size. Where many taps reach the whole output XLA may hold every tap's
            product at once (a stride-1 k3 layer: 27 times y).
``'auto'``  chosen from the cost estimates of ``_cost.py`` per platform (see
            :func:`choose_algorithm`): ``'gemm'`` on CPU, ``'conv'`` elsewhere; ``'phases'``
            or ``'taps'`` where the phase form's buffers or work would be out of proportion
            to the call, and ``'phases'`` on CPU where the phase form would do 3x its work.
"""


from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_deconv import _native as native
from jax_deconv._complex import complex_apply, real_part_dtype
from jax_deconv._cost import (
    GEMM_STEP_ABOVE,
    check_max_buffer_bytes,
    choose,
    gemm_row_bytes,
    gemm_slab,
    refusal,
)
from jax_deconv._inputs import check_floating
from jax_deconv._native.bias import add_bias
from jax_deconv._plan import Plan, phase_taps
from jax_deconv._types import ALGORITHMS
from jax_deconv._zero import gradient_zero, positive_zero


def _phase_kernel(w: jax.Array, plan: Plan, order: Sequence[str]) -> jax.Array:
    """Weight -> phase sub-kernels, taps flipped for correlation, axes in ``order``.

    The axes are named ``G``, ``Cin`` (per group), ``Cout`` (per group), ``T`` (all the tap
    axes, ``T1..Tn``) and ``s`` (all the phase axes, ``s1..sn``).
    """
    n, g = plan.ndim, plan.group
    if plan.data_format == "NHWC":  # (C_in, *K, Cg_out) -> (C_in, Cg_out, *K)
        w = jnp.moveaxis(w, -1, 1)
    phases = plan.phases
    # dilate by d and zero-pad to s*T taps; (0, 0, 0) on axes with stride 1
    config = [(0, 0, 0), (0, 0, 0)]
    for k, d, p in zip(plan.kernel, plan.dilations, phases):
        config.append((0, 0, 0) if p.stride == 1 else (0, p.kernel_padded - (d * (k - 1) + 1), d - 1))
    w = lax.pad(w, jnp.zeros((), w.dtype), config)
    split = [dim for p in phases for dim in (p.taps, p.stride)]
    w = w.reshape(g, plan.in_channels // g, w.shape[1], *split)
    w = jnp.flip(w, axis=tuple(3 + 2 * i for i in range(n)))
    axes = {"G": [0], "Cin": [1], "Cout": [2], "T": [3 + 2 * i for i in range(n)], "s": [4 + 2 * i for i in range(n)]}
    return jnp.transpose(w, [a for name in order for a in axes[name]])


def _crop_and_pad(x: jax.Array, plan: Plan, spatial_axes: Sequence[int]) -> jax.Array:
    """Crop (slices) then zero-pad (non-negative) ``x`` as the phase plan says."""
    phases = plan.phases
    start = [0] * x.ndim
    limit = list(x.shape)
    config = [(0, 0, 0)] * x.ndim
    for ax, p in zip(spatial_axes, phases):
        start[ax], limit[ax] = p.crop[0], x.shape[ax] - p.crop[1]
        config[ax] = (p.pad[0], p.pad[1], 0)
    x = lax.slice(x, start, limit)
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _shuffle(y: jax.Array, names: list[str], plan: Plan) -> jax.Array:
    """Depth-to-space: axes named N, G, Cg, M<i>, s<i> -> the output layout, then crop."""
    n = plan.ndim
    spatial = [name for i in range(n) for name in (f"M{i}", f"s{i}")]
    target = ["N", "G", "Cg", *spatial] if plan.data_format == "NCHW" else ["N", *spatial, "G", "Cg"]
    y = jnp.transpose(y, [names.index(name) for name in target])
    phases = plan.phases
    inter = [(p.m_end - p.m_begin) * p.stride for p in phases]
    if plan.data_format == "NCHW":
        y = y.reshape(plan.batch, plan.out_channels, *inter)
        first = 2
    else:
        y = y.reshape(plan.batch, *inter, plan.out_channels)
        first = 1
    start = [0] * y.ndim
    limit = list(y.shape)
    for i, p in enumerate(phases):
        start[first + i], limit[first + i] = p.offset, p.offset + p.out
    return lax.slice(y, start, limit)


def _lower_conv(x, w, plan: Plan, precision, preferred) -> jax.Array:
    n, g = plan.ndim, plan.group
    phases = plan.phases
    cg_in, cg_out = plan.in_channels // g, plan.out_channels // g
    k = _phase_kernel(w, plan, ["G", "s", "Cout", "Cin", "T"])
    k = k.reshape(g * math.prod(p.stride for p in phases) * cg_out, cg_in, *(p.taps for p in phases))
    if plan.data_format == "NCHW":
        lhs_spec, spatial_axes = (0, 1, *range(2, n + 2)), list(range(2, n + 2))
    else:
        lhs_spec, spatial_axes = (0, n + 1, *range(1, n + 1)), list(range(1, n + 1))
    x = _crop_and_pad(x, plan, spatial_axes)
    dn = lax.ConvDimensionNumbers(lhs_spec=lhs_spec, rhs_spec=tuple(range(n + 2)), out_spec=lhs_spec)
    y = lax.conv_general_dilated(
        x,
        k,
        window_strides=(1,) * n,
        padding=[(0, 0)] * n,
        rhs_dilation=[p.dilation for p in phases],
        dimension_numbers=dn,
        feature_group_count=g,
        precision=precision,
        preferred_element_type=preferred,
    )
    m = [p.m_end - p.m_begin for p in phases]
    s = [p.stride for p in phases]
    if plan.data_format == "NCHW":
        y = y.reshape(plan.batch, g, *s, cg_out, *m)
        names = ["N", "G", *(f"s{i}" for i in range(n)), "Cg", *(f"M{i}" for i in range(n))]
    else:
        y = y.reshape(plan.batch, *m, g, *s, cg_out)
        names = ["N", *(f"M{i}" for i in range(n)), "G", *(f"s{i}" for i in range(n)), "Cg"]
    return _shuffle(y, names, plan)


def _im2col(x: jax.Array, offsets: Sequence[Sequence[int]], rows: Sequence[int]) -> jax.Array:
    """(G, N, P1..Pn, Cg_in) padded input -> (G, N, M1..Mn, T1*..*Tn, Cg_in) patches.

    One axis at a time (``sum(T)`` slices, not ``prod(T)``): along axis i, the ``rows[i]``
    positions from each offset in ``offsets[i]`` (``T_i`` of them).
    """
    n = len(offsets)
    for i, starts in enumerate(offsets):
        x = jnp.stack([lax.slice_in_dim(x, o, o + rows[i], axis=2 + i) for o in starts], axis=2 + n + i)
    return x.reshape(*x.shape[: 2 + n], -1, x.shape[-1])


def _groups_lead(x: jax.Array, plan: Plan) -> jax.Array:
    """x -> (G, N, P1..Pn, Cg_in), cropped and padded for the phase form: groups lead, so a
    dot batched over groups needs no transpose of its operands."""
    n, g = plan.ndim, plan.group
    cg_in = plan.in_channels // g
    if plan.data_format == "NCHW":
        x = x.reshape(plan.batch, g, cg_in, *plan.in_spatial)
        x = jnp.transpose(x, [1, 0, *range(3, n + 3), 2])
    else:
        x = x.reshape(plan.batch, *plan.in_spatial, g, cg_in)
        x = jnp.transpose(x, [n + 1, 0, *range(1, n + 1), n + 2])
    return _crop_and_pad(x, plan, list(range(2, n + 2)))


def _weight_groups(w: jax.Array, plan: Plan) -> jax.Array:
    """Weight -> (G, Cg_in, Cg_out, K1..Kn), either layout."""
    g = plan.group
    cg_in, cg_out = plan.in_channels // g, plan.out_channels // g
    if plan.data_format == "NCHW":
        return w.reshape(g, cg_in, cg_out, *plan.kernel)
    return jnp.moveaxis(w.reshape(g, cg_in, *plan.kernel, cg_out), -1, 2)


def _matmul(a: jax.Array, b: jax.Array, precision, preferred) -> jax.Array:
    """``(G, M, K) . (G, K, P) -> (G, M, P)``, as a plain matrix product when ``G == 1``.

    Operands are flattened to one free axis each: XLA:CPU's backward of a dot with several
    free axes transposes its cotangent with a slow strided copy. Measured on 2 cores (Intel
    Xeon, 2026-12-02), forward+backward of ``'gemm'``: layer B (N1 64->32 24^3 k2 s2) NHWC
    39 -> 11.5 ms, NCHW 19 -> 15 ms, temporaries 40.6 -> 13.6 MiB; layer D (grouped k3 s2)
    11 -> 7 ms; layer A (k4 s2) 22-25 -> 17-19 ms. Forwards unchanged.
    """
    if a.shape[0] == 1:
        y = lax.dot(a[0], b[0], precision=precision, preferred_element_type=preferred)
        return y[None]
    dims = (((2,), (1,)), ((0,), (0,)))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=preferred)


def _lower_gemm(x, w, plan: Plan, precision, preferred, slab: int = 0) -> jax.Array:
    """``slab``: phase rows of the first spatial axis per step (0: all at once); see ``_cost.gemm_slab``.

    Each operand of the dot is flattened to one free axis (see :func:`_matmul`).
    """
    n, g = plan.ndim, plan.group
    phases = plan.phases
    cg_in, cg_out = plan.in_channels // g, plan.out_channels // g
    if plan.data_format == "NCHW" and all(p.taps == 1 for p in phases):
        return _gemm_channels_first(x, w, plan, precision, preferred)
    x = _groups_lead(x, plan)
    m = [p.m_end - p.m_begin for p in phases]
    k = _phase_kernel(w, plan, ["G", "T", "Cin", "s", "Cout"]).reshape(g, -1, cg_in, math.prod(plan.strides) * cg_out)
    offsets = [[p.dilation * j for j in range(p.taps)] for p in phases]

    def gemm(x: jax.Array, rows: Sequence[int]) -> jax.Array:  # -> (G, N, M1..Mn, s1..sn * Cg_out)
        cols = _im2col(x, offsets, rows)
        y = _matmul(cols.reshape(g, -1, k.shape[1] * cg_in), k.reshape(g, -1, k.shape[-1]), precision, preferred)
        return y.reshape(*cols.shape[: n + 2], k.shape[-1])

    if not slab or slab >= m[0]:
        y = gemm(x, m)
    else:
        # The first axis in steps of `slab` phase rows, each step's im2col built, used and
        # dropped (and rebuilt in the backward, under checkpoint): the buffer is one step's.
        p0 = phases[0]
        steps = -(-m[0] // slab)
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] * 2 + [(0, steps * slab - m[0], 0)] + [(0, 0, 0)] * n)
        window = slab + p0.dilation * (p0.taps - 1)

        @jax.checkpoint
        def step(i: jax.Array) -> jax.Array:
            return gemm(lax.dynamic_slice_in_dim(x, i * slab, window, axis=2), [slab, *m[1:]])

        y = lax.map(step, jnp.arange(steps))  # (steps, G, N, slab, M2..Mn, P)
        y = jnp.moveaxis(y, 0, 2).reshape(g, plan.batch, steps * slab, *y.shape[4:])[:, :, : m[0]]
    y = y.reshape(g, plan.batch, *m, *(p.stride for p in phases), cg_out)
    names = ["G", "N", *(f"M{i}" for i in range(n)), *(f"s{i}" for i in range(n)), "Cg"]
    return _shuffle(y, names, plan)


def _gemm_channels_first(x, w, plan: Plan, precision, preferred) -> jax.Array:
    """``'gemm'`` for NCHW calls with one phase tap per axis (kernel <= stride, as in the k2 s2
    upsamplers of U-Nets): no im2col, so x stays channels-first and the phase kernel is the
    left operand, ``(G, s*Cg_out, Cg_in) . (G, N, Cg_in, M) -> (G, s*Cg_out, N, M)``; only
    the output is interleaved (measured on layer B, N1 64->32 24^3 k2 s2, one core: forward
    9.2 -> 5.8 ms against channels-last im2col)."""
    n, g = plan.ndim, plan.group
    cg_in, cg_out = plan.in_channels // g, plan.out_channels // g
    x = jnp.swapaxes(x.reshape(plan.batch, g, cg_in, *plan.in_spatial), 0, 1)  # (G, N, Cg_in, S...)
    x = _crop_and_pad(x, plan, list(range(3, n + 3)))
    m = x.shape[3:]
    k = _phase_kernel(w, plan, ["G", "s", "Cout", "Cin", "T"]).reshape(g, -1, cg_in)
    if plan.batch == 1:  # positions flattened: one free axis per operand (see _matmul)
        y = _matmul(k, x.reshape(g, cg_in, -1), precision, preferred)  # (G, s1..sn * Cg_out, M1*..*Mn)
    else:
        x = x.reshape(g, plan.batch, cg_in, -1)
        y = lax.dot_general(  # (G, s1..sn * Cg_out, N, M1*..*Mn)
            k, x, (((2,), (2,)), ((0,), (0,))), precision=precision, preferred_element_type=preferred
        )
    y = y.reshape(g, *plan.strides, cg_out, plan.batch, *m)
    names = ["G", *(f"s{i}" for i in range(n)), "Cg", "N", *(f"M{i}" for i in range(n))]
    return _shuffle(y, names, plan)


def _lower_phases(x, w, plan: Plan, precision, preferred) -> jax.Array:
    """The phase form without its zeros: each phase multiplies only the kernel taps it receives.

    For each of the ``prod(strides)`` phases, an im2col of the padded input over that phase's
    own taps (:func:`~jax_deconv._plan.phase_taps`: a k3 s2 axis gives its phases 2 and 1 taps,
    not 2 and 2; a dilation that shares a factor with the stride leaves phases empty) and one
    matrix product with those taps of the weight, a strided slice of it; empty phases are
    zeros. The phases' results are interleaved as in ``'gemm'``. The work is the definition's
    (up to the rows the crop keeps), the dilation is never materialised, and each im2col
    holds at most ``prod(taps)`` copies of the input (the phases run one after another).
    """
    n, g = plan.ndim, plan.group
    cg_out = plan.out_channels // g
    x, w = _groups_lead(x, plan), _weight_groups(w, plan)
    m = [p.m_end - p.m_begin for p in plan.phases]
    rows = plan.batch * math.prod(m)
    dtype = preferred or jnp.result_type(x, w)
    per_axis = phase_taps(plan)
    outs = []
    for phase in np.ndindex(*plan.strides):
        taps = [per_axis[i][r] for i, r in enumerate(phase)]
        if not all(taps):  # no kernel tap reaches this phase
            outs.append(jnp.zeros((g, plan.batch, *m, cg_out), dtype))
            continue
        cols = _im2col(x, [[o for o, _ in t] for t in taps], m)
        # the phase's taps of one axis are evenly spaced in the kernel: a strided slice
        first = [t[0][1] for t in taps]
        step = [t[1][1] - t[0][1] if len(t) > 1 else 1 for t in taps]
        wr = lax.slice(w, [0, 0, 0, *first], [*w.shape[:3], *(q + 1 + s * (len(t) - 1) for q, s, t in
                                                              zip(first, step, taps))], [1, 1, 1, *step])
        wr = jnp.moveaxis(wr, 1, -1).reshape(g, cg_out, -1)  # (G, Cg_out, T1*..*Tn * Cg_in)
        cols = cols.reshape(*cols.shape[: n + 2], -1)  # (G, N, M1..Mn, T1*..*Tn * Cg_in)
        y = _matmul(cols.reshape(g, rows, -1), jnp.swapaxes(wr, 1, 2), precision, preferred)
        outs.append(y.reshape(g, plan.batch, *m, cg_out).astype(dtype))
    y = jnp.stack(outs, axis=n + 2).reshape(g, plan.batch, *m, *plan.strides, cg_out)
    names = ["G", "N", *(f"M{i}" for i in range(n)), *(f"s{i}" for i in range(n)), "Cg"]
    return _shuffle(y, names, plan)


def _lower_taps(x, w, plan: Plan, precision, preferred) -> jax.Array:
    """The definition, one kernel tap at a time: no phase kernel, no zero ever multiplied.

    Tap ``q`` sends input position ``p`` to output position ``s*p + d*q - pad_begin``. Each
    tap's product ``x[p0:p1] . w[q]`` (only the inputs that land inside ``[0, O)``) is
    scatter-added into one box of an accumulator, in place (and the backward slices each tap's
    box out of the cotangent), and the work is the definition's. XLA schedules the products
    as it likes: where many taps cover the whole output it may hold all of them at once.
    Along an axis with ``1 < s < O`` a tap's positions are ``s`` apart, so that axis is
    accumulated in phase space, ``(M, s)`` rows by phases (the plan's phase rows; position
    ``s*m + r`` is row ``m`` of phase ``r``), where they are contiguous; along the other axes
    (``s = 1``, or ``s >= O`` where a tap reaches at most one position) directly.
    """
    n, g = plan.ndim, plan.group
    cg_in, cg_out = plan.in_channels // g, plan.out_channels // g
    phases = plan.phases
    w = _weight_groups(w, plan)  # (G, Cg_in, Cg_out, K...)
    if plan.data_format == "NCHW":  # x -> (N, G, Cg_in, S...)
        x = x.reshape(plan.batch, g, cg_in, *plan.in_spatial)
    else:
        x = jnp.moveaxis(x.reshape(plan.batch, *plan.in_spatial, g, cg_in), (n + 1, n + 2), (1, 2))
    dtype = preferred or jnp.result_type(x, w)
    phased = [1 < p.stride < p.out for p in phases]
    dims = []
    for p, ph in zip(phases, phased):
        dims += [p.m_end - p.m_begin, p.stride] if ph else [p.out]
    acc = jnp.zeros((g, plan.batch, *dims, cg_out), dtype)
    for tap in np.ndindex(*plan.kernel):
        start, limit, box, sizes = [], [], [], []
        for i, (p, ph) in enumerate(zip(phases, phased)):
            s, reach, size = p.stride, plan.dilations[i] * int(tap[i]), plan.in_spatial[i]
            if ph:  # input position 0 lands in row `shift` of phase `reach % s`
                shift = reach // s - p.m_begin
                p0, p1 = max(0, -shift), min(size, p.m_end - p.m_begin - shift)
                box += [p0 + shift, reach % s]
                sizes += [p1 - p0, 1]
            else:  # input position 0 lands at output position `shift`
                shift = reach - plan.pad_begin[i]
                p0, p1 = max(0, -(shift // s)), min(size, (p.out - 1 - shift) // s + 1)
                box.append(s * p0 + shift)
                sizes.append(p1 - p0)
            start.append(p0)
            limit.append(p1)
        if any(p1 <= p0 for p0, p1 in zip(start, limit)):
            continue
        xs = lax.slice(x, [0, 0, 0, *start], [x.shape[0], g, cg_in, *limit])
        wq = w[(slice(None),) * 3 + tuple(int(t) for t in tap)]
        part = lax.dot_general(  # (G, N, S'..., Cg_out)
            xs, wq, (((2,), (1,)), ((1,), (0,))), precision=precision, preferred_element_type=preferred
        ).astype(dtype)
        part = part.reshape(g, plan.batch, *sizes, cg_out)
        # scatter-add of one box: its transpose is a plain slice of the cotangent (a
        # dynamic_update_slice chain would transpose into a full-size add per tap)
        acc = acc.at[(slice(None), slice(None), *(slice(b, b + z) for b, z in zip(box, sizes)))].add(part)
    interleaved = [(p.m_end - p.m_begin) * p.stride if ph else p.out for p, ph in zip(phases, phased)]
    y = acc.reshape(g, plan.batch, *interleaved, cg_out)
    begin = [p.offset if ph else 0 for p, ph in zip(phases, phased)]
    y = lax.slice(y, [0, 0, *begin, 0], [g, plan.batch, *(b + p.out for b, p in zip(begin, phases)), cg_out])
    if plan.data_format == "NCHW":
        y = jnp.moveaxis(y, (0, n + 2), (1, 2))  # (N, G, Cg_out, O...)
        return y.reshape(plan.out_shape)
    return jnp.moveaxis(y, 0, n + 1).reshape(plan.out_shape)  # (N, O..., G, Cg_out)


def _lower_xla(x, w, plan: Plan, algorithm: str, precision, preferred, max_buffer_bytes) -> jax.Array:
    """``plan`` without its bias by one of the XLA lowerings; 16-bit inputs are multiplied and
    accumulated in float32 and the result is left in float32 (the caller rounds once)."""
    if jnp.dtype(x.dtype).itemsize < 4:
        # XLA:CPU's 16-bit dots are 2x slower, and 'taps' would add its taps' products in 16 bits;
        # 'conv' is asked for a float32 result
        if algorithm == "conv":
            return _lower_conv(x, w, plan, precision, jnp.float32)
        x, w, preferred = x.astype(jnp.float32), w.astype(jnp.float32), None
    if algorithm == "gemm":  # symbolic sizes (jax.export): no steps, as their sizes are unknown
        slab = gemm_slab(plan, jnp.dtype(x.dtype).itemsize, max_buffer_bytes) if plan.sizes_known else 0
        return _lower_gemm(x, w, plan, precision, preferred, slab or 0)
    if algorithm == "phases":
        return _lower_phases(x, w, plan, precision, preferred)
    return {"conv": _lower_conv, "taps": _lower_taps}[algorithm](x, w, plan, precision, preferred)


def _lower(x, w, b, plan: Plan, algorithm: str, precision, preferred, max_buffer_bytes) -> jax.Array:
    dtype = preferred or x.dtype  # never narrower than the inputs (check_preferred)
    if plan.is_zero:  # every kept position is past the end of the full output (or C_in == 0, or batch 0)
        y = jnp.zeros(plan.out_shape, jnp.promote_types(dtype, jnp.float32))
    elif algorithm == "native":
        # bfloat16 is multiplied and accumulated in float32 inside the kernels, the bias added
        # there too, and rounded once; float16 is widened to float32 and rounded once after;
        # every sum starts from +0.0
        wide = dtype if dtype in native.DTYPES else jnp.float32
        y = native.conv_transpose(x.astype(wide), w.astype(wide), plan, None if b is None else b.astype(wide))
        return y.astype(dtype)
    else:  # zeros are +0.0 in y and in the gradients, as the native kernels give them (_zero)
        y = _lower_xla(gradient_zero(x), gradient_zero(w), plan, algorithm, precision, preferred, max_buffer_bytes)
        y = positive_zero(y)
    if b is not None:  # in float32 at least, before the one rounding; the bias gradient is summed so too
        y = add_bias(y, b, 1 if plan.data_format == "NCHW" else -1, jnp.promote_types(y.dtype, jnp.float32))
    return y.astype(dtype)


@functools.partial(
    jax.jit, static_argnames=("plan", "algorithm", "precision", "preferred", "max_buffer_bytes")
)
def apply(x, w, b, *, plan: Plan, algorithm: str, precision, preferred, max_buffer_bytes=None) -> jax.Array:
    """Run ``plan`` with ``algorithm`` (``'auto'``: per platform, see :func:`choose_algorithm`)."""
    if algorithm != "auto":
        return _lower(x, w, b, plan, algorithm, precision, preferred, max_buffer_bytes)
    dtype = jnp.result_type(x, w)
    on_cpu = choose_algorithm(plan, dtype, "cpu", max_buffer_bytes=max_buffer_bytes)
    elsewhere = choose_algorithm(plan, dtype, "gpu", max_buffer_bytes=max_buffer_bytes)
    if on_cpu == elsewhere:
        return _lower(x, w, b, plan, on_cpu, precision, preferred, max_buffer_bytes)
    # The platform the computation runs on picks the branch when it is compiled; only that
    # branch is ever compiled (under a multi-platform jax.export, each platform its own).
    return lax.platform_dependent(
        x, w, b,
        cpu=lambda x, w, b: _lower(x, w, b, plan, on_cpu, precision, preferred, max_buffer_bytes),
        default=lambda x, w, b: _lower(x, w, b, plan, elsewhere, precision, preferred, max_buffer_bytes),
    )


def choose_algorithm(plan: Plan, dtype: Any, backend: str | None = None, *, max_buffer_bytes: int | None = None) -> str:
    """The algorithm ``'auto'`` runs for ``plan`` on ``backend`` (default: JAX's default backend).

    From the cost estimates of ``jax_deconv._cost`` (pure Python, from the plan's sizes):

    * on CPU, ``'native'`` wherever the native kernels are built (:func:`native_kernels`) and
      take the call (at most 3 spatial axes, a known batch), except NCHW calls with one
      phase tap per axis (kernel <= stride), where ``'gemm'``'s channels-first form is faster;
    * where the phase form's buffers (its phase kernel, padded input, interleaved output)
      would exceed 8 times x + weight + y, or its work 4 times the definition's (large
      dilations, strides far above the input's size): ``'phases'`` if it unrolls at most 64
      phases within those buffers and an im2col within ``max_buffer_bytes`` (default
      32 MiB), else ``'taps'`` if it unrolls at most 256 ops (64 taps), else ``'conv'``;
    * on CPU, ``'phases'`` where the phase form would do 3 times its work and it fits as
      above (a dilation sharing a factor with the stride empties phases);
    * on CPU otherwise, ``'gemm'``: its im2col in steps along the first spatial axis once it would
      exceed 32 MiB (or ``max_buffer_bytes``), unless an axis has more than 64 phase taps or
      one step (one phase row) would exceed ``max_buffer_bytes``; then ``'conv'``, which
      builds no im2col (slower on CPU);
    * ``'conv'`` on every other backend.

    Inside a computation ``'auto'`` does not ask for JAX's default backend: it stages both
    choices with ``lax.platform_dependent``, and the platform the computation is compiled for
    picks one (so a ``jax.export`` for several platforms runs the CPU choice on CPU and
    ``'conv'`` on GPU/TPU; an exported ``'native'`` runs the XLA lowering it would take without
    the kernels, since exported programs carry no custom calls). Sizes unknown until run time
    (symbolic shapes of ``jax.export``) are never compared: a symbolic batch counts as one
    example (and rules out ``'native'``), a symbolic spatial size chooses ``'conv'``, whose
    buffers do not grow with the kernel's taps.

    Examples:
      >>> from jax_deconv import choose_algorithm, conv_transpose_plan, native_kernels
      >>> plan = conv_transpose_plan((2, 32, 16, 16, 16), (32, 16, 4, 4, 4), kernel_shape=4, strides=2)
      >>> choose_algorithm(plan, "float32", "gpu"), choose_algorithm(plan, "float32", "cpu") == (
      ...     "native" if native_kernels() else "gemm")
      ('conv', True)
      >>> up = conv_transpose_plan((1, 64, 24, 24, 24), (64, 32, 2, 2, 2), kernel_shape=2, strides=2)
      >>> choose_algorithm(up, "float32", "cpu")  # NCHW, kernel <= stride: channels-first 'gemm'
      'gemm'
      >>> dilated = conv_transpose_plan((1, 32, 16, 16, 16), (32, 16, 3, 3, 3), kernel_shape=3, strides=2,
      ...                               dilations=2)  # only 1 of the 8 phases receives taps
      >>> choose_algorithm(dilated, "float32", "gpu")
      'phases'
    """
    op = "choose_algorithm"
    if not isinstance(plan, Plan):
        raise TypeError(f"{op}: `plan` must be a Plan (from conv_transpose_plan); got {type(plan).__name__}.")
    itemsize = check_floating(op, "dtype", dtype).itemsize
    budget = check_max_buffer_bytes(op, max_buffer_bytes)
    if backend is None:
        backend = jax.default_backend()
    elif not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"{op}: `backend` must be None or one of {BACKENDS} (any case); got {backend!r}.")
    if not plan.sizes_known:
        return "conv"
    kernels = native.unsupported(plan, dtype) is None
    return choose(plan, itemsize, backend.lower(), budget, native=kernels).algorithm


BACKENDS = ("cpu", "gpu", "cuda", "rocm", "tpu")
"""The backends :func:`choose_algorithm` answers for (``'gpu'``, ``'cuda'`` and ``'rocm'`` alike)."""


PRECISIONS = (
    "None, a jax.lax.Precision or its name ('default', 'high', 'highest', 'bfloat16', 'tensorfloat32', "
    "'float32'...), a jax.lax.DotAlgorithmPreset, or a pair of Precisions (lhs, rhs)"
)


def check_precision(op: str, precision: Any) -> Any:
    """``precision`` as a hashable static argument that ``lax`` accepts; else ``TypeError`` /
    ``ValueError`` naming it (a list becomes a tuple)."""
    if isinstance(precision, list):
        precision = tuple(precision)
    kinds = (str, tuple, lax.Precision, lax.DotAlgorithm, lax.DotAlgorithmPreset)
    if precision is not None and not isinstance(precision, kinds):
        raise TypeError(f"{op}: `precision` must be {PRECISIONS}; got {precision!r}.")
    try:
        hash(precision)
    except TypeError:  # a tuple holding something unhashable
        raise TypeError(f"{op}: `precision` must be {PRECISIONS}; got {precision!r}.") from None
    if _precision_refused(precision):
        raise ValueError(f"{op}: `precision` must be {PRECISIONS}; got {precision!r}.")
    return precision


@functools.lru_cache(maxsize=64)
def _precision_refused(precision: Any) -> bool:
    """Whether ``lax.dot`` refuses ``precision`` (asked once per value, shapes only)."""
    one = jax.ShapeDtypeStruct((1, 1), jnp.float32)
    try:
        jax.eval_shape(lambda a, b: lax.dot(a, b, precision=precision), one, one)
    except (TypeError, ValueError):
        return True
    return False


def _refusal(plan: Plan, algorithm: str, dtype: Any, budget: int | None) -> str | None:
    """Why an explicit ``algorithm`` cannot run ``plan`` (completing "would ..."), or None."""
    if algorithm == "native":
        reason = native.unsupported(plan, dtype) if not plan.is_zero else None
        return None if reason is None else f"need the native kernels, which cannot run it: {reason}"
    return refusal(plan, algorithm, np.dtype(dtype).itemsize, budget)


def bind(
    op: str, plan: Plan, algorithm: Any, precision: Any, preferred: Any, dtype: Any, max_buffer_bytes: Any = None
) -> Callable[..., jax.Array]:
    """``apply`` with its static arguments checked and fixed; call it as ``f(x, w, b, plan=plan)``.

    ``dtype``: the inputs' common dtype, from which ``'auto'`` chooses exactly as ``apply`` will.
    A complex one runs as four real calls of its real part's dtype (:mod:`jax_deconv._complex`).
    """
    real = real_part_dtype(dtype)
    if real is not None:
        preferred = None if preferred is None else real_part_dtype(preferred)
        return complex_apply(bind(op, plan, algorithm, precision, preferred, real, max_buffer_bytes))
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{op}: `algorithm` must be one of {ALGORITHMS}; got {algorithm!r}.")
    budget = check_max_buffer_bytes(op, max_buffer_bytes)
    precision = check_precision(op, precision)
    sizes = (*plan.in_spatial, *plan.out_spatial, plan.in_channels, plan.out_channels)
    if all(isinstance(v, int) for v in sizes):  # symbolic sizes: XLA checks them when they are known
        runs = {algorithm}
        if algorithm == "auto":
            runs = {choose_algorithm(plan, dtype, b, max_buffer_bytes=budget) for b in ("cpu", "gpu")}
        itemsize = np.dtype(dtype).itemsize
        for name in sorted(runs):
            reason = _refusal(plan, name, dtype, budget)
            if reason is None:
                continue
            if name == "gemm" and gemm_slab(plan, itemsize, budget) is None:
                limit = f"max_buffer_bytes={budget}" if budget is not None else f"the default ({GEMM_STEP_ABOVE} bytes)"
                reason = (
                    f"need an im2col step of {gemm_row_bytes(plan, itemsize)} bytes (one phase row of the first "
                    f"spatial axis), more than the limit in force, {limit}; allow at least that, or use "
                    f"algorithm='conv' (no im2col) or 'auto'"
                )
            else:
                allowed = [a for a in ALGORITHMS[1:] if a != name and not _refusal(plan, a, dtype, budget)]
                others = ["'auto'", *map(repr, allowed)]
                reason += f"; algorithm={', '.join(others[:-1])} or {others[-1]} computes it"
            shown = repr(algorithm) if algorithm == name else f"{algorithm!r} (running {name!r})"
            raise ValueError(f"{op}: algorithm={shown} would {reason}.")
    if algorithm == "auto":  # (here, on every call: apply's trace is cached)
        native.warn_unavailable_once()
    return functools.partial(
        apply, algorithm=algorithm, precision=precision, preferred=preferred, max_buffer_bytes=budget
    )


def _xla_forward(x: jax.Array, w: jax.Array, plan: Plan, backend: str) -> jax.Array:
    """The forward of ``plan`` by the XLA lowering ``'auto'`` would take on ``backend`` without
    the native kernels: how the native primitives lower off CPU and in ``jax.export`` (with
    symbolic spatial sizes, ``'conv'``, as :func:`choose_algorithm` says)."""
    if not plan.sizes_known:
        return _lower(x, w, None, plan, "conv", None, None, None)
    algorithm = choose(plan, np.dtype(x.dtype).itemsize, backend, None, native=False).algorithm
    return _lower(x, w, None, plan, algorithm, None, None, None)


native.set_xla_forward(_xla_forward)
