"""Fuzzing the empty, non-tensor and double-backward classes of add_layer_norm and attention
(their value fuzzing lives in test_add_layer_norm.py / test_attention.py): zero rows, batch
or tokens give torch's empty results and zero gradients; non-tensors give a TypeError naming
the argument; mixed devices reach no fake kernel; a second differentiation raises."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bertfast.ops import add_layer_norm, attention, attention_varlen
from fuzz_support import NOT_TENSORS, assert_clear_error, fuzz_settings, not_a_tensor


@pytest.mark.parametrize("lead", [(0,), (3, 0), (0, 2)])
def test_add_layer_norm_with_no_rows_matches_torch(lead):
    x = torch.randn(*lead, 8, requires_grad=True)
    r = torch.randn(*lead, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    out = add_layer_norm(x, r, w, b)
    assert out.shape == F.layer_norm(x + r, (8,), w, b).shape
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros(8)) and torch.equal(b.grad, torch.zeros(8))


@pytest.mark.parametrize("shape_q,shape_k", [((0, 4, 2, 8), (0, 4, 2, 8)), ((2, 0, 2, 8), (2, 0, 2, 8)),
                                             ((2, 3, 2, 8), (2, 0, 2, 8))])
def test_attention_with_no_batch_or_tokens(shape_q, shape_k):
    q = torch.randn(shape_q, requires_grad=True)
    k = torch.randn(shape_k, requires_grad=True)
    v = torch.randn(shape_k, requires_grad=True)
    out = attention(q, k, v)
    assert out.shape == shape_q and not out.isnan().any()
    out.sum().backward()
    assert not q.grad.isnan().any() and torch.equal(k.grad, torch.zeros_like(k))


@fuzz_settings(ci_examples=20)
@given(op=st.sampled_from(["add_layer_norm", "attention", "attention_varlen"]), position=st.integers(0, 3),
       kind=NOT_TENSORS)
def test_non_tensors_give_a_type_error_naming_the_argument(op, position, kind):
    if op == "add_layer_norm":
        names, args = ["x", "residual", "weight", "bias"], [torch.randn(2, 8), torch.randn(2, 8), torch.ones(8),
                                                            torch.zeros(8)]
    elif op == "attention":
        names, args = ["q", "k", "v"], [torch.randn(1, 2, 1, 8) for _ in range(3)]
    else:
        names, args = ["q", "k", "v", "cu_seqlens"], [torch.randn(2, 1, 8) for _ in range(3)] + [
            torch.tensor([0, 2], dtype=torch.int32)]
    position %= len(names)
    args[position] = not_a_tensor(kind, args[position])
    fn = {"add_layer_norm": add_layer_norm, "attention": attention,
          "attention_varlen": lambda *a: attention_varlen(*a, 2)}[op]
    with pytest.raises(TypeError) as info:
        fn(*args)
    assert_clear_error(info.value, op, names[position])


def test_raw_ops_refuse_meta_among_cpu_tensors():
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="one device"):
        torch.ops.bertfast.add_layer_norm_fwd(x, x.to("meta"), torch.ones(8), torch.zeros(8), None, None, 1e-5, 0.0)
    q = torch.randn(1, 2, 1, 8)
    with pytest.raises(RuntimeError, match="one device"):
        torch.ops.bertfast.attention_fwd(q, q.to("meta"), q, None, None, None, 0, None, 0.0, 1.0, False)


def test_max_seqlen_beyond_int64_is_a_clear_error():
    t = torch.randn(2, 1, 8)
    with pytest.raises(ValueError, match="max_seqlen"):
        attention_varlen(t, t, t, torch.tensor([0, 2], dtype=torch.int32), 2**70)


@pytest.mark.parametrize("op", ["add_layer_norm", "attention"])
def test_double_backward_raises(op):
    if op == "add_layer_norm":
        x = torch.randn(3, 8, requires_grad=True)
        w = torch.randn(8, requires_grad=True)
        out = add_layer_norm(x, torch.randn(3, 8), w, torch.zeros(8))
        wrt = (x, w)
    else:
        x = torch.randn(1, 3, 1, 8, requires_grad=True)
        w = torch.randn(1, 3, 1, 8, requires_grad=True)
        out = attention(x, w, w)
        wrt = (x, w)
    (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x, create_graph=True)
    for t in wrt:
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(g.sum(), t, retain_graph=True)
