"""The bi-encoder of `--task rank`, `bertfast embed` and `bertfast search`: one BERT embeds
queries and documents, pooled as sentence-transformers' `1_Pooling/config.json` says (mean over
the real tokens by default, [CLS], max, mean * sqrt(length)), L2-normalised; the training loss is
softmax cross-entropy (bertfast's fused op) of the scaled cosine scores of each query against
every document of the batch: its positive, the other queries' positives (in-batch negatives)
and all hard negatives; under DDP the documents of every process are candidates."""
import os
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

from .._files import read_json
from .._precision import autocast
from ..ops import softmax_cross_entropy

POOLING_DIR = "1_Pooling"
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")  # sentence-transformers' concatenation order


def read_pooling(model_dir):
    """The pooling modes of a checkpoint (1_Pooling/config.json), ["mean"] when it has none."""
    path = os.path.join(model_dir, POOLING_DIR, "config.json")
    if not os.path.exists(path):
        return ["mean"]
    config = read_json(path, "fix it or remove the folder (mean pooling is then used)")
    modes = [m for m in POOLING_MODES if config.get(f"pooling_mode_{m}_token" if m == "cls" else
                                                     f"pooling_mode_{m}_tokens")]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and
              k not in ("pooling_mode_cls_token", *(f"pooling_mode_{m}_tokens" for m in POOLING_MODES[1:]))]
    if others or not modes:
        raise ValueError(f"{path}: pooling {others or 'none'} is not supported (cls, mean, max, mean_sqrt_len)")
    return modes


def write_pooling(folder, modes, dim, max_length):
    """1_Pooling/config.json, modules.json and sentence_bert_config.json: the folder loads in
    sentence-transformers (Transformer, Pooling, Normalize)."""
    from .._files import atomic_write_json
    config = {"word_embedding_dimension": dim, "pooling_mode_cls_token": "cls" in modes,
              **{f"pooling_mode_{m}_tokens": m in modes for m in POOLING_MODES[1:]}}
    atomic_write_json(os.path.join(folder, POOLING_DIR, "config.json"), config)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    atomic_write_json(os.path.join(folder, "modules.json"), modules)
    os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    atomic_write_json(os.path.join(folder, "sentence_bert_config.json"),
                      {"max_seq_length": max_length, "do_lower_case": False})


