"""Benchmark suite: ``python benchmarks/run.py`` (``--help`` lists the options and configs).

Realistic 1-D/2-D/3-D decoder layers, float32 and bfloat16, forward and forward+backward
(``value_and_grad`` of a non-linear loss, so XLA cannot drop the forward), on whatever
backend JAX sees. Baselines measured in the same run when available: PyTorch (contiguous and
channels-last) and ``jax.lax.conv_transpose`` (the plain lhs-dilated lowering). Every answer,
ours included, is checked against :func:`oracle` (the lhs-dilated convolution, independent of
jax_deconv) before it is timed; rows whose repeats disagree are flagged and get no ratio.
Output: a table on stdout, JSON lines, a PNG chart
(if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_deconv
from jax_deconv import conv_transpose

PEAK_GFLOPS = {"NVIDIA H100 80GB HBM3": {"float32": 67e3, "bfloat16": 989e3}}


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    batch: int
    c_in: int
    c_out: int
    size: tuple[int, ...]
    kernel: int
    stride: int
    pads: int = 0
    output_padding: int = 0
    group: int = 1
    dilation: int = 1

    @property
    def ndim(self) -> int:
        return len(self.size)

    def args(self) -> dict:
        n = self.ndim
        return dict(kernel_shape=self.kernel, strides=self.stride, pads=self.pads, group=self.group,
                    dilations=self.dilation, output_padding=(self.output_padding,) * n if self.output_padding else None)

    def flops(self) -> float:
        """Multiply-adds x 2 of the forward: every input element times every tap and output channel."""
        return 2.0 * self.batch * self.c_in * (self.c_out // self.group) * math.prod(self.size) * self.kernel**self.ndim

    def describe(self) -> str:
        n = self.ndim
        text = f"N{self.batch} {self.c_in}->{self.c_out} {self.size[0]}^{n} k{self.kernel} s{self.stride}"
        text += f" p{self.pads}" if self.pads else ""
        text += f" op{self.output_padding}" if self.output_padding else ""
        text += f" d{self.dilation}" if self.dilation > 1 else ""
        return text + (f" g{self.group}" if self.group > 1 else "")


CONFIGS = [
    Config("A", 2, 32, 16, (16, 16, 16), 4, 2, pads=1),
    Config("B", 1, 64, 32, (24, 24, 24), 2, 2),
    Config("C", 4, 16, 16, (12, 12, 12), 3, 1, pads=1),
    Config("D", 1, 32, 32, (16, 16, 16), 3, 2, pads=1, output_padding=1, group=4),
    Config("E", 1, 4, 4, (8, 8, 8), 3, 2),
    Config("F", 1, 64, 32, (32, 32, 32), 4, 2, pads=1),
    Config("G2d", 8, 128, 64, (32, 32), 4, 2, pads=1),
    Config("H1d", 8, 256, 128, (256,), 4, 2, pads=1),
    # a 2-D and a 1-D layer of the kinds of B (k2 s2), C (stride 1) and D (grouped, k3 s2)
    Config("B2d", 8, 64, 32, (64, 64), 2, 2),
    Config("C2d", 8, 32, 32, (32, 32), 3, 1, pads=1),
    Config("D2d", 4, 64, 64, (32, 32), 3, 2, pads=1, output_padding=1, group=4),
    Config("B1d", 8, 128, 64, (512,), 2, 2),
    Config("C1d", 8, 64, 64, (512,), 3, 1, pads=1),
    Config("D1d", 8, 128, 128, (256,), 3, 2, pads=1, output_padding=1, group=4),
    # atrous: a dilation sharing a factor with the stride leaves 7 of the 8 phases empty
    Config("I", 1, 32, 32, (12, 12, 12), 3, 2, pads=2, output_padding=1, dilation=2),
    # depthwise (one channel per group): a 3-D upsampler and a 2-D stride-1 layer
    Config("J", 1, 32, 32, (16, 16, 16), 3, 2, pads=1, output_padding=1, group=32),
    Config("J2d", 8, 64, 64, (56, 56), 3, 1, pads=1, group=64),
]


# --------------------------------------------------------------------------- implementations


def _shapes(cfg: Config, layout: str):
    k = (cfg.kernel,) * cfg.ndim
    if layout == "NCHW":
        return (cfg.batch, cfg.c_in, *cfg.size), (cfg.c_in, cfg.c_out // cfg.group, *k)
    return (cfg.batch, *cfg.size, cfg.c_in), (cfg.c_in, *k, cfg.c_out // cfg.group)


def ours(cfg: Config, layout: str, algorithm: str) -> Callable:
    def f(x, w):
        return conv_transpose([x, w], **cfg.args(), data_format=layout, algorithm=algorithm)

    return f


def lax_conv_transpose(cfg: Config) -> Callable | None:
    """``jax.lax.conv_transpose`` (NCHW, Dragon/PyTorch weight layout); no groups."""
    if cfg.group != 1:
        return None
    n = cfg.ndim
    lo = cfg.dilation * (cfg.kernel - 1) - cfg.pads
    spec = "NC" + "DHW"[3 - n:]
    kspec = "OI" + "DHW"[3 - n:]

    def f(x, w):
        return lax.conv_transpose(x, w, (cfg.stride,) * n, [(lo, lo + cfg.output_padding)] * n,
                                  rhs_dilation=(cfg.dilation,) * n, dimension_numbers=(spec, kspec, spec),
                                  transpose_kernel=True)

    return f


def oracle(cfg: Config, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The answer from the definition's textbook lowering, independent of jax_deconv: a
    convolution of the stride-dilated input (``lhs_dilation``) with the flipped kernel, groups
    as feature groups, in float32 on the host (NCHW in and out)."""
    n, g, p = cfg.ndim, cfg.group, cfg.pads
    k = cfg.dilation * (cfg.kernel - 1) + 1  # the dilated kernel's extent
    c_in, cg_out = w.shape[0], w.shape[1]
    kernel = w.reshape(g, c_in // g, cg_out, *w.shape[2:]).swapaxes(1, 2).reshape(g * cg_out, c_in // g, *w.shape[2:])
    kernel = np.flip(kernel, axis=tuple(range(2, 2 + n)))
    spec = "NC" + "DHW"[3 - n:]
    with jax.default_device(jax.devices("cpu")[0]):
        y = lax.conv_general_dilated(
            jnp.asarray(x, jnp.float32), jnp.asarray(np.ascontiguousarray(kernel), jnp.float32), (1,) * n,
            [(k - 1 - p, k - 1 - p + cfg.output_padding)] * n, lhs_dilation=(cfg.stride,) * n,
            rhs_dilation=(cfg.dilation,) * n,
            dimension_numbers=(spec, "OI" + "DHW"[3 - n:], spec), feature_group_count=g,
            precision=lax.Precision.HIGHEST,
        )
    return np.asarray(y)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_fn(cfg: Config, channels_last: bool):
    torch = _torch()
    if torch is None:
        return None
    op = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
          3: torch.nn.functional.conv_transpose3d}[cfg.ndim]
    fmt = {2: torch.channels_last, 3: torch.channels_last_3d}.get(cfg.ndim) if channels_last else None
    if channels_last and fmt is None:
        return None

    def prepare(x, w):
        if fmt is not None:
            x, w = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
        return x, w

    def f(x, w):
        return op(x, w, stride=cfg.stride, padding=cfg.pads, output_padding=cfg.output_padding, groups=cfg.group,
                  dilation=cfg.dilation)

    return prepare, f


