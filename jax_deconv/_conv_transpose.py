"""The public functions: :func:`conv_transpose`, its 1-D/2-D/3-D forms and :func:`conv_transpose_plan`.

Each call checks its arrays (:mod:`jax_deconv._inputs`), resolves its arguments into a frozen
:class:`~jax_deconv._plan.Plan` (all shape arithmetic), and runs the plan's lowering
(:mod:`jax_deconv._lowering`), under explicit sharding when the inputs carry one
(:mod:`jax_deconv._sharding`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax import lax

from jax_deconv._inputs import check_preferred, promote, static_sizes, unpack_inputs
from jax_deconv._lowering import bind
from jax_deconv._names import redirect_pytorch_names
from jax_deconv._plan import Plan, check_shape, make_plan
from jax_deconv._sharding import under_explicit_sharding
from jax_deconv._types import Algorithm, DataFormat, Padding


def _conv_transpose(
    op: str,
    ndim: int | None,
    inputs: Sequence[jax.typing.ArrayLike],
    kernel_shape: Any,
    strides: Any,
    pads: Any,
    dilations: Any,
    group: Any,
    padding: Any,
    output_padding: Any,
    output_shape: Any,
    data_format: Any,
    precision: Any,
    preferred_element_type: Any,
    algorithm: Any,
    max_buffer_bytes: Any = None,
) -> jax.Array:
    x, w, b = unpack_inputs(op, inputs)
    _check_default_kernel(op, kernel_shape, x.shape)
    sizes = {
        name: static_sizes(op, name, value)
        for name, value in (("kernel_shape", kernel_shape), ("strides", strides), ("pads", pads),
                            ("dilations", dilations), ("group", group), ("output_padding", output_padding),
                            ("output_shape", output_shape))
    }
    plan = make_plan(
        x.shape, w.shape, None if b is None else b.shape, **sizes, padding=padding, data_format=data_format,
        op=op, ndim=ndim,
    )
    x, w, b = promote(x, w, b, op)
    preferred = check_preferred(op, preferred_element_type, x.dtype)
    apply = bind(op, plan, algorithm, precision, preferred, x.dtype, max_buffer_bytes)
    return under_explicit_sharding(apply, plan, x, w, b)


DEFAULT_KERNEL = (3, 3)
"""``conv_transpose``'s default ``kernel_shape``, Dragon's (told apart from a value passed)."""


def _check_default_kernel(op: str, kernel_shape: Any, x_shape: Sequence[Any]) -> None:
    if kernel_shape is DEFAULT_KERNEL and len(x_shape) != 4:
        raise ValueError(
            f"{op}: `kernel_shape` was not given, and its default {DEFAULT_KERNEL} (Dragon's) is for 2 spatial "
            f"axes; x has shape {tuple(x_shape)}, {len(x_shape) - 2} spatial axes: pass kernel_shape (an int or "
            f"one per axis)."
        )


@redirect_pytorch_names
def conv_transpose(
    inputs: Sequence[jax.typing.ArrayLike],
    kernel_shape: int | Sequence[int] = DEFAULT_KERNEL,
    strides: int | Sequence[int] = 1,
    pads: int | Sequence[int] = 0,
    dilations: int | Sequence[int] = 1,
    group: int = 1,
    padding: Padding = "VALID",
    output_padding: Sequence[int] | jax.typing.ArrayLike | None = None,
    output_shape: Sequence[int] | jax.typing.ArrayLike | None = None,
    data_format: DataFormat = "NCHW",
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: Any = None,
    algorithm: Algorithm = "auto",
    max_buffer_bytes: int | None = None,
) -> jax.Array:
    """Dragon's N-d transposed convolution (``dragon.nn.conv_transpose``), exactly.

    The number of spatial axes ``n`` is ``x.ndim - 2``.

    | data_format | x | weight | y |
    |---|---|---|---|
    | ``'NCHW'`` | ``(N, C_in, S1..Sn)`` | ``(C_in, C_out/group, K1..Kn)`` | ``(N, C_out, O1..On)`` |
    | ``'NHWC'`` | ``(N, S1..Sn, C_in)`` | ``(C_in, K1..Kn, C_out/group)`` | ``(N, O1..On, C_out)`` |

    bias: ``(C_out,)``. Per axis, the full result has length ``L = s*(S-1) + d*(K-1) + 1`` and
    ``y`` is it cropped by ``pad_begin`` at the front; positions past ``L`` are zero (+ bias).

    * ``padding='VALID'`` and no ``output_shape``: ``O = L - pad_begin - pad_end + output_padding``.
    * any ``'SAME*'``, or ``output_shape`` given (which switches ``'VALID'`` to ``'SAME'``):
      ``O = output_shape``, ``total = max(L - O, 0)``; ``'SAME_UPPER'`` crops ``total // 2`` at the
      front, ``'SAME'`` and ``'SAME_LOWER'`` crop ``total - total // 2`` there. ``output_shape``
      may not exceed ``L + output_padding``.

    Differences from peers: the weight layout matches PyTorch's ``conv_transpose*d`` (NCHW) and
    ``lax.conv_transpose(..., transpose_kernel=True)``; ``pads`` crop the output like PyTorch's
    ``padding``. ONNX adds ``output_padding`` into its automatic total padding and its ``SAME``
    is upper-biased; Dragon's (and ours) do neither. ``group > 1`` works in NHWC, which Dragon
    itself refuses.

    Args:
      inputs: ``[x, weight]`` or ``[x, weight, bias]``. Mixed floating dtypes are promoted.
      kernel_shape: int or one per spatial axis; must match the weight's kernel axes.
      strides: int or one per spatial axis, >= 1.
      pads: int, ``n`` values (begin = end) or ``2n`` values (all begins, then all ends), >= 0.
      dilations: int or one per spatial axis, >= 1.
      group: number of channel groups; must divide ``C_in``.
      padding: ``'VALID'``, ``'SAME'``, ``'SAME_UPPER'`` or ``'SAME_LOWER'``.
      output_padding: ``n`` ints >= 0 added to the output size (sequence, NumPy or concrete
        JAX array; static under ``jit``).
      output_shape: ``n`` spatial output sizes (same forms; static under ``jit``).
      data_format: ``'NCHW'`` (channels first) or ``'NHWC'`` (channels last).
      precision: passed to ``lax.conv_general_dilated`` / ``lax.dot_general``.
      preferred_element_type: accumulation and output dtype, passed likewise.
      algorithm: ``'auto'``, ``'native'``, ``'conv'``, ``'gemm'``, ``'phases'`` or ``'taps'``
        (docs/algorithms.md; :func:`choose_algorithm` says what ``'auto'`` picks); every one
        gives the same answer, up to rounding.
      max_buffer_bytes: the largest im2col buffer ``'gemm'`` may build at once (bytes,
        forward and backward; default 32 MiB): past it, ``'gemm'`` works in steps along the
        first spatial axis, and ``'auto'`` takes ``'conv'`` when even one step (one phase
        row) would not fit. ``'phases'`` builds one phase's im2col at a time, unstepped
        (``'auto'`` keeps it within this limit); ``'conv'`` and ``'taps'`` build none.

    Returns:
      ``y`` with the shape in the table above.

    Raises:
      ValueError, TypeError: for any invalid argument, naming it and the allowed values.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_deconv import conv_transpose
      >>> x = jnp.ones((1, 2, 2, 2, 2))
      >>> w = jnp.ones((2, 3, 1, 1, 1))
      >>> y = conv_transpose([x, w], kernel_shape=1, output_padding=(1, 1, 1),
      ...                    output_shape=(3, 3, 3))
      >>> y.shape
      (1, 3, 3, 3, 3)
      >>> float(y.sum())  # 8 input positions x 2 channels, the zero tail adds nothing
      48.0
    """
    return _conv_transpose(
        "conv_transpose", None, inputs, kernel_shape, strides, pads, dilations, group, padding,
        output_padding, output_shape, data_format, precision, preferred_element_type, algorithm,
        max_buffer_bytes,
    )


def _fixed_rank(ndim: int, example: str):
    op = f"conv{ndim}d_transpose"

    def wrapper(
        inputs: Sequence[jax.typing.ArrayLike],
        kernel_shape: int | Sequence[int] = 3,
        strides: int | Sequence[int] = 1,
        pads: int | Sequence[int] = 0,
        dilations: int | Sequence[int] = 1,
        group: int = 1,
        padding: Padding = "VALID",
        output_padding: Sequence[int] | jax.typing.ArrayLike | None = None,
        output_shape: Sequence[int] | jax.typing.ArrayLike | None = None,
        data_format: DataFormat = "NCHW",
        *,
        precision: lax.PrecisionLike = None,
        preferred_element_type: Any = None,
        algorithm: Algorithm = "auto",
        max_buffer_bytes: int | None = None,
    ) -> jax.Array:
        return _conv_transpose(
            op, ndim, inputs, kernel_shape, strides, pads, dilations, group, padding,
            output_padding, output_shape, data_format, precision, preferred_element_type, algorithm,
            max_buffer_bytes,
        )

    wrapper.__name__ = wrapper.__qualname__ = op
    wrapper.__doc__ = f"""Dragon's ``dragon.nn.{op}``: :func:`conv_transpose` with {ndim} spatial axes.

    ``x`` must have rank {ndim + 2}; ``kernel_shape`` defaults to 3 per axis. Every argument,
    shape rule and error is that of :func:`conv_transpose`.

    Examples:
{example}
    """
    return redirect_pytorch_names(wrapper)


conv1d_transpose = _fixed_rank(1, """\
      >>> import jax.numpy as jnp
      >>> from jax_deconv import conv1d_transpose
      >>> x = jnp.arange(3.0).reshape(1, 1, 3)
      >>> w = jnp.ones((1, 1, 2))
      >>> conv1d_transpose([x, w], kernel_shape=2, strides=2).tolist()
      [[[0.0, 0.0, 1.0, 1.0, 2.0, 2.0]]]""")
conv2d_transpose = _fixed_rank(2, """\
      >>> import jax.numpy as jnp
      >>> from jax_deconv import conv2d_transpose
      >>> x = jnp.ones((1, 4, 4, 8))               # NHWC
      >>> w = jnp.ones((8, 4, 4, 16))              # (C_in, Kh, Kw, C_out)
      >>> conv2d_transpose([x, w], kernel_shape=4, strides=2, pads=1, data_format='NHWC').shape
      (1, 8, 8, 16)""")
conv3d_transpose = _fixed_rank(3, """\
      >>> import jax.numpy as jnp
      >>> from jax_deconv import conv3d_transpose
      >>> x = jnp.ones((1, 2, 2, 2, 2))
      >>> w = jnp.ones((2, 3, 1, 1, 1))
      >>> conv3d_transpose([x, w], kernel_shape=1, output_padding=(1, 1, 1),
      ...                  output_shape=(3, 3, 3)).shape
      (1, 3, 3, 3, 3)""")


@redirect_pytorch_names
def conv_transpose_plan(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    bias_shape: Sequence[int] | None = None,
    kernel_shape: int | Sequence[int] = DEFAULT_KERNEL,
    strides: int | Sequence[int] = 1,
    pads: int | Sequence[int] = 0,
    dilations: int | Sequence[int] = 1,
    group: int = 1,
    padding: Padding = "VALID",
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    data_format: DataFormat = "NCHW",
) -> Plan:
    """Resolve :func:`conv_transpose`'s arguments against shapes alone; nothing runs.

    Returns the frozen :class:`Plan`: ``out_shape``, the resolved ``pad_begin`` / ``pad_end``
    (crops of the full result; a negative ``pad_end`` is a zero tail), ``full_spatial`` and the
    rest. Raises exactly the errors :func:`conv_transpose` would.

    Examples:
      >>> from jax_deconv import conv_transpose_plan
      >>> p = conv_transpose_plan((8, 64, 32, 32, 32), (64, 32, 4, 4, 4), kernel_shape=4,
      ...                         strides=2, pads=1)
      >>> p.out_shape, p.pad_begin, p.pad_end
      ((8, 32, 64, 64, 64), (1, 1, 1), (1, 1, 1))
    """
    op = "conv_transpose_plan"
    x_shape, weight_shape = check_shape(op, "x_shape", x_shape), check_shape(op, "weight_shape", weight_shape)
    _check_default_kernel(op, kernel_shape, x_shape)
    bias_shape = None if bias_shape is None else check_shape(op, "bias_shape", bias_shape)
    return make_plan(
        x_shape, weight_shape, bias_shape, kernel_shape=kernel_shape, strides=strides, pads=pads,
        dilations=dilations, group=group, padding=padding, output_padding=output_padding,
        output_shape=output_shape, data_format=data_format,
    )
