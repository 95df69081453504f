"""`bertfast embed` and `bertfast search`: a corpus embedded by a bi-encoder (a model made by
`--task rank`, or a sentence-embedding checkpoint) into a safetensors (or .npy) file with its ids,
and exact top-k search of queries against it, in chunks.

The embeddings file: tensor `embeddings` (documents, dim) float32 (L2-normalised), and `ids` and
`texts` as UTF-8 JSON in uint8 tensors (so the file has no header size limit, and search can
show and re-rank the documents without the corpus file); its metadata names the model (`model_digest`), pooling and dimension. A
.npy output holds the array, its ids and metadata in FILE.npy.json beside it."""
import hashlib
import json
import os
import sys

import numpy as np
import torch

from .._files import atomic_write, atomic_write_json
from .bi_encoder import embed_ids
from .data.readers import DataError
from .rank import load_bi_encoder, model_settings, tokenize, _tokenizer
from .rank_data import read_corpus
from .retrieval_metrics import top_k

READ_CHUNK = 8192    # documents tokenized and embedded at a time


def model_digest(model_dir):
    """An id of a model's weights and pooling: config, pooling config and the weights files'
    sizes, first and last MiB (fast for large files, changes with any training)."""
    h = hashlib.sha256()
    for name in ("config.json", os.path.join("1_Pooling", "config.json"), "model.safetensors", "pytorch_model.bin"):
        path = os.path.join(model_dir, name)
        if not os.path.exists(path):
            continue
        size = os.path.getsize(path)
        h.update(f"{name}:{size}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:32]


class Encoder:
    """A model folder ready to embed texts: tokenizer, BiEncoder, lengths, device."""

    def __init__(self, model_dir, device, precision="fp32", max_length=None, max_tokens=16384):
        from .distributed import resolve_device
        self.device, self.precision, self.max_tokens = resolve_device(device), precision, max_tokens
        self.tok = _tokenizer(model_dir)
        _, self.doc_length, self.query_length = model_settings(model_dir, max_length)
        self.model, _ = load_bi_encoder(model_dir)
        self.model.to(self.device).eval()
        self.digest, self.model_dir = model_digest(model_dir), os.path.abspath(model_dir)

    def embed(self, texts, query=False, progress=None):
        ids, truncated = tokenize(self.tok, texts, self.query_length if query else self.doc_length)
        emb = embed_ids(self.model, ids, self.device, self.precision, self.max_tokens, self.tok.pad_id, progress)
        return emb, truncated

    @property
    def metadata(self):
        return {"model_digest": self.digest, "model": self.model_dir, "pooling": "+".join(self.model.modes),
                "dim": str(self.model.encoder.config.hidden_size * len(self.model.modes)), "normalized": "true"}


def embed_corpus(encoder, texts, progress=True):
    """(documents, dim) float32 embeddings, READ_CHUNK documents at a time, with a progress bar."""
    from tqdm import tqdm
    bar = tqdm(total=len(texts), desc="embed", unit="doc", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    parts, truncated = [], 0
    for start in range(0, len(texts), READ_CHUNK):
        emb, t = encoder.embed(texts[start:start + READ_CHUNK], progress=bar.update)
        parts.append(emb.numpy())
        truncated += t
    bar.close()
    return np.concatenate(parts), truncated


def _json_tensor(obj):
    return torch.frombuffer(bytearray(json.dumps(obj, ensure_ascii=False).encode()), dtype=torch.uint8)


def write_embeddings(path, embeddings, ids, texts, metadata):
    """The embeddings file (safetensors, or .npy with a .json beside it), written atomically."""
    if path.lower().endswith(".npy"):
        atomic_write_json(path + ".json", {**metadata, "ids": ids, "texts": texts})
        atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), embeddings))
        return
    if not path.lower().endswith(".safetensors"):
        raise DataError(f"--output {path}: name it .safetensors or .npy")
    from safetensors.torch import save_file
    tensors = {"embeddings": torch.from_numpy(np.ascontiguousarray(embeddings)), "ids": _json_tensor(ids),
               "texts": _json_tensor(texts)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_embeddings(path):
    """(embeddings tensor, ids, texts, metadata) of a file made by write_embeddings."""
    if not os.path.exists(path):
        raise DataError(f"embeddings file {path} does not exist")
    try:
        if path.lower().endswith(".npy"):
            with open(path + ".json") as f:
                meta = json.load(f)
            return torch.from_numpy(np.load(path)), meta.pop("ids"), meta.pop("texts"), meta
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            emb, ids, texts = (f.get_tensor(k) for k in ("embeddings", "ids", "texts"))
    except (OSError, ValueError, KeyError, Exception) as e:
        raise DataError(f"{path}: not an embeddings file made by `bertfast embed` ({e})") from None
    return emb, json.loads(bytes(ids.numpy())), json.loads(bytes(texts.numpy())), meta


def check_same_model(path, meta, emb, encoder):
    """An embeddings file must come from this model: same dimension and model digest."""
    dim = int(encoder.metadata["dim"])
    if emb.shape[1] != dim:
        raise DataError(f"{path}: embeddings of dimension {emb.shape[1]}, but --model {encoder.model_dir} "
                        f"makes {dim}: the file was made by another model")
    if meta.get("model_digest") not in (None, encoder.digest):
        raise DataError(f"{path}: made by another model ({meta.get('model', '?')}), not --model "
                        f"{encoder.model_dir}; embed the corpus again with this model")


def corpus_for_search(path, encoder, progress=False):
    """(embeddings, ids, texts): from an embeddings file, or a text corpus embedded now."""
    if path.lower().endswith((".safetensors", ".npy")):
        emb, ids, texts, meta = read_embeddings(path)
        check_same_model(path, meta, emb, encoder)
        return emb, ids, texts
    ids, texts = read_corpus(path)
    emb, _ = embed_corpus(encoder, texts, progress)
    return torch.from_numpy(emb), ids, texts


def search(encoder, queries, corpus_emb, k):
    """Per query a list of (document row, score), best first."""
    q, _ = encoder.embed(queries, query=True)
    scores, index = top_k(q, corpus_emb, k)
    return [list(zip(i.tolist(), s.tolist())) for i, s in zip(index, scores)]


def rerank(model_dir, query, hits, texts, device, precision="fp32"):
    """hits [(row, score)] re-scored by a cross-encoder made by `finetune --task pair` (the
    probability of its relevant class: "1", "entailment", "relevant", else the last) or
    `--task regress` (its score), best first."""
    from . import evaluation
    from .data import TextExample
    from .distributed import resolve_device
    from .predict import _load, _task_info
    from .tokenization import encode_examples
    device = resolve_device(device)
    info, task = _task_info(model_dir, None)
    tok, model, labels, max_length = _load(model_dir, info, task, device, None)
    if task not in ("pair", "regress"):
        raise DataError(f"--rerank {model_dir}: a cross-encoder made by --task pair or regress, not {task}")
    examples = [TextExample(i, query, texts[row], None) for i, (row, _) in enumerate(hits)]
    features, _ = encode_examples(task, tok, examples, max_length)
    outputs = evaluation.model_outputs(model, task, features, 64, device, precision, tok.pad_id)
    if task == "regress":
        scores = [float(o[0]) for o in outputs]
    else:
        k = next((labels.index(n) for n in ("1", "entailment", "relevant", "positive") if n in labels), len(labels) - 1)
        scores = [float(evaluation.softmax(o.astype(np.float64))[k]) for o in outputs]
    return sorted(((row, s) for (row, _), s in zip(hits, scores)), key=lambda x: -x[1])
