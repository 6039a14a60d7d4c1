"""Data-parallel training across processes (one per host), checked against one device.

JAX's multi-process SPMD: every process runs this same script; ``jax.distributed.initialize``
joins them, and a mesh of *all* their devices spans the processes. Each process loads only its
own share of the batch (``jax.make_array_from_process_local_data``); ``jax.jit`` of the training
step, on arrays placed on a mesh of ``AxisType.Auto`` axes, runs everywhere at once: on CPU the
native kernels' calls are split along the batch (each device its own examples), and the weight
and bias gradients are summed by all-reduces that cross the process boundary.

Run on one machine (starts 2 processes of itself, 4 CPU devices each)::

    python examples/multi_process.py

or on each of P hosts (the coordinator is host 0's address; on SLURM or Cloud TPU,
``jax.distributed.initialize()`` finds them itself)::

    python examples/multi_process.py --processes P --process-id I --coordinator HOST0:12355

A few seconds. The last line says whether the trained weights equal a one-device run's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

import numpy as np

STEPS, LEARNING_RATE = 5, 0.05


def decoder(params, x):
    """Two transposed convolutions (NDHWC): 8 -> 4 channels, doubling the volume, then 4 -> 1."""
    from jax_deconv import conv3d_transpose

    h = conv3d_transpose([x, params["w1"], params["b1"]], kernel_shape=4, strides=2, pads=1, data_format="NHWC")
    h = h * (h > 0)
    return conv3d_transpose([h, params["w2"], params["b2"]], kernel_shape=3, pads=1, data_format="NHWC")


def data(batch: int, size: int):
    """The whole data set, the same in every process (each then keeps its own examples)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, size, 8)).astype(np.float32)
    target = rng.standard_normal((batch, 2 * size, 2 * size, 2 * size, 1)).astype(np.float32)
    params = {"w1": 0.1 * rng.standard_normal((8, 4, 4, 4, 4)), "b1": np.zeros(4),
              "w2": 0.1 * rng.standard_normal((4, 3, 3, 3, 1)), "b2": np.zeros(1)}
    return x, target, {k: v.astype(np.float32) for k, v in params.items()}


def train(params, x, target):
    """``STEPS`` steps of gradient descent on the mean squared error (jitted once)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def step(params, x, target):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((decoder(p, x) - target) ** 2))(params)
        return loss, jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)

    for _ in range(STEPS):
        loss, params = step(params, x, target)
    return loss, params


def worker(process: int, processes: int, coordinator: str, devices_per_process: int) -> int:
    import jax

    jax.config.update("jax_num_cpu_devices", devices_per_process)  # CPU: devices in this process
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU: collectives between processes
    jax.distributed.initialize(coordinator, num_processes=processes, process_id=process)
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    x_all, target_all, params = data(batch=2 * jax.device_count(), size=6)
    mine = slice(process * len(x_all) // processes, (process + 1) * len(x_all) // processes)
    batch = NamedSharding(mesh, P("data"))
    x = jax.make_array_from_process_local_data(batch, x_all[mine])  # this process's examples only
    target = jax.make_array_from_process_local_data(batch, target_all[mine])
    replicated = jax.tree.map(lambda p: jax.make_array_from_process_local_data(NamedSharding(mesh, P()), p), params)
    print(f"process {process}: {jax.local_device_count()} of {jax.device_count()} devices, "
          f"examples {mine.start}..{mine.stop - 1} of {len(x_all)}", flush=True)

    loss, trained = train(replicated, x, target)

    def whole(value):  # a global array's value, in every process
        if value.is_fully_replicated:
            return np.asarray(value.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))

    trained = {k: whole(v) for k, v in trained.items()}

    one = jax.local_devices()[0]  # the same training on one device with the whole batch
    want_loss, want = train(jax.device_put(params, one), jax.device_put(x_all, one), jax.device_put(target_all, one))
    error = max(float(np.max(np.abs(trained[k] - np.asarray(want[k])))) for k in want)
    loss_value = float(whole(loss))
    print(f"process {process}: loss {loss_value:.6f} (one device {float(want_loss):.6f}), "
          f"largest weight difference {error:.1e}", flush=True)
    jax.distributed.shutdown()
    ok = error <= 1e-5 and abs(loss_value - float(want_loss)) <= 1e-5
    if process == 0:
        print(f"the multi-process training {'matches' if ok else 'DIFFERS FROM'} one device "
              f"({processes} processes, {STEPS} steps)", flush=True)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--process-id", type=int, default=None, help="this process (none: start them all here)")
    parser.add_argument("--coordinator", default=None, help="host:port of process 0")
    parser.add_argument("--devices-per-process", type=int, default=4, help="CPU devices in each process")
    a = parser.parse_args()
    if a.process_id is not None:
        return worker(a.process_id, a.processes, a.coordinator or "localhost:12355", a.devices_per_process)
    with socket.socket() as s:  # start every process on this machine, with a free local port
        s.bind(("localhost", 0))
        coordinator = f"localhost:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, __file__, "--processes", str(a.processes), "--process-id", str(i),
                               "--coordinator", coordinator, "--devices-per-process", str(a.devices_per_process)],
                              env=env) for i in range(a.processes)]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return max(abs(c) for c in codes)


if __name__ == "__main__":
    sys.exit(main())
