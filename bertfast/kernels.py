"""The ops the model calls, each routed to bertfast's fused op when the build has it and to a
plain-PyTorch implementation otherwise.

The model never calls `bertfast.ops` directly for these: ops land at different times, and this
module lets the model run (and be tested) before they do, switching to the fused op as soon as
`bertfast.ops` exports the name. The fallbacks are written to be reasonably fast too (one
SDPA call for the whole batch, not a Python loop over sequences).
"""
import torch
import torch.nn.functional as F

from . import ops
from .packing import gather_rows, scatter_rows


def _fused(name):
    return getattr(ops, name, None)


def _fused_attention(name, q):
    """The fused attention op, except for float32 on CUDA: its tensor-core kernels take
    fp16/bf16 (autocast gives those), and SDPA serves fp32 there."""
    if q.is_cuda and q.dtype == torch.float32 and not torch.is_autocast_enabled("cuda"):
        return None
    return _fused(name)


def attention(q, k, v, *, key_padding_mask=None, dropout_p=0.0, scale=None):
    """Self-attention on (batch, seq, heads, head_dim) tensors; key_padding_mask (batch, seq)
    bool, True where a key may be attended. Returns (batch, seq, heads, head_dim)."""
    fused = _fused_attention("attention", q)
    if fused is not None:
        return fused(q, k, v, key_padding_mask=key_padding_mask, dropout_p=dropout_p, scale=scale)
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2)


def padded_positions(cu_seqlens, total, max_seqlen):
    """For each packed token, its flat index in a (batch, max_seqlen) layout; with the per-
    sequence lengths. Computed from cu_seqlens with tensor ops only (no host sync)."""
    cu = cu_seqlens.long()
    token = torch.arange(total, device=cu.device)
    seq = torch.searchsorted(cu[1:], token, right=True)
    return seq * max_seqlen + (token - cu[seq]), cu[1:] - cu[:-1]


def _never_empty(key_mask):
    """A row without any key attends to its (zero) first pad key instead of giving NaN, which
    would reach real tokens' gradients through the batched backward."""
    first = torch.arange(key_mask.shape[1], device=key_mask.device) == 0
    return key_mask | (first & ~key_mask.any(1, keepdim=True))


def attention_varlen(q, k, v, cu_seqlens, max_seqlen, *, dropout_p=0.0, scale=None, padding=None):
    """Self-attention within each packed sequence: q, k, v (total_tokens, heads, head_dim),
    sequence i being rows cu_seqlens[i]:cu_seqlens[i+1] (int32). max_seqlen may be any upper
    bound of the lengths. Returns (total_tokens, heads, head_dim).

    padding: optional (flat_index, key_mask) the caller already has, where each packed token sits
    in a (batch, seq) grid and which keys are real; only the plain-PyTorch fallback uses it (it
    re-pads for one batched SDPA call), the fused op ignores it.

    The offsets are not checked (no device sync on the model's hot path): the model builds them
    itself (bertfast.packing), and the fused kernels never read out of bounds anyway."""
    fused = _fused_attention("attention_varlen", q)
    if fused is not None:
        return fused(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, check_cu_seqlens=False)
    total, heads, head_dim = q.shape
    if padding is None:
        flat_index, lengths = padded_positions(cu_seqlens, total, max_seqlen)
        key_mask = torch.arange(max_seqlen, device=q.device) < lengths[:, None]
    else:
        flat_index, key_mask = padding
    batch, seqlen = key_mask.shape
    key_mask = _never_empty(key_mask)
    padded = [scatter_rows(t, flat_index, batch * seqlen).view(batch, seqlen, heads, head_dim).transpose(1, 2)
              for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*padded, attn_mask=key_mask[:, None, None, :], dropout_p=dropout_p,
                                         scale=scale)
    return gather_rows(out.transpose(1, 2).reshape(batch * seqlen, heads, head_dim), flat_index)


def first_query_attention(q, k, v, *, padding=None, dropout_p=0.0, scale=None):
    """Attention of one query per sequence (its first token) to all of that sequence's keys.

    q: (batch, heads, head_dim); k, v packed (total_tokens, heads, head_dim); padding as in
    attention_varlen: (flat_index, key_mask (batch, seq)), or None when k and v are the whole
    (batch * seq) grid. Returns (batch, heads, head_dim). Plain SDPA: batch queries are little work.
    """
    batch, heads, head_dim = q.shape
    if padding is None:
        seqlen, mask = k.shape[0] // batch, None
        keys, values = (t.view(batch, seqlen, heads, head_dim).transpose(1, 2) for t in (k, v))
    else:
        flat_index, key_mask = padding
        seqlen = key_mask.shape[1]
        keys, values = (scatter_rows(t, flat_index, batch * seqlen).view(batch, seqlen, heads, head_dim).transpose(1, 2)
                        for t in (k, v))
        mask = _never_empty(key_mask)[:, None, None, :]
    out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out[:, :, 0]


def softmax_cross_entropy(logits, labels, *, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Cross-entropy of (N, C) logits against (N,) int labels, as F.cross_entropy."""
    fused = _fused("softmax_cross_entropy")
    if fused is not None:
        return fused(logits, labels, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction=reduction)


def linear_cross_entropy(hidden, weight, labels, *, bias=None, ignore_index=-100, reduction="mean"):
    """cross_entropy(hidden @ weight.T + bias, labels) without keeping the (N, vocab) logits
    when the fused op is present."""
    fused = _fused("linear_cross_entropy")
    if fused is not None:
        return fused(hidden, weight, labels, bias=bias, ignore_index=ignore_index, reduction=reduction)
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, ignore_index=ignore_index,
                           reduction=reduction)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """Extractive-QA loss as transformers computes it: positions are clamped to [0, seq] and
    seq (outside the input) is ignored; mean of the start and end cross-entropies."""
    fused = _fused("span_loss")
    if fused is not None:
        return fused(start_logits, end_logits, start_positions, end_positions)
    ignored = start_logits.shape[1]
    start = start_positions.clamp(0, ignored)
    end = end_positions.clamp(0, ignored)
    start_loss = F.cross_entropy(start_logits.float(), start, ignore_index=ignored)
    end_loss = F.cross_entropy(end_logits.float(), end, ignore_index=ignored)
    return (start_loss + end_loss) / 2
