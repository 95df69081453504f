"""softmax_cross_entropy, linear_cross_entropy and span_loss against bertfast.ops.reference
(F.cross_entropy and friends) evaluated in float64, on CPU and, where present, CUDA."""
import pytest
import torch

from bertfast.ops import reference
from bertfast.ops import linear_cross_entropy, softmax_cross_entropy, span_loss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOW = (torch.bfloat16, torch.float16)
REDUCTIONS = ("mean", "sum", "none")


def make_logits(rows, classes, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, classes, generator=g, dtype=torch.float64) * 3).to(device=device, dtype=dtype)


def make_labels(rows, classes, pattern, device, seed, ignore_index=-100):
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, classes, (rows,), generator=g)
    if pattern == "some":
        labels[torch.rand(rows, generator=g) < 0.3] = ignore_index
        labels[0] = ignore_index
    elif pattern == "all":
        labels[:] = ignore_index
    return labels.to(device)


def upstream_grad(loss, seed):
    """A fresh random upstream gradient of loss's shape (not all ones)."""
    g = torch.Generator().manual_seed(seed + 2)
    return (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(loss.device)


def value_and_grad(fn, logits, dtype, grad_out):
    x = logits.detach().to(dtype).requires_grad_()
    loss = fn(x)
    loss.backward(grad_out.to(loss.dtype))
    return loss.detach().double(), x.grad.double()


def max_err(a, b):
    """Largest |a - b|, with positions where both are nan (or equal infinities) counting as 0."""
    same = (torch.isnan(a) & torch.isnan(b)) | (a == b)
    assert not (torch.isnan(a) ^ torch.isnan(b)).any(), f"nan mismatch: {a} vs {b}"
    return (a - b).abs().masked_fill(same, 0.0).max().item() if a.numel() else 0.0


def check_parity(fused_fn, ref_fn, logits, dtype, seed, rtol_fp32=2e-5):
    """fp32: close to the float64 reference. Low precision: error <= 2x the error of the
    reference run in that dtype, plus a small floor."""
    ref_loss = ref_fn(logits.double())
    grad_out = upstream_grad(ref_loss, seed)
    ref_val, ref_grad = value_and_grad(ref_fn, logits.double(), torch.float64, grad_out)
    val, grad = value_and_grad(fused_fn, logits, dtype, grad_out)
    assert val.shape == ref_val.shape and grad.shape == ref_grad.shape
    if dtype == torch.float32:
        scale = max(1.0, ref_val.abs().nan_to_num().max().item())
        assert max_err(val, ref_val) <= rtol_fp32 * scale
        assert max_err(grad, ref_grad) <= 1e-6 * max(1.0, grad_out.max().item())
    else:
        # reference in the low dtype (F.cross_entropy keeps bf16/fp16 inputs on CPU and CUDA)
        low_val, low_grad = value_and_grad(ref_fn, logits, dtype, grad_out)
        assert max_err(val, ref_val) <= 2 * max_err(low_val, ref_val) + 1e-5 * max(1.0, ref_val.abs().max().item())
        assert max_err(grad, ref_grad) <= 2 * max_err(low_grad, ref_grad) + 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("classes", [2, 3, 9, 1000, 30522, 50257])
@pytest.mark.parametrize("pattern", ["none", "some", "all"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_fp32_matches_torch(device, classes, pattern, smoothing):
    rows = 37 if classes <= 1000 else 5
    seed = classes * 7 + len(pattern) + int(smoothing * 10)
    logits = make_logits(rows, classes, torch.float64, device, seed)
    labels = make_labels(rows, classes, pattern, device, seed)
    for reduction in REDUCTIONS:
        opts = dict(label_smoothing=smoothing, reduction=reduction)
        check_parity(lambda x: softmax_cross_entropy(x, labels, **opts),
                     lambda x: reference.softmax_cross_entropy(x, labels, **opts), logits, torch.float32, seed)


def low_dtypes(device):
    return LOW if device == "cuda" else (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("classes", [3, 1000, 30522])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_softmax_cross_entropy_low_precision(device, classes, dtype):
    rows = 29 if classes <= 1000 else 4
    seed = classes + 11
    logits = make_logits(rows, classes, dtype, device, seed)  # rounded once: both sides see the same values
    labels = make_labels(rows, classes, "some", device, seed)
    for smoothing in (0.0, 0.1):
        for reduction in REDUCTIONS:
            opts = dict(label_smoothing=smoothing, reduction=reduction)
            check_parity(lambda x: softmax_cross_entropy(x, labels, **opts),
                         lambda x: reference.softmax_cross_entropy(x, labels, **opts), logits, dtype, seed)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_is_float32_and_equals_cross_entropy_of_float_logits(device):
    logits = make_logits(16, 77, torch.bfloat16, device, 3)
    labels = make_labels(16, 77, "some", device, 3)
    out = softmax_cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    ref = torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=0.1, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows, classes", [(1, 2), (3, 262147), (3000, 5), (1, 7)])
def test_extreme_shapes(device, rows, classes):
    logits = make_logits(rows, classes, torch.float64, device, rows + classes)
    labels = make_labels(rows, classes, "none", device, 5)
    check_parity(lambda x: softmax_cross_entropy(x, labels, label_smoothing=0.1),
                 lambda x: reference.softmax_cross_entropy(x, labels, label_smoothing=0.1),
                 logits, torch.float32, 5, rtol_fp32=5e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("classes", [37, 3001])
def test_logits_not_on_a_16_byte_boundary(device, dtype, classes):
    """Rows starting anywhere: a scalar head before the 16-byte packs, and (gradient in a
    fresh, aligned buffer) the elementwise fallback."""
    rows = 6
    flat = make_logits(1, rows * classes + 1, dtype, device, 8).view(-1)
    labels = make_labels(rows, classes, "some", device, 8)
    ref_x = flat[1:].view(rows, classes).float().requires_grad_()
    ref_loss = torch.nn.functional.cross_entropy(ref_x, labels, label_smoothing=0.1)
    ref_loss.backward()
    for inplace in (False, True):
        x = flat.clone()[1:].view(rows, classes).requires_grad_()  # contiguous, one element past a boundary
        assert x.data_ptr() % 16 != 0
        loss = softmax_cross_entropy(x, labels, label_smoothing=0.1, inplace_backward=inplace)
        (grad,) = torch.autograd.grad(loss, x)
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-5, atol=1e-6)
        tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-5)
        torch.testing.assert_close(grad.float(), ref_x.grad, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logit_values(device):
    """A max far into the row (the CPU's one-pass exponentials fall back), masked (-inf)
    logits, a row starting with -inf, huge spreads, and a NaN row (nan as torch)."""
    classes = 5000  # several CPU blocks
    x = make_logits(6, classes, torch.float64, device, 12)
    x[0, 4500] = 150.0  # overshoots the running max by far, late in the row
    x[1, :3000] = -float("inf")  # whole leading blocks masked
    x[2, 0] = -float("inf")
    x[2, 1::2] = -float("inf")
    x[3] *= 40  # spread of thousands
    x[4, 2048:4096] += 70  # a whole block far above the first
    x[5, 77] = float("nan")
    labels = torch.tensor([4500, 3500, 10, 0, 3000, 5], device=device)
    for smoothing in (0.0, 0.1):
        ref = torch.nn.functional.cross_entropy(x, labels, label_smoothing=smoothing, reduction="none")
        out = softmax_cross_entropy(x.float(), labels, label_smoothing=smoothing, reduction="none")
        assert torch.isnan(out[5]) and torch.isnan(ref[5])
        torch.testing.assert_close(out[:5].double(), ref[:5], rtol=1e-5, atol=1e-5)
        xr = x[:5].clone().requires_grad_()
        torch.nn.functional.cross_entropy(xr, labels[:5], label_smoothing=0.0).backward()
        xf = x[:5].float().requires_grad_()
        softmax_cross_entropy(xf, labels[:5]).backward()
        torch.testing.assert_close(xf.grad.double(), xr.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_behaves_like_torch(device):
    logits = torch.randn(0, 5, device=device)
    labels = torch.zeros(0, dtype=torch.int64, device=device)
    for reduction in REDUCTIONS:
        out = softmax_cross_entropy(logits, labels, reduction=reduction)
        ref = torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)
        assert out.shape == ref.shape
        assert torch.equal(out.isnan(), ref.isnan())


@pytest.mark.parametrize("device", DEVICES)
def test_all_ignored_values_and_grads_like_torch(device):
    logits = make_logits(6, 11, torch.float32, device, 9)
    labels = torch.full((6,), 4, device=device)
    for reduction, expect in (("mean", float("nan")), ("sum", 0.0)):
        x = logits.clone().requires_grad_()
        out = softmax_cross_entropy(x, labels, ignore_index=4, label_smoothing=0.1, reduction=reduction)
        out.backward()
        torch.testing.assert_close(out, torch.tensor(expect, device=device), equal_nan=True)
        assert torch.equal(x.grad, torch.zeros_like(x))  # torch gives zeros too, even for nan mean


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inplace_backward_writes_the_gradient_into_the_logits(device, dtype):
    logits = make_logits(9, 1003, dtype, device, 4)
    labels = make_labels(9, 1003, "some", device, 4)
    x = logits.clone().requires_grad_()
    softmax_cross_entropy(x, labels, label_smoothing=0.1).backward()
    y = logits.clone().requires_grad_()
    base = y * 1  # a non-leaf (a leaf that requires grad is refused), saved by no node
    loss = softmax_cross_entropy(base, labels, label_smoothing=0.1, inplace_backward=True)
    (grad,) = torch.autograd.grad(loss, base)
    assert torch.equal(grad, x.grad)
    assert grad.data_ptr() == base.data_ptr() and torch.equal(base, x.grad)  # the logits' storage holds it now


def test_labels_out_of_range_raise_value_error_on_cpu():
    logits = torch.randn(4, 10)
    for bad in (10, -1, 12345):
        labels = torch.tensor([1, bad, 2, -100])
        with pytest.raises(ValueError, match=r"labels\[1\] = .* outside \[0, 10\)"):
            softmax_cross_entropy(logits, labels)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.tensor([0, 1, 10, 2]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_labels_out_of_range_fail_a_device_assert_on_cuda():
    """No synchronisation in the op: the device-side assert surfaces at the next sync (in a
    subprocess, since it leaves the CUDA context unusable)."""
    import subprocess
    import sys
    code = ("import torch, bertfast.ops as o\n"
            "x = torch.randn(4, 1000, device='cuda'); y = torch.tensor([1, 1000, 2, -100], device='cuda')\n"
            "loss = o.softmax_cross_entropy(x, y)\n"
            "torch.cuda.synchronize()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "device-side assert" in out.stderr
    assert "softmax_cross_entropy: a label is outside [0, classes)" in out.stderr + out.stdout


def test_bad_arguments_name_the_argument():
    x, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    cases = [
        (lambda: softmax_cross_entropy(x[0], y), ValueError, "logits"),
        (lambda: softmax_cross_entropy(x, y[None]), ValueError, "labels"),
        (lambda: softmax_cross_entropy(x, y[:3]), ValueError, "labels"),
        (lambda: softmax_cross_entropy(x, y.float()), TypeError, "labels"),
        (lambda: softmax_cross_entropy(x.double(), y), TypeError, "logits"),
        (lambda: softmax_cross_entropy(x, y, label_smoothing=1.5), ValueError, "label_smoothing"),
        (lambda: softmax_cross_entropy(x, y, label_smoothing=-0.1), ValueError, "label_smoothing"),
        (lambda: softmax_cross_entropy(x, y, reduction="avg"), ValueError, "reduction"),
        (lambda: softmax_cross_entropy(x, y, ignore_index=1.5), TypeError, "ignore_index"),
        (lambda: softmax_cross_entropy(x, y.to("meta")), ValueError, "labels"),
        (lambda: softmax_cross_entropy(x, [1, 2, 3, 4]), TypeError, "labels"),
        (lambda: linear_cross_entropy(x, torch.randn(7, 9), y), ValueError, "weight"),
        (lambda: linear_cross_entropy(x, torch.randn(7, 10).double(), y), TypeError, "weight"),
        (lambda: linear_cross_entropy(x, torch.randn(7, 10), y, bias=torch.randn(6)), ValueError, "bias"),
        (lambda: linear_cross_entropy(x, torch.randn(7, 10), y[:2]), ValueError, "labels"),
        (lambda: linear_cross_entropy(x, torch.randn(7, 10), y.int()), TypeError, "labels"),
        (lambda: linear_cross_entropy(x[None], torch.randn(7, 10), y), ValueError, "hidden"),
        (lambda: linear_cross_entropy(x, torch.randn(7, 10), y, chunk_size=0), ValueError, "chunk_size"),
        (lambda: linear_cross_entropy(x, torch.randn(7, 10), y, reduction="mean "), ValueError, "reduction"),
        (lambda: span_loss(x, x[:, :5], y, y), ValueError, "end_logits"),
        (lambda: span_loss(x, x, y.float(), y), TypeError, "start_positions"),
    ]
    for fn, exc, name in cases:
        with pytest.raises(exc, match=name):
            fn()


def test_direct_op_calls_are_checked():
    ops = torch.ops.bertfast
    x, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match="labels"):
        ops.softmax_cross_entropy_fwd(x, y[:2], -100, 0.0, False)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.softmax_cross_entropy_fwd(x, y, -100, 2.0, False)
    with pytest.raises(ValueError, match="lse"):
        ops.softmax_cross_entropy_bwd(torch.ones(4), x, y, torch.ones(3), -100, 0.0)
    with pytest.raises(ValueError, match="contiguous"):
        ops.softmax_cross_entropy_bwd_(torch.ones(4), x.t().contiguous().t(), y, torch.ones(4), -100, 0.0)


# ---- linear_cross_entropy ----

def linear_case(rows, hidden, vocab, device, seed, with_bias):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=g, dtype=torch.float64).to(device)
    w = (torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * 2 / hidden ** 0.5).to(device)
    b = torch.randn(vocab, generator=g, dtype=torch.float64).to(device) if with_bias else None
    labels = make_labels(rows, vocab, "some", device, seed)
    return h, w, b, labels


def linear_grads(fn, h, w, b, dtype, grad_out):
    params = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (h, w, b)]
    loss = fn(*params)
    loss.backward(grad_out.to(loss.dtype))
    return [loss.detach().double()] + [p.grad.double() for p in params if p is not None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_linear_cross_entropy_matches_unfused(device, reduction, with_bias, chunk_size):
    h, w, b, labels = linear_case(45, 24, 1003, device, 21, with_bias)
    opts = dict(label_smoothing=0.1, reduction=reduction)
    grad_out = upstream_grad(reference.linear_cross_entropy(h, w, labels, bias=b, **opts), 5)
    ref = linear_grads(lambda *p: reference.linear_cross_entropy(p[0], p[1], labels, bias=p[2], **opts), h, w, b,
                       torch.float64, grad_out)
    out = linear_grads(lambda *p: linear_cross_entropy(p[0], p[1], labels, bias=p[2], chunk_size=chunk_size, **opts),
                       h, w, b, torch.float32, grad_out)
    for name, o, r in zip(("loss", "grad_hidden", "grad_weight", "grad_bias"), out, ref):
        assert max_err(o, r) <= 2e-5 * max(1.0, r.abs().max().item()), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=str)
def test_linear_cross_entropy_low_precision(device, dtype):
    h, w, b, labels = linear_case(64, 32, 517, device, 8, True)
    h, w, b = (t.to(dtype).double() for t in (h, w, b))  # both sides start from the same rounded values
    grad_out = torch.tensor(1.3, dtype=torch.float64)
    fn_ref = lambda *p: reference.linear_cross_entropy(p[0], p[1], labels, bias=p[2])  # noqa: E731
    ref = linear_grads(fn_ref, h, w, b, torch.float64, grad_out)
    low = linear_grads(fn_ref, h, w, b, dtype, grad_out)
    out = linear_grads(lambda *p: linear_cross_entropy(p[0], p[1], labels, bias=p[2], chunk_size=10), h, w, b,
                       dtype, grad_out)
    for name, o, lo, r in zip(("loss", "grad_hidden", "grad_weight", "grad_bias"), out, low, ref):
        assert max_err(o, r) <= 2 * max_err(lo, r) + 1e-5, name


def test_linear_cross_entropy_skips_gradients_without_grad():
    h, w, b, labels = linear_case(10, 8, 50, "cpu", 1, True)
    with torch.no_grad():
        loss = linear_cross_entropy(h.float(), w.float(), labels, bias=b.float())
    ref = reference.linear_cross_entropy(h, w, labels, bias=b)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    # only the weight needs a gradient (a frozen encoder): hidden gets none
    wf = w.float().requires_grad_()
    linear_cross_entropy(h.float(), wf, labels).backward()
    w64 = w.clone().requires_grad_()
    reference.linear_cross_entropy(h, w64, labels).backward()
    torch.testing.assert_close(wf.grad.double(), w64.grad, rtol=1e-5, atol=1e-6)


# ---- span_loss ----

@pytest.mark.parametrize("device", DEVICES)
def test_span_loss_matches_transformers_formula(device):
    g = torch.Generator().manual_seed(3)
    batch, seq = 9, 31
    start = torch.randn(batch, seq, generator=g, dtype=torch.float64).to(device)
    end = torch.randn(batch, seq, generator=g, dtype=torch.float64).to(device)
    # inside, at the edges, past the end (clamped to seq: ignored) and negative (clamped to 0)
    sp = torch.tensor([0, 5, 30, 31, 40, -3, 7, 12, 31], device=device)
    ep = torch.tensor([3, 6, 30, 2, 31, 100, 8, 29, -1], device=device)[:, None]  # (batch, 1) as gathered
    ref = reference.span_loss(start, end, sp, ep)
    s32, e32 = start.float().requires_grad_(), end.float().requires_grad_()
    s64, e64 = start.clone().requires_grad_(), end.clone().requires_grad_()
    out = span_loss(s32, e32, sp, ep)
    ref = reference.span_loss(s64, e64, sp, ep)
    out.backward()
    ref.backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e32.grad.double(), e64.grad, rtol=1e-5, atol=1e-7)


def test_span_loss_matches_bert_for_question_answering():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering(config).eval()
    ids = torch.randint(0, 50, (4, 13))
    sp, ep = torch.tensor([0, 12, 13, 50]), torch.tensor([3, 13, -2, 5])
    out = model(input_ids=ids, start_positions=sp, end_positions=ep)
    mine = span_loss(out.start_logits, out.end_logits, sp, ep)
    torch.testing.assert_close(mine, out.loss, rtol=1e-5, atol=1e-6)


# ---- torch.library and torch.compile ----

def test_opcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 33, generator=g) * 3
    y = torch.tensor([1, -100, 32, 0, 5, 7])
    ops = torch.ops.bertfast
    for x_ in (x, x.bfloat16()):
        for inplace in (False, True):
            torch.library.opcheck(ops.softmax_cross_entropy_fwd, (x_.clone().requires_grad_(), y, -100, 0.1, inplace))
        _, lse = ops.softmax_cross_entropy_fwd(x_, y, -100, 0.1, False)
        torch.library.opcheck(ops.softmax_cross_entropy_bwd, (torch.rand(6), x_, y, lse, -100, 0.1))
        torch.library.opcheck(ops.softmax_cross_entropy_bwd_, (torch.rand(6), x_.clone(), y, lse, -100, 0.1))
        torch.library.opcheck(ops.softmax_cross_entropy_fwd_bwd_, (x_.clone(), y, -100, 0.0))
    h = torch.randn(6, 8, generator=g, requires_grad=True)
    w = torch.randn(33, 8, generator=g, requires_grad=True)
    b = torch.randn(33, generator=g, requires_grad=True)
    torch.library.opcheck(ops.linear_cross_entropy_sum, (h, w, b, y, -100, 0.1, 4, True, True, True))
    torch.library.opcheck(ops.linear_cross_entropy_sum, (h, w, None, y, -100, 0.0, 6, True, False, False))
    torch.library.opcheck(ops.linear_cross_entropy_rows, (h, w, b, y, -100, 0.1, 4))
    _, lse = ops.linear_cross_entropy_rows(h, w, b, y, -100, 0.1, 4)
    torch.library.opcheck(ops.linear_cross_entropy_rows_bwd,
                          (torch.rand(6), h.detach(), w.detach(), b.detach(), y, lse.detach(), -100, 0.1, 4,
                           True, True, True))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(12, 101, generator=g) * 3).to(device)
    y = make_labels(12, 101, "some", device, 1)
    h = torch.randn(12, 16, generator=g).to(device)
    w = (torch.randn(101, 16, generator=g) * 0.3).to(device)

    def head(x, h, w, y):
        a = softmax_cross_entropy(x, y, label_smoothing=0.1)
        b = softmax_cross_entropy(x * 2, y, reduction="none", inplace_backward=True).sum()
        c = linear_cross_entropy(h, w, y, chunk_size=5)
        d = linear_cross_entropy(h, w, y, reduction="none").sum()
        e = span_loss(x[:, :40], x[:, 40:80], y.clamp(0, 50), y.abs() % 45)
        return a + b + c + d + e

    compiled = torch.compile(head, fullgraph=True)
    results = []
    for fn in (head, compiled):
        params = [t.clone().requires_grad_() for t in (x, h, w)]
        loss = fn(params[0], params[1], params[2], y)
        loss.backward()
        results.append([loss] + [p.grad for p in params])
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)
