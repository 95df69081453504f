"""`bertfast finetune`: fine-tune a BERT checkpoint on one of five tasks, on one CPU or many GPUs.

The run is a pure function of its arguments and seed: the data order of each epoch comes from
(seed, epoch), every random number from RNG states that checkpoints carry, so a run killed at any
moment and resumed ends with bitwise the same weights as one that never stopped."""
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoints as ckpt
from . import distributed, evaluation, metrics
from .data import Columns, DataError, describe_unseen, label_list, load_examples, unseen_labels
from .data.batching import collate, epoch_batches, loss_items, shard
from .tokenization import BertTokenizer, encode_qa_examples, encode_tag_examples, encode_text_examples
from .models import check_model_dir, load_model, save_model_files

EVAL_LOG = "eval_log.jsonl"
TRAIN_LOG = "train_log.txt"
RUN_ARGS = "train_args.json"
# Arguments that fix the sequence of updates: a resumed run must use the same ones.
DETERMINING = ("task", "model", "train", "text_column", "text_pair_column", "label_column", "max_length",
               "doc_stride", "epochs", "batch_size", "lr", "warmup_ratio", "weight_decay",
               "gradient_accumulation", "max_grad_norm", "precision", "seed", "world_size")


class FinetuneError(RuntimeError):
    """A run that cannot start or continue, for a reason the message explains."""


@dataclass
class FinetuneConfig:
    task: str
    model: str
    train: str
    output: str
    eval: Optional[str] = None
    text_column: Optional[str] = None
    text_pair_column: Optional[str] = None
    label_column: Optional[str] = None
    max_length: int = 128
    doc_stride: int = 128
    epochs: float = 3
    batch_size: int = 32
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 42
    eval_every: int = 0          # optimizer steps between evaluations; 0: at the end of each epoch
    save_every: int = 0          # optimizer steps between checkpoints; 0: at each evaluation / epoch end
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False
    max_train_examples: int = 0  # 0: all
    progress: bool = True
    quiet: bool = False


class Log:
    """Messages on stdout (rank 0 only) and in OUTPUT/train_log.txt once the folder exists."""

    def __init__(self, ctx, quiet=False):
        self.ctx, self.quiet, self.path, self.pending = ctx, quiet, None, []

    def __call__(self, msg):
        if not self.ctx.is_main:
            return
        if not self.quiet:
            print(msg, flush=True)
        if self.path is None:
            self.pending.append(msg)
        else:
            with open(self.path, "a") as f:
                f.write(msg + "\n")

    def to_file(self, path):
        self.path = path
        with open(path, "a") as f:
            f.writelines(msg + "\n" for msg in self.pending)
        self.pending = []


def _encode(task, tok, examples, cfg, label_to_id):
    if task == "qa":
        return encode_qa_examples(tok, examples, cfg.max_length, cfg.doc_stride)
    if task == "tag":
        return encode_tag_examples(tok, examples, cfg.max_length, label_to_id)
    return encode_text_examples(tok, examples, cfg.max_length, label_to_id)


def _loss_sum(task, out, batch):
    """Sum (not mean) of the per-item losses, so that accumulation and DDP can divide by the
    number of items of the whole optimizer step."""
    if task == "qa":
        return (F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="sum")
                + F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="sum")) / 2
    logits = out.logits.float()
    if task == "regress":
        return ((logits.squeeze(-1) - batch["labels"]) ** 2).sum()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), reduction="sum")


def _optimizer(model, cfg, device):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)


def _linear_schedule(total_steps, warmup_steps):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def _order_digest(groups):
    return hashlib.sha256(json.dumps(groups).encode()).hexdigest()[:16]


def _maybe_die(point):
    """Test hook: BERTFAST_TEST_DIE_AT=<point> ends the process abruptly there (as a kill would)."""
    if os.environ.get("BERTFAST_TEST_DIE_AT") == point:
        os._exit(17)


