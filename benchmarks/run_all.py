"""Run every op benchmark (benchmarks/bench_*.py), each writing JSON into one folder, then
print one table of them all (summarize.py) and write it to summary.txt and summary.json.

    python benchmarks/run_all.py [--device cpu|cuda] [--out DIR] [--timeout S] [--only NAME ...]

A benchmark that fails or runs past --timeout is reported and the others still run; the exit
status is non-zero if any failed. `make bench` runs this.
"""
import argparse
import glob
import io
import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import summarize  # noqa: E402


def _env():
    """The checkout's bertfast first on the path, whatever the benchmark does itself."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def accepts(script, option):
    """Whether `script --help` lists `option` (the benchmarks' interfaces differ a little)."""
    try:
        proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120,
                              cwd=REPO, env=_env())
    except subprocess.TimeoutExpired:
        return False
    return option in proc.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="passed to the benchmarks that take --device")
    parser.add_argument("--out", default=os.path.join(REPO, "out", "bench"))
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark")
    parser.add_argument("--only", nargs="+", help="run only these (e.g. add_layer_norm attention)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if args.only:
        scripts = [s for s in scripts if os.path.basename(s)[6:-3] in args.only]
    failed = []
    for script in scripts:
        name = os.path.basename(script)[:-3]
        cmd = [sys.executable, script, "--json", os.path.join(args.out, f"{name}.json")]
        if args.device and accepts(script, "--device"):
            cmd += ["--device", args.device]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        try:
            with open(os.path.join(args.out, f"{name}.log"), "w") as log:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      timeout=args.timeout, cwd=REPO, env=_env())
                log.write(proc.stdout)
            print("\n".join(proc.stdout.rstrip().splitlines()[-25:]))
            if proc.returncode != 0:
                failed.append(f"{name} (exit {proc.returncode})")
        except subprocess.TimeoutExpired:
            failed.append(f"{name} (timed out after {args.timeout:.0f} s)")
        print(f"   {time.perf_counter() - start:.0f} s", flush=True)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        rows = summarize.main(args.out)
    summary = buffer.getvalue()
    print("\n== summary\n" + summary)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(summary)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"rows": rows or [], "failed": failed}, f, indent=2)
    for item in failed:
        print(f"FAILED: {item}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
