"""`bertfast finetune`: fine-tune a BERT checkpoint on one of five tasks, on one CPU or many GPUs.

The run is a pure function of its arguments and seed: the data order of each epoch comes from
(seed, epoch), every random number from RNG states that checkpoints carry, so a run killed at any
moment and resumed ends with bitwise the same weights as one that never stopped.

`bertfast pretrain` (bertfast.pretrain.job) runs on the same steps: its Job, set as Run.job,
supplies the batches, loss items, evaluation and model folders."""
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

from .. import _precision
from .._files import atomic_write_json, atomic_write_text, empty_folder, fsync_dir, fsync_tree, read_json
from . import checkpoints as ckpt
from . import distributed, evaluation, metrics
from .data import Columns, DataError, describe_unseen, label_list, load_examples, unseen_labels
from .data.batching import collate, epoch_batches, loss_items, shard
from .tokenization import IGNORE_INDEX, BertTokenizer, encode_examples
from .models import check_max_length, check_model_dir, load_model, save_model_files

EVAL_LOG = "eval_log.jsonl"
TRAIN_LOG = "train_log.txt"
RUN_ARGS = "train_args.json"
# Arguments that fix the sequence of updates: a resumed run must use the same ones.
DETERMINING = ("task", "model", "train", "text_column", "text_pair_column", "label_column", "max_length",
               "doc_stride", "epochs", "batch_size", "lr", "warmup_ratio", "weight_decay",
               "gradient_accumulation", "max_grad_norm", "precision", "seed", "world_size")
