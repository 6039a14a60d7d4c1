"""Dragon's ``conv_transpose`` arguments -> a frozen, hashable plan.

Pure Python (NumPy only for accepting array-valued sizes); nothing here imports JAX.
Every size and padding formula of the package lives in this module.

The maths, along one spatial axis (stride ``s``, dilation ``d``, kernel ``K``, input ``S``)::

    full length      L = s*(S-1) + d*(K-1) + 1
    full[s*p + d*q] += x[p] * w[q]            (input position p, kernel tap q)
    y[i] = full[i + pad_begin]  for i in [0, O)   (zero past the end of ``full``)

Explicit pads (``padding='VALID'`` and no ``output_shape``)::

    O = L - pad_begin - pad_end (+ output_padding)

Automatic pads (any ``'SAME*'`` or ``output_shape`` given; ``'SAME'`` is ``'SAME_LOWER'``)::

    total = max(L - O, 0)                     (output_padding does not enter, unlike ONNX)
    SAME_UPPER: pad_begin = total // 2        SAME / SAME_LOWER: pad_end = total // 2

Sub-pixel (phase) form used by every lowering. Write a full position as ``o = s*m + r`` with
phase ``r`` in ``[0, s)``. Dilating the kernel by ``d`` (inserting ``d-1`` zeros between taps)
and zero-padding it to ``s*T`` taps, ``T = ceil((d*(K-1)+1)/s)``, then reading it as a
``(T, s)`` array gives the phase sub-kernels ``w_r[a] = w_dil[s*a + r]``, and::

    full[s*m + r] = sum_a x[m - a] * w_r[a]          m in [0, S + T - 1)

a stride-1 "full" correlation of the *undilated* input: no zeros are inserted into ``x``.
Along an axis with ``s == 1`` the kernel is used as is with dilation ``d`` instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from jax_deconv._names import padding_hint
from jax_deconv._types import DATA_FORMATS, PADDINGS

MAX_ARGUMENT = 2**31 - 1
"""Largest stride, dilation, kernel size, pad, output size or group accepted (each is a length
along one axis; the limit keeps every size derived from them far inside int64)."""

MAX_ELEMENTS = 2**56
"""Most elements any array of a call may have (output, phase buffers): 8-byte elements times
every buffer of a computation stay inside the int64 byte counts of XLA."""


# --------------------------------------------------------------------------- normalisers


def _fail(op: str, name: str, value: Any, allowed: str, exc: type = ValueError, hint: str = "") -> Exception:
    return exc(f"{op}: `{name}` must be {allowed}; got {value!r}{hint}.")


def _host(value: Any) -> Any:
    """Array-likes (NumPy, concrete JAX arrays) as NumPy arrays; anything else unchanged."""
    if isinstance(value, (list, tuple, str, bytes, numbers.Number)) or not hasattr(value, "__array__"):
        return value
    try:
        return np.asarray(value)
    except TypeError:  # a traced JAX value: sizes must be known when the call is traced
        return value


def _as_int(op: str, name: str, value: Any, minimum: int, maximum: int = MAX_ARGUMENT) -> int:
    """One integer in ``[minimum, maximum]``; bools, floats, strings and traced values are refused."""
    kind = f"an integer >= {minimum}"
    value = _host(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(op, name, value, kind, TypeError)
    value = int(value)
    if value < minimum:
        raise _fail(op, name, value, kind)
    if value > maximum:
        raise _fail(op, name, value, f"{kind} and <= {maximum} (the largest size jax_deconv accepts)")
    return int(value)


def _limit(error: Exception) -> str:
    """The size limit, when that is what an element broke."""
    return f" Each must be <= {MAX_ARGUMENT}, the largest size jax_deconv accepts." if "<=" in str(error) else ""


def _as_sequence(op: str, name: str, value: Any, allowed: str) -> tuple[Any, ...]:
    value = _host(value)
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise _fail(op, name, value, allowed, ValueError)
        return tuple(value.tolist())
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _fail(op, name, value, allowed, TypeError)
    return tuple(value)


def _is_int(value: Any) -> bool:
    """An integer scalar: Python/NumPy int or a 0-d integer array (bools are not)."""
    value = _host(value)
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_shape(op: str, name: str, shape: Any) -> tuple[int, ...]:
    """A user-given array shape (``conv_transpose_plan``, ``onnx_to_dragon``): ints >= 0.

    Shapes read from arrays need no check (JAX made them); these are typed in by hand.
    """
    allowed = f"a sequence of ints >= 0 (each <= {MAX_ELEMENTS})"
    values = _as_sequence(op, name, shape, allowed)
    try:
        return tuple(_as_int(op, name, v, 0, MAX_ELEMENTS) for v in values)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{op}: `{name}` must be {allowed}; got {shape!r}.") from None


def per_axis(op: str, name: str, value: Any, n: int, minimum: int) -> tuple[int, ...]:
    """An int, a 1-element sequence (broadcast) or ``n`` ints, each >= ``minimum``."""
    allowed = f"an int or a sequence of 1 or {n} ints, each >= {minimum}"
    if _is_int(value):
        values: tuple[Any, ...] = (value,)
    else:
        values = _as_sequence(op, name, value, allowed)
    if len(values) not in (1, n):
        raise ValueError(f"{op}: `{name}` must be {allowed}; got {value!r} ({len(values)} values).")
    try:
        ints = tuple(_as_int(op, name, v, minimum) for v in values)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{op}: `{name}` must be {allowed}; got {value!r}.{_limit(e)}") from None
    return ints * n if len(ints) == 1 else ints


def resolve_pads(op: str, value: Any, n: int, *, ends_given: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Dragon's ``pads``: an int, ``n`` values (begin = end) or ``2n`` (all begins, then all ends).

    ``ends_given``: only the ``2n`` form is accepted (ONNX's ``pads``).
    """
    if ends_given:
        allowed, counts = f"None or a sequence of {2 * n} non-negative ints (all begins, then all ends)", (2 * n,)
    else:
        allowed, counts = f"a non-negative int or a sequence of 1, {n} or {2 * n} non-negative ints", (1, n, 2 * n)
    if _is_int(value) and not ends_given:
        values: tuple[Any, ...] = (value,)
    else:
        values = _as_sequence(op, "pads", value, allowed)
    if len(values) not in counts:
        raise ValueError(f"{op}: `pads` must be {allowed}; got {value!r} ({len(values)} values).")
    try:
        ints = tuple(_as_int(op, "pads", v, 0) for v in values)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{op}: `pads` must be {allowed}; got {value!r}.{_limit(e)}") from None
    if len(ints) == 2 * n:
        return ints[:n], ints[n:]
    ints = ints * n if len(ints) == 1 else ints
    return ints, ints


