"""``algorithm='native'``: jax_deconv's own CPU kernels (``kernels.cc``) under the XLA FFI.

A call is brought to one canonical problem: channels-last, three spatial axes (unit axes in
front for 1-D and 2-D), the weight packed per group and tap as ``(G, Kd, Kh, Kw, Cg_in,
Cg_out)``. Three primitives compute its three linear maps, each a C++ kernel:

* ``forward_p(x, wf) -> y``: the transposed convolution;
* ``dx_p(dy, wf) -> dx``: its transpose in ``x`` (a strided correlation of ``dy``);
* ``dw_p(x, dy) -> dwf``: its transpose in the weight;
* ``forward_bias_p(x, wf, b) -> y``: the forward with the bias added in its accumulator, before
  the one rounding (bfloat16 results are rounded once, not twice).

The first three are bilinear, and the transposes of each are the other two, as for
``lax.conv_general_dilated``; so ``grad``, ``vjp``, ``jvp``, ``jacfwd``, ``hessian`` and
``linearize`` need no other rule. ``forward_bias_p`` has a JVP rule made of the others (its
tangent in ``b`` broadcast by ``bias.spread_p``, so the bias gradient is summed by the native
``bias_sum`` map, in float32 at least: :mod:`jax_deconv._native.bias`).
``vmap`` folds a mapped ``x`` (or ``dy``) into the batch and maps anything else with ``lax.map``.

Sharding: under ``jit`` on several CPU devices (arrays on a mesh with ``AxisType.Auto`` axes,
or ``in_shardings``), each primitive is bound as its ``_spmd`` variant, whose custom call XLA's
partitioner splits along the batch (``custom_partitioning``): each device runs the kernels on
its own examples, the weight gradient's per-device sums are added by one all-reduce, and any
other split is gathered first. Inside ``shard_map`` (manual axes) the call is the plain one.

Lowering: on CPU, with the kernels built, a custom call to them; everywhere else, and in
``jax.export`` (whose programs must carry no custom call), the same maps in plain XLA, through
the lowering that ``jax_deconv._lowering`` registers with :func:`set_xla_forward`. Without the
compiled kernels (no compiler at install time) :data:`AVAILABLE` is False, ``'auto'`` never
takes ``'native'`` and an explicit ``algorithm='native'`` is refused with a ``ValueError`` that
says why and names the algorithms that compute the call.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jax_deconv._plan import Plan, full_length


def _load_kernels() -> tuple[Any, str]:
    """The compiled module, or None and why not.

    Beside this file when the package was installed (or built in place). Python started in a
    source checkout imports the checkout's ``jax_deconv``, which holds no compiled file; the
    one ``pip install .`` built from that checkout is then loaded from the installed
    distribution.
    """
    try:
        from jax_deconv._native import _kernels  # pyright: ignore[reportAttributeAccessIssue]

        return _kernels, ""
    except ImportError as error:
        built = any(name.startswith("_kernels.") for name in os.listdir(os.path.dirname(os.path.abspath(__file__))))
        reason = (f"the compiled kernels did not load ({error})" if built
                  else "they were not built when jax_deconv was installed (no C++ compiler?)")
    try:
        from importlib import machinery, metadata, util

        files = [f for dist in metadata.distributions(name="jax_deconv") for f in dist.files or []]
        found = [f for f in files if f.parent.name == "_native" and f.name.startswith("_kernels.")
                 and any(f.name.endswith(suffix) for suffix in machinery.EXTENSION_SUFFIXES)
                 and os.path.exists(f.locate())]
        if found:
            name = "jax_deconv._native._kernels"
            spec = util.spec_from_file_location(name, str(found[0].locate()))
            if spec is not None and spec.loader is not None:
                module = util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[name] = module
                return module, ""
    except Exception as error:  # no installed distribution, or its file does not load
        reason += f"; the installed one did not either ({error})"
    return None, reason


ISA_NAMES = ("avx512bf16", "avx512f", "avx2+fma", "x86-64 baseline", "baseline", "portable C++")
"""What ``JAX_DECONV_ISA`` may name: the instruction sets :func:`native_kernels` reports, and
``'baseline'`` for the lowest one. The kernels run the named one if this processor has it."""


def _check_isa_request(running: str) -> None:
    """Warn when ``JAX_DECONV_ISA`` names no instruction set, or one that is not what runs."""
    import warnings

    wanted = os.environ.get("JAX_DECONV_ISA")
    if wanted is None:
        return
    if wanted not in ISA_NAMES:
        warnings.warn(
            f"jax_deconv: JAX_DECONV_ISA={wanted!r} names no instruction set of the native kernels (one of "
            f"{', '.join(map(repr, ISA_NAMES))}); ignored: running {running!r}.", RuntimeWarning, stacklevel=2)
    elif wanted != running and not (wanted == "baseline" and running in ("x86-64 baseline", "portable C++")):
        warnings.warn(
            f"jax_deconv: JAX_DECONV_ISA={wanted!r}: the native kernels cannot run it on this processor (or "
            f"this build); running {running!r}.", RuntimeWarning, stacklevel=2)


def _ffi_mismatch(module: Any) -> str | None:
    """Why the running jaxlib cannot call kernels built for the XLA FFI API version they report,
    or None. The running version is read from the FFI headers jaxlib ships (``jax.ffi.include_dir``);
    a newer minor version still calls older handlers, a newer one than jaxlib's does not."""
    version = getattr(module, "ffi_api_version", None)
    if version is None:
        return None
    built = tuple(version())
    try:
        with open(os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h"), encoding="utf-8") as f:
            header = f.read()
        running = tuple(int(re.search(rf"#define XLA_FFI_API_{part} (\d+)", header).group(1))  # pyright: ignore
                        for part in ("MAJOR", "MINOR"))
    except (OSError, AttributeError, ValueError):  # no headers to read: XLA checks at each call
        return None
    if running[0] != built[0] or running[1] < built[1]:
        import jaxlib

        return (f"they were built for XLA FFI API {built[0]}.{built[1]}, and the running jaxlib "
                f"{getattr(jaxlib, '__version__', '?')} has {running[0]}.{running[1]}")
    return None


REMEDY = ("to get them, install a C++ compiler (g++ or clang++) and reinstall jax_deconv from its source "
          "(pip install --force-reinstall --no-deps .), or install a jax_deconv wheel built for this jaxlib")
"""What to do when the native kernels are not available (said wherever that is reported)."""

_kernels, UNAVAILABLE_BECAUSE = _load_kernels()
if _kernels is not None and (_mismatch := _ffi_mismatch(_kernels)) is not None:
    _kernels, UNAVAILABLE_BECAUSE = None, _mismatch
if _kernels is not None:
    _check_isa_request(_kernels.isa())
    for _name, _capsule in _kernels.handlers().items():
        jax.ffi.register_ffi_target(f"jax_deconv_{_name}", _capsule, platform="cpu")

AVAILABLE = _kernels is not None
"""Whether the compiled kernels loaded (see :func:`native_kernels`)."""

MAX_NDIM = 3
"""The kernels take 1 to 3 spatial axes; calls with more keep the XLA lowerings."""

DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(jnp.bfloat16))
"""The dtypes the kernels compute in (bfloat16 accumulated in float32 and rounded once)."""


