"""Every invalid call raises ValueError/TypeError naming the argument, the value and the rule."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_deconv
from jax_deconv import conv2d_transpose, conv3d_transpose, conv_transpose, conv_transpose_plan

X = np.ones((1, 4, 3, 3), np.float32)  # NCHW, C_in = 4
W = np.ones((4, 2, 3, 3), np.float32)  # (C_in, C_out/group, 3, 3)


def call(**kwargs):
    inputs = kwargs.pop("inputs", [X, W])
    return conv2d_transpose(inputs, **kwargs)


BAD = [
    # (kwargs, exception, message pattern)
    (dict(padding="FULL"), ValueError,
     r"`padding` must be one of 'VALID', 'SAME', 'SAME_UPPER', 'SAME_LOWER'; got 'FULL'"),
    (dict(padding=1), TypeError, r"`padding` must be one of .*; got 1"),
    (dict(data_format="NDHWC"), ValueError, r"`data_format` must be one of 'NCHW', 'NHWC'; got 'NDHWC'"),
    (dict(padding="SAME"), ValueError, r"`output_shape` is required for padding='SAME'; got None"),
    (dict(padding="SAME_UPPER"), ValueError, r"`output_shape` is required for padding='SAME_UPPER'"),
    (dict(output_shape=(6, 5)), ValueError,
     r"`output_shape` \(=\[6, 5\]\) is too large along spatial axis 0: 6 > 5, the largest reachable size "
     r".*a larger `output_padding` raises the maximum"),
    (dict(output_shape=(5, 6), output_padding=(0, 0)), ValueError, r"spatial axis 1: 6 > 5"),
    (dict(output_shape=(5,)), ValueError, r"`output_shape` must be None, an int or a sequence of 2 ints.*\(1 values\)"),
    (dict(output_shape=(0, 5)), ValueError, r"`output_shape` must be .* each >= 1; got \(0, 5\)"),
    (dict(output_shape=(2.5, 5)), TypeError, r"`output_shape` must be .*; got \(2.5, 5\)"),
    (dict(output_padding=(1, -1)), ValueError, r"`output_padding` must be .* each >= 0; got \(1, -1\)"),
    (dict(output_padding=(1, 1, 1)), ValueError, r"`output_padding` must be .*\(3 values\)"),
    (dict(strides=(1, 2, 3)), ValueError, r"`strides` must be an int or a sequence of 1 or 2 ints.*\(3 values\)"),
    (dict(strides=0), ValueError, r"`strides` must be .* each >= 1; got 0"),
    (dict(strides=1.5), TypeError, r"`strides` must be .*; got 1.5"),
    (dict(strides="2"), TypeError, r"`strides` must be .*; got '2'"),
    (dict(dilations=(1, 0)), ValueError, r"`dilations` must be .* each >= 1; got \(1, 0\)"),
    (dict(dilations=True), TypeError, r"`dilations` must be .*; got True"),
    (dict(kernel_shape=-3), ValueError, r"`kernel_shape` must be .* each >= 1; got -3"),
    (dict(kernel_shape=(3, 2.0)), TypeError, r"`kernel_shape` must be .*; got \(3, 2.0\)"),
    (dict(kernel_shape=(3, 2)), ValueError,
     r"`kernel_shape` \(=\(3, 2\)\) disagrees with the weight's kernel axes \(3, 3\)"),
    (dict(pads=-1), ValueError, r"`pads` must be a non-negative int or a sequence of 1, 2 or 4 .*; got -1"),
    (dict(pads=(1, 1, 1)), ValueError, r"`pads` must be .*; got \(1, 1, 1\) \(3 values\)"),
    (dict(pads=(3, 0, 3, 0)), ValueError,
     r"`pads` \(=\(3, 0, 3, 0\)\) crop spatial axis 0 to size -1 \(full size 5, pads 3 \+ 3\)"),
    (dict(group=3), ValueError, r"`group` \(=3\) must divide the input channels C_in \(=4\)"),
    (dict(group=0), ValueError, r"`group` must be an integer >= 1; got 0"),
    (dict(group=2.0), TypeError, r"`group` must be an integer >= 1; got 2.0"),
    (dict(inputs=[X]), ValueError, r"`inputs` must be \[x, weight\] or \[x, weight, bias\]; got 1 inputs"),
    (dict(inputs=[X, W, np.ones(2), X]), ValueError, r"got 4 inputs"),
    (dict(inputs=X), TypeError, r"`inputs` must be a list or tuple"),
    (dict(inputs=[X[0], W]), ValueError, r"input `x` must have rank 4 for data_format='NCHW'; got shape \(4, 3, 3\)"),
    (dict(inputs=[X, W[:3]]), ValueError,
     r"`weight` must have shape \(C_in, C_out/group, \*kernel\) = \(4, 'C_out/group', 3, 3\) .* got \(3, 2, 3, 3\)"),
    (dict(inputs=[X, W[..., 0]]), ValueError, r"`weight` must have shape .* got \(4, 2, 3\)"),
    (dict(inputs=[X, W, np.ones(3, np.float32)]), ValueError,
     r"`bias` must have shape \(C_out,\) = \(2,\); got \(3,\)"),
    (dict(inputs=[X.astype(np.int32), W]), TypeError, r"`x` must have a floating dtype .*; got int32"),
    (dict(inputs=[X, "w"]), TypeError, r"`weight` must .*"),
    (dict(algorithm="fft"), ValueError,
     r"`algorithm` must be one of \('auto', 'conv', 'gemm', 'phases', 'taps', 'native'\); got 'fft'"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD, ids=[re.sub(r"\W+", "_", str(b[0]))[:40] for b in BAD])
def test_bad_input(kwargs, exc, pattern):
    with pytest.raises(exc, match=r"conv2d_transpose: .*" + pattern):
        call(**kwargs)


def test_seed_page_weight_is_rejected_with_the_expected_shape():
    """Dragon's documentation example's (3, 2, 1, 1, 1) weight for C_in = 2 is a layout mismatch."""
    x, w = jnp.ones((1, 2, 2, 2, 2)), jnp.ones((3, 2, 1, 1, 1))
    with pytest.raises(ValueError, match=r"`weight` must have shape \(C_in, C_out/group, \*kernel\) = "
                                         r"\(2, 'C_out/group', 1, 1, 1\) .* got \(3, 2, 1, 1, 1\)"):
        conv3d_transpose([x, w], kernel_shape=1, output_padding=(1, 1, 1), output_shape=(3, 3, 3))


def test_seed_page_example_without_output_padding_is_out_of_reach():
    x, w = jnp.ones((1, 2, 2, 2, 2)), jnp.ones((2, 3, 1, 1, 1))
    with pytest.raises(ValueError, match=r"`output_shape` \(=\[3, 3, 3\]\) is too large .* 3 > 2"):
        conv3d_transpose([x, w], kernel_shape=1, output_shape=(3, 3, 3))


def test_nhwc_weight_layout_named():
    x, w = jnp.ones((1, 3, 3, 4)), jnp.ones((2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"\(C_in, \*kernel, C_out/group\) = \(4, 3, 3, 'C_out/group'\)"):
        conv2d_transpose([x, w], data_format="NHWC")


def test_generic_default_kernel_shape_mismatch_is_explained():
    x, w = jnp.ones((1, 2, 3, 3, 3)), jnp.ones((2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"conv_transpose: `kernel_shape` was not given, and its default \(3, 3\) "
                       r"\(Dragon's\) is for 2 spatial axes; x has shape \(1, 2, 3, 3, 3\), 3 spatial axes"):
        conv_transpose([x, w])
    with pytest.raises(ValueError, match=r"conv_transpose_plan: `kernel_shape` was not given"):
        conv_transpose_plan(x.shape, w.shape)
    with pytest.raises(ValueError, match=r"conv_transpose: `kernel_shape` must be an int or a sequence of 1 or 3"):
        conv_transpose([x, w], kernel_shape=(3, 3))  # given: the usual message


def test_traced_output_shape_must_be_static():
    def f(shape):
        return conv2d_transpose([X, W], output_shape=shape)

    with pytest.raises(TypeError, match=r"`output_shape` must be static .*[(]static_argnames[)]"):
        jax.jit(f)(jnp.array([5, 5]))
    with pytest.raises(TypeError, match=r"`output_padding` must be static"):
        jax.jit(lambda p: conv2d_transpose([X, W], output_padding=p))(jnp.array([1, 1]))


def test_rank_of_generic_op():
    with pytest.raises(ValueError, match=r"conv_transpose: input `x` must have rank at least 3"):
        conv_transpose([np.ones((2, 3)), np.ones((3, 1))], kernel_shape=1)


def test_plan_raises_the_same_errors():
    with pytest.raises(ValueError, match=r"conv_transpose: `group` \(=3\) must divide"):
        conv_transpose_plan(X.shape, W.shape, kernel_shape=3, group=3)


PYTORCH_CALLS = {  # entry point -> a call with Dragon's names that works
    "conv3d_transpose": lambda **kw: jax_deconv.conv3d_transpose([jnp.ones((1, 2, 3, 3, 3)), jnp.ones((2, 1, 2, 2, 2))],
                                                                 kernel_shape=2, **kw),
    "conv_transpose": lambda **kw: jax_deconv.conv_transpose([jnp.ones((1, 2, 3, 3)), jnp.ones((2, 1, 2, 2))],
                                                             kernel_shape=2, **kw),
    "conv_transpose_plan": lambda **kw: jax_deconv.conv_transpose_plan((1, 2, 3, 3), (2, 1, 2, 2), kernel_shape=2,
                                                                       **kw),
    "ConvTranspose3d.init": lambda **kw: jax_deconv.ConvTranspose3d.init(jax.random.key(0), 2, 1, 2, **kw),
    "ConvTranspose2d": lambda **kw: jax_deconv.ConvTranspose2d(weight=jnp.ones((2, 1, 2, 2)), bias=None,
                                                               kernel_shape=2, **kw),
}
PYTORCH_KEYWORDS = {"groups": ("group", 1), "dilation": ("dilations", 1), "kernel_size": ("kernel_shape", None),
                    "stride": ("strides", 2), "output_size": ("output_shape", None)}


@pytest.mark.parametrize("entry", PYTORCH_CALLS)
@pytest.mark.parametrize("keyword", PYTORCH_KEYWORDS)
def test_pytorch_keywords_are_redirected_by_name(entry, keyword):
    """PyTorch's keyword names get a TypeError that names Dragon's (Python's own says only
    "unexpected keyword argument"); the Dragon name itself works."""
    dragon, value = PYTORCH_KEYWORDS[keyword]
    with pytest.raises(TypeError, match=rf"^{re.escape(entry)}: `{keyword}=` is PyTorch's keyword; .*did you mean "
                                        rf"`{dragon}=`\?"):
        PYTORCH_CALLS[entry](**{keyword: 1})
    if value is not None:
        PYTORCH_CALLS[entry](**{dragon: value})


def test_pytorch_padding_number_points_to_pads():
    with pytest.raises(TypeError, match=r"got 1 \(a number of positions is PyTorch's `padding`: here it is `pads=1`\)"):
        PYTORCH_CALLS["conv3d_transpose"](padding=1)
    with pytest.raises(TypeError, match=r"ConvTranspose3d.init: `bias=` is PyTorch's keyword; .*`use_bias=`"):
        PYTORCH_CALLS["ConvTranspose3d.init"](bias=False)
    PYTORCH_CALLS["conv3d_transpose"](pads=1)
