"""bertfast/model/attention_routing.py: the SDPA paths that serve where the fused attention does
not (float32 on CUDA without autocast; one query per sequence), against per-sequence references
(the fused ops themselves are tested in tests/ops/)."""
import pytest
import torch
import torch.nn.functional as F

from bertfast.model import attention_routing as routing


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
    monkeypatch.setattr(routing, "_fused_serves", lambda q: False)  # the SDPA path, as for fp32 on CUDA
    torch.manual_seed(0)
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    total, heads, head_dim = int(cu_seqlens[-1]), 3, 8
    q, k, v = (torch.randn(total, heads, head_dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = routing.attention_varlen(q, k, v, cu_seqlens, max(lengths), scale=0.3)
    expected = _per_sequence_reference(q, k, v, cu_seqlens, 0.3)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_attention_varlen_fallback_with_mask_holes(monkeypatch):
    """The caller's padding layout may have holes (a mask that is not left-aligned)."""
    monkeypatch.setattr(routing, "_fused_serves", lambda q: False)
    torch.manual_seed(1)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    flat_index = mask.reshape(-1).nonzero().squeeze(1)
    cu_seqlens = torch.tensor([0, 3, 5], dtype=torch.int32)
    q, k, v = (torch.randn(5, 2, 4, dtype=torch.float64) for _ in range(3))
    out = routing.attention_varlen(q, k, v, cu_seqlens, 5, padding=(flat_index, mask))
    torch.testing.assert_close(out, _per_sequence_reference(q, k, v, cu_seqlens, None))


def test_first_query_attention_matches_full_attention(monkeypatch):
    torch.manual_seed(2)
    lengths = [4, 6, 2]
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    flat_index = mask.reshape(-1).nonzero().squeeze(1)
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    q, k, v = (torch.randn(12, 2, 4, dtype=torch.float64) for _ in range(3))
    full = _per_sequence_reference(q, k, v, cu_seqlens, None)
    first = routing.first_query_attention(q[cu_seqlens[:-1].long()], k, v, padding=(flat_index, mask))
    torch.testing.assert_close(first, full[cu_seqlens[:-1].long()])


def test_padded_attention_sdpa_path_matches_the_fused_op(monkeypatch):
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 5, 3, 8) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    fused = routing.attention(q, k, v, key_padding_mask=mask, scale=0.4)
    monkeypatch.setattr(routing, "_fused_serves", lambda q: False)
    sdpa = routing.attention(q, k, v, key_padding_mask=mask, scale=0.4)
    torch.testing.assert_close(fused, sdpa, atol=2e-5, rtol=1e-4)
