"""``jax_deconv.functional.conv_transposeNd`` against ``torch.nn.functional.conv_transposeNd``.

Random configurations over every argument (float64, forward and the gradients of input,
weight and bias), unbatched inputs, and validity: where PyTorch refuses a call, so do we.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_deconv import functional as F

torch = pytest.importorskip("torch")
OURS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def case(seed: int, valid: bool = True):
    rng = np.random.default_rng(seed)
    n = 1 + seed % 3
    groups = int(rng.choice([1, 2, 3]))
    kernel = [int(v) for v in rng.integers(1, 5, n)]
    stride = [int(v) for v in rng.integers(1, 4, n)]
    dilation = [int(v) for v in rng.choice([1, 1, 2], n)]
    size = [int(v) for v in rng.integers(1, 6, n)]
    hi = 4 if not valid else 2
    args = dict(stride=stride, padding=[int(v) for v in rng.integers(0, hi, n)],
                output_padding=[int(v) for v in rng.integers(0, hi, n)], groups=groups, dilation=dilation)
    if rng.random() < 0.3:  # ints for every axis
        args = {k: (v[0] if isinstance(v, list) else v) for k, v in args.items()}
    batched = bool(rng.integers(0, 4))
    x = rng.standard_normal(((2,) if batched else ()) + (2 * groups, *size))
    w = rng.standard_normal((2 * groups, int(rng.integers(1, 3)), *kernel))
    b = rng.standard_normal(w.shape[1] * groups) if rng.random() < 0.7 else None
    return n, args, x, w, b


def torch_result(n, args, x, w, b, gy):
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    y = getattr(torch.nn.functional, f"conv_transpose{n}d")(tx, tw, tb, **args)
    if gy is None:
        return y.detach().numpy()
    y.backward(torch.tensor(gy))
    return [y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy()] + ([] if b is None else [tb.grad.numpy()])


@pytest.mark.parametrize("seed", range(16))
def test_random_against_torch(seed):
    n, args, x, w, b = case(seed)
    try:
        y_torch = torch_result(n, args, x, w, b, None)
    except RuntimeError:
        pytest.skip("PyTorch refuses this configuration (see test_refused_like_torch)")
    gy = np.random.default_rng(seed).standard_normal(y_torch.shape)
    want = torch_result(n, args, x, w, b, gy)
    arrays = [x, w] + ([] if b is None else [b])

    def ours(*a):
        return OURS[n](a[0], a[1], a[2] if len(a) == 3 else None, **args)

    y, vjp = jax.vjp(ours, *map(jnp.asarray, arrays))
    got = [y, *vjp(jnp.asarray(gy))]
    for g, t in zip(got, want):
        assert g.shape == t.shape
        np.testing.assert_allclose(np.asarray(g), t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(40))
def test_refused_like_torch(seed):
    """Over wider (often invalid) arguments, each call either runs in both or is refused by both."""
    n, args, x, w, b = case(1000 + seed, valid=False)
    try:
        torch_result(n, args, x, w, b, None)
        torch_ok = True
    except RuntimeError:
        torch_ok = False
    try:
        jax.eval_shape(lambda: OURS[n](x, w, b, **args))
        ours_ok = True
    except (ValueError, TypeError):
        ours_ok = False
    assert ours_ok == torch_ok, args


BAD = [
    (dict(stride=0), r"`stride` must be .* each >= 1; got 0"),
    (dict(padding=-1), r"`padding` must be .* each >= 0; got -1"),
    (dict(output_padding=2, stride=2), r"`output_padding` must be smaller than stride or dilation .* output_padding=2"),
    (dict(groups=3), r"`input` must have C_in = weight.shape\[0\] \(=4\) channels, divisible by `groups` \(=3\)"),
    (dict(padding=4), r"`padding` \(=4\) leaves no output along spatial axis 0"),
    (dict(x=np.ones((1, 1, 4, 5, 5))), r"`input` must be 3-D \(unbatched\) or 4-D \(batched\)"),
    (dict(w=np.ones((4, 2, 3))), r"`weight` must be 4-D"),
]


@pytest.mark.parametrize("kwargs,pattern", BAD, ids=[str(i) for i in range(len(BAD))])
def test_errors_name_the_argument(kwargs, pattern):
    x, w = kwargs.pop("x", np.ones((1, 4, 5, 5))), kwargs.pop("w", np.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"conv_transpose2d: " + pattern):
        F.conv_transpose2d(x, w, **kwargs)


def test_signature_is_torch():
    import inspect

    for n in (1, 2, 3):
        ours = list(inspect.signature(OURS[n]).parameters.items())
        assert [(k, p.default) for k, p in ours] == [
            ("input", inspect.Parameter.empty), ("weight", inspect.Parameter.empty), ("bias", None), ("stride", 1),
            ("padding", 0), ("output_padding", 0), ("groups", 1), ("dilation", 1)]
