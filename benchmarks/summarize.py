"""Print one short table from the JSON files the benchmarks wrote into a folder.

    python benchmarks/summarize.py OUT_DIR
"""
import glob
import json
import os
import sys

# Columns worth a glance, in order, where a row has them.
COLUMNS = ["op", "shape", "dtype", "mode", "speedup", "fused_GBps", "of_copy_bw", "ratio", "tflops"]


def main(folder):
    rows, conditions = [], None
    for path in sorted(glob.glob(os.path.join(folder, "bench_*.json"))):
        with open(path) as f:
            payload = json.load(f)
        conditions = conditions or payload.get("conditions")
        for row in payload.get("rows", []):
            rows.append({"bench": os.path.basename(path)[6:-5], **row})
    if conditions:
        print(" | ".join(f"{k}: {v}" for k, v in conditions.items()))
    cols = ["bench"] + [c for c in COLUMNS if any(c in r for r in rows)]
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