# --------------------------------------------------------------------------- timing


SPREAD_LIMIT = 0.25
"""A measurement whose repeats spread more than this (interquartile range / median), or taken
while the load average exceeded the machine's cores, is flagged ``disturbed``: its time is
recorded, but no ratio involving it is printed."""


def _median_ms(call: Callable[[], object], budget_s: float) -> tuple[float, int, float]:
    call()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget_s and len(times) < 50):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        if times[-1] > budget_s and len(times) >= 3:
            break
    q1, median, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return 1e3 * median, len(times), (q3 - q1) / median


def _disturbed(spread: float) -> bool:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return spread > SPREAD_LIMIT or load > (os.cpu_count() or 1) + 1


def time_jax(fn: Callable, x, w, mode: str, budget_s: float) -> dict:
    if mode == "forward":
        target = fn
    else:
        def target(x, w):
            return jax.value_and_grad(lambda x, w: jnp.sum(jnp.square(fn(x, w).astype(jnp.float32))),
                                      argnums=(0, 1))(x, w)
    jax.clear_caches()  # time a cold compile, not the answer check's cached one
    t = time.perf_counter()
    compiled = jax.jit(target).lower(x, w).compile()
    compile_s = time.perf_counter() - t
    memory = temp = None
    analysis = compiled.memory_analysis()
    if analysis is not None:
        temp = int(analysis.temp_size_in_bytes)
        memory = int(temp + analysis.output_size_in_bytes + analysis.argument_size_in_bytes)
    ms, reps, spread = _median_ms(lambda: jax.block_until_ready(compiled(x, w)), budget_s)
    return dict(ms=ms, reps=reps, spread=spread, disturbed=_disturbed(spread), compile_s=compile_s,
                peak_bytes=memory, temp_bytes=temp)