# The range of every numeric setting, checked before anything is read: (test, what the option must be).
SETTING_RANGES = {
    "max_length": (lambda v: v >= 4, "at least 4"),
    "doc_stride": (lambda v: v >= 0, "at least 0"),
    "max_train_examples": (lambda v: v >= 0, "at least 0 (0: all)"),
    "epochs": (lambda v: 0 < v <= 1e6, "more than 0 and at most 1e6"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "gradient_accumulation": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: v > 0, "more than 0"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "weight_decay": (lambda v: v >= 0, "at least 0"),
    "max_grad_norm": (lambda v: v >= 0, "at least 0 (0: no clipping)"),
    "seed": (lambda v: 0 <= v < 2 ** 32, "between 0 and 2**32 - 1"),
    "eval_every": (lambda v: v >= 0, "at least 0 (0: at each epoch end)"),
    "save_every": (lambda v: v >= 0, "at least 0 (0: at each evaluation and epoch end)"),
}
RUN_ARGS_ADVICE = "start the run again with --overwrite (or restore the file from a backup)"


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


def _maybe_die(point):
    """Test hook: BERTFAST_TEST_DIE_AT=<point> ends the process abruptly there (as a kill would)."""
    if os.environ.get("BERTFAST_TEST_DIE_AT") == point:
        os._exit(17)


# ---- before any file is written: the settings, the inputs and the output folder ----

def finetune(cfg: FinetuneConfig):
    """Train; returns {"output", "eval" (last metrics), "best" (metrics), "steps", "seconds"}."""
    return in_process_group(cfg, _finetune)


def initial_eval(run, state, log):
    """The held-out metrics of the untrained model (for jobs with a Run.job), logged as step 0 of
    eval_log.jsonl; a resumed run reads them back from there."""
    path = os.path.join(run.cfg.output, EVAL_LOG)
    if state["global_step"] == 0:
        metrics = run.job.evaluate(run)
        if run.ctx.is_main:
            _append_jsonl(path, {"step": 0, "epoch": 0.0, **metrics})
    else:
        with open(path) if os.path.exists(path) else contextlib.nullcontext([]) as f:
            records = [json.loads(line) for line in f if line.strip()]
        metrics = next(({k: v for k, v in r.items() if k not in ("step", "epoch")} for r in records
                        if r["step"] == 0), None)
    if metrics:
        log("held-out before training: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return metrics


def in_process_group(cfg, job):
    """job(cfg, ctx) inside the process group of this run (torchrun's, or a single process)."""
    ctx = distributed.init(cfg.device)
    try:
        return job(cfg, ctx)
    finally:
        distributed.shutdown(ctx)


def _finetune(cfg, ctx):
    log = Log(ctx, cfg.quiet)
    if cfg.resume:  # a resumed run takes its arguments from the run it continues
        cfg = _resumed_config(cfg)
    _check_settings(cfg, ctx.device)
    tok, labels, train_examples, eval_examples = _read_inputs(cfg)
    unseen = eval_examples and describe_unseen(cfg.task, unseen_labels(cfg.task, eval_examples, labels))
    if unseen:
        log(f"eval: {cfg.eval}: {unseen}")
    return in_output(cfg, ctx, lambda: _train(cfg, ctx, log, tok, labels, train_examples, eval_examples))


def in_output(cfg, ctx, train):
    """Prepare the output folder (rank 0), then train(): a new run that fails before its first
    checkpoint leaves nothing behind."""
    created = _rank0_check(ctx, lambda: _prepare_output(cfg))
    try:
        return train()
    except BaseException:
        if ctx.is_main and not cfg.resume and not ckpt.has_checkpoint(cfg.output):
            _remove_failed_start(cfg.output, created)
        raise


def _check_settings(cfg, device):
    """Every setting in its range (finite, of its type) and the precision possible on the device."""
    try:
        _precision.check(device, cfg.precision)
    except ValueError as e:
        raise FinetuneError(str(e)) from None
    types = {f.name: f.type for f in dataclasses.fields(FinetuneConfig)}
    for name, (ok, wanted) in SETTING_RANGES.items():
        if not hasattr(cfg, name):  # the settings of another job (pretrain has no --doc-stride)
            continue
        value, flag = getattr(cfg, name), "--" + name.replace("_", "-")
        kinds = (int,) if types[name] is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise FinetuneError(f"{flag} must be {'an integer' if kinds == (int,) else 'a number'}, got {value!r}")
        if not math.isfinite(value) or not ok(value):
            raise FinetuneError(f"{flag} must be {wanted}, got {value}")


def _read_inputs(cfg):
    """(tokenizer, labels, training examples, evaluation examples or None). Everything that can
    fail on bad input is checked here, before a file is written."""
    try:
        check_model_dir(cfg.model)
        tok = BertTokenizer(cfg.model)
        check_max_length(cfg.model, cfg.max_length)
    except Exception as e:  # missing folder, no tokenizer, no weights, no special tokens, --max-length too long
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
    return tok, labels, train_examples, eval_examples


def _prepare_output(cfg):
    """Check (rank 0) that the output folder can be written and fits --resume; returns whether
    this call created it, so a failed start can remove it again."""
    out = cfg.output
    if cfg.resume:
        _check_resumable(out)
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
        empty_folder(out)
    return created


def _check_resumable(out):
    pointer = ckpt.read_pointer(ckpt.checkpoints_dir(out)) if os.path.isdir(out) else None
    if pointer is not None and pointer.get("latest"):
        return
    if pointer is not None and pointer.get("finished"):
        raise FinetuneError(f"--resume: the run in {out} has already finished; its model is in {out}")
    hint = " (the run there stopped before its first checkpoint: start it again with --overwrite)" \
        if os.path.isdir(out) and os.listdir(out) else ""
    raise FinetuneError(f"--resume: nothing to resume in {out}: no checkpoint there{hint}")


def _remove_failed_start(out, created):
    if created:
        shutil.rmtree(out, ignore_errors=True)
    elif os.path.isdir(out):  # it was empty (or --overwrite emptied it)
        empty_folder(out, ignore_errors=True)


def _rank0_check(ctx, fn):
    """Run fn on rank 0 only; an error there is raised on every rank."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except (FinetuneError, OSError, ValueError) as e:
            error = str(e)
    error = distributed.broadcast_object(ctx, error)
    if error is not None:
        raise FinetuneError(error)
    return result


def saved_run_args(output):
    """The arguments a run in `output` was started with (its RUN_ARGS file)."""
    path = os.path.join(output, RUN_ARGS)
    if not os.path.exists(path):
        raise FinetuneError(f"--resume: nothing to resume in {output} (no {RUN_ARGS})")
    return read_json(path, RUN_ARGS_ADVICE)


def resumed_config(cfg, keep):
    """cfg with every field the saved run had, except those in `keep` (given now: where the
    output is, the device, the progress bar, ...); --keep-checkpoints given now still counts."""
    saved = saved_run_args(cfg.output)
    fields = {f.name for f in dataclasses.fields(cfg)}
    merged = dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in fields and k not in keep})
    merged.keep_checkpoints = saved.get("keep_checkpoints", False) or cfg.keep_checkpoints
    return merged


def _resumed_config(cfg):
    saved = saved_run_args(cfg.output)
    merged = dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in DETERMINING and k != "world_size"})
    merged.eval = saved.get("eval", cfg.eval) if cfg.eval is None else cfg.eval
    merged.eval_every = saved.get("eval_every", cfg.eval_every)
    merged.save_every = saved.get("save_every", cfg.save_every)
    merged.max_train_examples = saved.get("max_train_examples", 0)
    merged.keep_checkpoints = saved.get("keep_checkpoints", cfg.keep_checkpoints) or cfg.keep_checkpoints
    return merged


# ---- the run: its data, model, plan and state ----

@dataclass
class Data:
    """The encoded inputs of a run."""
    features: list                    # training features (tagging: only those with a labelled token)
    labels: Optional[list]            # class or tag names; None for regression and QA
    pad_id: int
    eval_examples: Optional[list] = None
    eval_features: Optional[list] = None

    @property
    def lengths(self):
        return [len(f.input_ids) for f in self.features]


@dataclass(frozen=True)
class Plan:
    """How the optimizer steps are made up. A step takes step_size examples: micro-batches of
    global_batch, each split across ranks. The epoch order is built over whole steps, so
    accumulation and DDP change how a step is computed, never which examples it holds."""
    global_batch: int                 # examples of one micro-batch, all ranks together
    step_size: int                    # examples of one optimizer step
    steps_per_epoch: int
    epoch_steps: tuple                # optimizer steps of each epoch (a fractional last one is shorter)
    warmup_steps: int

    @property
    def total_steps(self):
        return sum(self.epoch_steps)


@dataclass
class Run:
    """What the steps of one run work with; built once by _build."""
    cfg: FinetuneConfig
    ctx: distributed.DistContext
    model: torch.nn.Module
    train_module: torch.nn.Module     # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: Optional[object]          # GradScaler for fp16, else None
    plan: Plan
    task_info: dict                   # saved with every model folder (bertfast_task.json)
    # Another kind of job on these steps (bertfast.pretrain.job.Job): it collates its batches,
    # counts their loss items, evaluates, saves its model folders and names its determining
    # arguments. None: fine-tuning.
    job: Optional[object] = None

    @property
    def ckpt_dir(self):
        return ckpt.checkpoints_dir(self.cfg.output)


def _train(cfg, ctx, log, tok, labels, train_examples, eval_examples):
    if ctx.is_main:
        os.makedirs(ckpt.checkpoints_dir(cfg.output), exist_ok=True)
        log.to_file(os.path.join(cfg.output, TRAIN_LOG))
    data = _encode(cfg, log, tok, labels, train_examples, eval_examples)
    run = _build(cfg, ctx, log, data)
    state, pointer = _restore(run, log, _run_args(cfg, ctx, labels))
    log(_describe(run))
    seconds = train_loop(run, data, state, pointer, log)
    log(_farewell(cfg, state))
    return {"output": cfg.output, "eval": state["last_eval"], "best": state["best"], "steps": state["global_step"],
            "seconds": seconds, "labels": labels}


def train_loop(run, data, state, pointer, log):
    """The optimizer steps from `state` to the end, evaluations and checkpoints on the way,
    then the final model in the output folder; logs the summary line, returns the seconds."""
    cfg, ctx = run.cfg, run.ctx
    progress = Progress(cfg, ctx, run.plan.total_steps, state["global_step"], run.job.name if run.job else None)
    done_before = state["global_step"]
    while state["epoch"] < len(run.plan.epoch_steps):
        groups = _epoch_groups(run.plan, data.lengths, cfg.seed, state["epoch"])
        _check_order(state, groups)
        for group in groups[state["step_in_epoch"]:]:
            _train_step(run, data, state, pointer, progress, group, len(groups))
    seconds = progress.close()
    if ctx.is_main:
        _finish(run, pointer)
    if ctx.enabled:
        torch.distributed.barrier()
    log(summary_line(state["global_step"] - done_before, seconds, progress.tokens))
    return seconds


def summary_line(steps, seconds, tokens):
    """For instance "trained 122 steps in 310 s, 1,612 tokens/s" (the tokens of all processes)."""
    return f"trained {steps} steps in {seconds:.0f} s, {tokens / max(seconds, 1e-9):,.0f} tokens/s"


def _encode(cfg, log, tok, labels, train_examples, eval_examples):
    label_to_id = {name: i for i, name in enumerate(labels)} if labels else None
    features, truncated = encode_examples(cfg.task, tok, train_examples, cfg.max_length, cfg.doc_stride, label_to_id)
    what = "questions" if cfg.task == "qa" else "texts"
    log(f"train: {len(train_examples)} examples from {cfg.train} -> {len(features)} inputs"
        + (f"; {truncated} {what} longer than --max-length {cfg.max_length} tokens were truncated" if truncated else ""))
    if cfg.task == "tag":  # sentences with no labelled token would divide by zero
        features = [f for f in features if any(t != IGNORE_INDEX for t in f.label)]
    data = Data(features, labels, tok.pad_id)
    if eval_examples is not None:
        data.eval_examples = eval_examples
        data.eval_features, eval_truncated = encode_examples(cfg.task, tok, eval_examples, cfg.max_length,
                                                             cfg.doc_stride, label_to_id)
        log(f"eval: {len(eval_examples)} examples from {cfg.eval}"
            + (f"; {eval_truncated} {what} truncated to --max-length {cfg.max_length}" if eval_truncated else ""))
    return data


def _build(cfg, ctx, log, data, job=None):
    """The Run; a `job` (see Run.job) brings its own model (job.load_model()) and task_info."""
    model, train_module = _seeded_model(cfg, ctx, log, data.labels, job.load_model if job else None)
    plan = _schedule(len(data.features), cfg, ctx.world_size)
    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(plan.total_steps, plan.warmup_steps))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    task_info = {"task": cfg.task, "max_length": cfg.max_length, "doc_stride": cfg.doc_stride,
                 "text_column": cfg.text_column, "text_pair_column": cfg.text_pair_column,
                 "label_column": cfg.label_column, "labels": data.labels, "base_model": os.path.abspath(cfg.model)} \
        if job is None else job.task_info
    return Run(cfg, ctx, model, train_module, optimizer, scheduler, scaler, plan, task_info, job)


def _seeded_model(cfg, ctx, log, labels, load=None):
    """(model, the module training calls): a new head initialised from --seed, the same on every
    rank; dropout seeded per rank. `load()` -> (model, notes) replaces the task's load_model."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model, notes = load() if load else load_model(cfg.task, cfg.model, labels)
    log(f"model: {type(model).__module__}.{type(model).__name__}" + (f" from {cfg.model}" if cfg.model else "")
        + "".join(f"; {n}" for n in notes))
    model.to(ctx.device)
    model.train()
    torch.manual_seed(cfg.seed + 1000003 * ctx.rank)  # dropout differs between ranks
    if not ctx.enabled:
        return model, model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return model, torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _schedule(n_features, cfg, world_size):
    """The Plan of a run over n_features training inputs."""
    global_batch = cfg.batch_size * world_size
    step_size = global_batch * cfg.gradient_accumulation
    steps_per_epoch = math.ceil(n_features / step_size)
    full_epochs, fraction = int(cfg.epochs), cfg.epochs - int(cfg.epochs)
    epoch_steps = [steps_per_epoch] * full_epochs + ([max(1, round(fraction * steps_per_epoch))] if fraction > 0 else [])
    return Plan(global_batch, step_size, steps_per_epoch, tuple(epoch_steps), int(cfg.warmup_ratio * sum(epoch_steps)))


def _optimizer(model, cfg):
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


def _fresh_state():
    """The trainer state a checkpoint carries: the data position, the best evaluation, counters."""
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "best_step": None,
            "best": None, "last_eval": None, "tokens": 0}


def _run_args(cfg, ctx, labels):
    return {**dataclasses.asdict(cfg), "world_size": ctx.world_size, "labels": labels}


def _restore(run, log, run_args):
    """(trainer state, checkpoint pointer): fresh ones for a new run (whose arguments are saved
    now), else those of the last checkpoint, whose weights, optimizer, scheduler, scaler and RNG
    states are loaded in place."""
    cfg, ctx = run.cfg, run.ctx
    if not cfg.resume:
        if ctx.is_main:
            atomic_write_json(os.path.join(cfg.output, RUN_ARGS), run_args)
        return _fresh_state(), {"latest": None, "best": None}
    pointer = ckpt.read_pointer(run.ckpt_dir)
    _check_same_run(cfg.output, run_args, run.job.determining if run.job else DETERMINING)
    try:
        state, rng_states = ckpt.load_training_state(run.ckpt_dir, pointer["latest"], run.model, run.optimizer,
                                                     run.scheduler, run.scaler, ctx.device)
    except Exception as e:  # truncated or foreign files (safetensors, pickle, JSON, shapes): name the checkpoint
        raise FinetuneError(f"--resume: the checkpoint {os.path.join(run.ckpt_dir, pointer['latest'])} cannot be "
                            f"read ({type(e).__name__}: {e}); start the run again with --overwrite") from None
    ckpt.set_rng_state(rng_states[ctx.rank])
    log(f"resumed from {os.path.join(run.ckpt_dir, pointer['latest'])} "
        f"(step {state['global_step']} of {run.plan.total_steps})")
    if ctx.is_main:
        _truncate_eval_log(os.path.join(cfg.output, EVAL_LOG), state["global_step"])
    return state, pointer


def _check_same_run(out_dir, run_args, determining=DETERMINING):
    """A resumed run must have the determining arguments of the run it continues."""
    saved = read_json(os.path.join(out_dir, RUN_ARGS), RUN_ARGS_ADVICE)
    changed = [k for k in determining if saved.get(k) != run_args.get(k)]
    if changed:
        raise FinetuneError(f"--resume: the run in {out_dir} used other settings for {', '.join(changed)} "
                            f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)})")


