"""Lowering of a :class:`~jax_deconv._plan.Plan` onto XLA, and the public functions.

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
``'auto'``  ``'gemm'`` on CPU while that buffer stays under 256 MiB, else ``'conv'``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_deconv._plan import Plan, make_plan, phase_buffer_elements

Padding = Literal["VALID", "SAME", "SAME_UPPER", "SAME_LOWER"]
DataFormat = Literal["NCHW", "NHWC"]
Algorithm = Literal["auto", "conv", "gemm"]
ALGORITHMS = ("auto", "conv", "gemm")
GEMM_BUFFER_LIMIT_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- lowering


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


_LOWERINGS = {"conv": _lower_conv, "gemm": _lower_gemm}


@functools.partial(jax.jit, static_argnames=("plan", "algorithm", "precision", "preferred"))
def _apply(x, w, b, *, plan: Plan, algorithm: str, precision, preferred) -> jax.Array:
    if plan.is_zero:  # every kept position is past the end of the full output
        y = jnp.zeros(plan.out_shape, preferred or x.dtype)
    else:
        y = _LOWERINGS[algorithm](x, w, plan, precision, preferred)
    if b is not None:
        shape = [1] * y.ndim
        shape[1 if plan.data_format == "NCHW" else -1] = plan.out_channels
        y = y + b.astype(y.dtype).reshape(shape)
    return y


def choose_algorithm(plan: Plan, dtype: Any, backend: str | None = None) -> str:
    """The algorithm ``'auto'`` picks for ``plan`` on ``backend`` (default: JAX's default).

    Examples:
      >>> from jax_deconv import choose_algorithm, conv_transpose_plan
      >>> plan = conv_transpose_plan((2, 32, 16, 16, 16), (32, 16, 4, 4, 4), kernel_shape=4, strides=2)
      >>> choose_algorithm(plan, "float32", "cpu"), choose_algorithm(plan, "float32", "gpu")
      ('gemm', 'conv')
    """
    backend = backend or jax.default_backend()
    if backend == "cpu":  # the gemm buffer holds float32 even for 16-bit inputs
        if phase_buffer_elements(plan) * max(np.dtype(dtype).itemsize, 4) <= GEMM_BUFFER_LIMIT_BYTES:
            return "gemm"
    return "conv"


# --------------------------------------------------------------------------- public API


def _static_sizes(op: str, name: str, value: Any) -> Any:
    """``output_shape`` / ``output_padding`` as host values; traced values are refused."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, jax.core.Tracer) for v in items):
        raise TypeError(
            f"{op}: `{name}` must be static (known at trace time): sizes decide the output shape, "
            f"so under `jax.jit` pass a Python tuple or mark the argument static "
            f"(static_argnames); got a traced value {value!r}."
        )
    if isinstance(value, jax.Array):
        return np.asarray(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, jax.Array) for v in value):
        return tuple(np.asarray(v).item() if isinstance(v, jax.Array) else v for v in value)
    return value


def _unpack_inputs(op: str, inputs: Any) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(
            f"{op}: `inputs` must be a list or tuple [x, weight] or [x, weight, bias]; got {type(inputs)!r}."
        )
    if len(inputs) not in (2, 3):
        raise ValueError(
            f"{op}: `inputs` must be [x, weight] or [x, weight, bias]; got {len(inputs)} inputs."
        )
    arrays = []
    for name, value in zip(("x", "weight", "bias"), inputs):
        if value is None and name == "bias":
            arrays.append(None)
            continue
        try:
            array = jnp.asarray(value)
        except TypeError as e:
            raise TypeError(f"{op}: `{name}` must be an array; got {type(value)!r}.") from e
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise TypeError(
                f"{op}: `{name}` must have a floating dtype (float16, bfloat16, float32, float64); "
                f"got {array.dtype}."
            )
        arrays.append(array)
    x, w, *rest = arrays
    return x, w, (rest[0] if rest else None)


def _conv_transpose(
    op: str,
    ndim: int | None,
    inputs: Sequence[jax.typing.ArrayLike],
    kernel_shape,
    strides,
    pads,
    dilations,
    group,
    padding,
    output_padding,
    output_shape,
    data_format,
    precision,
    preferred_element_type,
    algorithm,
) -> jax.Array:
    x, w, b = _unpack_inputs(op, inputs)
    plan = make_plan(
        x.shape,
        w.shape,
        None if b is None else b.shape,
        kernel_shape=kernel_shape,
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=group,
        padding=padding,
        output_padding=_static_sizes(op, "output_padding", output_padding),
        output_shape=_static_sizes(op, "output_shape", output_shape),
        data_format=data_format,
        op=op,
        ndim=ndim,
    )
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{op}: `algorithm` must be one of {ALGORITHMS}; got {algorithm!r}.")
    dtype = jnp.result_type(*(a for a in (x, w, b) if a is not None))
    if algorithm == "auto":
        algorithm = choose_algorithm(plan, dtype)
    preferred = None if preferred_element_type is None else jnp.dtype(preferred_element_type)
    apply = functools.partial(
        _apply, algorithm=algorithm, precision=_hashable_precision(precision), preferred=preferred
    )
    x, w, b = x.astype(dtype), w.astype(dtype), None if b is None else b.astype(dtype)
    return _under_explicit_sharding(apply, plan, x, w, b)


