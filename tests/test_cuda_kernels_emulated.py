"""bertfast's CUDA kernels, run on the CPU through the emulation in tests/cuda_emu/, against
bertfast.ops.reference in float64.

The unmodified csrc/**/*_kernels.cu files are compiled with g++ against cuda_emu.h (threads of
a block as fibers with real __syncthreads / warp-shuffle / mma.sync semantics), so their index
math, barriers, dropout counters and numerics are checked on a machine without a GPU. Outputs
start as NaN between guard margins and inputs sit between NaN margins (tests/cuda_emu/kernels.py),
so an element not written, a write out of bounds or a read out of bounds fails; UBSan, faults
and launch errors fail the call. Shapes are small: the emulation switches context at every
barrier. See tests/cuda_emu/README.md.
"""
import shutil

import pytest
import torch

from bertfast.ops import reference
from cuda_emu import build
from cuda_emu.kernels import EmulatedKernels, EmulationError
from helpers import assert_lowp_close

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or build.cuda_include_dir() is None,
                                reason="the CUDA emulation needs g++ and the CUDA toolkit's headers")

@pytest.fixture(scope="module")
def emu():
    kernels = EmulatedKernels(build.build_library())
    yield kernels
    kernels.configure()


def grads_of(fn, tensors, grad_out):
    """fn(*tensors) and the gradient of each tensor that is not None."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [None if t is None else t.grad for t in leaves]


def check_close(name, got, ref64, ref_lowp, dtype, floor=None):
    """The low-precision rule (helpers.assert_lowp_close); for float32 a floor of a few ulps times the
    reduction."""
    if dtype == torch.float32:
        err = (got.double() - ref64.double()).abs().max().item()
        allowed = (floor or 1e-5) * max(1.0, ref64.abs().max().item())
        assert not torch.isnan(got).any() and err <= allowed, f"{name}: max error {err:.3e} > {allowed:.3e}"
    else:
        assert_lowp_close(name, got, ref64, ref_lowp, dtype, floor)


# ---------------------------------------------------------------------------------------------
# add_layer_norm

LN_CASES = [  # rows, hidden, act dtype, param dtype, x_bias, dropout p, force the scalar path
    (3, 7, torch.float16, torch.float16, True, 0.0, False),
    (37, 64, torch.bfloat16, torch.bfloat16, True, 0.1, False),
    (37, 64, torch.float16, torch.float32, False, 0.0, True),
    (3, 100, torch.bfloat16, torch.float32, True, 0.2, False),
    (37, 768, torch.float16, torch.float16, True, 0.1, False),
    (1, 768, torch.float32, torch.float32, True, 0.1, False),
    (3, 1000, torch.bfloat16, torch.bfloat16, False, 0.1, False),
    (3, 4096, torch.float16, torch.float32, True, 0.0, False),
    (1, 4096, torch.bfloat16, torch.bfloat16, True, 0.3, True),
    (3, 8192, torch.float32, torch.float32, True, 0.1, False),
    (37, 7, torch.float32, torch.float32, False, 0.5, False),
    (5, 1, torch.bfloat16, torch.float32, True, 0.1, False),
    (2, 8192, torch.float16, torch.float16, True, 0.1, True),
    (3, 4100, torch.bfloat16, torch.bfloat16, True, 0.0, False),
]


def layer_norm_inputs(rows, hidden, dtype, param_dtype, with_x_bias):
    x = torch.randn(rows, hidden).to(dtype)
    residual = (2 * torch.randn(rows, hidden) + 0.5).to(dtype)
    weight = (1 + 0.5 * torch.randn(hidden)).to(param_dtype)
    bias = (0.3 * torch.randn(hidden)).to(param_dtype)
    x_bias = (0.3 * torch.randn(hidden)).to(param_dtype) if with_x_bias else None
    return x, residual, weight, bias, x_bias


@pytest.mark.parametrize("rows,hidden,dtype,param_dtype,with_x_bias,p,scalar", LN_CASES)
def test_add_layer_norm(emu, rows, hidden, dtype, param_dtype, with_x_bias, p, scalar):
    torch.manual_seed(rows * 1000 + hidden)
    eps = 1e-5
    x, residual, weight, bias, x_bias = layer_norm_inputs(rows, hidden, dtype, param_dtype, with_x_bias)
    grad_out = torch.randn(rows, hidden).to(dtype)
    seed = 12345 + hidden
    aligned = False if scalar else None
    out, mean, rstd = emu.add_layer_norm_fwd(x, residual, weight, bias, x_bias, eps, seed, p, aligned=aligned)
    grads = emu.add_layer_norm_bwd(grad_out, x, residual, weight, x_bias, mean, rstd, seed, p,
                                   want_grad_x_bias=with_x_bias, aligned=aligned)
    grad_residual, grad_x, grad_weight, grad_bias, grad_x_bias = grads

    keep = reference.dropout_keep_mask(seed, (rows, hidden), p) if p > 0 else None

    def ref_fn(x_, r_, w_, b_, xb_):
        return reference.add_layer_norm(x_, r_, w_, b_, eps, x_bias=xb_, dropout_p=p, keep_mask=keep)

    inputs = (x, residual, weight, bias, x_bias)
    out64, g64 = grads_of(ref_fn, [None if t is None else t.double() for t in inputs], grad_out.double())
    if dtype == torch.float32:
        out_lp, glp = None, [None] * 5
    else:  # the reference in the activation dtype (parameters upcast like the kernels' fp32 math)
        out_lp, glp = grads_of(ref_fn, list(inputs), grad_out)

    # the row statistics of h = residual + dropout(x + x_bias), from the float64 h
    h = residual.double() + (x.double() + (x_bias.double() if with_x_bias else 0)) * (
        keep.double() / (1 - p) if p > 0 else 1)
    var, mean64 = torch.var_mean(h, dim=-1, unbiased=False)
    assert torch.allclose(mean.double(), mean64, rtol=1e-5, atol=1e-5 * h.abs().max().item())
    assert torch.allclose(rstd.double(), (var + eps).rsqrt(), rtol=1e-4)

    check_close("out", out, out64, out_lp, dtype)
    floor_rows = 1e-5 * max(4.0, rows**0.5)  # parameter gradients sum over the rows
    check_close("grad_residual", grad_residual, g64[1], glp[1], dtype, 1e-5 * max(4.0, hidden**0.5))
    if p > 0:
        check_close("grad_x", grad_x, g64[0], glp[0], dtype, 1e-5 * max(4.0, hidden**0.5))
        # a dropped element has exactly zero gradient
        assert (grad_x[~keep] == 0).all()
    for name, got, ref64_, ref_lp in (("grad_weight", grad_weight, g64[2], glp[2]),
                                      ("grad_bias", grad_bias, g64[3], glp[3]),
                                      ("grad_x_bias", grad_x_bias, g64[4], glp[4])):
        if ref64_ is not None:
            check_close(name, got, ref64_, ref_lp, param_dtype, floor_rows if param_dtype == torch.float32 else None)


@pytest.mark.parametrize("sm_count", [1, 64])
def test_add_layer_norm_backward_grid_sizes(emu, sm_count):
    """The backward's grid is 2 * multiprocessors blocks at most: with 1 each block loops over
    many row groups, with 64 every row group has its own block."""
    torch.manual_seed(sm_count)
    rows, hidden, dtype = 77, 96, torch.bfloat16
    x, residual, weight, bias, x_bias = layer_norm_inputs(rows, hidden, dtype, torch.float32, True)
    grad_out = torch.randn(rows, hidden).to(dtype)
    emu.configure(sm_count=sm_count)
    try:
        out, mean, rstd = emu.add_layer_norm_fwd(x, residual, weight, bias, x_bias, 1e-5)
        got = emu.add_layer_norm_bwd(grad_out, x, residual, weight, x_bias, mean, rstd, want_grad_x_bias=True)
    finally:
        emu.configure()
    inputs = [t.double() for t in (x, residual, weight, bias, x_bias)]
    _, g64 = grads_of(lambda *t: reference.add_layer_norm(*t[:4], 1e-5, x_bias=t[4]), inputs, grad_out.double())
    for name, g, r in (("grad_weight", got[2], g64[2]), ("grad_bias", got[3], g64[3]), ("grad_x_bias", got[4], g64[4])):
        check_close(name, g, r, None, torch.float32, 1e-5 * rows**0.5)


def assert_schedule_independent(emu, name, run):
    """run() gives the same bits whether warps (and lanes) run first-to-last or last-to-first
    between barriers; a difference means a missing barrier (a race on shared memory)."""
    emu.configure(reverse_schedule=False)
    forward = run()
    emu.configure(reverse_schedule=True)
    try:
        backward = run()
    finally:
        emu.configure(reverse_schedule=False)
    for i, (a, b) in enumerate(zip(forward, backward)):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}[{i}]: {m}")


@pytest.mark.parametrize("rows,hidden,dtype", [(37, 1000, torch.bfloat16), (3, 8192, torch.float32),
                                               (37, 64, torch.float16)])
def test_add_layer_norm_has_no_race(emu, rows, hidden, dtype):
    torch.manual_seed(hidden)
    x, residual, weight, bias, x_bias = layer_norm_inputs(rows, hidden, dtype, dtype, True)
    grad_out = torch.randn(rows, hidden).to(dtype)

    def run():
        out, mean, rstd = emu.add_layer_norm_fwd(x, residual, weight, bias, x_bias, 1e-5, 7, 0.1)
        grads = emu.add_layer_norm_bwd(grad_out, x, residual, weight, x_bias, mean, rstd, 7, 0.1, True)
        return (out, mean, rstd, *grads)

    assert_schedule_independent(emu, "add_layer_norm", run)


# ---------------------------------------------------------------------------------------------
# softmax_cross_entropy

def cross_entropy_inputs(rows, classes, dtype, offset=0):
    """Logits (a view `offset` elements into its buffer, so rows start off a 16-byte boundary)
    and labels with some rows ignored."""
    buffer = (3 * torch.randn(rows * classes + offset)).to(dtype)
    logits = buffer[offset:].view(rows, classes)
    labels = torch.randint(0, classes, (rows,))
    labels[torch.rand(rows) < 0.25] = -100
    labels[0] = classes - 1
    return logits, labels


def cross_entropy_reference(logits, labels, smoothing, grad_loss):
    """Per-row loss, log-sum-exp (0 where ignored) and d(sum grad_loss * loss)/dlogits."""
    x = logits.detach().clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x, labels, ignore_index=-100, label_smoothing=smoothing,
                                             reduction="none")
    (loss * grad_loss.to(loss.dtype)).sum().backward()
    lse = torch.where(labels == -100, 0.0, torch.logsumexp(x.detach(), dim=-1))
    return loss.detach(), lse, x.grad


CE_CASES = [  # rows, classes, dtype, label smoothing, offset of the logits in their buffer
    (5, 2, torch.float32, 0.0, 0),
    (5, 9, torch.bfloat16, 0.1, 1),
    (9, 9, torch.float16, 0.0, 3),
    (5, 1000, torch.float16, 0.1, 0),
    (3, 1000, torch.float32, 0.0, 1),
    (3, 1025, torch.bfloat16, 0.0, 5),
    (3, 30522, torch.bfloat16, 0.1, 0),
    (2, 30522, torch.float16, 0.0, 1),
    (2, 30522, torch.float32, 0.1, 3),
    (4, 1, torch.float16, 0.1, 1),
]


@pytest.mark.parametrize("rows,classes,dtype,smoothing,offset", CE_CASES)
def test_softmax_cross_entropy(emu, rows, classes, dtype, smoothing, offset):
    torch.manual_seed(rows * 100 + classes)
    logits, labels = cross_entropy_inputs(rows, classes, dtype, offset)
    grad_loss = torch.randn(rows)
    loss64, lse64, grad64 = cross_entropy_reference(logits.double(), labels, smoothing, grad_loss.double())
    if dtype == torch.float32:
        loss_lp = grad_lp = None
    else:
        loss_lp, _, grad_lp = cross_entropy_reference(logits, labels, smoothing, grad_loss)
    floor = 1e-5 * max(4.0, classes**0.5)

    loss, lse, _ = emu.cross_entropy(0, logits, labels, label_smoothing=smoothing)
    # loss and lse are float32 sums over the row, from the same inputs: the float32 rule applies
    check_close("loss", loss, loss64, None, torch.float32, floor)
    check_close("lse", lse, lse64, None, torch.float32, floor)

    # backward into a new tensor, at a different offset from a 16-byte boundary (the scalar path)
    grad_buffer = torch.full((rows * classes + 1,), float("nan"), dtype=dtype)
    _, _, grad = emu.cross_entropy(1, logits, labels, label_smoothing=smoothing, lse=lse, grad_loss=grad_loss,
                                   grad_out=grad_buffer[1:].view(rows, classes))
    check_close("grad (backward)", grad, grad64, grad_lp, dtype)
    # backward in place over a copy of the logits (the vector path)
    in_place = logits.clone()
    emu.cross_entropy(1, in_place, labels, label_smoothing=smoothing, lse=lse, grad_loss=grad_loss, grad_out=in_place)
    check_close("grad (backward, in place)", in_place, grad64, grad_lp, dtype)

    # forward + backward in place: the gradient of sum(loss) over the logits
    ones = torch.ones(rows)
    _, _, grad1_64 = cross_entropy_reference(logits.double(), labels, smoothing, ones.double())
    grad1_lp = None if dtype == torch.float32 else cross_entropy_reference(logits, labels, smoothing, ones)[2]
    fused = logits.clone()
    loss2, lse2, _ = emu.cross_entropy(2, fused, labels, label_smoothing=smoothing, grad_out=fused)
    check_close("loss (fwd_bwd)", loss2, loss64, None, torch.float32, floor)
    check_close("lse (fwd_bwd)", lse2, lse64, None, torch.float32, floor)
    check_close("grad (fwd_bwd)", fused, grad1_64, grad1_lp, dtype)
    ignored = labels == -100
    assert (loss[ignored] == 0).all() and (fused[ignored] == 0).all() and (grad[ignored] == 0).all()


@pytest.mark.parametrize("rows,classes,dtype", [(9, 1000, torch.bfloat16), (2, 30522, torch.float16)])
def test_softmax_cross_entropy_has_no_race(emu, rows, classes, dtype):
    torch.manual_seed(classes)
    logits, labels = cross_entropy_inputs(rows, classes, dtype, 1)

    def run():
        fused = logits.clone()
        loss, lse, _ = emu.cross_entropy(2, fused, labels, label_smoothing=0.1, grad_out=fused)
        return loss, lse, fused

    assert_schedule_independent(emu, "softmax_cross_entropy", run)


# ---------------------------------------------------------------------------------------------
# attention (fp16 / bf16 only on CUDA)

def attention_reference(inputs, grad_out, **kwargs):
    """reference.attention (or attention_varlen with cu_seqlens) and the gradients of q, k, v
    and the bias, evaluated in the inputs' dtype."""
    q, k, v, bias = inputs
    cu = kwargs.pop("cu_seqlens", None)
    max_seqlen = kwargs.pop("max_seqlen", None)

    def fn(q_, k_, v_, bias_):
        if cu is not None:
            return reference.attention_varlen(q_, k_, v_, cu, max_seqlen, **kwargs)
        return reference.attention(q_, k_, v_, attn_bias=bias_, **kwargs)

    return grads_of(fn, [q, k, v, bias], grad_out)