def native_kernels() -> str | None:
    """Whether jax_deconv's native CPU kernels are built, and the instruction set they run on
    this processor: ``'avx512bf16'`` (AVX-512 with its bfloat16 dot products), ``'avx512f'``,
    ``'avx2+fma'``, ``'x86-64 baseline'`` or ``'portable C++'``; None when they are not (no C++
    compiler at install time: the XLA lowerings run instead).

    Examples:
      >>> from jax_deconv import native_kernels
      >>> native_kernels() in (None, "avx512bf16", "avx512f", "avx2+fma", "x86-64 baseline", "portable C++")
      True
    """
    return _kernels.isa() if _kernels is not None else None


def native_kernels_unavailable() -> str | None:
    """Why jax_deconv's native CPU kernels do not run here, and what to do; None when they do
    (then :func:`native_kernels` names their instruction set).

    Examples:
      >>> from jax_deconv import native_kernels, native_kernels_unavailable
      >>> (native_kernels() is None) == (native_kernels_unavailable() is not None)
      True
    """
    return None if AVAILABLE else f"{UNAVAILABLE_BECAUSE}; {REMEDY}"


_warned = []


def warn_unavailable_once() -> None:
    """Warn, once per process, that a CPU call runs an XLA lowering for want of the kernels."""
    if AVAILABLE or _warned or jax.default_backend() != "cpu":
        return
    _warned.append(True)
    import warnings

    warnings.warn(f"jax_deconv: the native CPU kernels are not available, so CPU calls run the slower XLA "
                  f"lowerings: {native_kernels_unavailable()}.", RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------- the canonical problem


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The canonical problem of a plan: channels-last, three spatial axes, sizes only.

    The operands keep the call's own spatial rank (``ndim``: no unit axes, which XLA:CPU may
    lay out apart and copy); the kernels read the 22 sizes of :meth:`as_attribute`.
    """

    batch: int
    group: int
    cg_in: int
    cg_out: int
    in_spatial: tuple[int, int, int]
    out_spatial: tuple[int, int, int]
    kernel: tuple[int, int, int]
    strides: tuple[int, int, int]
    dilations: tuple[int, int, int]
    pad_begin: tuple[int, int, int]
    ndim: int = 3

    @classmethod
    def of_axes(cls, batch: int, group: int, cg_in: int, cg_out: int, in_spatial: Sequence[int],
                out_spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                pad_begin: Sequence[int]) -> Geometry:
        """From per-axis sizes of the call's own rank (1 to 3 axes; the leading ones filled)."""
        n = len(kernel)

        def three(values: Sequence[int], fill: int) -> tuple[int, int, int]:
            return tuple([fill] * (3 - n) + list(values))  # pyright: ignore[reportReturnType]

        return cls(
            batch=batch, group=group, cg_in=cg_in, cg_out=cg_out, in_spatial=three(in_spatial, 1),
            out_spatial=three(out_spatial, 1), kernel=three(kernel, 1), strides=three(strides, 1),
            dilations=three(dilations, 1), pad_begin=three(pad_begin, 0), ndim=n,
        )

    @classmethod
    def of(cls, plan: Plan) -> Geometry:
        return cls.of_axes(plan.batch, plan.group, plan.in_channels // plan.group, plan.out_channels // plan.group,
                           plan.in_spatial, plan.out_spatial, plan.kernel, plan.strides, plan.dilations,
                           plan.pad_begin)

    @property
    def depthwise(self) -> bool:
        """Several groups of one channel in and one out: the kernels take every group at once,
        vectorised along the channels (``Depthwise`` in ``kernels.cc``)."""
        return self.group > 1 and self.cg_in == 1 and self.cg_out == 1

    def as_attribute(self) -> np.ndarray:
        """The 22 sizes the kernels read, in their order."""
        return np.array([self.batch, self.group, self.cg_in, self.cg_out, *self.in_spatial, *self.out_spatial,
                         *self.kernel, *self.strides, *self.dilations, *self.pad_begin], np.int64)

    def plan(self) -> Plan:
        """The canonical problem as a channels-last 3-D :class:`Plan` (for the XLA lowering)."""
        full = tuple(map(full_length, self.in_spatial, self.kernel, self.strides, self.dilations))
        return Plan(
            data_format="NHWC", batch=self.batch, in_channels=self.group * self.cg_in,
            out_channels=self.group * self.cg_out, group=self.group, in_spatial=self.in_spatial,
            kernel=self.kernel, strides=self.strides, dilations=self.dilations, pad_begin=self.pad_begin,
            pad_end=tuple(f - b - o for f, b, o in zip(full, self.pad_begin, self.out_spatial)),
            out_spatial=self.out_spatial, has_bias=False,
        )

    def shapes(self, canonical: bool = False) -> dict[str, tuple[int, ...]]:
        """The operands' shapes: the call's rank, or with three spatial axes (``canonical``)."""
        n = 3 if canonical else self.ndim
        g = self.group
        return dict(
            x=(self.batch, *self.in_spatial[3 - n:], g * self.cg_in),
            y=(self.batch, *self.out_spatial[3 - n:], g * self.cg_out),
            w=(g, *self.kernel[3 - n:], self.cg_in, self.cg_out),
        )


