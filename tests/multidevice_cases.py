"""Sharded equals unsharded, on 8 simulated CPU devices (run by ``test_sharding.py``).

Not collected on its own (the name has no ``test_`` prefix): ``test_sharding.py`` runs it
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` in a subprocess, because the
device count is fixed when JAX starts. ``python -m pytest tests/multidevice_cases.py`` with
that flag set runs it directly.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if not hasattr(jax, "shard_map") or not hasattr(jax.sharding, "AxisType"):
    pytest.skip("needs a JAX with jax.shard_map and sharding in types", allow_module_level=True)
if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8", allow_module_level=True)

from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from reference import reference
from support import ALGORITHMS as ALL_ALGORITHMS
from support import PHASE_ALGORITHMS as ALGORITHMS
from support import assert_close, recipe

from jax_deconv import conv_transpose, conv_transpose_halo, conv_transpose_plan, halo_sizes, native_kernels
from jax_deconv import lax as dlax

needs_kernels = pytest.mark.skipif(native_kernels() is None, reason="the native kernels are not built here")

jax.config.update("jax_enable_x64", True)
F64 = jnp.float64
A = dict(kernel_shape=4, strides=2, pads=1)  # the usual 3-D decoder layer (config A)


def collectives(fn, *args) -> dict[str, list[str]]:
    """Result shapes of each collective in ``fn``'s compiled (partitioned) HLO."""
    return collectives_in(jax.jit(fn).lower(*args).compile().as_text())


def collectives_in(text: str) -> dict[str, list[str]]:
    """Result shapes of each collective in a compiled (partitioned) HLO text."""
    kinds = ("collective-permute", "all-gather", "all-to-all", "all-reduce", "reduce-scatter")
    return {k: re.findall(rf"= (\S+|\([^)]*\)) {k}(?:-start)?\(", text) for k in kinds}


def loss_of(f):
    return lambda *a: jnp.sum(jnp.sin(f(*a)))


def random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def check_sharded(f, args, sharded_args):
    """Forward and every gradient of ``f`` agree between plain and sharded arguments."""
    assert_close(jax.jit(f)(*sharded_args), jax.jit(f)(*args), F64)
    grads = jax.jit(jax.grad(loss_of(f), range(len(args))))
    for got, want in zip(grads(*sharded_args), grads(*args)):
        assert_close(got, want, F64)


# --------------------------------------------------------------------------- data parallel


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_batch_sharded_equals_one_device(algorithm, axis_type):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    x, w, b = random((16, 4, 5, 6, 4), 0), random((4, 3, 4, 4, 4), 1), random(6, 2)

    def f(x, w, b):
        return conv_transpose([x, w, b], **A, group=2, algorithm=algorithm)

    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    check_sharded(f, (x, w, b), (xs, w, b))
    assert jax.jit(f)(xs, w, b).sharding.spec[0] == "data"  # the batch stays sharded
    if axis_type == AxisType.Explicit or algorithm in ("gemm", "native"):
        assert not any(collectives(f, xs, w, b).values())  # forward: no communication at all
    # (Auto axes + 'conv': XLA's partitioner gathers the batch of a grouped convolution; in
    # explicit mode, JAX's default, we run each device's examples under shard_map instead.)


def native_calls(text: str) -> dict[str, list[str]]:
    """Result shapes of each native kernel call in a compiled HLO text."""
    return {k: re.findall(rf"= (\S+) custom-call\([^\n]*custom_call_target=\"jax_deconv_{k}\"", text)
            for k in ("forward_bias", "forward", "dx", "dw")}


