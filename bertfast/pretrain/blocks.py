"""Training examples cut from a TokenCache.

MLM blocks (the `group_texts` recipe of transformers' run_mlm, with BERT's specials): the
documents are joined into one stream with a [SEP] between consecutive documents, the stream is
cut into pieces of max_length - 2 tokens, and each piece becomes `[CLS] piece [SEP]`. Every
token of the corpus is in exactly one block; the last block may be shorter; a line longer than a
block simply continues into the next. Blocks are computed from the memory-mapped tokens when
asked for, never held in memory.

NSP pairs (BERT's create_instances_from_document): each document is walked segment by segment,
segments gathered until they fill max_length - 3 tokens, split at a random segment boundary
into A and B; half the time B is replaced by text from a random other document (label 1,
"not next"). A pair longer than the budget loses tokens from the end of its longer side (their
number is counted); a segment longer than the budget is split into budget-sized pieces. The
pairs are drawn once from the seed.
"""
import numpy as np

NOT_NEXT = 1  # next_sentence_label of a random B (transformers' convention: 0 = B follows A)


class MLMBlocks:
    """len(), lengths (with specials) and block(i) -> int64 ids `[CLS] ... [SEP]`."""

    def __init__(self, cache, max_length, cls_id, sep_id):
        if max_length < 3:
            raise ValueError(f"--max-length must be at least 3 for [CLS] x [SEP], got {max_length}")
        self.cache, self.piece, self.cls_id, self.sep_id = cache, max_length - 2, cls_id, sep_id
        starts = cache.segments[cache.documents]          # token start of each document, and the end
        self.doc_starts = starts
        self.stream_starts = starts[:-1] + np.arange(len(starts) - 1)   # a [SEP] before each but the first
        self.stream_length = int(starts[-1]) + len(starts) - 2
        self.n = -(-self.stream_length // self.piece)

    def __len__(self):
        return self.n

    @property
    def lengths(self):
        last = self.stream_length - (self.n - 1) * self.piece
        return [self.piece + 2] * (self.n - 1) + [last + 2]

    def block(self, i):
        lo, hi = i * self.piece, min((i + 1) * self.piece, self.stream_length)
        p = np.arange(lo, hi)
        d = np.searchsorted(self.stream_starts, p, side="right") - 1
        raw = p - d
        separator = raw == self.doc_starts[d + 1]
        first, last = int(raw[0]), int(raw[-1]) + 1
        chunk = np.asarray(self.cache.tokens[first:last], dtype=np.int64)
        body = np.where(separator, self.sep_id, chunk[np.minimum(raw - first, len(chunk) - 1)])
        return np.concatenate([[self.cls_id], body, [self.sep_id]]).astype(np.int64)

    def example(self, i):
        """(ids, token types, next-sentence label or None)."""
        ids = self.block(i)
        return ids, np.zeros_like(ids), None


class NSPPairs:
    """Sentence pairs `[CLS] A [SEP] B [SEP]` with token types 0/1 and a next-sentence label."""

    def __init__(self, cache, max_length, cls_id, sep_id, seed):
        if max_length < 5:
            raise ValueError(f"--max-length must be at least 5 for sentence pairs, got {max_length}")
        if cache.n_documents < 2:
            raise ValueError("--nsp needs at least two documents (random next sentences come from other documents)")
        self.cache, self.cls_id, self.sep_id = cache, cls_id, sep_id
        self.pairs, self.truncated = _draw_pairs(cache, max_length - 3, np.random.default_rng([seed, 0x45]))

    def __len__(self):
        return len(self.pairs)

    @property
    def lengths(self):
        p = self.pairs
        return ((p[:, 1] - p[:, 0]) + (p[:, 3] - p[:, 2]) + 3).tolist()

    def example(self, i):
        a0, a1, b0, b1, label = (int(x) for x in self.pairs[i])
        tokens = self.cache.tokens
        a, b = np.asarray(tokens[a0:a1], dtype=np.int64), np.asarray(tokens[b0:b1], dtype=np.int64)
        ids = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]]).astype(np.int64)
        types = np.concatenate([np.zeros(len(a) + 2, np.int64), np.ones(len(b) + 1, np.int64)])
        return ids, types, label


def _pieces(cache, d, budget):
    """(start, end) token ranges of document d's segments, each at most `budget` long."""
    out = []
    for s in range(int(cache.documents[d]), int(cache.documents[d + 1])):
        lo, hi = int(cache.segments[s]), int(cache.segments[s + 1])
        out += [(x, min(x + budget, hi)) for x in range(lo, hi, budget)]
    return out


def _random_b(cache, d, length, budget, rng):
    """A contiguous range of about `length` tokens from a random document other than d."""
    other = int(rng.integers(cache.n_documents - 1))
    other += other >= d
    start, end = cache.document_tokens(other)
    first = int(rng.integers(start, max(start + 1, end - length)))
    return first, min(end, first + max(1, length), first + budget)


def _truncate(a, b, budget):
    """Drop tokens from the end of the longer side until the pair fits; returns (a, b, dropped)."""
    (a0, a1), (b0, b1) = a, b
    dropped = 0
    while (a1 - a0) + (b1 - b0) > budget:
        if a1 - a0 > b1 - b0:
            a1 -= 1
        else:
            b1 -= 1
        dropped += 1
    return (a0, a1), (b0, b1), dropped


def _draw_pairs(cache, budget, rng):
    """(array of (a0, a1, b0, b1, label), tokens dropped by truncation)."""
    pairs, dropped = [], 0
    for d in range(cache.n_documents):
        pieces, chunk = _pieces(cache, d, budget), []
        for j, piece in enumerate(pieces):
            chunk.append(piece)
            if j == len(pieces) - 1 or sum(e - s for s, e in chunk) >= budget:
                pair, lost = _pair(cache, d, chunk, budget, rng)
                pairs.append(pair)
                dropped += lost
                chunk = []
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 5), dropped


def _pair(cache, d, chunk, budget, rng):
    split = int(rng.integers(1, len(chunk))) if len(chunk) > 1 else 1
    a = (chunk[0][0], chunk[split - 1][1])
    if split == len(chunk) or rng.random() < 0.5:
        b, label = _random_b(cache, d, budget - (a[1] - a[0]), budget, rng), NOT_NEXT
    else:
        b, label = (chunk[split][0], chunk[-1][1]), 0
    a, b, lost = _truncate(a, b, budget)
    return (*a, *b, label), lost
