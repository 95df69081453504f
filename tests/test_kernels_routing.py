"""bertfast/kernels.py: the plain-PyTorch fallbacks the model uses until the fused ops land,
against per-sequence references (the fused ops are tested in tests/ops/)."""
import pytest
import torch
import torch.nn.functional as F

from bertfast import kernels


def _per_sequence_reference(q, k, v, cu_seqlens, scale):
    out = torch.zeros_like(q)
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        if end > start:
            sl = slice(start, end)
            out[sl] = F.scaled_dot_product_attention(q[sl].transpose(0, 1), k[sl].transpose(0, 1),
                                                     v[sl].transpose(0, 1), scale=scale).transpose(0, 1)
    return out


@pytest.mark.parametrize("lengths", [[5, 1, 9], [7, 0, 3, 7], [1]])
def test_attention_varlen_fallback_matches_per_sequence(lengths, monkeypatch):
    monkeypatch.setattr(kernels, "_fused", lambda name: None)  # the fallback, even once the op exists
    torch.manual_seed(0)
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    total, heads, head_dim = int(cu_seqlens[-1]), 3, 8
    q, k, v = (torch.randn(total, heads, head_dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = kernels.attention_varlen(q, k, v, cu_seqlens, max(lengths), scale=0.3)
    expected = _per_sequence_reference(q, k, v, cu_seqlens, 0.3)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_attention_varlen_fallback_with_mask_holes(monkeypatch):
    """The caller's padding layout may have holes (a mask that is not left-aligned)."""
    monkeypatch.setattr(kernels, "_fused", lambda name: None)
    torch.manual_seed(1)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    flat_index = mask.reshape(-1).nonzero().squeeze(1)
    cu_seqlens = torch.tensor([0, 3, 5], dtype=torch.int32)
    q, k, v = (torch.randn(5, 2, 4, dtype=torch.float64) for _ in range(3))
    out = kernels.attention_varlen(q, k, v, cu_seqlens, 5, padding=(flat_index, mask))
    torch.testing.assert_close(out, _per_sequence_reference(q, k, v, cu_seqlens, None))


def test_first_query_attention_matches_full_attention(monkeypatch):
    torch.manual_seed(2)
    lengths = [4, 6, 2]
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    flat_index = mask.reshape(-1).nonzero().squeeze(1)
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    q, k, v = (torch.randn(12, 2, 4, dtype=torch.float64) for _ in range(3))
    full = _per_sequence_reference(q, k, v, cu_seqlens, None)
    first = kernels.first_query_attention(q[cu_seqlens[:-1].long()], k, v, padding=(flat_index, mask))
    torch.testing.assert_close(first, full[cu_seqlens[:-1].long()])


def test_losses_fallbacks_match_torch(monkeypatch):
    monkeypatch.setattr(kernels, "_fused", lambda name: None)
    torch.manual_seed(3)
    logits, labels = torch.randn(7, 5), torch.tensor([0, 4, -100, 2, 2, -100, 1])
    torch.testing.assert_close(kernels.softmax_cross_entropy(logits, labels), F.cross_entropy(logits, labels))
    hidden, weight, bias = torch.randn(7, 6), torch.randn(5, 6), torch.randn(5)
    torch.testing.assert_close(kernels.linear_cross_entropy(hidden, weight, labels, bias=bias),
                               F.cross_entropy(hidden @ weight.T + bias, labels))
    start, end = torch.randn(3, 9), torch.randn(3, 9)
    positions = torch.tensor([1, 12, 4])  # 12 is outside the input: ignored
    expected = (F.cross_entropy(start, positions.clamp(0, 9), ignore_index=9)
                + F.cross_entropy(end, positions.clamp(0, 9), ignore_index=9)) / 2
    torch.testing.assert_close(kernels.span_loss(start, end, positions, positions), expected)
