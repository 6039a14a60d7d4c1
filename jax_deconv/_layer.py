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
from jax_deconv._names import redirect_pytorch_names
from jax_deconv._plan import _as_int, _as_sequence, _choice, _is_int, _output_sizes, per_axis, resolve_pads
from jax_deconv._types import ALGORITHMS, DATA_FORMATS, PADDINGS, Algorithm, DataFormat, Padding


@dataclasses.dataclass(frozen=True, repr=False)
class ConvTranspose:
    """An N-d transposed convolution layer with Dragon's semantics (see :func:`conv_transpose`).

    ``weight``: ``(C_in, C_out/group, *kernel)`` for NCHW, ``(C_in, *kernel, C_out/group)`` for
    NHWC; ``bias``: ``(C_out,)`` or None. Build one with :meth:`init`, or directly around
    existing arrays (``ConvTranspose3d(weight=w, bias=b, kernel_shape=4, strides=2, pads=1)``):
    either way the configuration is checked and stored normalised when the layer is made.

    Examples:
      >>> import jax
      >>> from jax_deconv import ConvTranspose3d
      >>> layer = ConvTranspose3d.init(jax.random.key(0), 8, 4, kernel_shape=4, strides=2, pads=1)
      >>> layer(jax.numpy.ones((2, 8, 5, 5, 5))).shape
      (2, 4, 10, 10, 10)
      >>> jax.tree.map(lambda p: p.shape, jax.tree.leaves(layer))
      [(8, 4, 4, 4, 4), (4,)]
      >>> layer  # shapes and the configuration that differs from the defaults
      ConvTranspose3d(weight=float32[8,4,4,4,4], bias=float32[4], kernel_shape=(4, 4, 4), strides=(2, 2, 2), \
pads=(1, 1, 1, 1, 1, 1))
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

    def __post_init__(self) -> None:
        # Runs when a layer is made (init or by hand), not when JAX rebuilds the pytree (see
        # _register), whose leaves may be tracers, stacked arrays or anything else.
        config = _normalised(type(self), {f.name: getattr(self, f.name) for f in _CONFIG})
        for name, value in config.items():
            object.__setattr__(self, name, value)
        _check_leaves(self)

    def __repr__(self) -> str:
        fields = [f"weight={_leaf(self.weight)}", f"bias={_leaf(self.bias)}"]
        for f in _CONFIG:
            value = getattr(self, f.name)
            if f.name == "kernel_shape" or value != _default(f, len(self.kernel_shape)):
                fields.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(fields)})"

    @classmethod
    @redirect_pytorch_names
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
        config = _normalised(cls, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, group=group,
            padding=padding, output_padding=output_padding, output_shape=output_shape, data_format=data_format,
            algorithm=algorithm, max_buffer_bytes=max_buffer_bytes,
        ))
        kernel, group = config["kernel_shape"], config["group"]
        in_channels = _as_int(op, "in_channels", in_channels, 1)
        out_channels = _as_int(op, "out_channels", out_channels, 1)
        if in_channels % group or out_channels % group:
            raise ValueError(
                f"{op}: `group` (={group!r}) must divide in_channels (={in_channels}) and "
                f"out_channels (={out_channels})."
            )
        per_group = out_channels // group
        fan_in = per_group * math.prod(kernel)
        bound = 1.0 / math.sqrt(fan_in)
        nchw = config["data_format"] == "NCHW"
        shape = (in_channels, per_group, *kernel) if nchw else (in_channels, *kernel, per_group)
        wkey, bkey = jax.random.split(key)
        weight = jax.random.uniform(wkey, shape, dtype, -bound, bound)
        bias = jax.random.uniform(bkey, (out_channels,), dtype, -bound, bound) if use_bias else None
        return cls(weight=weight, bias=bias, **config)

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


_CONFIG = [f for f in dataclasses.fields(ConvTranspose) if f.name not in ("weight", "bias")]


def _normalised(cls: type[ConvTranspose], config: dict[str, Any]) -> dict[str, Any]:
    """The configuration fields checked (messages name the class) and normalised: tuples of
    Python ints, ``pads`` as all begins then all ends, upper-case strings."""
    op, n = cls.__name__, cls.ndim
    kernel_shape = config["kernel_shape"]
    if n is None:  # the generic layer: as many spatial axes as kernel_shape has entries
        allowed = "an int or a sequence of ints >= 1"
        n = 1 if _is_int(kernel_shape) else len(_as_sequence(op, "kernel_shape", kernel_shape, allowed))
    padding = cast(Padding, _choice(op, "padding", config["padding"], PADDINGS))
    algorithm = config["algorithm"]
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{op}: `algorithm` must be one of {ALGORITHMS}; got {algorithm!r}.")
    begins, ends = resolve_pads(op, config["pads"], n)
    output_shape = _output_sizes(op, "output_shape", config["output_shape"], n, 1)
    if output_shape is None and padding != "VALID":
        raise ValueError(f"{op}: `output_shape` is required for padding={padding!r}; got None.")
    return dict(
        kernel_shape=per_axis(op, "kernel_shape", kernel_shape, n, 1),
        strides=per_axis(op, "strides", config["strides"], n, 1),
        pads=begins + ends,
        dilations=per_axis(op, "dilations", config["dilations"], n, 1),
        group=_as_int(op, "group", config["group"], 1),
        padding=padding,
        output_padding=_output_sizes(op, "output_padding", config["output_padding"], n, 0),
        output_shape=output_shape,
        data_format=cast(DataFormat, _choice(op, "data_format", config["data_format"], DATA_FORMATS)),
        algorithm=algorithm,
        max_buffer_bytes=check_max_buffer_bytes(op, config["max_buffer_bytes"]),
    )


def _check_leaves(layer: ConvTranspose) -> None:
    """``weight`` and ``bias`` against the configuration, where they are arrays (JAX rebuilds
    layers with other leaves too: tracers are checked, ``None`` or axis numbers are not)."""
    op, kernel, group = type(layer).__name__, layer.kernel_shape, layer.group
    w, b = layer.weight, layer.bias
    if not isinstance(getattr(w, "shape", None), tuple):
        return
    nchw = layer.data_format == "NCHW"
    layout = "(C_in, C_out/group, *kernel)" if nchw else "(C_in, *kernel, C_out/group)"
    w_kernel = tuple(w.shape[2:]) if nchw else tuple(w.shape[1:-1])
    if len(w.shape) != len(kernel) + 2 or w_kernel != kernel or w.shape[0] % group:
        raise ValueError(
            f"{op}: `weight` must have shape {layout} with kernel {kernel} and C_in divisible by `group` "
            f"(={group}); got shape {tuple(w.shape)}."
        )
    out_channels = group * w.shape[1 if nchw else -1]
    b_shape = getattr(b, "shape", None)
    if isinstance(b_shape, tuple) and b_shape != (out_channels,):
        raise ValueError(f"{op}: `bias` must have shape (C_out,) = ({out_channels},); got shape {b_shape}.")


def _leaf(value: Any) -> str:
    """A leaf as ``dtype[shape]`` (the repr of anything that is not an array)."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if isinstance(shape, tuple) and dtype is not None:
        return f"{jnp.dtype(dtype).name}[{','.join(map(str, shape))}]"
    return repr(value)


