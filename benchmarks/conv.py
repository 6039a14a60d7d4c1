"""Regular convolutions of a 3-D U-Net encoder: jax_deconv's native kernels against XLA's own
convolution and PyTorch, both layouts (issue 27).

``python benchmarks/conv.py [--threads N] [--dtypes float32 bfloat16] [--layers ...] [--out F.jsonl]``

Each layer is timed forward and forward+backward (gradients of a sum in the input and the
weight), jitted, the median of ``--repeats`` calls after a warm-up: ``jax_deconv.lax.
conv_general_dilated`` ('auto': the native kernels on CPU) and ``jax.lax.conv_general_dilated``
in NDHWC and NCDHW, PyTorch's ``conv3d`` in a separate process (so that neither's thread pool
slows the other) in ``channels_last_3d`` and contiguous NCDHW. Prints a Markdown table (ours /
PyTorch, ours / XLA, same layout) and writes JSON lines naming the processor and its ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

LAYERS = {  # name: (N, C_in, C_out, size, kernel, stride[, groups])
    "e1 N1 1->32 64^3 k3": (1, 1, 32, 64, 3, 1),
    "e2 N1 32->64 32^3 k3": (1, 32, 64, 32, 3, 1),
    "e3 N1 64->128 16^3 k3": (1, 64, 128, 16, 3, 1),
    "e4 N1 128->256 8^3 k3": (1, 128, 256, 8, 3, 1),
    "e2 N2 32->64 32^3 k3": (2, 32, 64, 32, 3, 1),
    "down N1 32->64 64^3 k3 s2": (1, 32, 64, 64, 3, 2),
    "proj N1 64->32 32^3 k1": (1, 64, 32, 32, 1, 1),
    # depthwise, as in separable 3-D convolutions
    "dw N1 64 32^3 k3 g64": (1, 64, 64, 32, 3, 1, 64),
    "dw N1 64 32^3 k3 s2 g64": (1, 64, 64, 32, 3, 2, 64),
}


def _layer(name: str) -> tuple[int, int, int, int, int, int, int]:
    n, ci, co, size, k, s, *groups = LAYERS[name]
    return n, ci, co, size, k, s, groups[0] if groups else 1


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def time_torch(layers: list[str], dtypes: list[str], threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name in layers:
        n, ci, co, size, k, s, groups = _layer(name)
        for dtype in dtypes:
            for layout in ("channels_last", "channels_first"):
                fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
                dt = getattr(torch, dtype)
                x = torch.randn(n, ci, size, size, size, dtype=dt).to(memory_format=fmt).requires_grad_(True)
                conv = torch.nn.Conv3d(ci, co, k, stride=s, padding=k // 2, groups=groups, bias=False).to(dt)
                conv = conv.to(memory_format=fmt)

                def forward(conv=conv, x=x):
                    with torch.no_grad():
                        conv(x)

                def training(conv=conv, x=x):
                    conv(x).float().sum().backward()

                out[f"{name}|{dtype}|{layout}"] = (_median_ms(forward, repeats), _median_ms(training, repeats))
    return out


def time_jax(layers: list[str], dtypes: list[str], repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jax_deconv import lax as dlax

    out = {}
    for name in layers:
        n, ci, co, size, k, s, groups = _layer(name)
        for dtype in dtypes:
            for layout, dn, x_shape in (("channels_last", ("NDHWC", "DHWIO", "NDHWC"), (n, size, size, size, ci)),
                                        ("channels_first", ("NCDHW", "OIDHW", "NCDHW"), (n, ci, size, size, size))):
                w_shape = (k, k, k, ci // groups, co) if layout == "channels_last" else (co, ci // groups, k, k, k)
                x = jax.random.normal(jax.random.key(0), x_shape, dtype)
                w = (jax.random.normal(jax.random.key(1), w_shape) * 0.05).astype(dtype)
                for label, op in (("ours", dlax.conv_general_dilated), ("xla", jax.lax.conv_general_dilated)):
                    def conv(x, w, op=op, dn=dn, s=s, k=k, groups=groups):
                        return op(x, w, (s,) * 3, [(k // 2, k // 2)] * 3, dimension_numbers=dn,
                                  feature_group_count=groups)

                    f = jax.jit(conv)
                    g = jax.jit(jax.grad(lambda x, w, conv=conv: jnp.sum(conv(x, w).astype(jnp.float32)), (0, 1)))
                    out[f"{name}|{dtype}|{layout}|{label}"] = (
                        _median_ms(lambda f=f, x=x, w=w: jax.block_until_ready(f(x, w)), repeats),
                        _median_ms(lambda g=g, x=x, w=w: jax.block_until_ready(g(x, w)), repeats),
                    )
    return out


def _isa() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return ", ".join(name for flag, name in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                             ("amx_tile", "AMX"), ("avx2", "AVX2")) if flag in flags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--layers", nargs="*", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:
        print(json.dumps(time_torch(args.layers, args.dtypes, args.threads, args.repeats)))
        return 0
    torch_times = json.loads(subprocess.run(
        [sys.executable, __file__, "--torch-only", "--threads", str(args.threads), "--repeats", str(args.repeats),
         "--dtypes", *args.dtypes, "--layers", *args.layers],
        capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
    ).stdout.strip().splitlines()[-1])
    jax_times = time_jax(args.layers, args.dtypes, args.repeats)
    import jax_deconv

    machine = dict(processor=platform.processor() or platform.machine(), isa=_isa(),
                   native=jax_deconv.native_kernels(), threads=args.threads, date=time.strftime("%Y-%m-%d"))
    print(f"{machine}\n")
    print("| layer | dtype | layout | ours fwd ms | XLA fwd | torch fwd | ours fwd+bwd | XLA fwd+bwd | torch fwd+bwd "
          "| ours/torch fwd | ours/torch fwd+bwd | ours/XLA fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for key, torch_ms in torch_times.items():
        ours, xla = jax_times[f"{key}|ours"], jax_times[f"{key}|xla"]
        name, dtype, layout = key.split("|")
        print(f"| {name} | {dtype} | {layout} | {ours[0]:.2f} | {xla[0]:.2f} | {torch_ms[0]:.2f} | {ours[1]:.2f} | "
              f"{xla[1]:.2f} | {torch_ms[1]:.2f} | {ours[0] / torch_ms[0]:.2f} | {ours[1] / torch_ms[1]:.2f} | "
              f"{ours[1] / xla[1]:.2f} |")
        rows.append(dict(machine, layer=name, dtype=dtype, layout=layout, ours_ms=ours, xla_ms=xla, torch_ms=torch_ms))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
