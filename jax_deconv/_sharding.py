"""Sharded inputs: explicit-sharding dispatch and the spatial halo exchange.

Two ways a volume is spread over devices, both here:

* **Sharding in types** (``jax.sharding.use_mesh`` / explicit axes): :func:`under_explicit_sharding`
  runs the lowering on inputs whose types carry a sharding (called by every public function).
* **``jax.shard_map`` with a split spatial axis**: :func:`conv_transpose_halo`, below.

Spatially sharded transposed convolution with an explicit halo exchange (for ``jax.shard_map``).

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

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
from jax import lax

from jax_deconv._inputs import check_preferred, promote, static_sizes, unpack_inputs
from jax_deconv._lowering import bind
from jax_deconv._names import redirect_pytorch_names
from jax_deconv._plan import Plan, _as_int, full_length, make_plan
from jax_deconv._types import Algorithm, DataFormat, Padding


def under_explicit_sharding(apply, plan: Plan, x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """Run ``apply`` on inputs that may be sharded *in their types* (JAX's explicit sharding).

    The lowering pads, reshapes and transposes, which explicit sharding cannot type, so the
    call runs under ``jax.shard_map`` over the whole mesh, each device on its own block:

    * the batch of ``x`` sharded: each device runs its own examples (no communication);
    * besides, one spatial axis sharded where the halo rule holds (:func:`halo_fits`: the
      output is ``stride * input`` long along it and each halo fits in one block): each device
      runs its block with the halo exchange of :func:`conv_transpose_halo`; the output keeps
      that spatial sharding;
    * any other spatial or channel sharding, and a sharded weight or bias, are gathered first
      (each device holds its examples' whole volume); the output is then resharded to ``x``'s
      spatial sharding where the output sizes divide evenly.

    XLA's partitioner is not used for a sharded spatial axis: on a mesh with an axis that ``x``
    does not use, it sums a convolution's weight gradient over that axis too (see
    :data:`PARTITIONER_BUG`). No explicit sharding: ``apply``.
    """
    if not hasattr(jax, "typeof"):  # a JAX without sharding in types
        return apply(x, w, b, plan=plan)
    arrays = [a for a in (x, w, b) if a is not None]
    shardings = [jax.typeof(a).sharding for a in arrays]
    if not any(_spec_names(sharding.spec) for sharding in shardings):
        return apply(x, w, b, plan=plan)
    mesh = next(sharding.mesh for sharding in shardings if _spec_names(sharding.spec))
    P = jax.sharding.PartitionSpec
    x_spec = tuple(shardings[0].spec) + (None,) * (x.ndim - len(shardings[0].spec))
    first = 2 if plan.data_format == "NCHW" else 1
    spatial = {first + i: x_spec[first + i] for i in range(plan.ndim) if _spec_names([x_spec[first + i]])}
    batch_devices = _size(mesh, x_spec[0])
    halo = None
    if len(spatial) == 1:
        array_axis, entry = next(iter(spatial.items()))
        devices = _size(mesh, entry)
        if halo_fits(plan, array_axis - first, devices) is None:
            halo = (array_axis, entry, devices)
    # What each device's block is split by: the batch, and the halo axis where it applies.
    block = [None] * x.ndim
    block[0] = x_spec[0]
    if halo is not None:
        block[halo[0]] = halo[1]
    replicated = jax.sharding.NamedSharding(mesh, P())
    if tuple(block) != x_spec:
        x = jax.sharding.reshard(x, jax.sharding.NamedSharding(mesh, P(*block)))
    w = jax.sharding.reshard(w, replicated) if _spec_names(jax.typeof(w).sharding.spec) else w
    if b is not None and _spec_names(jax.typeof(b).sharding.spec):
        b = jax.sharding.reshard(b, replicated)
    local_plan = dataclasses.replace(plan, batch=plan.batch // batch_devices)

    def local(x, w, *b):
        bias = b[0] if b else None
        if halo is None:
            return apply(x, w, bias, plan=local_plan)
        array_axis, entry, devices = halo
        return _halo_apply(apply, local_plan, x, w, bias, array_axis - first, array_axis, entry, devices)

    args = (x, w) if b is None else (x, w, b)
    y = jax.shard_map(
        local, mesh=mesh,
        in_specs=(P(*block), P(), *(P() for _ in args[2:])), out_specs=P(*block),
    )(*args)
    out = list(block)
    for i, entry in spatial.items():  # the output keeps x's spatial sharding where it divides
        if out[i] is None and plan.out_shape[i] % _size(mesh, entry) == 0:
            out[i] = entry
    if out != block:
        y = jax.sharding.reshard(y, jax.sharding.NamedSharding(mesh, P(*out)))
    return y


PARTITIONER_BUG = """XLA's SPMD partitioner (jax/jaxlib 0.10.2) gives a wrong weight gradient for a convolution
whose input is sharded along a spatial axis over some, not all, axes of the mesh: it all-reduces
the per-device filter gradients over every device, so the result is multiplied by the size of the
mesh axes the input does not use. Reproducer, without jax_deconv (8 simulated CPU devices)::

    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Auto,) * 2)
    x = jax.device_put(np.ones((4, 4, 8, 4), np.float32), NamedSharding(mesh, P(None, None, "b")))
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)])
    jax.jit(jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2)))(np.ones((4, 4, 3, 3), np.float32), x)
    # == 2 x the gradient of the unsharded x (the all-reduce's replica_groups are all 8 devices)

