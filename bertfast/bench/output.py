"""Rows out: a printed table, JSON, CSV and PNG bar charts."""
import csv
import os

from .._files import atomic_write_json as write_json  # noqa: F401  (the benchmarks' JSON writer)

# (row key, column title) of `bertfast bench`'s table; the op benchmarks' is harness.COLUMNS.
TABLE_COLUMNS = [("family", "family"), ("model", "model"), ("task", "task"), ("seq_len", "seq"), ("lengths", "lengths"),
                 ("batch_size", "batch"),
                 ("mode", "mode"), ("impl", "impl"), ("ms", "ms"), ("cpu_ms", "cpu ms"),
                 ("tokens_per_s", "tokens/s"),
                 ("samples_per_s", "samples/s"), ("peak_mem_MB", "peak MB"), ("tflops", "TFLOP/s"), ("mfu", "MFU"),
                 ("vs_hf_eager", "vs eager"), ("vs_hf_sdpa", "vs sdpa"), ("cpu_vs_hf_eager", "cpu vs eager"),
                 ("cpu_vs_hf_sdpa", "cpu vs sdpa")]


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value < 1 else f"{value:.2f}"
    return str(value)


def _present(rows, columns):
    """The columns that some row has a value for."""
    return [(key, title) for key, title in columns if any(r.get(key) is not None for r in rows)]


def format_conditions(conditions):
    """The run's conditions on one line, as every benchmark prints them above its table."""
    return " | ".join(f"{k}: {v}" for k, v in conditions.items() if v is not None)


def format_table(rows, columns=TABLE_COLUMNS):
    """Aligned plain-text columns, those no row has a value for left out."""
    columns = _present(rows, columns)
    cells = [[_fmt(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) if cells else len(title)
              for i, (_, title) in enumerate(columns)]
    lines = ["  ".join(title.ljust(w) for (_, title), w in zip(columns, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    return "\n".join(lines)


def format_markdown(rows, columns=TABLE_COLUMNS):
    """The table as GitHub markdown (for the README)."""
    columns = _present(rows, columns)
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path, rows, conditions):
    """One line per row, the run's conditions (device, torch, CUDA, commit...) repeated on each."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys and k != "samples_s"]
    keys += [k for k in conditions if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**conditions, **r})


def _group(row):
    """The workload a row belongs to: one group of bars."""
    return row.get("family", "bert"), row["model"], row["task"], row["seq_len"], row["lengths"], row["mode"]


def plot(folder, rows, conditions):
    """throughput.png and memory.png: grouped bars, one group per workload, one bar per
    implementation. Returns the paths written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed: pip install matplotlib") from None
    os.makedirs(folder, exist_ok=True)
    groups = []
    for r in rows:
        key = _group(r)
        if key not in groups:
            groups.append(key)
    impls = []
    for r in rows:
        if r["impl"] not in impls:
            impls.append(r["impl"])
    by_key = {(*_group(r), r["impl"]): r for r in rows}
    labels = [f"{fam} {m}\n{t if t != 'classification' else 'cls'} {s} {ln.split(':')[0]}\n{mode}"
              for fam, m, t, s, ln, mode in groups]
    paths = []
    title_suffix = f"{conditions.get('device', '')}, torch {conditions.get('torch', '')}, {rows[0]['precision']}"
    for metric, ylabel, name in (("tokens_per_s", "real tokens / s", "throughput.png"),
                                 ("peak_mem_MB", "peak memory (MB)", "memory.png")):
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(impls)) * 0.45 + 2), 4.2))
        width = 0.8 / max(1, len(impls))
        for i, impl in enumerate(impls):
            values = [(by_key.get((*g, impl)) or {}).get(metric) or 0 for g in groups]
            ax.bar([x + (i - (len(impls) - 1) / 2) * width for x in range(len(groups))], values, width, label=impl)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(f"bertfast bench: {ylabel} ({title_suffix})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
