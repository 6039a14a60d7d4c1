"""``jax_deconv.flax.nnx``: ``Conv`` (on the native CPU kernels) and ``ConvTranspose`` (on
jax_deconv's lowering), subclasses of Flax's own modules.

``jax_deconv.flax.nnx.ConvTranspose``: ``flax.nnx.ConvTranspose`` on jax_deconv's lowering.

A subclass of Flax's own module: the constructor (argument order, defaults, keyword-only
arguments), the ``kernel``/``bias`` parameters, their shapes, initialisers and metadata are
Flax's, so the same ``rngs`` give the same state and existing checkpoints load unchanged.
One extra keyword, ``feature_group_count`` (default 1). Switching is one import::

    from jax_deconv.flax import nnx as dnnx
    layer = dnnx.ConvTranspose(32, 16, (4, 4, 4), (2, 2, 2), rngs=nnx.Rngs(0))
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from flax.nnx.nn.linear import default_kernel_init

from jax_deconv._lax_conv import conv_general_dilated as dlax_conv_general_dilated
from jax_deconv.flax._channels_last import channels_last_transpose

__all__ = ["Conv", "ConvTranspose"]


class Conv(nnx.Conv):
    """``flax.nnx.Conv`` computed by jax_deconv's native CPU kernels where they take the call.

    Flax's own module with its ``conv_general_dilated`` argument defaulting to
    :func:`jax_deconv.lax.conv_general_dilated` (which passes to ``jax.lax`` whatever the kernels
    do not take); the constructor, state and results are Flax's.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jax_deconv.flax import nnx as dnnx
      >>> layer = dnnx.Conv(4, 8, kernel_size=(3, 3, 3), rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((1, 6, 6, 6, 4))).shape
      (1, 6, 6, 6, 8)
    """

    def __init__(self, *args: Any, conv_general_dilated: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, conv_general_dilated=conv_general_dilated or dlax_conv_general_dilated, **kwargs)


class ConvTranspose(nnx.ConvTranspose):
    """``flax.nnx.ConvTranspose`` computed by jax_deconv (same constructor, same state).

    Shapes and padding as :class:`jax_deconv.flax.linen.ConvTranspose`; with
    ``feature_group_count=G`` the kernel is ``(*kernel_size, in_features / G, out_features)``
    (``(*kernel_size, out_features / G, in_features)`` with ``transpose_kernel=True``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jax_deconv.flax import nnx as dnnx
      >>> layer = dnnx.ConvTranspose(3, 4, kernel_size=(3,), padding="VALID", rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer(jnp.ones((1, 8, 3))).shape
      ((3, 3, 4), (1, 10, 4))
    """

    def __init__(self, in_features: int, out_features: int, *args: Any, feature_group_count: int = 1, **kwargs: Any):
        groups = feature_group_count
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or in_features % groups or (
            out_features % groups
        ):
            raise ValueError(
                f"ConvTranspose: `feature_group_count` (={groups!r}) must be an int >= 1 dividing `in_features` "
                f"(={in_features}) and `out_features` (={out_features})."
            )
        if groups > 1:  # Flax's constructor builds the ungrouped kernel shape: initialise the grouped one
            init = kwargs.get("kernel_init", default_kernel_init)

            def grouped_init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
                # (*K, in, out) -> (*K, in/G, out); transposed (*K, out, in) -> (*K, out/G, in)
                return init(key, (*shape[:-2], shape[-2] // groups, shape[-1]), dtype)

            kwargs["kernel_init"] = grouped_init
        super().__init__(in_features, out_features, *args, **kwargs)
        self.feature_group_count = groups
        self.kernel_shape = tuple(self.kernel.shape)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.mask is not None and self.mask.shape != self.kernel_shape:
            raise ValueError(
                f"ConvTranspose: `mask` must have the kernel's shape {self.kernel_shape}; got {self.mask.shape}."
            )
        kernel = self.kernel[...]
        if self.mask is not None:
            kernel = kernel * self.mask
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return channels_last_transpose(
            "ConvTranspose", inputs, kernel, bias, kernel_size=self.kernel_size, strides=self.strides,
            padding=self.padding, kernel_dilation=self.kernel_dilation, transpose_kernel=self.transpose_kernel,
            precision=self.precision, preferred_element_type=self.preferred_element_type,
            feature_group_count=self.feature_group_count,
        )