def check_lse(lse, q, k, scale, mask, bias, cu_seqlens=None):
    """lse (heads, total_q) against the float64 log-sum-exp of the scaled, biased, masked scores;
    +inf exactly where a query has no key to attend."""
    if cu_seqlens is not None:
        rows = []
        bounds = cu_seqlens.tolist()
        for s, e in zip(bounds[:-1], bounds[1:]):
            scores = torch.einsum("ihd,jhd->hij", q[s:e].double(), k[s:e].double()) * scale
            rows.append(torch.logsumexp(scores, dim=-1))
        ref = torch.cat(rows, dim=1)
    else:
        scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * scale
        if bias is not None:
            scores = scores + bias.double()
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        ref = torch.logsumexp(scores, dim=-1).permute(1, 0, 2).reshape(q.shape[2], -1)
    ref = torch.where(torch.isinf(ref), float("inf"), ref)  # no key: the kernels store +inf
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isinf(lse), ~finite), "lse: +inf rows differ from the rows with no attendable key"
    err = (lse.double() - ref)[finite].abs().max().item() if finite.any() else 0.0
    assert err <= 1e-4 * max(1.0, ref[finite].abs().max().item()), f"lse: max error {err:.3e}"


def check_attention_results(got, ref64, ref_lp, dtype):
    (out, grads), (out64, g64), (out_lp, glp) = got, ref64, ref_lp
    assert_lowp_close("out", out, out64, out_lp, dtype)
    for name, g, r64, rlp in zip(("grad_q", "grad_k", "grad_v", "grad_bias"), grads, g64, glp):
        if r64 is not None:
            assert_lowp_close(name, g, r64, rlp, dtype)