def _choice(op: str, name: str, value: Any, allowed: Sequence[str], hint: str = "") -> str:
    text = "one of " + ", ".join(repr(a) for a in allowed)
    if not isinstance(value, str):
        raise _fail(op, name, value, text, TypeError, hint)
    if value.upper() not in allowed:
        raise _fail(op, name, value, text, hint=hint)
    return value.upper()


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class AxisPhase:
    """How one spatial axis is computed in phase space (see the module docstring).

    The lowering crops ``x`` by ``crop`` (begin, end), pads it by ``pad`` (begin, end), runs a
    stride-1 correlation with ``taps`` flipped sub-kernel taps spaced ``dilation`` apart, which
    gives phase positions ``[m_begin, m_end)`` for each of the ``stride`` phases; interleaving
    them covers full positions ``[stride*m_begin, stride*m_end)``, of which ``y`` keeps
    ``[offset, offset + out)``.
    """

    stride: int
    taps: int
    dilation: int
    kernel_padded: int  # taps * stride (s > 1) or K (s == 1): length of the phase-split kernel
    crop: tuple[int, int]
    pad: tuple[int, int]
    m_begin: int
    m_end: int
    offset: int
    out: int

    @property
    def span(self) -> int:
        """Taps reach back this many phase positions: ``A = dilation * (taps - 1)``."""
        return self.dilation * (self.taps - 1)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one ``conv_transpose`` call. Hashable, so usable under ``jit``.

    Spatial quantities are tuples with one entry per spatial axis.
    """

    data_format: str
    batch: int
    in_channels: int
    out_channels: int
    group: int
    in_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pad_begin: tuple[int, ...]  # cropped from the front of the full output
    pad_end: tuple[int, ...]  # cropped from its end; negative = zero tail appended
    out_spatial: tuple[int, ...]
    has_bias: bool

    @property
    def ndim(self) -> int:
        return len(self.in_spatial)

    @property
    def full_spatial(self) -> tuple[int, ...]:
        return tuple(map(full_length, self.in_spatial, self.kernel, self.strides, self.dilations))

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.data_format == "NCHW":
            return (self.batch, self.out_channels, *self.out_spatial)
        return (self.batch, *self.out_spatial, self.out_channels)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        per_group = self.out_channels // self.group
        if self.data_format == "NCHW":
            return (self.in_channels, per_group, *self.kernel)
        return (self.in_channels, *self.kernel, per_group)

    @functools.cached_property
    def phases(self) -> tuple[AxisPhase, ...]:
        return tuple(
            axis_phase(*args)
            for args in zip(
                self.in_spatial, self.kernel, self.strides, self.dilations, self.pad_begin, self.out_spatial
            )
        )

    @property
    def sizes_known(self) -> bool:
        """Whether every spatial size is a number (not a symbolic size of ``jax.export``)."""
        return all(isinstance(v, int) for v in (*self.in_spatial, *self.out_spatial))

    @property
    def is_zero(self) -> bool:
        """True when no input reaches ``y`` (y = bias): every kept position lies past the end of
        the full output, or there are no input channels, or no examples (batch 0)."""
        if self.in_channels == 0 or (isinstance(self.batch, int) and self.batch == 0):
            return True
        return any(p.m_begin >= size + p.span for p, size in zip(self.phases, self.in_spatial))


def phase_taps(plan: Plan) -> tuple[tuple[tuple[tuple[int, int], ...], ...], ...]:
    """The kernel taps each phase really uses, per axis: ``[axis][phase] -> ((offset, q), ...)``.

    Phase ``r`` of an axis with stride ``s > 1`` takes kernel tap ``q`` where ``d*q = s*a + r``
    for a phase tap ``a < taps``; in the phase form's padded input that tap sits at offset
    ``taps - 1 - a`` (the taps are flipped for the correlation). The other phase taps are the
    zeros the phase form multiplies. An axis with ``s == 1`` has one phase, every tap ``q``
    at offset ``d * (K - 1 - q)``. A phase with no tap on some axis receives no input.

    >>> plan = make_plan((1, 1, 4), (1, 1, 3), None, kernel_shape=3, strides=2)
    >>> phase_taps(plan)[0]  # axis 0: phase 0 takes taps 0 and 2, phase 1 tap 1
    (((1, 0), (0, 2)), ((1, 1),))
    >>> phase_taps(make_plan((1, 1, 4), (1, 1, 3), None, kernel_shape=3, strides=2, dilations=2))[0]
    (((2, 0), (1, 1), (0, 2)), ())
    """
    axes = []
    for p, kernel, dilation in zip(plan.phases, plan.kernel, plan.dilations):
        if p.stride == 1:
            axes.append((tuple((dilation * (kernel - 1 - q), q) for q in range(kernel)),))
            continue
        per_phase = []
        for r in range(p.stride):
            reach = [p.stride * a + r for a in range(p.taps)]  # full positions d*q of phase tap a
            taps = [(p.taps - 1 - a, f // dilation) for a, f in enumerate(reach) if f % dilation == 0]
            per_phase.append(tuple((offset, q) for offset, q in taps if q < kernel))
        axes.append(tuple(per_phase))
    return tuple(axes)


def full_length(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Length of the uncropped transposed convolution: ``s*(S-1) + d*(K-1) + 1``."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1


def axis_phase(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, out: int) -> AxisPhase:
    """Phase-space geometry of one axis; see :class:`AxisPhase`."""
    if stride == 1:
        taps, tap_dilation, kernel_padded = kernel, dilation, kernel
    else:
        taps = -(-(dilation * (kernel - 1) + 1) // stride)
        tap_dilation, kernel_padded = 1, taps * stride
    span = tap_dilation * (taps - 1)
    m_begin = pad_begin // stride
    m_end = -(-(pad_begin + out) // stride)
    # correlation padding that yields exactly [m_begin, m_end); negative parts become crops
    lo, hi = span - m_begin, m_end - size
    return AxisPhase(
        stride=stride,
        taps=taps,
        dilation=tap_dilation,
        kernel_padded=kernel_padded,
        crop=(max(-lo, 0), max(-hi, 0)),
        pad=(max(lo, 0), max(hi, 0)),
        m_begin=m_begin,
        m_end=m_end,
        offset=pad_begin - stride * m_begin,
        out=out,
    )


def _output_sizes(
    op: str,
    name: str,
    value: Any,
    n: int,
    minimum: int,
) -> tuple[int, ...] | None:
    """``output_shape`` / ``output_padding``: None, an int or exactly ``n`` ints."""
    if value is None:
        return None
    allowed = f"None, an int or a sequence of {n} ints, each >= {minimum}"
    if _is_int(value):
        values: tuple[Any, ...] = (value,) * n
    else:
        values = _as_sequence(op, name, value, allowed)
    if len(values) != n:
        raise ValueError(f"{op}: `{name}` must be {allowed}; got {value!r} ({len(values)} values).")
    try:
        return tuple(_as_int(op, name, v, minimum) for v in values)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{op}: `{name}` must be {allowed}; got {value!r}.{_limit(e)}") from None


def make_plan(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    b_shape: Sequence[int] | None,
    *,
    kernel_shape: Any,
    strides: Any = 1,
    pads: Any = 0,
    dilations: Any = 1,
    group: Any = 1,
    padding: Any = "VALID",
    output_padding: Any = None,
    output_shape: Any = None,
    data_format: Any = "NCHW",
    op: str = "conv_transpose",
    ndim: int | None = None,
) -> Plan:
    """Resolve Dragon's arguments against static shapes; raise ``ValueError``/``TypeError``.

    ``ndim`` fixes the number of spatial axes (the 1-D/2-D/3-D wrappers); ``None`` takes it
    from ``x``.

    >>> p = make_plan((1, 2, 2, 2, 2), (2, 3, 1, 1, 1), None, kernel_shape=1,
    ...               output_padding=(1, 1, 1), output_shape=(3, 3, 3))
    >>> p.out_shape, p.pad_begin, p.pad_end
    ((1, 3, 3, 3, 3), (0, 0, 0), (-1, -1, -1))
    """
    data_format = _choice(op, "data_format", data_format, DATA_FORMATS)
    padding = _choice(op, "padding", padding, PADDINGS, padding_hint(padding))
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    n = len(x_shape) - 2 if ndim is None else ndim
    if len(x_shape) != n + 2 or n < 1:
        want = "at least 3 (N, C, spatial...)" if ndim is None else f"{n + 2}"
        raise ValueError(
            f"{op}: input `x` must have rank {want} for data_format={data_format!r}; "
            f"got shape {x_shape} (rank {len(x_shape)})."
        )
    kernel = per_axis(op, "kernel_shape", kernel_shape, n, 1)
    strides_ = per_axis(op, "strides", strides, n, 1)
    dilations_ = per_axis(op, "dilations", dilations, n, 1)
    begins, ends = resolve_pads(op, pads, n)
    group = _as_int(op, "group", group, 1)
    out_pad = _output_sizes(op, "output_padding", output_padding, n, 0)
    out_shape = _output_sizes(op, "output_shape", output_shape, n, 1)

    if data_format == "NCHW":
        batch, c_in, spatial = x_shape[0], x_shape[1], x_shape[2:]
    else:
        batch, c_in, spatial = x_shape[0], x_shape[-1], x_shape[1:-1]
    if c_in % group:
        raise ValueError(f"{op}: `group` (={group}) must divide the input channels C_in (={c_in}).")
    if any(s < 1 for s in spatial) or batch < 0:
        raise ValueError(f"{op}: input `x` must have non-empty spatial axes; got shape {x_shape}.")

    # weight: (C_in, C_out/group, *K) for NCHW, (C_in, *K, C_out/group) for NHWC
    layout = "(C_in, C_out/group, *kernel)" if data_format == "NCHW" else "(C_in, *kernel, C_out/group)"
    if len(w_shape) == n + 2:
        w_kernel = w_shape[2:] if data_format == "NCHW" else w_shape[1:-1]
        per_group = w_shape[1] if data_format == "NCHW" else w_shape[-1]
    else:
        w_kernel, per_group = None, -1
    if w_kernel is not None and w_shape[0] == c_in and per_group == 0:
        axis = 1 if data_format == "NCHW" else n + 1
        raise ValueError(
            f"{op}: `weight` has shape {w_shape}, whose axis {axis} (C_out/group in the layout {layout} of "
            f"data_format={data_format!r}) is 0; the output channels per group must be at least 1."
        )
    if w_kernel is None or w_shape[0] != c_in or per_group < 1 or min(w_kernel) < 1:
        expect = (c_in, "C_out/group", *kernel) if data_format == "NCHW" else (c_in, *kernel, "C_out/group")
        raise ValueError(
            f"{op}: `weight` must have shape {layout} = {expect} for data_format={data_format!r} "
            f"and x of shape {x_shape}; got {w_shape}."
        )
    if tuple(w_kernel) != kernel:
        raise ValueError(
            f"{op}: `kernel_shape` (={kernel_shape!r}) disagrees with the weight's kernel axes "
            f"{tuple(w_kernel)} (weight shape {w_shape}, layout {layout})."
        )
    c_out = per_group * group
    if b_shape is not None and tuple(b_shape) != (c_out,):
        raise ValueError(f"{op}: `bias` must have shape (C_out,) = ({c_out},); got {tuple(b_shape)}.")

    full = tuple(map(full_length, spatial, kernel, strides_, dilations_))
    if out_shape is None and padding != "VALID":
        raise ValueError(f"{op}: `output_shape` is required for padding={padding!r}; got None.")
    if out_shape is None:
        extra = out_pad or (0,) * n
        outs = tuple(f - b - e + p for f, b, e, p in zip(full, begins, ends, extra))
        for i, o in enumerate(outs):
            if o < 1:
                raise ValueError(
                    f"{op}: `pads` (={pads!r}) crop spatial axis {i} to size {o} "
                    f"(full size {full[i]}, pads {begins[i]} + {ends[i]}); each output size must be >= 1."
                )
        ends = tuple(e - p for e, p in zip(ends, extra))
    else:
        extra = out_pad or (0,) * n
        symbolic = [i for i, size in enumerate(spatial) if not isinstance(size, int)]
        if symbolic:  # the crop would depend on the size: max(full - output_shape, 0) is not decidable
            raise ValueError(
                f"{op}: `output_shape` (={list(out_shape)}) needs the input's spatial sizes, which are symbolic "
                f"({spatial[symbolic[0]]} on spatial axis {symbolic[0]}; jax.export shape polymorphism): the crop "
                f"it implies depends on them. Export with concrete spatial sizes, or give `pads` / `output_padding` "
                f"instead of `output_shape`."
            )
        for i, (o, f, p) in enumerate(zip(out_shape, full, extra)):
            if o > f + p:
                raise ValueError(
                    f"{op}: `output_shape` (={list(out_shape)}) is too large along spatial axis {i}: "
                    f"{o} > {f + p}, the largest reachable size s*(S-1) + d*(K-1) + 1 + output_padding; "
                    f"a larger `output_padding` raises the maximum."
                )
        outs = out_shape
        totals = tuple(max(f - o, 0) for f, o in zip(full, outs))
        if padding == "SAME_UPPER":
            begins = tuple(t // 2 for t in totals)
        else:  # 'SAME', 'SAME_LOWER', and 'VALID' switched to 'SAME' by output_shape
            begins = tuple(t - t // 2 for t in totals)
        ends = tuple(f - b - o for f, b, o in zip(full, begins, outs))

    known = [v for v in (batch, c_out, *outs) if isinstance(v, int)]  # symbolic sizes: checked when run
    if math.prod(known) > MAX_ELEMENTS:
        raise ValueError(
            f"{op}: the output would have shape {(batch, c_out, *outs)} (channels first), "
            f"{math.prod(known)} elements, more than the {MAX_ELEMENTS} any array may have; "
            f"check `output_padding`, `output_shape`, `strides` and `dilations`."
        )
    return Plan(
        data_format=data_format,
        batch=batch,
        in_channels=c_in,
        out_channels=c_out,
        group=group,
        in_spatial=tuple(spatial),
        kernel=kernel,
        strides=strides_,
        dilations=dilations_,
        pad_begin=begins,
        pad_end=ends,
        out_spatial=tuple(outs),
        has_bias=b_shape is not None,
    )


# --------------------------------------------------------------------------- peers' padding conventions
#
# Every peer's padding is, per axis, a crop (begin, end) of the full result of length
# L = s*(S-1) + k_eff (k_eff = d*(K-1) + 1): the output is full[begin : L - end]. A negative
# crop is zeros outside the full result (Dragon's own crops are never negative at the front).


def lax_string_crops(mode: str, kernel_eff: int, stride: int) -> tuple[int, int]:
    """``jax.lax.conv_transpose``'s ``'SAME'`` / ``'VALID'`` as crops of the full result.

    lax pads the stride-dilated input by ``(pa, pb)`` before a correlation with the kernel,
    and ``crop = k_eff - 1 - pad``. ``'SAME'`` gives ``O = s*S``: the total crop is
    ``k_eff - s``, its front half rounded down, and ``s > k_eff`` appends zeros. ``'VALID'``
    crops nothing and appends ``max(s - k_eff, 0)`` zeros, ``O = s*S + max(k_eff - s, 0)``.

    >>> lax_string_crops("SAME", 3, 2), lax_string_crops("SAME", 2, 3), lax_string_crops("VALID", 1, 3)
    ((0, 1), (0, -1), (0, -2))
    """
    total = kernel_eff - stride
    if mode == "SAME":
        begin = max(total, 0) // 2
        return begin, total - begin
    return 0, min(total, 0)


def equinox_crops(padding: Any, output_padding: int, kernel_eff: int, stride: int) -> tuple[int, int]:
    """``equinox.nn.ConvTranspose``'s padding (one axis) as crops of the full result.

    Equinox's ``padding`` is that of the forward convolution it transposes: ``(p0, p1)``
    crops ``p0`` at the front and ``p1 - output_padding`` at the end (PyTorch's rule).
    ``'SAME'`` / ``'SAME_LOWER'`` crop ``k_eff - s + a`` in total (``a`` = output_padding),
    the odd one at the end / front; a negative total is clamped to 0 and becomes zeros at
    the end instead of ``a``. ``'VALID'`` is ``(0, 0)`` padding.

    >>> equinox_crops((1, 1), 1, 5, 2), equinox_crops("SAME", 1, 5, 2), equinox_crops("SAME", 0, 1, 3)
    ((1, 0), (2, 2), (0, -2))
    """
    if padding == "VALID":
        return 0, -output_padding
    if isinstance(padding, str):
        total = kernel_eff - stride + output_padding
        extra = max(-total, 0)
        total = max(total, 0)
        begin = (total + (padding == "SAME_LOWER")) // 2
        return begin, total - begin - extra
    return padding[0], padding[1] - output_padding


def crop_window(full: int, begin: int, end: int) -> tuple[int, int, int, int] | None:
    """Split crops that may be negative into non-negative crops and zero padding.

    The output is positions ``[begin, full - end)`` of a result of length ``full`` that is
    zero outside ``[0, full)``. Returns ``(crop_begin, crop_end, zeros_front, zeros_back)``,
    all ``>= 0``, or None when no output position falls inside ``[0, full)``. Requires
    ``full - begin - end >= 0``.

    >>> crop_window(10, 2, 3), crop_window(10, -2, -1), crop_window(10, 12, -5)
    ((2, 3, 0, 0), (0, 0, 2, 1), None)
    """
    out = full - begin - end
    lo, hi = max(begin, 0), min(begin + out, full)
    if hi <= lo:
        return None
    return lo, full - hi, lo - begin, begin + out - hi
