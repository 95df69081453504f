"""attention and attention_varlen: the attention of a BERT layer as one fused op.

    out = dropout(softmax(scale * q k^T + attn_bias, masked)) v

computed tile by tile with an online softmax: the (seq_q x seq_k) score matrix is never
stored; the backward recomputes it from the saved row log-sum-exp.

Dropout mask. Probability (b, h, i, j) (query i, key j of sequence b, head h) is kept when
element ((b*heads + h)*counter_q + i)*counter_k + j of
`bertfast.ops.reference.dropout_keep_mask(seed, (batch, heads, counter_q, counter_k), dropout_p)`
is True, with (counter_q, counter_k) = (seq_q, seq_k) for `attention` and
(max_seqlen, max_seqlen) for `attention_varlen` (positions i, j inside each sequence). So the
varlen op on packed tokens draws the same mask as the padded op on a batch padded to
max_seqlen. The seed comes from torch's generator: torch.manual_seed reproduces it.
"""
import math
import numbers

import torch

from .._library import check_device, load_library
from ._common import (check_dropout_p, check_fake_devices, check_int, check_same_device, check_tensor,
                      once_differentiable, seed_for_dropout)

load_library()

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_deterministic = False


def set_deterministic(flag: bool):
    """Make the attention backward bitwise reproducible by default (CUDA: no order-varying
    atomics; the CPU backward always is). torch.use_deterministic_algorithms(True) does the same."""
    global _deterministic
    _deterministic = bool(flag)


def is_deterministic():
    return _deterministic or torch.are_deterministic_algorithms_enabled()


def _resolve_deterministic(deterministic):
    return is_deterministic() if deterministic is None else bool(deterministic)


def _resolve_scale(scale, head_dim, op_name):
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)):
        raise ValueError(f"{op_name}: scale must be a finite number, got {scale!r}")
    return float(scale)


