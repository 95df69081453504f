"""Fuzzing linear_cross_entropy: rows (0, 1, awkward), chunk sizes, bias, layouts, labels
(ignored, all ignored, out of range) and reductions, against bertfast.ops.reference in
float64; bad arguments give clear errors naming this op. Helpers: fuzz_support.py."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bertfast.ops import linear_cross_entropy, reference
from fuzz_support import (LAYOUTS, NOT_TENSORS, assert_clear_error, assert_close_to_reference, fuzz_settings,
                          layout_view, not_a_tensor)

NAME = "linear_cross_entropy"


@fuzz_settings(ci_examples=30)
@given(rows=st.sampled_from([0, 1, 3, 9, 17]), hidden=st.sampled_from([1, 8, 13]), vocab=st.sampled_from([1, 5, 33]),
       chunk=st.sampled_from([None, 1, 4, 100]), with_bias=st.booleans(), layout=st.sampled_from(LAYOUTS),
       labels=st.sampled_from(["valid", "some_ignored", "all_ignored"]),
       reduction=st.sampled_from(["mean", "sum", "none"]), smoothing=st.sampled_from([0.0, 0.1]),
       seed=st.integers(0, 2**16))
def test_matches_the_float64_reference(rows, hidden, vocab, chunk, with_bias, layout, labels, reduction, smoothing,
                                       seed):
    g = torch.Generator().manual_seed(seed)
    h = layout_view(torch.randn(rows, hidden, generator=g), layout)
    w = layout_view(torch.randn(vocab, hidden, generator=g), layout)
    b = torch.randn(vocab, generator=g) if with_bias else None
    y = torch.randint(0, vocab, (rows,), generator=g)
    if labels == "some_ignored" and rows:
        y[torch.rand(rows, generator=g) < 0.4] = -100
    elif labels == "all_ignored":
        y[:] = -100
    opts = dict(label_smoothing=smoothing, reduction=reduction)

    def run(fn, dtype):
        params = [t.detach().to(dtype).requires_grad_() for t in (h, w)] + (
            [b.detach().to(dtype).requires_grad_()] if with_bias else [])
        loss = fn(params[0], params[1], y, bias=params[2] if with_bias else None, **opts)
        loss.sum().backward()
        return [loss.detach()] + [p.grad for p in params]

    ours = run(lambda *a, **k: linear_cross_entropy(*a, chunk_size=chunk, **k), torch.float32)
    ref64 = run(reference.linear_cross_entropy, torch.float64)
    ref32 = run(reference.linear_cross_entropy, torch.float32)
    for name, got, r64, r32 in zip(["loss", "grad_hidden", "grad_weight", "grad_bias"], ours, ref64, ref32):
        assert_close_to_reference(name, got, r64, r32, 2e-5)


@fuzz_settings(ci_examples=20)
@given(bad=st.sampled_from(["hidden", "weight", "labels", "bias", "chunk_zero", "chunk_huge", "ignore_huge",
                            "label_range", "labels_rows"]), kind=NOT_TENSORS)
def test_bad_arguments_give_clear_errors(bad, kind):
    args = {"hidden": torch.randn(10, 4), "weight": torch.randn(6, 4), "labels": torch.zeros(10, dtype=torch.int64)}
    kwargs, words = {"chunk_size": 3}, (bad,)
    if bad in ("hidden", "weight", "labels"):
        args[bad] = not_a_tensor(kind, args[bad])
    elif bad == "bias":
        if kind == "none":  # bias is optional
            return
        kwargs["bias"] = not_a_tensor(kind, torch.zeros(6))
    elif bad in ("chunk_zero", "chunk_huge"):
        kwargs["chunk_size"], words = (0 if bad == "chunk_zero" else 2**70), ("chunk_size",)
    elif bad == "ignore_huge":
        kwargs["ignore_index"], words = 2**70, ("ignore_index",)
    elif bad == "label_range":  # row 7 of the caller, in the third chunk of 3 rows
        args["labels"][7], words = 9, ("labels[7]",)
    elif bad == "labels_rows":
        args["labels"], words = torch.zeros(12, dtype=torch.int64), ("labels",)
    with pytest.raises(Exception) as info:
        linear_cross_entropy(args["hidden"], args["weight"], args["labels"], **kwargs)
    assert_clear_error(info.value, NAME, *words)
    assert "softmax_cross_entropy" not in str(info.value)


@pytest.mark.parametrize("op", ["rows", "sum"])
def test_raw_ops_check_their_arguments(op):
    """torch.ops.bertfast.linear_cross_entropy_*: chunk_size <= 0 and labels longer than the
    rows are errors (not range() errors or silently ignored labels); mixed devices too."""
    h, w = torch.randn(3, 4), torch.randn(6, 4)
    extra = () if op == "rows" else (True, True, False)
    call = getattr(torch.ops.bertfast, f"linear_cross_entropy_{op}")
    for labels, chunk, text in [(torch.zeros(3, dtype=torch.int64), 0, "chunk_size"),
                                (torch.zeros(5, dtype=torch.int64), 2, "labels"),
                                (torch.zeros(3, dtype=torch.int64, device="meta"), 2, "one device")]:
        with pytest.raises((RuntimeError, ValueError), match=text):
            call(h, w, None, labels, -100, 0.0, chunk, *extra)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("rows", [0, 4])
def test_all_ignored_or_no_rows_give_torch_loss_and_zero_grads(reduction, rows):
    h = torch.randn(rows, 5, requires_grad=True)
    w = torch.randn(7, 5, requires_grad=True)
    y = torch.full((rows,), -100)
    loss = linear_cross_entropy(h, w, y, reduction=reduction)
    ref = reference.linear_cross_entropy(h.detach(), w.detach(), y, reduction=reduction)
    assert torch.equal(loss.isnan(), ref.isnan()) and torch.equal(loss.nan_to_num(), ref.nan_to_num())
    loss.sum().backward()
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_raises(reduction):
    h = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(7, 5, requires_grad=True)
    y = torch.tensor([1, 2, 3, 0])
    loss = linear_cross_entropy(h, w, y, reduction=reduction).sum()
    (g,) = torch.autograd.grad(loss, h, create_graph=True)
    for wrt in (h, w):
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(g.sum(), wrt, retain_graph=True)