def time_torch(spec, x, w, mode: str, budget_s: float) -> dict:
    torch = _torch()
    prepare, f = spec
    x, w = prepare(x, w)
    if mode == "forward":
        def call():
            with torch.no_grad():
                f(x, w)
    else:
        x.requires_grad_(True)
        w.requires_grad_(True)

        def call():
            y = f(x, w)
            torch.autograd.grad((y.float() ** 2).sum(), (x, w))
    if torch.cuda.is_available():
        inner = call

        def call():
            inner()
            torch.cuda.synchronize()
    time.sleep(1.0)  # let JAX's thread pool go idle before torch runs
    ms, reps, spread = _median_ms(call, budget_s)
    peak = _torch_peak_bytes(call)
    time.sleep(1.0)  # and torch's OpenMP workers before JAX runs again
    return dict(ms=ms, reps=reps, spread=spread, disturbed=_disturbed(spread), compile_s=None, peak_bytes=peak,
                temp_bytes=None)


@contextlib.contextmanager
def _silenced_fds():
    """Point file descriptors 1 and 2 at /dev/null (the profiler's C++ side prints trace lines)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _torch_peak_bytes(call: Callable[[], object]) -> int | None:
    """Peak bytes of live tensors (inputs, outputs, workspace) during one ``call``.

    CUDA: ``max_memory_allocated``. CPU: the profiler's memory timeline (which counts the
    inputs too), so that it compares with XLA's arguments + outputs + temporaries.
    """
    torch = _torch()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        call()
        return int(torch.cuda.max_memory_allocated())
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _silenced_fds():
        warnings.simplefilter("ignore")  # the timeline export is marked experimental
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                         with_stack=True) as prof:
                call()
            path = os.path.join(tmp, "timeline.json")
            prof.export_memory_timeline(path, device="cpu")
            with open(path) as f:
                _, sizes = json.load(f)
        except Exception:  # an older or newer torch without this exporter: no number
            return None
    return int(max((sum(s) for s in sizes), default=0)) or None


# --------------------------------------------------------------------------- suite


def _same_layout_torch(name: str, result: dict) -> str | None:
    """The PyTorch row in the layout of our row ``name``: NCHW -> contiguous, NHWC ->
    channels_last (contiguous for 1-D, which has no channels-last format)."""
    if not name.startswith("ours"):
        return None
    if name.endswith("NHWC") and "torch channels_last" in result:
        return "torch channels_last"
    return "torch contiguous" if name.endswith("NCHW") or "torch channels_last" not in result else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _isa() -> str:
    """The processor's vector instruction sets that matter here: AVX-512 (and its BF16 dot
    products), AMX, or AVX2+FMA."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return platform.machine()
    found = [name for flag, name in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX"))
             if flag in flags]
    return ", ".join(found) if found else ("AVX2+FMA" if {"avx2", "fma"} <= flags else "no AVX2")


def _device_name() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", str(d))


