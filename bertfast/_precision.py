"""The one autocast set-up: the precision names the CLI and the benchmarks take ("fp32", "bf16",
"fp16") turned into a context manager. Used by fine-tuning, prediction and the benchmark harness."""
import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device, precision):
    """Mixed precision context: bf16 on CPU or GPU, fp16 on GPU only; fp32 does nothing.
    `device` is a torch.device or a string ("cuda", "cpu", "cuda:1")."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}: use fp32, bf16 or fp16")
    device_type = torch.device(device).type
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    return torch.autocast(device_type=device_type, dtype=DTYPES[precision])
