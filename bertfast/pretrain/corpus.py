"""The text corpus of a pretraining run, tokenized once into a memory-mapped token cache.

Inputs: plain-text files or folders of them (one document per line, or, when a file has blank
lines, documents separated by blank lines, each line of a document one segment), or JSONL files
(`.jsonl`, `.ndjson`) with a string field `text`. Folders are read recursively, hidden files
skipped, in sorted order.

The cache (a folder `<label>-<fingerprint>` under the cache root, by default `.bertfast-cache/`
beside the output folder) holds:

    tokens.bin     every token id of every segment, no special tokens (uint16, or int32 for
                   vocabularies over 65,535), read through numpy.memmap: a corpus larger than
                   memory streams
    segments.npy   int64 start of each segment in tokens.bin, and the end (S + 1 entries)
    documents.npy  int64 first segment of each document, and S (D + 1 entries)
    meta.json      the fingerprint, the counts and what was skipped

The fingerprint covers every file's path, size and modification time, the tokenizer's full
definition and this format's version: the cache is reused while all of them are unchanged and
rebuilt (the stale folder removed) when one changes. It is written under a temporary name and
renamed when complete, so a kill never leaves a half cache behind.
"""
import hashlib
from array import array
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np

from .._files import atomic_write_json, fsync_dir, fsync_tree
from ..finetune.data import DataError

FORMAT_VERSION = 1
JSONL_SUFFIXES = (".jsonl", ".ndjson")
ENCODE_CHUNK = 4096  # segments per encode_batch call (the tokenizers library runs each in parallel)


def corpus_files(paths):
    """[(file, named)]: each given file (named=True) and the files under each given folder."""
    files = []
    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"corpus path {path} does not exist")
        if os.path.isfile(path):
            files.append((os.path.abspath(path), True))
            continue
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [(os.path.abspath(os.path.join(root, n)), False) for n in sorted(names) if not n.startswith(".")]
    if not files:
        raise DataError(f"the corpus {' '.join(paths)} has no files")
    return files


def _decoded_lines(path):
    """(line number, text) of each line, strictly UTF-8; a bad byte is named by line and offset."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte offset "
                                f"{offset + e.start} of the file); convert it to UTF-8 first") from None
            offset += len(raw)


def _has_blank_line(path):
    seen_text = False
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                seen_text = True
            elif seen_text:
                return True
    return False


def _text_documents(path):
    """Documents (lists of segment strings) of a plain-text file."""
    if not _has_blank_line(path):
        for _, line in _decoded_lines(path):
            if line.strip():
                yield [line.strip()]
        return
    document = []
    for _, line in _decoded_lines(path):
        if line.strip():
            document.append(line.strip())
        elif document:
            yield document
            document = []
    if document:
        yield document


def _jsonl_documents(path, skipped):
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}, line {number}: not a JSON object ({e})") from None
        text = record.get("text") if isinstance(record, dict) else None
        segments = [s.strip() for s in text.splitlines() if s.strip()] if isinstance(text, str) else []
        if segments:
            yield segments
        else:
            skipped["records without text"] = skipped.get("records without text", 0) + 1


def read_documents(path, skipped):
    """Documents of one corpus file; `skipped` counts what was left out."""
    if path.lower().endswith(JSONL_SUFFIXES):
        return _jsonl_documents(path, skipped)
    return _text_documents(path)


def fingerprint(files, tokenizer):
    """Of the corpus files (path, size, mtime) and the tokenizer's full definition."""
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "text_field": "text"}).encode())
    for path, _ in files:
        st = os.stat(path)
        h.update(json.dumps([path, st.st_size, st.st_mtime_ns]).encode())
    h.update(tokenizer.to_str().encode())
    return h.hexdigest()[:20]


@dataclass
class TokenCache:
    """A corpus as token ids: tokens (memmap), segment starts, document first segments."""
    folder: str
    tokens: np.ndarray
    segments: np.ndarray
    documents: np.ndarray
    meta: dict

    @property
    def n_tokens(self):
        return int(self.segments[-1])

    @property
    def n_documents(self):
        return len(self.documents) - 1

    def document_tokens(self, d):
        """(start, end) of document d in tokens."""
        return int(self.segments[self.documents[d]]), int(self.segments[self.documents[d + 1]])


def open_cache(folder):
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    n = meta["tokens"]
    tokens = np.memmap(os.path.join(folder, "tokens.bin"), dtype=meta["dtype"], mode="r", shape=(n,)) if n \
        else np.zeros(0, dtype=meta["dtype"])
    return TokenCache(folder, tokens, np.load(os.path.join(folder, "segments.npy")),
                      np.load(os.path.join(folder, "documents.npy")), meta)


