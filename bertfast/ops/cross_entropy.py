"""softmax_cross_entropy: softmax + cross-entropy of (rows, classes) logits in one fused op,
and span_loss, the question-answering loss built on it.

Per row with label y (not ignore_index), eps = label_smoothing, C = classes:

    loss = logsumexp(x) - (1 - eps) * x[y] - (eps / C) * sum(x)        (float32)
    d loss / d x = softmax(x) - eps / C - (1 - eps) * onehot(y)

which is `F.cross_entropy(logits.float(), labels, ...)`. The forward reads the logits once
(online max and sum of exponentials) and keeps only the row log-sum-exp; the backward
recomputes softmax from it while writing the gradient, so no probabilities are stored.
"""
import numbers

import torch

from .._library import check_device, load_library
from ._common import (check_fake_devices, check_int, check_same_device, check_tensor, check_writable_in_place,
                      mean_over_counted, once_differentiable)

load_library()

_LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_REDUCTIONS = ("mean", "sum", "none")
_NAME = "softmax_cross_entropy"


def check_cross_entropy_args(logits, labels, ignore_index, label_smoothing, reduction, op_name,
                             logits_name="logits", labels_name="labels"):
    """Checks shared by the cross-entropy ops; returns label_smoothing as a float."""
    check_tensor(logits, logits_name, op_name, _LOGITS_DTYPES)
    check_tensor(labels, labels_name, op_name)
    if logits.dim() != 2:
        raise ValueError(f"{op_name}: {logits_name} must have shape (rows, classes), got {tuple(logits.shape)}")
    if logits.shape[1] < 1:
        raise ValueError(f"{op_name}: {logits_name} must have at least one class, got {tuple(logits.shape)}")
    if labels.dim() != 1:
        raise ValueError(f"{op_name}: {labels_name} must have shape (rows,), got {tuple(labels.shape)}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{op_name}: {labels_name} has {labels.shape[0]} rows but {logits_name} has "
                         f"{logits.shape[0]} ({tuple(labels.shape)} vs {tuple(logits.shape)})")
    if labels.dtype != torch.int64:
        raise TypeError(f"{op_name}: {labels_name} must be int64 class indices, got {labels.dtype}")
    check_same_device({logits_name: logits, labels_name: labels}, op_name)
    return check_loss_options(ignore_index, label_smoothing, reduction, op_name)