def _describe(run):
    cfg, ctx, plan = run.cfg, run.ctx, run.plan
    return (f"training: {plan.total_steps} steps ({cfg.epochs} epochs of {plan.steps_per_epoch}), batch {cfg.batch_size}"
            + (f" x {ctx.world_size} processes" if ctx.enabled else "")
            + (f" x {cfg.gradient_accumulation} accumulated" if cfg.gradient_accumulation > 1 else "")
            + f", lr {cfg.lr}, {cfg.precision} on {ctx.device}")


def _farewell(cfg, state):
    best = state["best"]
    return (f"model saved to {os.path.abspath(cfg.output)}"
            + (f" (best checkpoint: step {state['best_step']}, {metrics.main_metric(cfg.task, best)} "
               f"{state['best_metric']:.4f})" if best else ""))


class Progress:
    """The progress bar (rank 0, unless --no-progress), with the loss and this process's tokens/s."""

    def __init__(self, cfg, ctx, total_steps, done_steps, desc=None):
        from tqdm import tqdm
        self.bar = tqdm(total=total_steps, initial=done_steps, disable=not (cfg.progress and ctx.is_main),
                        desc=desc or f"finetune {cfg.task}", unit="step", dynamic_ncols=True, file=sys.stderr)
        self.start, self.tokens = time.time(), 0

    def step(self, tokens, loss_ema):
        self.tokens += tokens
        elapsed = time.time() - self.start
        self.bar.set_postfix(loss=f"{loss_ema:.4f}", tok_s=f"{self.tokens / max(elapsed, 1e-9):,.0f}", refresh=False)
        self.bar.update(1)

    def write(self, message):
        self.bar.write(message)

    def close(self):
        """Seconds since the start."""
        self.bar.close()
        return time.time() - self.start