def token_cache(paths, tokenizer, cache_root, label, log=print):
    """The TokenCache of the corpus at `paths`: reused when its fingerprint matches, else built
    (and other caches of the same label removed). Bad input raises DataError before anything
    is kept."""
    files = corpus_files(paths)
    key = fingerprint(files, tokenizer)
    folder = os.path.join(cache_root, f"{label}-{key}")
    if os.path.exists(os.path.join(folder, "meta.json")):
        cache = open_cache(folder)
        log(f"{label}: token cache {folder} reused ({_counts(cache.meta)})")
        return cache
    os.makedirs(cache_root, exist_ok=True)
    tmp = os.path.join(cache_root, f".{label}-{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        meta = _build(files, tokenizer, tmp, key)
        fsync_tree(tmp)
        os.replace(tmp, folder)
        fsync_dir(cache_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale(cache_root, label, folder)
    log(f"{label}: tokenized {' '.join(paths)} into {folder} ({_counts(meta)})")
    return open_cache(folder)


def _counts(meta):
    skipped = "".join(f", {n:,} {what} skipped" for what, n in meta["skipped"].items())
    return f"{meta['documents']:,} documents, {meta['segments']:,} segments, {meta['tokens']:,} tokens{skipped}"


def _remove_stale(cache_root, label, keep):
    for name in os.listdir(cache_root):
        path = os.path.join(cache_root, name)
        if name.startswith(f"{label}-") and path != keep and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


class _Writer:
    """Appends the encoded segments of documents to tokens.bin, keeping their offsets."""

    def __init__(self, folder, tokenizer):
        self.tokenizer = tokenizer
        self.dtype = np.uint16 if tokenizer.get_vocab_size() <= 65535 else np.int32
        self.file = open(os.path.join(folder, "tokens.bin"), "wb")
        self.segments, self.documents = array("q", [0]), array("q", [0])  # 8 bytes an entry
        self.pending, self.pending_segments = [], 0
        self.n_tokens, self.empty_documents = 0, 0

    def add(self, document):
        self.pending.append(document)
        self.pending_segments += len(document)
        if self.pending_segments >= ENCODE_CHUNK:
            self.flush()

    def flush(self):
        texts = [s for d in self.pending for s in d]
        encodings = iter(self.tokenizer.encode_batch(texts, add_special_tokens=False)) if texts else iter(())
        for document in self.pending:
            ids = [e.ids for e in (next(encodings) for _ in document)]
            ids = [x for x in ids if x]
            if not ids:
                self.empty_documents += 1
                continue
            for seg in ids:
                self.file.write(np.asarray(seg, dtype=self.dtype).tobytes())
                self.n_tokens += len(seg)
                self.segments.append(self.n_tokens)
            self.documents.append(len(self.segments) - 1)
        self.pending, self.pending_segments = [], 0

    def close(self):
        self.flush()
        self.file.close()


def _build(files, tokenizer, folder, key):
    writer, skipped = _Writer(folder, tokenizer), {}
    empty_in_folders = []
    for path, named in files:
        before = len(writer.documents) + len(writer.pending)
        for document in read_documents(path, skipped):
            writer.add(document)
        if len(writer.documents) + len(writer.pending) == before:
            if named:
                raise DataError(f"{path}: no usable text (the file is empty or holds only blank lines"
                                + (" or records without a string 'text' field)" if path.lower().endswith(JSONL_SUFFIXES) else ")"))
            empty_in_folders.append(path)
    writer.close()
    if empty_in_folders:
        skipped["files without text"] = len(empty_in_folders)
    if writer.empty_documents:
        skipped["documents with no tokens"] = writer.empty_documents
    if writer.n_tokens == 0:
        raise DataError(f"the corpus ({len(files)} files) holds no text to train on")
    np.save(os.path.join(folder, "segments.npy"), np.frombuffer(writer.segments, dtype=np.int64))
    np.save(os.path.join(folder, "documents.npy"), np.frombuffer(writer.documents, dtype=np.int64))
    meta = {"fingerprint": key, "files": [p for p, _ in files], "dtype": np.dtype(writer.dtype).name,
            "tokens": writer.n_tokens, "segments": len(writer.segments) - 1, "documents": len(writer.documents) - 1,
            "skipped": skipped}
    atomic_write_json(os.path.join(folder, "meta.json"), meta)
    return meta
