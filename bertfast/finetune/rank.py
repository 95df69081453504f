"""`bertfast finetune --task rank` and `bertfast evaluate --task rank`: a bi-encoder for search,
trained with in-batch, given and mined hard negatives on the fine-tuning trainer's steps
(schedule, AdamW, accumulation, autocast, DDP, atomic checkpoints and exact resume, the best
evaluation kept) through its `Run.job` hook: this module supplies the data, the model, the
batches and the retrieval metrics (MRR@10, Recall@1/10/100, nDCG@10)."""
import dataclasses
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from .._files import atomic_write_json, read_json
from . import checkpoints as ckpt
from . import distributed, trainer
from .bi_encoder import BiEncoder, POOLING_MODES, embed_ids_shared, read_pooling, write_pooling
from .models import TASK_FILE, TOKENIZER_FILES, check_model_dir
from .rank_data import DocTable, read_corpus, read_rank_file
from .retrieval_metrics import ranking_metrics, top_k
from .tokenization import BertTokenizer
from .trainer import FinetuneConfig, FinetuneError, Log

EVAL_RESULTS = "eval_results.json"
MAIN_METRIC = "mrr@10"
RANK_OPTIONS = ("query_column", "positive_column", "negatives_column", "query_max_length", "scale", "symmetric",
                "mine_negatives", "mine_every_epoch", "pooling")
DETERMINING = trainer.DETERMINING + RANK_OPTIONS


@dataclass
class RankConfig(FinetuneConfig):
    query_column: Optional[str] = None
    positive_column: Optional[str] = None
    negatives_column: Optional[str] = None
    query_max_length: int = 64
    scale: float = 20.0
    symmetric: bool = False
    mine_negatives: int = 0            # K mined hard negatives per query (0: none)
    mine_every_epoch: bool = False     # mine again at the start of each epoch (else once, before training)
    pooling: Optional[str] = None      # cls, mean, max, mean_sqrt_len (default: the checkpoint's 1_Pooling)
    corpus: Optional[str] = None       # extra documents of the evaluation


def is_rank_run(cfg):
    """--task rank, or --resume of a run that was one."""
    if cfg.task == "rank":
        return True
    if cfg.resume and os.path.exists(os.path.join(cfg.output or "", trainer.RUN_ARGS)):
        saved = trainer.saved_run_args(cfg.output)  # a corrupt file is named, with what to do
        return isinstance(saved, dict) and saved.get("task") == "rank"
    return False


def as_rank_config(cfg, extra):
    known = {f.name for f in dataclasses.fields(RankConfig)}
    return RankConfig(**{**dataclasses.asdict(cfg), **{k: v for k, v in extra.items() if k in known}})


def finetune_rank(cfg: RankConfig):
    """Train; returns {"output", "eval", "initial_eval", "best", "steps", "seconds", "tokens"}."""
    return trainer.in_process_group(cfg, _finetune_rank)


def _finetune_rank(cfg, ctx):
    log = Log(ctx, cfg.quiet)
    if cfg.resume:
        cfg = trainer.resumed_config(cfg, keep={"output", "resume", "device", "progress", "quiet", "overwrite"})
    _check_settings(cfg, ctx.device)
    tok = _tokenizer(cfg.model)
    train_set = read_rank_file(cfg.train, cfg.query_column, cfg.positive_column, cfg.negatives_column)
    if cfg.max_train_examples:
        train_set = train_set[:cfg.max_train_examples]
    eval_set = _eval_inputs(cfg.eval, cfg.corpus, cfg) if cfg.eval else None
    return trainer.in_output(cfg, ctx, lambda: _run(cfg, ctx, log, tok, train_set, eval_set))


def _check_settings(cfg, device):
    trainer._check_settings(cfg, device)
    for name in ("query_max_length", "max_length"):
        if getattr(cfg, name) < 3:  # [CLS] a token [SEP]
            raise FinetuneError(f"--{name.replace('_', '-')} must be at least 3, got {getattr(cfg, name)}")
    if cfg.mine_negatives < 0:
        raise FinetuneError(f"--mine-negatives must be 0 or more, got {cfg.mine_negatives}")
    if cfg.pooling is not None and cfg.pooling not in POOLING_MODES:
        raise FinetuneError(f"--pooling {cfg.pooling}: choose one of {', '.join(POOLING_MODES)}")
    if not cfg.scale > 0:
        raise FinetuneError(f"--scale must be positive, got {cfg.scale}")