@needs_kernels
@pytest.mark.parametrize("spec", [P("data"), P(("a", "b")), P("a")])
def test_auto_mesh_runs_the_kernels_on_each_devices_examples(spec):
    """Plain ``jit`` on a batch-sharded x (Auto axes): each device's kernel call sees its own
    examples (a batch of 16 / shards), nothing is gathered, the weight and bias gradients are
    summed by all-reduces; each device holds its block of x only (memory_analysis)."""
    names = ("data",) if spec == P("data") else ("a", "b")
    mesh = jax.make_mesh((8,) if len(names) == 1 else (2, 4), names, axis_types=(AxisType.Auto,) * len(names))
    shards = 2 if spec == P("a") else 8
    x, w, b = random((16, 6, 5, 4, 8), 20), random((8, 3, 3, 3, 4), 21), random(4, 22)

    def f(x, w, b):
        return conv_transpose([x, w, b], kernel_shape=3, strides=2, pads=1, data_format="NHWC", algorithm="native")

    xs = jax.device_put(x, NamedSharding(mesh, spec))
    check_sharded(f, (x, w, b), (xs, w, b))
    grad = jax.grad(loss_of(f), (0, 1, 2))
    compiled = jax.jit(grad).lower(xs, w, b).compile()
    local = 16 // shards
    calls = native_calls(compiled.as_text())
    assert calls["forward_bias"] == [f"f64[{local},11,9,7,4]{{4,3,2,1,0}}"], calls
    assert calls["dx"] == [f"f64[{local},6,5,4,8]{{4,3,2,1,0}}"] and len(calls["dw"]) == 1, calls
    found = collectives_in(compiled.as_text())
    assert not found["all-gather"] and not found["all-to-all"] and found["all-reduce"], found
    sharded = compiled.memory_analysis()
    whole = jax.jit(grad).lower(x, w, b).compile().memory_analysis()
    x_bytes = x.size * 8
    assert whole.argument_size_in_bytes - sharded.argument_size_in_bytes == x_bytes - x_bytes // shards


@needs_kernels
def test_auto_mesh_kernels_bfloat16_weight_gradient_rounded_once():
    """bfloat16: the per-device weight-gradient sums are added in float32 and rounded once, so
    the sharded gradients equal the one-device ones exactly."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    shapes = [(16, 4, 8, 6, 4), (4, 3, 4, 4, 4), 6]
    x, w, b = (jnp.asarray(random(s, 23 + i), jnp.bfloat16) for i, s in enumerate(shapes))

    def loss(x, w, b):
        y = conv_transpose([x, w, b], kernel_shape=4, strides=2, pads=1, group=2, algorithm="native")
        return jnp.sum(y.astype(jnp.float32) ** 2)

    grad = jax.jit(jax.grad(loss, (0, 1, 2)))
    for got, want in zip(grad(jax.device_put(x, NamedSharding(mesh, P("data"))), w, b), grad(x, w, b)):
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@needs_kernels
def test_auto_mesh_kernels_other_entries():
    """The batch split reached without device_put (jit's in_shardings), a regular convolution
    (jax_deconv.lax) and forward mode; a spatially sharded x is gathered first (correct, not split)."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    split = NamedSharding(mesh, P("data"))
    x, k = random((16, 4, 9, 9, 9), 30), random((8, 4, 3, 3, 3), 31)

    def conv(x, k):
        return dlax.conv_general_dilated(x, k, (2, 2, 2), "SAME", algorithm="native")

    grad = jax.grad(loss_of(conv), (0, 1))
    want = jax.jit(grad)(x, k)
    with_in_shardings = jax.jit(grad, in_shardings=(split, None))
    for got, expected in zip(with_in_shardings(x, k), want):
        assert_close(got, expected, F64)
    assert native_calls(with_in_shardings.lower(x, k).compile().as_text())["dx"] == ["f64[2,5,5,5,8]{4,3,2,1,0}"]
    tangent = jax.jit(lambda x, k: jax.jvp(lambda k: conv(x, k), (k,), (k,))[1])
    assert_close(tangent(jax.device_put(x, split), k), tangent(x, k), F64)
    xd = random((16, 4, 8, 9, 9), 32)
    check_sharded(conv, (xd, k), (jax.device_put(xd, NamedSharding(mesh, P(None, None, "data"))), k))


# --------------------------------------------------------------------------- explicit sharding, every gradient

# name: (mesh shape, mesh axes, x spec (NCHW), arguments); x (4, 4, 8, 8), weight k x k, bias
SHARDED = {
    "1 axis, height": ((8,), ("z",), P(None, None, "z"), dict(kernel_shape=4, strides=2, pads=1)),
    "2 axes, height on one": ((2, 4), ("a", "b"), P(None, None, "b"), dict(kernel_shape=4, strides=2, pads=1)),
    "2 axes, height on one, no halo rule": ((2, 4), ("a", "b"), P(None, None, "b"), dict(kernel_shape=3, strides=2)),
    "2 axes, batch and height": ((2, 4), ("a", "b"), P("a", None, "b"), dict(kernel_shape=3, strides=1, pads=1)),
    "2 axes, batch on one": ((2, 4), ("a", "b"), P("b"), dict(kernel_shape=3, strides=2, dilations=2)),
    "2 axes, height and width": ((2, 4), ("a", "b"), P(None, None, "b", "a"), dict(kernel_shape=4, strides=2, pads=1)),
    "2 axes, channels and height": ((2, 4), ("a", "b"), P(None, "a", "b"), dict(kernel_shape=2, strides=2)),
    "2 axes, height on both": ((2, 4), ("a", "b"), P(None, None, ("a", "b")), dict(kernel_shape=4, strides=2, pads=1)),
}


EVERY_ALGORITHM = ("1 axis, height", "2 axes, height on one")  # the other cases: two algorithms each (suite time)
SHARDED_RUNS = [(name, algorithm) for i, name in enumerate(SHARDED) for j, algorithm in enumerate(ALL_ALGORITHMS)
                if name in EVERY_ALGORITHM or (i + j) % len(ALL_ALGORITHMS) in (0, 1)]


def test_partitioner_bug_reproducer_reproduces_on_jax_0_10_2():
    """The weight-gradient bug of XLA's partitioner that jax_deconv routes around
    (jax_deconv._sharding.PARTITIONER_BUG, docs/multi-device.md): a convolution whose input is
    split along a spatial axis over one of two mesh axes gets twice its weight gradient. If a
    JAX release fixes it, this fails there: the page and the docstring must then say so."""
    from jax import lax

    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Auto,) * 2)
    x, w = np.ones((4, 4, 8, 4), np.float32), np.ones((4, 4, 3, 3), np.float32)

    @jax.jit
    def weight_grad(x, w):
        return jax.grad(lambda w: jnp.sum(lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)]) ** 2))(w)

    ratio = float(weight_grad(jax.device_put(x, NamedSharding(mesh, P(None, None, "b"))), w).sum()
                  / weight_grad(x, w).sum())
    if jax.__version__ == "0.10.2":
        assert ratio == 2.0, ratio
    # the same conditions through jax_deconv's regular convolution on the native kernels: exact
    if native_kernels() is not None:
        def ours(x, w):
            return jax.grad(lambda w: jnp.sum(dlax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)]) ** 2))(w)

        got = jax.jit(ours)(jax.device_put(x, NamedSharding(mesh, P(None, None, "b"))), w)
        np.testing.assert_allclose(got, weight_grad(x, w), rtol=1e-6)


