"""One of the processes of ``test_multiprocess.py``: ``python multiprocess_worker.py ID COUNT PORT``.

Every process of the run executes this file: JAX's multi-process SPMD over ``COUNT`` processes of
4 CPU devices each (``jax.distributed`` with a coordinator on ``localhost:PORT``, gloo collectives),
so a mesh of all the devices spans the process boundary. Each case computes a sharded result on
that mesh and compares it, forward and every gradient in float64, with the independent NumPy
reference of ``reference.py`` (a layer) or with the same step on this process's first device
alone (a training step with Adam). It prints one ``CASE name: max error`` line per case and
exits non-zero if any differ.
"""

from __future__ import annotations

import re
import sys

import jax
import numpy as np

PROCESS, COUNT, PORT = (int(v) for v in sys.argv[1:4])
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
jax.distributed.initialize(f"localhost:{PORT}", num_processes=COUNT, process_id=PROCESS,
                           initialization_timeout=120)

import jax.numpy as jnp  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from reference import reference, reference_vjp  # noqa: E402

from jax_deconv import conv_transpose, conv_transpose_halo, native_kernels  # noqa: E402

try:
    import optax
except ImportError:  # an optax-less install: the update is plain gradient descent
    optax = None

TOLERANCE = 1e-11
ONE = jax.local_devices()[0]
failures: list[str] = []


def random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """``value`` (whole, in every process) as a global array: each process gives its blocks."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def host(value: jax.Array) -> np.ndarray:
    """A global array's whole value, in every process."""
    if value.is_fully_replicated:
        return np.asarray(value.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def on_one_device(fn, *args):
    """``fn`` on this process's first device alone (the one-process answer)."""
    return jax.jit(fn)(*(jax.device_put(a, ONE) for a in args))


def compare(case: str, got, want) -> None:
    errors = [float(np.max(np.abs(host(g) - np.asarray(w)) / (1 + np.abs(np.asarray(w)))))
              for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
    error = max(errors)
    print(f"CASE {case}: {len(errors)} arrays, max error {error:.2e}", flush=True)
    if not error <= TOLERANCE:
        failures.append(f"{case}: {error:.2e}")


def gradients_of(f):
    """``(x, w, b, gy) ->`` the gradients of ``sum(gy * f(x, w, b))`` in x, w and b."""
    return jax.grad(lambda x, w, b, gy: jnp.sum(gy * f(x, w, b)), (0, 1, 2))


def reference_gradients(x, w, gy, channel_axis, **args):
    dx, dw = reference_vjp(x, w, gy, **args)
    return dx, dw, gy.sum(axis=tuple(i for i in range(gy.ndim) if i != channel_axis))


def collectives(compiled_text: str) -> dict[str, int]:
    return {k: len(re.findall(rf"{k}(?:-start)?\(", compiled_text)) for k in ("all-gather", "all-reduce")}


# --------------------------------------------------------------------------- a training step


def decoder(params, x):
    """A small 3-D decoder (NDHWC): two transposed convolutions with biases, ReLU between."""
    h = conv_transpose([x, params["w1"], params["b1"]], kernel_shape=4, strides=2, pads=1, data_format="NHWC")
    h = jax.nn.relu(h)
    return conv_transpose([h, params["w2"], params["b2"]], kernel_shape=3, strides=1, pads=1, data_format="NHWC")


def train_step(params, x, target):
    """Mean squared error, its gradients and one optimiser update (Adam; plain descent without optax)."""
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((decoder(p, x) - target) ** 2))(params)
    if optax is not None:
        optimiser = optax.adam(1e-2)
        updates, _ = optimiser.update(grads, optimiser.init(params), params)
        new = optax.apply_updates(params, updates)
    else:
        new = jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads)
    return loss, grads, new