# --------------------------------------------------------------------------- the primitives

forward_p = Primitive("jax_deconv_native_forward")
dx_p = Primitive("jax_deconv_native_dx")
dw_p = Primitive("jax_deconv_native_dw")
forward_bias_p = Primitive("jax_deconv_native_forward_bias")
_RESULT = {forward_p: "y", dx_p: "x", dw_p: "w", forward_bias_p: "y"}
# The same maps as XLA's SPMD partitioner splits them along the batch (:func:`_batch_partitioned`),
# bound instead where an operand lies on a CPU mesh of several devices with an Auto axis (plain
# ``jit`` on sharded arrays). Apart, because their lowering needs the devices: a program without
# them stays device-oblivious (e.g. ``jax.export`` with an abstract mesh).
_SPMD = {p: Primitive(p.name + "_spmd") for p in _RESULT}
_BASE = {**{p: p for p in _RESULT}, **{v: p for p, v in _SPMD.items()}}
try:  # JAX's registry of primitives whose lowering sees the devices (as its custom_partitioning's)
    from jax._src.dispatch import prim_requires_devices_during_lowering as _needs_devices

    _needs_devices.update(_SPMD.values())
except (ImportError, AttributeError):  # a JAX without it: calls on sharded arrays run gathered
    _SPMD = {p: p for p in _RESULT}