def pool(hidden, cu_seqlens, modes):
    """(batch, hidden * len(modes)) from packed rows (tokens, hidden) and int32 cu_seqlens:
    sentence-transformers' definitions over the real tokens ([CLS] and [SEP] included)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths,
                                  output_size=hidden.shape[0])  # no device sync on CUDA
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden.index_select(0, cu_seqlens[:-1].long()))
        elif mode == "max":
            full = hidden.new_full((len(lengths), hidden.shape[1]), float("-inf"))
            out.append(full.scatter_reduce(0, seq[:, None].expand_as(hidden), hidden, "amax", include_self=True))
        else:
            sums = hidden.float().new_zeros((len(lengths), hidden.shape[1])).index_add(0, seq, hidden.float())
            n = lengths.clamp(min=1).float()[:, None]
            out.append((sums / n if mode == "mean" else sums / n.sqrt()).to(hidden.dtype))
    return torch.cat(out, 1) if len(out) > 1 else out[0]


class _GatherWithGrad(torch.autograd.Function):
    """Every process's rows (padded to the largest count), gradients summed back to their owner."""

    @staticmethod
    def forward(ctx, x, counts):
        ctx.rank, ctx.n, ctx.counts = dist.get_rank(), x.shape[0], counts
        padded = x.new_zeros((max(counts), *x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.counts[:ctx.rank])
        return grad[start:start + ctx.n], None


def gather(x, with_grad=True):
    """(rows of all processes in rank order, this process's first row in it); x itself alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    offset = sum(counts[:dist.get_rank()])
    if with_grad:
        return _GatherWithGrad.apply(x, counts), offset
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]), offset


def _masked_logits(rows, cols, row_pos_ids, col_ids, labels, scale):
    """scale * cosine(rows, cols) in float32; a column holding another of the row's positives
    (the same document, relevant to the same query) is no negative: -inf."""
    logits = scale * (rows.float() @ cols.float().T)
    same = (col_ids[None, :, None] == row_pos_ids[:, None, :]).any(-1)
    same[torch.arange(len(labels), device=labels.device), labels] = False
    return logits.masked_fill(same, float("-inf"))


def rank_loss(queries, docs, n_positives, doc_ids, pos_ids, scale=20.0, symmetric=False, reduction="sum"):
    """Contrastive loss of normalised embeddings. queries (B, D); docs (B + H, D): row i < B the
    positive of query i, then the hard negatives; doc_ids (B + H,) document numbers; pos_ids
    (B, P) each query's relevant documents (-1 padded). Under DDP the documents (and, for the
    symmetric term, the queries) of every process are candidates. Sum (or mean) over the queries
    of this process: cross-entropy of query -> its positive, averaged with positive -> its query
    when symmetric."""
    all_docs, offset = gather(docs)
    all_ids, _ = gather(doc_ids, with_grad=False)
    labels = torch.arange(n_positives, device=queries.device) + offset  # this process's positives
    logits = _masked_logits(queries, all_docs, pos_ids, all_ids, labels, scale)
    loss = softmax_cross_entropy(logits, labels, reduction=reduction)
    if not symmetric:
        return loss
    all_queries, q_offset = gather(queries)
    all_pos, _ = gather(pos_ids, with_grad=False)
    back = torch.arange(n_positives, device=queries.device) + q_offset
    # positive j against every query; another query that has j among its positives is no negative
    logits = scale * (docs[:n_positives].float() @ all_queries.float().T)
    same = (all_pos[None, :, :] == doc_ids[:n_positives, None, None]).any(-1)
    same[torch.arange(n_positives, device=queries.device), back] = False
    loss_back = softmax_cross_entropy(logits.masked_fill(same, float("-inf")), back, reduction=reduction)
    return (loss + loss_back) / 2


class BiEncoder(torch.nn.Module):
    """bertfast's BertModel + pooling + L2 normalisation; forward(**batch) gives .loss as the
    trainer's steps expect. Rows [0, n_queries) of the batch are queries, the rest documents."""

    def __init__(self, encoder, modes, scale=20.0, symmetric=False):
        super().__init__()
        self.encoder, self.modes, self.scale, self.symmetric = encoder, list(modes), scale, symmetric
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler.requires_grad_(False)  # never used: DDP would wait for its gradients

    def embed(self, input_ids, attention_mask, token_type_ids=None):
        if self.modes == ["cls"]:  # the last layer computes the first tokens only
            pooled = self.encoder.encode_first_tokens(input_ids, attention_mask, token_type_ids)
        else:
            hidden, packing = self.encoder.encode(input_ids, attention_mask, token_type_ids)
            pooled = pool(hidden, packing.cu_seqlens, self.modes)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def forward(self, input_ids, attention_mask, token_type_ids, n_queries, doc_ids, pos_ids, loss_reduction="sum"):
        emb = self.embed(input_ids, attention_mask, token_type_ids)
        b = int(n_queries)
        loss = rank_loss(emb[:b], emb[b:], b, doc_ids, pos_ids, self.scale, self.symmetric, loss_reduction)
        return SimpleNamespace(loss=loss, embeddings=emb)


def token_batches(lengths, max_tokens, max_rows=1024):
    """Indices grouped longest first so that rows x longest <= max_tokens (memory-bounded)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, current = [], []
    for i in order:
        if current and ((len(current) + 1) * lengths[current[0]] > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(int(i))
    return batches + ([current] if current else [])


@torch.no_grad()
def embed_ids(model, id_lists, device, precision="fp32", max_tokens=16384, pad_id=0, progress=None):
    """(len(id_lists), dim) float32 normalised embeddings of token-id lists, in their order."""
    was_training = model.training
    model.eval()
    out = [None] * len(id_lists)
    try:
        for batch in token_batches([len(x) for x in id_lists], max_tokens):
            longest = len(id_lists[batch[0]])
            ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, :len(id_lists[i])] = torch.tensor(id_lists[i])
                mask[r, :len(id_lists[i])] = 1
            with autocast(device, precision):
                emb = model.embed(ids.to(device), mask.to(device)).float().cpu()
            for r, i in enumerate(batch):
                out[i] = emb[r]
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return torch.stack(out) if out else torch.zeros((0, 0))


def embed_ids_shared(model, id_lists, device, precision, ctx, max_tokens=16384, pad_id=0):
    """embed_ids with every DDP process taking a share; all get every embedding."""
    if ctx is None or not ctx.enabled:
        return embed_ids(model, id_lists, device, precision, max_tokens, pad_id)
    from .distributed import all_gather_objects
    mine = list(range(ctx.rank, len(id_lists), ctx.world_size))
    emb = embed_ids(model, [id_lists[i] for i in mine], device, precision, max_tokens, pad_id)
    parts = all_gather_objects(ctx, (mine, emb.numpy()))
    full = [None] * len(id_lists)
    for indices, rows in parts:
        for i, row in zip(indices, rows):
            full[i] = torch.from_numpy(row)
    return torch.stack(full)
