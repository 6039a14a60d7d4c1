"""PyTorch-style ``conv_transpose1d/2d/3d`` (``torch.nn.functional``) on jax_deconv's lowering,
and ``conv1d/2d/3d`` on the native CPU kernels (:func:`jax_deconv.lax.conv_general_dilated`).

Same arguments, order, defaults, weight layout and results as
``torch.nn.functional.conv_transposeNd``; arrays are JAX arrays. Switching is one import::

    from jax_deconv import functional as F      # was: import torch.nn.functional as F
    y = F.conv_transpose3d(x, w, b, stride=2, padding=1)

PyTorch's ``padding`` crops the full transposed convolution like Dragon's ``pads``, so the
computation is Dragon's operator with ``pads=padding``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jax_deconv._conv_transpose import _conv_transpose
from jax_deconv._inputs import as_floating, promote
from jax_deconv._lax_conv import conv_general_dilated
from jax_deconv._native.bias import add_bias
from jax_deconv._plan import _as_int, full_length, per_axis

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]

IntOrTuple = int | Sequence[int]


def _conv_transpose_nd(
    n: int,
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None,
    stride: IntOrTuple,
    padding: IntOrTuple,
    output_padding: IntOrTuple,
    groups: int,
    dilation: IntOrTuple,
) -> jax.Array:
    op = f"conv_transpose{n}d"
    x, w = as_floating(op, "input", input), as_floating(op, "weight", weight)
    bias = None if bias is None else as_floating(op, "bias", bias)
    if x.ndim not in (n + 1, n + 2):
        raise ValueError(
            f"{op}: `input` must be {n + 1}-D (unbatched) or {n + 2}-D (batched); got shape {x.shape}."
        )
    unbatched = x.ndim == n + 1
    if unbatched:
        x = x[None]
    if w.ndim != n + 2:
        raise ValueError(f"{op}: `weight` must be {n + 2}-D (C_in, C_out/groups, *kernel); got shape {w.shape}.")
    strides = per_axis(op, "stride", stride, n, 1)
    pads = per_axis(op, "padding", padding, n, 0)
    dilations = per_axis(op, "dilation", dilation, n, 1)
    extra = per_axis(op, "output_padding", output_padding, n, 0)
    groups = _as_int(op, "groups", groups, 1)
    for i, (a, s, d) in enumerate(zip(extra, strides, dilations)):
        if a >= max(s, d):
            raise ValueError(
                f"{op}: `output_padding` must be smaller than stride or dilation along each axis; got "
                f"output_padding={extra[i]} with stride={s}, dilation={d} on spatial axis {i}."
            )
    if x.shape[1] != w.shape[0] or x.shape[1] % groups:
        raise ValueError(
            f"{op}: `input` must have C_in = weight.shape[0] (={w.shape[0]}) channels, divisible by `groups` "
            f"(={groups}); got input shape {x.shape}."
        )
    kernel = tuple(w.shape[2:])
    for i, (size, k, s, d, p, a) in enumerate(zip(x.shape[2:], kernel, strides, dilations, pads, extra)):
        out = full_length(size, k, s, d) - 2 * p + a
        if out < 1:
            raise ValueError(
                f"{op}: `padding` (={padding!r}) leaves no output along spatial axis {i}: "
                f"(S-1)*stride - 2*padding + dilation*(K-1) + output_padding + 1 = {out}; it must be >= 1."
            )
    inputs = [x, w] if bias is None else [x, w, bias]
    y = _conv_transpose(
        op, n, inputs, kernel, strides, pads, dilations, groups, "VALID", extra, None, "NCHW", None, None, "auto"
    )
    return y[0] if unbatched else y


def conv_transpose1d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    dilation: IntOrTuple = 1,
) -> jax.Array:
    """``torch.nn.functional.conv_transpose1d`` in JAX.

    ``input``: ``(N, C_in, L)`` or unbatched ``(C_in, L)``; ``weight``:
    ``(C_in, C_out/groups, K)``; ``bias``: ``(C_out,)``. Output length
    ``(L-1)*stride - 2*padding + dilation*(K-1) + output_padding + 1``, with
    ``output_padding < max(stride, dilation)`` as PyTorch requires. Invalid arguments raise
    ``ValueError``/``TypeError`` (PyTorch raises ``RuntimeError``); mixed floating dtypes are
    promoted (PyTorch refuses them).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv import functional as F
      >>> F.conv_transpose1d(jnp.ones((1, 1, 3)), jnp.ones((1, 1, 2)), stride=2).tolist()
      [[[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]]
    """
    return _conv_transpose_nd(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    dilation: IntOrTuple = 1,
) -> jax.Array:
    """``torch.nn.functional.conv_transpose2d`` in JAX (see :func:`conv_transpose1d`).

    ``input``: ``(N, C_in, H, W)`` or ``(C_in, H, W)``; ``weight``: ``(C_in, C_out/groups, Kh, Kw)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv import functional as F
      >>> F.conv_transpose2d(jnp.ones((2, 8, 4, 4)), jnp.ones((8, 3, 4, 4)), stride=2, padding=1).shape
      (2, 3, 8, 8)
    """
    return _conv_transpose_nd(2, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    dilation: IntOrTuple = 1,
) -> jax.Array:
    """``torch.nn.functional.conv_transpose3d`` in JAX (see :func:`conv_transpose1d`).

    ``input``: ``(N, C_in, D, H, W)`` or ``(C_in, D, H, W)``; ``weight``:
    ``(C_in, C_out/groups, Kd, Kh, Kw)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv import functional as F
      >>> F.conv_transpose3d(jnp.ones((4, 3, 3, 3)), jnp.ones((4, 2, 3, 3, 3)), stride=2, padding=1,
      ...                    output_padding=1).shape
      (2, 6, 6, 6)
    """
    return _conv_transpose_nd(3, input, weight, bias, stride, padding, output_padding, groups, dilation)


def _conv_nd(
    n: int,
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None,
    stride: IntOrTuple,
    padding: IntOrTuple | str,
    dilation: IntOrTuple,
    groups: int,
) -> jax.Array:
    op = f"conv{n}d"
    x, w = as_floating(op, "input", input), as_floating(op, "weight", weight)
    if x.ndim not in (n + 1, n + 2):
        raise ValueError(f"{op}: `input` must be {n + 1}-D (unbatched) or {n + 2}-D (batched); got shape {x.shape}.")
    if w.ndim != n + 2:
        raise ValueError(f"{op}: `weight` must be {n + 2}-D (C_out, C_in/groups, *kernel); got shape {w.shape}.")
    unbatched = x.ndim == n + 1
    if unbatched:
        x = x[None]
    strides = per_axis(op, "stride", stride, n, 1)
    dilations = per_axis(op, "dilation", dilation, n, 1)
    groups = _as_int(op, "groups", groups, 1)
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ValueError(
            f"{op}: `input` must have C_in = weight.shape[1] * groups (={w.shape[1]} * {groups}) channels and "
            f"weight.shape[0] must be divisible by `groups`; got input shape {x.shape}, weight shape {w.shape}."
        )
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"{op}: `padding` must be an int, {n} ints, 'valid' or 'same'; got {padding!r}.")
        if padding == "same" and any(s != 1 for s in strides):
            raise ValueError(f"{op}: padding='same' is not supported for strided convolutions (as in PyTorch); "
                             f"got stride={stride!r}.")
        totals = [d * (k - 1) if padding == "same" else 0 for k, d in zip(w.shape[2:], dilations)]
        pads = [(t // 2, t - t // 2) for t in totals]
    else:
        pads = [(p, p) for p in per_axis(op, "padding", padding, n, 0)]
    b = None if bias is None else as_floating(op, "bias", bias)
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"{op}: `bias` must have shape (C_out,) = ({w.shape[0]},); got shape {b.shape}.")
    x, w, b = promote(x, w, b, op)
    # a 16-bit result with a bias is rounded once (as PyTorch's): summed and biased in float32
    wide = jnp.float32 if b is not None and x.dtype in (jnp.bfloat16, jnp.float16) else None
    y = conv_general_dilated(x, w, strides, pads, rhs_dilation=dilations, feature_group_count=groups,
                             preferred_element_type=wide)
    if b is not None:
        y = add_bias(y, b, 1).astype(x.dtype)
    return y[0] if unbatched else y


def conv1d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> jax.Array:
    """``torch.nn.functional.conv1d`` in JAX, on the native CPU kernels where they take it.

    ``input``: ``(N, C_in, W)`` or ``(C_in, W)``; ``weight``: ``(C_out, C_in/groups, K)``;
    ``padding``: an int per axis (both sides), ``'valid'`` or ``'same'`` (stride 1), as PyTorch's.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv import functional as F
      >>> F.conv1d(jnp.arange(5.0).reshape(1, 1, 5), jnp.ones((1, 1, 3)), padding=1).tolist()
      [[[1.0, 3.0, 6.0, 9.0, 7.0]]]
    """
    return _conv_nd(1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> jax.Array:
    """``torch.nn.functional.conv2d`` in JAX (see :func:`conv1d`).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv import functional as F
      >>> F.conv2d(jnp.ones((1, 4, 8, 8)), jnp.ones((6, 2, 3, 3)), stride=2, padding=1, groups=2).shape
      (1, 6, 4, 4)
    """
    return _conv_nd(2, input, weight, bias, stride, padding, dilation, groups)


def conv3d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> jax.Array:
    """``torch.nn.functional.conv3d`` in JAX (see :func:`conv1d`).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv import functional as F
      >>> F.conv3d(jnp.ones((2, 4, 6, 6, 6)), jnp.ones((8, 4, 3, 3, 3)), padding="same").shape
      (2, 8, 6, 6, 6)
    """
    return _conv_nd(3, input, weight, bias, stride, padding, dilation, groups)
