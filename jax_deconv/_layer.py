"""``ConvTranspose``: the operator as an immutable JAX pytree layer.

Parameters (``weight``, ``bias``) are the leaves; the configuration is static metadata, so a
layer passes through ``jit``, ``grad``, ``vmap`` and optimiser updates (``optax``,
``jax.tree.map``) like any pytree of arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import jax
import jax.numpy as jnp

from jax_deconv._conv_transpose import _conv_transpose
from jax_deconv._cost import check_max_buffer_bytes
from jax_deconv._plan import _as_int, _as_sequence, _choice, _is_int, _output_sizes, per_axis, resolve_pads
from jax_deconv._types import ALGORITHMS, DATA_FORMATS, PADDINGS, Algorithm, DataFormat, Padding


@dataclasses.dataclass(frozen=True)
class ConvTranspose:
    """An N-d transposed convolution layer with Dragon's semantics (see :func:`conv_transpose`).

    ``weight``: ``(C_in, C_out/group, *kernel)`` for NCHW, ``(C_in, *kernel, C_out/group)`` for
    NHWC; ``bias``: ``(C_out,)`` or None. Build one with :meth:`init`.

    Examples:
      >>> import jax
      >>> from jax_deconv import ConvTranspose3d
      >>> layer = ConvTranspose3d.init(jax.random.key(0), 8, 4, kernel_shape=4, strides=2, pads=1)
      >>> layer(jax.numpy.ones((2, 8, 5, 5, 5))).shape
      (2, 4, 10, 10, 10)
      >>> jax.tree.map(lambda p: p.shape, jax.tree.leaves(layer))
      [(8, 4, 4, 4, 4), (4,)]
    """

    weight: jax.Array
    bias: jax.Array | None
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...] | int = 1
    pads: tuple[int, ...] | int = 0
    dilations: tuple[int, ...] | int = 1
    group: int = 1
    padding: Padding = "VALID"
    output_padding: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    data_format: DataFormat = "NCHW"
    algorithm: Algorithm = "auto"
    max_buffer_bytes: int | None = None

    ndim: ClassVar[int | None] = None  # fixed by ConvTranspose1d/2d/3d; else len(kernel_shape)

    @classmethod
    def init(
        cls,
        key: jax.Array,
        in_channels: int,
        out_channels: int,
        kernel_shape: int | Sequence[int] = 3,
        *,
        strides: int | Sequence[int] = 1,
        pads: int | Sequence[int] = 0,
        dilations: int | Sequence[int] = 1,
        group: int = 1,
        padding: Padding = "VALID",
        output_padding: int | Sequence[int] | None = None,
        output_shape: int | Sequence[int] | None = None,
        data_format: DataFormat = "NCHW",
        use_bias: bool = True,
        dtype: Any = jnp.float32,
        algorithm: Algorithm = "auto",
        max_buffer_bytes: int | None = None,
    ) -> ConvTranspose:
        """PyTorch's default initialisation (``nn.ConvTranspose*d.reset_parameters``).

        ``fan_in = (C_out / group) * prod(kernel)`` (PyTorch reads it from the weight's second
        axis); weight and bias are ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, which is
        ``kaiming_uniform_(a=sqrt(5))`` for the weight.

        Every argument is checked here, with the checks and messages of
        :func:`~jax_deconv.conv_transpose` (named after the class), and stored normalised:
        tuples of Python ints, ``pads`` as all begins then all ends, upper-case strings.
        """
        op = cls.__name__
        n = cls.ndim
        if n is None:  # the generic layer: as many spatial axes as kernel_shape has entries
            allowed = "an int or a sequence of ints >= 1"
            n = 1 if _is_int(kernel_shape) else len(_as_sequence(op, "kernel_shape", kernel_shape, allowed))
        kernel = per_axis(op, "kernel_shape", kernel_shape, n, 1)
        in_channels = _as_int(op, "in_channels", in_channels, 1)
        out_channels = _as_int(op, "out_channels", out_channels, 1)
        group = _as_int(op, "group", group, 1)
        if in_channels % group or out_channels % group:
            raise ValueError(
                f"{op}: `group` (={group!r}) must divide in_channels (={in_channels}) and "
                f"out_channels (={out_channels})."
            )
        data_format = cast(DataFormat, _choice(op, "data_format", data_format, DATA_FORMATS))
        padding = cast(Padding, _choice(op, "padding", padding, PADDINGS))
        if algorithm not in ALGORITHMS:
            raise ValueError(f"{op}: `algorithm` must be one of {ALGORITHMS}; got {algorithm!r}.")
        budget = check_max_buffer_bytes(op, max_buffer_bytes)
        begins, ends = resolve_pads(op, pads, n)
        output_padding_ = _output_sizes(op, "output_padding", output_padding, n, 0)
        output_shape_ = _output_sizes(op, "output_shape", output_shape, n, 1)
        if output_shape_ is None and padding != "VALID":
            raise ValueError(f"{op}: `output_shape` is required for padding={padding!r}; got None.")
        per_group = out_channels // group
        fan_in = per_group * math.prod(kernel)
        bound = 1.0 / math.sqrt(fan_in)
        shape = (in_channels, per_group, *kernel) if data_format == "NCHW" else (in_channels, *kernel, per_group)
        wkey, bkey = jax.random.split(key)
        weight = jax.random.uniform(wkey, shape, dtype, -bound, bound)
        bias = jax.random.uniform(bkey, (out_channels,), dtype, -bound, bound) if use_bias else None
        return cls(
            weight=weight, bias=bias, kernel_shape=kernel, strides=per_axis(op, "strides", strides, n, 1),
            pads=begins + ends, dilations=per_axis(op, "dilations", dilations, n, 1), group=group,
            padding=padding, output_padding=output_padding_, output_shape=output_shape_,
            data_format=data_format, algorithm=algorithm, max_buffer_bytes=budget,
        )

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Apply to a batch ``x`` (``(N, C_in, *spatial)`` or ``(N, *spatial, C_in)``)."""
        op, n = type(self).__name__, len(self.kernel_shape)
        inputs = [x, self.weight] if self.bias is None else [x, self.weight, self.bias]
        rank = jnp.ndim(x) if hasattr(x, "ndim") or isinstance(x, (list, tuple)) else None
        if rank != n + 2:
            layout = "(N, C_in, *spatial)" if self.data_format == "NCHW" else "(N, *spatial, C_in)"
            raise ValueError(
                f"{op}: input `x` must have rank {n + 2}, {layout} with {n} spatial axes; "
                f"got shape {jnp.shape(x) if rank is not None else type(x).__name__}."
            )
        return _conv_transpose(
            op, n, inputs, self.kernel_shape, self.strides, self.pads, self.dilations, self.group, self.padding,
            self.output_padding, self.output_shape, self.data_format, None, None, self.algorithm,
            self.max_buffer_bytes,
        )


def _fixed(name: str, n: int) -> type[ConvTranspose]:
    doc = (f"{n}-D :class:`ConvTranspose`: ``x`` has {n} spatial axes and an int ``kernel_shape``, "
           f"``strides`` or ``dilations`` is used for each of them. Build one with :meth:`init`.")
    cls = type(name, (ConvTranspose,), {"ndim": n, "__doc__": doc})
    cls = dataclasses.dataclass(frozen=True)(cls)
    return _register(cls)


def _register(cls: type) -> type:
    data = [f.name for f in dataclasses.fields(cls) if f.name in ("weight", "bias")]
    meta = [f.name for f in dataclasses.fields(cls) if f.name not in data]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


ConvTranspose = _register(ConvTranspose)
ConvTranspose1d = _fixed("ConvTranspose1d", 1)
ConvTranspose2d = _fixed("ConvTranspose2d", 2)
ConvTranspose3d = _fixed("ConvTranspose3d", 3)
