"""Benchmark bertfast.ops.attention / attention_varlen against F.scaled_dot_product_attention.

CPU (always): fp32 (batch 32, seq 128, heads 12, head_dim 64), forward + backward,
  - padded with a key padding mask (lengths uniform in 32..128) vs SDPA with the same bool mask;
  - varlen on the same real tokens vs SDPA on the padded batch, as tokens per second.
GPU (when present): bf16, seq 128 and 512, forward + backward, without mask vs SDPA's fastest
  backend and with the padding mask vs SDPA with the bool mask; TFLOP/s against a bf16 GEMM.

Medians of --reps timed runs after warm-up. `--json PATH` writes the results.
    python benchmarks/bench_attention.py [--device cpu|cuda|all] [--json out.json]
"""
import argparse
import json
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from bertfast.ops import attention, attention_varlen


def _time_once(fn, device):
    if device == "cpu-time":  # CPU seconds of this process: blind to other processes' load
        t0 = time.process_time()
        fn()
        return time.process_time() - t0
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_together(fns, device, reps, warmup=3):
    """Median seconds of each function, timed round-robin (one run of each per round) so that
    a machine whose load changes during the run slows every contender alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            times[i].append(_time_once(fn, device))
    return [statistics.median(t) for t in times]


def timed(fn, device, reps, warmup=3):
    return timed_together([fn], device, reps, warmup)[0]


def make_batch(batch, seq, heads, dim, dtype, device, lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = [torch.randn(batch, seq, heads, dim, generator=g).to(device, dtype).requires_grad_() for _ in range(3)]
    if lengths is None:
        lengths = torch.randint(32, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).to(device)
    return q, k, v, mask, lengths


def fwd_bwd(fn, inputs, grad):
    def step():
        for t in inputs:
            t.grad = None
        out = fn()
        out.backward(grad)
    return step


def sdpa_bshd(q, k, v, mask=None):
    """SDPA on (batch, seq, heads, dim) views (transposed strides, no copy), as a model calls it."""
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
    return out.transpose(1, 2)


def pack(t, mask):
    return t.detach()[mask].clone().requires_grad_()


def bench_padded_and_varlen(batch, seq, heads, dim, dtype, device, reps):
    q, k, v, mask, lengths = make_batch(batch, seq, heads, dim, dtype, device)
    grad = torch.randn_like(q)
    results = {}
    qp, kp, vp = pack(q, mask), pack(k, mask), pack(v, mask)
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    cu = cu.to(device)  # valid by construction: check_cu_seqlens=False keeps a sync out of the timings
    max_len = int(lengths.max())
    gp = grad[mask]
    t_sdpa, t_ours, t_var = timed_together([
        fwd_bwd(lambda: sdpa_bshd(q, k, v, mask), (q, k, v), grad),
        fwd_bwd(lambda: attention(q, k, v, key_padding_mask=mask), (q, k, v), grad),
        fwd_bwd(lambda: attention_varlen(qp, kp, vp, cu, max_len, check_cu_seqlens=False), (qp, kp, vp), gp),
    ], device, reps)
    # The same comparison on one thread in CPU time, which other processes on a shared machine
    # cannot inflate (wall-clock ratios there move with the load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c_sdpa, c_ours, c_var = timed_together([
            fwd_bwd(lambda: sdpa_bshd(q, k, v, mask), (q, k, v), grad),
            fwd_bwd(lambda: attention(q, k, v, key_padding_mask=mask), (q, k, v), grad),
            fwd_bwd(lambda: attention_varlen(qp, kp, vp, cu, max_len, check_cu_seqlens=False), (qp, kp, vp), gp),
        ], "cpu-time", max(3, reps // 2), warmup=1)
    finally:
        torch.set_num_threads(threads)
    results["one_thread_cpu_time_ms"] = {"sdpa": c_sdpa * 1e3, "padded": c_ours * 1e3, "varlen": c_var * 1e3}
    results["one_thread_padded_speedup_vs_sdpa"] = c_sdpa / c_ours
    results["one_thread_varlen_tokens_per_s_vs_sdpa"] = c_sdpa / c_var
    tokens = int(lengths.sum())
    results["padded_mask_fwd_bwd_ms"] = t_ours * 1e3
    results["sdpa_mask_fwd_bwd_ms"] = t_sdpa * 1e3
    results["padded_mask_speedup_vs_sdpa"] = t_sdpa / t_ours
    results["varlen_fwd_bwd_ms"] = t_var * 1e3
    results["varlen_tokens_per_s"] = tokens / t_var
    results["sdpa_padded_tokens_per_s"] = tokens / t_sdpa
    results["varlen_tokens_per_s_vs_sdpa"] = t_sdpa / t_var
    # forward alone, for reference
    with torch.no_grad():
        fwd_ours, fwd_sdpa, fwd_var = timed_together([
            lambda: attention(q, k, v, key_padding_mask=mask), lambda: sdpa_bshd(q, k, v, mask),
            lambda: attention_varlen(qp, kp, vp, cu, max_len, check_cu_seqlens=False)], device, reps)
    results["padded_mask_fwd_ms"] = fwd_ours * 1e3
    results["sdpa_mask_fwd_ms"] = fwd_sdpa * 1e3
    results["varlen_fwd_ms"] = fwd_var * 1e3
    return results


def attention_flops(batch, seq, heads, dim, fwd_bwd_factor=3.5):
    """Matmul FLOPs of fwd (2 GEMMs) + bwd (5 GEMMs incl. the recompute): 2 * 2 * b*h*s*s*d * 3.5."""
    return 4 * batch * heads * seq * seq * dim * fwd_bwd_factor


def bench_gpu(reps):
    results = {}
    dev = "cuda"
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    t = timed(lambda: a @ a, dev, reps)
    gemm_tflops = 2 * 8192**3 / t / 1e12
    results["bf16_gemm_tflops"] = gemm_tflops
    for seq in (128, 512):
        batch, heads, dim = (32, 12, 64)
        q, k, v, mask, _ = make_batch(batch, seq, heads, dim, torch.bfloat16, dev)
        grad = torch.randn_like(q)
        flops = attention_flops(batch, seq, heads, dim)
        t_sdpa, t_ours, t_sdpa_m, t_ours_m = timed_together([
            fwd_bwd(lambda: sdpa_bshd(q, k, v), (q, k, v), grad),
            fwd_bwd(lambda: attention(q, k, v), (q, k, v), grad),
            fwd_bwd(lambda: sdpa_bshd(q, k, v, mask), (q, k, v), grad),
            fwd_bwd(lambda: attention(q, k, v, key_padding_mask=mask), (q, k, v), grad)], dev, reps)
        results[f"seq{seq}"] = {
            "nomask_ms": t_ours * 1e3, "sdpa_nomask_ms": t_sdpa * 1e3, "nomask_ratio_vs_sdpa": t_sdpa / t_ours,
            "mask_ms": t_ours_m * 1e3, "sdpa_mask_ms": t_sdpa_m * 1e3, "mask_ratio_vs_sdpa": t_sdpa_m / t_ours_m,
            "nomask_tflops": flops / t_ours / 1e12, "nomask_fraction_of_gemm": flops / t_ours / 1e12 / gemm_tflops,
        }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    report = {"torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "commit": commit,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.device in ("cpu", "all"):
        cpu = bench_padded_and_varlen(32, 128, 12, 64, torch.float32, "cpu", args.reps)
        report["cpu_fp32_b32_s128_h12_d64"] = cpu
        print("CPU fp32 (32, 128, 12, 64), fwd+bwd, padding mask (lengths 32..128):")
        print(f"  bertfast attention       {cpu['padded_mask_fwd_bwd_ms']:8.2f} ms   "
              f"SDPA {cpu['sdpa_mask_fwd_bwd_ms']:8.2f} ms   speedup {cpu['padded_mask_speedup_vs_sdpa']:.2f}x "
              "(target >= 1.0)")
        print(f"  bertfast attention_varlen {cpu['varlen_fwd_bwd_ms']:7.2f} ms   "
              f"tokens/s {cpu['varlen_tokens_per_s']:.0f} vs SDPA padded {cpu['sdpa_padded_tokens_per_s']:.0f}: "
              f"{cpu['varlen_tokens_per_s_vs_sdpa']:.2f}x (target >= 1.6)")
        print(f"  one thread, CPU time (load-independent): padded {cpu['one_thread_padded_speedup_vs_sdpa']:.2f}x, "
              f"varlen {cpu['one_thread_varlen_tokens_per_s_vs_sdpa']:.2f}x vs SDPA "
              f"({cpu['one_thread_cpu_time_ms']['sdpa']:.1f} ms)")
        print(f"  forward only: bertfast {cpu['padded_mask_fwd_ms']:.2f} ms, varlen {cpu['varlen_fwd_ms']:.2f} ms, "
              f"SDPA {cpu['sdpa_mask_fwd_ms']:.2f} ms")
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
        gpu = bench_gpu(args.reps)
        report["cuda_bf16"] = gpu
        print(f"GPU {report['gpu']} bf16 (32, seq, 12, 64) fwd+bwd; bf16 GEMM {gpu['bf16_gemm_tflops']:.0f} TFLOP/s")
        for seq in (128, 512):
            r = gpu[f"seq{seq}"]
            print(f"  seq {seq}: no mask {r['nomask_ms']:.3f} ms vs SDPA {r['sdpa_nomask_ms']:.3f} ms "
                  f"({r['nomask_ratio_vs_sdpa']:.2f}x, target >= 0.9), {r['nomask_tflops']:.0f} TFLOP/s; "
                  f"mask {r['mask_ms']:.3f} ms vs SDPA {r['sdpa_mask_ms']:.3f} ms "
                  f"({r['mask_ratio_vs_sdpa']:.2f}x, target >= 1.5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
