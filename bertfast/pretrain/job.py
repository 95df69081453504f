"""`bertfast pretrain`: masked-LM pretraining, continued from a checkpoint or from a config, on
the fine-tuning trainer's steps (schedule, AdamW, accumulation, autocast, DDP, checkpoints and
exact resume, evaluation every N steps); this module supplies the data, the model and the
held-out metrics through the trainer's `Run.job` hook (the Job class below)."""
import dataclasses
import functools
import math
import os
import shutil
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import _precision
from .._files import atomic_write_json
from ..finetune import checkpoints as ckpt
from ..finetune import distributed, trainer
from ..finetune.data import DataError
from ..finetune.models import TOKENIZER_FILES, check_model_dir
from ..finetune.tokenization import BertTokenizer
from ..finetune.trainer import FinetuneError, Log
from .blocks import MLMBlocks, NSPPairs
from .corpus import open_cache, token_cache
from .masking import IGNORE_INDEX, eval_rng, tokenizer_masker, train_rng

EVAL_RESULTS = "eval_results.json"
PRETRAIN_FILE = "bertfast_pretrain.json"  # how the model was pretrained, saved with it
CACHE_FOLDER = ".bertfast-cache"
DETERMINING = ("model", "config", "tokenizer", "train", "corpus", "max_length", "mask_prob", "whole_word", "nsp",
               "epochs", "batch_size", "lr", "warmup_ratio", "weight_decay", "gradient_accumulation",
               "max_grad_norm", "precision", "seed", "world_size")
EVAL_CHUNK = 512  # masked rows per vocabulary projection in evaluation


@dataclass
class PretrainConfig:
    train: List[str]
    output: str
    model: Optional[str] = None        # a checkpoint folder to continue from ...
    config: Optional[str] = None       # ... or a config.json / size name to start from
    tokenizer: Optional[str] = None    # tokenizer folder (default: --model)
    eval: Optional[List[str]] = None
    cache_dir: Optional[str] = None    # default: OUTPUT/../.bertfast-cache
    max_length: int = 128
    mask_prob: float = 0.15
    whole_word: bool = False
    nsp: bool = False
    epochs: float = 1
    batch_size: int = 32
    lr: float = 1e-4
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 42
    eval_every: int = 0
    save_every: int = 0
    max_eval_blocks: int = 0           # 0: all held-out examples
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False
    progress: bool = True
    quiet: bool = False
    task: str = "mlm"                  # for the trainer's messages

    def __post_init__(self):
        self.train = [self.train] if isinstance(self.train, str) else list(self.train or [])
        self.eval = [self.eval] if isinstance(self.eval, str) else (list(self.eval) if self.eval else None)


def pretrain(cfg: PretrainConfig):
    """Train; returns {"output", "eval", "initial_eval", "best", "steps", "seconds", "tokens"}."""
    return trainer.in_process_group(cfg, _pretrain)


def _pretrain(cfg, ctx):
    log = Log(ctx, cfg.quiet)
    if cfg.resume:
        cfg = trainer.resumed_config(cfg, keep={"output", "resume", "device", "progress", "quiet"})
    _check_settings(cfg, ctx.device)
    tok, model_config = _read_inputs(cfg)
    return trainer.in_output(cfg, ctx, lambda: _run(cfg, ctx, log, tok, model_config))


def _check_settings(cfg, device):
    trainer._check_settings(cfg, device)
    if (cfg.model is None) == (cfg.config is None):
        raise FinetuneError("give one of --model DIR (continue a checkpoint) or --config FILE|NAME (start anew)")
    if cfg.config is not None and cfg.tokenizer is None:
        raise FinetuneError("--config needs --tokenizer DIR (a folder with tokenizer.json or vocab.txt)")
    if not cfg.train:
        raise FinetuneError("--train needs at least one file or folder")
    if not 0 < cfg.mask_prob < 1:
        raise FinetuneError(f"--mask-prob must be between 0 and 1, got {cfg.mask_prob}")
    if cfg.max_length < (5 if cfg.nsp else 3):
        raise FinetuneError(f"--max-length {cfg.max_length} leaves no room for text between the special tokens")


# ---- inputs: tokenizer and model config, checked before anything is written ----

