"""linear_cross_entropy: the masked-LM head (hidden @ weight^T + bias) fused with its
softmax cross-entropy, in chunks of rows so that the (rows, vocab) logits never exist at once.

Per chunk of rows: logits = hidden_c @ weight^T + bias (a torch GEMM: cuBLAS / oneDNN), then
the cross-entropy kernel turns the logits, in place, into d loss / d logits, and two more
GEMMs consume them right away: grad_hidden_c = dlogits @ weight, grad_weight += dlogits^T @
hidden_c (grad_bias += column sums). Only one chunk of logits is alive at a time.

For reduction "mean" and "sum" the gradients are computed during the forward, as
Liger-Kernel does: the loss is a scalar, so its gradients only need scaling by the upstream
gradient in backward; recomputing the logits in backward would cost a fourth GEMM (about a
third more time). The price is (rows, hidden) + (vocab, hidden) of saved gradients, which is
small next to the logits. The forward skips the gradients it will not need (no grad mode,
or no input that requires grad). For reduction "none" each row's upstream gradient is only
known in backward, so backward recomputes each chunk of logits (four GEMMs in all).
"""
from typing import Optional

import torch
from torch import Tensor

from .._library import check_device
from ._common import check_fake_devices, check_int, check_same_device, check_tensor, once_differentiable
from .cross_entropy import check_loss_options, reduce_loss

_NAME = "linear_cross_entropy"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CHUNK_ELEMENTS = 1 << 25  # default chunk: at most 32 Mi logits (128 MiB in float32)


