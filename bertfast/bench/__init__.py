"""`bertfast bench`: end-to-end training and inference against transformers (command.py), and the
harness every benchmark shares: the timing protocol (timing.py), memory measurement (memory.py),
workloads (workloads.py), the implementations compared (implementations.py) and output (output.py)."""
from .command import add_arguments, main, run, run_benchmark

__all__ = ["add_arguments", "main", "run", "run_benchmark"]