ATTENTION_CASES = [  # batch, seq_q, seq_k, dim, dtype, key mask, bias, dropout p
    (1, 1, 1, 32, torch.bfloat16, None, None, 0.0),
    (2, 7, 7, 64, torch.float16, "padding", None, 0.0),
    (2, 70, 70, 32, torch.bfloat16, "padding", "float32-broadcast", 0.0),
    (1, 129, 129, 64, torch.float16, None, None, 0.1),
    (2, 70, 33, 64, torch.bfloat16, "one-empty", "same-dtype", 0.2),
    (1, 7, 129, 32, torch.float16, "padding", "same-dtype", 0.1),
    (2, 33, 70, 8, torch.float16, "padding", "float32-broadcast", 0.0),
    (1, 70, 70, 40, torch.bfloat16, None, "same-dtype", 0.0),
    (1, 65, 65, 72, torch.float16, "padding", None, 0.2),
    (1, 100, 100, 128, torch.bfloat16, "padding", "float32-broadcast", 0.1),
    (2, 70, 129, 64, torch.bfloat16, "first-tile-masked", "float32-broadcast", 0.1),
    (1, 70, 70, 32, torch.float16, None, "causal-inf", 0.0),
    (2, 1, 200, 64, torch.bfloat16, "padding", None, 0.1),
]


