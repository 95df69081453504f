"""A short demonstration of bertfast's fused add_layer_norm: parity with plain PyTorch and
its speed against the unfused composite, on whatever device is available.

    python -m bertfast.demo
"""
import time

import torch
import torch.nn.functional as F

from . import reference
from .ops import add_layer_norm


def _median_ms(fn, reps=10):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, hidden = 8192, 768  # a BERT-base sub-layer tail: 64 sequences x 128 tokens
    torch.manual_seed(0)
    x, residual = (torch.randn(rows, hidden, device=device, requires_grad=True) for _ in range(2))
    weight, bias, x_bias = (torch.randn(hidden, device=device, requires_grad=True) for _ in range(3))
    inputs = (x, residual, weight, bias, x_bias)
    grad = torch.randn(rows, hidden, device=device)

    out = add_layer_norm(x, residual, weight, bias, x_bias=x_bias)
    ref = reference.add_layer_norm(*(t.double() for t in (x, residual, weight, bias)), x_bias=x_bias.double())
    print(f"add_layer_norm on {device}, ({rows}, {hidden}) float32")
    print(f"  max |fused - float64 reference| = {(out.double() - ref).abs().max().item():.2e}")

    def fused():
        torch.autograd.grad(add_layer_norm(x, residual, weight, bias, x_bias=x_bias), inputs, grad)

    def composite():
        torch.autograd.grad(F.layer_norm(residual + x + x_bias, (hidden,), weight, bias, 1e-12), inputs, grad)

    t_fused, t_comp = _median_ms(fused), _median_ms(composite)
    print(f"  forward+backward: fused {t_fused:.2f} ms, composite {t_comp:.2f} ms -> {t_comp / t_fused:.2f}x")


if __name__ == "__main__":
    main()
