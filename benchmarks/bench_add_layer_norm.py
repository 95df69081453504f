"""add_layer_norm vs the plain PyTorch composite F.layer_norm(residual + x + x_bias), forward
and forward+backward. Reports the ratio to the composite and the achieved bandwidth (bytes
that must move / time), on a GPU also as a fraction of the measured copy bandwidth.

    python benchmarks/bench_add_layer_norm.py [--device cuda] [--json out.json]
"""
import argparse
import ctypes
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bertfast.ops import add_layer_norm  # noqa: E402
from common import copy_bandwidth, print_table, run_conditions, time_interleaved, write_json  # noqa: E402


def composite(x, residual, weight, bias, x_bias):
    return F.layer_norm(residual + x + x_bias, (x.shape[-1],), weight, bias, 1e-12)


def fused(x, residual, weight, bias, x_bias):
    return add_layer_norm(x, residual, weight, bias, 1e-12, x_bias=x_bias)


def bytes_moved(rows, hidden, elem, backward):
    """Must-move bytes: forward reads x, residual, writes out and the saved pre-norm sum;
    backward reads grad_out and the pre-norm sum, writes grad (x and residual share it)."""
    fwd = 4 * rows * hidden * elem
    return fwd + (3 * rows * hidden * elem if backward else 0)


def bench_shape(rows, hidden, dtype, device, reps):
    x = torch.randn(rows, hidden, device=device, dtype=dtype, requires_grad=True)
    residual = torch.randn(rows, hidden, device=device, dtype=dtype, requires_grad=True)
    weight, bias, x_bias = (torch.randn(hidden, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(rows, hidden, device=device, dtype=dtype)
    args = (x, residual, weight, bias, x_bias)
    rows_out = []
    for mode in ("forward", "forward+backward"):
        if mode == "forward":
            fns = {name: (lambda fn=fn: _no_grad(fn, args)) for name, fn in (("fused", fused), ("composite", composite))}
        else:
            # autograd.grad: the gradients of all five inputs, without accumulating into .grad
            fns = {name: (lambda fn=fn: torch.autograd.grad(fn(*args), args, grad))
                   for name, fn in (("fused", fused), ("composite", composite))}
        t = time_interleaved(fns, device, reps=reps)
        moved = bytes_moved(rows, hidden, x.element_size(), mode != "forward")
        rows_out.append({
            "op": "add_layer_norm", "shape": f"({rows}, {hidden})", "dtype": str(dtype).replace("torch.", ""),
            "mode": mode, "fused_ms": round(t["fused"] * 1e3, 3), "composite_ms": round(t["composite"] * 1e3, 3),
            "speedup": round(t["composite"] / t["fused"], 2), "fused_GBps": round(moved / t["fused"] / 1e9, 1),
        })
    return rows_out


def _no_grad(fn, args):
    with torch.no_grad():
        return fn(*args)


def keep_malloc_warm():
    """Stops glibc from handing freed memory back to the kernel (mmap threshold at its 32 MiB
    maximum, no trimming), so that the composite's fresh tensors stop paying first-touch page
    faults too, as bertfast's cached outputs do. False where that is not possible (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the rows and the run's conditions here")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    dtypes = [torch.bfloat16, torch.float32] if on_gpu else [torch.float32, torch.bfloat16]
    shapes = [(8192, 768), (16384, 1024), (4096, 4096)] if on_gpu else [(8192, 768), (4096, 384)]
    rows = []
    for dtype in dtypes:
        for r, h in shapes:
            rows += bench_shape(r, h, dtype, args.device, args.reps)
    if not on_gpu and keep_malloc_warm():
        # The composite's time above includes the kernel's page faults on its fresh tensors;
        # here the same pair again with every allocation served from warm memory.
        for row in bench_shape(8192, 768, torch.float32, args.device, args.reps):
            if row["mode"] == "forward+backward":
                rows.append(dict(row, mode="forward+backward, warm malloc"))
    ceiling = copy_bandwidth(args.device)
    for r in rows:
        r["of_copy_bw"] = round(r["fused_GBps"] * 1e9 / ceiling, 2)
    print(f"copy bandwidth: {ceiling / 1e9:.1f} GB/s")
    print_table(rows, ["shape", "dtype", "mode", "fused_ms", "composite_ms", "speedup", "fused_GBps", "of_copy_bw"])
    if args.json:
        write_json(args.json, {"conditions": run_conditions(args.device), "copy_GBps": ceiling / 1e9, "rows": rows})


if __name__ == "__main__":
    main()
