"""Run the benchmark suite; the same as ``python -m jax_deconv bench``.

    python benchmarks/run.py --out benchmarks/results/cpu.jsonl --chart benchmarks/results/cpu.png
"""

import sys

from jax_deconv._bench import main

if __name__ == "__main__":
    sys.exit(main())
