"""Equinox drop-ins: ``Conv`` and ``Conv1d/2d/3d`` on the native CPU kernels, ``ConvTranspose``
and ``ConvTranspose1d/2d/3d`` on jax_deconv's lowering.

Each subclasses Equinox's own class of the same name: the constructor (argument order and
defaults), the fields, ``weight`` ``(C_out, C_in/groups, *kernel)`` and ``bias``
``(C_out, 1, ..., 1)``, their initialisation and the pytree structure are Equinox's, so the
same key gives the same layer and ``eqx.tree_at`` paths and serialised leaves carry over.
Only ``__call__`` is jax_deconv's. Switching is one import::

    from jax_deconv import equinox as deqx
    layer = deqx.ConvTranspose3d(32, 16, 4, stride=2, padding=1, key=key)   # was eqx.nn.ConvTranspose3d

Equinox is imported by this module alone (``pip install 'jax_deconv[equinox]'``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax as _lax

from jax_deconv._lax_conv import conv_general_dilated
from jax_deconv._native.bias import add_bias
from jax_deconv._plan import equinox_crops
from jax_deconv.lax import transpose_with_crops

__all__ = ["Conv", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d"]


class Conv(eqx.nn.Conv):
    """``equinox.nn.Conv`` computed by jax_deconv's native CPU kernels where they take the call
    (:func:`jax_deconv.lax.conv_general_dilated`; same constructor, fields and results).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax_deconv import equinox as deqx
      >>> layer = deqx.Conv(3, 4, 8, kernel_size=3, padding=1, key=jax.random.key(0))
      >>> layer(jnp.ones((4, 6, 6, 6))).shape
      (8, 6, 6, 6)
    """

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Apply to one example ``x`` of shape ``(C_in, S1..Sn)``; ``key`` is ignored."""
        del key
        n = self.num_spatial_dims
        if x.ndim != n + 1:
            raise ValueError(f"Conv: the input must have rank {n + 1} (C_in, *spatial); got shape {x.shape}.")
        padding = self.padding
        if self.padding_mode != "ZEROS":
            x, padding = self._nonzero_pad(x), "VALID"
        y = conv_general_dilated(x[None], self.weight, self.stride, padding, rhs_dilation=self.dilation,
                                 feature_group_count=self.groups)[0]
        if not self.use_bias or self.bias is None:
            return y
        # Equinox's y + bias (bias (C_out, 1.., 1)), its gradient summed by the native kernels
        return add_bias(y, self.bias.reshape(-1), 0, jnp.result_type(y, self.bias))


class Conv1d(Conv, eqx.nn.Conv1d):
    """``equinox.nn.Conv1d`` computed by jax_deconv (see :class:`Conv`)."""


class Conv2d(Conv, eqx.nn.Conv2d):
    """``equinox.nn.Conv2d`` computed by jax_deconv (see :class:`Conv`)."""


class Conv3d(Conv, eqx.nn.Conv3d):
    """``equinox.nn.Conv3d`` computed by jax_deconv (see :class:`Conv`)."""


class ConvTranspose(eqx.nn.ConvTranspose):
    """``equinox.nn.ConvTranspose`` computed by jax_deconv (same constructor, same fields).

    Takes one example, ``(C_in, S1..Sn)``, and returns ``(C_out, O1..On)`` with Equinox's
    sizes: ``padding`` is the forward convolution's (PyTorch's rule, ``'SAME'``,
    ``'SAME_LOWER'``, ``'VALID'``, ints or pairs), ``output_padding < stride``;
    ``padding_mode='CIRCULAR'`` with ``'SAME'``/``'SAME_LOWER'`` as in Equinox.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax_deconv import equinox as deqx
      >>> layer = deqx.ConvTranspose(2, 3, 1, kernel_size=4, stride=2, padding=1, key=jax.random.key(0))
      >>> layer.weight.shape, layer(jnp.ones((3, 5, 5))).shape
      ((1, 3, 4, 4), (1, 10, 10))
    """

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Apply to one example ``x`` of shape ``(C_in, S1..Sn)``; ``key`` is ignored."""
        del key
        n = self.num_spatial_dims
        if x.ndim != n + 1:
            raise ValueError(f"ConvTranspose: the input must have rank {n + 1} (C_in, *spatial); got shape {x.shape}.")
        kernel_eff = [d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation)]
        per_axis_padding = [self.padding] * n if isinstance(self.padding, str) else list(self.padding)
        crops = [
            equinox_crops(p, a, k, s)
            for p, a, k, s in zip(per_axis_padding, self.output_padding, kernel_eff, self.stride)
        ]
        if self.padding_mode == "CIRCULAR":  # wrap whole strides of padding around the input
            pads = [(k - 1 - b, k - 1 - e) for k, (b, e) in zip(kernel_eff, crops)]
            x = jnp.pad(x, [(0, 0)] + [(lo // s, hi // s) for (lo, hi), s in zip(pads, self.stride)], mode="wrap")
            crops = [(k - 1 - lo % s, k - 1 - hi % s) for k, (lo, hi), s in zip(kernel_eff, pads, self.stride)]
        dn = _lax.ConvDimensionNumbers(*(tuple(range(n + 2)),) * 3)  # NC..., OI..., NC...
        bias = None if self.bias is None else self.bias.reshape(-1)
        y = transpose_with_crops(
            "ConvTranspose", x[None], self.weight, bias, dn=dn, strides=self.stride, dilations=self.dilation,
            crops=crops, transpose_kernel=False, groups=self.groups, precision=None, preferred_element_type=None,
            algorithm="auto",
        )
        return y[0]


class ConvTranspose1d(ConvTranspose, eqx.nn.ConvTranspose1d):
    """``equinox.nn.ConvTranspose1d`` computed by jax_deconv (Equinox's constructor and fields)."""


class ConvTranspose2d(ConvTranspose, eqx.nn.ConvTranspose2d):
    """``equinox.nn.ConvTranspose2d`` computed by jax_deconv (Equinox's constructor and fields)."""


class ConvTranspose3d(ConvTranspose, eqx.nn.ConvTranspose3d):
    """``equinox.nn.ConvTranspose3d`` computed by jax_deconv (Equinox's constructor and fields)."""