def _read_inputs(cfg):
    """(BertTokenizer, the model's BertConfig)."""
    from ..model.config import BertConfig
    source = cfg.tokenizer or cfg.model
    try:
        if cfg.model is not None:
            check_model_dir(cfg.model)
        tok = BertTokenizer(source)
        tokenizer_masker(tok.tokenizer, cfg.mask_prob, cfg.whole_word)  # has [MASK]
    except Exception as e:
        raise FinetuneError(f"--{'tokenizer' if cfg.tokenizer else 'model'} {source}: {e}") from None
    vocab = tok.tokenizer.get_vocab_size()
    if cfg.model is not None:
        config = BertConfig.from_pretrained(cfg.model)
    else:
        config = _config_from(cfg.config, vocab)
    if vocab > config.vocab_size:
        raise FinetuneError(f"the tokenizer ({source}) has {vocab:,} tokens but the model's vocabulary "
                            f"{config.vocab_size:,}: they do not belong together (give the model's own tokenizer)")
    if cfg.max_length > config.max_position_embeddings:
        raise FinetuneError(f"--max-length {cfg.max_length} is more than the model's "
                            f"{config.max_position_embeddings} positions")
    return tok, config


def _config_from(spec, vocab_size):
    """A BertConfig from a config.json (file or folder) or a size name."""
    from ..bench.workloads import MODEL_SIZES
    from ..model.config import BertConfig
    if spec in MODEL_SIZES:
        return BertConfig(vocab_size=vocab_size, max_position_embeddings=512, **MODEL_SIZES[spec])
    path = os.path.join(spec, "config.json") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        raise FinetuneError(f"--config {spec}: neither a config.json nor one of {', '.join(MODEL_SIZES)}")
    try:
        return BertConfig.from_json_file(path)
    except (ValueError, TypeError, KeyError) as e:
        raise FinetuneError(f"--config {spec}: {e}") from None


# ---- the run ----

class Data:
    """What the trainer's loop reads of the data: example count and lengths, whether there is eval data."""

    def __init__(self, examples, eval_examples, pad_id):
        self.features, self.lengths, self.pad_id, self.labels = examples, examples.lengths, pad_id, None
        self.eval_features = eval_examples


def _caches(cfg, ctx, log, tok):
    """(train cache, eval cache or None): built by rank 0, then opened by every rank."""
    root = cfg.cache_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.output)), CACHE_FOLDER)
    label = os.path.basename(os.path.abspath(cfg.output))
    build = lambda: (token_cache(cfg.train, tok.tokenizer, root, f"{label}.train", log),
                     token_cache(cfg.eval, tok.tokenizer, root, f"{label}.eval", log) if cfg.eval else None)
    if not ctx.enabled:
        return build()

    def folders():
        try:
            return [c.folder if c else None for c in build()]
        except DataError as e:  # said on every rank, not only on rank 0
            raise FinetuneError(str(e)) from None
    built = distributed.broadcast_object(ctx, trainer._rank0_check(ctx, folders))
    return tuple(open_cache(f) if f else None for f in built)


def _examples(cfg, cache, tok, log, what):
    make = NSPPairs(cache, cfg.max_length, tok.cls_id, tok.sep_id, cfg.seed) if cfg.nsp else \
        MLMBlocks(cache, cfg.max_length, tok.cls_id, tok.sep_id)
    kind = "sentence pairs" if cfg.nsp else "blocks"
    lost = f"; {make.truncated:,} tokens cut by pair truncation" if cfg.nsp and make.truncated else ""
    log(f"{what}: {len(make):,} {kind} of at most {cfg.max_length} tokens{lost}")
    if cfg.nsp and (make.pairs[:, 4] == 1).all():
        log(f"{what}: every B is random (each document is a single segment): next-sentence prediction needs "
            "documents of several lines, separated by blank lines")
    return make


