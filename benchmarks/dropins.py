"""Each drop-in against the original it replaces, on the same layers (CPU or any backend).

``python benchmarks/dropins.py [--repeats R] [--out FILE.jsonl]``: for every layer and API
(``jax.lax.conv_transpose``, Flax linen and NNX ``ConvTranspose``, Equinox
``ConvTranspose3d`` under ``vmap``, PyTorch's ``conv_transpose3d`` vs
``jax_deconv.functional``), checks that the drop-in's answer matches the original's, then
times forward and forward+backward (``value_and_grad`` of a sum of squares w.r.t. input and
kernel), jitted, median of ``R`` calls after a warm-up. PyTorch is timed in this process
after the JAX runs. Prints a Markdown table and writes JSON lines.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

LAYERS = {  # name: (N, C_in, C_out, spatial, kernel, stride, pads)
    "A: N2 32->16 16^3 k4 s2 p1": (2, 32, 16, (16, 16, 16), 4, 2, 1),
    "E: N1 4->4 8^3 k3 s2": (1, 4, 4, (8, 8, 8), 3, 2, 0),
    "G2d: N8 128->64 32^2 k4 s2 p1": (8, 128, 64, (32, 32), 4, 2, 1),
}


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def pairs(layer):
    """``{api: (original(x, k), drop_in(x, k), x, k)}`` for one layer, all channels-last except torch."""
    from flax import linen as fnn
    from flax import nnx

    from jax_deconv import lax as dlax
    from jax_deconv.flax import linen as dnn
    from jax_deconv.flax import nnx as dnnx

    n_batch, c_in, c_out, spatial, k, s, p = layer
    n = len(spatial)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n_batch, *spatial, c_in)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((*(k,) * n, c_out, c_in)) / 10, jnp.float32)  # transpose_kernel layout
    pad = [(p, p)] * n  # PyTorch's padding p as lax's consistent padding
    out = {
        "jax.lax.conv_transpose": (
            lambda x, w: jax.lax.conv_transpose(x, w, (s,) * n, pad, transpose_kernel=True,
                                                use_consistent_padding=True),
            lambda x, w: dlax.conv_transpose(x, w, (s,) * n, pad, transpose_kernel=True, use_consistent_padding=True),
            x, kernel),
    }
    lin = dict(features=c_out, kernel_size=(k,) * n, strides=(s,) * n, padding="SAME", use_bias=False)
    flax_kernel = jnp.swapaxes(kernel, -1, -2)  # (*K, C_in, C_out)
    out["flax.linen.ConvTranspose"] = (
        lambda x, w: fnn.ConvTranspose(**lin).apply({"params": {"kernel": w}}, x),
        lambda x, w: dnn.ConvTranspose(**lin).apply({"params": {"kernel": w}}, x), x, flax_kernel)
    theirs = nnx.ConvTranspose(c_in, c_out, (k,) * n, (s,) * n, padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
    ours = dnnx.ConvTranspose(c_in, c_out, (k,) * n, (s,) * n, padding="SAME", use_bias=False, rngs=nnx.Rngs(0))

    def nnx_call(module):
        graphdef, state = nnx.split(module)

        def call(x, w):  # the state's one leaf is the kernel
            return nnx.merge(graphdef, jax.tree.map(lambda _: w, state))(x)
        return call

    out["flax.nnx.ConvTranspose"] = (nnx_call(theirs), nnx_call(ours), x, flax_kernel)
    if n == 3:
        import equinox as eqx

        from jax_deconv import equinox as deqx

        eq_kw = dict(in_channels=c_in, out_channels=c_out, kernel_size=k, stride=s, padding=p, use_bias=False,
                     key=jax.random.key(0))
        e_theirs, e_ours = eqx.nn.ConvTranspose3d(**eq_kw), deqx.ConvTranspose3d(**eq_kw)
        xc = jnp.moveaxis(x, -1, 1)
        weight = e_theirs.weight

        def eqx_call(layer):
            return lambda x, w: jax.vmap(eqx.tree_at(lambda m: m.weight, layer, w))(x)

        out["equinox.nn.ConvTranspose3d (vmap)"] = (eqx_call(e_theirs), eqx_call(e_ours), xc, weight)
    return out


def timed(fn, x, w, repeats):
    fwd = jax.jit(fn)
    train = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(fn(x, w) ** 2), argnums=(0, 1)))
    return median_ms(fwd, x, w, repeats=repeats), median_ms(train, x, w, repeats=repeats)


def torch_rows(repeats):
    try:
        import torch
    except ImportError:
        return []
    from jax_deconv import functional as F

    rows = []
    for name, (n_batch, c_in, c_out, spatial, k, s, p) in LAYERS.items():
        n = len(spatial)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n_batch, c_in, *spatial)).astype(np.float32)
        w = (rng.standard_normal((c_in, c_out, *(k,) * n)) / 10).astype(np.float32)
        op = getattr(torch.nn.functional, f"conv_transpose{n}d")
        ours = getattr(F, f"conv_transpose{n}d")
        fn = lambda x, w, ours=ours, s=s, p=p: ours(x, w, stride=s, padding=p)  # noqa: E731
        f_ms, t_ms = timed(fn, jnp.asarray(x), jnp.asarray(w), repeats)
        tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        np.testing.assert_allclose(np.asarray(fn(x, w)), op(tx, tw, stride=s, padding=p).detach().numpy(),
                                   rtol=1e-3, atol=1e-3)
        time.sleep(1.0)  # let JAX's thread pool settle before torch runs

        def torch_ms(train, op=op, tx=tx, tw=tw, s=s, p=p):
            times = []
            for i in range(repeats + 1):
                start = time.perf_counter()
                y = op(tx, tw, stride=s, padding=p)
                if train:
                    (y**2).sum().backward()
                if i:
                    times.append(1e3 * (time.perf_counter() - start))
            return statistics.median(times)

        with torch.no_grad():
            tf = torch_ms(False)
        rows.append(dict(layer=name, api="torch.nn.functional.conv_transposeNd", original_fwd=tf,
                         ours_fwd=f_ms, original_train=torch_ms(True), ours_train=t_ms))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/dropins_cpu.jsonl")
    args = parser.parse_args(argv)
    meta = dict(jax=jax.__version__, device=str(jax.devices()[0]), machine=platform.processor() or platform.machine(),
                date=time.strftime("%Y-%m-%d"))
    rows = []
    for name, layer in LAYERS.items():
        for api, (original, ours, x, w) in pairs(layer).items():
            np.testing.assert_allclose(np.asarray(jax.jit(ours)(x, w)), np.asarray(jax.jit(original)(x, w)),
                                       rtol=1e-3, atol=1e-3)
            o_f, o_t = timed(original, x, w, args.repeats)
            d_f, d_t = timed(ours, x, w, args.repeats)
            rows.append(dict(layer=name, api=api, original_fwd=o_f, ours_fwd=d_f, original_train=o_t, ours_train=d_t))
            print(json.dumps(rows[-1]), flush=True)
    rows += torch_rows(args.repeats)
    with open(args.out, "w") as f:
        for row in rows:
            f.write(json.dumps({**meta, **row}) + "\n")
    print(f"\n{meta}\n")
    print("| layer | original API | original fwd ms | drop-in fwd ms | speed-up | original fwd+bwd ms | "
          "drop-in fwd+bwd ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['api']} | {r['original_fwd']:.2f} | {r['ours_fwd']:.2f} | "
              f"{r['original_fwd'] / r['ours_fwd']:.1f}x | {r['original_train']:.2f} | {r['ours_train']:.2f} | "
              f"{r['original_train'] / r['ours_train']:.1f}x |")


if __name__ == "__main__":
    main()