# ---- the steps ----

def _epoch_groups(plan, lengths, seed, epoch):
    """The optimizer steps of one epoch, each a list of global micro-batches (feature indices):
    a function of (seed, epoch) and the plan only."""
    steps = epoch_batches(lengths, plan.step_size, seed, epoch)[:plan.epoch_steps[epoch]]
    return [[step[i:i + plan.global_batch] for i in range(0, len(step), plan.global_batch)] for step in steps]


def _order_digest(groups):
    return hashlib.sha256(json.dumps(groups).encode()).hexdigest()[:16]


def _check_order(state, groups):
    """A run resumed inside an epoch must see the batches that epoch began with."""
    digest = _order_digest(groups)
    if state.get("order_digest") not in (None, digest) and state["step_in_epoch"] > 0:
        raise FinetuneError("--resume: the training data no longer gives the same batches as the checkpoint")
    state["order_digest"] = digest


def _train_step(run, data, state, pointer, progress, group, steps_in_epoch):
    """One optimizer step, then what the eval/save policy asks for at its end."""
    loss_sum, tokens, n_items = _step(run, data, group, state["epoch"])
    end_of_epoch = _advance(state, loss_sum, tokens, n_items, steps_in_epoch)
    progress.step(tokens, state["loss_ema"])
    _maybe_die(f"step:{state['global_step']}")
    do_eval, do_save = _due(run.cfg, state["global_step"], end_of_epoch, data.eval_features is not None)
    eval_metrics = _evaluate(run, data, state, progress) if do_eval else None
    if do_save:
        _checkpoint(run, state, pointer, eval_metrics)


