"""Markdown table from a benchmark JSON-lines file: best of ours vs each baseline, per layer.

    python benchmarks/summarize.py benchmarks/results/cpu.jsonl
"""

import json
import sys
from collections import defaultdict


def fmt(value, spec=".3f"):
    return "—" if value is None else format(value, spec)


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    groups = defaultdict(dict)
    for r in rows:
        groups[(r["config"], r["layer"], r["dtype"], r["mode"])][r["impl"]] = r["ms"]
    print("| config | dtype | mode | ours best, ms (variant) | torch best, ms | ours / torch "
          "| lax.conv_transpose, ms | ours / lax |")
    print("|---|---|---|---|---|---|---|---|")
    for (cfg, layer, dtype, mode), impls in groups.items():
        ms, name = min((v, k) for k, v in impls.items() if k.startswith("ours"))
        variant = name.replace("ours[", "").replace("]", "")
        torch = min((v for k, v in impls.items() if k.startswith("torch")), default=None)
        lax_ms = impls.get("lax.conv_transpose")
        print(f"| {cfg}: {layer} | {dtype} | {mode} | {ms:.3f} ({variant}) | {fmt(torch)} | "
              f"{fmt(torch and ms / torch, '.2f')} | {fmt(lax_ms, '.1f')} | {fmt(lax_ms and ms / lax_ms)} |")


if __name__ == "__main__":
    main(sys.argv[1])