@pytest.mark.parametrize("batch,seq_q,seq_k,dim,dtype,mask_kind,bias_kind,p", ATTENTION_CASES)
def test_attention_padded(emu, batch, seq_q, seq_k, dim, dtype, mask_kind, bias_kind, p):
    torch.manual_seed(seq_q * 1000 + seq_k + dim)
    heads, scale = 2, dim**-0.5
    q = torch.randn(batch, seq_q, heads, dim).to(dtype)
    k, v = (torch.randn(batch, seq_k, heads, dim).to(dtype) for _ in range(2))
    grad_out = torch.randn(batch, seq_q, heads, dim).to(dtype)
    mask = None
    if mask_kind is not None:
        lengths = torch.randint(1, seq_k + 1, (batch,))
        lengths[0] = seq_k
        mask = torch.arange(seq_k)[None, :] < lengths[:, None]
        if mask_kind == "one-empty":
            mask[-1] = False
        if mask_kind == "first-tile-masked":  # keys 0..63 never attended: the kernels skip that tile
            mask = torch.rand(batch, seq_k) < 0.7
            mask[:, :64] = False
    bias = None
    if bias_kind == "float32-broadcast":  # one (heads, seq_q, seq_k) bias for every sequence: batch stride 0
        bias = torch.randn(1, heads, seq_q, seq_k).expand(batch, -1, -1, -1)
    elif bias_kind == "same-dtype":
        bias = torch.randn(batch, heads, seq_q, seq_k).to(dtype)
    elif bias_kind == "causal-inf":  # -inf scores through the bias, not the mask
        bias = torch.zeros(batch, heads, seq_q, seq_k).masked_fill(
            torch.ones(seq_q, seq_k, dtype=torch.bool).triu(1), float("-inf"))
    seed = 777 + seq_q
    keep = reference.dropout_keep_mask(seed, (batch, heads, seq_q, seq_k), p) if p > 0 else None

    out, lse = emu.attention_fwd(q, k, v, key_mask=mask, bias=bias, scale=scale, seed=seed, p=p)
    grads = emu.attention_bwd(grad_out, q, k, v, out, lse, key_mask=mask, bias=bias, want_grad_bias=bias is not None,
                              scale=scale, seed=seed, p=p)
    check_lse(lse, q, k, scale, mask, bias)

    kwargs = dict(key_padding_mask=mask, dropout_p=p, scale=scale, keep_mask=keep)
    full_bias = None if bias is None else bias.contiguous()
    ref64 = attention_reference([t.double() if t is not None else None for t in (q, k, v, full_bias)],
                                grad_out.double(), **kwargs)
    ref_lp = attention_reference([q, k, v, full_bias], grad_out, **kwargs)
    check_attention_results((out, grads), ref64, ref_lp, dtype)
    if mask_kind == "one-empty":  # a sequence with no key to attend: zero output and gradients
        assert out[-1].abs().max().item() == 0 and grads[0][-1].abs().max().item() == 0
        assert grads[1][-1].abs().max().item() == 0 and grads[2][-1].abs().max().item() == 0


