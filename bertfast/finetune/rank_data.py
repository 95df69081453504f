"""Data of `--task rank` and of `bertfast embed`/`search`: query files (JSONL/CSV, one query a
line: {"query", "positive": str or [str], "negatives": [str]}), document corpora (JSONL/CSV
{"id", "text"} or plain text, one document a line), and the table that numbers distinct
documents. Every problem is a DataError naming the file and line."""
import json
import os
from dataclasses import dataclass, field
from typing import List

from .data.readers import DataError, check_readable, read_table, where

QUERY_COLUMNS = ("query", "question", "anchor")
POSITIVE_COLUMNS = ("positive", "positives", "document", "context", "passage")
NEGATIVE_COLUMNS = ("negatives", "negative", "hard_negatives")


@dataclass
class RankExample:
    line: int
    query: str
    positives: List[str]
    negatives: List[str] = field(default_factory=list)


def _column(path, header, given, candidates, flag, required=True):
    if given is not None:
        if given not in header:
            raise DataError(f"{path}: no column {given!r} (given by {flag}); the columns are {header}")
        return given
    found = next((c for c in candidates if c in header), None)
    if found is None and required:
        raise DataError(f"{path}: cannot find a column {' or '.join(map(repr, candidates))} among {header}; "
                        f"name it with {flag}")
    return found


def _texts(path, line, value, column, allow_empty_list=False):
    """A text or a list of texts (CSV cells may hold a JSON list)."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DataError(f"{where(path, line)}: {column!r} must be a text or a list of texts, got {value!r:.60}")
    if any(not v.strip() for v in values) or (not values and not allow_empty_list):
        raise DataError(f"{where(path, line)}: {column!r} is empty")
    return values


def read_rank_file(path, query_column=None, positive_column=None, negatives_column=None):
    """RankExamples of a query file; checks that no positive of a query is also its negative."""
    header, rows = read_table(path)
    qc = _column(path, header, query_column, QUERY_COLUMNS, "--query-column")
    pc = _column(path, header, positive_column, POSITIVE_COLUMNS, "--positive-column")
    nc = _column(path, header, negatives_column, NEGATIVE_COLUMNS, "--negatives-column", required=False)
    examples = []
    for line, row in rows:
        if row.get(qc) is None or row.get(pc) is None:
            raise DataError(f"{where(path, line)}: no {qc if row.get(qc) is None else pc!r}")
        query = _texts(path, line, row[qc], qc)
        if len(query) != 1:
            raise DataError(f"{where(path, line)}: {qc!r} must be one text")
        positives = list(dict.fromkeys(_texts(path, line, row[pc], pc)))
        negatives = []
        if nc is not None and row.get(nc) not in (None, ""):
            negatives = list(dict.fromkeys(_texts(path, line, row[nc], nc, allow_empty_list=True)))
        both = set(positives) & set(negatives)
        if both:
            raise DataError(f"{where(path, line)}: the text {next(iter(both))[:60]!r} is both a positive and a "
                            "negative of this query")
        examples.append(RankExample(line, query[0], positives, negatives))
    return examples


def read_corpus(path, id_column=None, text_column=None):
    """(ids, texts) of a corpus: JSONL/CSV with an id and a text column, or plain text (.txt), one
    document a line, its id the line number. Duplicate ids and empty texts are errors."""
    check_readable(path, "corpus")
    if os.path.splitext(path.lower())[1] in (".txt", ".text"):
        with open(path, encoding="utf-8-sig") as f:
            rows = [(n, {"id": str(n), "text": t.rstrip("\n")}) for n, t in enumerate(f, 1) if t.strip()]
        header = ["id", "text"]
    else:
        header, rows = read_table(path)
    ic = _column(path, header, id_column, ("id", "_id", "doc_id", "docid", "pid"), "--id-column")
    tc = _column(path, header, text_column, ("text", "contents", "passage", "document", "body"), "--text-column")
    ids, texts, seen = [], [], {}
    for line, row in rows:
        doc_id, text = row.get(ic), row.get(tc)
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            raise DataError(f"{where(path, line)}: no {ic!r}")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where(path, line)}: {tc!r} is missing or empty")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise DataError(f"{where(path, line)}: duplicate id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = line
        ids.append(doc_id)
        texts.append(text)
    return ids, texts


class DocTable:
    """Distinct documents, numbered in order of first appearance (the same text, one number)."""

    def __init__(self):
        self.index, self.ids, self.texts = {}, [], []

    def add(self, text, doc_id=None):
        if text not in self.index:
            self.index[text] = len(self.texts)
            self.texts.append(text)
            self.ids.append(doc_id if doc_id is not None else f"doc-{len(self.texts)}")
        return self.index[text]

    def __len__(self):
        return len(self.texts)