def _default(field: dataclasses.Field, n: int) -> Any:
    """A field's default as :func:`_normalised` stores it (``n`` spatial axes)."""
    value = field.default
    if field.name in ("strides", "dilations"):
        return (value,) * n
    if field.name == "pads":
        return (value,) * (2 * n)
    return value


def _fixed(name: str, n: int) -> type[ConvTranspose]:
    doc = (f"{n}-D :class:`ConvTranspose`: ``x`` has {n} spatial axes and an int ``kernel_shape``, "
           f"``strides`` or ``dilations`` is used for each of them. Build one with :meth:`init`.")
    cls = type(name, (ConvTranspose,), {"ndim": n, "__doc__": doc})
    cls = dataclasses.dataclass(frozen=True, repr=False)(cls)
    return _register(cls)


def _register(cls: type) -> type:
    """A pytree: ``weight`` and ``bias`` are the leaves, the configuration is static. JAX
    rebuilds a layer without ``__post_init__``: its leaves need not fit the configuration
    (a stack of layers under ``vmap`` or ``scan`` has weights with a leading axis)."""
    names = [f.name for f in _CONFIG]

    def flatten(layer):
        children = [(jax.tree_util.GetAttrKey(name), getattr(layer, name)) for name in ("weight", "bias")]
        return children, tuple(getattr(layer, name) for name in names)

    def unflatten(config, children):
        layer = object.__new__(cls)
        for name, value in (*zip(("weight", "bias"), children), *zip(names, config)):
            object.__setattr__(layer, name, value)
        return layer

    jax.tree_util.register_pytree_with_keys(cls, flatten, unflatten)
    cls.__init__ = redirect_pytorch_names(cls.__init__)  # (the dataclass's, made for each class)
    return cls


ConvTranspose = _register(ConvTranspose)
ConvTranspose1d = _fixed("ConvTranspose1d", 1)
ConvTranspose2d = _fixed("ConvTranspose2d", 2)
ConvTranspose3d = _fixed("ConvTranspose3d", 3)
