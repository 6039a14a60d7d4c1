"""Run the benchmark suite (``benchmarks/suite.py``; ``--help`` lists every option).

    python benchmarks/run.py --out benchmarks/results/cpu.jsonl --chart benchmarks/results/cpu.png
    python benchmarks/run.py --threads 1 --baselines torch --out benchmarks/results/cpu_1thread.jsonl

``--threads N`` pins this process to the first N cores of its affinity mask and gives JAX and
PyTorch N threads (XLA's single-threaded Eigen when N is 1, ``torch.set_num_threads``). It
must act before JAX is imported, hence here and not in the suite.
"""

import os
import sys


def _pin(argv: list[str]) -> None:
    if "--threads" not in argv:
        return
    threads = int(argv[argv.index("--threads") + 1])
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false"


if __name__ == "__main__":
    _pin(sys.argv)
    from suite import main

    sys.exit(main())
