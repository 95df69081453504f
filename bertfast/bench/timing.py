"""Timing protocol: candidates measured in the same run, interleaved, median of repetitions
after warm-up, CUDA synchronised; the device's ceilings measured in the same run (copy bandwidth,
GEMM rate); the run's conditions (device, torch, CUDA, date, commit, command)."""
import contextlib
import datetime
import gc
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def threads(n):
    """torch.set_num_threads(n) inside the block (nothing when n is None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_interleaved(fns, device, warmup=2, reps=5, before=None):
    """{name: {"median_s", "min_s", "samples", "cpu_median_s"}} for callables {name: fn}. Every
    rep runs each candidate once in turn, so drift in machine load hits them alike. cpu_median_s
    is the process CPU time (all threads): steadier than wall time on a shared, oversubscribed
    CPU, where wall time also measures the other tenants. `before()`, when given, runs untimed
    before every call (e.g. to refill an input that a candidate overwrites)."""
    before = before or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            before()
            fn()
    sync(device)
    samples = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    # As timeit does: a garbage-collector pass landing inside one sample costs milliseconds.
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            for name, fn in fns.items():
                before()
                sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                fn()
                sync(device)
                samples[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "samples": ts,
                   "cpu_median_s": statistics.median(cpu[name])} for name, ts in samples.items()}


def copy_bandwidth(device, nbytes=None):
    """Measured copy bandwidth (bytes/s, read + write counted) of a float32 tensor of `nbytes`
    (default 1 GiB on CUDA, 256 MiB on the CPU): the ceiling of a memory-bound op."""
    nbytes = nbytes or ((1 << 30) if torch.device(device).type == "cuda" else (256 << 20))
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, device, warmup=3, reps=20)["copy"]["median_s"]
    return 2 * src.numel() * 4 / t


def gemm_rate(device, dtype=None, n=None, reps=10):
    """Measured dense GEMM rate (FLOP/s) of an n x n x n matmul in `dtype`: the ceiling of a
    compute-bound op. Default bf16 at n=8192 on CUDA, float32 at n=1024 on the CPU."""
    on_gpu = torch.device(device).type == "cuda"
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    n = n or (8192 if on_gpu else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_interleaved({"mm": lambda: a @ b}, device, warmup=3, reps=reps)["mm"]["median_s"]
    return 2 * n**3 / t


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution):
    """An installed package's version, without importing it (transformers takes seconds to import)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _bertfast_build():
    try:
        import bertfast
        return bertfast.build_info()
    except Exception as e:  # a checkout whose extension is not built still benchmarks its baselines
        return f"unavailable: {type(e).__name__}: {e}"


def run_conditions(device):
    """What a result needs beside it to be read later: the device, the software, when, which
    commit, the command line, and how loaded the machine was."""
    dev = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "device_type": dev.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "bertfast_build": _bertfast_build(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "host": platform.node(),
    }
