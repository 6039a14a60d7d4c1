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
    memory = defaultdict(dict)
    for r in rows:
        key = (r["config"], r["layer"], r["dtype"], r["mode"])
        groups[key][r["impl"]] = r["ms"]
        memory[key][r["impl"]] = r.get("peak_bytes")
    print("| config | dtype | mode | ours best, ms (variant) | torch best, ms | ours / torch "
          "| lax.conv_transpose, ms | ours / lax | peak MiB: ours / torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, impls in groups.items():
        cfg, layer, dtype, mode = key
        ms, name = min((v, k) for k, v in impls.items() if k.startswith("ours"))
        variant = name.replace("ours[", "").replace("]", "")
        torch_ms, torch_name = min(((v, k) for k, v in impls.items() if k.startswith("torch")), default=(None, None))
        lax_ms = impls.get("lax.conv_transpose")
        mem_ours, mem_torch = memory[key].get(name), memory[key].get(torch_name)
        mem = f"{fmt(mem_ours and mem_ours / 2**20, '.1f')} / {fmt(mem_torch and mem_torch / 2**20, '.1f')}"
        print(f"| {cfg}: {layer} | {dtype} | {mode} | {ms:.3f} ({variant}) | {fmt(torch_ms)} | "
              f"{fmt(torch_ms and ms / torch_ms, '.2f')} | {fmt(lax_ms, '.1f')} | {fmt(lax_ms and ms / lax_ms)} "
              f"| {mem} |")


if __name__ == "__main__":
    main(sys.argv[1])
