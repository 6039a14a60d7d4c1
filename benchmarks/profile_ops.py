"""Where the time of one benchmark layer goes: XLA's own per-op profile of our compiled call.

    python benchmarks/profile_ops.py A [--dtype float32] [--mode forward|train] [--layout NHWC]
                                       [--algorithm auto] [--calls 10] [--top 12]

Runs the layer (a config of ``python benchmarks/run.py``) ``--calls`` times under
``jax.profiler``, reads the trace back with ``jax.profiler.ProfileData`` and prints the ops
(XLA fusions, dots, GPU kernels) that took the most time per call, each with its result
shape from the optimised HLO. Times are summed over threads, so on CPU they can add up to
more than the wall time. ``--mode train`` profiles ``value_and_grad`` of a non-linear loss.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from suite import CONFIGS, _shapes, ours

import jax_deconv


def op_times(fn, args, calls: int) -> collections.Counter:
    """Milliseconds per call of every XLA op (host threads and device streams) in a profile."""
    jax.block_until_ready(fn(*args))
    totals: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        for _ in range(calls):
            jax.block_until_ready(fn(*args))
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        profile = jax.profiler.ProfileData.from_file(path)
    for plane in profile.planes:
        on_device = plane.name.startswith("/device:")
        for line in plane.lines:
            if not (on_device or line.name.startswith("tf_XLA")):
                continue  # Python and runtime bookkeeping
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "end:")):
                    continue
                totals[event.name] += event.duration_ns / 1e6 / calls
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=[c.name for c in CONFIGS])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--mode", default="forward", choices=["forward", "train"])
    parser.add_argument("--layout", default="NHWC", choices=["NCHW", "NHWC"])
    parser.add_argument("--algorithm", default="auto", choices=jax_deconv.ALGORITHMS)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    a = parser.parse_args(argv)
    cfg = next(c for c in CONFIGS if c.name == a.config)
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(s), a.dtype) for s in _shapes(cfg, a.layout))
    layer = ours(cfg, a.layout, a.algorithm)
    if a.mode == "train":
        fn = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.square(layer(x, w).astype(jnp.float32))), (0, 1)))
    else:
        fn = jax.jit(layer)
    text = fn.lower(x, w).compile().as_text()
    shapes = dict(re.findall(r"%(\S+) = (\S+|\([^)]*\)) ", text))
    totals = op_times(fn, (x, w), a.calls)
    print(f"{cfg.name} ({cfg.describe()}) {a.dtype} {a.mode} {a.layout} algorithm={a.algorithm} "
          f"on {jax.devices()[0].device_kind}: ms per call, by op")
    for name, ms in totals.most_common(a.top):
        print(f"  {ms:9.3f}  {name:40s} {shapes.get(name, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
