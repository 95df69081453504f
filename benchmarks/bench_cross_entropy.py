"""Benchmarks of the fused losses against their unfused torch baselines, in one run.

    python benchmarks/bench_cross_entropy.py [--json results.json] [--skip-linear] [--quick]

1. softmax_cross_entropy, CPU, (4096, 30522) float32, label_smoothing 0.1, one label in 7
   ignored, forward + backward, vs F.cross_entropy (target: at least 8x faster).
2. linear_cross_entropy, CPU, N=8192, H=768, V=30522 float32, forward + backward, vs
   F.linear + F.cross_entropy (targets: peak memory <= 25%, speed >= 0.9x).
   Peak memory: each variant runs in its own subprocess; after a warm-up step the process
   resets its resident-set high-water mark (writing 5 to /proc/self/clear_refs), runs one
   step and reads VmHWM from /proc/self/status. "peak extra" = VmHWM - VmRSS just before
   the step: the memory the step itself needed on top of inputs, weights and the runtime
   (torch's CPU allocator keeps no statistics; glibc returns large blocks to the OS, so RSS
   tracks them). Speed: both variants in one process, taking turns.
3. On a CUDA device: softmax_cross_entropy forward + backward vs F.cross_entropy for fp32 /
   bf16 / fp16, with achieved bandwidth (bytes that must move: read the logits in forward,
   read them and write the gradient in backward) against the device's measured copy bandwidth.

Times are medians after a warm-up, the variants taking turns in every repetition. Timings
gather the logits' gradient with torch.autograd.grad, as a model's backward would hand it on
(no clone into .grad).

On CPU the non-in-place backward's time is mostly the page faults of its fresh (rows,
classes) gradient buffer (torch's CPU allocator caches nothing; large blocks come straight
from mmap), which F.cross_entropy pays three times over. Torch's own switch
THP_MEM_ALLOC_ENABLE=1 (transparent huge pages for every large allocation) cuts that cost
for both sides; the in-place variant avoids it.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bertfast  # noqa: E402
from bertfast.ops import linear_cross_entropy, softmax_cross_entropy  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(step, reps, warmup=1, device=torch.device("cpu"), prepare=None):
    times = []
    for i in range(warmup + reps):
        if prepare is not None:
            prepare()
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_ce_inputs(rows, classes, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=g) * 3).to(dtype=dtype, device=device)
    labels = torch.randint(0, classes, (rows,), generator=g)
    labels[::7] = -100
    return logits, labels.to(device)


def bench_softmax_ce(rows, classes, dtype, device, reps, smoothing=0.1):
    """fwd+bwd seconds of F.cross_entropy, the fused op, and the fused op in place."""
    source, labels = make_ce_inputs(rows, classes, dtype, device)
    work = source.clone().requires_grad_()  # refilled before each step: the in-place backward overwrites it

    def refill():
        with torch.no_grad():
            work.copy_(source)

    def step(fn):
        def run():
            loss = fn(work, labels)
            (grad,) = torch.autograd.grad(loss, work)
            del grad
        return run

    variants = {
        "torch": lambda x, y: F.cross_entropy(x.float() if x.dtype != torch.float32 else x, y,
                                              label_smoothing=smoothing),
        "bertfast": lambda x, y: softmax_cross_entropy(x, y, label_smoothing=smoothing),
        "bertfast_inplace": lambda x, y: softmax_cross_entropy(x, y, label_smoothing=smoothing,
                                                               inplace_backward=True),
    }
    return interleaved_medians({name: step(fn) for name, fn in variants.items()}, reps, device, prepare=refill)


def interleaved_medians(steps, reps, device, prepare=None, warmup=1):
    """Median seconds of each step, the steps taking turns within every repetition so that
    a change in machine load (shared CI hosts) hits every variant alike."""
    times = {name: [] for name in steps}
    for i in range(warmup + reps):
        for name, step in steps.items():
            if prepare is not None:
                prepare()
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---- linear_cross_entropy: one subprocess per variant ----

def _read_status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def linear_inputs(rows, hidden_size, vocab):
    torch.manual_seed(0)
    hidden = torch.randn(rows, hidden_size).requires_grad_()
    weight = (torch.randn(vocab, hidden_size) * hidden_size ** -0.5).requires_grad_()
    bias = torch.zeros(vocab).requires_grad_()
    labels = torch.randint(0, vocab, (rows,))
    labels[::7] = -100
    steps = {
        "unfused": lambda: F.cross_entropy(F.linear(hidden, weight, bias), labels).backward(),
        "bertfast": lambda: linear_cross_entropy(hidden, weight, labels, bias=bias).backward(),
    }

    def clear_grads():
        for t in (hidden, weight, bias):
            t.grad = None
    return steps, clear_grads


def linear_memory_worker(variant, rows, hidden_size, vocab):
    """Peak extra resident memory of one forward + backward (after a warm-up step)."""
    steps, clear_grads = linear_inputs(rows, hidden_size, vocab)
    for i in range(2):
        clear_grads()
        rss_before = _read_status_kb("VmRSS")
        _reset_peak_rss()
        steps[variant]()
        peak = _read_status_kb("VmHWM")
    print(json.dumps({"peak_extra_bytes": (peak - rss_before) * 1024, "rss_before_bytes": rss_before * 1024}))


def linear_timing_worker(rows, hidden_size, vocab, reps):
    steps, clear_grads = linear_inputs(rows, hidden_size, vocab)
    print(json.dumps(interleaved_medians(steps, reps, torch.device("cpu"), prepare=clear_grads)))


def _worker(*args):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *map(str, args)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_linear_ce(rows, hidden_size, vocab, reps):
    """Memory: one subprocess per variant. Time: both variants in one process, taking turns."""
    results = {v: _worker("--linear-memory", v, rows, hidden_size, vocab) for v in ("unfused", "bertfast")}
    for variant, seconds in _worker("--linear-timing", rows, hidden_size, vocab, reps).items():
        results[variant]["seconds"] = seconds
    return results


# ---- GPU ----

def copy_bandwidth(device, nbytes=1 << 30):
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), reps=20, warmup=3, device=device)
    return 2 * nbytes / seconds


def bench_gpu(device, reps):
    rows = []
    ceiling = copy_bandwidth(device)
    for classes in (30522, 50257, 256000):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            n = 4096 if classes < 100000 else 1024
            t = bench_softmax_ce(n, classes, dtype, device, reps)
            moved = 3 * n * classes * torch.finfo(dtype).bits // 8  # read fwd, read + write bwd
            rows.append({"rows": n, "classes": classes, "dtype": str(dtype).replace("torch.", ""),
                         "torch_ms": t["torch"] * 1e3, "bertfast_ms": t["bertfast"] * 1e3,
                         "bertfast_inplace_ms": t["bertfast_inplace"] * 1e3,
                         "speedup": t["torch"] / t["bertfast"],
                         "bandwidth_fraction": moved / t["bertfast"] / ceiling})
    return {"device": torch.cuda.get_device_name(device), "copy_bandwidth_GBps": ceiling / 1e9, "cases": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--skip-linear", action="store_true", help="skip the (slow) linear_cross_entropy part")
    parser.add_argument("--quick", action="store_true", help="small shapes, to check that the script runs")
    parser.add_argument("--linear-memory", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--linear-timing", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.linear_memory:
        variant, *sizes = args.linear_memory
        linear_memory_worker(variant, *map(int, sizes))
        return
    if args.linear_timing:
        linear_timing_worker(*args.linear_timing)
        return

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    results = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "commit": commit, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
               "build": bertfast.build_info()}
    ce_rows, ce_classes = (256, 3001) if args.quick else (4096, 30522)
    t = bench_softmax_ce(ce_rows, ce_classes, torch.float32, torch.device("cpu"), args.reps)
    results["cpu_softmax_cross_entropy"] = {"shape": [ce_rows, ce_classes], "seconds": t,
                                            "speedup": t["torch"] / t["bertfast"],
                                            "speedup_inplace": t["torch"] / t["bertfast_inplace"]}
    print(f"CPU softmax_cross_entropy ({ce_rows}, {ce_classes}) fp32 fwd+bwd: torch {t['torch'] * 1e3:.1f} ms, "
          f"bertfast {t['bertfast'] * 1e3:.1f} ms ({t['torch'] / t['bertfast']:.1f}x), in place "
          f"{t['bertfast_inplace'] * 1e3:.1f} ms ({t['torch'] / t['bertfast_inplace']:.1f}x)")

    if not args.skip_linear:
        n, h, v = (512, 64, 3001) if args.quick else (8192, 768, 30522)
        r = bench_linear_ce(n, h, v, reps=1 if args.quick else 3)
        u, f = r["unfused"], r["bertfast"]
        results["cpu_linear_cross_entropy"] = {
            "shape": [n, h, v], **r, "memory_ratio": f["peak_extra_bytes"] / u["peak_extra_bytes"],
            "speed_ratio": u["seconds"] / f["seconds"]}
        print(f"CPU linear_cross_entropy N={n} H={h} V={v} fp32 fwd+bwd: unfused {u['seconds']:.2f} s, "
              f"peak extra {u['peak_extra_bytes'] / 2**20:.0f} MiB; bertfast {f['seconds']:.2f} s, "
              f"peak extra {f['peak_extra_bytes'] / 2**20:.0f} MiB -> memory "
              f"{f['peak_extra_bytes'] / u['peak_extra_bytes']:.1%}, speed {u['seconds'] / f['seconds']:.2f}x")

    if torch.cuda.is_available():
        g = bench_gpu(torch.device("cuda"), args.reps * 3)
        results["gpu_softmax_cross_entropy"] = g
        print(f"GPU {g['device']}: copy bandwidth {g['copy_bandwidth_GBps']:.0f} GB/s")
        for c in g["cases"]:
            print(f"  ({c['rows']}, {c['classes']}) {c['dtype']}: torch {c['torch_ms']:.3f} ms, bertfast "
                  f"{c['bertfast_ms']:.3f} ms ({c['speedup']:.1f}x, {c['bandwidth_fraction']:.0%} of copy bw)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
