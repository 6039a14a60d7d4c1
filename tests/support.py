"""Shared test data: the Dragon golden cases and the dtype-keyed tolerance table."""

from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
import numpy as np

from jax_deconv import native_kernels

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
NATIVE = native_kernels() is not None
"""Whether the native CPU kernels are built here (CI requires them; see ``test_native.py``)."""
ALGORITHMS = ("conv", "gemm", "phases", "taps", *(("native",) if NATIVE else ()))
PHASE_ALGORITHMS = ("conv", "gemm")  # the XLA lowerings 'auto' picks for ordinary layers
VARIANTS = ("conv", "gemm", "gemm-steps", "phases", "taps", *(("native",) if NATIVE else ()))
"""The algorithms, plus 'gemm' forced into its smallest steps (one phase row each) by the
smallest ``max_buffer_bytes`` it accepts; :func:`variant_kwargs` turns a name into arguments."""
FAST_COMPILE = "--xla_backend_optimization_level=0"  # the suite's compile level: see conftest.py
GOLDEN_FORWARD_TOL, GOLDEN_GRADIENT_TOL = 1e-4, 1e-3  # what Dragon's float32 cases are matched to

# rtol = atol, relative to the scale of the output (see `assert_close`)
TOLERANCE = {
    jnp.dtype(jnp.float64): 1e-10,
    jnp.dtype(jnp.float32): 2e-5,
    jnp.dtype(jnp.float16): 5e-3,
    jnp.dtype(jnp.bfloat16): 3e-2,
}


def assert_close(got, want, dtype=None) -> None:
    """``|got - want| <= tol * (1 + max|want|)`` with ``tol`` from the dtype table."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    tol = TOLERANCE[jnp.dtype(dtype or jnp.float32)]
    scale = 1.0 + (np.abs(want).max() if want.size else 0.0)
    err = np.abs(got - want).max() if want.size else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} * {scale:.3g}"


def variant_kwargs(variant: str, x_shape, w_shape, args: dict, itemsize: int = 4) -> dict:
    """Keyword arguments that run ``variant`` (a name in :data:`VARIANTS`) for this call."""
    if variant != "gemm-steps":
        return dict(algorithm=variant)
    from jax_deconv import conv_transpose_plan
    from jax_deconv._cost import gemm_row_bytes

    plan = conv_transpose_plan(x_shape, w_shape, **args)
    return dict(algorithm="gemm", max_buffer_bytes=gemm_row_bytes(plan, itemsize))


def load_golden(name: str) -> list:
    """``[(case_id, args, inputs, y, gy, grads)]`` from ``tests/data/<name>.npz``.

    Dragon reports the NHWC weight gradient under the NCHW weight shape with NHWC-ordered
    data (docs/semantics.md, bug 3), so ``dw`` is reshaped to the weight's own shape.
    """
    z = np.load(os.path.join(DATA, name + ".npz"))
    cases = []
    for case in sorted({k.split("_")[0] for k in z.files}):
        args = json.loads(str(z[case + "_args"]))
        inputs = [z[case + "_x"], z[case + "_w"]]
        grads = [z[case + "_dx"], z[case + "_dw"].reshape(inputs[1].shape)]
        if args.pop("bias"):
            inputs.append(z[case + "_b"])
            grads.append(z[case + "_db"])
        cases.append((f"{name}:{case}", args, inputs, z[case + "_y"], z[case + "_gy"], grads))
    return cases


def load_ported() -> dict:
    """The originals' own test cases (jax, Flax, Equinox), transcribed as data."""
    with open(os.path.join(DATA, "ported_cases.json"), encoding="utf-8") as f:
        return json.load(f)


LAX_SPECS = {  # dimension_numbers drawn by lax_case (None: lax's channels-last default)
    1: [None, ("NCH", "OIH", "NCH"), ("NHC", "OIH", "NCH"), ("CHN", "HOI", "HNC")],
    2: [None, ("NCHW", "OIHW", "NCHW"), ("NHWC", "IOHW", "NCWH")],
    3: [None, ("NCHWD", "OIHWD", "NCHWD")],
}
LAX_DEFAULT = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}


def _by_letters(spec: str, sizes: dict) -> tuple:
    return tuple(sizes[c] for c in spec)


