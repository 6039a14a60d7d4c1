"""Markdown table from a benchmark JSON-lines file: ours against PyTorch in each layout, per layer.

    python benchmarks/summarize.py benchmarks/results/cpu.jsonl [--algorithm auto]
    python benchmarks/summarize.py RUN1.jsonl RUN2.jsonl ... [--labels a b ...]
    python benchmarks/summarize.py RUN.jsonl --chart docs/images/cpu   # + cpu_ratio.png, cpu_memory.png
    python benchmarks/summarize.py RUN*.jsonl --pool                  # repeats pooled per thread count

With one file, the full table below. With several (repeats, or ``run.py --threads 1``), one
row per layer, dtype and mode with the two same-layout ratios of each file side by side, then
XLA's temporaries and the peaks of the first file.

Columns: ours NCHW against PyTorch contiguous and ours NHWC against PyTorch channels-last (the
layouts users call in; 1-D has only PyTorch's contiguous), ours best against PyTorch best,
``jax.lax.conv_transpose`` when timed, XLA's temporaries as a multiple of x + weight + y, and
peak memory (ours: XLA's arguments + outputs + temporaries; PyTorch: the profiler's timeline).
A ratio is ``ours / theirs`` (below 1: we are faster); a row whose repeats spread more than
25 % or that ran on a loaded machine is marked ``*`` and gets no ratio. Each table starts with
the machine it ran on: processor, vector instruction sets, threads, versions, date.

``--pool`` treats files with the same thread count as repeats of one run: each cell is the median
of that ratio over the repeats where neither side was disturbed, with how many there were
(``0.92 (3)``); "—" where every repeat was disturbed.

``--chart PREFIX`` (needs matplotlib: ``pip install '.[bench]'``) draws the files' same-layout
ratios per layer (the median over the files, as ``--pool``; give files of one thread count;
float32 and bfloat16; forward and forward+backward; both layouts)
as ``PREFIX_ratio.png``, and peak memory over x + weight + y, ours against PyTorch, as
``PREFIX_memory.png``.
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


def machine(path) -> str:
    """The line naming where a file's rows ran (the first row's; runs are of one machine)."""
    with open(path) as f:
        r = json.loads(f.readline())
    isa = r.get("isa", "ISA not recorded")
    native = f", native kernels: {r['native']}" if r.get("native") else ""
    return (f"{r['cpu']} ({isa}{native}), {r['threads']} thread(s), jax {r['jax']}, torch {r['torch']}, "
            f"{r['date']}")


def chart(paths, prefix, algorithm) -> list[str]:
    """Draw the ratio charts (median over the runs in ``paths``, as ``--pool``) and the memory
    chart (the first run); the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [_load(p) for p in paths]
    groups = runs[0]
    layers = list(dict.fromkeys(cfg for cfg, _, _, _ in groups))
    title = machine(paths[0]) + (f"; median of {len(paths)} runs" if len(paths) > 1 else "")
    series = [("forward", 0), ("forward", 2), ("forward+backward", 0), ("forward+backward", 2)]
    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for ax, dtype in zip(axes, ("float32", "bfloat16")):
        width = 0.2
        for j, (mode, side) in enumerate(series):
            values = []
            for cfg in layers:
                key = next((k for k in groups if k[0] == cfg and k[2] == dtype and k[3] == mode), None)
                median = _pooled(runs, key, side, algorithm)[0] if key else None
                values.append(float("nan") if median is None else median)
            label = f"{mode}, {'NCHW' if side == 0 else 'NHWC'}"
            ax.bar([i + (j - 1.5) * width for i in range(len(layers))], values, width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel(f"{dtype}: ours / PyTorch")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=4)
    axes[-1].set_xticks(range(len(layers)))
    axes[-1].set_xticklabels(layers)
    fig.suptitle(f"time, ours / PyTorch in the same layout (below 1: ours faster; gaps: disturbed)\n{title}",
                 fontsize=9)
    fig.tight_layout()
    written = [f"{prefix}_ratio.png"]
    fig.savefig(written[-1], dpi=100)

    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.2
    bars = [("forward", "ours"), ("forward", "torch"), ("forward+backward", "ours"), ("forward+backward", "torch")]
    for j, (mode, who) in enumerate(bars):
        values = []
        for cfg in layers:
            key = next((k for k in groups if k[0] == cfg and k[2] == "float32" and k[3] == mode), None)
            impls = groups.get(key, {}) if key else {}
            _, _, nhwc, channels_last = _same_layout(impls, algorithm)
            row = nhwc if who == "ours" else channels_last
            values.append(row["peak_bytes"] / row["call_bytes"] if row and row.get("peak_bytes") else float("nan"))
        ax.bar([i + (j - 1.5) * width for i in range(len(layers))], values, width,
               label=f"{mode}, {'ours NHWC' if who == 'ours' else 'PyTorch channels-last'}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers)
    ax.set_ylabel("peak / (x + w + y)")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"float32 peak memory over the bytes of x + weight + y\n{title}", fontsize=9)
    fig.tight_layout()
    written.append(f"{prefix}_memory.png")
    fig.savefig(written[-1], dpi=100)
    return written


