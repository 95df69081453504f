"""Which attention serves each call of the model and of `bertfast.optimize`: bertfast's fused op,
or `F.scaled_dot_product_attention` where the fused kernels do not apply.

Two cases go to SDPA, each for a reason that holds today:
- float32 on CUDA without autocast: the CUDA kernels use tensor cores and take fp16/bf16 only
  (autocast gives those); SDPA serves fp32 there. The CPU kernels take float32.
- one query per sequence (`first_query_attention`, the pooled head's last layer): batch-many
  queries are little work, and plain SDPA does it without a kernel of its own.
"""
import torch
import torch.nn.functional as F

from .. import ops
from .packing import gather_rows, scatter_rows


def _fused_serves(q):
    """False for float32 on CUDA outside autocast (see the module docstring)."""
    return not (q.is_cuda and q.dtype == torch.float32 and not torch.is_autocast_enabled("cuda"))


def attention(q, k, v, *, key_padding_mask=None, dropout_p=0.0, scale=None):
    """Self-attention on (batch, seq, heads, head_dim) tensors; key_padding_mask (batch, seq)
    bool, True where a key may be attended. Returns (batch, seq, heads, head_dim)."""
    if _fused_serves(q):
        return ops.attention(q, k, v, key_padding_mask=key_padding_mask, dropout_p=dropout_p, scale=scale)
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
    in a (batch, seq) grid and which keys are real; only the SDPA path uses it (it re-pads for
    one batched call), the fused op ignores it.

    The offsets are not checked (no device sync on the model's hot path): the model builds them
    itself (bertfast.model.packing), and the fused kernels never read out of bounds anyway."""
    if _fused_serves(q):
        return ops.attention_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, check_cu_seqlens=False)
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


def attention_packed(q, k, v, packing, *, dropout_p=0.0, scale=None):
    """Self-attention on tokens packed by `packing` (a bertfast.model.packing.Packing): q, k, v
    (total_tokens, heads, head_dim) -> (total_tokens, heads, head_dim). Without padding the rows
    are the whole (batch, seq) grid and the dense op serves; otherwise the varlen one."""
    if packing.indices is None:
        grid = (packing.batch, packing.seqlen, *q.shape[1:])
        out = attention(q.view(grid), k.view(grid), v.view(grid), dropout_p=dropout_p, scale=scale)
        return out.reshape(q.shape)
    return attention_varlen(q, k, v, packing.cu_seqlens, packing.max_seqlen, dropout_p=dropout_p, scale=scale,
                            padding=(packing.indices, packing.key_mask))


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