@pytest.mark.parametrize("name,algorithm", SHARDED_RUNS)
def test_explicitly_sharded_every_gradient(name, algorithm):
    """Forward, dx, dw and db of a sharded x equal the unsharded call's, under jit and eagerly.

    "2 axes, height on one" is where XLA's partitioner doubles a convolution's weight
    gradient (jax_deconv._sharding.PARTITIONER_BUG); no route may reach it.
    """
    shape, names, spec, args = SHARDED[name]
    mesh = jax.make_mesh(shape, names)
    k = args["kernel_shape"]
    x, w, b = random((4, 4, 8, 8), 20), random((4, 3, k, k), 21), random(3, 22)

    def f(x, w, b):
        return conv_transpose([x, w, b], **args, algorithm=algorithm)

    xs = jax.device_put(x, NamedSharding(mesh, spec))
    check_sharded(f, (x, w, b), (xs, w, b))
    assert_close(f(xs, w, b), reference(x, w, b, **args), F64)  # eagerly too
    out = jax.jit(f)(xs, w, b)
    for i, entry in enumerate(spec):  # the output keeps x's batch and spatial sharding where sizes divide
        names = (entry,) if isinstance(entry, str) else entry or ()
        if names and i != 1 and out.shape[i] % math.prod(mesh.shape[a] for a in names) == 0:
            assert out.sharding.spec[i] == entry, (out.sharding.spec, spec)


def test_depth_split_exchanges_halos_only():
    """A spatial split where the halo rule holds sends slices to neighbours, gathers nothing."""
    mesh = jax.make_mesh((8,), ("z",))
    x, w = random((1, 8, 32, 6, 6), 3), random((8, 4, 4, 4, 4), 4)

    def f(x, w):
        return conv_transpose([x, w], **A)

    xs = jax.device_put(x, NamedSharding(mesh, P(None, None, "z")))
    assert jax.jit(f)(xs, w).sharding.spec[2] == "z"
    forward = collectives(f, xs, w)
    assert forward["collective-permute"] and not forward["all-gather"], forward


def test_sharded_weight_and_bias_are_gathered():
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    x, w, b = random((4, 4, 8, 8), 23), random((4, 4, 3, 3), 24), random(4, 25)

    def f(x, w, b):
        return conv_transpose([x, w, b], kernel_shape=3, strides=2, algorithm="conv")

    args = (jax.device_put(x, NamedSharding(mesh, P("a"))), jax.device_put(w, NamedSharding(mesh, P("b"))),
            jax.device_put(b, NamedSharding(mesh, P("b"))))
    check_sharded(f, (x, w, b), args)