def _autocast_qkv(q, k, v, op_name):
    """Under CUDA autocast, float32 q, k, v run in the autocast dtype (as matmuls do)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, op_name, _DTYPES)
    if q.device.type == "cuda" and q.dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def _check_qkv(q, k, v, rank, layout, op_name):
    for name, t in (("q", q), ("k", k), ("v", v)):  # tensors of _DTYPES: _autocast_qkv checked
        if t.dim() != rank:
            raise ValueError(f"{op_name}: {name} must have shape {layout}, got {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{op_name}: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"{op_name}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"{op_name}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on (heads, head_dim)")
    head_dim = q.shape[-1]
    if not (8 <= head_dim <= 128 and head_dim % 8 == 0):
        raise ValueError(f"{op_name}: head_dim must be a multiple of 8 between 8 and 128, got {head_dim}")
    check_same_device({"q": q, "k": k, "v": v}, op_name)
    check_device(q, op_name)
    if q.device.type == "cuda" and q.dtype == torch.float32:
        raise TypeError(f"{op_name}: the CUDA kernels take float16 or bfloat16 q, k, v, got float32; cast them "
                        "(or run under torch.autocast(device_type='cuda', dtype=torch.bfloat16))")


def attention(q, k, v, *, key_padding_mask=None, attn_bias=None, dropout_p=0.0, scale=None, deterministic=None):
    """Fused multi-head attention on (batch, seq, heads, head_dim) tensors.

    Args:
        q: (batch, seq_q, heads, head_dim); k, v: (batch, seq_k, heads, head_dim). CPU: float32
            or bfloat16 (float16 works too); CUDA: float16 or bfloat16 (float32 runs in the autocast
            dtype under torch.autocast, else raises a TypeError).
            head_dim: a multiple of 8 up to 128 (32, 64, 128 are the fast ones on CUDA).
        key_padding_mask: optional bool (batch, seq_k), True where a key may be attended
            (the Hugging Face attention_mask).
        attn_bias: optional additive float bias broadcastable to (batch, heads, seq_q, seq_k),
            float32 or q's dtype (-inf masks an entry). Differentiable when it requires grad;
            its gradient is then formed as a float32 (batch, heads, seq_q, seq_k) tensor and
            summed over the broadcast dimensions.
        dropout_p: dropout on the attention probabilities, in [0, 1) (see the module docstring
            for the mask).
        scale: multiplies q k^T; default 1 / sqrt(head_dim).
        deterministic: bitwise reproducible backward; default `is_deterministic()`.

    Returns (batch, seq_q, heads, head_dim) in q's dtype. A query row with no attendable key
    gives zeros (and zero gradient), never NaN. Differentiable once (the gradients are not
    differentiable again).
    """
    name = "attention"
    q, k, v = _autocast_qkv(q, k, v, name)
    _check_qkv(q, k, v, 4, "(batch, seq, heads, head_dim)", name)
    batch, seq_q, heads, head_dim = q.shape
    seq_k = k.shape[1]
    if k.shape[0] != batch:
        raise ValueError(f"{name}: q has batch {batch} but k has {k.shape[0]}")
    if key_padding_mask is not None:
        check_tensor(key_padding_mask, "key_padding_mask", name, (torch.bool,))
        if tuple(key_padding_mask.shape) != (batch, seq_k):
            raise ValueError(f"{name}: key_padding_mask must have shape (batch, seq_k) = ({batch}, {seq_k}), "
                             f"got {tuple(key_padding_mask.shape)}")
    bias = None
    if attn_bias is not None:
        check_tensor(attn_bias, "attn_bias", name, (torch.float32, q.dtype))
        full = (batch, heads, seq_q, seq_k)
        try:
            ok = torch.broadcast_shapes(attn_bias.shape, full) == full
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{name}: attn_bias of shape {tuple(attn_bias.shape)} does not broadcast to "
                             f"(batch, heads, seq_q, seq_k) = {full}")
        bias = attn_bias.expand(full)  # a stride-0 view; autograd sums its gradient back
    check_same_device({"q": q, "key_padding_mask": key_padding_mask, "attn_bias": attn_bias}, name)
    dropout_p = check_dropout_p(dropout_p, name)
    scale = _resolve_scale(scale, head_dim, name)
    seed = seed_for_dropout(dropout_p, q.device)
    out, _ = torch.ops.bertfast.attention_fwd(q, k, v, key_padding_mask, bias, None, 0, seed, dropout_p, scale,
                                              _resolve_deterministic(deterministic))
    return out


def _cu_seqlens_values_readable(cu_seqlens):
    """False where the values cannot be read: while torch.compile traces (fake tensors), while a
    CUDA graph is captured (a device-to-host copy is not allowed there), and on meta tensors."""
    if torch.compiler.is_compiling() or cu_seqlens.device.type == "meta":
        return False
    return not (cu_seqlens.is_cuda and torch.cuda.is_current_stream_capturing())


def _check_cu_seqlens_values(cu_seqlens, total, max_seqlen, name):
    """Raises a ValueError naming the first bad entry of cu_seqlens. Reads the values on the host:
    on CUDA that is one small device-to-host copy, which synchronises with the stream."""
    c = cu_seqlens.tolist()
    if c[0] != 0:
        raise ValueError(f"{name}: cu_seqlens must start at 0, got cu_seqlens[0]={c[0]}")
    for b in range(len(c) - 1):
        if c[b + 1] < c[b]:
            raise ValueError(f"{name}: cu_seqlens must be non-decreasing, got cu_seqlens[{b}]={c[b]} then "
                             f"cu_seqlens[{b + 1}]={c[b + 1]}")
        if c[b + 1] - c[b] > max_seqlen:
            raise ValueError(f"{name}: cu_seqlens gives sequence {b} (cu_seqlens[{b + 1}] - cu_seqlens[{b}]) "
                             f"{c[b + 1] - c[b]} tokens, more than max_seqlen={max_seqlen}")
    if c[-1] != total:
        raise ValueError(f"{name}: cu_seqlens must end at the number of tokens {total}, got "
                         f"cu_seqlens[{len(c) - 1}]={c[-1]}")


def attention_varlen(q, k, v, cu_seqlens, max_seqlen, *, dropout_p=0.0, scale=None, deterministic=None,
                     check_cu_seqlens=True):
    """Fused self-attention on packed variable-length sequences (no padding read or computed).

    Args:
        q, k, v: (total_tokens, heads, head_dim); sequence b holds tokens
            cu_seqlens[b] .. cu_seqlens[b+1]-1 and attends only to itself.
        cu_seqlens: int32 (batch + 1,) non-decreasing offsets from 0 to total_tokens, on q's
            device.
        max_seqlen: int >= the longest sequence (sizes the CUDA grid; keys the dropout mask).
        dropout_p, scale, deterministic: as in `attention`.
        check_cu_seqlens: check the values of cu_seqlens (starts at 0, non-decreasing, no
            sequence longer than max_seqlen, ends at total_tokens) and raise a ValueError naming
            the first bad entry. On CUDA this copies the batch + 1 offsets to the host, which
            synchronises with the current stream. The check is skipped, silently, where values
            cannot be read: under torch.compile and while a CUDA graph is being captured.
            Pass False where the offsets are known to be valid (built by your own code, e.g.
            with `bertfast.model.packing`) and a sync must be avoided. Bad values then still never
            read or write out of bounds: the CPU kernels raise a RuntimeError, and the CUDA
            kernels clamp every sequence to [0, total_tokens) and to max_seqlen, which gives a
            silently wrong result instead of an error.

    Returns (total_tokens, heads, head_dim) in q's dtype. Differentiable once in q, k and v (the
    gradients are not differentiable again).
    """
    name = "attention_varlen"
    q, k, v = _autocast_qkv(q, k, v, name)
    _check_qkv(q, k, v, 3, "(total_tokens, heads, head_dim)", name)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"{name}: q and k must hold the same tokens, got {q.shape[0]} and {k.shape[0]}")
    check_tensor(cu_seqlens, "cu_seqlens", name)
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise TypeError(f"{name}: cu_seqlens must be a 1-D int32 tensor of batch + 1 offsets, got "
                        f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}")
    check_same_device({"q": q, "cu_seqlens": cu_seqlens}, name)
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, torch.SymInt)) or max_seqlen < 1:
        raise ValueError(f"{name}: max_seqlen must be an int >= 1, got {max_seqlen!r}")
    if isinstance(max_seqlen, int):
        check_int(max_seqlen, "max_seqlen", name, minimum=1)
    if check_cu_seqlens and _cu_seqlens_values_readable(cu_seqlens):
        _check_cu_seqlens_values(cu_seqlens, q.shape[0], max_seqlen, name)
    dropout_p = check_dropout_p(dropout_p, name)
    scale = _resolve_scale(scale, q.shape[-1], name)
    seed = seed_for_dropout(dropout_p, q.device)
    out, _ = torch.ops.bertfast.attention_fwd(q, k, v, None, None, cu_seqlens, max_seqlen, seed, dropout_p, scale,
                                              _resolve_deterministic(deterministic))
    return out


def _total_q(q):
    return q.shape[0] * q.shape[1] if q.dim() == 4 else q.shape[0]


@torch.library.register_fake("bertfast::attention_fwd")
def _attention_fwd_fake(q, k, v, key_padding_mask, attn_bias, cu_seqlens, max_seqlen, seed, dropout_p, scale,
                        deterministic):
    check_fake_devices("attention", q=q, k=k, v=v, key_padding_mask=key_padding_mask, attn_bias=attn_bias,
                       cu_seqlens=cu_seqlens, seed=seed)
    torch._check(k.shape == v.shape, lambda: "attention: k and v must have the same shape")
    out = q.new_empty(q.shape)
    lse = q.new_empty((q.shape[-2], _total_q(q)), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("bertfast::attention_bwd")
def _attention_bwd_fake(grad_out, q, k, v, out, lse, key_padding_mask, attn_bias, cu_seqlens, max_seqlen, seed,
                        dropout_p, scale, want_grad_bias, deterministic):
    check_fake_devices("attention backward", q=q, grad_out=grad_out, k=k, v=v, out=out, lse=lse,
                       key_padding_mask=key_padding_mask, attn_bias=attn_bias, cu_seqlens=cu_seqlens, seed=seed)
    if want_grad_bias:
        grad_bias = q.new_empty((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), dtype=torch.float32)
    else:
        grad_bias = q.new_empty((0,), dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_bias


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, attn_bias, cu_seqlens, max_seqlen, seed, dropout_p, scale, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, attn_bias, cu_seqlens, seed)
    ctx.max_seqlen = max_seqlen
    ctx.dropout_p = dropout_p
    ctx.scale = scale
    ctx.deterministic = deterministic
    ctx.want_grad_bias = attn_bias is not None and ctx.needs_input_grad[4]


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, key_padding_mask, attn_bias, cu_seqlens, seed = ctx.saved_tensors
    grad_q, grad_k, grad_v, grad_bias = torch.ops.bertfast.attention_bwd(
        grad_out, q, k, v, out, lse, key_padding_mask, attn_bias, cu_seqlens, ctx.max_seqlen, seed, ctx.dropout_p,
        ctx.scale, ctx.want_grad_bias, ctx.deterministic)
    grad_bias = grad_bias.to(attn_bias.dtype) if ctx.want_grad_bias else None
    return once_differentiable((grad_q, grad_k, grad_v, None, grad_bias, None, None, None, None, None, None),
                               "attention", q, k, v, attn_bias, grad_out)


torch.library.register_autograd("bertfast::attention_fwd", _backward, setup_context=_setup_context)
