"""``ConvTranspose``: the operator as an immutable JAX pytree layer.

Parameters (``weight``, ``bias``) are the leaves; the configuration is static metadata, so a
layer passes through ``jit``, ``grad``, ``vmap`` and optimiser updates (``optax``,
``jax.tree.map``) like any pytree of arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jax_deconv._conv_transpose import conv_transpose
from jax_deconv._plan import per_axis


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
    strides: tuple[int, ...] = dataclasses.field(default=1)
    pads: Any = dataclasses.field(default=0)
    dilations: Any = dataclasses.field(default=1)
    group: int = dataclasses.field(default=1)
    padding: str = dataclasses.field(default="VALID")
    output_padding: tuple[int, ...] | None = dataclasses.field(default=None)
    output_shape: tuple[int, ...] | None = dataclasses.field(default=None)
    data_format: str = dataclasses.field(default="NCHW")
    algorithm: str = dataclasses.field(default="auto")

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
        padding: str = "VALID",
        output_padding: Sequence[int] | None = None,
        output_shape: Sequence[int] | None = None,
        data_format: str = "NCHW",
        use_bias: bool = True,
        dtype: Any = jnp.float32,
        algorithm: str = "auto",
    ) -> ConvTranspose:
        """PyTorch's default initialisation (``nn.ConvTranspose*d.reset_parameters``).

        ``fan_in = (C_out / group) * prod(kernel)`` (PyTorch reads it from the weight's second
        axis); weight and bias are ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, which is
        ``kaiming_uniform_(a=sqrt(5))`` for the weight.
        """
        op = cls.__name__
        n = cls.ndim if cls.ndim is not None else (1 if isinstance(kernel_shape, int) else len(kernel_shape))
        kernel = per_axis(op, "kernel_shape", kernel_shape, n, 1)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{op}: `{name}` must be an integer >= 1; got {value!r}.")
        if in_channels % group or out_channels % group:
            raise ValueError(
                f"{op}: `group` (={group!r}) must divide in_channels (={in_channels}) and "
                f"out_channels (={out_channels})."
            )
        per_group = out_channels // group
        fan_in = per_group * math.prod(kernel)
        bound = 1.0 / math.sqrt(fan_in)
        shape = (in_channels, per_group, *kernel) if data_format.upper() == "NCHW" else (
            in_channels, *kernel, per_group)
        wkey, bkey = jax.random.split(key)
        weight = jax.random.uniform(wkey, shape, dtype, -bound, bound)
        bias = jax.random.uniform(bkey, (out_channels,), dtype, -bound, bound) if use_bias else None
        return cls(
            weight=weight, bias=bias, kernel_shape=kernel,
            strides=tuple(per_axis(op, "strides", strides, n, 1)), pads=pads,
            dilations=tuple(per_axis(op, "dilations", dilations, n, 1)), group=group, padding=padding,
            output_padding=None if output_padding is None else tuple(output_padding),
            output_shape=None if output_shape is None else tuple(output_shape),
            data_format=data_format, algorithm=algorithm,
        )

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Apply to a batch ``x`` (``(N, C_in, *spatial)`` or ``(N, *spatial, C_in)``)."""
        inputs = [x, self.weight] if self.bias is None else [x, self.weight, self.bias]
        return conv_transpose(
            inputs, kernel_shape=self.kernel_shape, strides=self.strides, pads=self.pads,
            dilations=self.dilations, group=self.group, padding=self.padding,
            output_padding=self.output_padding, output_shape=self.output_shape,
            data_format=self.data_format, algorithm=self.algorithm,
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