def check_loss_options(ignore_index, label_smoothing, reduction, op_name):
    check_int(ignore_index, "ignore_index", op_name)
    if (not isinstance(label_smoothing, numbers.Real) or isinstance(label_smoothing, bool)
            or not 0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"{op_name}: label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op_name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return float(label_smoothing)


def reduce_loss(loss, labels, ignore_index, reduction):
    """Per-row losses reduced as torch does: "mean" divides by the number of non-ignored
    labels (nan when every label is ignored or there are no rows, with zero gradients, as
    torch)."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return mean_over_counted(total, (labels != ignore_index).sum())


def softmax_cross_entropy(logits, labels, *, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                          inplace_backward=False):
    """Fused `F.cross_entropy(logits.float(), labels, ...)` for 2-d logits.

    Args:
        logits: (rows, classes) float32, float16 or bfloat16 (CPU and CUDA).
        labels: (rows,) int64 in [0, classes) or equal to ignore_index. On CPU a label out of
            range raises ValueError. On CUDA the check runs inside the kernel, without a
            device synchronisation: a bad label fails a device-side assertion whose message
            names this op; it surfaces at the next synchronising call as "device-side assert
            triggered" (as torch's own nll_loss does), and the CUDA context is then unusable.
        ignore_index: rows with this label contribute 0 to the loss and get a zero gradient.
        label_smoothing: eps in [0, 1]; the target is (1 - eps) * onehot + eps / classes.
        reduction: "mean" (over non-ignored rows; nan when all are ignored or there are no
            rows, with zero gradients, as torch), "sum" or "none" (per-row losses, 0 where
            ignored).
        inplace_backward: write the gradient into the logits' own storage instead of a new
            (rows, classes) buffer (saves that memory for large vocabularies; on CPU, where
            torch's allocator caches nothing, it also saves the page faults of a fresh
            buffer, most of the backward's time there). The logits' values are destroyed by
            the backward: do not reuse them after it (nor backward twice). The backward bumps
            their version counter, so autograd raises (as for any in-place op) when another
            node saved them (`softmax_cross_entropy(torch.relu(x), ...)`); a leaf that
            requires grad is refused, and so are labels that share memory with the logits.
            Non-contiguous logits are copied first, so then it is the copy that is
            overwritten.

    Returns the loss in float32 (a scalar, or (rows,) for "none"). Differentiable in logits
    (once: the gradient is not differentiable again); the gradient has the logits' dtype.
    """
    label_smoothing = check_cross_entropy_args(logits, labels, ignore_index, label_smoothing, reduction, _NAME)
    if not isinstance(inplace_backward, bool):
        raise TypeError(f"{_NAME}: inplace_backward must be a bool, got {inplace_backward!r}")
    check_device(logits, _NAME)
    logits = logits.contiguous()
    if inplace_backward:
        check_writable_in_place(logits, "logits", _NAME)
    loss, _ = torch.ops.bertfast.softmax_cross_entropy_fwd(logits, labels, int(ignore_index), label_smoothing,
                                                           inplace_backward)
    return reduce_loss(loss, labels, ignore_index, reduction)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """The extractive question-answering loss of transformers' BertForQuestionAnswering:
    (CE(start_logits, start) + CE(end_logits, end)) / 2, where positions are clamped to
    [0, seq_len] and position seq_len (outside the sequence) is ignored.

    Args:
        start_logits, end_logits: (batch, seq_len) float32, float16 or bfloat16.
        start_positions, end_positions: (batch,) or (batch, 1) int64 token positions.

    Returns the float32 scalar loss (nan when every position of a side is outside the
    sequence, or there are no rows, as transformers; the gradients are zeros then).
    """
    name = "span_loss"
    positions = []
    for side, logits, pos in (("start", start_logits, start_positions), ("end", end_logits, end_positions)):
        check_tensor(logits, f"{side}_logits", name, _LOGITS_DTYPES)
        check_tensor(pos, f"{side}_positions", name)
        if pos.dim() > 1:  # transformers squeezes a trailing dimension of size 1 (multi-GPU gathers)
            pos = pos.squeeze(-1)
        check_cross_entropy_args(logits, pos, 0, 0.0, "mean", name, f"{side}_logits", f"{side}_positions")
        positions.append(pos)
    if end_logits.shape != start_logits.shape:
        raise ValueError(f"{name}: end_logits has shape {tuple(end_logits.shape)}, start_logits "
                         f"{tuple(start_logits.shape)}; they must match")
    ignored = start_logits.shape[1]
    start = positions[0].clamp(0, ignored)
    end = positions[1].clamp(0, ignored)
    start_loss = softmax_cross_entropy(start_logits, start, ignore_index=ignored)
    end_loss = softmax_cross_entropy(end_logits, end, ignore_index=ignored)
    return (start_loss + end_loss) / 2


# ---- torch.library registrations: fake (shapes for torch.compile) and autograd ----

@torch.library.register_fake("bertfast::softmax_cross_entropy_fwd")
def _fwd_fake(logits, labels, ignore_index, label_smoothing, inplace_backward):
    check_fake_devices(_NAME, logits=logits, labels=labels)
    torch._check(logits.dim() == 2, lambda: f"{_NAME}: logits must be 2-d")
    torch._check(labels.shape == (logits.shape[0],), lambda: f"{_NAME}: labels must have shape (rows,)")
    loss = logits.new_empty((logits.shape[0],), dtype=torch.float32)
    return loss, torch.empty_like(loss)


@torch.library.register_fake("bertfast::softmax_cross_entropy_bwd")
def _bwd_fake(grad_loss, logits, labels, lse, ignore_index, label_smoothing):
    check_fake_devices(_NAME, logits=logits, labels=labels, grad_loss=grad_loss, lse=lse)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("bertfast::softmax_cross_entropy_bwd_")
def _bwd_inplace_fake(grad_loss, logits, labels, lse, ignore_index, label_smoothing):
    check_fake_devices(_NAME, logits=logits, labels=labels, grad_loss=grad_loss, lse=lse)
    return None


@torch.library.register_fake("bertfast::softmax_cross_entropy_fwd_bwd_")
def _fwd_bwd_fake(logits, labels, ignore_index, label_smoothing):
    check_fake_devices(_NAME, logits=logits, labels=labels)
    loss = logits.new_empty((logits.shape[0],), dtype=torch.float32)
    return loss, torch.empty_like(loss)


def _setup_context(ctx, inputs, output):
    logits, labels, ignore_index, label_smoothing, inplace_backward = inputs
    _, lse = output
    ctx.save_for_backward(logits, labels, lse)
    ctx.ignore_index = ignore_index
    ctx.label_smoothing = label_smoothing
    ctx.inplace_backward = inplace_backward


def _backward(ctx, grad_loss, _grad_lse):
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    logits, labels, lse = ctx.saved_tensors
    grad_loss = grad_loss.float().contiguous()  # "mean"/"sum" send an expanded scalar
    if ctx.inplace_backward:
        torch.ops.bertfast.softmax_cross_entropy_bwd_(grad_loss, logits, labels, lse, ctx.ignore_index,
                                                      ctx.label_smoothing)
        # Written in place: a node that saved these logits (relu's output, say) must now fail
        # its version check instead of reading the gradient as its saved value.
        torch.autograd.graph.increment_version(logits)
        grad_logits = logits
    else:
        grad_logits = torch.ops.bertfast.softmax_cross_entropy_bwd(grad_loss, logits, labels, lse, ctx.ignore_index,
                                                                   ctx.label_smoothing)
    return once_differentiable((grad_logits, None, None, None, None), _NAME, logits, grad_loss)


torch.library.register_autograd("bertfast::softmax_cross_entropy_fwd", _backward, setup_context=_setup_context)