def test_inside_set_mesh_with_bias_and_plain_grad():
    """Inside ``jax.set_mesh``: a batch-sharded layer with a bias, eagerly and under plain ``jax.grad``."""
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    x, w, b = random((8, 4, 5, 5), 26), random((4, 3, 3, 3), 27), random(3, 28)

    def f(x, w, b):
        return conv_transpose([x, w, b], kernel_shape=3, strides=2)

    with jax.set_mesh(mesh):
        xs = jax.device_put(x, P(("a", "b")))
        assert_close(f(xs, w, b), reference(x, w, b, kernel_shape=3, strides=2), F64)
        got = jax.grad(loss_of(f), (0, 1, 2))(xs, w, b)
    for g, want in zip(got, jax.grad(loss_of(f), (0, 1, 2))(x, w, b)):
        assert_close(g, want, F64)


# --------------------------------------------------------------------------- spatial, explicit halos

HALO_CASES = {
    # name: (x shape, weight shape, arguments, sharded spatial axis)
    "A NCHW depth": ((2, 8, 16, 5, 5), (8, 4, 4, 4, 4), A, 0),
    "A NHWC height": ((1, 5, 16, 4, 8), (8, 4, 4, 4, 4), dict(A, data_format="NHWC"), 1),
    "k3 s2 p1 op1 g4": ((1, 8, 16, 4, 4), (8, 2, 3, 3, 3), dict(kernel_shape=3, strides=2, pads=1,
                                                               output_padding=(1, 1, 1), group=4), 0),
    "k3 s1 p1": ((1, 4, 16, 4, 4), (4, 4, 3, 3, 3), dict(kernel_shape=3, pads=1), 0),
    "k2 s2": ((1, 4, 16, 3, 3), (4, 2, 2, 2, 2), dict(kernel_shape=2, strides=2), 0),
    "k6 s3 pads (3,1,0 | 0,2,3)": ((1, 4, 16, 3, 3), (4, 2, 6, 6, 6), dict(kernel_shape=6, strides=3,
                                                                          pads=(3, 1, 0, 0, 2, 3)), 0),
    "SAME k5 d2 2-D": ((1, 3, 32, 5), (3, 2, 5, 5), dict(kernel_shape=5, dilations=2, padding="SAME",
                                                         output_shape=(32, 5)), 0),
    "k1 s2 SAME_UPPER 1-D": ((2, 3, 16), (3, 2, 1), dict(kernel_shape=1, strides=2, padding="SAME_UPPER",
                                                         output_padding=(1,), output_shape=(32,)), 0),
}


def halo_layer(mesh, x_ndim, args, axis, algorithm="auto"):
    spec = [None] * x_ndim
    spec[(2 if args.get("data_format", "NCHW") == "NCHW" else 1) + axis] = "z"
    layer = functools.partial(conv_transpose_halo, axis_name="z", axis=axis, algorithm=algorithm, **args)
    shard = jax.shard_map(lambda x, w, b: layer([x, w, b]), mesh=mesh, in_specs=(P(*spec), P(), P()),
                          out_specs=P(*spec))
    return shard, NamedSharding(mesh, P(*spec))


@pytest.mark.parametrize("name", HALO_CASES)
def test_halo_exchange_equals_one_device(name):
    x_shape, w_shape, args, axis = HALO_CASES[name]
    mesh = jax.make_mesh((8,), ("z",))
    nchw = args.get("data_format", "NCHW") == "NCHW"
    x, w = random(x_shape, 5), random(w_shape, 6)
    b = random(w_shape[1 if nchw else -1] * args.get("group", 1), 7)
    algorithm = ALGORITHMS[len(name) % 2]
    sharded, x_sharding = halo_layer(mesh, len(x_shape), args, axis, algorithm)

    def plain(x, w, b):
        return conv_transpose([x, w, b], **args, algorithm=algorithm)

    xs = jax.device_put(x, x_sharding)
    assert_close(jax.jit(sharded)(xs, w, b), reference(x, w, b, **args), F64)
    grads, want = jax.jit(jax.grad(loss_of(sharded), (0, 1, 2)))(xs, w, b), jax.grad(loss_of(plain), (0, 1, 2))(x, w, b)
    for got, expected in zip(grads, want):
        assert_close(got, expected, F64)


