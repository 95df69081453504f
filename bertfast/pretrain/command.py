"""The `bertfast pretrain` subcommand: its arguments and what it prints."""
import argparse
import os

HELP = """corpus formats:
  plain text  one document per line; or, when the file has blank lines, documents separated by
              blank lines (each line a segment: a sentence or paragraph)
  JSONL       .jsonl / .ndjson, one JSON object per line with a string field "text"
  folders     every non-hidden file below them, in sorted order

The corpus is tokenized once into a memory-mapped cache (.bertfast-cache/ beside --output, or
--cache-dir), reused while the files and the tokenizer are unchanged.

Continue a checkpoint:  bertfast pretrain --model DIR --train corpus/ --eval heldout.txt --output OUT
Start from scratch:     bertfast pretrain --config minilm-l6 --tokenizer DIR --train corpus/ --output OUT
Then fine-tune:         bertfast finetune --model OUT --task classify ...
Many GPUs: torchrun --nproc_per_node=N -m bertfast pretrain ... (--batch-size is per process)."""


def add_arguments(sub):
    p = sub.add_parser("pretrain", help="masked-LM pretraining, continued from a checkpoint or from scratch",
                       description="Masked-LM (and optionally next-sentence) pretraining of a BERT on a text corpus.",
                       epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--model", help="checkpoint folder to continue from (an MLM head is created if it has none)")
    g.add_argument("--config", help="start from scratch: a config.json (or its folder), or bert-base, bert-large, minilm-l6, tiny")
    g.add_argument("--tokenizer", help="tokenizer folder (tokenizer.json or vocab.txt); default: --model")
    g.add_argument("--train", nargs="+", help="corpus files or folders")
    g.add_argument("--eval", nargs="+", help="held-out corpus: masked accuracy, loss and perplexity with fixed masks")
    g.add_argument("--output", help="folder for the model, checkpoints and logs")
    g.add_argument("--cache-dir", help="where the token caches live (default: .bertfast-cache beside --output)")
    g.add_argument("--max-length", type=int, help="tokens per block, [CLS] and [SEP] included (default 128)")
    g.add_argument("--mask-prob", type=float, help="fraction of tokens masked, 80%% [MASK] / 10%% random / 10%% kept (default 0.15)")
    g.add_argument("--whole-word", action="store_true", default=None, help="mask whole words (a token and its ## pieces)")
    g.add_argument("--nsp", action="store_true", default=None, help="sentence pairs with next-sentence prediction (BertForPreTraining)")
    g.add_argument("--max-eval-blocks", type=int, help="evaluate on the first N held-out examples only (default: all)")
    h = p.add_argument_group("optimisation")
    h.add_argument("--epochs", type=float, help="passes over the corpus; fractions allowed (default 1)")
    h.add_argument("--batch-size", type=int, help="blocks per process per step (default 32)")
    h.add_argument("--lr", type=float, help="peak learning rate of AdamW (default 1e-4)")
    h.add_argument("--warmup-ratio", type=float, help="fraction of steps of linear warm-up, then linear decay (default 0.06)")
    h.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    h.add_argument("--gradient-accumulation", type=int, help="micro-batches per optimizer step (default 1)")
    h.add_argument("--max-grad-norm", type=float, help="gradient clipping norm; 0 turns it off (default 1.0)")
    h.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")
    h.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    h.add_argument("--seed", type=int, help="seed of initialisation, dropout, data order and masks (default 42)")
    r = p.add_argument_group("evaluation and checkpoints")
    r.add_argument("--eval-every", type=int, help="evaluate every N optimizer steps (default: at each epoch end)")
    r.add_argument("--save-every", type=int, help="checkpoint every N steps (default: at each evaluation and epoch end)")
    r.add_argument("--resume", action="store_true", default=None, help="continue the run in --output from its last checkpoint")
    r.add_argument("--overwrite", action="store_true", default=None, help="empty a non-empty --output first")
    r.add_argument("--keep-checkpoints", action="store_true", default=None, help="keep the training checkpoints")
    r.add_argument("--no-progress", action="store_true", default=None, help="no progress bar")
    return p


def pretrain_config(args):
    from .job import PretrainConfig
    given = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    progress = not given.pop("no_progress", False)
    if "output" not in given:
        raise SystemExit("bertfast pretrain: error: --output required")
    if given.get("resume"):  # the run's saved arguments fill in the rest
        return PretrainConfig(progress=progress, **{"train": [], **given})
    if "train" not in given or not ("model" in given or "config" in given):
        raise SystemExit("bertfast pretrain: error: --train and one of --model or --config required")
    return PretrainConfig(progress=progress, **given)


def run(args):
    from .job import pretrain
    cfg = pretrain_config(args)
    result = pretrain(cfg)
    if os.environ.get("RANK", "0") == "0":
        final = result["best"] or result["eval"]
        if final:
            print("held-out: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in final.items()))
        print(f"model: {os.path.abspath(result['output'])}  (bertfast finetune --model {result['output']} ...)")
    return 0
