"""``import jax_deconv`` (and its lax and functional drop-ins) imports no framework."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("flax", "equinox", "torch", "onnx", "onnxruntime", "optax")


def test_core_import_leaves_frameworks_out():
    code = (
        "import sys, jax_deconv, jax_deconv.lax, jax_deconv.functional\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
