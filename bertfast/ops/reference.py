"""Plain-PyTorch definitions of every fused op: the spec that tests and benchmarks compare
against. Each function computes in the dtype of its inputs (tests pass float64 copies)."""
import torch
import torch.nn.functional as F

_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit words of a * b for a < 2^32 and int64 tensor b < 2^32, exactly,
    without int64 overflow (b is split into 16-bit halves)."""
    t_lo = a * (b & 0xFFFF)
    t_hi = a * (b >> 16)
    lo = (t_lo + ((t_hi & 0xFFFF) << 16)) & _MASK32
    hi = (t_hi + (t_lo >> 16)) >> 16
    return hi, lo


def philox4x32_10(counter: torch.Tensor, key: int):
    """Philox-4x32-10 of the 128-bit counters (counter, 0) under a 64-bit key: four int64
    tensors holding 32-bit words. Matches csrc/common/philox.h."""
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    c2, c3 = torch.zeros_like(counter), torch.zeros_like(counter)
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
    return c0, c1, c2, c3


def dropout_keep_mask(seed: int, shape, p: float, device="cpu") -> torch.Tensor:
    """The bool keep-mask bertfast's kernels draw for a tensor of `shape` with dropout `p`
    under `seed`: element i keeps when word i % 4 of Philox(i // 4) >= floor(p * 2^32)."""
    numel = 1
    for s in shape:
        numel *= s
    index = torch.arange(numel, dtype=torch.int64, device=device)
    words = torch.stack(philox4x32_10(index >> 2, int(seed)), dim=-1)
    draw = words.gather(-1, (index & 3).unsqueeze(-1)).squeeze(-1)
    threshold = min(int(p * 2**32), 2**32 - 1)
    return (draw >= threshold).view(shape)


def add_layer_norm(x, residual, weight, bias, eps=1e-12, *, x_bias=None, dropout_p=0.0, keep_mask=None):
    """layer_norm(residual + dropout(x + x_bias)) over the last dimension. With dropout,
    `keep_mask` (bool, x's shape) says which elements survive; they are scaled by 1/(1-p)."""
    h = x if x_bias is None else x + x_bias
    if dropout_p > 0:
        h = h * keep_mask.to(h.dtype) / (1.0 - dropout_p)
    return F.layer_norm(residual + h, (x.shape[-1],), weight, bias, eps)


def softmax_cross_entropy(logits, labels, *, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """F.cross_entropy over (rows, classes) logits, computed in the logits' dtype."""
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction=reduction)


def linear_cross_entropy(hidden, weight, labels, *, bias=None, ignore_index=-100, label_smoothing=0.0,
                         reduction="mean"):
    """The unfused masked-LM head: cross-entropy of F.linear(hidden, weight, bias)."""
    return F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """transformers' BertForQuestionAnswering loss: positions clamped to [0, seq_len], position
    seq_len ignored, mean of the start and end cross-entropies."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored_index = start_logits.size(1)
    start_positions = start_positions.clamp(0, ignored_index)
    end_positions = end_positions.clamp(0, ignored_index)
    loss_fct = torch.nn.CrossEntropyLoss(ignore_index=ignored_index)
    return (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2
def attention(q, k, v, *, key_padding_mask=None, attn_bias=None, dropout_p=0.0, scale=None, keep_mask=None):
    """softmax(scale * q k^T + attn_bias, masked keys excluded) v on (batch, seq, heads, dim)
    tensors. A query row with no attendable key gives zeros. With dropout, `keep_mask`
    (bool, (batch, heads, seq_q, seq_k)) says which probabilities survive, scaled by 1/(1-p):
    bertfast draws dropout_keep_mask(seed, (batch, heads, seq_q, seq_k), p)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if attn_bias is not None:
        scores = scores + attn_bias
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max).detach()
    e = torch.exp(scores - row_max)
    total = e.sum(dim=-1, keepdim=True)
    probs = e / torch.where(total > 0, total, torch.ones_like(total))
    if dropout_p > 0:
        probs = probs * keep_mask.to(probs.dtype) / (1.0 - dropout_p)
    return torch.einsum("bhij,bjhd->bihd", probs.to(v.dtype), v)  # a float32 bias promotes the scores


def attention_varlen(q, k, v, cu_seqlens, max_seqlen, *, dropout_p=0.0, scale=None, keep_mask=None):
    """Self-attention of each packed sequence on (total, heads, dim) tensors. With dropout,
    `keep_mask` is (batch, heads, max_seqlen, max_seqlen): bertfast draws
    dropout_keep_mask(seed, (batch, heads, max_seqlen, max_seqlen), p) and sequence b uses
    keep_mask[b, :, :len_b, :len_b]."""
    outs = []
    bounds = cu_seqlens.tolist()
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        if e == s:
            continue
        keep = None if keep_mask is None else keep_mask[b : b + 1, :, : e - s, : e - s]
        outs.append(attention(q[None, s:e], k[None, s:e], v[None, s:e], dropout_p=dropout_p, scale=scale,
                              keep_mask=keep)[0])
    return torch.cat(outs, dim=0) if outs else q.new_empty(q.shape)