def _abstract(prim: Primitive):
    def rule(a, *_, geometry: Geometry):
        # Inside shard_map, the result varies over the manual axes its operands vary over
        # (:func:`_bind` makes both operands vary over the same ones) and is unsharded within.
        sharding = jax.sharding.NamedSharding(a.sharding.mesh, jax.sharding.PartitionSpec())
        return a.update(shape=geometry.shapes()[_RESULT[_BASE[prim]]], sharding=sharding, weak_type=False)

    return rule


def _varying(value: Any) -> frozenset:
    """The manual mesh axes (inside ``shard_map``) that ``value`` varies over."""
    return frozenset(getattr(getattr(jax.typeof(value), "manual_axis_type", None), "varying", ()))


def _partitioned(operands: Sequence[Any]) -> bool:
    """Whether XLA's SPMD partitioner may split a call on ``operands`` over several CPU devices:
    they lie on a CPU mesh of several devices with an Auto axis (``jit`` on sharded arrays) or,
    carrying no mesh (``jit(..., in_shardings=...)``), the process has several CPU devices."""
    meshes = [getattr(getattr(jax.typeof(v), "sharding", None), "mesh", None) for v in operands]
    meshes = [m for m in meshes if m is not None and not m.empty]
    if not meshes:
        return jax.default_backend() == "cpu" and jax.device_count() > 1
    return any(m.size > 1 and getattr(m, "auto_axes", ()) and getattr(m.abstract_device, "platform", None) == "cpu"
               for m in meshes)


def _bind(prim: Primitive, *operands: Any, geometry: Geometry) -> jax.Array:
    """``prim.bind`` (its batch-partitioned variant for operands on a partitioned CPU mesh) with
    every operand varying over the same manual axes, as JAX's own primitives have them (a
    device's block of x with a weight replicated over its axis)."""
    every = frozenset().union(*map(_varying, operands))
    operands = tuple(
        lax.pcast(v, tuple(sorted(every - _varying(v))), to="varying") if every - _varying(v) else v
        for v in operands
    )
    if _partitioned(operands):
        prim = _SPMD[_BASE[prim]]
    return prim.bind(*operands, geometry=geometry)


