"""``jax_deconv.lax``: ``jax.lax``'s convolutions on jax_deconv's lowerings.

``conv_general_dilated``, ``conv`` and ``conv_with_general_padding`` (the regular convolution
on the native CPU kernels) live in :mod:`jax_deconv._lax_conv`; ``conv_transpose`` here.

``jax_deconv.lax.conv_transpose``: ``jax.lax.conv_transpose`` on jax_deconv's lowering.

Same signature, defaults, dimension numbers and results as the installed
``jax.lax.conv_transpose``, plus ``feature_group_count`` (grouped transposed convolutions,
which lax lacks) and ``algorithm``. Switching is one import::

    from jax_deconv import lax as dlax
    y = dlax.conv_transpose(x, kernel, (2, 2), "SAME")       # was jax.lax.conv_transpose

What lax computes, per spatial axis (stride ``s``, kernel ``K``, ``rhs_dilation`` ``d``,
``k_eff = d*(K-1) + 1``): a correlation of the kernel with the input dilated by ``s`` and
padded by ``(lo, hi)``. Every such call is a crop of the full transposed convolution
(length ``L = s*(S-1) + k_eff``): the output is ``full[k_eff-1-lo : L-(k_eff-1-hi)]``, zero
outside ``[0, L)``. Here the full result is computed in phase form (no inserted zeros are
multiplied, no negative padding reaches XLA) and cropped or zero-extended.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax as _lax

from jax_deconv._conv_transpose import _conv_transpose
from jax_deconv._inputs import as_floating
from jax_deconv._lax_conv import conv, conv_general_dilated, conv_with_general_padding
from jax_deconv._native.bias import add_bias
from jax_deconv._plan import (
    MAX_ARGUMENT,
    MAX_ELEMENTS,
    _as_int,
    _fail,
    crop_window,
    full_length,
    lax_string_crops,
    per_axis,
)
from jax_deconv._types import Algorithm

__all__ = ["conv", "conv_general_dilated", "conv_transpose", "conv_with_general_padding"]

_OP = "jax_deconv.lax.conv_transpose"
_DEFAULT_DIMENSION_NUMBERS = {
    2: ("NC", "IO", "NC"),
    3: ("NHC", "HIO", "NHC"),
    4: ("NHWC", "HWIO", "NHWC"),
    5: ("NHWDC", "HWDIO", "NHWDC"),
}


def conv_transpose(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    transpose_kernel: bool = False,
    precision: _lax.PrecisionLike = None,
    preferred_element_type: Any = None,
    use_consistent_padding: bool = False,
    *,
    feature_group_count: int = 1,
    algorithm: Algorithm = "auto",
) -> jax.Array:
    """``jax.lax.conv_transpose``, computed by jax_deconv's phase-form lowering.

    Arguments and results are those of ``jax.lax.conv_transpose``:

    | dimension_numbers (default) | lhs | rhs |
    |---|---|---|
    | 1-D ``('NHC','HIO','NHC')`` | ``(N, S, C_in)`` | ``(K, I, O)`` |
    | 2-D ``('NHWC','HWIO',..)`` | ``(N, S1, S2, C_in)`` | ``(K1, K2, I, O)`` |
    | 3-D ``('NHWDC','HWDIO',..)`` | ``(N, S1, S2, S3, C_in)`` | ``(K1, K2, K3, I, O)`` |

    ``transpose_kernel=False``: ``I = C_in / feature_group_count``, ``O = C_out``, and the
    kernel is correlated with the stride-dilated input as it is. ``transpose_kernel=True``:
    the kernel is that of the forward convolution this one transposes, ``O = C_in`` and
    ``I = C_out / feature_group_count`` (PyTorch's and Dragon's weight), and the result is
    the input gradient of that grouped forward convolution.

    Per axis, with ``k_eff = rhs_dilation*(K-1) + 1``:

    * ``'SAME'``: ``O = s*S``; ``'VALID'``: ``O = s*S + max(k_eff - s, 0)``.
    * ``(lo, hi)`` pairs: padding of the stride-dilated input, negative values crop;
      ``O = s*(S-1) + 1 + lo + hi - k_eff + 1``. With ``use_consistent_padding=True`` the pairs
      are the forward convolution's padding, PyTorch's ``padding``:
      ``O = s*(S-1) + k_eff - lo - hi``. ``O <= 0`` gives an empty axis, as lax does.

    Differences from ``jax.lax.conv_transpose``, all where lax fails:

    * Negative padding larger than the dilated input, which lax refuses even when the
      output is non-empty, gives the definition's answer (zeros where no tap reaches).
      XLA's own handling of negative padding has aborted the process or returned wrong
      values in some configurations; here none reaches XLA.
    * ``strides`` may be an int; mixed floating ``lhs``/``rhs`` dtypes are promoted.
    * Integer inputs are refused (``TypeError``): jax_deconv computes in floating point.
    * Errors are ``ValueError``/``TypeError`` naming the argument, not assertions.

    Args:
      lhs: input, rank ``n + 2``.
      rhs: kernel, rank ``n + 2``.
      strides: ``n`` ints >= 1 (the fractional strides), or one int for every axis.
      padding: ``'SAME'``, ``'VALID'`` or ``n`` ``(lo, hi)`` pairs (see above).
      rhs_dilation: None or ``n`` ints >= 1.
      dimension_numbers: as ``lax.conv_general_dilated`` (strings, tuples of specs or
        ``ConvDimensionNumbers``); None gives the TensorFlow defaults above.
      transpose_kernel: flip the kernel's spatial axes and swap its ``I``/``O`` axes.
      precision: passed to the lowering's convolution or dot.
      preferred_element_type: accumulation and output dtype.
      use_consistent_padding: read ``(lo, hi)`` pairs as the forward convolution's padding.
      feature_group_count: channel groups (jax_deconv's extension); divides ``C_in`` and
        ``C_out``.
      algorithm: jax_deconv's lowering, ``'auto'``, ``'conv'``, ``'gemm'``, ``'phases'`` or ``'taps'`` (with the
        default ``max_buffer_bytes`` of :func:`jax_deconv.conv_transpose`).

    Returns:
      The transposed convolution in ``dimension_numbers``' output layout.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax_deconv import lax as dlax
      >>> x = jnp.arange(1.0, 6.0).reshape(1, 5, 1)             # (N, S, C)
      >>> k = jnp.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)       # (K, I, O)
      >>> dlax.conv_transpose(x, k, (2,), "SAME").ravel().tolist()
      [3.0, 2.0, 7.0, 4.0, 11.0, 6.0, 15.0, 8.0, 19.0, 10.0]
      >>> bool(jnp.array_equal(dlax.conv_transpose(x, k, (2,), "SAME"),
      ...                      jax.lax.conv_transpose(x, k, (2,), "SAME")))
      True
    """
    lhs, rhs = as_floating(_OP, "lhs", lhs), as_floating(_OP, "rhs", rhs)
    n = _rank(_OP, lhs, rhs)
    dn = _dimension_numbers(_OP, lhs, rhs, dimension_numbers)
    strides_ = _per_axis(_OP, "strides", strides, n)
    dilations = (1,) * n if rhs_dilation is None else _per_axis(_OP, "rhs_dilation", rhs_dilation, n)
    kernel = [rhs.shape[a] for a in dn.rhs_spec[2:]]
    kernel_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            raise _fail(_OP, "padding", padding, f"'SAME', 'VALID' or a sequence of {n} (low, high) int pairs")
        crops = [lax_string_crops(padding, k, s) for k, s in zip(kernel_eff, strides_)]
    else:
        pairs = _pairs(_OP, padding, n)
        if use_consistent_padding:  # the forward convolution's padding crops the full result
            crops = list(pairs)
        else:  # padding of the dilated input: crop = k_eff - 1 - pad
            crops = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_eff, pairs)]
    if n == 0:  # no spatial axes (a matrix product): run it with one axis of size 1
        dn = _lax.ConvDimensionNumbers(*((*spec, 2) for spec in dn))
        lhs, rhs, strides_, dilations, crops = lhs[..., None], rhs[..., None], (1,), (1,), [(0, 0)]
        return transpose_with_crops(
            _OP, lhs, rhs, None, dn=dn, strides=strides_, dilations=dilations, crops=crops,
            transpose_kernel=bool(transpose_kernel), groups=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type, algorithm=algorithm,
        )[..., 0]
    return transpose_with_crops(
        _OP, lhs, rhs, None, dn=dn, strides=strides_, dilations=dilations, crops=crops,
        transpose_kernel=bool(transpose_kernel), groups=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type, algorithm=algorithm,
    )


def transpose_with_crops(
    op: str,
    lhs: jax.Array,
    rhs: jax.Array,
    bias: jax.Array | None,
    *,
    dn: _lax.ConvDimensionNumbers,
    strides: Sequence[int],
    dilations: Sequence[int],
    crops: Sequence[tuple[int, int]],
    transpose_kernel: bool,
    groups: Any,
    precision: Any,
    preferred_element_type: Any,
    algorithm: Any,
) -> jax.Array:
    """The full transposed convolution cropped by ``crops`` (negative: zeros), in ``dn``'s layouts.

    ``rhs`` is lax's kernel (see :func:`conv_transpose` for ``transpose_kernel`` and groups);
    ``bias`` (``(C_out,)`` or None) is added everywhere, zeros included. Shared by every
    lax-style adapter (Flax, Equinox).
    """
    n = lhs.ndim - 2
    groups = _as_int(op, "feature_group_count", groups, 1)
    c_in = lhs.shape[dn.lhs_spec[1]]
    k = jnp.transpose(rhs, dn.rhs_spec)  # (O, I, K1..Kn) as lax names them
    w = _dragon_weight(op, k, c_in, groups, transpose_kernel, rhs.shape)
    c_out = w.shape[1] * groups
    spatial = [lhs.shape[a] for a in dn.lhs_spec[2:]]
    kernel = list(k.shape[2:])
    full = list(map(full_length, spatial, kernel, strides, dilations))
    outs = [max(f - b - e, 0) for f, (b, e) in zip(full, crops)]  # lax: a negative size is empty
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{op}: `bias` must have shape (C_out,) = ({c_out},); got {tuple(bias.shape)}.")
    windows = [crop_window(f, b, f - b - o) for f, (b, _), o in zip(full, crops, outs)]
    # compute channels-last when lhs is channels-last (lax's default), else channels-first
    channels_last = tuple(dn.lhs_spec) == (0, n + 1, *range(1, n + 1))
    # layout[j]: the canonical dim (N, C, S1..Sn = 0, 1, 2..n+1) that y's axis j holds
    if channels_last:
        x, layout = lhs, [0, *range(2, n + 2), 1]
    else:
        x, layout = jnp.transpose(lhs, dn.lhs_spec), list(range(n + 2))
    out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    shape_canonical = [lhs.shape[dn.lhs_spec[0]], c_out, *outs]
    known = [d for d in shape_canonical if isinstance(d, int)]
    if math.prod(known) > MAX_ELEMENTS:
        raise ValueError(
            f"{op}: the output would have shape {tuple(shape_canonical)} (N, C, spatial), {math.prod(known)} "
            f"elements, more than the {MAX_ELEMENTS} any array may have; check `padding` and `strides`."
        )
    if any(window is None for window in windows) or 0 in shape_canonical:
        y = jnp.zeros([shape_canonical[c] for c in layout], out_dtype)
    else:
        y = _core(op, x, w, n, strides, dilations, windows, groups, channels_last, precision,
                  preferred_element_type, algorithm)
    if bias is not None:
        y = add_bias(y, bias, layout.index(1))
    # the output's axis dn.out_spec[c] holds canonical dim c
    perm = [layout.index(c) for c in np.argsort(dn.out_spec)]
    return y if perm == list(range(n + 2)) else jnp.transpose(y, perm)


def _core(op, x, w, n, strides, dilations, windows, groups, channels_last, precision, preferred, algorithm):
    """Dragon's operator on the non-negative crops, then the zeros outside the full result."""
    begins = [win[0] for win in windows]
    ends = [win[1] for win in windows]
    kernel = tuple(w.shape[2:])
    if channels_last:  # Dragon's NHWC weight: (C_in, K1..Kn, C_out/group)
        w = jnp.moveaxis(w, 1, -1)
    y = _conv_transpose(
        op, n, [x, w], kernel, tuple(strides),
        tuple(begins) + tuple(ends), tuple(dilations), groups, "VALID", None, None,
        "NHWC" if channels_last else "NCHW", precision, preferred, algorithm,
    )
    zeros = [(win[2], win[3]) for win in windows]
    if any(z != (0, 0) for z in zeros):
        config = [(0, 0, 0)] * y.ndim
        first = 1 if channels_last else 2
        for i, (front, back) in enumerate(zeros):
            config[first + i] = (front, back, 0)
        y = _lax.pad(y, jnp.zeros((), y.dtype), config)
    return y


