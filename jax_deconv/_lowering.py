"""Lowering of a :class:`~jax_deconv._plan.Plan` onto XLA (``lax`` ops only).

Both lowerings use the sub-pixel (phase) form derived in ``_plan.py``: the kernel is split
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

Algorithms (``algorithm=``):

``'conv'``  one ``lax.conv_general_dilated`` (feature_group_count = group, phases as extra
            output features); the choice for GPU/TPU, where it maps onto cuDNN / the MXU.
``'gemm'``  im2col over the ``prod(taps)`` phase taps + one ``lax.dot_general`` batched over
            groups (groups lead, so no operand is transposed); the choice on CPU, where dots
            reach a fast GEMM and XLA's 3-D convolution does not. 16-bit inputs are
            multiplied and accumulated in float32 (XLA:CPU's 16-bit dots are 2x slower) and
            the result rounded once. Its buffer is ``prod(taps)`` times the (cropped, padded)
            input, in float32.
``'taps'``  the definition itself, one matrix product per kernel tap scatter-added in place
            into the output: no phase kernel, buffers about the size of y, no zero
            ever multiplied (non-finite inputs propagate exactly as the definition says); slow
            for large kernels, right for large dilations or strides above the input's size.
``'auto'``  ``'gemm'`` on CPU while that buffer stays under 256 MiB, else ``'conv'``; ``'taps'``
            where the phase form's buffers would be out of proportion to the call; chosen
            by the platform the computation is compiled for (see :func:`choose_algorithm`).
"""


from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_deconv._plan import Plan, phase_buffer_elements, phase_form_fits, phase_form_limit
from jax_deconv._types import ALGORITHMS

GEMM_BUFFER_LIMIT_BYTES = 256 * 2**20
GEMM_MAX_TAPS = 64  # im2col unrolls one slice per tap and axis


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


def _lower_gemm(x, w, plan: Plan, precision, preferred) -> jax.Array:
    if jnp.dtype(x.dtype).itemsize < 4:  # 16-bit inputs: multiply and accumulate in float32
        x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
        return _lower_gemm(x32, w32, plan, precision, None).astype(preferred or x.dtype)
    n, g = plan.ndim, plan.group
    phases = plan.phases
    cg_in, cg_out = plan.in_channels // g, plan.out_channels // g
    # (G, N, S1..Sn, Cg_in): groups lead, so the batched dot needs no transpose of its operands
    if plan.data_format == "NCHW":
        x = x.reshape(plan.batch, g, cg_in, *plan.in_spatial)
        x = jnp.transpose(x, [1, 0, *range(3, n + 3), 2])
    else:
        x = x.reshape(plan.batch, *plan.in_spatial, g, cg_in)
        x = jnp.transpose(x, [n + 1, 0, *range(1, n + 1), n + 2])
    x = _crop_and_pad(x, plan, list(range(2, n + 2)))
    m = [p.m_end - p.m_begin for p in phases]
    # im2col one axis at a time (sum(taps) slices, not prod(taps)): (G, N, M1..Mn, T1..Tn, Cg_in)
    for i, p in enumerate(phases):
        cols = [lax.slice_in_dim(x, p.dilation * j, p.dilation * j + m[i], axis=2 + i) for j in range(p.taps)]
        x = jnp.stack(cols, axis=2 + n + i)
    n_taps = math.prod(p.taps for p in phases)
    patches = x.reshape(g, plan.batch, *m, n_taps, cg_in)
    k = _phase_kernel(w, plan, ["G", "T", "Cin", "s", "Cout"]).reshape(g, n_taps, cg_in, -1)
    y = lax.dot_general(
        patches,
        k,
        (((n + 2, n + 3), (1, 2)), ((0,), (0,))),
        precision=precision,
        preferred_element_type=preferred,
    )  # (G, N, M1..Mn, s1..sn * Cg_out)
    y = y.reshape(g, plan.batch, *m, *(p.stride for p in phases), cg_out)
    names = ["G", "N", *(f"M{i}" for i in range(n)), *(f"s{i}" for i in range(n)), "Cg"]
    return _shuffle(y, names, plan)


def _lower_taps(x, w, plan: Plan, precision, preferred) -> jax.Array:
    """The definition, one kernel tap at a time: no phase kernel, no zero ever multiplied.

    Tap ``q`` sends input position ``p`` to output position ``s*p + d*q - pad_begin``. Each
    tap's product ``x[p0:p1] . w[q]`` (only the inputs that land inside ``[0, O)``) is
    scatter-added into one box of an accumulator, in place, so the buffers stay about the size
    of y however many taps there are (and the backward slices each tap's box out of the
    cotangent), and the work is the definition's. Along an axis with ``1 < s < O`` a tap's
    positions are ``s`` apart, so that axis is accumulated in phase space, ``(M, s)`` rows by
    phases (the plan's phase rows; position ``s*m + r`` is row ``m`` of phase ``r``), where
    they are contiguous; along the other axes (``s = 1``, or ``s >= O`` where a tap reaches at
    most one position) directly.
    """
    n, g = plan.ndim, plan.group
    cg_in, cg_out = plan.in_channels // g, plan.out_channels // g
    phases = plan.phases
    if plan.data_format == "NCHW":  # x -> (N, G, Cg_in, S...), w -> (G, Cg_in, Cg_out, K...)
        x = x.reshape(plan.batch, g, cg_in, *plan.in_spatial)
        w = w.reshape(g, cg_in, cg_out, *plan.kernel)
    else:
        x = jnp.moveaxis(x.reshape(plan.batch, *plan.in_spatial, g, cg_in), (n + 1, n + 2), (1, 2))
        w = jnp.moveaxis(w.reshape(g, cg_in, *plan.kernel, cg_out), -1, 2)
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