def _impl(prim: Primitive):
    def impl(*operands, geometry: Geometry):  # outside jit: compile the one primitive
        return jax.jit(prim.bind, static_argnames="geometry")(*operands, geometry=geometry)

    return impl


for _prim in _BASE:
    _prim.def_impl(_impl(_prim))
    _prim.def_abstract_eval(_abstract(_prim))

# Transposes: each map's transpose in either operand is one of the other two.
_TRANSPOSES = {
    forward_p: (lambda ct, x, wf, *, geometry: _bind(dx_p, ct, wf, geometry=geometry),
                lambda ct, x, wf, *, geometry: _bind(dw_p, x, ct, geometry=geometry)),
    dx_p: (lambda ct, dy, wf, *, geometry: _bind(forward_p, ct, wf, geometry=geometry),
           lambda ct, dy, wf, *, geometry: _bind(dw_p, ct, dy, geometry=geometry)),
    dw_p: (lambda ct, x, dy, *, geometry: _bind(dx_p, dy, ct, geometry=geometry),
           lambda ct, x, dy, *, geometry: _bind(forward_p, x, ct, geometry=geometry)),
}
for _prim in _BASE:
    if _BASE[_prim] in _TRANSPOSES:
        ad.defbilinear(_prim, *_TRANSPOSES[_BASE[_prim]])


def _wide(dtype: Any) -> Any:
    """The dtype a bias is added in: float32 for 16-bit values, else their own."""
    return jnp.promote_types(dtype, jnp.float32)


def _forward_bias_jvp(primals, tangents, *, geometry: Geometry):
    x, wf, b = primals
    tx, twf, tb = tangents
    y = _bind(forward_bias_p, x, wf, b, geometry=geometry)
    parts = []
    if type(tx) is not ad.Zero:
        parts.append(_bind(forward_p, tx, wf, geometry=geometry))
    if type(twf) is not ad.Zero:
        parts.append(_bind(forward_p, x, twf, geometry=geometry))
    if type(tb) is not ad.Zero:  # its transpose sums the cotangent in float32 at least, in one pass
        from jax_deconv._native.bias import spread_p

        parts.append(spread_p.bind(tb, shape=tuple(y.shape), axis=y.ndim - 1, dtype=np.dtype(y.dtype)))
    if not parts:  # (JAX calls the rule with at least one tangent)
        return y, jnp.zeros_like(y)
    tangent = parts[0]
    for part in parts[1:]:
        tangent = tangent + part
    return y, tangent


ad.primitive_jvps[forward_bias_p] = ad.primitive_jvps[_SPMD[forward_bias_p]] = _forward_bias_jvp


def _batch(prim: Primitive):
    def rule(args, dims, *, geometry: Geometry):
        a, *rest = args
        da, *drest = dims
        if all(d is None for d in drest) and _BASE[prim] is not dw_p:  # a mapped x or dy: more examples
            a = jnp.moveaxis(a, da, 0)
            size, n = a.shape[0], geometry.batch
            wide = dataclasses.replace(geometry, batch=size * n)
            out = _bind(prim, a.reshape(size * n, *a.shape[2:]), *rest, geometry=wide)
            return out.reshape(size, n, *out.shape[1:]), 0
        size = next(v.shape[d] for v, d in zip(args, dims) if d is not None)
        args = [jnp.moveaxis(v, d, 0) if d is not None else jnp.broadcast_to(v, (size, *v.shape))
                for v, d in zip(args, dims)]
        return lax.map(lambda vs: _bind(prim, *vs, geometry=geometry), tuple(args)), 0

    return rule


for _prim in _BASE:
    batching.primitive_batchers[_prim] = _batch(_prim)


# --------------------------------------------------------------------------- lowering

_XLA_FORWARD: list[Callable[[jax.Array, jax.Array, Plan, str], jax.Array]] = []


def set_xla_forward(forward: Callable[[jax.Array, jax.Array, Plan, str], jax.Array]) -> None:
    """Register the plain-XLA forward (``y = f(x, w, plan, backend)``, any plan) that lowers
    these primitives off CPU, in ``jax.export`` and where the kernels are not built."""
    _XLA_FORWARD[:] = [forward]