VARLEN_CASES = [  # sequence lengths, max_seqlen (0: the longest), dim, dtype, dropout p
    ([7, 1, 70], 0, 64, torch.bfloat16, 0.0),
    ([5, 0, 66], 80, 32, torch.float16, 0.2),
]


@pytest.mark.parametrize("lengths,max_seqlen,dim,dtype,p", VARLEN_CASES)
def test_attention_varlen(emu, lengths, max_seqlen, dim, dtype, p):
    torch.manual_seed(sum(lengths) + dim)
    heads, scale = 2, dim**-0.5
    max_seqlen = max_seqlen or max(lengths)
    cu_seqlens = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    total = int(cu_seqlens[-1])
    q, k, v, grad_out = (torch.randn(total, heads, dim).to(dtype) for _ in range(4))
    seed = 4242
    keep = reference.dropout_keep_mask(seed, (len(lengths), heads, max_seqlen, max_seqlen), p) if p > 0 else None

    common = dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, scale=scale, seed=seed, p=p)
    out, lse = emu.attention_fwd(q, k, v, **common)
    grads = emu.attention_bwd(grad_out, q, k, v, out, lse, **common)
    check_lse(lse, q, k, scale, None, None, cu_seqlens)

    kwargs = dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, dropout_p=p, scale=scale, keep_mask=keep)
    ref64 = attention_reference([q.double(), k.double(), v.double(), None], grad_out.double(), **kwargs)
    ref_lp = attention_reference([q, k, v, None], grad_out, **kwargs)
    check_attention_results((out, grads), ref64, ref_lp, dtype)


