"""Kernel report: `python -m tools.kernel_report` compiles the torch-free CUDA kernel files
with `nvcc -Xptxas -v` for sm_80 and sm_90 and prints, per kernel and arch, registers, shared
memory, spills and whether the SASS holds the instructions the kernel is meant to use
(expectations.py). No GPU needed; CI runs it."""
from .report import analyse, main

__all__ = ["analyse", "main"]