def _prepare_output(cfg, ctx):
    """Check (rank 0) that the output folder can be written and fits --resume; returns whether
    this call created it, so a failed start can remove it again."""
    out = cfg.output
    pointer = ckpt.read_pointer(os.path.join(out, "checkpoints")) if os.path.isdir(out) else None
    if cfg.resume:
        if pointer is None or not pointer.get("latest"):
            if pointer is not None and pointer.get("finished"):
                raise FinetuneError(f"--resume: the run in {out} has already finished; its model is in {out}")
            hint = " (the run there stopped before its first checkpoint: start it again with --overwrite)" \
                if os.path.isdir(out) and os.listdir(out) else ""
            raise FinetuneError(f"--resume: nothing to resume in {out}: no checkpoint there{hint}")
        return False
    if os.path.exists(out) and not os.path.isdir(out):
        raise FinetuneError(f"--output {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not cfg.overwrite:
        raise FinetuneError(f"--output {out} is not empty; continue its run with --resume, "
                            "replace it with --overwrite, or choose another folder")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise FinetuneError(f"--output {out} cannot be written: {e.strerror or e}") from None
    if cfg.overwrite:
        for name in os.listdir(out):
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return created


def _rank0_check(ctx, fn):
    """Run fn on rank 0 only; an error there is raised on every rank."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except (FinetuneError, OSError) as e:
            error = str(e)
    error = distributed.broadcast_object(ctx, error)
    if error is not None:
        raise FinetuneError(error)
    return result


def finetune(cfg: FinetuneConfig):
    """Train; returns {"output", "eval" (last metrics), "best" (metrics), "steps", "seconds"}."""
    ctx = distributed.init(cfg.device)
    try:
        return _finetune(cfg, ctx)
    finally:
        distributed.shutdown(ctx)


def _finetune(cfg, ctx):
    log = Log(ctx, cfg.quiet)
    device = ctx.device
    if cfg.resume:  # a resumed run takes its arguments from the run it continues
        cfg = _resumed_config(cfg)
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise FinetuneError(f"--precision {cfg.precision}: choose fp32, bf16 or fp16")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise FinetuneError("--precision fp16 needs a CUDA GPU (loss scaling); on the CPU use bf16 or fp32")
    for name in ("batch_size", "gradient_accumulation", "max_length"):
        if getattr(cfg, name) < 1:
            raise FinetuneError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.epochs <= 0:
        raise FinetuneError(f"--epochs must be positive, got {cfg.epochs}")

    # Everything that can fail on bad input is checked before a file is written.
    try:
        check_model_dir(cfg.model)
        tok = BertTokenizer(cfg.model)
    except Exception as e:  # missing folder, no tokenizer, no weights, no special tokens
        raise FinetuneError(f"--model {cfg.model}: {e}") from None
    columns = Columns(cfg.text_column, cfg.text_pair_column, cfg.label_column)
    train_examples = load_examples(cfg.task, cfg.train, columns)
    if cfg.max_train_examples:
        train_examples = train_examples[:cfg.max_train_examples]
    labels = label_list(cfg.task, train_examples)
    if labels is not None and len(labels) < 2:
        raise DataError(f"{cfg.train}: only one label ({labels[0]!r}) in the training data; need at least two")
    eval_examples = None
    if cfg.eval:
        eval_examples = load_examples(cfg.task, cfg.eval, columns)
        unseen = describe_unseen(cfg.task, unseen_labels(cfg.task, eval_examples, labels))
        if unseen:
            log(f"eval: {cfg.eval}: {unseen}")
    created = _rank0_check(ctx, lambda: _prepare_output(cfg, ctx))
    try:
        return _train(cfg, ctx, log, tok, labels, train_examples, eval_examples)
    except BaseException:
        # A new run that failed before its first checkpoint leaves nothing behind.
        if ctx.is_main and not cfg.resume and not os.path.exists(os.path.join(cfg.output, "checkpoints", ckpt.POINTER)):
            if created:
                shutil.rmtree(cfg.output, ignore_errors=True)
            elif os.path.isdir(cfg.output):  # it was empty (or --overwrite emptied it)
                for name in os.listdir(cfg.output):
                    path = os.path.join(cfg.output, name)
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        raise


def _resumed_config(cfg):
    path = os.path.join(cfg.output, RUN_ARGS)
    if not os.path.exists(path):
        raise FinetuneError(f"--resume: nothing to resume in {cfg.output} (no {RUN_ARGS})")
    with open(path) as f:
        saved = json.load(f)
    merged = dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in DETERMINING and k != "world_size"})
    merged.eval = saved.get("eval", cfg.eval) if cfg.eval is None else cfg.eval
    merged.eval_every = saved.get("eval_every", cfg.eval_every)
    merged.save_every = saved.get("save_every", cfg.save_every)
    merged.max_train_examples = saved.get("max_train_examples", 0)
    merged.keep_checkpoints = saved.get("keep_checkpoints", cfg.keep_checkpoints) or cfg.keep_checkpoints
    return merged


def _train(cfg, ctx, log, tok, labels, train_examples, eval_examples):
    out_dir, ckpt_dir = cfg.output, os.path.join(cfg.output, "checkpoints")
    device = ctx.device
    if ctx.is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        log.to_file(os.path.join(out_dir, TRAIN_LOG))
    label_to_id = {name: i for i, name in enumerate(labels)} if labels else None
    features, truncated = _encode(cfg.task, tok, train_examples, cfg, label_to_id)
    what = "questions" if cfg.task == "qa" else "texts"
    log(f"train: {len(train_examples)} examples from {cfg.train} -> {len(features)} inputs"
        + (f"; {truncated} {what} longer than --max-length {cfg.max_length} tokens were truncated" if truncated else ""))
    if cfg.task == "tag":  # sentences with no labelled token would divide by zero
        features = [f for f in features if any(t != -100 for t in f.label)]
    eval_features = None
    if eval_examples is not None:
        eval_features, eval_truncated = _encode(cfg.task, tok, eval_examples, cfg, label_to_id)
        log(f"eval: {len(eval_examples)} examples from {cfg.eval}"
            + (f"; {eval_truncated} {what} truncated to --max-length {cfg.max_length}" if eval_truncated else ""))

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model, notes = load_model(cfg.task, cfg.model, labels)
    log(f"model: {type(model).__module__}.{type(model).__name__} from {cfg.model}" + "".join(f"; {n}" for n in notes))
    model.to(device)
    model.train()
    torch.manual_seed(cfg.seed + 1000003 * ctx.rank)  # dropout differs between ranks
    train_module = model
    if ctx.enabled:
        train_module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # An optimizer step takes step_size examples: micro-batches of global_batch, each split across ranks.
    # The epoch order is built over whole steps, so accumulation and DDP change how a step is
    # computed, never which examples it holds.
    global_batch = cfg.batch_size * ctx.world_size
    step_size = global_batch * cfg.gradient_accumulation
    steps_per_epoch = math.ceil(len(features) / step_size)
    full_epochs, fraction = int(cfg.epochs), cfg.epochs - int(cfg.epochs)
    epoch_steps = [steps_per_epoch] * full_epochs + ([max(1, round(fraction * steps_per_epoch))] if fraction > 0 else [])
    total_steps = sum(epoch_steps)
    optimizer = _optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _linear_schedule(total_steps, int(cfg.warmup_ratio * total_steps)))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None

    run_args = {**dataclasses.asdict(cfg), "world_size": ctx.world_size, "labels": labels}
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "best_step": None,
             "best": None, "last_eval": None, "tokens": 0}
    pointer = {"latest": None, "best": None}
    if cfg.resume:
        pointer = ckpt.read_pointer(ckpt_dir)
        with open(os.path.join(out_dir, RUN_ARGS)) as f:
            saved = json.load(f)
        changed = [k for k in DETERMINING if saved.get(k) != run_args.get(k)]
        if changed:
            raise FinetuneError(f"--resume: the run in {out_dir} used other settings for {', '.join(changed)} "
                                f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)})")
        state, rng_states = ckpt.load_training_state(ckpt_dir, pointer["latest"], model, optimizer,
                                                     scheduler, scaler, device)
        ckpt.set_rng_state(rng_states[ctx.rank])
        log(f"resumed from {os.path.join(ckpt_dir, pointer['latest'])} (step {state['global_step']} of {total_steps})")
        if ctx.is_main:
            _truncate_eval_log(os.path.join(out_dir, EVAL_LOG), state["global_step"])
    elif ctx.is_main:
        ckpt.atomic_write_json(os.path.join(out_dir, RUN_ARGS), run_args)

    task_info = {"task": cfg.task, "max_length": cfg.max_length, "doc_stride": cfg.doc_stride,
                 "text_column": cfg.text_column, "text_pair_column": cfg.text_pair_column,
                 "label_column": cfg.label_column, "labels": labels, "base_model": os.path.abspath(cfg.model)}
    log(f"training: {total_steps} steps ({cfg.epochs} epochs of {steps_per_epoch}), batch {cfg.batch_size}"
        + (f" x {ctx.world_size} processes" if ctx.enabled else "")
        + (f" x {cfg.gradient_accumulation} accumulated" if cfg.gradient_accumulation > 1 else "")
        + f", lr {cfg.lr}, {cfg.precision} on {device}")

    def evaluate():
        outputs = evaluation.model_outputs(model, cfg.task, eval_features, 2 * cfg.batch_size, device,
                                          cfg.precision, tok.pad_id, ctx)
        preds = evaluation.decode(cfg.task, eval_examples, eval_features, outputs, labels)
        return evaluation.score(cfg.task, eval_examples, preds, labels)

    def checkpoint(eval_metrics):
        """Evaluate-then-save at an optimizer-step boundary; all ranks take part."""
        rngs = distributed.all_gather_objects(ctx, ckpt.rng_state())
        if not ctx.is_main:
            return
        best_name = pointer.get("best")
        if eval_metrics is not None:
            key = metrics.main_metric(cfg.task, eval_metrics)
            if state["best_metric"] is None or eval_metrics[key] > state["best_metric"]:
                state.update(best_metric=eval_metrics[key], best_step=state["global_step"], best=eval_metrics)
                best_name = f"best-{state['global_step']:08d}"
                ckpt.write_folder(ckpt_dir, best_name, lambda tmp: save_model_files(model, cfg.model, task_info, tmp))
        latest = ckpt.save_training_state(ckpt_dir, state["global_step"], model, optimizer, scheduler, scaler,
                                          rngs, state)
        _maybe_die(f"save:{state['global_step']}")
        pointer.update(latest=latest, best=best_name)
        ckpt.write_pointer(ckpt_dir, pointer)

    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=state["global_step"], disable=not (cfg.progress and ctx.is_main),
               desc=f"finetune {cfg.task}", unit="step", dynamic_ncols=True, file=sys.stderr)
    start_time, tokens_this_run = time.time(), 0
    while state["epoch"] < len(epoch_steps):
        epoch = state["epoch"]
        steps = epoch_batches([len(f.input_ids) for f in features], step_size, cfg.seed, epoch)[:epoch_steps[epoch]]
        groups = [[step[i:i + global_batch] for i in range(0, len(step), global_batch)] for step in steps]
        digest = _order_digest(groups)
        if state.get("order_digest") not in (None, digest) and state["step_in_epoch"] > 0:
            raise FinetuneError("--resume: the training data no longer gives the same batches as the checkpoint")
        state["order_digest"] = digest
        for group in groups[state["step_in_epoch"]:]:
            n_items = sum(loss_items(cfg.task, features, gb) for gb in group)
            step_loss, step_tokens = 0.0, 0
            for j, global_batch_indices in enumerate(group):
                local = shard(global_batch_indices, ctx.rank, ctx.world_size)
                weight = 1.0
                if not local:  # fewer items than ranks: take part in the all-reduce with zero weight
                    local, weight = [global_batch_indices[0]], 0.0
                batch = {k: v.to(device, non_blocking=True)
                         for k, v in collate(cfg.task, features, local, tok.pad_id).items()}
                sync = not ctx.enabled or j == len(group) - 1
                with (train_module.no_sync() if not sync else contextlib.nullcontext()):
                    with evaluation.autocast(device, cfg.precision):
                        out = train_module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           token_type_ids=batch["token_type_ids"])
                    loss_sum = _loss_sum(cfg.task, out, batch) * weight
                    loss = loss_sum * (ctx.world_size / max(n_items, 1))
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                step_loss += float(loss_sum.detach())
                step_tokens += int(batch["attention_mask"].sum()) if weight else 0
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            step_loss, step_tokens = distributed.sum_floats(ctx, [step_loss, step_tokens], device)
            state["tokens"] += int(step_tokens)
            tokens_this_run += int(step_tokens)
            mean_loss = step_loss / max(n_items, 1)
            loss_ema = mean_loss if state.get("loss_ema") is None else 0.9 * state["loss_ema"] + 0.1 * mean_loss
            state["loss_ema"] = loss_ema  # in the checkpoint, so a resumed run logs the same losses
            elapsed = time.time() - start_time
            bar.set_postfix(loss=f"{loss_ema:.4f}", tok_s=f"{tokens_this_run / max(elapsed, 1e-9):,.0f}", refresh=False)
            bar.update(1)
            _maybe_die(f"step:{state['global_step']}")
            end_of_epoch = state["step_in_epoch"] == len(groups)
            if end_of_epoch:
                state["epoch"] += 1
                state["step_in_epoch"] = 0
            do_eval = eval_features is not None and (
                end_of_epoch or (cfg.eval_every and state["global_step"] % cfg.eval_every == 0))
            do_save = do_eval or end_of_epoch or (cfg.save_every and state["global_step"] % cfg.save_every == 0)
            eval_metrics = None
            if do_eval:
                eval_metrics = evaluate()
                state["last_eval"] = eval_metrics
                record = {"step": state["global_step"], "epoch": round(state["global_step"] / steps_per_epoch, 4),
                          "train_loss": round(loss_ema, 6), **eval_metrics}
                if ctx.is_main:
                    _append_jsonl(os.path.join(out_dir, EVAL_LOG), record)
                    bar.write(f"step {state['global_step']}: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in eval_metrics.items()))
            if do_save:
                checkpoint(eval_metrics)
    bar.close()
    seconds = time.time() - start_time
    if ctx.is_main:
        _finish(cfg, model, task_info, pointer, ckpt_dir)
    if ctx.enabled:
        torch.distributed.barrier()
    log(f"model saved to {os.path.abspath(out_dir)}"
        + (f" (best checkpoint: step {state['best_step']}, {metrics.main_metric(cfg.task, state['best'])} "
           f"{state['best_metric']:.4f})" if state["best"] else ""))
    return {"output": out_dir, "eval": state["last_eval"], "best": state["best"], "steps": state["global_step"],
            "seconds": seconds, "labels": labels}


def _append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_eval_log(path, step):
    """On resume, forget evaluations made after the checkpoint: they will be made again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    ckpt.atomic_write_bytes(path, "".join(kept).encode())


def _finish(cfg, model, task_info, pointer, ckpt_dir):
    """Put the final model (the best evaluated one, else the last) in the output folder itself,
    one atomic file at a time with the weights last, then retire the training checkpoints."""
    out_dir = cfg.output
    source = os.path.join(ckpt_dir, pointer["best"]) if pointer.get("best") else None
    staging = os.path.join(out_dir, ".final.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    if source is None:
        save_model_files(model, cfg.model, task_info, staging)
    else:
        for name in os.listdir(source):
            shutil.copyfile(os.path.join(source, name), os.path.join(staging, name))
    ckpt.fsync_tree(staging)
    names = sorted(os.listdir(staging), key=lambda n: n.endswith(".safetensors"))
    for name in names:
        os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    os.rmdir(staging)
    ckpt.fsync_dir(out_dir)
    if cfg.keep_checkpoints:
        ckpt.write_pointer(ckpt_dir, {**pointer, "finished": True})
    else:
        ckpt.write_pointer(ckpt_dir, {"latest": None, "best": None, "finished": True})
