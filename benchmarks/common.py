"""Timing protocol shared by the benchmarks: candidates measured in the same run, interleaved,
median of repetitions after warm-up, CUDA synchronised; plus the conditions of the run."""
import datetime
import os
import platform
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bertfast.bench import timing  # noqa: E402
from bertfast.bench.output import write_json  # noqa: E402,F401  (re-exported for the bench scripts)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns, device, warmup=3, reps=10):
    """{name: median seconds} for callables {name: fn}, alternating between them each rep so
    that drift in machine load hits every candidate alike (bertfast.bench's protocol)."""
    timings = timing.time_interleaved(fns, device, warmup=warmup, reps=reps)
    return {name: t["median_s"] for name, t in timings.items()}


def copy_bandwidth(device, nbytes=1 << 30):
    """Measured device copy bandwidth in bytes/s (read + write counted)."""
    n = nbytes // 4 if torch.device(device).type == "cuda" else (256 << 20) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, device, warmup=3, reps=20)["copy"]
    return 2 * src.numel() * 4 / t


def gemm_rate(device, dtype=torch.bfloat16, n=8192):
    """Measured dense GEMM rate in FLOP/s."""
    if torch.device(device).type != "cuda":
        n = 1024
        dtype = torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_interleaved({"mm": lambda: a @ b}, device, warmup=3, reps=10)["mm"]
    return 2 * n**3 / t


def run_conditions(device):
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": name,
        "device_type": dev.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
    }


def print_table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