def _dragon_weight(op, k, c_in, groups, transpose_kernel, rhs_shape) -> jax.Array:
    """lax's kernel ``k`` as ``(O, I, K...)`` -> Dragon's ``(C_in, C_out/group, K...)``."""
    n = k.ndim - 2
    first, second = k.shape[:2]
    if transpose_kernel:  # the forward kernel: (C_in, C_out/group, K...), used unflipped
        if first != c_in or c_in % groups:
            raise ValueError(
                f"{op}: with transpose_kernel=True the kernel's O axis must equal the input channels "
                f"C_in (={c_in}), divisible by `feature_group_count` (={groups}); got kernel shape {rhs_shape}."
            )
        return k
    if second * groups != c_in or first % groups:
        raise ValueError(
            f"{op}: the kernel's I axis times `feature_group_count` (={groups}) must equal the input channels "
            f"C_in (={c_in}), and its O axis must be divisible by it; got kernel shape {rhs_shape}."
        )
    cg_out = first // groups
    k = k.reshape(groups, cg_out, second, *k.shape[2:])
    k = jnp.swapaxes(k, 1, 2).reshape(c_in, cg_out, *k.shape[3:])  # (C_in, C_out/group, K...)
    return jnp.flip(k, axis=tuple(range(2, n + 2)))


