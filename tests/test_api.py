"""The public API keeps its conventions: Dragon's signatures, docstrings with examples."""

from __future__ import annotations

import inspect
import typing

import pytest

import jax_deconv

DRAGON_DEFAULTS = dict(strides=1, pads=0, dilations=1, group=1, padding="VALID", output_padding=None,
                       output_shape=None, data_format="NCHW")


@pytest.mark.parametrize("name", jax_deconv.__all__)
def test_public_names_documented(name):
    obj = getattr(jax_deconv, name)
    if typing.get_origin(obj) is typing.Literal:  # the option types: their values are the documentation
        assert typing.get_args(obj), name
    elif callable(obj):
        doc = inspect.getdoc(obj) or ""
        assert len(doc) > 80, name
        if inspect.isfunction(obj):
            assert "Examples:" in doc and ">>>" in doc, name


@pytest.mark.parametrize("name,kernel_default", [("conv_transpose", (3, 3)), ("conv1d_transpose", 3),
                                                  ("conv2d_transpose", 3), ("conv3d_transpose", 3)])
def test_dragon_signature(name, kernel_default):
    params = inspect.signature(getattr(jax_deconv, name)).parameters
    names = list(params)
    assert names[:10] == ["inputs", "kernel_shape", *DRAGON_DEFAULTS]
    assert params["kernel_shape"].default == kernel_default
    for arg, default in DRAGON_DEFAULTS.items():
        assert params[arg].default == default, arg
    for extra in ("precision", "preferred_element_type", "algorithm"):
        assert params[extra].kind is inspect.Parameter.KEYWORD_ONLY


def test_self_check_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "jax_deconv"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Dragon golden cases" in out.stdout and "55/55 match" in out.stdout
    assert "Dragon documentation example: conv3d_transpose -> shape (1, 3, 3, 3, 3)" in out.stdout
