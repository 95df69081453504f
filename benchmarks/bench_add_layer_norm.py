"""add_layer_norm against the plain-PyTorch composite F.layer_norm(residual + x + x_bias), forward
and forward+backward (the gradients of all five inputs). Rates: the bytes that must move over the
time, and their fraction of the copy bandwidth measured in the same run. On the CPU also the
forward+backward pair again with glibc kept from returning memory to the kernel ("warm malloc"),
so that the composite's fresh tensors stop paying first-touch page faults, as bertfast's cached
outputs never do.

    python benchmarks/bench_add_layer_norm.py [--device cuda] [--json out.json] [--quick]
"""
import ctypes
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout's bertfast
from bertfast.bench import harness  # noqa: E402
from bertfast.ops import add_layer_norm  # noqa: E402

SHAPES = {"cuda": [(8192, 768), (16384, 1024), (4096, 4096)], "cpu": [(8192, 768), (4096, 384)],
          "quick": [(64, 96)]}
DTYPES = {"cuda": [torch.bfloat16, torch.float32], "cpu": [torch.float32, torch.bfloat16]}
EPS = 1e-12


def composite(x, residual, weight, bias, x_bias):
    return F.layer_norm(residual + x + x_bias, (x.shape[-1],), weight, bias, EPS)


def fused(x, residual, weight, bias, x_bias):
    return add_layer_norm(x, residual, weight, bias, EPS, x_bias=x_bias)


def bytes_moved(rows, hidden, elem, backward):
    """Must-move bytes: forward reads x, residual, writes out and the saved pre-norm sum;
    backward reads grad_out and the pre-norm sum, writes grad (x and residual share it)."""
    return (4 + (3 if backward else 0)) * rows * hidden * elem


def cases(device, quick):
    kind = "quick" if quick else torch.device(device).type
    for dtype in DTYPES[torch.device(device).type]:
        for rows, hidden in SHAPES[kind]:
            yield from shape_cases(rows, hidden, dtype, device)
    if torch.device(device).type == "cpu" and keep_malloc_warm():
        # The composite's times above include the kernel's page faults on its fresh tensors;
        # here the same pair again with every allocation served from warm memory.
        for case in shape_cases(*SHAPES[kind][0], torch.float32, device, modes=("forward+backward",)):
            case.mode += ", warm malloc"
            yield case


def shape_cases(rows, hidden, dtype, device, modes=("forward", "forward+backward")):
    x, residual = (torch.randn(rows, hidden, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    weight, bias, x_bias = (torch.randn(hidden, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(rows, hidden, device=device, dtype=dtype)
    args = (x, residual, weight, bias, x_bias)
    for mode in modes:
        backward = mode != "forward"
        candidates = {name: harness.forward_backward(lambda fn=fn: fn(*args), args, grad) if backward
                      else harness.forward_only(lambda fn=fn: fn(*args))
                      for name, fn in (("bertfast", fused), ("composite", composite))}
        yield harness.Case("add_layer_norm", (rows, hidden), dtype, mode, candidates, baseline="composite",
                           bytes=bytes_moved(rows, hidden, x.element_size(), backward))


def keep_malloc_warm():
    """Stops glibc from handing freed memory back to the kernel (mmap threshold at its 32 MiB
    maximum, no trimming), for the rest of the process. False where that is not possible (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


if __name__ == "__main__":
    sys.exit(harness.main(__doc__, cases))
