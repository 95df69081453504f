"""Padding removed once: the (batch, seq) token grid packed to (tokens, ...) rows of real tokens.

`Packing` remembers where each real token came from, so that the encoder runs on real tokens
only and outputs are put back in the padded shape only where a caller asks for them.
"""
import torch


@torch.library.custom_op("bertfast::unpad_index", mutates_args=())
def unpad_index(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices of the mask's nonzero entries, int32 cu_seqlens of shape (batch + 1,)).

    A custom op so that torch.compile(fullgraph=True) can trace through it: its output size
    depends on the data (an unbacked size in the fake implementation)."""
    keep = attention_mask != 0
    indices = keep.reshape(-1).nonzero().squeeze(1)
    cu_seqlens = torch.zeros(attention_mask.shape[0] + 1, dtype=torch.int32, device=attention_mask.device)
    cu_seqlens[1:] = keep.sum(1).cumsum(0)
    return indices, cu_seqlens


@unpad_index.register_fake
def _unpad_index_fake(attention_mask):
    total = torch.library.get_ctx().new_dynamic_size(min=1)  # a batch has at least one real token
    indices = attention_mask.new_empty((total,), dtype=torch.int64)
    return indices, attention_mask.new_empty((attention_mask.shape[0] + 1,), dtype=torch.int32)


class _GatherRows(torch.autograd.Function):
    """x.index_select(0, indices) for unique indices: the backward is a plain row copy
    (index_copy) instead of the accumulating scatter that index_select's backward uses."""

    @staticmethod
    def forward(ctx, x, indices):
        ctx.save_for_backward(indices)
        ctx.rows = x.shape[0]
        return x.index_select(0, indices)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return grad.new_zeros((ctx.rows, *grad.shape[1:])).index_copy(0, indices, grad), None


class _ScatterRows(torch.autograd.Function):
    """A (rows, ...) tensor filled with `fill`, `x` copied into rows `indices` (unique)."""

    @staticmethod
    def forward(ctx, x, indices, rows, fill):
        ctx.save_for_backward(indices)
        return x.new_full((rows, *x.shape[1:]), fill).index_copy(0, indices, x)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return grad.index_select(0, indices), None, None, None


def gather_rows(x, indices):
    return _GatherRows.apply(x, indices)


def scatter_rows(x, indices, rows, fill=0.0):
    return _ScatterRows.apply(x, indices, rows, fill)


class Packing:
    """Where the packed rows sit in the (batch, seqlen) grid.

    indices: (tokens,) int64 flat positions of the real tokens, or None when every position is
        real (no attention mask: packing is then a reshape).
    cu_seqlens: (batch + 1,) int32 cumulative lengths; sequence b is rows cu_seqlens[b]:cu_seqlens[b+1].
    """

    def __init__(self, batch, seqlen, device, attention_mask=None):
        self.batch, self.seqlen = batch, seqlen
        self.key_mask = None if attention_mask is None else attention_mask != 0
        if attention_mask is not None and device.type == "cpu" and not torch.compiler.is_compiling():
            if bool(self.key_mask.all()):  # no padding: on the CPU, knowing it costs no device sync
                attention_mask = self.key_mask = None
        if attention_mask is None:
            self.indices = None
            self.cu_seqlens = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
        else:
            self.indices, self.cu_seqlens = unpad_index(attention_mask)

    @property
    def max_seqlen(self):
        """An upper bound of the sequence lengths that needs no device sync."""
        return self.seqlen

    def pack(self, grid):
        """(batch, seqlen, ...) -> (tokens, ...)."""
        flat = grid.reshape(self.batch * self.seqlen, *grid.shape[2:])
        if self.indices is None:
            return flat
        return gather_rows(flat, self.indices) if flat.requires_grad else flat.index_select(0, self.indices)

    def positions(self):
        """(tokens,) position of each packed token inside its row."""
        if self.indices is None:
            return torch.arange(self.seqlen, device=self.cu_seqlens.device).repeat(self.batch)
        return self.indices % self.seqlen

    def pad(self, rows, fill=0.0):
        """(tokens, ...) -> (batch, seqlen, ...), `fill` where there was padding."""
        if self.indices is None:
            return rows.reshape(self.batch, self.seqlen, *rows.shape[1:])
        grid = scatter_rows(rows, self.indices, self.batch * self.seqlen, fill)
        return grid.view(self.batch, self.seqlen, *rows.shape[1:])

    def first_tokens(self, rows):
        """(batch, ...) the first real token of each sequence (its [CLS]); an empty sequence
        gets the next sequence's first row (or the last row), which no loss should use."""
        if self.indices is None:
            return rows.view(self.batch, self.seqlen, *rows.shape[1:])[:, 0]
        starts = self.cu_seqlens[:-1].long().clamp(max=rows.shape[0] - 1)
        return rows.index_select(0, starts)  # a few rows: index_select's backward is cheap here
