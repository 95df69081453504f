"""`bertfast bench`: end-to-end throughput and memory of bertfast's model against transformers'.

For each family (--family: bert, roberta, xlm-roberta, camembert, electra, distilbert), model
size, sequence length, length distribution and mode (a training step with AdamW, or inference),
every implementation runs the same batches with the same weights: bertfast's model,
transformers' class for the family with attn_implementation "eager" and "sdpa", with --optimize
transformers' model through bertfast.optimize, and each of them under torch.compile when asked.
They are timed interleaved in one run (median of --steps repetitions after warm-up, CUDA
synchronised), so the ratios compare like with like.

Reported per row: milliseconds per repetition, real (non-padding) tokens/s, samples/s, peak
memory (see bertfast/bench/memory.py for how it is measured on CPU and CUDA), achieved
model TFLOP/s (useful FLOPs on real tokens), on a GPU the model FLOP utilisation against the
bf16 GEMM rate measured in the same run, and for bertfast rows the speedup over each baseline.

"full" batches have every sequence at --seq-len; "real" batches draw lengths from real text
(Rotten Tomatoes snippets up to 128 tokens, SQuAD question + paragraph beyond: see
bertfast/bench/bench_lengths.json) and are padded to their longest sequence, as a dynamic-
padding collator does.

    bertfast bench                                  # sizes that suit the machine
    python -m bertfast.bench --model bert-base --seq-len 128 512 --json out.json --plot plots/
    bertfast bench --family roberta --optimize      # RoBERTa at the same sizes, with the drop-in
"""
import argparse
import gc
from dataclasses import dataclass

import torch

from .. import _precision
from . import implementations, memory, output, timing, workloads

GPU_TOKENS_PER_BATCH = {"minilm-l6": 32768, "bert-base": 16384, "bert-large": 8192, "tiny": 4096}
CPU_TOKENS_PER_BATCH = {"minilm-l6": 1024, "bert-base": 512, "bert-large": 256, "tiny": 64}


def add_arguments(parser):
    """The options of `bertfast bench` (also used by `python -m bertfast.bench`)."""
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--precision", choices=_precision.PRECISIONS, default=None,
                        help="autocast precision (default: bf16 on CUDA, fp32 on CPU); weights and AdamW stay fp32")
    parser.add_argument("--model", nargs="+", choices=sorted(workloads.MODEL_SIZES), default=None,
                        help="model sizes (default: minilm-l6 bert-base bert-large on CUDA, minilm-l6 on CPU)")
    parser.add_argument("--family", nargs="+", choices=workloads.FAMILIES, default=["bert"],
                        help="model families: transformers' class for each and bertfast's model with its weights "
                             "(default: bert)")
    parser.add_argument("--task", nargs="+", choices=workloads.TASKS, default=["classification"],
                        help="heads: BertForSequenceClassification and/or BertForMaskedLM (default: classification)")
    parser.add_argument("--seq-len", nargs="+", type=int, default=None,
                        help="sequence lengths (default: 128 512 on CUDA, 128 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sequences per batch (default: a token budget per model that fills a GPU, or "
                             "that keeps a small CPU run to about a minute)")
    parser.add_argument("--lengths", nargs="+", choices=("full", "real"), default=["full", "real"],
                        help="full-length batches and/or lengths drawn from real text (default: both)")
    parser.add_argument("--real-batches", type=int, default=None,
                        help="batches per repetition for real lengths (default: 4 on CUDA, 2 on CPU)")
    parser.add_argument("--mode", nargs="+", choices=("train", "inference"), default=["train", "inference"])
    parser.add_argument("--baselines", nargs="*", choices=implementations.BASELINES,
                        default=list(implementations.BASELINES),
                        help="transformers attn_implementation baselines (default: eager sdpa)")
    parser.add_argument("--no-bertfast", action="store_true", help="time the baselines only")
    parser.add_argument("--optimize", action="store_true",
                        help="also time transformers' sdpa model patched by bertfast.optimize (hf-sdpa+optimize)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="also time every implementation under torch.compile (auto: on for CUDA, off on CPU "
                             "where compiling takes minutes)")
    parser.add_argument("--steps", type=int, default=None, help="timed repetitions (default: 10 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--json", help="write rows, notes and the run's conditions here")
    parser.add_argument("--csv", help="write the rows here, with the conditions on each line")
    parser.add_argument("--markdown", help="write the table as markdown here")
    parser.add_argument("--plot", metavar="DIR", help="write throughput.png and memory.png here (needs matplotlib)")
    return parser


def _defaults(args):
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bertfast bench: --device cuda, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"bertfast bench: --device {args.device}: only cpu and cuda are supported")
    on_gpu = device.type == "cuda"
    if args.precision is None:
        args.precision = "bf16" if on_gpu else "fp32"
    try:
        _precision.check(device, args.precision)
    except ValueError as e:
        raise SystemExit(f"bertfast bench: {e}") from None
    args.model = args.model or (["minilm-l6", "bert-base", "bert-large"] if on_gpu else ["minilm-l6"])
    args.seq_len = args.seq_len or ([128, 512] if on_gpu else [128])
    for n in args.seq_len:
        if not 2 <= n <= 512:
            raise SystemExit(f"bertfast bench: --seq-len {n}: must be in [2, 512] (BERT's position table)")
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit("bertfast bench: --batch-size must be at least 1")
    args.steps = args.steps or (10 if on_gpu else 3)
    args.warmup = (3 if on_gpu else 1) if args.warmup is None else args.warmup
    args.real_batches = args.real_batches or (4 if on_gpu else 2)
    args.compile_modes = [False, True] if args.compile == "on" or (args.compile == "auto" and on_gpu) else [False]
    return args