@pytest.mark.parametrize("varlen", [False, True])
def test_attention_packed_qkv(emu, varlen):
    """q, k, v as strided views of one (..., 3, heads, dim) projection output, as BERT makes them."""
    torch.manual_seed(5 + varlen)
    heads, dim, dtype, scale, p, seed = 3, 64, torch.bfloat16, 0.125, 0.1, 99
    if varlen:
        lengths, max_seqlen = [40, 3], 40
        cu_seqlens = torch.tensor([0, 40, 43], dtype=torch.int32)
        qkv = torch.randn(43, 3, heads, dim).to(dtype)
        q, k, v = qkv.unbind(1)
        keep_shape = (2, heads, max_seqlen, max_seqlen)
        common = dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        ref_kwargs = dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        mask = None
    else:
        qkv = torch.randn(2, 40, 3, heads, dim).to(dtype)
        q, k, v = qkv.unbind(2)
        keep_shape = (2, heads, 40, 40)
        mask = torch.ones(2, 40, dtype=torch.bool)
        mask[1, 29:] = False
        common = dict(key_mask=mask)
        ref_kwargs = dict(key_padding_mask=mask)
    assert q.stride(-3 if not varlen else 0) == 3 * heads * dim  # strided, not contiguous
    grad_out = torch.randn(q.shape).to(dtype)
    keep = reference.dropout_keep_mask(seed, keep_shape, p)
    out, lse = emu.attention_fwd(q, k, v, scale=scale, seed=seed, p=p, **common)
    grads = emu.attention_bwd(grad_out, q, k, v, out, lse, scale=scale, seed=seed, p=p, **common)
    ref_kwargs.update(dropout_p=p, scale=scale, keep_mask=keep)
    ref64 = attention_reference([q.double(), k.double(), v.double(), None], grad_out.double(), **ref_kwargs)
    ref_lp = attention_reference([q, k, v, None], grad_out, **ref_kwargs)
    check_attention_results((out, grads), ref64, ref_lp, dtype)