def _tokenizer(model_dir):
    try:
        check_model_dir(model_dir)
        return BertTokenizer(model_dir)
    except Exception as e:
        raise FinetuneError(f"--model {model_dir}: {e}") from None


def tokenize(tok, texts, max_length):
    """([CLS] text [SEP] token ids truncated to max_length, number truncated)."""
    out, truncated = [], 0
    for enc in tok.encode_texts(texts):
        ids = enc.ids[:max_length - 2]
        truncated += len(ids) < len(enc.ids)
        out.append(tok.assemble(ids)[0])
    return out, truncated


# ---- the data: queries, documents, features ----

@dataclass
class EvalSet:
    queries: list                      # query texts
    relevant: list                     # per query, the set of its relevant document numbers
    docs: DocTable


def _eval_inputs(path, corpus, cfg):
    """Queries of an eval file; the corpus: --corpus documents (with their ids), then every positive."""
    examples = read_rank_file(path, cfg.query_column, cfg.positive_column, cfg.negatives_column)
    docs = DocTable()
    if corpus:
        for doc_id, text in zip(*read_corpus(corpus)):
            docs.add(text, doc_id)
    relevant = [{docs.add(p, f"{os.path.basename(path)}:{ex.line}:{k}") for k, p in enumerate(ex.positives)}
                for ex in examples]
    return EvalSet([ex.query for ex in examples], relevant, docs)


class RankData:
    """What the trainer's loop reads (features, lengths, pad_id, labels, eval_features) and what
    the job builds batches from: tokenized queries and distinct documents."""

    def __init__(self, cfg, tok, train_set, eval_set, log):
        self.docs, self.pad_id, self.labels = DocTable(), tok.pad_id, None
        self.pos_sets = [{self.docs.add(p) for p in ex.positives} for ex in train_set]
        self.given = [[self.docs.add(n) for n in ex.negatives] for ex in train_set]
        self.features = [(q, d) for q, ex in enumerate(train_set) for d in sorted(self.pos_sets[q])]
        self.query_tokens, tq = tokenize(tok, [ex.query for ex in train_set], cfg.query_max_length)
        self.doc_tokens, td = tokenize(tok, self.docs.texts, cfg.max_length)
        self.max_positives = max(len(s) for s in self.pos_sets)
        self.lengths = [len(self.query_tokens[q]) + len(self.doc_tokens[d]) for q, d in self.features]
        log(f"train: {len(train_set)} queries from {cfg.train}, {len(self.features)} (query, positive) pairs, "
            f"{len(self.docs)} distinct documents, {sum(map(len, self.given))} given hard negatives"
            + (f"; truncated: {tq} queries to --query-max-length {cfg.query_max_length}" if tq else "")
            + (f"; {td} documents to --max-length {cfg.max_length}" if td else ""))
        self.eval_features = None
        if eval_set is not None:
            self.eval_set = eval_set
            self.eval_features = (tokenize(tok, eval_set.queries, cfg.query_max_length)[0],
                                  tokenize(tok, eval_set.docs.texts, cfg.max_length)[0])
            log(f"eval: {len(eval_set.queries)} queries from {cfg.eval} against {len(eval_set.docs)} documents"
                + (f" (with --corpus {cfg.corpus})" if cfg.corpus else ""))


def retrieval_eval(model, query_tokens, doc_tokens, relevant, device, precision, ctx=None, pad_id=0):
    """Retrieval metrics of `model` (a BiEncoder): every query against every document."""
    q = embed_ids_shared(model, query_tokens, device, precision, ctx, pad_id=pad_id)
    d = embed_ids_shared(model, doc_tokens, device, precision, ctx, pad_id=pad_id)
    _, ranked = top_k(q, d, 100)
    return ranking_metrics(ranked.tolist(), relevant)


# ---- the job on the trainer's steps ----