def _run(cfg, ctx, log, tok, model_config):
    if ctx.is_main:
        os.makedirs(ckpt.checkpoints_dir(cfg.output), exist_ok=True)
        log.to_file(os.path.join(cfg.output, trainer.TRAIN_LOG))
    train_cache, eval_cache = _caches(cfg, ctx, log, tok)
    examples = _examples(cfg, train_cache, tok, log, "train")
    eval_examples = _examples(cfg, eval_cache, tok, log, "eval") if eval_cache else None
    job = Job(cfg, ctx, tok, model_config, examples, eval_examples)
    data = Data(examples, eval_examples, tok.pad_id)
    run = trainer._build(cfg, ctx, log, data, job)
    run_args = {**dataclasses.asdict(cfg), "world_size": ctx.world_size, "corpus": train_cache.meta["fingerprint"]}
    state, pointer = trainer._restore(run, log, run_args)
    log(trainer._describe(run) + f", masking {cfg.mask_prob:g}" + (" whole words" if cfg.whole_word else "")
        + (", with next-sentence prediction" if cfg.nsp else ""))
    initial = trainer.initial_eval(run, state, log) if eval_examples is not None else None
    seconds = trainer.train_loop(run, data, state, pointer, log)
    result = {"output": cfg.output, "eval": state["last_eval"], "best": state["best"], "initial_eval": initial,
              "steps": state["global_step"], "seconds": seconds, "tokens": state["tokens"]}
    if ctx.is_main and eval_examples is not None:
        _write_eval_results(cfg.output, result)
    log(f"model saved to {os.path.abspath(cfg.output)}")
    return result


def _write_eval_results(output, result):
    atomic_write_json(os.path.join(output, EVAL_RESULTS), {"steps": result["steps"], "before_training":
                      result["initial_eval"], "final": result["eval"], "best": result["best"]})


class Job:
    """The trainer's Run.job for pretraining: batches of masked examples, their loss items (the
    masked tokens), held-out metrics, the model and its folders."""

    def __init__(self, cfg, ctx, tok, model_config, examples, eval_examples):
        self.cfg, self.ctx, self.tok, self.model_config = cfg, ctx, tok, model_config
        self.examples, self.eval_examples = examples, eval_examples
        self.masker = tokenizer_masker(tok.tokenizer, cfg.mask_prob, cfg.whole_word)
        self.name = "pretrain " + ("mlm+nsp" if cfg.nsp else "mlm")
        self.determining, self.main_metric = DETERMINING, "accuracy"
        self.task_info = {"task": "pretrain", "objective": "mlm+nsp" if cfg.nsp else "mlm",
                          "max_length": cfg.max_length, "mask_prob": cfg.mask_prob, "whole_word": cfg.whole_word,
                          "base_model": os.path.abspath(cfg.model) if cfg.model else None, "config": cfg.config}
        step = cfg.batch_size * ctx.world_size * cfg.gradient_accumulation
        self._masked = functools.lru_cache(maxsize=2 * step)(self._mask)
        self._eval_masked = functools.lru_cache(maxsize=None)(self._mask_eval)

    # -- the model --
    def load_model(self):
        import bertfast
        cls = bertfast.BertForPreTraining if self.cfg.nsp else bertfast.BertForMaskedLM
        if self.cfg.config is not None:
            model = cls(self.model_config)
            n = sum(p.numel() for p in model.parameters())
            return model, [f"new, initialised from --seed, config {self.cfg.config} ({n / 1e6:.1f} M parameters)"]
        import logging
        import warnings
        quiet = logging.getLogger("bertfast")
        previous, _ = quiet.level, quiet.setLevel(logging.ERROR)  # the new weights are named in our log line
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = cls.from_pretrained(self.cfg.model)
        finally:
            quiet.setLevel(previous)
        return model, _head_notes(model)

    def save_model(self, model, folder):
        model.save_pretrained(folder)
        source = self.cfg.tokenizer or self.cfg.model
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
        atomic_write_json(os.path.join(folder, PRETRAIN_FILE), self.task_info)

    # -- training batches --
    def _mask(self, index, epoch):
        ids, types, nsp_label = self.examples.example(index)
        inputs, labels = self.masker(ids, train_rng(self.cfg.seed, epoch, index))
        return inputs, types, labels, nsp_label

    def _mask_eval(self, index):
        ids, types, nsp_label = self.eval_examples.example(index)
        inputs, labels = self.masker(ids, eval_rng(index))
        return inputs, types, labels, nsp_label

    def loss_items(self, indices, epoch):
        return sum(int((self._masked(int(i), epoch)[2] != IGNORE_INDEX).sum()) for i in indices)

    def collate(self, indices, epoch):
        return _collate([self._masked(int(i), epoch) for i in indices], self.tok.pad_id)

    # -- held-out metrics --
    def evaluate(self, run):
        """Masked-token accuracy, loss and perplexity on the held-out examples with their fixed
        masks (and next-sentence accuracy with --nsp); every rank takes its share."""
        n = len(self.eval_examples) if not self.cfg.max_eval_blocks else min(self.cfg.max_eval_blocks,
                                                                               len(self.eval_examples))
        mine = list(range(self.ctx.rank, n, self.ctx.world_size))
        totals = np.zeros(5)
        model = run.model
        model.eval()
        try:
            with torch.no_grad(), _precision.autocast(self.ctx.device, self.cfg.precision):
                for i in range(0, len(mine), 2 * self.cfg.batch_size):
                    batch = _collate([self._eval_masked(j) for j in mine[i:i + 2 * self.cfg.batch_size]],
                                     self.tok.pad_id)
                    totals += _eval_sums(model, {k: v.to(self.ctx.device) for k, v in batch.items()})
        finally:
            model.train()
        loss, correct, count, nsp_correct, pairs = distributed.sum_floats(self.ctx, totals.tolist(), self.ctx.device)
        mean = loss / max(count, 1)
        metrics = {"accuracy": correct / max(count, 1), "loss": mean, "perplexity": math.exp(min(mean, 700)),
                   "masked_tokens": int(count)}
        if self.cfg.nsp:
            metrics["nsp_accuracy"] = nsp_correct / max(pairs, 1)
        return metrics


