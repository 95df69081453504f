"""Timing protocol: candidates measured in the same run, interleaved, median of repetitions
after warm-up, CUDA synchronised; the device's measured bf16 GEMM rate; the run's conditions."""
import datetime
import gc
import os
import platform
import statistics
import subprocess
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns, device, warmup=2, reps=5):
    """{name: {"median_s", "min_s", "samples", "cpu_median_s"}} for callables {name: fn}. Every
    rep runs each candidate once in turn, so drift in machine load hits them alike. cpu_median_s
    is the process CPU time (all threads): steadier than wall time on a shared, oversubscribed
    CPU, where wall time also measures the other tenants."""
    for fn in fns.values():
        for _ in range(warmup):
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


def gemm_rate(device, dtype=torch.bfloat16, n=8192, reps=10):
    """Measured dense GEMM rate (FLOP/s) of an n x n x n matmul in `dtype`."""
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


def run_conditions(device):
    dev = torch.device(device)
    import transformers
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "device_type": dev.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "host": platform.node(),
    }
