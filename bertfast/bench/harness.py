"""The op benchmarks' harness. Each benchmarks/bench_<op>.py declares its cases: the shapes, and
for each one the candidates (bertfast's op and its plain-PyTorch baselines, on the same inputs)
and the work that must be done (bytes moved, FLOPs, tokens). This measures every case the same
way: timing.py's protocol (interleaved, median after warm-up, CUDA synchronised), memory.py's
peak where a case asks for it, rates against ceilings measured in the same run (copy bandwidth,
GEMM rate), and one table and JSON payload (output.py) with the run's conditions.

    def cases(device, quick):          # in benchmarks/bench_<op>.py
        yield Case("my_op", (rows, cols), dtype, "forward", {"bertfast": ..., "torch": ...}, "torch")
    sys.exit(harness.main(__doc__, cases))
"""
import argparse
import traceback
from dataclasses import dataclass

import torch

from . import memory, output, timing

# (row key, column title) of the op benchmarks' table, also summarize.py's.
COLUMNS = [("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("mode", "mode"), ("threads", "threads"),
           ("impl", "impl"), ("ms", "ms"), ("cpu_ms", "cpu ms"), ("speedup", "speedup"),
           ("cpu_speedup", "cpu speedup"), ("GBps", "GB/s"), ("of_copy_bw", "of copy bw"),
           ("tflops", "TFLOP/s"), ("of_gemm", "of GEMM"), ("tokens_per_s", "tokens/s"),
           ("peak_extra_MB", "peak extra MB"), ("memory_ratio", "memory ratio")]

# Each ceiling is measured once, when a case first needs it (small sizes under --quick).
CEILINGS = {
    "copy_GBps": lambda device, quick: timing.copy_bandwidth(device, (16 << 20) if quick else None) / 1e9,
    "gemm_TFLOPs": lambda device, quick: timing.gemm_rate(device, n=256 if quick else None) / 1e12,
}


@dataclass
class Case:
    """One comparison. `candidates` ({name: fn()}, on the same inputs) are timed together and each
    is compared with `baseline`, one of them. The work that must be done, where given, turns times
    into rates: `bytes` moved (GB/s, and the fraction of the copy bandwidth), `flops` (TFLOP/s, and
    the fraction of the GEMM rate: bf16 on CUDA, float32 on the CPU), `tokens` (tokens/s)."""
    op: str
    shape: tuple
    dtype: torch.dtype
    mode: str
    candidates: dict
    baseline: str
    bytes: int = None
    flops: float = None
    tokens: int = None
    before: object = None     # runs untimed before every call (refills an input a candidate overwrites)
    memory: bool = False      # also the peak memory each candidate's call adds (one more call each)
    threads: int = None       # torch.set_num_threads while the case runs
    max_reps: int = None      # for slow cases: at most this many repetitions and one warm-up

    @property
    def label(self):
        threads = f", threads {self.threads}" if self.threads else ""
        return f"{self.op} {_shape(self.shape)} {_dtype(self.dtype)} {self.mode}{threads}"


def forward_only(fn):
    """fn() under no_grad: a forward pass as inference runs it."""
    def run():
        with torch.no_grad():
            return fn()
    return run


def forward_backward(fn, inputs, grad=None):
    """fn() and the gradients of `inputs` (torch.autograd.grad: nothing accumulates in .grad),
    as a model's backward would hand them on; `grad` is the output's gradient (None for a loss)."""
    return lambda: torch.autograd.grad(fn(), inputs, grad)


class Ceilings:
    def __init__(self, device, quick):
        self.device, self.quick, self.values = device, quick, {}

    def __getitem__(self, key):
        if key not in self.values:
            self.values[key] = _sig(CEILINGS[key](self.device, self.quick))
            print(f"{key}: {self.values[key]}", flush=True)
        return self.values[key]


def measure(case, device, reps, warmup, ceilings):
    """The rows of one case: one per candidate."""
    if case.max_reps:
        reps, warmup = min(reps, case.max_reps), min(warmup, 1)
    with timing.threads(case.threads):
        times = timing.time_interleaved(case.candidates, device, warmup=warmup, reps=reps, before=case.before)
        peaks = _peaks(case, device) if case.memory else {}
    return [_row(case, name, times, peaks, device, ceilings) for name in case.candidates]


def _peaks(case, device):
    peaks = {}
    for name, fn in case.candidates.items():
        if case.before:
            case.before()
        peaks[name] = memory.added_bytes(fn, device)
    return peaks


def _row(case, name, times, peaks, device, ceilings):
    seconds, base = times[name]["median_s"], times[case.baseline]["median_s"]
    on_cpu = torch.device(device).type == "cpu"
    compared = name != case.baseline
    row = {"op": case.op, "shape": _shape(case.shape), "dtype": _dtype(case.dtype), "mode": case.mode,
           "threads": case.threads, "impl": name, "baseline": case.baseline,
           "ms": _sig(seconds * 1e3), "ms_min": _sig(times[name]["min_s"] * 1e3),
           "cpu_ms": _sig(times[name]["cpu_median_s"] * 1e3) if on_cpu else None,
           "speedup": round(base / seconds, 2) if compared else None,
           "cpu_speedup": _ratio(times[case.baseline]["cpu_median_s"], times[name]["cpu_median_s"])
           if on_cpu and compared else None}
    row.update(_rates(case, seconds, ceilings))
    if case.memory:
        row.update(_memory(peaks[name], peaks[case.baseline], compared))
    row["samples_s"] = [_sig(s) for s in times[name]["samples"]]
    return row


def _rates(case, seconds, ceilings):
    rates = {}
    if case.bytes:
        rates["GBps"] = _sig(case.bytes / seconds / 1e9)
        rates["of_copy_bw"] = _sig(rates["GBps"] / ceilings["copy_GBps"], 3)
    if case.flops:
        rates["tflops"] = _sig(case.flops / seconds / 1e12)
        rates["of_gemm"] = _sig(rates["tflops"] / ceilings["gemm_TFLOPs"], 3)
    if case.tokens:
        rates["tokens_per_s"] = _sig(case.tokens / seconds)
    return rates


def _memory(peak, baseline_peak, compared):
    if peak is None:
        return {"peak_extra_MB": None}
    ratio = _ratio(peak, baseline_peak) if compared and baseline_peak else None
    return {"peak_extra_MB": round(peak / 2**20, 1), "memory_ratio": ratio}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _sig(x, digits=4):
    return float(f"{x:.{digits}g}")


def _shape(shape):
    return str(tuple(shape)) if isinstance(shape, (tuple, list)) else str(shape)


def _dtype(dtype):
    return str(dtype).replace("torch.", "")


def parse_arguments(description, argv=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--json", help="write the rows, the ceilings and the run's conditions here")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks that the benchmark runs")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}, but torch sees no CUDA device")
    args.reps = args.reps or (2 if args.quick else 10)
    args.warmup = (1 if args.quick else 3) if args.warmup is None else args.warmup
    return args


def main(description, cases, argv=None):
    """A bench script's whole run: parse its options, measure every case of cases(device, quick),
    print the table, write the JSON (also after each case: a run cut short keeps what it measured).
    Returns the exit status: 1 if a case failed (the others are still measured)."""
    args = parse_arguments(description, argv)
    run = Run(args)
    for case in cases(args.device, args.quick):
        run.measure(case)
    print()
    print(output.format_conditions(run.conditions))
    print(" | ".join(f"{k}: {v}" for k, v in run.ceilings.values.items()))
    print(output.format_table(run.rows, COLUMNS))
    for note in run.notes:
        print(f"note: {note}")
    run.write(complete=True)
    return 1 if run.notes else 0


class Run:
    """The rows, notes and ceilings of one bench script's run, and its JSON."""

    def __init__(self, args):
        self.args, self.rows, self.notes = args, [], []
        self.conditions = timing.run_conditions(args.device)
        self.ceilings = Ceilings(args.device, args.quick)

    def measure(self, case):
        print(f"timing {case.label}", flush=True)
        try:
            self.rows += measure(case, self.args.device, self.args.reps, self.args.warmup, self.ceilings)
        except Exception as e:  # one case failing (an unsupported shape, out of memory) costs only its rows
            traceback.print_exc()
            self.notes.append(f"{case.label} failed: {type(e).__name__}: {str(e)[:300]}")
            if torch.device(self.args.device).type == "cuda":
                torch.cuda.empty_cache()
        self.write(complete=False)

    def write(self, complete):
        if self.args.json:
            settings = {k: getattr(self.args, k) for k in ("device", "reps", "warmup", "quick")}
            output.write_json(self.args.json, {"conditions": self.conditions, "settings": settings,
                                               "ceilings": self.ceilings.values, "notes": self.notes,
                                               "rows": self.rows, "complete": complete})
