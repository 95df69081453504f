"""One training step (forward, backward, AdamW) of a sequence classifier of each family: bertfast vs
transformers' own class for that family (attn_implementation="sdpa"), the same weights, the same
batches, in the same run, interleaved (bertfast/bench's timing). BERT's ratio is measured alongside
as the reference the other families should reach.

    python benchmarks/bench_families.py                                # CPU, MiniLM-L6 size, 32 x 128
    python benchmarks/bench_families.py --families bert roberta electra --json out.json

"full": every sequence --seq-len tokens; "real": lengths from the Rotten Tomatoes histogram
(bertfast/bench), each batch padded to its longest; --real-batches batches per repetition.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from bertfast.bench import implementations, timing, workloads  # noqa: E402

SIZE = workloads.MODEL_SIZES["minilm-l6"]
FAMILY_CONFIGS = {  # transformers' config fields besides the size: each family's usual checkpoint
    "bert": dict(vocab_size=30522, type_vocab_size=2),
    "roberta": dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                    layer_norm_eps=1e-5),
    "xlm-roberta": dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                        layer_norm_eps=1e-5),
    "electra": dict(vocab_size=30522, embedding_size=128, type_vocab_size=2),
    "distilbert": dict(vocab_size=30522),
}
_DISTILBERT = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
               "intermediate_size": "hidden_dim"}


def hf_model(family):
    import transformers
    from bertfast.model import families
    fields = {**SIZE, **FAMILY_CONFIGS[family], "num_labels": 2}
    if family == "distilbert":
        fields = {_DISTILBERT.get(k, k): v for k, v in fields.items()}
    config = transformers.AutoConfig.for_model(family, **fields)
    cls = getattr(transformers, families.architecture(config, "BertForSequenceClassification"))
    torch.manual_seed(0)
    return cls._from_config(config, attn_implementation="sdpa")


def family_batches(family, args, generator):
    """The bench's batches with the family's pad id at padding and ids inside its vocabulary."""
    config = FAMILY_CONFIGS[family]
    batches = workloads.make_batches("classification", args.batch, args.seq_len, args.lengths_kind,
                                     args.real_batches, generator)
    pad = config.get("pad_token_id", 0)
    for b in batches:
        b.input_ids = torch.where(b.attention_mask.bool(), b.input_ids.clamp(max=config["vocab_size"] - 1), pad)
        if family == "distilbert":
            b.token_type_ids = None
    return batches


def step_fn(impl, batches, family):
    def run():
        for b in batches:
            impl.base.train()
            impl.optimizer.zero_grad(set_to_none=True)
            kwargs = {} if b.token_type_ids is None else {"token_type_ids": b.token_type_ids}
            out = impl.model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, **kwargs)
            out["loss"].backward()
            impl.optimizer.step()
    return run


def measure(family, args):
    reference = hf_model(family)
    ours = implementations.build_bertfast(reference, "classification")
    impls = {}
    for name, module in (("bertfast", ours), ("hf-sdpa", reference)):
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
        impls[name] = implementations.Implementation(name, module, module, optimizer)
    batches = family_batches(family, args, torch.Generator().manual_seed(0))
    result = timing.time_interleaved({n: step_fn(i, batches, family) for n, i in impls.items()}, "cpu",
                                     warmup=args.warmup, reps=args.reps)
    return {"family": family, "lengths": args.lengths_kind, "real_tokens": sum(b.real_tokens for b in batches),
            "padded_tokens": sum(b.padded_tokens for b in batches),
            **{f"{n}_median_s": r["median_s"] for n, r in result.items()},
            **{f"{n}_cpu_median_s": r["cpu_median_s"] for n, r in result.items()},
            "speedup": result["hf-sdpa"]["median_s"] / result["bertfast"]["median_s"],
            "speedup_cpu_time": result["hf-sdpa"]["cpu_median_s"] / result["bertfast"]["cpu_median_s"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", nargs="+", default=["bert", "roberta"], choices=sorted(FAMILY_CONFIGS))
    p.add_argument("--lengths", nargs="+", default=["full", "real"], choices=["full", "real"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--real-batches", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", help="also write the rows and the run's conditions here")
    args = p.parse_args()
    rows = []
    for lengths in args.lengths:
        args.lengths_kind = lengths
        for family in args.families:  # BERT and the others back to back, under the same load
            row = measure(family, args)
            rows.append(row)
            print(f"{family:12s} {lengths:5s} bertfast {row['bertfast_median_s'] * 1e3:8.1f} ms  hf-sdpa "
                  f"{row['hf-sdpa_median_s'] * 1e3:8.1f} ms  speed-up {row['speedup']:.2f}x "
                  f"(cpu time {row['speedup_cpu_time']:.2f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"conditions": timing.run_conditions("cpu"), "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