def test_halo_exchange_moves_only_halos():
    mesh = jax.make_mesh((8,), ("z",))
    x, w, b = random((1, 8, 32, 6, 6), 8), random((8, 4, 4, 4, 4), 9), random(4, 10)
    sharded, x_sharding = halo_layer(mesh, 5, A, 0)
    xs = jax.device_put(x, x_sharding)
    forward = collectives(sharded, xs, w, b)
    # one slice (N, C, 1, H, W) to each neighbour; nothing gathered, nothing reduced
    assert forward["collective-permute"] == ["f64[1,8,1,6,6]{4,3,2,1,0}"] * 2, forward
    assert not forward["all-gather"] and not forward["all-reduce"] and not forward["all-to-all"], forward
    backward = collectives(jax.grad(loss_of(sharded), (0, 1, 2)), xs, w, b)
    assert not backward["all-gather"] and not backward["all-to-all"], backward
    assert len(backward["collective-permute"]) == 4  # the forward's two, and their transposes
    assert len(backward["all-reduce"]) >= 1  # the weight and bias gradients are summed over devices


def test_halo_on_a_batch_by_depth_mesh():
    mesh = jax.make_mesh((2, 4), ("data", "z"))
    x, w = random((4, 4, 16, 4, 4), 11), random((4, 2, 4, 4, 4), 12)
    layer = functools.partial(conv_transpose_halo, axis_name="z", **A)
    spec = P("data", None, "z")
    f = jax.shard_map(lambda x, w: layer([x, w]), mesh=mesh, in_specs=(spec, P()), out_specs=spec)
    y = jax.jit(f)(jax.device_put(x, NamedSharding(mesh, spec)), w)
    assert y.sharding.spec[:3] == ("data", None, "z")
    assert_close(y, reference(x, w, **A), F64)


def test_halo_sizes_and_errors():
    mesh = jax.make_mesh((8,), ("z",))
    assert halo_sizes_of((16,), (1, 1, 4), A) == (1, 1)
    assert halo_sizes_of((16,), (1, 1, 6), dict(kernel_shape=6, strides=3, pads=(3, 0))) == (0, 1)
    x = jax.device_put(jnp.ones((1, 1, 16)), NamedSharding(mesh, P(None, None, "z")))
    cases = [
        (dict(kernel_shape=3, strides=2), r"output must have stride \* input = 2 \* 16 positions .* give 33"),
        (dict(kernel_shape=9, pads=4), r"halos \(4 slices from the left, 4 from the right\) must fit .* block of 2"),
        (dict(kernel_shape=3, pads=1, axis=1), r"`axis` must be a spatial axis index in \[0, 1\); got 1"),
    ]
    for args, match in cases:
        w = jnp.ones((1, 1, args["kernel_shape"]))
        f = jax.shard_map(lambda x, w, args=args: conv_transpose_halo([x, w], axis_name="z", **args), mesh=mesh,
                          in_specs=(P(None, None, "z"), P()), out_specs=P(None, None, "z"))
        with pytest.raises(ValueError, match=match):
            f(x, w)


def halo_sizes_of(spatial, w_shape, args):
    plan = conv_transpose_plan((1, w_shape[0], *spatial), w_shape, **args)
    return halo_sizes(plan, 0)


def test_readme_halo_recipe_on_8_devices():
    """The halo recipe of docs/multi-device.md, as written, on the 8 simulated devices: depth-sharded and exact."""
    ns = recipe("halo")
    y, x, w, b = ns["y"], ns["x"], ns["w"], ns["b"]
    assert len(jax.devices()) == 8 and len(y.sharding.device_set) == 8
    assert_close(y, conv_transpose([np.asarray(x), w, b], kernel_shape=4, strides=2, pads=1))
    plain = jax.grad(lambda w: jnp.sum(conv_transpose([np.asarray(x), w, b], kernel_shape=4, strides=2, pads=1) ** 2))
    assert_close(ns["dw"], plain(w))  # the recipe's plain jax.grad, inside jax.set_mesh


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_halo_forward_mode(algorithm):
    """``jax.jvp`` through the halo exchange (forward mode inside shard_map) equals the unsharded JVP."""
    mesh = jax.make_mesh((8,), ("z",))
    x, w = random((1, 4, 16, 4, 4), 30), random((4, 2, 4, 4, 4), 31)
    sharded, x_sharding = halo_layer(mesh, 5, A, 0, algorithm)
    b = np.zeros(2)
    xs = jax.device_put(x, x_sharding)
    got = jax.jit(lambda x, w: jax.jvp(lambda x, w: sharded(x, w, b), (x, w), (x, w))[1])(xs, w)
    want = jax.jvp(lambda x, w: conv_transpose([x, w], **A, algorithm=algorithm), (x, w), (x, w))[1]
    assert_close(got, want, F64)
