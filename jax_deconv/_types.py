"""The option types of every public signature, defined once (pure Python, no JAX).

Each ``Literal`` alias has a tuple of its values beside it, which the argument checks use,
so a signature and its check cannot disagree.
"""

from __future__ import annotations

from typing import Literal, get_args

Padding = Literal["VALID", "SAME", "SAME_UPPER", "SAME_LOWER"]
"""Dragon's ``padding``: explicit ``pads`` (``'VALID'``) or automatic ones (``'SAME*'``)."""

DataFormat = Literal["NCHW", "NHWC"]
"""Channels first (``'NCHW'``, any number of spatial axes) or channels last (``'NHWC'``)."""

Algorithm = Literal["auto", "conv", "gemm", "phases", "taps", "native"]
"""How the phase form is lowered; see :func:`jax_deconv.choose_algorithm`."""

AutoPad = Literal["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]
"""ONNX ``ConvTranspose``'s ``auto_pad``."""

PADDINGS: tuple[str, ...] = get_args(Padding)
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
AUTO_PADS: tuple[str, ...] = get_args(AutoPad)

ConvAlgorithm = Literal["auto", "native", "xla"]
"""How the regular convolution (``jax_deconv.lax.conv_general_dilated``) runs: jax_deconv's
native CPU kernels, XLA's own convolution, or ``'auto'`` (the kernels on CPU where they take the
call)."""

CONV_ALGORITHMS: tuple[str, ...] = get_args(ConvAlgorithm)
