"""Across a process boundary: ``multiprocess_worker.py`` run as 2 JAX processes of 4 CPU devices.

The processes form one SPMD program through ``jax.distributed`` (a coordinator on a free local
port, gloo collectives between processes), so every mesh of the 8 devices spans both. Each
compares its sharded results with independent answers (see the worker). The harness kills both
processes when one fails or when they pass the time limit, so a broken collective fails the test
instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from support import FAST_COMPILE

HERE = os.path.dirname(os.path.abspath(__file__))
PROCESSES = 2
TIME_LIMIT = 300  # seconds for the whole run (it takes about 5 s on 2 cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(commands: list[list[str]], time_limit: float, env: dict[str, str] | None = None):
    """Start every command in its own process group; return ``(return codes, outputs, timed
    out)`` once all have ended, killing all of them as soon as one fails or time runs out."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              cwd=HERE, start_new_session=True) for c in commands]
    deadline, timed_out = time.monotonic() + time_limit, False
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        outputs = [p.communicate()[0] for p in procs]
    return [p.returncode for p in procs], outputs, timed_out


def test_two_processes_agree_with_one():
    import jax

    if not hasattr(jax, "shard_map") or not hasattr(jax.sharding, "AxisType"):
        pytest.skip("this JAX has no jax.shard_map / sharding in types")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)  # compile level: see conftest.py
    worker = os.path.join(HERE, "multiprocess_worker.py")
    codes, outputs, timed_out = run_processes(
        [[sys.executable, worker, str(i), str(PROCESSES), str(port)] for i in range(PROCESSES)], TIME_LIMIT, env)
    report = "\n".join(f"--- process {i} (exit {c}):\n" + "\n".join(
        line for line in out.splitlines() if not line.startswith("[Gloo]"))[-4000:]
        for i, (c, out) in enumerate(zip(codes, outputs)))
    assert not timed_out, f"timed out after {TIME_LIMIT} s:\n{report}"
    assert codes == [0] * PROCESSES, report
    for i, out in enumerate(outputs):
        assert f"PROCESS {i}: all cases agree" in out, report
        assert out.count("CASE ") >= 5, report


def test_harness_kills_processes_that_hang_or_fail():
    """The harness itself: a process that never ends is killed at the time limit, and one that
    fails ends the run at once (its partner killed)."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    start = time.monotonic()
    codes, _, timed_out = run_processes([sleeper, sleeper], 1.0)
    assert timed_out and all(c is not None and c < 0 for c in codes) and time.monotonic() - start < 30
    start = time.monotonic()
    codes, outputs, timed_out = run_processes([[sys.executable, "-c", "raise SystemExit('boom')"], sleeper], 60)
    assert not timed_out and codes[0] == 1 and codes[1] < 0 and "boom" in outputs[0]
    assert time.monotonic() - start < 30
