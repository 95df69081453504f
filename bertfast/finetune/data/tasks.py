"""From data files to task examples: which columns hold the texts and labels, the label set
taken from the training file, and the checks that eval data fits it."""
import math
import re
from dataclasses import dataclass
from typing import List, Optional

from .readers import DataError, file_format, read_conll, read_squad, read_table, read_tagged_jsonl, where

TASKS = ("classify", "pair", "regress", "tag", "qa")

# Column names in common distributions (GLUE TSVs, Hugging Face datasets exports), tried in order
# when --text-column / --text-pair-column / --label-column are not given.
TEXT_COLUMNS = ["text", "sentence", "review", "content", "tweet"]
PAIR_COLUMNS = [("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
                ("#1 String", "#2 String"), ("premise", "hypothesis"), ("text_a", "text_b"),
                ("text", "text_pair"), ("question", "context")]
LABEL_COLUMNS = ["label", "labels", "score", "gold_label", "Quality", "category", "target"]
# Regression targets must stay finite in float32 once squared by the MSE loss.
MAX_REGRESSION_LABEL = 1e15
INTEGER = re.compile(r"-?[0-9]+")


@dataclass
class TextExample:
    line: int
    text: str
    text_pair: Optional[str]
    label: object  # str for classify/pair, float for regress, None when the file has no labels


@dataclass
class TagExample:
    line: int
    tokens: List[str]
    tags: Optional[List[str]]


@dataclass
class Columns:
    text: Optional[str] = None
    text_pair: Optional[str] = None
    label: Optional[str] = None


def _pick(path, header, given, candidates, what, flag):
    if given is not None:
        if given not in header:
            raise DataError(f"{path}: no column {given!r} (given by {flag}); the columns are {header}")
        return given
    for name in candidates:
        if name in header:
            return name
    return None


def resolve_columns(task, path, header, columns, need_labels):
    """Columns actually used in this file: the given names, else the first usual name present."""
    text = _pick(path, header, columns.text, [], "text", "--text-column")
    pair = _pick(path, header, columns.text_pair, [], "second text", "--text-pair-column")
    wants_pair = task == "pair" or (task == "regress" and (pair is not None or text is None))
    if text is None or (wants_pair and pair is None):
        for a, b in PAIR_COLUMNS if wants_pair else []:
            if a in header and b in header and (text in (None, a)):
                text, pair = a, b
                break
        if text is None:
            text = _pick(path, header, None, TEXT_COLUMNS, "text", "--text-column")
    if text is None:
        raise DataError(f"{path}: cannot find the text column among {header}; name it with --text-column")
    if task == "pair" and pair is None:
        raise DataError(f"{path}: a pair task needs two text columns; found {header}. "
                        "Name them with --text-column and --text-pair-column")
    label = _pick(path, header, columns.label, LABEL_COLUMNS, "label", "--label-column")
    if need_labels and label is None:
        raise DataError(f"{path}: cannot find the label column among {header}; name it with --label-column")
    return Columns(text, pair if task != "classify" else None, label)


def load_examples(task, path, columns=None, need_labels=True):
    """Examples of `task` from `path`. need_labels=False (prediction) accepts files without labels."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "qa":
        return read_squad(path, need_answers=need_labels)
    if task == "tag":
        fmt = file_format(path)
        if fmt == "jsonl":
            rows = read_tagged_jsonl(path, need_tags=need_labels)
        elif fmt == "conll":
            rows = read_conll(path, need_tags=need_labels)
        else:
            raise DataError(f"{path}: tagging data must be CoNLL columns (.conll/.txt) or .jsonl, not {fmt}")
        return [TagExample(line, tokens, tags) for line, tokens, tags in rows]
    header, rows = read_table(path)
    cols = resolve_columns(task, path, header, columns or Columns(), need_labels)
    examples = []
    for line, row in rows:
        text = _text_field(path, line, row, cols.text)
        pair = _text_field(path, line, row, cols.text_pair) if cols.text_pair else None
        label = None
        if cols.label is not None and cols.label in row:
            label = _label_field(task, path, line, row[cols.label], cols.label, need_labels)
        elif need_labels:
            raise DataError(f"{where(path, line)}: no value for the label column {cols.label!r}")
        examples.append(TextExample(line, text, pair, label))
    return examples


def _text_field(path, line, row, column):
    value = row.get(column)
    if value is None:
        raise DataError(f"{where(path, line)}: no value for the column {column!r}")
    if not isinstance(value, str):
        raise DataError(f"{where(path, line)}: column {column!r} holds {type(value).__name__}, not text")
    if not value.strip():
        raise DataError(f"{where(path, line)}: column {column!r} is empty")
    return value


def _label_field(task, path, line, value, column, need_labels):
    if value is None or (isinstance(value, str) and not value.strip()):
        if need_labels:
            raise DataError(f"{where(path, line)}: the label column {column!r} is empty")
        return None
    if task == "regress":
        return _regression_label(path, line, value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where(path, line)}: label {value!r} must be a string or an integer")
    return str(value).strip()


def _regression_label(path, line, value):
    """A float of at most MAX_REGRESSION_LABEL in size: larger ones overflow the float32 loss."""
    if isinstance(value, bool):
        raise DataError(f"{where(path, line)}: regression label {value!r} is not a number")
    try:
        score = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where(path, line)}: regression label {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(score):
        raise DataError(f"{where(path, line)}: regression label {str(value)[:40]!r} is not finite")
    if abs(score) > MAX_REGRESSION_LABEL:
        raise DataError(f"{where(path, line)}: regression label {score:g} is too large (at most "
                        f"{MAX_REGRESSION_LABEL:g} in size; its squared error would overflow float32): rescale the scores")
    return score


def label_list(task, examples):
    """Sorted label names of a training set: numerically when they are all integers (so 0..K-1
    keep their ids), else alphabetically. None for regress and qa."""
    if task in ("regress", "qa"):
        return None
    if task == "tag":
        names = {t for ex in examples for t in ex.tags}
    else:
        names = {ex.label for ex in examples}
    if all(INTEGER.fullmatch(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def unseen_labels(task, examples, labels):
    """{label: how many tokens (tag) or examples carry it} for the labels of `examples` that are not in
    `labels` (the training set's). A model cannot predict those: evaluation counts them as errors."""
    if labels is None:
        return {}
    known, unseen = set(labels), {}
    for ex in examples:
        for t in (ex.tags or []) if task == "tag" else [ex.label]:
            if t is not None and t not in known:
                unseen[t] = unseen.get(t, 0) + 1
    return unseen


def describe_unseen(task, unseen):
    """One line for the log, or None."""
    if not unseen:
        return None
    what = "tokens" if task == "tag" else "examples"
    names = ", ".join(f"{name!r} ({n})" for name, n in sorted(unseen.items(), key=lambda kv: -kv[1])[:10])
    return (f"{sum(unseen.values())} {what} have labels that never occur in the training data, counted as errors: "
            f"{names}{' ...' if len(unseen) > 10 else ''}")


def check_known_labels(task, examples, labels, path):
    """Eval labels must all occur in training: a model cannot predict a class it never saw."""
    if labels is None:
        return
    known = set(labels)
    for ex in examples:
        seen = ex.tags if task == "tag" else [ex.label]
        unknown = [t for t in seen if t is not None and t not in known]
        if unknown:
            raise DataError(f"{where(path, ex.line)}: label {unknown[0]!r} does not occur in the training "
                            f"data (known labels: {', '.join(labels)})")