def _under_explicit_sharding(apply, plan: Plan, x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """Run ``apply`` on inputs that may be sharded *in their types* (JAX's explicit sharding).

    The lowering pads, reshapes and transposes, which explicit sharding cannot type. Only the
    batch of ``x`` sharded (data parallel): each device runs its own examples under
    ``shard_map`` (no communication; XLA's partitioner would gather the batch of a grouped
    convolution). Anything else: ``auto_axes`` hands the placement to XLA's partitioner
    (which exchanges halos for a sharded spatial axis); the output keeps ``x``'s batch and
    spatial sharding where the output sizes divide evenly. No explicit sharding: ``apply``.
    """
    if not hasattr(jax, "typeof"):  # a JAX without sharding in types
        return apply(x, w, b, plan=plan)
    P = jax.sharding.PartitionSpec
    shardings = [jax.typeof(a).sharding for a in (x, w, b) if a is not None]
    axes = tuple(dict.fromkeys(name for sharding in shardings for name in _spec_names(sharding.spec)))
    if not axes:
        return apply(x, w, b, plan=plan)
    mesh = next(sharding.mesh for sharding in shardings if _spec_names(sharding.spec))
    x_spec = tuple(shardings[0].spec) + (None,) * (x.ndim - len(shardings[0].spec))
    if x_spec[0] is not None and not _spec_names(x_spec[1:]) and all(not _spec_names(s.spec) for s in shardings[1:]):
        devices = math.prod(mesh.shape[name] for name in _spec_names(x_spec[:1]))
        local_plan = dataclasses.replace(plan, batch=plan.batch // devices)
        local = jax.shard_map(
            lambda x, w: apply(x, w, b, plan=local_plan), mesh=mesh, in_specs=(P(x_spec[0]), P()),
            out_specs=P(x_spec[0]),
        )
        return local(x, w)
    spatial = range(2, x.ndim) if plan.data_format == "NCHW" else range(1, x.ndim - 1)
    out = [None] * x.ndim
    for i in [0, *spatial]:
        size = math.prod(mesh.shape[name] for name in _spec_names([x_spec[i]]))
        if x_spec[i] is not None and plan.out_shape[i] % size == 0:
            out[i] = x_spec[i]
    out_sharding = jax.sharding.NamedSharding(mesh, P(*out))
    apply = functools.partial(apply, plan=plan)
    return jax.sharding.auto_axes(apply, axes=axes, out_sharding=out_sharding)(x, w, b)


def _spec_names(spec: Any) -> list[str]:
    return [name for entry in spec for name in (entry if isinstance(entry, tuple) else (entry,)) if name is not None]


def _hashable_precision(precision: Any) -> Any:
    if isinstance(precision, list):
        return tuple(precision)
    return precision


def conv_transpose(
    inputs: Sequence[jax.typing.ArrayLike],
    kernel_shape: int | Sequence[int] = (3, 3),
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
) -> jax.Array:
    """Dragon's N-d transposed convolution (``dragon.nn.conv_transpose``), exactly.

    The number of spatial axes ``n`` is ``x.ndim - 2``.

    ============  ==========================  ================================  ===============
    data_format   x                           weight                            y
    ============  ==========================  ================================  ===============
    ``'NCHW'``    ``(N, C_in, S1..Sn)``       ``(C_in, C_out/group, K1..Kn)``   ``(N, C_out, O1..On)``
    ``'NHWC'``    ``(N, S1..Sn, C_in)``       ``(C_in, K1..Kn, C_out/group)``   ``(N, O1..On, C_out)``
    ============  ==========================  ================================  ===============

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
      algorithm: ``'auto'``, ``'conv'`` or ``'gemm'`` (see the module docstring); every one
        gives the same answer.

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
    ) -> jax.Array:
        return _conv_transpose(
            op, ndim, inputs, kernel_shape, strides, pads, dilations, group, padding,
            output_padding, output_shape, data_format, precision, preferred_element_type, algorithm,
        )

    wrapper.__name__ = wrapper.__qualname__ = op
    wrapper.__doc__ = f"""Dragon's ``dragon.nn.{op}``: :func:`conv_transpose` with {ndim} spatial axes.

    ``x`` must have rank {ndim + 2}; ``kernel_shape`` defaults to 3 per axis. Every argument,
    shape rule and error is that of :func:`conv_transpose`.

    Examples:
{example}
    """
    return wrapper


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


def conv_transpose_plan(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    bias_shape: Sequence[int] | None = None,
    kernel_shape: int | Sequence[int] = (3, 3),
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
    return make_plan(
        x_shape, weight_shape, bias_shape, kernel_shape=kernel_shape, strides=strides, pads=pads,
        dilations=dilations, group=group, padding=padding, output_padding=output_padding,
        output_shape=output_shape, data_format=data_format,
    )
