"""Spatially sharded transposed convolution with an explicit halo exchange (for ``jax.shard_map``).

A volume too large for one device is split along one spatial axis into ``P`` equal blocks of
``S_loc`` positions, one per device of a mesh axis. When the output has ``O = s * S`` positions
along that axis (every "same"-sized decoder layer: ``k=2s``/``pads=s/2``, ``k=s``, ``k=3 s=2
pads=1 output_padding=1``...), output block ``p`` is ``s * S_loc`` positions long and needs
input positions ``[p*S_loc - h_left, (p+1)*S_loc + h_right)`` only::

    h_left  = max(0, floor((d*(K-1) - pad_begin) / s))     taps reaching back
    h_right = max(0, ceil(pad_begin / s))                   the front crop reaching forward

Each device receives ``h_left`` slices from its left neighbour and ``h_right`` from its right
one (two ``lax.ppermute``; the outermost devices receive zeros, which contribute nothing) and
runs :func:`~jax_deconv.conv_transpose` on its window with the crop moved by ``s * h_left``.
Autodiff transposes each ``ppermute`` into the opposite one, so gradients exchange halos too,
and the weight gradient is summed over devices by ``shard_map``. Memory per device is its
block plus the halos; nothing is gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax import lax

from jax_deconv._conv_transpose import _unpack_inputs, conv_transpose
from jax_deconv._plan import Plan, _as_int, make_plan

_OP = "conv_transpose_halo"


def halo_sizes(plan: Plan, axis: int) -> tuple[int, int]:
    """``(h_left, h_right)``: input slices each device needs from its neighbours along spatial ``axis``.

    Examples:
      >>> from jax_deconv import conv_transpose_plan, halo_sizes
      >>> plan = conv_transpose_plan((1, 8, 64, 64, 64), (8, 4, 4, 4, 4), kernel_shape=4, strides=2, pads=1)
      >>> halo_sizes(plan, axis=0)            # k=4, s=2, pads=1: one slice from each side
      (1, 1)
    """
    s, d, k, begin = plan.strides[axis], plan.dilations[axis], plan.kernel[axis], plan.pad_begin[axis]
    return max(0, (d * (k - 1) - begin) // s), max(0, -(-begin // s))


def _exchange(x: jax.Array, array_axis: int, axis_name: Any, devices: int, left: int, right: int) -> jax.Array:
    parts = []
    if left:
        tail = lax.slice_in_dim(x, x.shape[array_axis] - left, x.shape[array_axis], axis=array_axis)
        parts.append(lax.ppermute(tail, axis_name, [(i, i + 1) for i in range(devices - 1)]))
    parts.append(x)
    if right:
        head = lax.slice_in_dim(x, 0, right, axis=array_axis)
        parts.append(lax.ppermute(head, axis_name, [(i + 1, i) for i in range(devices - 1)]))
    return lax.concatenate(parts, array_axis) if len(parts) > 1 else x


def conv_transpose_halo(
    inputs: Sequence[jax.typing.ArrayLike],
    *,
    axis_name: Any,
    axis: int = 0,
    kernel_shape: int | Sequence[int] = 3,
    strides: int | Sequence[int] = 1,
    pads: int | Sequence[int] = 0,
    dilations: int | Sequence[int] = 1,
    group: int = 1,
    padding: str = "VALID",
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    data_format: str = "NCHW",
    precision: Any = None,
    preferred_element_type: Any = None,
    algorithm: str = "auto",
) -> jax.Array:
    """:func:`~jax_deconv.conv_transpose` of a volume split along spatial ``axis`` over ``axis_name``.

    Call it inside ``jax.shard_map``: ``x`` is this device's block, ``(N, C_in, ..., S/P, ...)``
    for NCHW (spatial ``axis`` 0 is the first spatial axis), the weight and bias are
    replicated. The arguments are Dragon's and describe the *whole* volume; ``output_shape``
    (if given) is the whole output's. The result is this device's block of the whole result,
    ``s * S/P`` positions along ``axis``. Requires the whole output to have ``s * S`` positions
    along ``axis`` and both halos to fit in one neighbour's block; otherwise ``ValueError``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from functools import partial
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> from jax_deconv import conv3d_transpose, conv_transpose_halo
      >>> mesh = jax.make_mesh((1,), ("z",))          # 8 devices: jax.make_mesh((8,), ("z",))
      >>> split = P(None, None, "z")                  # NCDHW, depth split over "z"
      >>> layer = partial(conv_transpose_halo, axis_name="z", kernel_shape=4, strides=2, pads=1)
      >>> f = jax.jit(jax.shard_map(layer, mesh=mesh, in_specs=([split, P()],), out_specs=split))
      >>> x = jax.device_put(jnp.ones((1, 8, 16, 8, 8)), NamedSharding(mesh, split))
      >>> w = jnp.ones((8, 4, 4, 4, 4))
      >>> y = f([x, w])
      >>> y.shape, bool(jnp.allclose(y, conv3d_transpose([x, w], kernel_shape=4, strides=2, pads=1)))
      ((1, 4, 32, 16, 16), True)
    """
    x, w, b = _unpack_inputs(_OP, inputs)
    devices = lax.axis_size(axis_name) if hasattr(lax, "axis_size") else lax.psum(1, axis_name)
    ndim = x.ndim - 2
    axis = _as_int(_OP, "axis", axis, 0)
    if axis >= ndim:
        raise ValueError(f"{_OP}: `axis` must be a spatial axis index in [0, {ndim}); got {axis}.")
    nchw = str(data_format).upper() == "NCHW"
    array_axis = (2 if nchw else 1) + axis
    whole = list(x.shape)
    whole[array_axis] *= devices
    plan = make_plan(
        whole, w.shape, None if b is None else b.shape, kernel_shape=kernel_shape, strides=strides, pads=pads,
        dilations=dilations, group=group, padding=padding, output_padding=output_padding,
        output_shape=output_shape, data_format=data_format, op=_OP,
    )
    s, local = plan.strides[axis], x.shape[array_axis]
    if plan.out_spatial[axis] != s * plan.in_spatial[axis]:
        raise ValueError(
            f"{_OP}: the output must have stride * input = {s} * {plan.in_spatial[axis]} positions along the "
            f"sharded spatial axis {axis}; these arguments give {plan.out_spatial[axis]}."
        )
    left, right = halo_sizes(plan, axis)
    if max(left, right) > local:
        raise ValueError(
            f"{_OP}: the halos ({left} slices from the left, {right} from the right) must fit in one device's "
            f"block of {local} slices along spatial axis {axis}; use fewer devices or a larger volume."
        )
    window = _exchange(x, array_axis, axis_name, devices, left, right)
    begins = list(plan.pad_begin)
    ends = [max(e, 0) for e in plan.pad_end]
    tails = [max(-e, 0) for e in plan.pad_end]
    begins[axis] += s * left
    full = s * (local + left + right - 1) + plan.dilations[axis] * (plan.kernel[axis] - 1) + 1
    end = full - begins[axis] - s * local
    ends[axis], tails[axis] = max(end, 0), max(-end, 0)
    local_inputs = [window, w] if b is None else [window, w, b]
    return conv_transpose(
        local_inputs, kernel_shape=plan.kernel, strides=plan.strides, pads=tuple(begins) + tuple(ends),
        dilations=plan.dilations, group=plan.group, padding="VALID", output_padding=tuple(tails),
        data_format=plan.data_format, precision=precision, preferred_element_type=preferred_element_type,
        algorithm=algorithm,
    )
