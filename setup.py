"""Build of jax_deconv's native CPU kernels (``jax_deconv/_native/kernels.cc``).

Everything else about the package is in ``pyproject.toml``. The kernels include the XLA FFI
headers that jaxlib ships (``jaxlib/include``; jaxlib is a build requirement), and compile from
one source for every x86-64 instruction set they dispatch to at run time. Where they cannot
be built (no C++ compiler, an unsupported platform) the install goes on without them and
jax_deconv runs its XLA lowerings: ``python -m jax_deconv`` and ``jax_deconv.native_kernels()``
say which. ``JAX_DECONV_SANITIZE=address`` builds them with AddressSanitizer (tests only);
``JAX_DECONV_REQUIRE_NATIVE=1`` makes a failed build an error.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Builds the kernels if it can; otherwise warns and installs the package without them."""

    def build_extension(self, ext: Extension) -> None:
        try:
            import jaxlib

            ext.include_dirs.append(os.path.join(os.path.dirname(jaxlib.__file__), "include"))
            super().build_extension(ext)
        except Exception as error:  # no compiler, no headers, a compile error: the XLA lowerings remain
            if os.environ.get("JAX_DECONV_REQUIRE_NATIVE"):
                raise
            print(f"jax_deconv: the native CPU kernels were not built ({error}); the XLA lowerings will be used.",
                  file=sys.stderr)


flags = ["-std=c++17", "-O3", "-Wno-return-type"]
link = []
if os.environ.get("JAX_DECONV_SANITIZE") == "address":
    flags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"]
    link += ["-fsanitize=address"]

setup(
    ext_modules=[
        Extension(
            "jax_deconv._native._kernels",
            sources=["jax_deconv/_native/kernels.cc"],
            language="c++",
            extra_compile_args=flags,
            extra_link_args=link,
            # Python's limited C API (3.11 on): one compiled module, and one wheel, for every CPython
            define_macros=[("Py_LIMITED_API", "0x030B0000")],
            py_limited_api=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
