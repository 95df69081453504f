"""Run every op benchmark (benchmarks/bench_*.py), each writing JSON into one folder, then
print one table of them all (summarize.py) and write it to summary.txt and summary.json.

    python benchmarks/run_all.py [--device cpu|cuda] [--out DIR] [--timeout S] [--only NAME ...] [--quick]

A benchmark that fails or runs past --timeout is reported and the others still run; the exit
status is non-zero if any failed. `make bench` runs this.
"""
import argparse
import glob
import io
import os
import subprocess
import sys
import time
from contextlib import redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import summarize  # noqa: E402
from bertfast.bench.output import write_json  # noqa: E402  (summarize put the checkout on the path)


def _env():
    """The checkout's bertfast first on the path, whatever the benchmark does itself."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def main(argv=None):
    args = _parse(argv)
    os.makedirs(args.out, exist_ok=True)
    failed = [f for f in (_run(script, args) for script in _scripts(args.only)) if f]
    _summarize(args.out, failed)
    for item in failed:
        print(f"FAILED: {item}")
    return 1 if failed else 0


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="passed to every benchmark (default: cuda when available)")
    parser.add_argument("--out", default=os.path.join(REPO, "out", "bench"))
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark")
    parser.add_argument("--only", nargs="+", help="run only these (e.g. add_layer_norm attention)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks that every benchmark runs")
    return parser.parse_args(argv)


def _scripts(only):
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    return [s for s in scripts if os.path.basename(s)[6:-3] in only] if only else scripts


def _run(script, args):
    """Runs one benchmark, its output into NAME.log (kept when it times out); None or why it failed."""
    name = os.path.basename(script)[:-3]
    cmd = [sys.executable, script, "--json", os.path.join(args.out, f"{name}.json")]
    cmd += (["--device", args.device] if args.device else []) + (["--quick"] if args.quick else [])
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    start, log_path, failure = time.perf_counter(), os.path.join(args.out, f"{name}.log"), None
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout, cwd=REPO,
                                  env=_env()).returncode
            failure = f"{name} (exit {code})" if code else None
        except subprocess.TimeoutExpired:
            failure = f"{name} (timed out after {args.timeout:.0f} s)"
    with open(log_path) as log:
        print("".join(log.readlines()[-25:]).rstrip())
    print(f"   {time.perf_counter() - start:.0f} s", flush=True)
    return failure


def _summarize(out, failed):
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        rows = summarize.main(out)
    summary = buffer.getvalue()
    print("\n== summary\n" + summary)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(summary)
    write_json(os.path.join(out, "summary.json"), {"rows": rows, "failed": failed})


if __name__ == "__main__":
    sys.exit(main())
