"""Print one table of the rows that the op benchmarks wrote into a folder (bench_*.json, each
written by bertfast/bench/harness.py), under the run's conditions.

    python benchmarks/summarize.py OUT_DIR
"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout's bertfast
from bertfast.bench import harness, output  # noqa: E402

PER_RUN = ("command", "load_average")


def main(folder):
    """Prints the table; returns its rows (every benchmark's, in file order)."""
    rows, conditions, notes, ceilings = [], None, [], []
    for path in sorted(glob.glob(os.path.join(folder, "bench_*.json"))):
        with open(path) as f:
            payload = json.load(f)
        name = os.path.basename(path)[:-5]
        conditions = conditions or payload.get("conditions")
        rows += payload.get("rows", [])
        ceilings += [f"{name} {k}: {v}" for k, v in payload.get("ceilings", {}).items()]
        notes += [f"{name}: {note}" for note in payload.get("notes", [])]
        if not payload.get("complete", True):
            notes.append(f"{name}: incomplete (the run was cut short; these are the cases it measured)")
    if conditions:  # those of the first benchmark; each JSON has its own command and load
        print(output.format_conditions({k: v for k, v in conditions.items() if k not in PER_RUN}))
    if ceilings:
        print(" | ".join(ceilings))
    print(output.format_table(rows, harness.COLUMNS))
    for note in notes:
        print(f"note: {note}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