def _batch_size(args, model_size, seq_len):
    if args.batch_size:
        return args.batch_size
    budget = (GPU_TOKENS_PER_BATCH if args.device.startswith("cuda") else CPU_TOKENS_PER_BATCH)[model_size]
    return max(1, budget // seq_len)


@dataclass
class Workload:
    """What one measurement runs: the same batches through every implementation, in one mode."""
    model_size: str
    family: str
    task: str
    seq_len: int
    lengths_kind: str    # "full" or "real"
    mode: str            # "train" or "inference"
    batches: list

    @property
    def label(self):
        return f"{self.family}/{self.model_size}/{self.task}/{self.seq_len}/{self.lengths_kind}/{self.mode}"


def _workload_fn(impl, workload, args):
    step = implementations.STEPS[workload.mode]

    def run():
        for batch in workload.batches:
            step(impl, batch, args.device, args.precision)
    return run


def _measure(impls, workload, args, notes):
    """Time the implementations that run (interleaved) and measure each one's peak memory."""
    runnable = {}
    for impl in impls:
        fn = _workload_fn(impl, workload, args)
        try:
            fn()  # also compiles, when compiled
        except Exception as e:  # e.g. torch.compile failing on a model: report it, time the others
            notes.append(f"{workload.label}: {impl.name} failed and was left out: {type(e).__name__}: "
                         f"{str(e)[:300]}")
            continue
        runnable[impl.name] = (impl, fn)
    times = timing.time_interleaved({n: fn for n, (_, fn) in runnable.items()}, args.device,
                                    warmup=max(0, args.warmup - 1), reps=args.steps)
    peaks = {n: memory.peak_bytes(fn, impl.base, impl.optimizer, workload.mode == "train", args.device)
             for n, (impl, fn) in runnable.items()}
    return runnable, times, peaks


def _rows_for(workload, runnable, times, peaks, args, gemm_flops):
    w, batches = workload, workload.batches
    size = workloads.MODEL_SIZES[w.model_size]
    tokens = sum(b.real_tokens for b in batches)
    samples = sum(len(b.lengths) for b in batches)
    padded = sum(b.padded_tokens for b in batches)
    vocab_size = workloads.FAMILY_CONFIGS[w.family]["vocab_size"]
    flops = sum(workloads.step_flops(size, b.lengths, w.task, w.mode, vocab_size) for b in batches)
    lengths_label = "full" if w.lengths_kind == "full" else f"real:{workloads.real_distribution_for(w.seq_len)}"
    rows = []
    for name, (impl, _) in runnable.items():
        t = times[name]["median_s"]
        rows.append({
            "family": w.family, "model": w.model_size, "task": w.task, "seq_len": w.seq_len,
            "lengths": lengths_label, "batch_size": len(batches[0].lengths), "batches": len(batches), "mode": w.mode,
            "impl": name, "compiled": impl.compiled, "uses_bertfast": impl.uses_bertfast, "precision": args.precision,
            "ms": round(t * 1e3, 2),
            "ms_min": round(times[name]["min_s"] * 1e3, 2),
            "cpu_ms": None if args.device.startswith("cuda") else round(times[name]["cpu_median_s"] * 1e3, 2),
            "real_tokens": tokens, "padded_tokens": padded,
            "tokens_per_s": round(tokens / t, 1), "samples_per_s": round(samples / t, 2),
            "peak_mem_MB": None if peaks[name] is None else round(peaks[name] / 2**20, 1),
            "tflops": float(f"{flops / t / 1e12:.4g}"),
            "mfu": round(flops / t / gemm_flops, 3) if gemm_flops else None,
            "samples_s": [round(s, 5) for s in times[name]["samples"]],
        })
    _add_speedups(rows)
    return rows


def _add_speedups(rows):
    """bertfast's speedup over each baseline (compiled against compiled), in wall and CPU time."""
    for row in rows:
        if row["uses_bertfast"]:
            suffix = "+compile" if row["compiled"] else ""
            for baseline in implementations.BASELINES:
                other = next((r for r in rows if r["impl"] == f"hf-{baseline}{suffix}"), None)
                row[f"vs_hf_{baseline}"] = round(other["ms"] / row["ms"], 2) if other else None
                if other and row["cpu_ms"] and other["cpu_ms"]:  # the same ratio in process CPU time
                    row[f"cpu_vs_hf_{baseline}"] = round(other["cpu_ms"] / row["cpu_ms"], 2)


def run_benchmark(args, progress=None):
    """Everything `main` does except printing and writing; returns (rows, notes, conditions).
    `progress(rows, notes, conditions)` is called after each workload (partial results survive
    a run that is cut short)."""
    args = _defaults(args)
    _allow_recompiles(args)
    conditions, gemm_flops = _conditions(args)
    rows, notes = [], []
    generator = torch.Generator().manual_seed(1234)

    def report(new_rows):
        rows.extend(new_rows)
        if progress:
            progress(rows, notes, conditions)
    for task in args.task:
        for model_size in args.model:
            batch_source = _batch_source(args, generator)  # every family gets the same batches
            for family in args.family:
                _bench_model(args, task, model_size, family, batch_source, gemm_flops, notes, report)
                _free_memory(args.device)
    return rows, notes, conditions


def _batch_source(args, generator):
    """make_batches, memoised: the families of one model size run the same batches."""
    made = {}

    def batches(task, batch_size, seq_len, lengths_kind):
        key = (task, batch_size, seq_len, lengths_kind)
        if key not in made:
            made[key] = workloads.make_batches(task, batch_size, seq_len, lengths_kind, args.real_batches, generator)
        return made[key]
    return batches


def _allow_recompiles(args):
    """Real-length batches have several shapes: let torch.compile recompile for each of them."""
    if args.compile_modes[-1]:
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


def _conditions(args):
    """The run's conditions, and on a GPU the bf16 GEMM rate that MFU is measured against."""
    conditions = timing.run_conditions(args.device)
    if not args.device.startswith("cuda"):
        return conditions, None
    gemm_flops = timing.gemm_rate(args.device)
    conditions["bf16_gemm_TFLOPs"] = round(gemm_flops / 1e12, 1)
    print(f"bf16 GEMM rate: {gemm_flops / 1e12:.1f} TFLOP/s (MFU is measured against it)", flush=True)
    return conditions, gemm_flops


def _bench_model(args, task, model_size, family, batch_source, gemm_flops, notes, report):
    """Every workload (sequence length x lengths x mode) of one family, model size and task; the
    implementations are built here and freed when this returns."""
    impls = implementations.make_implementations(
        model_size, task, args.device, args.baselines, not args.no_bertfast, args.compile_modes, args.precision,
        with_optimize=args.optimize and not args.no_bertfast, family=family)
    if not impls:
        raise SystemExit("bertfast bench: nothing to time (no baselines and no bertfast model)")
    for seq_len in args.seq_len:
        batch_size = _batch_size(args, model_size, seq_len)
        for lengths_kind in args.lengths:
            batches = [b.to(args.device) for b in workloads.for_family(
                batch_source(task, batch_size, seq_len, lengths_kind), family)]
            for mode in args.mode:
                workload = Workload(model_size, family, task, seq_len, lengths_kind, mode, batches)
                print(f"timing {workload.label} (batch {batch_size})", flush=True)
                report(_rows_for(workload, *_measure(impls, workload, args, notes), args, gemm_flops))


def _free_memory(device):
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main(args):
    def save_partial(rows, notes, conditions):
        if args.json:
            output.write_json(args.json, _payload(args, rows, notes, conditions, complete=False))
    with timing.threads(args.threads):
        rows, notes, conditions = run_benchmark(args, save_partial)
    print()
    print(output.format_conditions(conditions))
    print(output.format_table(rows))
    for note in notes:
        print(f"note: {note}")
    _write(args, rows, notes, conditions)
    return 0


def _payload(args, rows, notes, conditions, complete):
    return {"conditions": conditions, "settings": _settings(args), "notes": notes, "rows": rows,
            "complete": complete}


def _write(args, rows, notes, conditions):
    """The outputs asked for: JSON, CSV, markdown, plots."""
    if args.json:
        output.write_json(args.json, _payload(args, rows, notes, conditions, complete=True))
    if args.csv:
        output.write_csv(args.csv, rows, conditions)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(output.format_markdown(rows) + "\n")
    if args.plot and rows:
        for path in output.plot(args.plot, rows, conditions):
            print(f"wrote {path}")


def _settings(args):
    keys = ("device", "precision", "family", "model", "task", "seq_len", "batch_size", "lengths", "real_batches",
            "mode", "baselines", "no_bertfast", "optimize", "compile", "steps", "warmup")
    return {k: getattr(args, k) for k in keys}  # the command line is in the conditions


def run(argv=None):
    parser = add_arguments(argparse.ArgumentParser(
        prog="bertfast bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return main(parser.parse_args(argv))