def lax_case(seed: int, groups: int = 1):
    """A random ``lax.conv_transpose`` call: ``(lhs, rhs, kwargs)`` in float64.

    Every layout of ``LAX_SPECS``, both kernel conventions, strides 1-3, dilations 1-2,
    'SAME', 'VALID' and (lo, hi) pairs in [-3, 4] (consistent or not). With ``groups > 1``
    the channels are multiples of ``groups``.
    """
    rng = np.random.default_rng(seed)
    n = 1 + seed % 3
    spec = LAX_SPECS[n][int(rng.integers(len(LAX_SPECS[n])))]
    lhs_spec, rhs_spec, _ = spec or LAX_DEFAULT[n]
    kernel = [int(v) for v in rng.integers(1, 5, n)]
    size = [int(v) for v in rng.integers(1, 6, n)]
    transpose_kernel = bool(rng.integers(2))
    r = rng.random()
    padding = "SAME" if r < 0.2 else "VALID" if r < 0.4 else [
        tuple(int(v) for v in rng.integers(-3, 5, 2)) for _ in range(n)]
    c_in, c_out = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    letters = [c for c in lhs_spec if c not in "NC"]
    lhs_sizes = {"N": 2, "C": c_in, **dict(zip(letters, size))}
    if transpose_kernel:  # the forward kernel: O = C_in, I = C_out / groups
        rhs_sizes = {"O": c_in, "I": c_out // groups}
    else:
        rhs_sizes = {"O": c_out, "I": c_in // groups}
    rhs_sizes.update(zip([c for c in rhs_spec if c not in "IO"], kernel))
    kwargs = dict(
        strides=[int(v) for v in rng.integers(1, 4, n)], padding=padding,
        rhs_dilation=[int(v) for v in rng.choice([1, 1, 2], n)], dimension_numbers=spec,
        transpose_kernel=transpose_kernel, use_consistent_padding=bool(rng.integers(2)),
    )
    lhs = rng.standard_normal(_by_letters(lhs_spec, lhs_sizes))
    rhs = rng.standard_normal(_by_letters(rhs_spec, rhs_sizes))
    return lhs, rhs, kwargs


ROOT = os.path.normpath(os.path.join(os.path.dirname(DATA), os.pardir))


def recipe(name: str) -> dict:
    """Run the fenced block after ``<!-- recipe: NAME -->`` in README.md or a page of docs/ as
    written; its namespace."""
    pages = ["README.md", *sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                                  if f.endswith(".md"))]
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            match = re.search(rf"<!-- recipe: {name} -->\n```python\n(.*?)```", f.read(), re.S)
        if match:
            break
    assert match, f"no recipe {name!r} in README.md or docs/"
    namespace: dict = {}
    exec(compile(match.group(1), f"{page}:{name}", "exec"), namespace)
    return namespace


def random_config(
    rng: np.random.Generator, *, n: int | None = None, layout: str | None = None, explicit: bool | None = None,
    max_size: int = 4, groups: tuple[int, ...] = (1, 1, 2, 3),
) -> tuple[dict, tuple, tuple, int]:
    """A random valid configuration over every argument: ``(kwargs, x_shape, w_shape, C_out)``.

    Explicit pads (asymmetric, up to cropping all but one position) or automatic ones
    (any ``padding`` with an ``output_shape`` up to the reachable maximum); ``None`` draws.
    Small volumes under large, dilated kernels are as likely as ordinary ones.
    """
    n = int(rng.integers(1, 4)) if n is None else n
    group = int(rng.choice(groups))
    kernel = [int(v) for v in rng.integers(1, 5, n)]
    strides = [int(v) for v in rng.integers(1, 4, n)]
    dilations = [int(v) for v in rng.choice([1, 1, 2, 3], n)]
    size = [int(v) for v in rng.integers(1, max_size + 1, n)]
    layout = str(rng.choice(["NCHW", "NHWC"])) if layout is None else layout
    cfg: dict = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=group, data_format=layout)
    full = [s * (i - 1) + d * (k - 1) + 1 for s, i, d, k in zip(strides, size, dilations, kernel)]
    extra = [int(v) for v in rng.integers(0, 3, n)] if rng.random() < 0.4 else [0] * n
    if extra != [0] * n or rng.random() < 0.2:
        cfg["output_padding"] = extra
    if (rng.random() < 0.4) if explicit is None else explicit:
        begin = [int(rng.integers(0, f + e)) for f, e in zip(full, extra)]
        end = [int(rng.integers(0, f + e - b)) for f, e, b in zip(full, extra, begin)]
        cfg["pads"] = begin + end
    else:
        cfg["padding"] = str(rng.choice(["VALID", "SAME", "SAME_UPPER", "SAME_LOWER"]))
        cfg["output_shape"] = [int(rng.integers(1, f + e + 1)) for f, e in zip(full, extra)]
    c_in, cg_out, batch = group * int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
    if layout == "NCHW":
        x_shape, w_shape = (batch, c_in, *size), (c_in, cg_out, *kernel)
    else:
        x_shape, w_shape = (batch, *size, c_in), (c_in, *kernel, cg_out)
    return cfg, x_shape, w_shape, cg_out * group