def _step(run, data, group, epoch=0):
    """Forward and backward of each global micro-batch of `group` (this rank's share of it),
    gradients synchronised on the last, then the update. Returns (summed loss, tokens, loss
    items) of the whole step over all ranks; the loss is normalised by the step's items."""
    if run.job is not None:
        n_items = sum(run.job.loss_items(batch, epoch) for batch in group)
    else:
        n_items = sum(loss_items(run.cfg.task, data.features, batch) for batch in group)
    loss_sum, tokens = 0.0, 0
    for j, global_batch in enumerate(group):
        micro_loss, micro_tokens = _micro_batch(run, data, global_batch, n_items, j == len(group) - 1, epoch)
        loss_sum += micro_loss
        tokens += micro_tokens
    loss_sum, tokens = distributed.sum_floats(run.ctx, [loss_sum, tokens], run.ctx.device)
    if not math.isfinite(loss_sum):  # the same sum on every rank: all stop together
        _stop_non_finite(run, f"the training loss became {loss_sum}", run.scheduler.last_epoch + 1)
    _update(run)
    return loss_sum, int(tokens), n_items


def _micro_batch(run, data, global_batch, n_items, sync, epoch=0):
    """Backward of this rank's share of one global micro-batch; returns (its summed loss, its
    tokens). A rank with no share (fewer items than ranks) takes part with zero weight."""
    cfg, ctx = run.cfg, run.ctx
    local, weight = shard(global_batch, ctx.rank, ctx.world_size), 1.0
    if not local:
        local, weight = [global_batch[0]], 0.0
    tensors = run.job.collate(local, epoch) if run.job else collate(cfg.task, data.features, local, data.pad_id)
    batch = {k: v.to(ctx.device, non_blocking=True) for k, v in tensors.items()}
    with contextlib.nullcontext() if sync or not ctx.enabled else run.train_module.no_sync():
        with _precision.autocast(ctx.device, cfg.precision):  # the head's own loss: the fused op's sum
            loss_sum = run.train_module(**batch, loss_reduction="sum").loss * weight
        loss = loss_sum * (ctx.world_size / max(n_items, 1))
        (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
    return float(loss_sum.detach()), int(batch["attention_mask"].sum()) if weight else 0


def _update(run):
    """Unscale (fp16), clip, step the optimizer and the schedule, clear the gradients."""
    optimizer, scaler = run.optimizer, run.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if run.cfg.max_grad_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.max_grad_norm))
        if scaler is None and not math.isfinite(norm):  # (fp16: the scaler skips such a step itself)
            _stop_non_finite(run, f"the gradient norm became {norm}", run.scheduler.last_epoch + 1)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _stop_non_finite(run, what, step):
    """Stop a run whose loss, gradients or weights stopped being finite, before the update or the
    save that would spread them: the last good checkpoint stays, no NaN model is written."""
    pointer = ckpt.read_pointer(run.ckpt_dir) if run.ctx.is_main and ckpt.has_checkpoint(run.cfg.output) else None
    kept = (f"the last good checkpoint, {os.path.join(run.ckpt_dir, pointer['latest'])}, is kept"
            if pointer and pointer.get("latest") else "no checkpoint had been saved yet")
    raise FinetuneError(f"{what} at step {step}; training stopped ({kept}). Lower --lr, keep --max-grad-norm "
                        "on, check the labels, or use another --precision, then start again with --overwrite")


