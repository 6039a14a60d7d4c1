"""Markdown table from a benchmark JSON-lines file: ours against PyTorch in each layout, per layer.

    python benchmarks/summarize.py benchmarks/results/cpu.jsonl [--algorithm auto]
    python benchmarks/summarize.py RUN1.jsonl RUN2.jsonl ... [--labels a b ...]

With one file, the full table below. With several (repeats, or ``run.py --threads 1``), one
row per layer, dtype and mode with the two same-layout ratios of each file side by side, then
XLA's temporaries and the peaks of the first file.

Columns: ours NCHW against PyTorch contiguous and ours NHWC against PyTorch channels-last (the
layouts users call in; 1-D has only PyTorch's contiguous), ours best against PyTorch best,
``jax.lax.conv_transpose`` when timed, XLA's temporaries as a multiple of x + weight + y, and
peak memory (ours: XLA's arguments + outputs + temporaries; PyTorch: the profiler's timeline).
A ratio is ``ours / theirs`` (below 1: we are faster); a row whose repeats spread more than
25 % or that ran on a loaded machine is marked ``*`` and gets no ratio.
"""

import argparse
import json
from collections import defaultdict


def fmt(value, spec=".2f"):
    return "—" if value is None else format(value, spec)


def _ms(row):
    if row is None:
        return "—"
    return f"{row['ms']:.3f}" + ("*" if row["disturbed"] else "")


def _ratio(ours, theirs):
    if ours is None or theirs is None or ours["disturbed"] or theirs["disturbed"]:
        return "—"
    return f"{ours['ms'] / theirs['ms']:.2f}"


def _load(path):
    groups = defaultdict(dict)
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            groups[(r["config"], r["layer"], r["dtype"], r["mode"])][r["impl"]] = r
    return groups


def _same_layout(impls, algorithm):
    """(ours NCHW, torch contiguous, ours NHWC, torch channels-last); 1-D: contiguous twice."""
    contiguous = impls.get("torch contiguous")
    channels_last = impls.get("torch channels_last") or contiguous
    return impls.get(f"ours[{algorithm}] NCHW"), contiguous, impls.get(f"ours[{algorithm}] NHWC"), channels_last


def compare(paths, labels, algorithm) -> None:
    runs = [_load(p) for p in paths]
    head = " | ".join(f"{label} NCHW | {label} NHWC" for label in labels)
    print(f"| layer | dtype | mode | {head} | temp / (x+w+y) | peak MiB ours / torch |")
    print("|---|---|---|" + "---|" * (2 * len(runs)) + "---|---|")
    for key, impls in runs[0].items():
        cells = []
        for run in runs:
            nchw, contiguous, nhwc, channels_last = _same_layout(run.get(key, {}), algorithm)
            cells += [_ratio(nchw, contiguous), _ratio(nhwc, channels_last)]
        nchw, contiguous, nhwc, channels_last = _same_layout(impls, algorithm)
        temp = nhwc and nhwc.get("temp_bytes")
        peak = (f"{fmt(nhwc and nhwc['peak_bytes'] / 2**20, '.1f')} / "
                f"{fmt(channels_last and channels_last['peak_bytes'] / 2**20, '.1f')}")
        cfg, layer, dtype, mode = key
        print(f"| {cfg}: {layer} | {dtype} | {mode} | " + " | ".join(cells)
              + f" | {fmt(temp and temp / nhwc['call_bytes'])} | {peak} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--labels", nargs="*", help="column labels, one per file (default: run 1, run 2...)")
    parser.add_argument("--algorithm", default="auto", help="which of our algorithms to report")
    args = parser.parse_args(argv)
    if len(args.paths) > 1:
        labels = args.labels or [f"run {i + 1}" for i in range(len(args.paths))]
        compare(args.paths, labels, args.algorithm)
        return
    groups = _load(args.paths[0])
    print("| layer | dtype | mode | ours NCHW ms | torch contiguous ms | ratio | ours NHWC ms "
          "| torch channels-last ms | ratio | best / best | lax.conv_transpose ms | temp / (x+w+y) "
          "| peak MiB ours / torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (cfg, layer, dtype, mode), impls in groups.items():
        nchw, contiguous, nhwc, channels_last = _same_layout(impls, args.algorithm)
        ours = [r for r in (nchw, nhwc) if r is not None]
        theirs = [r for r in (contiguous, channels_last) if r is not None]
        best_ours = min(ours, key=lambda r: r["ms"], default=None)
        best_theirs = min(theirs, key=lambda r: r["ms"], default=None)
        lax = impls.get("lax.conv_transpose")
        temp = best_ours and best_ours.get("temp_bytes")
        temp_ratio = None if not temp else temp / best_ours["call_bytes"]
        peak_ours = best_ours and best_ours.get("peak_bytes")
        peak_theirs = best_theirs and best_theirs.get("peak_bytes")
        peak = f"{fmt(peak_ours and peak_ours / 2**20, '.1f')} / {fmt(peak_theirs and peak_theirs / 2**20, '.1f')}"
        print(f"| {cfg}: {layer} | {dtype} | {mode} | {_ms(nchw)} | {_ms(contiguous)} | {_ratio(nchw, contiguous)} "
              f"| {_ms(nhwc)} | {_ms(channels_last)} | {_ratio(nhwc, channels_last)} "
              f"| {_ratio(best_ours, best_theirs)} | {fmt(lax and lax['ms'], '.1f')} | {fmt(temp_ratio)} | {peak} |")


if __name__ == "__main__":
    main()