def _rank(op: str, lhs: jax.Array, rhs: jax.Array) -> int:
    if lhs.ndim != rhs.ndim or lhs.ndim < 2:
        raise ValueError(
            f"{op}: `lhs` and `rhs` must have the same rank n + 2 >= 2; got shapes {lhs.shape} and {rhs.shape}."
        )
    return lhs.ndim - 2


def _dimension_numbers(op: str, lhs: jax.Array, rhs: jax.Array, value: Any) -> _lax.ConvDimensionNumbers:
    if value is None:
        if lhs.ndim not in _DEFAULT_DIMENSION_NUMBERS:
            raise ValueError(
                f"{op}: `dimension_numbers` must be given for inputs of rank {lhs.ndim}; lax has defaults "
                f"for ranks 2 to 5 only."
            )
        value = _DEFAULT_DIMENSION_NUMBERS[lhs.ndim]
    try:
        return _lax.conv_dimension_numbers(lhs.shape, rhs.shape, value)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{op}: `dimension_numbers` {value!r} do not fit shapes {lhs.shape}, {rhs.shape}: {e}") from None


def _per_axis(op: str, name: str, value: Any, n: int) -> tuple[int, ...]:
    if n == 0:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value):
            raise _fail(op, name, value, "an empty sequence for inputs without spatial axes")
        return ()
    return per_axis(op, name, value, n, 1)


def _pairs(op: str, value: Any, n: int) -> list[tuple[int, int]]:
    allowed = f"'SAME', 'VALID' or a sequence of {n} (low, high) int pairs"
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != n:
        raise _fail(op, "padding", value, allowed, ValueError if isinstance(value, Sequence) else TypeError)
    pairs = []
    for pair in value:
        if (
            isinstance(pair, (str, bytes)) or not isinstance(pair, (Sequence, np.ndarray)) or len(pair) != 2
            or any(isinstance(p, bool) or not isinstance(p, numbers.Integral) for p in pair)
        ):
            raise _fail(op, "padding", value, allowed, ValueError)
        if max(abs(int(p)) for p in pair) > MAX_ARGUMENT:
            raise _fail(op, "padding", value, f"{allowed}, each of magnitude <= {MAX_ARGUMENT}", ValueError)
        pairs.append((int(pair[0]), int(pair[1])))
    return pairs