def run(configs, dtypes, modes, algorithms, budget_s, out_path, slow_limit_s, baselines=("torch", "lax"),
        threads=None) -> list[dict]:
    torch = _torch() if "torch" in baselines else None
    if torch is not None and threads:
        torch.set_num_threads(threads)
    device = _device_name()
    env = dict(device=device, backend=jax.default_backend(), jax=jax.__version__,
               torch=None if torch is None else torch.__version__, jax_deconv=jax_deconv.__version__,
               date=datetime.date.today().isoformat(), machine=platform.machine(), cpu=_cpu_name(), isa=_isa(),
               native=jax_deconv.native_kernels(),
               cpus=os.cpu_count(), threads=threads or len(os.sched_getaffinity(0)))
    print(f"# {env}", flush=True)
    rows = []
    total = len(configs) * len(dtypes) * len(modes)
    step = 0
    for cfg in configs:
        for dtype in dtypes:
            rng = np.random.default_rng(0)
            x_nc, w_nc = (rng.standard_normal(s).astype(np.float32) for s in _shapes(cfg, "NCHW"))
            x_cl, w_cl = np.moveaxis(x_nc, 1, -1), np.moveaxis(w_nc, 1, -1)
            jd = jnp.dtype(dtype)
            rounded = [np.asarray(jnp.asarray(a, jd), np.float32) for a in (x_nc, w_nc)]  # the inputs all see
            ref = oracle(cfg, *rounded)
            tol = 1e-3 if dtype == "float32" else 5e-2
            scale = 1.0 + float(np.abs(ref).max())

            impls = {}
            for alg in algorithms:
                impls[f"ours[{alg}] NCHW"] = ("jax", ours(cfg, "NCHW", alg), "NCHW")
                impls[f"ours[{alg}] NHWC"] = ("jax", ours(cfg, "NHWC", alg), "NHWC")
            if "lax" in baselines and lax_conv_transpose(cfg) is not None:
                impls["lax.conv_transpose"] = ("jax", lax_conv_transpose(cfg), "NCHW")
            for cl in (False, True) if torch is not None else ():
                spec = torch_fn(cfg, cl)
                if spec is not None:
                    impls["torch " + ("channels_last" if cl else "contiguous")] = ("torch", spec, "NCHW")

            slow = set()
            for mode in modes:
                step += 1
                print(f"[{step}/{total}] {cfg.name} ({cfg.describe()}) {dtype} {mode}", flush=True)
                result = {}
                for name, (kind, fn, layout) in impls.items():
                    if name in slow:
                        continue
                    xs, ws = (x_nc, w_nc) if layout == "NCHW" else (x_cl, w_cl)
                    if kind == "jax":
                        xa, wa = jnp.asarray(xs, jd), jnp.asarray(ws, jd)
                        y = np.asarray(jax.jit(fn)(xa, wa), np.float32)
                    else:
                        tdt = getattr(torch, dtype)
                        dev = "cuda" if torch.cuda.is_available() else "cpu"
                        xa = torch.tensor(xs, dtype=tdt, device=dev)
                        wa = torch.tensor(ws, dtype=tdt, device=dev)
                        with torch.no_grad():
                            y = fn[1](*fn[0](xa, wa)).float().cpu().numpy()
                    if layout == "NHWC":
                        y = np.moveaxis(y, -1, 1)
                    err = float(np.abs(y - ref).max()) / scale if y.shape == ref.shape else float("inf")
                    if err > tol:
                        print(f"    {name}: WRONG ANSWER (relative error {err:.2g}); not timed", flush=True)
                        continue
                    t = time_jax(fn, xa, wa, mode, budget_s) if kind == "jax" else time_torch(
                        fn, xa, wa, mode, budget_s)
                    if t["ms"] > 1e3 * slow_limit_s:
                        slow.add(name)  # too slow to time in the next mode
                    gflops = cfg.flops() * (1 if mode == "forward" else 3) / (t["ms"] * 1e-3) / 1e9
                    peak = PEAK_GFLOPS.get(env["device"], {}).get(dtype)
                    result[name] = dict(t, gflops=gflops, peak_pct=None if peak is None else 100 * gflops / peak)
                best = min(((v["ms"], v["disturbed"]) for k, v in result.items() if k.startswith("ours")), default=None)
                call_bytes = jd.itemsize * (x_nc.size + w_nc.size + ref.size)
                for name, r in result.items():
                    row = dict(env, config=cfg.name, layer=cfg.describe(), dtype=dtype, mode=mode, impl=name,
                               call_bytes=call_bytes, **r)
                    if best and not best[1] and not r["disturbed"]:
                        row["ours_best_over_this"] = best[0] / r["ms"]
                    peer = result.get(_same_layout_torch(name, result))
                    if peer is not None and not (r["disturbed"] or peer["disturbed"]):
                        row["over_torch_same_layout"] = r["ms"] / peer["ms"]
                    rows.append(row)
                    extra = "" if r["compile_s"] is None else f"  compile {r['compile_s']:.2f}s"
                    mem = "" if not r["peak_bytes"] else f"  peak {r['peak_bytes'] / 2**20:.1f}MiB"
                    if r.get("temp_bytes") is not None:
                        mem += f" temp {r['temp_bytes'] / call_bytes:.2f}x(x+w+y)"
                    if r["disturbed"]:
                        ratio = f"DISTURBED (spread {r['spread']:.0%}): no ratio"
                    elif "over_torch_same_layout" in row:
                        ratio = f"this/torch same layout {row['over_torch_same_layout']:.2f}"
                    elif "ours_best_over_this" in row:
                        ratio = f"ours best/this {row['ours_best_over_this']:.2f}"
                    else:
                        ratio = "no ratio: our best row is disturbed"
                    print(f"    {name:24s} {r['ms']:9.3f} ms  {r['gflops']:8.1f} GFLOP/s  {ratio}{extra}{mem}",
                          flush=True)
                if out_path:
                    with open(out_path, "a") as fh:
                        for row in rows[-len(result):]:
                            fh.write(json.dumps(row) + "\n")
    return rows