def _row(key, cells, impls, algorithm) -> None:
    """Print a table row: the layer, the ratio cells, then temporaries and peaks (ours NHWC)."""
    _, _, nhwc, channels_last = _same_layout(impls, algorithm)
    temp = nhwc and nhwc.get("temp_bytes")
    peak = (f"{fmt(nhwc and nhwc['peak_bytes'] / 2**20, '.1f')} / "
            f"{fmt(channels_last and channels_last['peak_bytes'] / 2**20, '.1f')}")
    cfg, layer, dtype, mode = key
    print(f"| {cfg}: {layer} | {dtype} | {mode} | " + " | ".join(cells)
          + f" | {fmt(temp and temp / nhwc['call_bytes'])} | {peak} |")


def _pooled(runs, key, side, algorithm):
    """(median of the undisturbed same-layout ratios over the runs, how many), or (None, 0)."""
    ratios = []
    for run in runs:
        pair = _same_layout(run.get(key, {}), algorithm)
        ratio = _ratio(pair[side], pair[side + 1])
        if ratio != "—":
            ratios.append(float(ratio))
    if not ratios:
        return None, 0
    ratios.sort()
    mid = len(ratios) // 2
    return (ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2), len(ratios)


def pool(paths, algorithm) -> None:
    """One table, repeats pooled per thread count (see the module docstring)."""
    by_threads = defaultdict(list)
    for path in paths:
        with open(path) as f:
            by_threads[json.loads(f.readline())["threads"]].append(path)
    counts = sorted(by_threads, reverse=True)
    for threads in counts:
        print(f"- {threads} thread(s), {len(by_threads[threads])} run(s): {machine(by_threads[threads][0])}")
    print()
    runs = {t: [_load(p) for p in by_threads[t]] for t in counts}
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''} NCHW | {t} thread{'s' if t > 1 else ''} NHWC" for t in counts)
    print(f"| layer | dtype | mode | {head} | temp / (x+w+y) | peak MiB ours / torch |")
    print("|---|---|---|" + "---|" * (2 * len(counts)) + "---|---|")
    first = runs[counts[0]][0]
    for key, impls in first.items():
        cells = []
        for t in counts:
            for side in (0, 2):
                median, count = _pooled(runs[t], key, side, algorithm)
                cells.append("—" if median is None else f"{median:.2f} ({count})")
        _row(key, cells, impls, algorithm)


def compare(paths, labels, algorithm) -> None:
    runs = [_load(p) for p in paths]
    for label, path in zip(labels, paths):
        print(f"- {label}: {machine(path)}")
    print()
    head = " | ".join(f"{label} NCHW | {label} NHWC" for label in labels)
    print(f"| layer | dtype | mode | {head} | temp / (x+w+y) | peak MiB ours / torch |")
    print("|---|---|---|" + "---|" * (2 * len(runs)) + "---|---|")
    for key, impls in runs[0].items():
        cells = []
        for run in runs:
            nchw, contiguous, nhwc, channels_last = _same_layout(run.get(key, {}), algorithm)
            cells += [_ratio(nchw, contiguous), _ratio(nhwc, channels_last)]
        _row(key, cells, impls, algorithm)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--labels", nargs="*", help="column labels, one per file (default: run 1, run 2...)")
    parser.add_argument("--algorithm", default="auto", help="which of our algorithms to report")
    parser.add_argument("--pool", action="store_true", help="pool files of the same thread count as repeats")
    parser.add_argument("--chart", metavar="PREFIX", help="also draw PREFIX_ratio.png and PREFIX_memory.png")
    args = parser.parse_args(argv)
    if args.chart:
        print("charts:", ", ".join(chart(args.paths, args.chart, args.algorithm)))
    if args.pool:
        pool(args.paths, args.algorithm)
        return
    if len(args.paths) > 1:
        labels = args.labels or [f"run {i + 1}" for i in range(len(args.paths))]
        compare(args.paths, labels, args.algorithm)
        return
    groups = _load(args.paths[0])
    print(f"{machine(args.paths[0])}\n")
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
