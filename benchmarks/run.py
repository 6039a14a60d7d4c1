"""Run the benchmark suite (``benchmarks/suite.py``).

    python benchmarks/run.py --out benchmarks/results/cpu.jsonl --chart benchmarks/results/cpu.png
"""

import sys

from suite import main

if __name__ == "__main__":
    sys.exit(main())