def chart(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart")
        return
    groups = sorted({(r["config"], r["dtype"], r["mode"]) for r in rows})
    impls = sorted({r["impl"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 0.9), 5))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        values = []
        for g in groups:
            hit = [r["ms"] for r in rows if (r["config"], r["dtype"], r["mode"]) == g and r["impl"] == impl]
            values.append(hit[0] if hit else np.nan)
        ax.bar(np.arange(len(groups)) + j * width, values, width, label=impl)
    ax.set_xticks(np.arange(len(groups)) + 0.4)
    ax.set_xticklabels(["\n".join(g) for g in groups], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    r0 = rows[0]
    ax.set_title(f"conv_transpose on {r0['device']} ({r0['backend']}), jax {r0['jax']}, torch {r0['torch']}, "
                 f"{r0['date']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0])
    listing = "; ".join(f"{c.name}: {c}" for c in CONFIGS)
    parser.add_argument("--configs", nargs="*", default=[c.name for c in CONFIGS], choices=[c.name for c in CONFIGS],
                        help=f"layers to time (default: all). {listing}")
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--modes", nargs="*", default=["forward", "forward+backward"])
    parser.add_argument("--algorithms", nargs="*", default=["auto"], choices=jax_deconv.ALGORITHMS)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per measurement")
    parser.add_argument("--slow-limit", type=float, default=2.0,
                        help="a baseline slower than this (s) in forward is not timed in forward+backward")
    parser.add_argument("--baselines", nargs="*", default=["torch", "lax"], choices=["torch", "lax"],
                        help="peers timed beside ours (lax.conv_transpose takes ~1 s per call on 3-D layers)")
    parser.add_argument("--threads", type=int, default=None,
                        help="set by run.py: cores this process is pinned to (see run.py --help)")
    parser.add_argument("--out", default="bench.jsonl", help="JSON lines, appended")
    parser.add_argument("--chart", default="bench.png")
    args = parser.parse_args(argv)
    configs = [c for c in CONFIGS if c.name in args.configs]
    rows = run(configs, args.dtypes, args.modes, args.algorithms, args.budget, args.out, args.slow_limit,
               tuple(args.baselines), args.threads)
    if args.chart and rows:
        chart(rows, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
