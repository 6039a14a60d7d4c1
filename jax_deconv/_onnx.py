"""ONNX ``ConvTranspose`` on top of Dragon's ``conv_transpose``.

ONNX and Dragon share the NCHW layout and the weight layout ``(C_in, C_out/group, *K)``;
they differ only in how automatic padding is resolved. Along one axis (full length
``L = s*(S-1) + d*(K-1) + 1``, output padding ``a``):

=====================  ===========================================  =============================
                       ONNX                                         Dragon
=====================  ===========================================  =============================
total padding          ``L + a - O`` (``a`` enters)                 ``max(L - O, 0)`` (it does not)
``SAME_UPPER``         crop ``total // 2`` at the front             the same
``SAME_LOWER`` /       crop ``total - total // 2`` at the front     the same (Dragon's ``'SAME'``
``output_shape`` only                                               is ``'SAME_LOWER'``)
negative total         a negative pad: a zero tail, or zeros in      a zero tail only
                       front of the result
``SAME_*`` without     ``O = S * s``; onnxruntime clamps the total  ``output_shape`` is required
``output_shape``       at 0 (``O = L + a`` when ``L + a < S*s``)
=====================  ===========================================  =============================

:func:`onnx_to_dragon` resolves the ONNX attributes into explicit per-axis crops once, then
states them as Dragon's ``pads`` (all begins, then all ends) and ``output_padding`` (the
zero tail past the full result), so that Dragon's ``'VALID'`` arithmetic
``O = L - pad_begin - pad_end + output_padding`` reproduces ONNX's output exactly. It
refuses, as ONNX does, an ``output_padding`` not below ``max(stride, dilation)``, and an
``output_shape`` whose negative total padding would put zeros in front of the result.

This module imports no JAX at the top: :func:`onnx_to_dragon` is plain Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from jax_deconv._plan import _as_int, _choice, _output_sizes, check_shape, full_length, per_axis, resolve_pads
from jax_deconv._types import AUTO_PADS, Algorithm, AutoPad

_OP = "onnx_conv_transpose"


def onnx_to_dragon(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    auto_pad: AutoPad | bytes = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> dict[str, Any]:
    """ONNX ``ConvTranspose`` attributes -> keyword arguments of Dragon's ``conv_transpose``.

    ``x_shape`` is ``(N, C_in, S1..Sn)`` and ``weight_shape`` ``(C_in, C_out/group, K1..Kn)``
    (ONNX is always NCHW). The attributes are ONNX's, with ONNX's defaults; ``auto_pad`` may
    be ``bytes`` as ``onnx.helper.get_attribute_value`` returns it. The result always uses
    ``padding='VALID'`` with explicit ``pads`` and ``output_padding``.

    Examples:
      >>> from jax_deconv import onnx_to_dragon
      >>> kw = onnx_to_dragon((1, 1, 3, 3), (1, 2, 3, 3), strides=[2, 2], output_shape=[6, 5],
      ...                     output_padding=[1, 1])
      >>> kw['pads'], kw['output_padding'], kw['padding']   # ONNX crops (1, 2) at the front
      ((1, 2, 0, 0), (0, 0), 'VALID')

    Dragon's own ``output_shape=(6, 5)`` would crop ``(1, 1)`` at the front: ONNX counts
    ``output_padding`` into the total padding.
    """
    x_shape, weight_shape = check_shape(_OP, "x_shape", x_shape), check_shape(_OP, "weight_shape", weight_shape)
    n = len(x_shape) - 2
    if n < 1 or len(weight_shape) != n + 2:
        raise ValueError(
            f"{_OP}: `x` must have rank >= 3 (N, C, spatial...) and the weight rank {len(x_shape)}; "
            f"got x shape {x_shape} and weight shape {weight_shape}."
        )
    if isinstance(auto_pad, bytes):  # as ONNX stores string attributes
        try:
            auto_pad = cast(AutoPad, auto_pad.decode("ascii"))
        except UnicodeDecodeError:
            raise ValueError(
                f"{_OP}: `auto_pad` must be one of {', '.join(map(repr, AUTO_PADS))} (str or ASCII bytes); "
                f"got {auto_pad!r}."
            ) from None
    mode = _choice(_OP, "auto_pad", auto_pad, AUTO_PADS)
    auto_pad = cast(AutoPad, mode)
    if pads is not None and mode != "NOTSET":
        raise ValueError(
            f"{_OP}: `pads` cannot be used together with auto_pad={auto_pad!r} (ONNX's rule: explicit pads "
            f"need auto_pad='NOTSET'); got pads={pads!r}."
        )
    kernel = per_axis(_OP, "kernel_shape", weight_shape[2:] if kernel_shape is None else kernel_shape, n, 1)
    strides_ = per_axis(_OP, "strides", 1 if strides is None else strides, n, 1)
    dilations_ = per_axis(_OP, "dilations", 1 if dilations is None else dilations, n, 1)
    group = _as_int(_OP, "group", group, 1)
    adjust = _output_sizes(_OP, "output_padding", output_padding, n, 0) or (0,) * n
    wanted = _output_sizes(_OP, "output_shape", output_shape, n, 1)
    for i, (a, s, d) in enumerate(zip(adjust, strides_, dilations_)):
        if a >= max(s, d):
            raise ValueError(
                f"{_OP}: `output_padding` must be below max(stride, dilation) on every axis (ONNX's rule); "
                f"got {adjust} with strides {strides_} and dilations {dilations_} (axis {i})."
            )
    full = [
        full_length(size, k, s, d) + a
        for size, k, s, d, a in zip(x_shape[2:], kernel, strides_, dilations_, adjust)
    ]
    if wanted is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # onnxruntime: the target is S*s, the total padding is clamped at 0.
        wanted = tuple(min(size * s, f) for size, s, f in zip(x_shape[2:], strides_, full))
    if wanted is not None:
        totals = [f - o for f, o in zip(full, wanted)]
        begins = tuple(t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals)
        if min(begins) < 0:
            raise ValueError(
                f"{_OP}: `output_shape` {wanted} gives a negative total padding {tuple(totals)} that ONNX splits "
                f"into zeros in front of the result, which Dragon cannot express; allowed: at most "
                f"stride*(S-1) + dilation*(K-1) + 1 + output_padding = {tuple(full)} per axis (+1 unless SAME_UPPER)."
            )
        ends = tuple(t - b for t, b in zip(totals, begins))
    elif pads is not None:
        begins, ends = resolve_pads(_OP, pads, n, ends_given=True)
    else:
        begins = ends = (0,) * n
    # ONNX output O = full - begin - end, where `full` includes output_padding; in Dragon's
    # terms crop `begin` and `max(end - a, 0)`, then grow a zero tail of `max(a - end, 0)`.
    dragon_ends = tuple(max(e - a, 0) for e, a in zip(ends, adjust))
    tails = tuple(max(a - e, 0) for e, a in zip(ends, adjust))
    return {
        "kernel_shape": kernel,
        "strides": strides_,
        "pads": begins + dragon_ends,
        "dilations": dilations_,
        "group": group,
        "padding": "VALID",
        "output_padding": tails,
    }


def onnx_conv_transpose(
    inputs: Sequence[Any],
    *,
    auto_pad: AutoPad | bytes = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    algorithm: Algorithm = "auto",
    max_buffer_bytes: int | None = None,
) -> Any:
    """ONNX's ``ConvTranspose`` (opset 11+): ``inputs = [X, W]`` or ``[X, W, B]``, NCHW.

    Computes exactly what onnxruntime computes, through :func:`onnx_to_dragon` and
    :func:`conv_transpose`; ``precision``, ``preferred_element_type``, ``algorithm`` and
    ``max_buffer_bytes`` are passed through.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv import onnx_conv_transpose
      >>> x = jnp.arange(3.0).reshape(1, 1, 3)
      >>> w = jnp.ones((1, 1, 3))
      >>> onnx_conv_transpose([x, w], strides=[2], auto_pad='SAME_UPPER').tolist()
      [[[0.0, 0.0, 1.0, 1.0, 3.0, 2.0]]]
    """
    from jax_deconv._conv_transpose import conv_transpose
    from jax_deconv._inputs import unpack_inputs

    x, w, _ = unpack_inputs(_OP, inputs)
    kwargs = onnx_to_dragon(
        x.shape, w.shape, auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
        output_padding=output_padding, output_shape=output_shape, pads=pads, strides=strides,
    )
    return conv_transpose(
        inputs, **kwargs, precision=precision, preferred_element_type=preferred_element_type, algorithm=algorithm,
        max_buffer_bytes=max_buffer_bytes,
    )
