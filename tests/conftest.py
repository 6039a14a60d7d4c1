"""Collection: ``multidevice_cases.py`` runs only where 8 (simulated) devices exist;
``multiprocess_worker.py`` never (``test_multiprocess.py`` runs it as 2 processes).

``test_sharding.py`` runs it in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``;
in the main run (one CPU device) it is not collected, not even for doctests.

Compilation: every program of the suite (and of its subprocesses, which inherit this process's
environment or load this file) is compiled at LLVM's optimisation level 0. The HLO, which is
what the lowerings compute and what XLA's memory estimates read, is the same at every level;
the machine code is less optimised and compiles in about a third less time (the suite compiles
thousands of programs). The level users get runs in CI's self-check (``python -m jax_deconv``,
55 golden cases, forward and gradients) and in the benchmarks, which check every answer against
an independent oracle before timing it.
"""

import os

from support import FAST_COMPILE

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

collect_ignore = [] if "xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "") else [
    "multidevice_cases.py"
]
collect_ignore.append("multiprocess_worker.py")  # a script that joins other processes: test_multiprocess.py runs it