@pytest.mark.parametrize("varlen", [False, True])
def test_attention_has_no_race(emu, varlen):
    torch.manual_seed(17)
    heads, dim, dtype = 2, 32, torch.float16
    if varlen:
        cu_seqlens = torch.tensor([0, 70, 75], dtype=torch.int32)
        q, k, v, grad_out = (torch.randn(75, heads, dim).to(dtype) for _ in range(4))
        common = dict(cu_seqlens=cu_seqlens, max_seqlen=70)
    else:
        q, k, v, grad_out = (torch.randn(2, 70, heads, dim).to(dtype) for _ in range(4))
        mask = torch.ones(2, 70, dtype=torch.bool)
        mask[1, 50:] = False
        common = dict(key_mask=mask, bias=torch.randn(2, heads, 70, 70), want_grad_bias=True)

    def run():
        fwd_common = {key: val for key, val in common.items() if key != "want_grad_bias"}
        out, lse = emu.attention_fwd(q, k, v, scale=0.2, seed=3, p=0.1, **fwd_common)
        return (out, lse, *emu.attention_bwd(grad_out, q, k, v, out, lse, scale=0.2, seed=3, p=0.1, **common))

    assert_schedule_independent(emu, "attention", run)


def test_softmax_cross_entropy_minus_inf_logits(emu):
    """A vocabulary masked with -inf logits: those classes get probability and gradient 0."""
    torch.manual_seed(0)
    logits, labels = cross_entropy_inputs(6, 1000, torch.bfloat16)
    logits[:, 500:] = float("-inf")
    logits[1] = float("-inf")
    logits[1, 3] = 0.5
    labels = labels.clamp(max=499).masked_fill(labels < 0, -100)
    labels[1] = 3
    loss64, lse64, grad64 = cross_entropy_reference(logits.double(), labels, 0.0, torch.ones(6).double())
    fused = logits.clone()
    loss, lse, _ = emu.cross_entropy(2, fused, labels, grad_out=fused)
    check_close("loss", loss, loss64, None, torch.float32)
    check_close("lse", lse, lse64, None, torch.float32)
    assert_lowp_close("grad", fused, grad64, cross_entropy_reference(logits, labels, 0.0, torch.ones(6))[2],
                      torch.bfloat16)


@pytest.mark.parametrize("classes", [40, 3000])
def test_softmax_cross_entropy_plus_inf_logit_gives_nan_rows(emu, classes):
    """A +inf logit leaves the row's softmax undefined: loss, lse and the whole gradient row are
    NaN, as torch's log_softmax gives (not zeros beside one NaN); the other rows are untouched."""
    torch.manual_seed(classes)
    logits, labels = cross_entropy_inputs(3, classes, torch.float32)
    labels = labels.clamp(min=0)
    logits[1, classes // 2] = float("inf")
    loss64, lse64, grad64 = cross_entropy_reference(logits.double(), labels, 0.0, torch.ones(3).double())
    for mode in (0, 2):
        fused = logits.clone()
        loss, lse, _ = emu.cross_entropy(mode, fused, labels, grad_out=fused if mode == 2 else None)
        assert loss[1].isnan() and lse[1].isnan()
        check_close("loss", loss[[0, 2]], loss64[[0, 2]], None, torch.float32)
        if mode == 2:
            assert fused[1].isnan().all()
            assert torch.isfinite(fused[[0, 2]]).all()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("classes", [40, 3000])
def test_softmax_cross_entropy_large_offset_keeps_its_digits(emu, classes, smoothing):
    """float32 logits all near 1e4: the loss is taken relative to the row max (and the mean
    logit relative to one of the row's values), so it is as exact as torch's float32
    F.cross_entropy (lse - x_label would lose about 3 digits)."""
    torch.manual_seed(classes)
    logits = torch.randn(4, classes) + 1e4
    labels = torch.randint(0, classes, (4,))
    loss64 = torch.nn.functional.cross_entropy(logits.double(), labels, label_smoothing=smoothing, reduction="none")
    torch_err = (torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="none")
                 .double() - loss64).abs().max().item()
    loss, _, _ = emu.cross_entropy(0, logits, labels, label_smoothing=smoothing)
    # lse - x_label used to give ~5e-4 here. What is left (~3e-5 under the emulator, which
    # does not contract x * log2(e) - m into one fma as nvcc does) is the rounding of each
    # term's x * log2(e) near 1.4e4.
    assert (loss.double() - loss64).abs().max().item() <= 2 * torch_err + 1e-4


