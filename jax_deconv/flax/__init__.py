"""Flax drop-ins: ``jax_deconv.flax.linen.ConvTranspose`` and ``jax_deconv.flax.nnx.ConvTranspose``.

Each subclasses Flax's own ``ConvTranspose``: constructor arguments, parameter names, shapes,
initialisers and variable trees are Flax's, so existing variables and checkpoints load
unchanged; only the computation is jax_deconv's. Flax is imported by these submodules alone
(``pip install 'jax_deconv[flax]'``); ``import jax_deconv`` never imports it.
"""

_SUBMODULES = ("linen", "nnx")


def __getattr__(name: str):
    """``jax_deconv.flax.linen`` and ``jax_deconv.flax.nnx`` load (with Flax) when first used."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