def _xla_map(prim: Primitive, geometry: Geometry, backend: str) -> Callable[..., jax.Array]:
    """``prim``'s map in plain XLA: the registered forward on the canonical plan, and its VJPs."""
    plan = geometry.plan()
    shapes, canonical = geometry.shapes(), geometry.shapes(canonical=True)

    def forward(x, wf):  # wf (G, K.., Cg_in, Cg_out) -> the plan's NHWC weight (C_in, K.., Cg_out)
        wf = wf.reshape(canonical["w"])
        w = jnp.moveaxis(wf, -2, 1).reshape(plan.in_channels, *plan.kernel, geometry.cg_out)
        return _XLA_FORWARD[0](x.reshape(canonical["x"]), w, plan, backend).reshape(shapes["y"])

    if prim is forward_p:
        return forward
    if prim is forward_bias_p:  # 16-bit: the product and the bias added in float32, rounded once
        return lambda x, wf, b: _add_bias_wide(forward, x, wf, b)
    if prim is dx_p:
        return lambda dy, wf: jax.vjp(lambda x: forward(x, wf), jnp.zeros(shapes["x"], dy.dtype))[1](dy)[0]
    return lambda x, dy: jax.vjp(lambda wf: forward(x, wf), jnp.zeros(shapes["w"], x.dtype))[1](dy)[0]


def _add_bias_wide(forward: Callable[[jax.Array, jax.Array], jax.Array], x, wf, b) -> jax.Array:
    wide = _wide(x.dtype)
    return (forward(x.astype(wide), wf.astype(wide)) + b.astype(wide)).astype(x.dtype)


_TARGETS = {forward_p: "jax_deconv_forward", forward_bias_p: "jax_deconv_forward_bias", dx_p: "jax_deconv_dx",
            dw_p: "jax_deconv_dw"}


def widened_bfloat16(prim: Primitive, geometry: Geometry) -> bool:
    """Whether a bfloat16 call of ``prim`` runs the float32 kernels on its operands widened once
    (exact: both accumulate in float32, and the result is rounded once). The bfloat16 kernels
    pair or widen their operands at every use, and fill a vector with 16 of the result's channels;
    with few channels in the result that costs more than the conversions, whose float32 copies
    cost memory traffic in turn (a float32 array over 32 MiB is new memory, page-faulted, at
    every call). Measured (AMD Zen 4, one core, its ``vdpbf16ps`` kernels, 2026-12-07), widened
    against not: the forward with 8 channels out per group 0.86-0.95x, but with 4 or more groups
    of 8 channels in, which the ``vdpbf16ps`` kernels take 4 side by side, 1.1-1.3x (layer D;
    the ``avx512f`` and ``avx2+fma`` kernels, which widen as they read, 0.85x there); the input
    gradient 0.7x with one channel in its result, but 1.2-1.3x with 8-channel groups and 1.9x for
    a first layer's 1 -> 32 channels at 64^3 (2 threads). The weight gradient is never widened
    here: its kernels choose, widening as they read (``kernels.cc``); nor a depthwise call, whose
    kernels widen as they read (3x3 over 64 channels at 56^2, batch 8: forward 0.8x)."""
    if prim is dw_p or geometry.depthwise:
        return False  # the kernels choose, or widen as they read (kernels.cc)
    if prim is dx_p:
        return geometry.cg_in <= 4
    side_by_side = native_kernels() == "avx512bf16" and geometry.group >= 4 and geometry.cg_in == 8  # gemm_dp_groups
    return geometry.cg_out <= 8 and not side_by_side


