"""bertfast.ops.attention / attention_varlen against bertfast.ops.reference evaluated in float64."""
import importlib

import pytest
import torch

from bertfast.ops import reference
from bertfast.ops import attention, attention_varlen, set_deterministic

from helpers import DEVICES, assert_lowp_close, requires_cuda, seed_that_op_will_draw

FLOAT32_FLOOR = 1e-5  # float32 results are held to the floor alone, tighter than helpers' default


def work_dtype(device):
    """float32 on CPU; the CUDA kernels take float16/bfloat16 only."""
    return torch.float32 if device == "cpu" else torch.bfloat16


def lowp_dtypes(device):
    return [torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


def assert_close_rule(name, fused, ref64, ref_lowp, dtype):
    """helpers.assert_lowp_close (the low-precision rule) with attention's float32 floor; for
    float32, ref_lowp is None and the floor alone bounds the error."""
    assert_lowp_close(name, fused, ref64, ref_lowp, dtype, FLOAT32_FLOOR if dtype == torch.float32 else None)


def rand(*shape, device="cpu"):
    return torch.randn(*shape, dtype=torch.float64, device=device)


def run_with_grads(fn, inputs, grad):
    """fn(*inputs) and the gradients of every input that requires grad (None otherwise)."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return out.detach(), [t.grad if t is not None and t.requires_grad else None for t in leaves]


def check_attention(device, dtype, batch, seq_q, seq_k, heads, dim, mask_kind=None, bias_shape=None,
                    bias_neg_inf=False):
    q, k, v = rand(batch, seq_q, heads, dim, device=device), rand(batch, seq_k, heads, dim, device=device), \
        rand(batch, seq_k, heads, dim, device=device)
    mask = None
    if mask_kind == "padding":
        lengths = torch.randint(1, seq_k + 1, (batch,))
        mask = (torch.arange(seq_k)[None, :] < lengths[:, None]).to(device)
    elif mask_kind == "random":
        mask = (torch.rand(batch, seq_k) > 0.3).to(device)
    if mask is not None and batch > 1:
        mask[1] = False  # a sequence with no attendable key: its rows must be 0, not NaN
    bias = None
    if bias_shape is not None:
        bias = rand(*bias_shape, device=device)
        if bias_neg_inf:
            bias = bias.masked_fill(torch.rand(bias.shape, device=device) < 0.3, float("-inf"))
            bias[..., 0, :] = float("-inf")  # a fully masked query row
    grad = rand(batch, seq_q, heads, dim, device=device)

    def fused(q, k, v, bias):
        return attention(q, k, v, key_padding_mask=mask, attn_bias=bias)

    def ref(q, k, v, bias):
        return reference.attention(q, k, v, key_padding_mask=mask, attn_bias=bias)

    want_bias_grad = bias is not None and not bias_neg_inf
    inputs64 = [t.requires_grad_() for t in (q, k, v)] + [bias.requires_grad_(want_bias_grad) if bias is not None
                                                           else None]
    out64, grads64 = run_with_grads(ref, inputs64, grad)
    cast = [t.detach().to(dtype).requires_grad_(t.requires_grad) if t is not None else None for t in inputs64]
    if bias is not None and dtype != torch.float32:
        cast[3] = bias.detach().float().requires_grad_(want_bias_grad)  # float32 bias with low-precision q
    out, grads = run_with_grads(fused, cast, grad)
    out_lp, grads_lp = (None, [None] * 4)
    if dtype != torch.float32:
        out_lp, grads_lp = run_with_grads(ref, cast, grad)
    assert_close_rule("out", out, out64, out_lp, dtype)
    for name, g, g64, glp in zip(("dq", "dk", "dv", "dbias"), grads, grads64, grads_lp):
        if g64 is None:
            continue
        assert g is not None, f"{name}: no gradient"
        assert_close_rule(name, g, g64, glp, dtype)
    if mask is not None and batch > 1:
        assert out[1].abs().max().item() == 0.0 and grads[0][1].abs().max().item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seq", [1, 7, 97, 128, 129])
@pytest.mark.parametrize("batch,dim", [(1, 32), (3, 64)])
@pytest.mark.parametrize("mask_kind", [None, "padding"])
def test_matches_reference(device, seq, batch, dim, mask_kind):
    torch.manual_seed(seq * 10 + batch)
    check_attention(device, work_dtype(device), batch, seq, seq, 2, dim, mask_kind)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [32, 64])
def test_long_sequence_513(device, dim):
    torch.manual_seed(dim)
    check_attention(device, work_dtype(device), 1, 513, 513, 1, dim, "padding")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [8, 40, 72, 128])
def test_other_head_dims_and_cross_lengths(device, dim):
    torch.manual_seed(dim)
    check_attention(device, work_dtype(device), 2, 70, 33, 3, dim, "random")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias_shape", [(3, 2, 97, 97), (1, 1, 97, 97), (3, 1, 1, 97), (97,)])
def test_arbitrary_bias(device, bias_shape):
    torch.manual_seed(len(bias_shape))
    check_attention(device, work_dtype(device), 3, 97, 97, 2, 32, "padding", bias_shape)


@pytest.mark.parametrize("device", DEVICES)
def test_bias_with_neg_inf_and_fully_masked_rows(device):
    torch.manual_seed(5)
    check_attention(device, work_dtype(device), 3, 40, 40, 2, 32, "random", (3, 2, 40, 40), bias_neg_inf=True)


@pytest.mark.parametrize("device", DEVICES)
def test_fully_masked_rows_give_zeros(device):
    q, k, v = [torch.randn(2, 9, 2, 32, device=device, dtype=work_dtype(device), requires_grad=True)
               for _ in range(3)]
    mask = torch.zeros(2, 9, dtype=torch.bool, device=device)
    mask[0, :4] = True
    out = attention(q, k, v, key_padding_mask=mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert out[1].abs().max() == 0 and q.grad[1].abs().max() == 0 and k.grad[1].abs().max() == 0
    assert k.grad[0, 4:].abs().max() == 0 and v.grad[0, 4:].abs().max() == 0  # masked keys


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision(device):
    for dtype in lowp_dtypes(device):
        torch.manual_seed(1)
        check_attention(device, dtype, 3, 97, 97, 2, 64, "padding")
        check_attention(device, dtype, 2, 65, 65, 2, 32, None, (2, 1, 65, 65))


def pack_padded(x, mask):
    return x[mask]


def make_varlen(lengths, heads, dim, device, dtype=torch.float64):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    total = int(cu[-1])
    q, k, v = [torch.randn(total, heads, dim, dtype=dtype, device=device) for _ in range(3)]
    return q, k, v, cu.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [32, 64])
def test_varlen_matches_reference(device, dim):
    torch.manual_seed(dim)
    lengths = [1, 7, 97, 0, 130, 64]
    q, k, v, cu = make_varlen(lengths, 2, dim, device)
    grad = torch.randn_like(q)
    out64, g64 = run_with_grads(lambda q, k, v: reference.attention_varlen(q, k, v, cu, max(lengths)),
                                [t.requires_grad_() for t in (q, k, v)], grad)
    dtype = work_dtype(device)
    cast = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out, g = run_with_grads(lambda q, k, v: attention_varlen(q, k, v, cu, max(lengths)), cast, grad)
    out_lp, g_lp = None, [None] * 3
    if dtype != torch.float32:
        out_lp, g_lp = run_with_grads(lambda q, k, v: reference.attention_varlen(q, k, v, cu, max(lengths)), cast,
                                      grad)
    assert_close_rule("out", out, out64, out_lp, dtype)
    for name, a, b, c in zip(("dq", "dk", "dv"), g, g64, g_lp):
        assert_close_rule(name, a, b, c, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_matches_padded(device):
    torch.manual_seed(3)
    batch, seq, heads, dim = 4, 50, 2, 64
    lengths = torch.tensor([50, 3, 31, 17])
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).to(device)
    dtype = work_dtype(device)
    q, k, v = [torch.randn(batch, seq, heads, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    out = attention(q, k, v, key_padding_mask=mask)
    grad = torch.randn_like(out)
    (out * mask[:, :, None, None]).backward(grad)
    qp, kp, vp = [t.detach()[mask].requires_grad_() for t in (q, k, v)]
    cu = torch.tensor([0] + torch.cumsum(lengths, 0).tolist(), dtype=torch.int32, device=device)
    out_v = attention_varlen(qp, kp, vp, cu, seq)
    out_v.backward(grad[mask])
    tol = dict(atol=2e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(out_v, out[mask], **tol)
    for a, b in ((qp, q), (kp, k), (vp, v)):
        torch.testing.assert_close(a.grad, b.grad[mask], **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_matches_reference_with_the_exact_mask(device):
    batch, seq_q, seq_k, heads, dim, p = 2, 37, 45, 3, 32, 0.3
    torch.manual_seed(0)
    q, k, v = rand(batch, seq_q, heads, dim), rand(batch, seq_k, heads, dim), rand(batch, seq_k, heads, dim)
    mask = torch.rand(batch, seq_k) > 0.2
    bias = rand(1, heads, seq_q, seq_k)
    grad = rand(batch, seq_q, heads, dim)
    dtype = work_dtype(device)
    seed = seed_that_op_will_draw(11, device)
    cast = [t.to(dtype).to(device).requires_grad_() for t in (q, k, v)] + [bias.float().to(device).requires_grad_()]
    out, g = run_with_grads(
        lambda q, k, v, b: attention(q, k, v, key_padding_mask=mask.to(device), attn_bias=b, dropout_p=p),
        cast, grad.to(device))
    keep = reference.dropout_keep_mask(seed, (batch, heads, seq_q, seq_k), p)

    def ref(q, k, v, b):
        return reference.attention(q, k, v, key_padding_mask=mask.to(q.device), attn_bias=b, dropout_p=p,
                                   keep_mask=keep.to(q.device))

    out64, g64 = run_with_grads(ref, [t.requires_grad_() for t in (q, k, v, bias)], grad)
    out_lp, g_lp = run_with_grads(ref, cast, grad.to(device)) if dtype != torch.float32 else (None, [None] * 4)
    assert_close_rule("out", out.cpu(), out64, None if out_lp is None else out_lp.cpu(), dtype)
    for name, a, b, c in zip(("dq", "dk", "dv", "dbias"), g, g64, g_lp):
        assert_close_rule(name, a.cpu(), b, None if c is None else c.cpu(), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_dropout_matches_padded_mask(device):
    lengths, heads, dim, p = [5, 40, 17], 2, 32, 0.25
    torch.manual_seed(1)
    q, k, v, cu = make_varlen(lengths, heads, dim, "cpu")
    grad = torch.randn_like(q)
    max_len = 40
    dtype = work_dtype(device)
    seed = seed_that_op_will_draw(5, device)
    cast = [t.to(dtype).to(device).requires_grad_() for t in (q, k, v)]
    out, g = run_with_grads(lambda q, k, v: attention_varlen(q, k, v, cu.to(device), max_len, dropout_p=p),
                            cast, grad.to(device))
    keep = reference.dropout_keep_mask(seed, (len(lengths), heads, max_len, max_len), p)

    def ref(q, k, v):
        return reference.attention_varlen(q, k, v, cu, max_len, dropout_p=p, keep_mask=keep.to(q.device))

    out64, g64 = run_with_grads(ref, [t.requires_grad_() for t in (q, k, v)], grad)
    out_lp, g_lp = run_with_grads(ref, cast, grad.to(device)) if dtype != torch.float32 else (None, [None] * 3)
    assert_close_rule("out", out.cpu(), out64, None if out_lp is None else out_lp.cpu(), dtype)
    for name, a, b, c in zip(("dq", "dk", "dv"), g, g64, g_lp):
        assert_close_rule(name, a.cpu(), b, None if c is None else c.cpu(), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_reproducible_and_kept_fraction(device):
    batch, seq, heads, dim, p = 2, 200, 2, 32, 0.4
    # q = k = 0: every probability is 1/seq; v = 1: out = (kept count / seq) / (1 - p).
    q = torch.zeros(batch, seq, heads, dim, device=device, dtype=work_dtype(device))
    v = torch.ones(batch, seq, heads, dim, device=device, dtype=work_dtype(device))
    torch.manual_seed(7)
    a = attention(q, q, v, dropout_p=p)
    torch.manual_seed(7)
    b = attention(q, q, v, dropout_p=p)
    c = attention(q, q, v, dropout_p=p)
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = (a[..., 0].float() * (1 - p)).mean().item()
    assert abs(kept - (1 - p)) < 0.01, kept


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_backward_is_bitwise_reproducible(device):
    torch.manual_seed(0)
    q, k, v = [torch.randn(2, 300, 2, 64, device=device, dtype=work_dtype(device)) for _ in range(3)]
    grad = torch.randn_like(q)

    def grads(**kw):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(3)
        attention(*leaves, dropout_p=0.1, **kw).backward(grad)
        return [t.grad for t in leaves]

    first = grads(deterministic=True)
    assert all(torch.equal(a, b) for a, b in zip(first, grads(deterministic=True)))
    set_deterministic(True)
    try:
        assert all(torch.equal(a, b) for a, b in zip(first, grads()))
    finally:
        set_deterministic(False)


def opcheck_args(device, dropout=False, bias=False, mask=True):
    q, k, v = [torch.randn(2, 19, 2, 32, device=device, dtype=work_dtype(device)) for _ in range(3)]
    m = (torch.rand(2, 19, device=device) > 0.3) if mask else None
    b = torch.randn(2, 2, 19, 19, device=device) if bias else None
    seed = torch.tensor([1234], dtype=torch.int64, device=device) if dropout else None
    return q, k, v, m, b, seed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dropout,bias,mask", [(False, False, False), (True, True, True), (False, True, False)])
def test_opcheck(device, dropout, bias, mask):
    q, k, v, m, b, seed = opcheck_args(device, dropout, bias, mask)
    q.requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    if b is not None:
        b.requires_grad_()
    p = 0.2 if dropout else 0.0
    torch.library.opcheck(torch.ops.bertfast.attention_fwd, (q, k, v, m, b, None, 0, seed, p, 0.17, False))
    out, lse = torch.ops.bertfast.attention_fwd(q, k, v, m, b, None, 0, seed, p, 0.17, False)
    q, k, v, out, lse = [t.detach() for t in (q, k, v, out, lse)]  # the backward is not differentiable
    torch.library.opcheck(torch.ops.bertfast.attention_bwd,
                          (torch.randn_like(out), q, k, v, out, lse, m, b if b is None else b.detach(), None, 0, seed,
                           p, 0.17, b is not None, True))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_varlen(device):
    q, k, v, cu = make_varlen([3, 0, 20], 2, 32, device, work_dtype(device))
    q.requires_grad_()
    torch.library.opcheck(torch.ops.bertfast.attention_fwd, (q, k, v, None, None, cu, 20, None, 0.0, 0.3, False))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    q, k, v = [torch.randn(2, 33, 2, 32, device=device, dtype=work_dtype(device), requires_grad=True)
               for _ in range(3)]
    mask = torch.rand(2, 33, device=device) > 0.2
    bias = torch.randn(2, 1, 33, 33, device=device, requires_grad=True)

    def f(q, k, v, bias):
        return attention(q, k, v, key_padding_mask=mask, attn_bias=bias) * 2

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(q, k, v, bias)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v, bias)]
    for t in (q, k, v, bias):
        t.grad = None
    ref = f(q, k, v, bias)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for a, t in zip(grads, (q, k, v, bias)):
        torch.testing.assert_close(a, t.grad)

    qv, kv, vv, cu = make_varlen([5, 12], 2, 32, device, work_dtype(device))
    cvar = torch.compile(lambda q, k, v: attention_varlen(q, k, v, cu, 12), fullgraph=True)
    torch.testing.assert_close(cvar(qv, kv, vv), attention_varlen(qv, kv, vv, cu, 12))


def bad_inputs():
    q = torch.randn(2, 5, 2, 32)
    cases = [
        (lambda: attention(q[0], q, q), ValueError, "q must have shape"),
        (lambda: attention(q, q.double(), q), TypeError, "dtype"),
        (lambda: attention(q, q[:, :3], q), ValueError, "k and v"),
        (lambda: attention(q, q[..., :16], q[..., :16]), ValueError, "head_dim"),
        (lambda: attention(q[..., :12], q[..., :12], q[..., :12]), ValueError, "head_dim"),
        (lambda: attention(q, q, q, key_padding_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError,
         "key_padding_mask"),
        (lambda: attention(q, q, q, key_padding_mask=torch.ones(2, 5)), TypeError, "key_padding_mask"),
        (lambda: attention(q, q, q, attn_bias=torch.randn(3, 1, 5, 5)), ValueError, "attn_bias"),
        (lambda: attention(q, q, q, attn_bias=torch.randn(5, 5).long()), TypeError, "attn_bias"),
        (lambda: attention(q, q, q, dropout_p=1.0), ValueError, "dropout_p"),
        (lambda: attention(q, q, q, dropout_p=-0.1), ValueError, "dropout_p"),
        (lambda: attention(q, q, q, scale=float("nan")), ValueError, "scale"),
    ]
    t = torch.randn(10, 2, 32)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    cases += [
        (lambda: attention_varlen(t, t, t, cu.long(), 6), TypeError, "cu_seqlens"),
        # bad cu_seqlens values: BAD_CU_SEQLENS, on every device
        (lambda: attention_varlen(t, t, t, cu, 0), ValueError, "max_seqlen"),
        (lambda: attention_varlen(t[None], t[None], t[None], cu, 6), ValueError, "q must have shape"),
        (lambda: attention_varlen(t, t[:9], t[:9], cu, 6), ValueError, "same tokens"),
    ]
    return cases


@pytest.mark.parametrize("case", range(len(bad_inputs())))
def test_bad_input_raises_clear_error(case):
    fn, exc, text = bad_inputs()[case]
    with pytest.raises(exc, match=text):
        fn()


def test_direct_op_call_with_bad_cu_seqlens_raises():
    t = torch.randn(10, 2, 32)
    with pytest.raises(RuntimeError, match="cu_seqlens"):
        torch.ops.bertfast.attention_fwd(t, t, t, None, None, torch.tensor([0, 12], dtype=torch.int32), 12, None,
                                         0.0, 1.0, False)


BAD_CU_SEQLENS = [  # (offsets for 10 tokens, max_seqlen, what the message says)
    ([1, 4, 10], 6, r"start at 0, got cu_seqlens\[0\]=1"),
    ([0, 7, 4, 10], 10, r"non-decreasing, got cu_seqlens\[1\]=7 then cu_seqlens\[2\]=4"),
    ([0, 4, 9], 6, r"end at the number of tokens 10, got cu_seqlens\[2\]=9"),
    ([0, 4, 10], 5, r"cu_seqlens gives sequence 1 .* 6 tokens, more than max_seqlen=5"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offsets,max_seqlen,message", BAD_CU_SEQLENS)
def test_bad_cu_seqlens_values_raise_on_every_device(device, offsets, max_seqlen, message):
    t = torch.randn(10, 2, 32, device=device, dtype=work_dtype(device))
    cu = torch.tensor(offsets, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=message):
        attention_varlen(t, t, t, cu, max_seqlen)


def test_unchecked_cu_seqlens_give_the_same_result():
    torch.manual_seed(4)
    q, k, v, cu = make_varlen([6, 0, 11, 3], 2, 32, "cpu", torch.float32)
    torch.testing.assert_close(attention_varlen(q, k, v, cu, 11, check_cu_seqlens=False),
                               attention_varlen(q, k, v, cu, 11))


def test_unchecked_cu_seqlens_skip_the_value_check(monkeypatch):
    attention_module = importlib.import_module("bertfast.ops.attention")
    calls = []
    monkeypatch.setattr(attention_module, "_check_cu_seqlens_values", lambda *args: calls.append(args))
    q, k, v, cu = make_varlen([6, 4], 2, 32, "cpu", torch.float32)
    attention_varlen(q, k, v, cu, 6, check_cu_seqlens=False)
    assert calls == []
    attention_varlen(q, k, v, cu, 6)
    assert len(calls) == 1


def test_unchecked_bad_cu_seqlens_still_fail_in_the_cpu_kernel():
    t = torch.randn(10, 2, 32)
    with pytest.raises(RuntimeError, match="cu_seqlens must be non-decreasing"):
        attention_varlen(t, t, t, torch.tensor([0, 7, 4, 10], dtype=torch.int32), 10, check_cu_seqlens=False)


def test_model_forward_never_checks_cu_seqlens_values(monkeypatch):
    """The model builds its own offsets: checking them would sync on CUDA every layer."""
    import bertfast
    import bertfast.ops

    def no_check(*args):
        raise AssertionError("the model's forward checked cu_seqlens values (a device sync on CUDA)")

    monkeypatch.setattr(importlib.import_module("bertfast.ops.attention"), "_check_cu_seqlens_values", no_check)
    varlen_calls = []
    fused = bertfast.ops.attention_varlen
    monkeypatch.setattr(bertfast.ops, "attention_varlen",
                        lambda *args, **kwargs: varlen_calls.append(kwargs) or fused(*args, **kwargs))
    config = bertfast.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=40, max_position_embeddings=16)
    torch.manual_seed(0)
    model = bertfast.BertModel(config).eval()
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] * 7 + [0] * 2])
    out = model(ids, attention_mask=mask)
    assert torch.isfinite(out.last_hidden_state).all()
    assert len(varlen_calls) == 2, "the padded batch did not run the fused varlen op in every layer"


@requires_cuda
def test_cuda_graph_capture_skips_the_cu_seqlens_check():
    """A device-to-host copy cannot be captured: under capture the check is skipped, not raised."""
    q, k, v, cu = make_varlen([5, 12, 7], 2, 32, "cuda", torch.bfloat16)
    expected = attention_varlen(q, k, v, cu, 12)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        attention_varlen(q, k, v, cu, 12)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention_varlen(q, k, v, cu, 12)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)


@requires_cuda
def test_cuda_and_cpu_agree_and_fp32_is_refused():
    torch.manual_seed(0)
    q, k, v = [torch.randn(2, 77, 3, 64, dtype=torch.bfloat16) for _ in range(3)]
    mask = torch.rand(2, 77) > 0.3
    a = attention(q, k, v, key_padding_mask=mask)
    b = attention(q.cuda(), k.cuda(), v.cuda(), key_padding_mask=mask.cuda())
    torch.testing.assert_close(b.cpu().float(), a.float(), atol=2e-2, rtol=2e-2)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        attention(q.float().cuda(), k.float().cuda(), v.float().cuda())


@requires_cuda
def test_cuda_fp32_under_autocast_runs_in_bf16():
    q, k, v = [torch.randn(2, 40, 2, 64, device="cuda", requires_grad=True) for _ in range(3)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = attention(q, k, v)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()
    ref = reference.attention(q.double(), k.double(), v.double())
    assert (out.double() - ref).abs().max().item() < 3e-2


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_dropout_mask_matches_cpu(dtype):
    torch.manual_seed(0)
    q, k, v = [torch.randn(2, 70, 2, 32, dtype=dtype) for _ in range(3)]
    torch.manual_seed(4)
    a = attention(q.cuda(), k.cuda(), v.cuda(), dropout_p=0.3)
    seed = seed_that_op_will_draw(4, "cuda")
    keep = reference.dropout_keep_mask(seed, (2, 2, 70, 70), 0.3)
    ref = reference.attention(q.double(), k.double(), v.double(), dropout_p=0.3, keep_mask=keep)
    ref_lp = reference.attention(q, k, v, dropout_p=0.3, keep_mask=keep)
    assert_close_rule("out", a.cpu(), ref, ref_lp, dtype)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [32, 64, 128, 40])
def test_cuda_long_sequences(dtype, dim):
    torch.manual_seed(dim)
    check_attention("cuda", dtype, 2, 1025, 1025, 2, dim, "padding")
    check_attention("cuda", dtype, 1, 4096, 4096, 1, dim, None)


@requires_cuda
def test_cuda_deterministic_and_default_modes_agree():
    torch.manual_seed(0)
    q, k, v = [torch.randn(4, 513, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    grad = torch.randn_like(q)
    results = []
    for det in (True, False):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        attention(*leaves, deterministic=det).backward(grad)
        results.append([t.grad.float() for t in leaves])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
