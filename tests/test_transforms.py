"""Every JAX transform, each against the reference (float64 where derivatives are compared)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import reference
from support import VARIANTS, assert_close, variant_kwargs

from jax_deconv import conv2d_transpose, conv3d_transpose

ARGS = dict(kernel_shape=(3, 2), strides=(2, 3), pads=(1, 0, 0, 1), dilations=(1, 2), group=2,
            output_padding=(1, 0))


def data(seed=0, batch=2, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 4, 3, 2)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 2)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    return x, w, b


def jacobian_matrix(x, w, b):
    """The reference's Jacobian wrt x, one basis vector at a time (the op is linear in x)."""
    base = reference(x, w, None, **ARGS)
    cols = [reference(e.reshape(x.shape), w, None, **ARGS).ravel() for e in np.eye(x.size)]
    return np.stack(cols, axis=1).reshape(*base.shape, *x.shape)


@pytest.fixture(params=VARIANTS)
def op(request):
    x, w, _ = data()
    run = variant_kwargs(request.param, x.shape, w.shape, ARGS, itemsize=8)

    def f(x, w, b):
        return conv2d_transpose([x, w, b], **ARGS, **run)

    return f


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_jit_equals_eager_and_no_retrace(op):
    x, w, b = data()
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(op, n=1)
    jitted = jax.jit(counted)
    first = jitted(x, w, b)
    second = jitted(x + 1.0, w, b)  # same shapes: no second trace
    assert_close(first, op(x, w, b), jnp.float64)
    assert_close(second, reference(x + 1.0, w, b, **ARGS), jnp.float64)


def test_grads_numerically(op):
    x, w, b = data(batch=1)
    check_grads(op, (x, w, b), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_jacfwd_jacrev_are_the_reference_jacobian(op):
    x, w, b = data(batch=1)
    want = jacobian_matrix(x, w, b)
    assert_close(jax.jacfwd(op)(x, w, b), want, jnp.float64)
    assert_close(jax.jit(jax.jacrev(op))(x, w, b), want, jnp.float64)


def test_hessian_of_a_quadratic_loss(op):
    x, w, b = data(batch=1)
    jmat = jacobian_matrix(x, w, b).reshape(-1, x.size)
    hess = jax.hessian(lambda x: 0.5 * jnp.sum(op(x, w, b) ** 2))(x).reshape(x.size, x.size)
    assert_close(hess, jmat.T @ jmat, jnp.float64)


def test_vjp_jvp_linearize_agree_with_reference(op):
    x, w, b = data(1)
    rng = np.random.default_rng(9)
    u, v, c = rng.standard_normal(x.shape), rng.standard_normal(w.shape), rng.standard_normal(b.shape)
    want = reference(u, w, c, **ARGS) + reference(x, v, None, **ARGS)
    _, t = jax.jvp(op, (x, w, b), (u, v, c))
    assert_close(t, want, jnp.float64)
    y, lin = jax.linearize(op, x, w, b)
    assert_close(y, reference(x, w, b, **ARGS), jnp.float64)
    assert_close(jax.jit(lin)(u, v, c), want, jnp.float64)
    gy = rng.standard_normal(y.shape)
    dx, dw, db = jax.vjp(op, x, w, b)[1](gy)
    np.testing.assert_allclose(np.vdot(gy, want), np.vdot(dx, u) + np.vdot(dw, v) + np.vdot(db, c), rtol=1e-10)


@pytest.mark.parametrize("axes", [(0, None, None), (None, 0, None), (0, 0, 0)], ids=["x", "weight", "all"])
def test_vmap_matches_loop(op, axes):
    stacks = [data(seed) for seed in range(3)]
    x, w, b = (np.stack([s[i] for s in stacks]) if a == 0 else stacks[0][i] for i, a in enumerate(axes))
    got = jax.jit(jax.vmap(op, in_axes=axes))(x, w, b)
    for k in range(3):
        xk, wk, bk = (v[k] if a == 0 else v for v, a in zip((x, w, b), axes))
        assert_close(got[k], reference(xk, wk, bk, **ARGS), jnp.float64)


def test_vmap_of_grad_and_remat(op):
    x, w, b = data()

    def loss(w, x):
        return jnp.sum(jnp.tanh(jax.checkpoint(op)(x, w, b)))

    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(w, x[:, None])
    total = jax.grad(loss)(w, x)
    assert_close(per_example.sum(0), total, jnp.float64)


def test_eval_shape_runs_nothing():
    x = jax.ShapeDtypeStruct((8, 64, 32, 32, 32), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((64, 32, 4, 4, 4), jnp.bfloat16)
    out = jax.eval_shape(lambda x, w: conv3d_transpose([x, w], kernel_shape=4, strides=2, pads=1), x, w)
    assert out.shape == (8, 32, 64, 64, 64) and out.dtype == jnp.bfloat16


def test_static_sizes_under_jit():
    x, w, _ = data()
    f = jax.jit(lambda x, shape: conv2d_transpose([x, w], kernel_shape=(3, 2), strides=2, output_shape=shape),
                static_argnames="shape")
    assert f(x, shape=(5, 4)).shape == (2, 3, 5, 4)
