"""Retrieval: exact top-k search over normalised embeddings in chunks (memory-bounded), and the
usual metrics of a ranking against each query's relevant documents (binary relevance):
MRR@10, Recall@1/10/100 (the share of a query's relevant documents in its top k, as BEIR), nDCG@10."""
import math

import torch

CHUNK = 65536  # corpus rows scored at once: queries x CHUNK float32 scores


def top_k(queries, corpus, k, chunk=CHUNK):
    """(scores, indices), each (queries, min(k, corpus)): the best documents by dot product,
    best first (ties: the lower index first)."""
    k = min(k, corpus.shape[0])
    best_scores = queries.new_full((queries.shape[0], 0), float("-inf"))
    best_index = torch.zeros((queries.shape[0], 0), dtype=torch.long)
    for start in range(0, corpus.shape[0], chunk):
        scores = queries.float() @ corpus[start:start + chunk].float().T
        s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1, sorted=True)
        best_scores, order = torch.cat([best_scores, s], 1), torch.cat([best_index, i + start], 1)
        s, keep = torch.topk(best_scores, min(k, best_scores.shape[1]), dim=1, sorted=True)
        best_scores, best_index = s, order.gather(1, keep)
    return best_scores, best_index


def ranking_metrics(rankings, relevant):
    """rankings: per query a list of document indices, best first (at least 100 where the corpus
    has them); relevant: per query a set of document indices."""
    totals = {"mrr@10": 0.0, "recall@1": 0.0, "recall@10": 0.0, "recall@100": 0.0, "ndcg@10": 0.0}
    for ranked, rel in zip(rankings, relevant):
        ranked = list(ranked)
        hits = [d in rel for d in ranked]
        first = next((r for r, h in enumerate(hits[:10]) if h), None)
        totals["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
        for k in (1, 10, 100):
            totals[f"recall@{k}"] += sum(hits[:k]) / len(rel)
        dcg = sum(1.0 / math.log2(r + 2) for r, h in enumerate(hits[:10]) if h)
        ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(rel), 10)))
        totals["ndcg@10"] += dcg / ideal
    n = max(len(rankings), 1)
    return {k: v / n for k, v in totals.items()}
