"""The one autocast set-up: the precision names the CLI and the benchmarks take ("fp32", "bf16",
"fp16") turned into a context manager. Used by fine-tuning, prediction and the benchmark harness."""
import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(device, precision):
    """Raise ValueError unless `precision` can run on `device`: fp16 (loss scaling, tensor cores)
    needs a CUDA GPU. `device` is a torch.device or a string ("cuda", "cpu", "cuda:1")."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: choose fp32, bf16 or fp16")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")


def autocast(device, precision):
    """Mixed precision context: bf16 on CPU or GPU, fp16 on GPU only; fp32 does nothing."""
    check(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])
