"""bertfast.ops.attention and attention_varlen against F.scaled_dot_product_attention, on
(batch, seq, heads, head_dim) tensors as a model calls them, forward and forward+backward.

With a key padding mask (lengths uniform in 32..seq): attention with the mask and attention_varlen
on the same real tokens, both against SDPA with the same bool mask on the padded batch; tokens/s
count real tokens, TFLOP/s the useful FLOPs (on real tokens). On CUDA (bf16, seq 128 and 512) also
without a mask against SDPA's fastest backend, and the fraction of the bf16 GEMM rate measured in
the same run. On both, attention dropout 0.1 (no mask) on both sides, as in training: the mask's
random draws are part of the cost. On the CPU (fp32, seq 128) the masked forward+backward again
on one thread, whose "cpu speedup" (process CPU time) other tenants of a shared machine cannot
inflate.

    python benchmarks/bench_attention.py [--device cuda] [--json out.json] [--quick]
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout's bertfast
from bertfast.bench import harness  # noqa: E402
from bertfast.ops import attention, attention_varlen  # noqa: E402

# (batch, seq, heads, head_dim)
SHAPES = {"cuda": [(32, 128, 12, 64), (32, 512, 12, 64)], "cpu": [(32, 128, 12, 64)], "quick": [(3, 40, 2, 16)]}
DTYPES = {"cuda": torch.bfloat16, "cpu": torch.float32}
MODES = ("fwd+bwd", "forward")


def cases(device, quick):
    kind, device_type = "quick" if quick else torch.device(device).type, torch.device(device).type
    for shape in SHAPES[kind]:
        if device_type == "cuda":
            yield from unmasked_cases(shape, DTYPES[device_type], device)
        yield from masked_cases(shape, DTYPES[device_type], device)
        yield from dropout_cases(shape, DTYPES[device_type], device)
    if device_type == "cpu":
        yield from masked_cases(SHAPES[kind][0], DTYPES[device_type], device, threads=1, modes=("fwd+bwd",))


def sdpa_bshd(q, k, v, mask=None, dropout_p=0.0):
    """SDPA on (batch, seq, heads, dim) views (transposed strides, no copy), as a model calls it."""
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask,
                                         dropout_p=dropout_p)
    return out.transpose(1, 2)


def attention_flops(lengths, heads, dim, backward):
    """Useful matmul FLOPs: QK^T and PV per sequence on its real tokens (2 * 2 * n * n * d per head);
    the backward's five GEMMs (with the recompute) make forward+backward 3.5 times the forward."""
    forward = sum(4 * heads * n * n * dim for n in lengths)
    return forward * 3.5 if backward else forward


def make_inputs(shape, dtype, device, seed=0):
    batch, seq, heads, dim = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, seq, heads, dim, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(batch, seq, heads, dim, generator=g).to(device, dtype)
    lengths = torch.randint(min(32, seq), seq + 1, (batch,), generator=g)
    return (q, k, v), grad, lengths


def unmasked_cases(shape, dtype, device):
    qkv, grad, _ = make_inputs(shape, dtype, device)
    forwards = {"bertfast": lambda: attention(*qkv), "sdpa": lambda: sdpa_bshd(*qkv)}
    full = [shape[1]] * shape[0]
    for mode in MODES:
        yield harness.Case("attention", shape, dtype, f"{mode}, no mask", _candidates(forwards, qkv, grad, mode),
                           baseline="sdpa", flops=attention_flops(full, shape[2], shape[3], mode != "forward"),
                           tokens=sum(full))


def dropout_cases(shape, dtype, device, p=0.1):
    """Training attention as BERT runs it (attention-probability dropout 0.1, no mask): the mask's
    random draws are part of the cost on both sides."""
    qkv, grad, _ = make_inputs(shape, dtype, device)
    forwards = {"bertfast": lambda: attention(*qkv, dropout_p=p), "sdpa": lambda: sdpa_bshd(*qkv, dropout_p=p)}
    full = [shape[1]] * shape[0]
    for mode in MODES:
        yield harness.Case("attention", shape, dtype, f"{mode}, dropout {p}", _candidates(forwards, qkv, grad, mode),
                           baseline="sdpa", flops=attention_flops(full, shape[2], shape[3], mode != "forward"),
                           tokens=sum(full))


def masked_cases(shape, dtype, device, threads=None, modes=MODES):
    qkv, grad, lengths = make_inputs(shape, dtype, device)
    mask = (torch.arange(shape[1])[None, :] < lengths[:, None]).to(device)
    packed = tuple(t.detach()[mask].clone().requires_grad_() for t in qkv)
    cu_seqlens = torch.zeros(shape[0] + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    cu_seqlens, max_len = cu_seqlens.to(device), int(lengths.max())
    forwards = {
        "bertfast": lambda: attention(*qkv, key_padding_mask=mask),
        # valid by construction: check_cu_seqlens=False keeps a host sync out of the timings
        "bertfast varlen": lambda: attention_varlen(*packed, cu_seqlens, max_len, check_cu_seqlens=False),
        "sdpa": lambda: sdpa_bshd(*qkv, mask),
    }
    inputs = {"bertfast varlen": (packed, grad[mask])}
    for mode in modes:
        candidates = {name: _candidate(fn, *inputs.get(name, (qkv, grad)), mode) for name, fn in forwards.items()}
        yield harness.Case("attention", shape, dtype, f"{mode}, padding mask", candidates, baseline="sdpa",
                           flops=attention_flops(lengths.tolist(), shape[2], shape[3], mode != "forward"),
                           tokens=int(lengths.sum()), threads=threads)


def _candidates(forwards, inputs, grad, mode):
    return {name: _candidate(fn, inputs, grad, mode) for name, fn in forwards.items()}


def _candidate(fn, inputs, grad, mode):
    return harness.forward_only(fn) if mode == "forward" else harness.forward_backward(fn, inputs, grad)


if __name__ == "__main__":
    sys.exit(harness.main(__doc__, cases))