def _head_notes(model):
    """What from_pretrained created: a new MLM head (its decoder tied to the word embeddings)."""
    new = getattr(model, "loading_info", {}).get("newly_initialized", [])
    notes = []
    if any(k.startswith("cls.predictions.") for k in new):
        tied = model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
        notes.append("the checkpoint has no MLM head: created a new one (cls.predictions.transform and bias)"
                     + ("; its decoder is tied to the word embeddings" if tied else ""))
    if any(k.startswith("cls.seq_relationship.") for k in new):
        notes.append("created a new next-sentence head (cls.seq_relationship)")
    other = [k for k in new if not k.startswith("cls.")]
    if other:
        notes.append(f"newly initialised: {', '.join(other)}")
    return notes


def _collate(rows, pad_id):
    """Padded tensors of masked examples (blocks are nearly all full: almost no padding)."""
    longest = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), longest), dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    for r, (inputs, token_types, row_labels, _) in enumerate(rows):
        n = len(inputs)
        ids[r, :n], types[r, :n], labels[r, :n] = (torch.from_numpy(a) for a in (inputs, token_types, row_labels))
        mask[r, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}
    if rows[0][3] is not None:
        batch["next_sentence_label"] = torch.tensor([r[3] for r in rows], dtype=torch.long)
    return batch


def _eval_sums(model, batch):
    """[loss sum, correct, masked tokens, correct NSP, pairs] of one batch; the vocabulary
    projection only on the masked rows, EVAL_CHUNK at a time."""
    hidden, packing = model.bert.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    labels = packing.pack(batch["labels"])
    selected = torch.nonzero(labels != IGNORE_INDEX).squeeze(1)
    head = model.cls.predictions
    rows, targets = head.transform(hidden.index_select(0, selected)), labels.index_select(0, selected)
    loss, correct = 0.0, 0
    for i in range(0, len(rows), EVAL_CHUNK):
        logits = head.decoder(rows[i:i + EVAL_CHUNK]).float()
        loss += float(F.cross_entropy(logits, targets[i:i + EVAL_CHUNK], reduction="sum"))
        correct += int((logits.argmax(-1) == targets[i:i + EVAL_CHUNK]).sum())
    nsp_correct, pairs = 0, 0
    if "next_sentence_label" in batch:
        scores = model.cls.seq_relationship(model.bert.pool(hidden, packing))
        nsp_correct, pairs = int((scores.argmax(-1) == batch["next_sentence_label"]).sum()), len(scores)
    return np.array([loss, correct, len(targets), nsp_correct, pairs], dtype=np.float64)
