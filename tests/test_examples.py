"""Every script in examples/ runs to its end (each checks its own result), in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from support import FAST_COMPILE

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
NEEDS = {  # script: (its modules, arguments that keep it short)
    "unet_decoder_flax.py": (("flax", "optax"), ["--steps", "30", "--size", "8"]),
    "port_pytorch.py": (("torch",), []),
    "onnx_node.py": (("onnx", "onnxruntime"), []),
    "sharded_volume.py": ((), ["--size", "8"]),
    "multi_process.py": ((), []),
}


SETS_XLA_FLAGS = {"sharded_volume.py"}  # its own flags (8 simulated devices), unless XLA_FLAGS is set


def test_every_example_is_listed():
    assert sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py")) == sorted(NEEDS)


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_example_runs(script):
    modules, args = NEEDS[script]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if script not in SETS_XLA_FLAGS:  # the suite's compile level (conftest.py): 14 -> 6 s for the U-Net
        env["XLA_FLAGS"] = FAST_COMPILE
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    if script == "unet_decoder_flax.py":  # "mean loss of the first 5 steps A, of the last 5 B"
        first, last_loss = (float(v) for v in last.replace(",", "").split()[-6::5])
        assert last_loss < 0.6 * first, last
    else:
        assert last.startswith(("the ported layer matches", "every node matches", "both sharded forms match",
                                "the multi-process training matches")), last
