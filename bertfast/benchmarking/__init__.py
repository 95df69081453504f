"""The parts of `bertfast bench` (bertfast/bench.py): timing protocol, workloads, the
implementations compared, memory measurement and output."""
