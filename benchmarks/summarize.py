"""Print one short table from the JSON files the benchmarks wrote into a folder.

    python benchmarks/summarize.py OUT_DIR

Rows are the dicts of a payload's "rows" list; benchmarks that name their list otherwise
("cases", "results", ... also nested one level, e.g. {"cpu": {"rows": [...]}}) are read too.
"""
import glob
import json
import os
import sys

# Columns worth a glance, in order, where a row has them.
COLUMNS = ["op", "shape", "dtype", "mode", "speedup", "fused_GBps", "of_copy_bw", "ratio", "tflops"]


def rows_of(payload, depth=0):
    """The row dicts of a benchmark's JSON payload."""
    if isinstance(payload, list):
        return [r for r in payload if isinstance(r, dict)] if all(isinstance(r, dict) for r in payload) else []
    if not isinstance(payload, dict) or depth > 2:
        return []
    if isinstance(payload.get("rows"), list):
        return rows_of(payload["rows"], depth + 1)
    found = []
    for key, value in payload.items():
        if key == "conditions":
            continue
        sub = rows_of(value, depth + 1)
        if isinstance(value, dict) and sub:
            sub = [{"part": key, **r} for r in sub]
        found += sub
    return found


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
    cols = ["bench"] + [c for c in COLUMNS if any(c in r for r in rows)]
    extra = sorted({k for r in rows for k in r if k.endswith(("GBps", "tflops", "TFLOPs", "ratio", "speedup"))
                    and k not in cols})
    cols += extra
    widths = [max(len(c), *(len(_cell(r.get(c, ""))) for r in rows)) if rows else len(c) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_cell(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
    return rows


def _cell(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
