"""One device against 8: time and per-device memory of a sharded 3-D transposed convolution.

    python benchmarks/sharding.py [--devices 8] [--out benchmarks/results/sharding_cpu.jsonl]
    python benchmarks/sharding.py --processes 2 [--out ...]   # the 8 devices in 2 processes

On a CPU host the devices are simulated (``--xla_force_host_platform_device_count``, set here
before JAX starts), so the 8 "devices" share the host's cores: the times show the overhead of
partitioning and communication, not a speed-up. The memory columns are what matters there:
XLA's per-device estimate for the compiled program (arguments + outputs + temporaries), and
the bytes each device sends through collectives (read from the partitioned HLO).

With ``--processes P`` the script starts itself P times, one JAX process each with
``devices / P`` CPU devices (``jax.distributed`` with a local coordinator, gloo collectives), as
one would on P hosts; every mesh then spans the processes. Process 0 prints and writes the rows.

Variants (every answer is checked against the one-device result first):

* ``1 device``: plain ``jit``.
* ``batch``: the batch split over the devices (explicit sharding; each device runs its own
  examples under ``shard_map``).
* ``batch, Auto axes``: the same split on a mesh of ``AxisType.Auto`` axes (plain ``jit`` on
  sharded arrays): XLA's partitioner splits the native kernels' calls along the batch.
* ``depth, sharded x``: the depth axis split in x's type (explicit axes) and ``conv_transpose``
  called as usual: it runs each device's block under ``shard_map`` with a halo exchange.
* ``depth, XLA (Auto axes)``: the depth axis split on a mesh of ``AxisType.Auto`` axes, where
  XLA's SPMD partitioner places the op (on a one-axis mesh its weight gradient is right; see
  docs/multi-device.md on meshes with more axes).
* ``depth, halo``: the depth axis split; :func:`jax_deconv.conv_transpose_halo` under
  ``shard_map`` exchanges one-slice halos with ``ppermute``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import sys
import time

DEVICES = int(sys.argv[sys.argv.index("--devices") + 1]) if "--devices" in sys.argv else 8
PROCESS = int(sys.argv[sys.argv.index("--process-id") + 1]) if "--process-id" in sys.argv else None
if PROCESS is None:
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={DEVICES}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jax_deconv import conv_transpose, conv_transpose_halo  # noqa: E402

if PROCESS is not None:  # one of --processes P: join the others before anything else uses JAX
    _COUNT = int(sys.argv[sys.argv.index("--processes") + 1])
    jax.config.update("jax_num_cpu_devices", DEVICES // _COUNT)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{sys.argv[sys.argv.index('--port') + 1]}", num_processes=_COUNT,
                               process_id=PROCESS)

LAYER = dict(kernel_shape=4, strides=2, pads=1)
BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2}


def sent_bytes(text: str) -> dict[str, int]:
    """Bytes per device in each kind of collective of a partitioned HLO module."""
    sent: dict[str, int] = {}
    for shapes, kind in re.findall(r"= (\S+|\([^)]*\)) (collective-permute|all-gather|all-reduce|all-to-all)"
                                   r"(?:-start)?\(", text):
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shapes):
            count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            sent[kind] = sent.get(kind, 0) + count * BYTES.get(dtype, 4)
    return sent


def plain(x, w):
    return conv_transpose([x, w], **LAYER)


def with_mode(mode, f):
    """``f`` itself, or a training step: ``value_and_grad`` of a non-linear loss."""
    if mode == "forward":
        return f
    return jax.value_and_grad(lambda x, w: jnp.mean(jnp.tanh(f(x, w))), (0, 1))


def host(value) -> np.ndarray:
    """A (possibly multi-process) array's whole value."""
    if getattr(value, "is_fully_addressable", True):
        return np.asarray(value)
    from jax.experimental import multihost_utils

    if value.is_fully_replicated:
        return np.asarray(value.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def place(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """``value`` as an array of ``sharding``, each process giving its own blocks."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def measure(name, fn, args, reference, repeats):
    jitted = jax.jit(fn)
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    out = jitted(*args)
    got = out[0] if isinstance(out, tuple) else out
    want = reference[0] if isinstance(reference, tuple) else reference
    err = float(np.max(np.abs(host(got) - host(want))))
    scale = float(np.max(np.abs(host(want))))
    assert err <= 1e-4 * (1 + scale), f"{name}: max error {err}"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - start)
    mem = compiled.memory_analysis()
    per_device = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    return dict(variant=name, median_ms=1e3 * statistics.median(times), compile_s=compile_s,
                per_device_mib=per_device / 2**20, temp_mib=mem.temp_size_in_bytes / 2**20,
                sent_mib={k: v / 2**20 for k, v in sent_bytes(compiled.as_text()).items()}, max_err=err)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs=2, default=(32, 16))
    parser.add_argument("--size", type=int, default=32, help="input depth = height = width")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None, help="JSON lines file")
    parser.add_argument("--processes", type=int, default=1, help="JAX processes sharing the devices")
    parser.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.processes > 1 and a.process_id is None:
        return launch(a.processes)
    if jax.device_count() < a.devices:
        print(f"only {jax.device_count()} devices; set XLA_FLAGS before starting", file=sys.stderr)
        return 1
    lead = jax.process_index() == 0
    where = f"{a.devices} over {a.processes} processes" if a.processes > 1 else str(a.devices)
    mesh = jax.make_mesh((a.devices,), ("d",))
    auto = jax.make_mesh((a.devices,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    one = jax.local_devices()[0]
    c_in, c_out = a.channels
    rng = np.random.default_rng(0)
    w_np = (rng.standard_normal((c_in, c_out, 4, 4, 4)) * 0.05).astype(np.float32)
    w = jax.device_put(w_np, one)
    rows = []
    for mode in ("forward", "forward+backward"):
        for batch, label in ((a.batch, "batch"), (1, "depth")):
            x_np = rng.standard_normal((batch, c_in, a.size, a.size, a.size)).astype(np.float32)
            x = jax.device_put(x_np, one)
            whole_w, auto_w = place(w_np, NamedSharding(mesh, P())), place(w_np, NamedSharding(auto, P()))

            wrap = functools.partial(with_mode, mode)
            reference = jax.jit(wrap(plain))(x, w)
            variants = [("1 device", wrap(plain), (x, w))]
            if label == "batch":
                xs = place(x_np, NamedSharding(mesh, P("d")))
                xa = place(x_np, NamedSharding(auto, P("d")))
                variants += [(f"batch over {where}", wrap(plain), (xs, whole_w)),
                             (f"batch over {where}, Auto axes", wrap(plain), (xa, auto_w))]
            else:
                split = P(None, None, "d")
                xs = place(x_np, NamedSharding(mesh, split))
                halo = jax.shard_map(lambda x, w: conv_transpose_halo([x, w], axis_name="d", **LAYER), mesh=mesh,
                                     in_specs=(split, P()), out_specs=split)
                xa = place(x_np, NamedSharding(auto, split))
                variants += [(f"depth over {where}, sharded x", wrap(plain), (xs, whole_w)),
                             (f"depth over {where}, XLA (Auto axes)", wrap(plain), (xa, auto_w)),
                             (f"depth over {where}, halo", wrap(halo), (xs, whole_w))]
            for name, fn, args in variants:
                row = dict(mode=mode, x_shape=list(x.shape), **measure(name, fn, args, reference, a.repeats))
                rows.append(row)
                sent = ", ".join(f"{k} {v:.2f}" for k, v in row["sent_mib"].items()) or "none"
                if lead:
                    print(f"{mode:17s} x{tuple(x.shape)!s:22s} {name:44s} {row['median_ms']:9.2f} ms  "
                          f"per-device {row['per_device_mib']:8.1f} MiB (temp {row['temp_mib']:7.1f})  "
                          f"sent/device MiB: {sent}", flush=True)
    if a.out and lead:
        with open(a.out, "a" if a.processes > 1 else "w") as f:
            meta = dict(jax=jax.__version__, backend=jax.default_backend(), devices=a.devices,
                        processes=a.processes, device_kind=jax.devices()[0].device_kind, layer=LAYER)
            for row in rows:
                f.write(json.dumps(dict(meta, **row)) + "\n")
    return 0


def launch(processes: int) -> int:
    """Run this script as ``processes`` JAX processes (same arguments) and wait for all."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--process-id", str(i), "--port", str(port)],
                              env=env) for i in range(processes)]
    codes = [p.wait() for p in procs]
    return max(abs(c) for c in codes)


if __name__ == "__main__":
    sys.exit(main())
