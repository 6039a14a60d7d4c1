"""jax_deconv: Dragon's transposed convolution (``dragon.nn.conv*_transpose``) for JAX."""

from jax_deconv import functional, lax  # drop-ins: jax.lax and torch.nn.functional styles
from jax_deconv._conv_transpose import (
    conv1d_transpose,
    conv2d_transpose,
    conv3d_transpose,
    conv_transpose,
    conv_transpose_plan,
)
from jax_deconv._layer import ConvTranspose, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from jax_deconv._lowering import choose_algorithm
from jax_deconv._native import native_kernels, native_kernels_unavailable
from jax_deconv._onnx import onnx_conv_transpose, onnx_to_dragon
from jax_deconv._plan import Plan
from jax_deconv._sharding import conv_transpose_halo, halo_sizes
from jax_deconv._types import ALGORITHMS, Algorithm, DataFormat, Padding

__version__ = "0.2.0"

_ADAPTERS = ("equinox", "flax")  # need their framework: imported on first attribute access


def __getattr__(name: str):
    """``jax_deconv.equinox`` and ``jax_deconv.flax`` load when first used, so that
    ``import jax_deconv`` imports no framework while ``jax_deconv.flax.nnx.ConvTranspose``
    works after it."""
    if name in _ADAPTERS:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "ConvTranspose",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "DataFormat",
    "Padding",
    "Plan",
    "choose_algorithm",
    "conv1d_transpose",
    "conv2d_transpose",
    "conv3d_transpose",
    "conv_transpose",
    "conv_transpose_halo",
    "conv_transpose_plan",
    "functional",
    "halo_sizes",
    "lax",
    "native_kernels",
    "native_kernels_unavailable",
    "onnx_conv_transpose",
    "onnx_to_dragon",
]