def test_softmax_cross_entropy_bad_label_is_a_device_assert(emu):
    logits, labels = cross_entropy_inputs(4, 9, torch.float32)
    labels[2] = 9
    with pytest.raises(EmulationError, match=r"device-side assert.*outside \[0, classes\)"):
        emu.cross_entropy(0, logits, labels)


def test_emulation_faults_on_a_misaligned_vector_load(emu):
    """The harness itself: a 16-byte load off a 16-byte boundary fails the launch (as the GPU's
    "misaligned address"), here the vector path forced on rows of 100 fp16 elements."""
    x = torch.randn(3, 100).half()
    w = torch.randn(100).half()
    with pytest.raises(EmulationError, match="misaligned"):
        emu.add_layer_norm_fwd(x, x, w, w, None, 1e-5, aligned=True)


# ---------------------------------------------------------------------------------------------
# the emulation itself: the mistakes it must catch (tests/cuda_emu/selftest_kernels.cu)

@pytest.mark.parametrize("which,message", [
    (0, "deadlock"),
    (1, "lanes exited"),
    (3, "illegal memory access"),
    (4, r"__launch_bounds__\(64\)"),
])
def test_emulation_catches_a_broken_kernel(emu, which, message):
    with pytest.raises(EmulationError, match=message):
        emu.selftest(which)


def test_emulation_exposes_a_missing_barrier(emu):
    with pytest.raises(AssertionError, match="selftest"):
        assert_schedule_independent(emu, "selftest", lambda: (emu.selftest(2),))


def test_emulation_poisons_shared_memory(emu):
    assert emu.selftest(5)[:32].isnan().all()


def test_attention_single_key_with_dropout(emu):
    """A sequence with one attendable key: softmax is 1 there, so the exact grad_q and grad_k are
    0. With dropout the backward's D = rowsum(dO * O) uses the bf16-rounded output (as in
    FlashAttention-2), so the kernels give the rounding of O instead, which the rule against
    torch in bf16 (exactly 0 here) does not allow for. Checked instead: the float64 backward
    with that same D, which the kernels must match closely."""
    torch.manual_seed(1)
    heads, dim, dtype, p, seed, scale = 2, 80, torch.bfloat16, 0.1, 31, 80**-0.5
    q = torch.randn(1, 72, heads, dim).to(dtype)
    k, v = (torch.randn(1, 123, heads, dim).to(dtype) for _ in range(2))
    grad_out = torch.randn(q.shape).to(dtype)
    mask = torch.zeros(1, 123, dtype=torch.bool)
    mask[0, 5] = True
    keep = reference.dropout_keep_mask(seed, (1, heads, 72, 123), p)
    out, lse = emu.attention_fwd(q, k, v, key_mask=mask, scale=scale, seed=seed, p=p)
    grad_q, grad_k, grad_v, _ = emu.attention_bwd(grad_out, q, k, v, out, lse, key_mask=mask, scale=scale, seed=seed,
                                                  p=p)
    for h in range(heads):
        qd, kd, vd, dod = (t.double()[0, :, h] for t in (q, k, v, grad_out))
        m = keep[0, h, :, 5:6].double() / (1 - p)  # P = 1 on key 5
        d_rounded = (dod * out.double()[0, :, h]).sum(-1, keepdim=True)
        ds = (dod @ vd[5:6].T) * m - d_rounded
        torch.testing.assert_close(grad_k.double()[0, 5, h], (ds.T @ qd)[0] * scale, rtol=0, atol=2e-3)
        torch.testing.assert_close(grad_q.double()[0, :, h], (ds @ kd[5:6]) * scale, rtol=0, atol=2e-3)
        # grad_v = sum of dropped probabilities (1/(1-p), rounded to bf16 for the MMA) times dO
        torch.testing.assert_close(grad_v.double()[0, 5, h], (m.T @ dod)[0], rtol=1e-2, atol=1e-2)
    assert grad_k[0, :5].abs().max() == 0 and grad_k[0, 6:].abs().max() == 0
