"""The fused losses against their unfused torch baselines, forward + backward.

softmax_cross_entropy against F.cross_entropy (label smoothing 0.1, one label in 7 ignored), also
with inplace_backward=True (the gradient overwrites the logits, which are refilled untimed before
every call). CPU: (4096, 30522) float32. CUDA: 30522, 50257 and 256000 classes in fp32, bf16 and
fp16, with the bandwidth (bytes that must move: read the logits in forward, read them and write
their gradient in backward) as a fraction of the copy bandwidth measured in the same run.

linear_cross_entropy against F.linear + F.cross_entropy, N=8192 rows, H=768, V=30522 (float32 on
the CPU, bf16 on CUDA): time, and the peak memory each call adds ("peak extra MB": on the CPU the
resident set size sampled during the call, on CUDA torch.cuda.max_memory_allocated; see
bertfast/bench/memory.py), with "memory ratio" the fused call's peak over the unfused one's.

Gradients are taken with torch.autograd.grad, as a model's backward hands them on (nothing
accumulates in .grad). On the CPU the non-in-place backward's time is mostly the page faults of its
fresh (rows, classes) gradient buffer, which F.cross_entropy pays three times over; torch's own
THP_MEM_ALLOC_ENABLE=1 (transparent huge pages for large allocations) cuts that cost for both.

    python benchmarks/bench_cross_entropy.py [--device cuda] [--json out.json] [--quick]
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout's bertfast
from bertfast.bench import harness  # noqa: E402
from bertfast.ops import linear_cross_entropy, softmax_cross_entropy  # noqa: E402

# softmax_cross_entropy: (rows, classes) per dtype; linear_cross_entropy: (rows, hidden, vocab)
SOFTMAX_SHAPES = {"cuda": [(4096, 30522), (4096, 50257), (1024, 256000)], "cpu": [(4096, 30522)],
                  "quick": [(256, 3001)]}
SOFTMAX_DTYPES = {"cuda": [torch.float32, torch.bfloat16, torch.float16], "cpu": [torch.float32]}
LINEAR_SHAPES = {"cuda": [(8192, 768, 30522)], "cpu": [(8192, 768, 30522)], "quick": [(512, 64, 3001)]}
LINEAR_DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}
SMOOTHING = 0.1


def cases(device, quick):
    kind, device_type = "quick" if quick else torch.device(device).type, torch.device(device).type
    for dtype in SOFTMAX_DTYPES[device_type]:
        for rows, classes in SOFTMAX_SHAPES[kind]:
            yield softmax_case(rows, classes, dtype, device)
    for shape in LINEAR_SHAPES[kind]:
        yield linear_case(*shape, LINEAR_DTYPE[device_type], device)


def labels_for(rows, classes, generator, device):
    labels = torch.randint(0, classes, (rows,), generator=generator)
    labels[::7] = -100
    return labels.to(device)


def softmax_case(rows, classes, dtype, device):
    g = torch.Generator().manual_seed(0)
    source = (torch.randn(rows, classes, generator=g) * 3).to(dtype=dtype, device=device)
    labels = labels_for(rows, classes, g, device)
    # The in-place backward overwrites the logits (refilled untimed before each call), which must then
    # be an activation, as in a model, not a leaf: torch refuses in-place writes to leaves that need grad.
    logits = source.clone().requires_grad_() * 1

    def refill():
        with torch.no_grad():
            logits.copy_(source)

    losses = {
        "bertfast": lambda: softmax_cross_entropy(logits, labels, label_smoothing=SMOOTHING),
        "bertfast inplace": lambda: softmax_cross_entropy(logits, labels, label_smoothing=SMOOTHING,
                                                          inplace_backward=True),
        "F.cross_entropy": lambda: F.cross_entropy(logits.float(), labels, label_smoothing=SMOOTHING),
    }
    candidates = {name: harness.forward_backward(loss, (logits,)) for name, loss in losses.items()}
    return harness.Case("softmax_cross_entropy", (rows, classes), dtype, "fwd+bwd", candidates,
                        baseline="F.cross_entropy", bytes=3 * rows * classes * source.element_size(), before=refill)


def linear_case(rows, hidden_size, vocab, dtype, device):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, hidden_size, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * hidden_size ** -0.5).to(device, dtype).requires_grad_()
    bias = torch.zeros(vocab, device=device, dtype=dtype, requires_grad=True)
    labels = labels_for(rows, vocab, g, device)
    losses = {
        "bertfast": lambda: linear_cross_entropy(hidden, weight, labels, bias=bias),
        "unfused": lambda: F.cross_entropy(F.linear(hidden, weight, bias).float(), labels),
    }
    candidates = {name: harness.forward_backward(loss, (hidden, weight, bias)) for name, loss in losses.items()}
    # the logits' GEMM forward, and the two GEMMs of its backward
    return harness.Case("linear_cross_entropy", (rows, hidden_size, vocab), dtype, "fwd+bwd", candidates,
                        baseline="unfused", flops=6 * rows * hidden_size * vocab, memory=True, max_reps=3)


if __name__ == "__main__":
    sys.exit(harness.main(__doc__, cases))