def case_training_step() -> None:
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    batch = 2 * jax.device_count()
    x, target = random((batch, 4, 4, 4, 6), 1), random((batch, 8, 8, 8, 3), 2)
    params = {"w1": random((6, 4, 4, 4, 5), 3), "b1": random(5, 4), "w2": random((5, 3, 3, 3, 3), 5),
              "b2": random(3, 6)}
    split = NamedSharding(mesh, P("data"))
    xs, ts = global_array(x, split), global_array(target, split)
    ps = jax.tree.map(lambda p: global_array(p, NamedSharding(mesh, P())), params)
    step = jax.jit(train_step)
    compare("training step, batch split over both processes (Auto mesh)", step(ps, xs, ts),
            on_one_device(train_step, params, x, target))
    text = step.lower(ps, xs, ts).compile().as_text()
    found = collectives(text)
    if native_kernels() is not None:
        # the kernels run on each device's examples: nothing gathered, the weight gradients summed
        local = "f64[2,8,8,8,5]"  # the first layer's output: 2 examples per device
        ok = found["all-gather"] == 0 and found["all-reduce"] >= 1 and local in text and "jax_deconv_forward" in text
        print(f"CASE training step HLO: {found}, per-device kernel output {local} present: {local in text}", flush=True)
        if not ok:
            failures.append(f"training step HLO: {found}")


# --------------------------------------------------------------------------- the halo split


def case_halo_across_processes() -> None:
    """A volume split along depth over all devices: the halo exchange between the last device
    of process 0 and the first of process 1 crosses the process boundary."""
    mesh = jax.make_mesh((jax.device_count(),), ("z",))
    depth = 4 * jax.device_count()
    x, w, b = random((2, 8, depth, 6, 6), 7), random((8, 4, 4, 4, 4), 8), random(4, 9)
    args = dict(kernel_shape=4, strides=2, pads=1)
    layer = jax.shard_map(lambda x, w, b: conv_transpose_halo([x, w, b], axis_name="z", axis=0, **args), mesh=mesh,
                          in_specs=(P(None, None, "z"), P(), P()), out_specs=P(None, None, "z"))
    xs = global_array(x, NamedSharding(mesh, P(None, None, "z")))
    ws, bs = (global_array(v, NamedSharding(mesh, P())) for v in (w, b))

    y = reference(x, w, b, **args)
    gy = random(y.shape, 10)
    gys = global_array(gy, NamedSharding(mesh, P(None, None, "z")))
    compare("halo split: forward", jax.jit(layer)(xs, ws, bs), y)
    compare("halo split: gradients in x, weight, bias",
            jax.jit(gradients_of(layer))(xs, ws, bs, gys), reference_gradients(x, w, gy, 1, **args))


# --------------------------------------------------------------------------- explicit sharding


def case_explicit_sharding() -> None:
    mesh = jax.make_mesh((COUNT, 4), ("hosts", "local"), axis_types=(AxisType.Explicit,) * 2)
    x, w, b = random((4 * COUNT, 4, 5, 6, 4), 11), random((4, 3, 4, 4, 4), 12), random(6, 13)
    args = dict(kernel_shape=4, strides=2, pads=1, group=2)

    def f(x, w, b):
        return conv_transpose([x, w, b], **args)

    batch = NamedSharding(mesh, P(("hosts", "local")))
    xs = global_array(x, batch)
    ws, bs = (global_array(v, NamedSharding(mesh, P())) for v in (w, b))
    y = reference(x, w, b, **args)
    gy = random(y.shape, 14)
    compare("explicit sharding: forward", jax.jit(f)(xs, ws, bs), y)
    compare("explicit sharding: gradients in x, weight, bias",
            jax.jit(gradients_of(f))(xs, ws, bs, global_array(gy, batch)),
            reference_gradients(x, w, gy, 1, **args))


for case in (case_training_step, case_halo_across_processes, case_explicit_sharding):
    case()
print(f"PROCESS {PROCESS}: {'FAILED ' + '; '.join(failures) if failures else 'all cases agree'}", flush=True)
jax.distributed.shutdown()
sys.exit(1 if failures else 0)