def _ffi_map(prim: Primitive, geometry: Geometry) -> Callable[..., jax.Array]:
    result = geometry.shapes()[_RESULT[prim]]
    attribute = geometry.as_attribute()
    widen = widened_bfloat16(prim, geometry)

    def call(a, b, *rest):
        if prim is dx_p:  # the input gradient's kernel reads the weight as (G, K.., Cg_out, Cg_in)
            b = jnp.swapaxes(b, -1, -2)
        dtype = a.dtype
        if widen and dtype == jnp.bfloat16:
            a, b, rest = a.astype(jnp.float32), b.astype(jnp.float32), [v.astype(jnp.float32) for v in rest]
        out = jax.ffi.ffi_call(_TARGETS[prim], jax.ShapeDtypeStruct(result, a.dtype))(a, b, *rest,
                                                                                      geometry=attribute)
        return out.astype(dtype)

    return call


def for_export(ctx: Any) -> bool:
    """Whether a lowering context lowers for ``jax.export``, whose programs carry no custom call."""
    return getattr(getattr(ctx.module_context, "lowering_parameters", None), "for_export", False)


def _lowering(prim: Primitive, native: bool):
    base = _BASE[prim]

    def rule(ctx, *operands, geometry: Geometry):
        dtype = ctx.avals_in[0].dtype
        if not (native and AVAILABLE and not for_export(ctx) and dtype in DTYPES and _nonempty(geometry)):
            fn = _xla_map(base, geometry, "cpu" if native else "gpu")
        elif prim is base:
            fn = _ffi_map(base, geometry)
        else:
            fn = _batch_partitioned(base, geometry)
        return mlir.lower_fun(fn, multiple_results=False)(ctx, *operands)

    return rule