``x`` must be an argument of the jitted function: closed over, it is a constant whose sharding
the partitioner does not see, and the gradient is right. Explicit sharding and ``auto_axes``
inherit it. Explicitly sharded calls therefore never reach the partitioner here (see
:func:`under_explicit_sharding`); under ``AxisType.Auto`` meshes, where the partitioner places
everything, the native kernels split along the batch only and gather any other split (exact);
for the XLA algorithms prefer ``algorithm='gemm'`` (dots are partitioned correctly) or shard the
batch, or use :func:`conv_transpose_halo`. ``tests/multidevice_cases.py`` checks that this
reproducer still reproduces on jax 0.10.2."""


def _size(mesh: Any, entry: Any) -> int:
    return math.prod(mesh.shape[name] for name in _spec_names([entry]))


def _spec_names(spec: Any) -> list[str]:
    return [name for entry in spec for name in (entry if isinstance(entry, tuple) else (entry,)) if name is not None]


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


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@redirect_pytorch_names
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
    padding: Padding = "VALID",
    output_padding: int | Sequence[int] | None = None,
    output_shape: int | Sequence[int] | None = None,
    data_format: DataFormat = "NCHW",
    precision: lax.PrecisionLike = None,
    preferred_element_type: Any = None,
    algorithm: Algorithm = "auto",
    max_buffer_bytes: int | None = None,
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
    x, w, b = unpack_inputs(_OP, inputs)
    if isinstance(axis_name, list) or not _hashable(axis_name):
        raise TypeError(
            f"{_OP}: `axis_name` must be a mesh axis name (a str, or a tuple of names for several axes), as "
            f"jax.shard_map binds it; got {type(axis_name).__name__} {axis_name!r}"
            + (f": pass {tuple(axis_name)!r}." if isinstance(axis_name, list) else ".")
        )
    try:
        devices = lax.axis_size(axis_name) if hasattr(lax, "axis_size") else lax.psum(1, axis_name)
    except NameError:
        raise ValueError(
            f"{_OP}: `axis_name` (={axis_name!r}) must name a mesh axis bound by an enclosing `jax.shard_map`; "
            f"call conv_transpose_halo inside shard_map (outside it, use conv_transpose)."
        ) from None
    ndim = x.ndim - 2
    axis = _as_int(_OP, "axis", axis, 0)
    if axis >= max(ndim, 1):
        raise ValueError(f"{_OP}: `axis` must be a spatial axis index in [0, {ndim}); got {axis}.")
    nchw = str(data_format).upper() == "NCHW"
    array_axis = (2 if nchw else 1) + axis
    whole = list(x.shape)
    whole[array_axis] *= devices
    plan = make_plan(
        whole, w.shape, None if b is None else b.shape, kernel_shape=kernel_shape, strides=strides, pads=pads,
        dilations=dilations, group=group, padding=padding,
        output_padding=static_sizes(_OP, "output_padding", output_padding),
        output_shape=static_sizes(_OP, "output_shape", output_shape), data_format=data_format, op=_OP,
    )
    x, w, b = promote(x, w, b, _OP)
    preferred = check_preferred(_OP, preferred_element_type, x.dtype)
    apply = bind(_OP, plan, algorithm, precision, preferred, x.dtype, max_buffer_bytes)
    reason = halo_fits(plan, axis, devices)
    if reason is not None:
        raise ValueError(f"{_OP}: {reason}.")
    return _halo_apply(apply, plan, x, w, b, axis, array_axis, axis_name, devices)


def halo_fits(plan: Plan, axis: int, devices: int) -> str | None:
    """Why ``plan`` cannot be split along spatial ``axis`` over ``devices`` with a halo exchange
    (the output must be ``stride * input`` long along it, and each halo fit in one device's
    block), or None."""
    s, size = plan.strides[axis], plan.in_spatial[axis]
    if not all(isinstance(v, int) for v in (size, plan.out_spatial[axis])):
        return f"the sizes along the sharded spatial axis {axis} must be known (not symbolic)"
    if plan.out_spatial[axis] != s * size:
        return (
            f"the output must have stride * input = {s} * {size} positions along the sharded spatial axis "
            f"{axis}; these arguments give {plan.out_spatial[axis]}"
        )
    if size % devices:
        return f"the {size} positions of spatial axis {axis} must split evenly over {devices} devices"
    left, right = halo_sizes(plan, axis)
    local = size // devices
    if max(left, right) > local:
        return (
            f"the halos ({left} slices from the left, {right} from the right) must fit in one device's "
            f"block of {local} slices along spatial axis {axis}; use fewer devices or a larger volume"
        )
    return None


def _halo_apply(
    apply, plan: Plan, x: jax.Array, w: jax.Array, b: jax.Array | None, axis: int, array_axis: int,
    axis_name: Any, devices: int,
) -> jax.Array:
    """Inside ``shard_map``: this device's block of ``plan`` (the whole call's plan, this
    device's batch) with a halo exchange along spatial ``axis``; :func:`halo_fits` holds."""
    s, local = plan.strides[axis], x.shape[array_axis]
    left, right = halo_sizes(plan, axis)
    window = _exchange(x, array_axis, axis_name, devices, left, right)
    # The window's own plan: the whole plan's crops, moved by the halo along `axis`.
    begins, ends = list(plan.pad_begin), list(plan.pad_end)
    size = local + left + right
    begins[axis] += s * left
    ends[axis] = full_length(size, plan.kernel[axis], s, plan.dilations[axis]) - begins[axis] - s * local
    in_spatial = list(plan.in_spatial)
    in_spatial[axis] = size
    out_spatial = list(plan.out_spatial)
    out_spatial[axis] = s * local
    local_plan = dataclasses.replace(
        plan, in_spatial=tuple(in_spatial), pad_begin=tuple(begins), pad_end=tuple(ends),
        out_spatial=tuple(out_spatial),
    )
    return apply(window, w, b, plan=local_plan)
