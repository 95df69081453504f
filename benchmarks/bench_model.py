"""One full training step (forward, backward, AdamW) of a BERT sequence classifier: bertfast vs
transformers (attn_implementation="sdpa") with the same weights, in the same run.

Two input shapes:
  full     batch x seq tokens, every position real.
  real     lengths drawn from the token lengths of real review snippets (Rotten Tomatoes, the
           histogram in benchmarks/data/), capped at seq; each batch padded to its longest, as a
           transformers data collator does. Both models get the same padded batches; bertfast
           removes the padding inside the model.
A third contender, transformers after bertfast.optimize(), shows the drop-in path.

    python benchmarks/bench_model.py                       # CPU, MiniLM-L6, 32 x 128, fp32
    python benchmarks/bench_model.py --device cuda --config bert-base --batch 64 --autocast bf16
    python benchmarks/bench_model.py --json results.json

Reports the median seconds per step after warm-up and the speed-up over transformers; also
the process CPU time per step, a steadier measure on a shared, oversubscribed machine (where
wall time mostly measures the other tenants). Contenders run interleaved, step by step.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import time

import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
import bertfast  # noqa: E402

MINILM_L6 = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2)
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2)
CONFIGS = {"minilm-l6": MINILM_L6, "bert-base": BERT_BASE}
LENGTHS_FILE = os.path.join(os.path.dirname(__file__), "data", "rotten_tomatoes_minilm_lengths.json")


def real_lengths(batch, seqlen, batches, seed):
    """`batches` lists of `batch` token lengths drawn from the real-snippet histogram, capped at seqlen."""
    with open(LENGTHS_FILE) as f:
        counts = json.load(f)["length_counts"]
    lengths = torch.tensor([int(k) for k in counts])
    weights = torch.tensor([float(v) for v in counts.values()])
    g = torch.Generator().manual_seed(seed)
    draws = lengths[torch.multinomial(weights, batch * batches, replacement=True, generator=g)]
    return draws.clamp(max=seqlen).view(batches, batch)


def make_batches(kind, batch, seqlen, vocab, batches, seed, device):
    g = torch.Generator().manual_seed(seed)
    if kind == "full":
        all_lengths = torch.full((batches, batch), seqlen)
    else:
        all_lengths = real_lengths(batch, seqlen, batches, seed)
    out = []
    for lengths in all_lengths:
        longest = int(lengths.max())
        mask = (torch.arange(longest)[None] < lengths[:, None]).long()
        ids = torch.randint(1000, vocab, (batch, longest), generator=g) * mask
        labels = torch.randint(0, 2, (batch,), generator=g)
        out.append({k: v.to(device) for k, v in (("input_ids", ids), ("attention_mask", mask), ("labels", labels))})
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One contender: a model, its AdamW, and a training step on a batch."""

    def __init__(self, model, device, autocast):
        self.model, self.device, self.autocast = model.train(), device, autocast
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        self.times, self.cpu_times = [], []

    def step(self, inputs, timed=True):
        sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            loss = self.model(**inputs).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - start)
            self.cpu_times.append(time.process_time() - cpu_start)


def time_round_robin(trainers, batches, steps, warmup):
    """Steps of the contenders interleaved (a, b, c, a, b, c, ...), so that a change in machine
    load during the run affects every contender alike; median seconds per step of each."""
    for i in range(warmup):
        for trainer in trainers.values():
            trainer.step(batches[i % len(batches)], timed=False)
    for i in range(steps):
        for trainer in trainers.values():
            trainer.step(batches[i % len(batches)])
    return {name: (statistics.median(t.times), t.times, statistics.median(t.cpu_times))
            for name, t in trainers.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="minilm-l6")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", default="full,real")
    parser.add_argument("--no-optimize", action="store_true", help="skip transformers + bertfast.optimize()")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    device = torch.device(args.device)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.autocast]
    config_kwargs = dict(CONFIGS[args.config])
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(
        transformers.BertConfig(**config_kwargs, attn_implementation="sdpa")).to(device)
    ours = bertfast.BertForSequenceClassification(bertfast.BertConfig(**config_kwargs)).to(device)
    ours.load_state_dict(hf.state_dict())
    contenders = {"transformers-sdpa": hf, "bertfast": ours}
    if not args.no_optimize:
        contenders["transformers+optimize"] = bertfast.optimize(copy.deepcopy(hf))

    results = {"config": args.config, "batch": args.batch, "seq": args.seq, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
               or platform.machine(), "threads": torch.get_num_threads(), "autocast": args.autocast,
               "torch": torch.__version__, "transformers": transformers.__version__,
               "fused_ops": sorted(n for n in ("attention", "attention_varlen", "softmax_cross_entropy",
                                               "linear_cross_entropy") if hasattr(bertfast.ops, n)),
               "steps": args.steps, "warmup": args.warmup, "shapes": {}}
    for kind in args.shapes.split(","):
        batches = make_batches(kind, args.batch, args.seq, config_kwargs["vocab_size"], max(args.steps, 4), 0, device)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(b["attention_mask"].numel() for b in batches)
        shape = {"real_token_fraction": round(real / padded, 3), "seconds_per_step": {}, "min_seconds_per_step": {},
                 "cpu_seconds_per_step": {}}
        trainers = {name: Trainer(model, device, autocast) for name, model in contenders.items()}
        for name, (median, times, cpu) in time_round_robin(trainers, batches, args.steps, args.warmup).items():
            shape["seconds_per_step"][name] = median
            shape["min_seconds_per_step"][name] = min(times)
            shape["cpu_seconds_per_step"][name] = cpu
            print(f"{kind:5s} {name:22s} {median:8.3f} s/step  (runs {', '.join(f'{t:.3f}' for t in times)}; "
                  f"process CPU {cpu:.3f} s/step)", flush=True)
        base = shape["seconds_per_step"]["transformers-sdpa"]
        shape["speedup_vs_transformers"] = {n: round(base / t, 3) for n, t in shape["seconds_per_step"].items()}
        min_base = shape["min_seconds_per_step"]["transformers-sdpa"]
        shape["min_time_speedup_vs_transformers"] = {n: round(min_base / t, 3)
                                                     for n, t in shape["min_seconds_per_step"].items()}
        cpu_base = shape["cpu_seconds_per_step"]["transformers-sdpa"]
        shape["cpu_time_speedup_vs_transformers"] = {n: round(cpu_base / t, 3)
                                                     for n, t in shape["cpu_seconds_per_step"].items()}
        print(f"{kind:5s} speed-up vs transformers-sdpa: median {shape['speedup_vs_transformers']}, "
              f"fastest step {shape['min_time_speedup_vs_transformers']}, "
              f"process CPU time {shape['cpu_time_speedup_vs_transformers']} "
              f"(real tokens {shape['real_token_fraction']:.0%} of padded)", flush=True)
        results["shapes"][kind] = shape
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