def load_bi_encoder(model_dir, pooling=None, scale=20.0, symmetric=False):
    """(BiEncoder of a checkpoint folder, notes for the log)."""
    from ..model.encoder import BertModel
    quiet = logging.getLogger("bertfast")
    previous = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = BertModel.from_pretrained(model_dir)
    finally:
        quiet.setLevel(previous)
    try:
        modes = [pooling] if pooling else read_pooling(model_dir)
    except ValueError as e:
        raise FinetuneError(str(e)) from None
    return BiEncoder(encoder, modes, scale, symmetric), [f"pooling {'+'.join(modes)}, L2-normalised"]


class RankJob:
    """The trainer's Run.job for --task rank: batches of queries with their positives and hard
    negatives, one loss item per (query, positive) pair, retrieval metrics, mining."""

    def __init__(self, cfg, ctx, tok, data):
        self.cfg, self.ctx, self.tok, self.data = cfg, ctx, tok, data
        self.name, self.determining, self.main_metric = "finetune rank", DETERMINING, MAIN_METRIC
        self.state, self.model, self.log = None, None, None
        self.task_info = {"task": "rank", "max_length": cfg.max_length, "query_max_length": cfg.query_max_length,
                          "scale": cfg.scale, "query_column": cfg.query_column,
                          "positive_column": cfg.positive_column, "negatives_column": cfg.negatives_column,
                          "base_model": os.path.abspath(cfg.model)}

    def load_model(self):
        model, notes = load_bi_encoder(self.cfg.model, self.cfg.pooling, self.cfg.scale, self.cfg.symmetric)
        self.task_info["pooling"] = model.modes
        return model, notes

    def save_model(self, model, folder):
        save_bi_encoder(model, self.cfg.model, self.task_info, folder)

    def loss_items(self, indices, epoch):
        self._mined(epoch)  # at the first step of an epoch, before any batch is built (all ranks)
        return len(indices)

    def collate(self, indices, epoch):
        d, mined = self.data, self._mined(epoch)
        pairs = [d.features[int(i)] for i in indices]
        negatives = [n for q, _ in pairs for n in d.given[q] + (mined[q] if mined else [])]
        doc_rows = [p for _, p in pairs] + negatives
        rows = [d.query_tokens[q] for q, _ in pairs] + [d.doc_tokens[r] for r in doc_rows]
        longest = max(map(len, rows))
        ids = torch.full((len(rows), longest), d.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
        pos_ids = torch.full((len(pairs), d.max_positives), -1, dtype=torch.long)
        for r, (q, _) in enumerate(pairs):
            pos_ids[r, :len(d.pos_sets[q])] = torch.tensor(sorted(d.pos_sets[q]))
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                "n_queries": torch.tensor(len(pairs)), "doc_ids": torch.tensor(doc_rows, dtype=torch.long),
                "pos_ids": pos_ids}

    def evaluate(self, run):
        q, docs = self.data.eval_features
        return retrieval_eval(run.model, q, docs, self.data.eval_set.relevant, self.ctx.device,
                              self.cfg.precision, self.ctx, self.data.pad_id)

    def _mined(self, epoch):
        """Per query its mined negatives for this epoch (None without --mine-negatives), mined by
        the current model when first asked and kept in the trainer state (so in checkpoints)."""
        if not self.cfg.mine_negatives:
            return None
        target = epoch if self.cfg.mine_every_epoch else 0
        saved = self.state.get("mined")
        if saved is None or saved["epoch"] != target:
            saved = self.state["mined"] = {"epoch": target, "negatives": mine_negatives(
                self.model, self.data, self.cfg.mine_negatives, self.ctx, self.cfg.precision)}
            if self.log:
                self.log(f"mined {self.cfg.mine_negatives} hard negatives per query (epoch {target})")
        return saved["negatives"]


def mine_negatives(model, data, k, ctx, precision="fp32"):
    """Per training query the k documents of the training corpus the model ranks highest that are
    neither its positives nor its given negatives."""
    q = embed_ids_shared(model, data.query_tokens, ctx.device, precision, ctx, pad_id=data.pad_id)
    d = embed_ids_shared(model, data.doc_tokens, ctx.device, precision, ctx, pad_id=data.pad_id)
    depth = k + data.max_positives + max(map(len, data.given))
    _, ranked = top_k(q, d, depth)
    out = []
    for i, row in enumerate(ranked.tolist()):
        excluded = data.pos_sets[i] | set(data.given[i])
        out.append([doc for doc in row if doc not in excluded][:k])
    return out


