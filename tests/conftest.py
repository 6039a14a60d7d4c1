"""Collection: ``multidevice_cases.py`` runs only where 8 (simulated) devices exist.

``test_sharding.py`` runs it in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``;
in the main run (one CPU device) it is not collected, not even for doctests.
"""

import os

collect_ignore = [] if "xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "") else [
    "multidevice_cases.py"
]