@functools.lru_cache(maxsize=256)
def _batch_partitioned(prim: Primitive, geometry: Geometry) -> Callable[..., jax.Array]:
    """The kernel call as XLA's SPMD partitioner splits it under ``jit`` on sharded arrays
    (``AxisType.Auto`` meshes): along the batch, each device on its own examples (no gather of
    ``x`` or ``dy``), the weight and bias replicated; the weight gradient's per-device sums are
    added by one all-reduce. Any other sharding of the operands is gathered first. On one
    device, and inside ``shard_map``, this is the call itself."""
    batch_operands = 2 if prim is dw_p else 1  # x (or dy), and dy for the weight gradient

    @custom_partitioning
    def call(*operands):
        return _ffi_map(prim, geometry)(*operands)

    def split_of(mesh, arg_shapes) -> tuple[Any, int]:
        """The mesh axes the batch is split over (an entry of a PartitionSpec) and their size."""
        entry = _batch_entry(arg_shapes[0].sharding)
        if entry is None or any(_batch_entry(a.sharding) != entry for a in arg_shapes[1:batch_operands]):
            return None, 1
        shards = math.prod(mesh.shape[name] for name in (entry if isinstance(entry, tuple) else (entry,)))
        return (entry, shards) if geometry.batch % shards == 0 else (None, 1)

    def infer(mesh, arg_shapes, result_shape):  # (used where Shardy is off)
        del result_shape
        entry, _ = split_of(mesh, arg_shapes)
        spec = jax.sharding.PartitionSpec() if prim is dw_p else jax.sharding.PartitionSpec(entry)
        return jax.sharding.NamedSharding(mesh, spec)

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        entry, shards = split_of(mesh, arg_shapes)
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(entry))
        whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        local = _ffi_map(prim, dataclasses.replace(geometry, batch=geometry.batch // shards))

        def lower(*operands):
            if prim is not dw_p or entry is None:
                return local(*operands)
            # per-device sums added in float32 at least and rounded once (bfloat16 as on one device)
            wide = _wide(operands[0].dtype)
            return lax.psum(local(*(v.astype(wide) for v in operands)), entry).astype(operands[0].dtype)

        in_shardings = tuple(split if i < batch_operands else whole for i in range(len(arg_shapes)))
        return mesh, lower, whole if prim is dw_p else split, in_shardings

    rule, others = _sharding_rule(prim, geometry.ndim)
    call.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                       reduction_factors=("n",) if prim is dw_p else (), need_replication_factors=others)
    return call


def _batch_entry(sharding: Any) -> Any:
    """The PartitionSpec entry of an operand's leading (batch) axis: None when unsplit or when
    the sharding has no mesh axis names (then the call runs gathered, as XLA would)."""
    spec = getattr(sharding, "spec", None)
    return spec[0] if spec else None


def _sharding_rule(prim: Primitive, ndim: int) -> tuple[str, tuple[str, ...]]:
    """Shardy's rule for ``prim`` (einsum-like: the batch factor ``n`` shared by the operands
    and result that carry it) and the factors that must stay whole (every other axis)."""
    x = ["n", *(f"s{i}" for i in range(ndim)), "c"]
    y = ["n", *(f"o{i}" for i in range(ndim)), "e"]
    w = ["g", *(f"k{i}" for i in range(ndim)), "i", "j"]
    operands, result = {forward_p: ([x, w], y), forward_bias_p: ([x, w, ["f"]], y), dx_p: ([y, w], x),
                        dw_p: ([x, y], w)}[prim]
    rule = ", ".join(" ".join(o) for o in operands) + " -> " + " ".join(result)
    factors = dict.fromkeys(f for o in (*operands, result) for f in o if f != "n")  # in order of appearance
    return rule, tuple(factors)


def _nonempty(geometry: Geometry) -> bool:
    sizes = geometry.shapes()
    return all(math.prod(shape) > 0 for shape in sizes.values())


for _prim in _BASE:
    mlir.register_lowering(_prim, _lowering(_prim, native=False))
    mlir.register_lowering(_prim, _lowering(_prim, native=True), platform="cpu")


# --------------------------------------------------------------------------- the operator


def conv_transpose(x: jax.Array, w: jax.Array, plan: Plan, b: jax.Array | None = None) -> jax.Array:
    """``plan``'s transposed convolution through the native primitives, plus ``b`` if given
    (added before the result is rounded).

    ``x``, ``w`` and ``b`` in the plan's layout and one dtype of :data:`DTYPES` (the caller
    widens float16); at most :data:`MAX_NDIM` spatial axes.
    """
    geometry = Geometry.of(plan)
    g = plan.group
    shapes = geometry.shapes()
    if plan.data_format == "NCHW":  # -> channels-last
        x = jnp.moveaxis(x, 1, -1)
        w = jnp.moveaxis(w, 1, -1)  # (C_in, K.., Cg_out)
    w = w.reshape(g, plan.in_channels // g, *plan.kernel, plan.out_channels // g)
    wf = jnp.moveaxis(w, 1, -2).reshape(shapes["w"])  # (G, K.., Cg_in, Cg_out)
    if b is None:
        y = _bind(forward_p, x.reshape(shapes["x"]), wf, geometry=geometry)
    else:
        y = _bind(forward_bias_p, x.reshape(shapes["x"]), wf, b, geometry=geometry)
    y = y.reshape(plan.batch, *plan.out_spatial, plan.out_channels)
    return jnp.moveaxis(y, -1, 1) if plan.data_format == "NCHW" else y


def input_gradient(dy: jax.Array, wf: jax.Array, geometry: Geometry) -> jax.Array:
    """The input-gradient map of ``geometry``'s transposed convolution, ``dx = dx_p(dy, wf)``:
    ``dy`` ``(N, O.., G*Cg_out)``, ``wf`` ``(G, K.., Cg_in, Cg_out)``, ``dx`` ``(N, S.., G*Cg_in)``
    (the regular convolution of ``jax_deconv._conv``)."""
    return _bind(dx_p, dy, wf, geometry=geometry)


def unsupported(plan: Plan, dtype: Any) -> str | None:
    """Why the kernels cannot run ``plan`` with inputs of ``dtype`` (float16 inputs are widened
    to float32 first), or None."""
    if not AVAILABLE:
        return UNAVAILABLE_BECAUSE
    if plan.ndim > MAX_NDIM:
        return f"{plan.ndim} spatial axes (the kernels take at most {MAX_NDIM})"
    if np.dtype(dtype).itemsize > 8:
        return f"dtype {np.dtype(dtype)} (the kernels take float32 and float64)"
    return None
