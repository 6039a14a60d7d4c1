"""Array arguments: ``inputs = [x, weight(, bias)]``, host-side sizes and ``preferred_element_type``.

Everything is checked here, before a plan is made or anything reaches XLA, and every error
names the function in front, the argument, the value received and what is allowed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FLOATING = "a floating dtype that can hold zero (float16, bfloat16, float32, float64, ...)"
INEXACT = "a floating dtype that can hold zero (float16, bfloat16, float32, float64, ...) or complex64/complex128"


def check_floating(op: str, name: str, dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype if it is floating and holds an exact zero; else ``TypeError``.

    Zero must be representable: the phase form pads with zeros (``float8_e8m0fnu`` has none).
    """
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: `{name}` must be {FLOATING}; got {dtype!r}.") from None
    if not _floating_with_zero(dt):
        raise TypeError(f"{op}: `{name}` must be {FLOATING}; got {dt}.")
    return dt


def _floating_with_zero(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating)) and float(np.zeros((), dtype)) == 0.0


def _inexact(dtype: Any) -> bool:
    return _floating_with_zero(dtype) or bool(jnp.issubdtype(dtype, jnp.complexfloating))


def unpack_inputs(op: str, inputs: Any) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``[x, weight]`` or ``[x, weight, bias]`` (bias may be None) as floating or complex arrays."""
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(
            f"{op}: `inputs` must be a list or tuple [x, weight] or [x, weight, bias]; got {type(inputs)!r}."
        )
    if len(inputs) not in (2, 3):
        raise ValueError(f"{op}: `inputs` must be [x, weight] or [x, weight, bias]; got {len(inputs)} inputs.")
    x, w = as_floating(op, "x", inputs[0]), as_floating(op, "weight", inputs[1])
    b = None if len(inputs) == 2 or inputs[2] is None else as_floating(op, "bias", inputs[2])
    return x, w, b


def as_floating(op: str, name: str, value: Any) -> jax.Array:
    """One array argument, which must have a floating dtype that holds zero, or a complex one
    (computed as four real calls: :mod:`jax_deconv._complex`)."""
    if value is None:
        raise TypeError(f"{op}: `{name}` must be an array; got None.")
    try:
        array = jnp.asarray(value)
    except (TypeError, ValueError) as e:  # ragged nested lists, strings, objects
        raise TypeError(
            f"{op}: `{name}` must be an array (or a rectangular nested list of floats); "
            f"got {type(value).__name__}: {str(e).splitlines()[0]}"
        ) from None
    if not _inexact(array.dtype):
        raise TypeError(
            f"{op}: `{name}` must have {INEXACT}; got {array.dtype} (jax_deconv computes in floating point)."
        )
    return array


def promote(
    x: jax.Array, w: jax.Array, b: jax.Array | None, op: str = "conv_transpose"
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``x``, ``weight`` and ``bias`` in their common dtype; ``TypeError`` naming them where
    JAX has none (float8 formats mixed with each other or with a 16-bit float)."""
    arrays = {name: a for name, a in (("x", x), ("weight", w), ("bias", b)) if a is not None}
    try:
        dtype = jnp.result_type(*arrays.values())
    except jax.dtypes.TypePromotionError as error:
        dtypes = ", ".join(f"{name} {a.dtype}" for name, a in arrays.items())
        raise TypeError(
            f"{op}: `inputs` have dtypes with no common dtype to compute in ({dtypes}): JAX does not promote "
            f"float8 formats to each other or to 16-bit floats implicitly; cast them to one dtype first "
            f"(e.g. x.astype(jnp.bfloat16)). ({str(error).splitlines()[0]})"
        ) from None
    return x.astype(dtype), w.astype(dtype), None if b is None else b.astype(dtype)


def static_sizes(op: str, name: str, value: Any) -> Any:
    """Sizes (``output_shape``, ``strides``...) as host values; traced values are refused.

    Concrete JAX arrays become NumPy arrays / Python ints, which :mod:`jax_deconv._plan` checks.
    """
    if value is None or isinstance(value, (int, str)):
        return value
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, jax.core.Tracer) for v in items):  # pyright: ignore[reportAttributeAccessIssue]
        raise TypeError(
            f"{op}: `{name}` must be static (known at trace time): sizes decide the output shape, "
            f"so under `jax.jit` pass a Python int/tuple or mark the argument static "
            f"(static_argnames); got a traced value {value!r}."
        )
    if isinstance(value, jax.Array):
        return np.asarray(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, jax.Array) for v in value):
        return type(value)(np.asarray(v)[()] if isinstance(v, jax.Array) else v for v in value)
    return value


def check_preferred(op: str, preferred_element_type: Any, dtype: Any) -> np.dtype | None:
    """``preferred_element_type``: None or a floating dtype (an integer one would truncate) that
    holds the inputs' common ``dtype`` exactly (as ``lax.conv_general_dilated`` requires), for
    every algorithm alike."""
    if preferred_element_type is None:
        return None
    if jnp.issubdtype(dtype, jnp.complexfloating):  # complex inputs: a complex result
        try:
            preferred = jnp.dtype(preferred_element_type)
        except TypeError:
            preferred = None
        if preferred is None or not jnp.issubdtype(preferred, jnp.complexfloating):
            raise TypeError(
                f"{op}: `preferred_element_type` must be None or a complex dtype at least as wide as the inputs' "
                f"{jnp.dtype(dtype)}; got {preferred_element_type!r}."
            )
    else:
        preferred = check_floating(op, "preferred_element_type", preferred_element_type)
    try:
        wider = jnp.promote_types(preferred, dtype) == preferred
    except jax.dtypes.TypePromotionError:  # float8 against another float8 or a 16-bit float
        wider = False
    if not wider:
        raise TypeError(
            f"{op}: `preferred_element_type` must be at least as wide as the inputs' dtype {jnp.dtype(dtype)} "
            f"(the accumulation and output dtype; it may not round the inputs); got {preferred}."
        )
    return preferred