def save_bi_encoder(model, source_dir, task_info, folder):
    """A model folder that transformers and sentence-transformers load: the encoder (config.json,
    model.safetensors), the tokenizer files, the pooling modules and our task file."""
    model.encoder.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(source_dir, name)):
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(folder, name))
    write_pooling(folder, model.modes, model.encoder.config.hidden_size, task_info["max_length"])
    atomic_write_json(os.path.join(folder, TASK_FILE), task_info)


def _run(cfg, ctx, log, tok, train_set, eval_set):
    if ctx.is_main:
        os.makedirs(ckpt.checkpoints_dir(cfg.output), exist_ok=True)
        log.to_file(os.path.join(cfg.output, trainer.TRAIN_LOG))
    data = RankData(cfg, tok, train_set, eval_set, log)
    job = RankJob(cfg, ctx, tok, data)
    run = trainer._build(cfg, ctx, log, data, job)
    state, pointer = trainer._restore(run, log, {**dataclasses.asdict(cfg), "world_size": ctx.world_size})
    job.state, job.model, job.log = state, run.model, log
    log(trainer._describe(run) + f", scale {cfg.scale:g}" + (", symmetric" if cfg.symmetric else "")
        + (f", {cfg.mine_negatives} mined negatives per query" if cfg.mine_negatives else ""))
    initial = trainer.initial_eval(run, state, log) if eval_set is not None else None
    seconds = trainer.train_loop(run, data, state, pointer, log)
    result = {"output": cfg.output, "eval": state["last_eval"], "best": state["best"], "initial_eval": initial,
              "steps": state["global_step"], "seconds": seconds, "tokens": state["tokens"]}
    if ctx.is_main and eval_set is not None:
        atomic_write_json(os.path.join(cfg.output, EVAL_RESULTS), {"steps": result["steps"], "before_training":
                          initial, "final": result["eval"], "best": result["best"]})
    best = state["best"]
    log(f"model saved to {os.path.abspath(cfg.output)}" + (f" (best checkpoint: step {state['best_step']}, "
                                                            f"{MAIN_METRIC} {best[MAIN_METRIC]:.4f})" if best else ""))
    return result


# ---- bertfast evaluate --task rank ----

def model_settings(model_dir, max_length=None):
    """(task info, document max length, query max length) of a model folder: ours
    (bertfast_task.json), else a sentence-transformers folder (sentence_bert_config.json)."""
    info = {}
    if os.path.exists(os.path.join(model_dir, TASK_FILE)):
        info = read_json(os.path.join(model_dir, TASK_FILE), "write it again or give --task")
    st = os.path.join(model_dir, "sentence_bert_config.json")
    st_length = (read_json(st, "fix or remove it").get("max_seq_length") if os.path.exists(st) else None)
    doc_length = max_length or info.get("max_length") or st_length or 512
    return info, doc_length, max_length or info.get("query_max_length") or doc_length


def evaluate_rank(model_dir, data_path, corpus=None, device="auto", precision="fp32", max_length=None):
    """Retrieval metrics of a model folder (fine-tuned here or a sentence-embedding checkpoint)."""
    device = distributed.resolve_device(device)
    tok = _tokenizer(model_dir)
    info, doc_length, query_length = model_settings(model_dir, max_length)
    cols = RankConfig(task="rank", model=model_dir, train="", output="", query_column=info.get("query_column"),
                      positive_column=info.get("positive_column"), negatives_column=info.get("negatives_column"))
    eval_set = _eval_inputs(data_path, corpus, cols)
    model, _ = load_bi_encoder(model_dir)  # pooling from its 1_Pooling/config.json
    model.to(device)
    result = retrieval_eval(model, tokenize(tok, eval_set.queries, query_length)[0],
                            tokenize(tok, eval_set.docs.texts, doc_length)[0], eval_set.relevant, device, precision,
                            pad_id=tok.pad_id)
    return {**result, "queries": len(eval_set.queries), "documents": len(eval_set.docs)}
