"""``jax_deconv.flax.linen``: ``Conv`` (on the native CPU kernels) and ``ConvTranspose`` (on
jax_deconv's lowering), subclasses of Flax's own modules.

``jax_deconv.flax.linen.ConvTranspose``: ``flax.linen.ConvTranspose`` on jax_deconv's lowering.

A subclass of Flax's own module: every attribute, its order and default, the parameter
names (``kernel``, ``bias``), shapes and initialisers are Flax's, so ``init`` with the same
key gives the same variables and existing checkpoints load unchanged. One extra attribute,
``feature_group_count`` (default 1). Switching is one import::

    from jax_deconv.flax import linen as dnn
    layer = dnn.ConvTranspose(features=16, kernel_size=(4, 4, 4), strides=(2, 2, 2))
"""

from __future__ import annotations

from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_deconv._lax_conv import conv_general_dilated as dlax_conv_general_dilated
from jax_deconv._native.bias import add_bias
from jax_deconv.flax._channels_last import channels_last_transpose

__all__ = ["Conv", "ConvTranspose"]


class Conv(nn.Conv):
    """``flax.linen.Conv`` computed by jax_deconv's native CPU kernels where they take the call.

    Flax's own module with its ``conv_general_dilated`` attribute defaulting to
    :func:`jax_deconv.lax.conv_general_dilated` (which passes to ``jax.lax`` whatever the kernels
    do not take: ``input_dilation``, GPU/TPU...): every other attribute, the variables and the
    results are Flax's.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax_deconv.flax import linen as dnn
      >>> layer = dnn.Conv(features=8, kernel_size=(3, 3, 3))
      >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 6, 6, 6, 4)))
      >>> layer.apply(variables, jnp.ones((1, 6, 6, 6, 4))).shape
      (1, 6, 6, 6, 8)
    """

    conv_general_dilated: Any = staticmethod(dlax_conv_general_dilated)

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Flax's ``Conv.__call__``; with a shared bias, the bias added by jax_deconv so that its
        gradient is summed by the native kernels in float32 (Flax's ``y += bias`` has XLA:CPU sum a
        bfloat16 gradient in bfloat16, and in one scalar loop per channel)."""
        if not self.use_bias or not self.shared_weights or self.mask is not None:
            return super().__call__(inputs)
        # the same module without its bias, in this module's scope: the same variables, in order
        unbiased = self.clone(parent=self, use_bias=False, name="unbiased")
        nn.share_scope(self, unbiased)
        y = unbiased(inputs)
        kernel = self.get_variable("params", "kernel")
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        _, _, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return add_bias(y, cast(jax.Array, bias), -1, jnp.result_type(y, cast(jax.Array, bias)))


class ConvTranspose(nn.ConvTranspose):
    """``flax.linen.ConvTranspose`` computed by jax_deconv (same attributes, same variables).

    Inputs are channels-last, ``(*batch, S1..Sn, C_in)`` with any number of batch axes (none
    included); the kernel is ``(*kernel_size, C_in / feature_group_count, features)``, or
    ``(*kernel_size, features / feature_group_count, C_in)`` with ``transpose_kernel=True``.
    Padding ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``, an int or per-axis ints or pairs, as in
    Flax (pairs pad the stride-dilated input; see :func:`jax_deconv.lax.conv_transpose`).

    Attributes:
      feature_group_count: channel groups (jax_deconv's addition; Flax's ConvTranspose has
        none). Must divide ``C_in`` and ``features``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax_deconv.flax import linen as dnn
      >>> layer = dnn.ConvTranspose(features=4, kernel_size=(3,), padding="VALID")
      >>> y, variables = layer.init_with_output(jax.random.key(0), jnp.ones((1, 8, 3)))
      >>> y.shape, jax.tree.map(jnp.shape, variables)
      ((1, 10, 4), {'params': {'bias': (4,), 'kernel': (3, 3, 4)}})
    """

    feature_group_count: int = 1

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        in_features = inputs.shape[-1]
        groups = self.feature_group_count
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or in_features % groups or (
            self.features % groups
        ):
            raise ValueError(
                f"ConvTranspose: `feature_group_count` (={groups!r}) must be an int >= 1 dividing the input "
                f"features (={in_features}) and `features` (={self.features})."
            )
        if self.transpose_kernel:
            kernel_shape = (*kernel_size, self.features // groups, in_features)
        else:
            kernel_shape = (*kernel_size, in_features // groups, self.features)
        if self.mask is not None and self.mask.shape != kernel_shape:
            raise ValueError(
                f"ConvTranspose: `mask` must have the kernel's shape {kernel_shape}; got {self.mask.shape}."
            )
        kernel: jax.Array = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        if self.mask is not None:
            kernel = kernel * self.mask
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        promoted_inputs, promoted, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return channels_last_transpose(
            "ConvTranspose", cast(jax.Array, promoted_inputs), cast(jax.Array, promoted), bias,
            kernel_size=kernel_size, strides=self.strides,
            padding=self.padding, kernel_dilation=self.kernel_dilation, transpose_kernel=self.transpose_kernel,
            precision=self.precision, preferred_element_type=self.preferred_element_type,
            feature_group_count=groups,
        )
