"""The token cache (formats, reuse, invalidation, bad input) and the examples cut from it: blocks
keep every token exactly once, long lines are split, sentence pairs are well formed."""
import json
import os

import numpy as np
import pytest

from bertfast.finetune.data import DataError
from bertfast.pretrain.blocks import MLMBlocks, NSPPairs
from bertfast.pretrain.corpus import token_cache

from pretrain_helpers import tokenizer

TEXT = "The cat sat on the mat.\nIt was a sunny day in Paris.\n\nA second document starts here.\nIt has two lines.\n"


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def build(tmp_path, paths, tok, messages=None):
    return token_cache([str(p) for p in paths], tok.tokenizer, str(tmp_path / "cache"), "t",
                       (messages if messages is not None else []).append)


def test_formats_documents_and_segments(tmp_path, tok):
    (tmp_path / "blank.txt").write_text(TEXT)
    (tmp_path / "lines.txt").write_text("one document\nanother document\n")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "json one.\njson two."}) + "\n"
                                         + json.dumps({"title": "no text"}) + "\n")
    messages = []
    cache = build(tmp_path, [tmp_path / "blank.txt", tmp_path / "lines.txt", tmp_path / "docs.jsonl"], tok, messages)
    assert cache.n_documents == 2 + 2 + 1
    assert np.diff(cache.documents).tolist() == [2, 2, 1, 1, 2]       # segments per document
    first = tok.tokenizer.encode("The cat sat on the mat.", add_special_tokens=False).ids
    assert cache.tokens[:len(first)].tolist() == first
    assert "1 records without text skipped" in messages[0]


def test_cache_reused_and_invalidated(tmp_path, tok):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    messages = []
    a = build(tmp_path, [corpus], tok, messages)
    b = build(tmp_path, [corpus], tok, messages)
    assert a.folder == b.folder and "reused" in messages[1] and "tokenized" in messages[0]
    corpus.write_text(TEXT + "One more line.\n")
    c = build(tmp_path, [corpus], tok, messages)
    assert c.folder != a.folder and "tokenized" in messages[2] and c.n_tokens > a.n_tokens
    assert not os.path.exists(a.folder)                                # the stale cache is gone
    other_tok = tokenizer()
    other_tok.tokenizer.add_tokens(["sunnyday"])                        # another tokenizer: another cache
    d = build(tmp_path, [corpus], other_tok, messages)
    assert d.folder != c.folder
    assert not [n for n in os.listdir(tmp_path / "cache") if "tmp" in n]


@pytest.mark.parametrize("max_length", [8, 16, 128])
def test_blocks_keep_every_token_exactly_once(tmp_path, tok, max_length):
    long_line = " ".join(f"word{i}" for i in range(300))               # far longer than a block
    (tmp_path / "c.txt").write_text(TEXT + "\n" + long_line + "\n")
    cache = build(tmp_path, [tmp_path / "c.txt"], tok)
    blocks = MLMBlocks(cache, max_length, tok.cls_id, tok.sep_id)
    body = []
    for i in range(len(blocks)):
        ids = blocks.block(i)
        assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and len(ids) <= max_length
        assert len(ids) == blocks.lengths[i]
        body += ids[1:-1].tolist()
    # the stream: documents joined by one [SEP]
    docs = [cache.tokens[slice(*cache.document_tokens(d))].tolist() for d in range(cache.n_documents)]
    stream = docs[0]
    for d in docs[1:]:
        stream = stream + [tok.sep_id] + d
    assert body == stream
    assert all(len(blocks.block(i)) == max_length for i in range(len(blocks) - 1))


def test_sentence_pairs(tmp_path, tok):
    lines = "\n".join(f"Sentence number {i} of document {d}." for i in range(12) for d in [0]) + "\n\n" + \
        "\n".join(f"Other text {i} here." for i in range(12)) + "\n"
    (tmp_path / "c.txt").write_text(lines)
    cache = build(tmp_path, [tmp_path / "c.txt"], tok)
    pairs = NSPPairs(cache, 32, tok.cls_id, tok.sep_id, seed=1)
    labels = []
    for i in range(len(pairs)):
        ids, types, label = pairs.example(i)
        assert len(ids) <= 32 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
        assert (ids == tok.sep_id).sum() == 2 and types[0] == 0 and types[-1] == 1
        assert types.tolist() == sorted(types.tolist())
        labels.append(label)
    assert set(labels) == {0, 1}
    again = NSPPairs(cache, 32, tok.cls_id, tok.sep_id, seed=1)
    assert (again.pairs == pairs.pairs).all()


def test_bad_input(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match="empty.txt: no usable text"):
        build(tmp_path, [tmp_path / "empty.txt"], tok)
    (tmp_path / "bad.txt").write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad.txt, line 2: not UTF-8 text \(byte 0xff at byte offset 14"):
        build(tmp_path, [tmp_path / "bad.txt"], tok)
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="has no files"):
        build(tmp_path, [tmp_path / "folder"], tok)
    (tmp_path / "folder" / "a.txt").write_text("")
    with pytest.raises(DataError, match="holds no text"):
        build(tmp_path, [tmp_path / "folder"], tok)
    (tmp_path / "folder" / "b.txt").write_text("some text\n")
    messages = []
    cache = build(tmp_path, [tmp_path / "folder"], tok, messages)   # an empty file inside a folder: counted
    assert cache.n_documents == 1 and "1 files without text skipped" in messages[0]
    with pytest.raises(DataError, match="does not exist"):
        build(tmp_path, [tmp_path / "missing.txt"], tok)
    assert not [n for n in os.listdir(tmp_path / "cache") if "tmp" in n]