def default_chunk_size(rows, vocab):
    """Rows per chunk: chunks of equal size whose logits hold at most 32 Mi elements."""
    max_rows = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    chunks = -(-rows // max_rows)
    return max(1, -(-rows // max(chunks, 1)))


def linear_cross_entropy(hidden, weight, labels, *, bias=None, ignore_index=-100, label_smoothing=0.0,
                         reduction="mean", chunk_size=None):
    """Fused `F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, ...)`.

    Args:
        hidden: (rows, hidden_size) float32, float16 or bfloat16.
        weight: (vocab, hidden_size), hidden's dtype.
        labels: (rows,) int64 in [0, vocab) or ignore_index. On CPU a label out of range
            raises ValueError naming its row; on CUDA it fails a device-side assertion (see
            softmax_cross_entropy).
        bias: optional (vocab,), hidden's dtype.
        ignore_index, label_smoothing, reduction: as softmax_cross_entropy ("mean", "sum",
            "none").
        chunk_size: rows per chunk (default: chunks of at most 32 Mi logits). Smaller saves
            memory, larger keeps the GEMMs efficient.

    Returns the float32 loss (for "mean", nan when every label is ignored or there are no
    rows, with zero gradients, as torch). Differentiable in hidden, weight and bias (once:
    the gradients are not differentiable again). Peak extra memory:
    one chunk of logits plus the gradients (with "mean"/"sum" they are computed in the
    forward and held until backward).
    """
    label_smoothing = check_loss_options(ignore_index, label_smoothing, reduction, _NAME)
    check_tensor(hidden, "hidden", _NAME, _DTYPES)
    check_tensor(weight, "weight", _NAME)
    check_tensor(labels, "labels", _NAME)
    if hidden.dim() != 2:
        raise ValueError(f"{_NAME}: hidden must have shape (rows, hidden_size), got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1] or weight.shape[0] < 1:
        raise ValueError(f"{_NAME}: weight must have shape (vocab, {hidden.shape[1]}), got {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{_NAME}: weight has dtype {weight.dtype}, hidden {hidden.dtype}; they must match")
    if bias is not None:
        check_tensor(bias, "bias", _NAME)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{_NAME}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"{_NAME}: bias has dtype {bias.dtype}, hidden {hidden.dtype}; they must match")
    if labels.dim() != 1 or labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"{_NAME}: labels must have shape ({hidden.shape[0]},) like hidden's rows, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{_NAME}: labels must be int64 class indices, got {labels.dtype}")
    check_same_device({"hidden": hidden, "weight": weight, "bias": bias, "labels": labels}, _NAME)
    if chunk_size is None:
        chunk_size = default_chunk_size(hidden.shape[0], weight.shape[0])
    else:
        chunk_size = check_int(chunk_size, "chunk_size", _NAME, minimum=1)
    check_device(hidden, _NAME)
    ignore_index = int(ignore_index)
    ops = torch.ops.bertfast
    if reduction == "none":
        loss, _ = ops.linear_cross_entropy_rows(hidden, weight, bias, labels, ignore_index, label_smoothing,
                                                chunk_size)
        return loss
    grad_on = torch.is_grad_enabled()
    total, _, _, _ = ops.linear_cross_entropy_sum(
        hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size,
        grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad)
    return reduce_loss(total, labels, ignore_index, reduction)


def _empty(like):
    return like.new_empty((0,))


def _check_op_args(hidden, weight, bias, labels, chunk_size, **saved):
    """The checks of the torch.ops.bertfast.linear_cross_entropy_* ops themselves (called
    directly, they skip linear_cross_entropy's): shapes, one device, a positive chunk size.
    saved: the per-row tensors a backward receives. Shared by the real and fake kernels."""
    torch._check(hidden.dim() == 2, lambda: f"{_NAME}: hidden must have shape (rows, hidden_size), got "
                 f"{tuple(hidden.shape)}")
    torch._check(weight.dim() == 2 and weight.shape[1] == hidden.shape[1] and weight.shape[0] >= 1, lambda:
                 f"{_NAME}: weight must have shape (vocab, {hidden.shape[1]}), got {tuple(weight.shape)}")
    torch._check(bias is None or bias.shape == (weight.shape[0],), lambda:
                 f"{_NAME}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    torch._check(labels.shape == (hidden.shape[0],), lambda: f"{_NAME}: labels must have shape "
                 f"({hidden.shape[0]},) like hidden's rows, got {tuple(labels.shape)}")
    torch._check(labels.dtype == torch.int64, lambda: f"{_NAME}: labels must be int64, got {labels.dtype}")
    for name, t in saved.items():
        torch._check(t.shape == (hidden.shape[0],), lambda: f"{_NAME}: {name} must have shape "
                     f"({hidden.shape[0]},), got {tuple(t.shape)}")
    torch._check_value(chunk_size >= 1, lambda: f"{_NAME}: chunk_size must be >= 1, got {chunk_size}")
    check_fake_devices(_NAME, hidden=hidden, weight=weight, bias=bias, labels=labels, **saved)


def _check_labels_in_range(labels, vocab, ignore_index):
    """On CPU (no device sync to pay) every label is in [0, vocab) or ignore_index; the
    error names this op and the caller's row (the chunks' kernel would name neither)."""
    if labels.device.type != "cpu":
        return
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{_NAME}: labels[{row}] = {int(labels[row])} is outside [0, {vocab}) and is not "
                         f"ignore_index ({ignore_index})")


def _chunk_loop(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size, want_hidden,
                want_weight, want_bias, grad_loss=None, lse=None):
    """Runs the chunks. Without grad_loss: returns (loss, lse) per row and the gradients of
    sum(loss). With grad_loss (rows,) and the forward's lse: the gradients of
    sum(grad_loss * loss). Gradients not wanted are None."""
    saved = {} if grad_loss is None else {"grad_loss": grad_loss, "lse": lse}
    _check_op_args(hidden, weight, bias, labels, chunk_size, **saved)
    rows, vocab = hidden.shape[0], weight.shape[0]
    _check_labels_in_range(labels, vocab, ignore_index)
    want_grads = want_hidden or want_weight or want_bias
    forward = grad_loss is None
    if forward:
        loss = hidden.new_empty((rows,), dtype=torch.float32)
        lse = torch.empty_like(loss)
    grad_hidden = torch.empty_like(hidden, memory_format=torch.contiguous_format) if want_hidden else None
    # Parameter gradients accumulate over chunks in float32 whatever the input dtype.
    grad_weight = weight.new_zeros(weight.shape, dtype=torch.float32) if want_weight else None
    grad_bias = weight.new_zeros((vocab,), dtype=torch.float32) if want_bias else None
    buffer = hidden.new_empty((min(chunk_size, rows), vocab))
    weight_t = weight.t()
    for start in range(0, rows, chunk_size):
        end = min(start + chunk_size, rows)
        h, y = hidden[start:end], labels[start:end]
        logits = buffer[: end - start]
        if bias is None:
            torch.mm(h, weight_t, out=logits)
        else:
            torch.addmm(bias, h, weight_t, out=logits)
        if forward and not want_grads:
            loss[start:end], lse[start:end] = torch.ops.bertfast.softmax_cross_entropy_fwd(
                logits, y, ignore_index, label_smoothing, False)
            continue
        if forward:  # logits become d sum(loss) / d logits
            loss[start:end], lse[start:end] = torch.ops.bertfast.softmax_cross_entropy_fwd_bwd_(
                logits, y, ignore_index, label_smoothing)
        else:
            torch.ops.bertfast.softmax_cross_entropy_bwd_(grad_loss[start:end], logits, y, lse[start:end],
                                                          ignore_index, label_smoothing)
        if want_hidden:
            torch.mm(logits, weight, out=grad_hidden[start:end])
        if want_weight:
            if logits.dtype == torch.float32:
                grad_weight.addmm_(logits.t(), h)
            else:
                grad_weight += torch.mm(logits.t(), h)
        if want_bias:
            grad_bias += logits.sum(0, dtype=torch.float32)
    if not forward:  # the forward's parameter gradients stay float32 until scaled in backward
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(weight.dtype) if grad_bias is not None else None
    grads = (grad_hidden, grad_weight, grad_bias)
    return ((loss, lse) if forward else ()) + grads


# ---- reduction "mean" / "sum": gradients computed in the forward ----

@torch.library.custom_op("bertfast::linear_cross_entropy_sum", mutates_args=())
def _linear_cross_entropy_sum(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], labels: Tensor,
                              ignore_index: int, label_smoothing: float, chunk_size: int, want_grad_hidden: bool,
                              want_grad_weight: bool, want_grad_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sum over rows of the loss (float32 scalar) and its gradients for hidden (hidden's
    dtype), weight and bias (float32 until backward scales them; empty where not wanted)."""
    loss, _, gh, gw, gb = _chunk_loop(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size,
                                      want_grad_hidden, want_grad_weight, want_grad_bias)
    return (loss.sum(), gh if gh is not None else _empty(hidden), gw if gw is not None else _empty(weight),
            gb if gb is not None else _empty(weight))


@_linear_cross_entropy_sum.register_fake
def _(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size, want_grad_hidden, want_grad_weight,
      want_grad_bias):
    _check_op_args(hidden, weight, bias, labels, chunk_size)
    loss = hidden.new_empty((), dtype=torch.float32)
    gh = torch.empty_like(hidden, memory_format=torch.contiguous_format) if want_grad_hidden else _empty(hidden)
    gw = weight.new_empty(weight.shape, dtype=torch.float32) if want_grad_weight else _empty(weight)
    gb = weight.new_empty((weight.shape[0],), dtype=torch.float32) if want_grad_bias else _empty(weight)
    return loss, gh, gw, gb


def _sum_setup_context(ctx, inputs, output):
    _, gh, gw, gb = output
    # hidden, weight and bias only link a second differentiation to the error it raises
    ctx.save_for_backward(gh, gw, gb, *inputs[:3])
    ctx.wanted = inputs[7:10]
    ctx.dtype = inputs[0].dtype


def _sum_backward(ctx, grad_total, _gh, _gw, _gb):
    grads = [None, None, None]
    saved_grads, inputs = ctx.saved_tensors[:3], ctx.saved_tensors[3:]
    for i, grad in enumerate(saved_grads):
        if ctx.wanted[i] and ctx.needs_input_grad[i]:  # scaled in float32, rounded once
            grads[i] = (grad.float() * grad_total).to(ctx.dtype)
    return once_differentiable((grads[0], grads[1], grads[2], None, None, None, None, None, None, None), _NAME,
                               *inputs, grad_total)


_linear_cross_entropy_sum.register_autograd(_sum_backward, setup_context=_sum_setup_context)


# ---- reduction "none": per-row losses, logits recomputed in backward ----

@torch.library.custom_op("bertfast::linear_cross_entropy_rows", mutates_args=())
def _linear_cross_entropy_rows(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], labels: Tensor,
                               ignore_index: int, label_smoothing: float, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Per-row loss and log-sum-exp (both float32, (rows,))."""
    loss, lse, _, _, _ = _chunk_loop(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size,
                                     False, False, False)
    return loss, lse


@_linear_cross_entropy_rows.register_fake
def _(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size):
    _check_op_args(hidden, weight, bias, labels, chunk_size)
    loss = hidden.new_empty((hidden.shape[0],), dtype=torch.float32)
    return loss, torch.empty_like(loss)


@torch.library.custom_op("bertfast::linear_cross_entropy_rows_bwd", mutates_args=())
def _linear_cross_entropy_rows_bwd(grad_loss: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor],
                                   labels: Tensor, lse: Tensor, ignore_index: int, label_smoothing: float,
                                   chunk_size: int, want_grad_hidden: bool, want_grad_weight: bool,
                                   want_grad_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of sum(grad_loss * loss) (empty where not wanted)."""
    gh, gw, gb = _chunk_loop(hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size,
                             want_grad_hidden, want_grad_weight, want_grad_bias,
                             grad_loss=grad_loss.float().contiguous(), lse=lse)
    return (gh if gh is not None else _empty(hidden), gw if gw is not None else _empty(weight),
            gb if gb is not None else _empty(weight))


@_linear_cross_entropy_rows_bwd.register_fake
def _(grad_loss, hidden, weight, bias, labels, lse, ignore_index, label_smoothing, chunk_size, want_grad_hidden,
      want_grad_weight, want_grad_bias):
    _check_op_args(hidden, weight, bias, labels, chunk_size, grad_loss=grad_loss, lse=lse)
    gh = torch.empty_like(hidden, memory_format=torch.contiguous_format) if want_grad_hidden else _empty(hidden)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if want_grad_weight else _empty(weight)
    gb = weight.new_empty((weight.shape[0],)) if want_grad_bias else _empty(weight)
    return gh, gw, gb


def _rows_setup_context(ctx, inputs, output):
    hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size = inputs
    ctx.save_for_backward(hidden, weight, bias, labels, output[1])
    ctx.options = (ignore_index, label_smoothing, chunk_size)
    ctx.has_bias = bias is not None


def _rows_backward(ctx, grad_loss, _grad_lse):
    hidden, weight, bias, labels, lse = ctx.saved_tensors
    want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
    gh, gw, gb = torch.ops.bertfast.linear_cross_entropy_rows_bwd(grad_loss, hidden, weight, bias, labels, lse,
                                                                  *ctx.options, *want)
    return once_differentiable(
        (gh if want[0] else None, gw if want[1] else None, gb if want[2] else None, None, None, None, None), _NAME,
        hidden, weight, bias, grad_loss)


_linear_cross_entropy_rows.register_autograd(_rows_backward, setup_context=_rows_setup_context)
