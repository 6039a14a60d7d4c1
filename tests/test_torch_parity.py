"""Parity with PyTorch's conv_transpose{1,2,3}d (same weight layout as Dragon NCHW).

Skipped when torch is absent; CI installs ``torch==2.13.0``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from support import ALGORITHMS, assert_close

from jax_deconv import conv_transpose

torch = pytest.importorskip("torch")


def torch_case(seed: int):
    rng = np.random.default_rng(seed)
    n = 1 + seed % 3
    group = int(rng.choice([1, 2, 3]))
    kernel = [int(v) for v in rng.integers(1, 5, n)]
    stride = [int(v) for v in rng.integers(1, 4, n)]
    dilation = [int(v) for v in rng.choice([1, 1, 2], n)]
    size = [int(v) for v in rng.integers(2, 6, n)]
    full = [s * (i - 1) + d * (k - 1) + 1 for s, i, d, k in zip(stride, size, dilation, kernel)]
    pad = [int(rng.integers(0, min(d * (k - 1), (f - 1) // 2) + 1)) for k, d, f in zip(kernel, dilation, full)]
    out_pad = [int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation)]  # torch: < max(stride, dilation)
    x = rng.standard_normal((2, 2 * group, *size))
    w = rng.standard_normal((2 * group, int(rng.integers(1, 3)), *kernel))
    b = rng.standard_normal(w.shape[1] * group)
    return dict(stride=stride, padding=pad, output_padding=out_pad, dilation=dilation, groups=group), x, w, b


def torch_forward_and_grads(targs, x, w, b, gy=None, output_size=None):
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    if output_size is None:
        op = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
              3: torch.nn.functional.conv_transpose3d}[x.ndim - 2]
        y = op(tx, tw, tb, **targs)
    else:
        layer = torch.nn.ConvTranspose3d(x.shape[1], w.shape[1] * targs["groups"], w.shape[2:],
                                         stride=targs["stride"], padding=targs["padding"],
                                         dilation=targs["dilation"], groups=targs["groups"], dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(tw)
            layer.bias.copy_(tb)
        tw, tb = layer.weight, layer.bias
        y = layer(tx, output_size=output_size)
    gy = np.random.default_rng(1).standard_normal(tuple(y.shape)) if gy is None else gy
    dx, dw, db = torch.autograd.grad(y, (tx, tw, tb), torch.tensor(gy))
    return y.detach().numpy(), gy, (dx.numpy(), dw.numpy(), db.numpy())


def ours_forward_and_grads(args, x, w, b, gy, algorithm):
    y, vjp = jax.vjp(lambda *a: conv_transpose(list(a), **args, algorithm=algorithm), x, w, b)
    return y, vjp(gy)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("seed", range(12))
def test_functional_parity(seed, algorithm):
    targs, x, w, b = torch_case(seed)
    y_t, gy, grads_t = torch_forward_and_grads(targs, x, w, b)
    args = dict(kernel_shape=list(w.shape[2:]), strides=targs["stride"], pads=targs["padding"],
                output_padding=targs["output_padding"], dilations=targs["dilation"], group=targs["groups"])
    y, grads = ours_forward_and_grads(args, x, w, b, gy, algorithm)
    assert_close(y, y_t, np.float64)
    for got, want in zip(grads, grads_t):
        assert_close(got, want, np.float64)


@pytest.mark.parametrize("output_padding", [0, 1])
def test_output_size_maps_to_output_shape(output_padding):
    """torch's ``output_size=`` (here reaching output_padding 0 or 1) is Dragon's SAME output_shape."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((1, 4, 3, 4, 2)), rng.standard_normal((4, 3, 3, 2, 4)), rng.standard_normal(3)
    targs = dict(stride=[2, 2, 3], padding=[1, 0, 2], dilation=[1, 1, 1], groups=1)
    full = [s * (i - 1) + k for s, i, k in zip(targs["stride"], x.shape[2:], w.shape[2:])]
    size = [f - 2 * p + output_padding for f, p in zip(full, targs["padding"])]
    y_t, gy, grads_t = torch_forward_and_grads(targs, x, w, b, output_size=size)
    args = dict(kernel_shape=w.shape[2:], strides=targs["stride"], output_shape=size,
                output_padding=[output_padding] * 3)
    y, grads = ours_forward_and_grads(args, x, w, b, gy, "auto")
    assert_close(y, y_t, np.float64)
    for got, want in zip(grads, grads_t):
        assert_close(got, want, np.float64)
