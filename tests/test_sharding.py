"""Multi-device: runs ``multidevice_cases.py`` on 8 simulated CPU devices in a subprocess.

JAX fixes the device count when it starts, so the cases run in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; any failure there fails this test
with the subprocess's report.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import FAST_COMPILE

from jax_deconv import native_kernels

HERE = os.path.dirname(os.path.abspath(__file__))


# The cases in three subprocesses of about 20-30 s each, which the suite's workers share (one
# subprocess of about 80 s ran on one worker alone); the third takes every case the first two
# do not.
PARTS = ["test_batch_sharded_equals_one_device", "test_explicitly_sharded_every_gradient",
         "not test_batch_sharded_equals_one_device and not test_explicitly_sharded_every_gradient"]


@pytest.mark.parametrize("part", PARTS, ids=["batch", "explicit", "rest"])
def test_multidevice_cases_pass_on_8_devices(part):
    import jax

    if not hasattr(jax, "shard_map") or not hasattr(jax.sharding, "AxisType"):
        pytest.skip("this JAX has no jax.shard_map / sharding in types")
    flags = f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}"  # compile level: see conftest.py
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-k", part,
         os.path.join(HERE, "multidevice_cases.py")],
        capture_output=True, text=True, timeout=900, env=env, cwd=os.path.dirname(HERE),
    )
    report = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    assert " passed" in out.stdout and "failed" not in out.stdout, report
    if native_kernels() is not None:  # (without them, the cases of the kernels' partitioning skip)
        assert "skipped" not in out.stdout, report
