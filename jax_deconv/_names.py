"""PyTorch's keyword names, redirected: a call to a Dragon-style entry point with one of them
raises a ``TypeError`` that names the keyword jax_deconv takes instead (Python's own message,
"unexpected keyword argument", says nothing of it)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar

PYTORCH_TO_DRAGON = {
    "kernel_size": "kernel_shape",
    "stride": "strides",
    "padding": "pads",
    "dilation": "dilations",
    "groups": "group",
    "output_size": "output_shape",
}
"""PyTorch's keyword -> jax_deconv's (Dragon's). ``output_padding`` is the same in both."""

TABLE = ", ".join(f"{k} -> {v}" for k, v in PYTORCH_TO_DRAGON.items())

P = ParamSpec("P")
R = TypeVar("R")


def redirect_pytorch_names(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, refusing with a pointer the PyTorch keywords it does not take itself."""
    taken = set(inspect.signature(fn).parameters)
    foreign = {k: v for k, v in PYTORCH_TO_DRAGON.items() if k not in taken}
    if "bias" not in taken and "use_bias" in taken:  # a layer's init: PyTorch's bias=True/False
        foreign["bias"] = "use_bias"
    method = fn.__name__ if "." in fn.__qualname__ else None  # then args[0] is the class, or the instance

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        wrong = [k for k in kwargs if k in foreign]
        if wrong:
            k = wrong[0]
            name = fn.__qualname__
            if method is not None and args:
                cls = args[0] if isinstance(args[0], type) else type(args[0])
                name = cls.__name__ if method == "__init__" else f"{cls.__name__}.{method}"
            raise TypeError(
                f"{name}: `{k}=` is PyTorch's keyword; jax_deconv takes Dragon's names: did you mean "
                f"`{foreign[k]}=`? (PyTorch -> jax_deconv: {TABLE}; jax_deconv.functional takes PyTorch's "
                f"own names.)"
            )
        return fn(*args, **kwargs)

    return wrapper


def padding_hint(value: object) -> str:
    """For a ``padding`` that is a number (PyTorch's meaning): where that number goes here."""
    if isinstance(value, int) or (isinstance(value, (tuple, list)) and value and
                                  all(isinstance(v, int) for v in value)):
        return f" (a number of positions is PyTorch's `padding`: here it is `pads={value!r}`)"
    return ""
