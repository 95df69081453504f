"""Print one short table from the JSON files the benchmarks wrote into a folder.

    python benchmarks/summarize.py OUT_DIR

Rows are the dicts of a payload's "rows" list; payloads shaped otherwise (lists of cases, or
dicts of measurements per part, nested) are read too, each row labelled with its "part".
"""
import glob
import json
import os
import sys

# Columns worth a glance, in order, where a row has them.
COLUMNS = ["op", "shape", "dtype", "mode", "speedup", "fused_GBps", "of_copy_bw", "ratio", "tflops"]


def rows_of(payload):
    """The row dicts of a benchmark's JSON payload: its "rows" list when it has one; otherwise
    every list of dicts, and every dict holding numbers, found under it (labelled "part")."""
    if isinstance(payload, dict) and isinstance(payload.get("rows"), list):
        return [r for r in payload["rows"] if isinstance(r, dict)]
    rows = []

    def walk(node, path):
        for key, value in node.items():
            if key == "conditions":
                continue
            where = f"{path}/{key}" if path else str(key)
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                rows.extend({"part": where, **{k: v for k, v in r.items() if not isinstance(v, (dict, list))}}
                            for r in value)
            elif isinstance(value, dict):
                scalars = {k: v for k, v in value.items() if isinstance(v, (int, float, str, bool)) or v is None}
                for k, v in value.items():  # {"speedup_vs_x": {"bertfast": 1.3, ...}} -> "speedup_vs_x[bertfast]"
                    if isinstance(v, dict) and v and all(isinstance(x, (int, float)) for x in v.values()):
                        scalars.update({f"{k}[{name}]": x for name, x in v.items()})
                if any(isinstance(v, float) for v in scalars.values()):
                    rows.append({"part": where, **scalars})
                walk(value, where)

    if isinstance(payload, dict):
        walk(payload, "")
    return rows


def main(folder):
    rows, conditions = [], None
    for path in sorted(glob.glob(os.path.join(folder, "bench_*.json"))):
        with open(path) as f:
            payload = json.load(f)
        conditions = conditions or (payload.get("conditions") if isinstance(payload, dict) else None)
        for row in rows_of(payload):
            rows.append({"bench": os.path.basename(path)[6:-5], **row})
    if conditions:
        print(" | ".join(f"{k}: {v}" for k, v in conditions.items()))
    rows = [r for r in rows if any(_worth_showing(k) for k in r)]
    cols = ["bench"] + [c for c in ["part", *COLUMNS] if any(c in r for r in rows)]
    cols += sorted({k for r in rows for k in r if _worth_showing(k) and k not in cols})
    widths = [max(len(c), *(len(_cell(r.get(c, ""))) for r in rows)) if rows else len(c) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_cell(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
    return rows


def _worth_showing(key):
    """A measurement a reader compares: ratios to the baseline, bandwidth, FLOP/s."""
    base = key.split("[")[0]
    return base in COLUMNS[4:] or any(word in base for word in ("GBps", "tflops", "TFLOPs", "ratio", "speedup",
                                                                "_vs_sdpa", "fraction_of"))


def _cell(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