_LOWERINGS = {"conv": _lower_conv, "gemm": _lower_gemm, "taps": _lower_taps}


def _lower(x, w, b, plan: Plan, algorithm: str, precision, preferred) -> jax.Array:
    if plan.is_zero:  # every kept position is past the end of the full output (or C_in == 0)
        y = jnp.zeros(plan.out_shape, preferred or x.dtype)
    else:
        y = _LOWERINGS[algorithm](x, w, plan, precision, preferred)
    if b is not None:
        shape = [1] * y.ndim
        shape[1 if plan.data_format == "NCHW" else -1] = plan.out_channels
        y = y + b.astype(y.dtype).reshape(shape)
    return y


@functools.partial(jax.jit, static_argnames=("plan", "algorithm", "precision", "preferred"))
def apply(x, w, b, *, plan: Plan, algorithm: str, precision, preferred) -> jax.Array:
    """Run ``plan`` with ``algorithm`` (``'auto'``: per platform, see :func:`choose_algorithm`)."""
    if algorithm != "auto":
        return _lower(x, w, b, plan, algorithm, precision, preferred)
    on_cpu = choose_algorithm(plan, jnp.result_type(x, w), "cpu")
    elsewhere = choose_algorithm(plan, jnp.result_type(x, w), "gpu")
    if on_cpu == elsewhere:
        return _lower(x, w, b, plan, on_cpu, precision, preferred)
    # The platform the computation runs on picks the branch when it is compiled; only that
    # branch is ever compiled (under a multi-platform jax.export, each platform its own).
    return lax.platform_dependent(
        x, w, b,
        cpu=lambda x, w, b: _lower(x, w, b, plan, on_cpu, precision, preferred),
        default=lambda x, w, b: _lower(x, w, b, plan, elsewhere, precision, preferred),
    )


def choose_algorithm(plan: Plan, dtype: Any, backend: str | None = None) -> str:
    """The algorithm ``'auto'`` runs for ``plan`` on ``backend`` (default: JAX's default backend).

    ``'taps'`` where the phase form's buffers (its phase kernel, padded input, interleaved
    output) would exceed 8 times x + weight + y, or its work 4 times the definition's, which
    large dilations and strides far above the input's size cause (see
    ``jax_deconv._plan.phase_form_fits``); otherwise ``'gemm'`` on
    CPU while its im2col buffer (float32 for 16-bit inputs) stays within
    ``GEMM_BUFFER_LIMIT_BYTES`` (256 MiB) and no axis has more than 64 phase taps, else
    ``'conv'``; ``'conv'`` on every other backend.
    Inside a computation ``'auto'`` does not ask for JAX's default backend: it stages both
    choices with ``lax.platform_dependent``, and the platform the computation is compiled for
    picks one (so a ``jax.export`` for several platforms runs ``'gemm'`` on CPU and ``'conv'``
    on GPU/TPU). Sizes unknown until run time (symbolic shapes of ``jax.export``) are never
    compared: a symbolic batch counts as one example, a symbolic spatial size chooses ``'conv'``,
    whose buffers do not grow with the kernel's taps.

    Examples:
      >>> from jax_deconv import choose_algorithm, conv_transpose_plan
      >>> plan = conv_transpose_plan((2, 32, 16, 16, 16), (32, 16, 4, 4, 4), kernel_shape=4, strides=2)
      >>> choose_algorithm(plan, "float32", "cpu"), choose_algorithm(plan, "float32", "gpu")
      ('gemm', 'conv')
    """
    if not all(isinstance(v, int) for v in (*plan.in_spatial, *plan.out_spatial)):
        return "conv"
    if not phase_form_fits(plan):
        return "taps"
    backend = backend or jax.default_backend()
    itemsize = max(np.dtype(dtype).itemsize, 4)  # the gemm buffer holds float32 even for 16-bit inputs
    im2col_fits = phase_buffer_elements(plan) * itemsize <= GEMM_BUFFER_LIMIT_BYTES
    if backend == "cpu" and im2col_fits and max(p.taps for p in plan.phases) <= GEMM_MAX_TAPS:
        return "gemm"
    return "conv"


def bind(op: str, plan: Plan, algorithm: Any, precision: Any, preferred: Any, dtype: Any) -> functools.partial:
    """``apply`` with its static arguments checked and fixed; call it as ``f(x, w, b, plan=plan)``.

    ``dtype``: the inputs' common dtype, from which ``'auto'`` chooses exactly as ``apply`` will.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{op}: `algorithm` must be one of {ALGORITHMS}; got {algorithm!r}.")
    if isinstance(precision, list):  # static arguments must be hashable
        precision = tuple(precision)
    sizes = (*plan.in_spatial, *plan.out_spatial, plan.in_channels, plan.out_channels)
    if all(isinstance(v, int) for v in sizes):  # symbolic sizes: XLA checks them when they are known
        runs = {algorithm} if algorithm != "auto" else {choose_algorithm(plan, dtype, b) for b in ("cpu", "gpu")}
        for name in sorted(runs - {"taps"}):
            reason = phase_form_limit(plan, im2col=name == "gemm")
            if reason is not None:
                raise ValueError(
                    f"{op}: algorithm={algorithm!r} would build {reason}, more than XLA can index; "
                    f"algorithm='taps' computes this call with buffers about the size of the output."
                )
    return functools.partial(apply, algorithm=algorithm, precision=precision, preferred=preferred)