def _check_finite_weights(run, step):
    """Every rank checks its (identical) weights before a save."""
    bad = [name for name, p in run.model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        _stop_non_finite(run, f"{len(bad)} weight tensors became non-finite (first: {bad[0]})", step)


def _advance(state, loss_sum, tokens, n_items, steps_in_epoch):
    """Count a finished step in the state; returns whether it ended its epoch."""
    state["global_step"] += 1
    state["step_in_epoch"] += 1
    state["tokens"] += tokens
    mean_loss = loss_sum / max(n_items, 1)
    # in the checkpoint, so a resumed run logs the same losses
    state["loss_ema"] = mean_loss if state.get("loss_ema") is None else 0.9 * state["loss_ema"] + 0.1 * mean_loss
    if state["step_in_epoch"] < steps_in_epoch:
        return False
    state["epoch"] += 1
    state["step_in_epoch"] = 0
    return True


def _due(cfg, step, end_of_epoch, has_eval):
    """(evaluate?, save?) after optimizer step `step`: evaluate at each epoch end and every
    --eval-every steps (when there is eval data); save at each evaluation, each epoch end and
    every --save-every steps."""
    do_eval = has_eval and bool(end_of_epoch or (cfg.eval_every and step % cfg.eval_every == 0))
    do_save = do_eval or end_of_epoch or bool(cfg.save_every and step % cfg.save_every == 0)
    return do_eval, do_save


def _evaluate(run, data, state, progress):
    """Metrics on the eval data (all ranks take part), logged in eval_log.jsonl by rank 0."""
    cfg, ctx = run.cfg, run.ctx
    if run.job is not None:
        eval_metrics = run.job.evaluate(run)
    else:
        outputs = evaluation.model_outputs(run.model, cfg.task, data.eval_features, 2 * cfg.batch_size, ctx.device,
                                           cfg.precision, data.pad_id, ctx)
        predictions = evaluation.decode(cfg.task, data.eval_examples, data.eval_features, outputs, data.labels)
        eval_metrics = evaluation.score(cfg.task, data.eval_examples, predictions, data.labels)
    state["last_eval"] = eval_metrics
    if ctx.is_main:
        record = {"step": state["global_step"], "epoch": round(state["global_step"] / run.plan.steps_per_epoch, 4),
                  "train_loss": round(state["loss_ema"], 6), **eval_metrics}
        _append_jsonl(os.path.join(cfg.output, EVAL_LOG), record)
        progress.write(f"step {state['global_step']}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                             for k, v in eval_metrics.items()))
    return eval_metrics


def _checkpoint(run, state, pointer, eval_metrics):
    """Save at an optimizer-step boundary (all ranks take part; rank 0 writes): the model folder
    when `eval_metrics` is the best so far, the training state, then the pointer."""
    _check_finite_weights(run, state["global_step"])
    rngs = distributed.all_gather_objects(run.ctx, ckpt.rng_state())
    if not run.ctx.is_main:
        return
    best_name = _save_if_best(run, state, eval_metrics) or pointer.get("best")
    latest = ckpt.save_training_state(run.ckpt_dir, state["global_step"], run.model, run.optimizer, run.scheduler,
                                      run.scaler, rngs, state)
    _maybe_die(f"save:{state['global_step']}")
    pointer.update(latest=latest, best=best_name)
    ckpt.write_pointer(run.ckpt_dir, pointer)


def _save_if_best(run, state, eval_metrics):
    """The name of a new best-N model folder when eval_metrics beats the best so far, else None."""
    if eval_metrics is None:
        return None
    key = run.job.main_metric if run.job else metrics.main_metric(run.cfg.task, eval_metrics)
    if state["best_metric"] is not None and not eval_metrics[key] > state["best_metric"]:
        return None
    state.update(best_metric=eval_metrics[key], best_step=state["global_step"], best=eval_metrics)
    name = f"best-{state['global_step']:08d}"
    ckpt.write_folder(run.ckpt_dir, name, lambda tmp: _save_model(run, tmp))
    return name


def _save_model(run, folder):
    """A complete model folder: the job's, or the fine-tuned model with its tokenizer and task file."""
    if run.job is not None:
        run.job.save_model(run.model, folder)
    else:
        save_model_files(run.model, run.cfg.model, run.task_info, folder)


# ---- the eval log, and the end: the final model in the output folder ----

def _append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_eval_log(path, step):
    """On resume, forget evaluations made after the checkpoint: they will be made again."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = line = None  # a line cut by a kill (or edited): dropped, the evaluations are remade
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
    atomic_write_text(path, "".join(kept))


def _finish(run, pointer):
    """Put the final model (the best evaluated one, else the last) in the output folder itself,
    one atomic file at a time with the weights last, then retire the training checkpoints."""
    cfg, ckpt_dir, out_dir = run.cfg, run.ckpt_dir, run.cfg.output
    source = os.path.join(ckpt_dir, pointer["best"]) if pointer.get("best") else None
    staging = os.path.join(out_dir, ".final.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    if source is None:
        _save_model(run, staging)
    else:
        for name in os.listdir(source):  # a subfolder too (a sentence-embedding model's 1_Pooling/)
            copy = shutil.copytree if os.path.isdir(os.path.join(source, name)) else shutil.copyfile
            copy(os.path.join(source, name), os.path.join(staging, name))
    fsync_tree(staging)
    names = sorted(os.listdir(staging), key=lambda n: n.endswith(".safetensors"))
    for name in names:
        if os.path.isdir(os.path.join(out_dir, name)):
            shutil.rmtree(os.path.join(out_dir, name))
        os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    os.rmdir(staging)
    fsync_dir(out_dir)
    if cfg.keep_checkpoints:
        ckpt.write_pointer(ckpt_dir, {**pointer, "finished": True})
    else:
        ckpt.write_pointer(ckpt_dir, {"latest": None, "best": None, "finished": True})
