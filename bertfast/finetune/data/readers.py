"""Readers for the file formats people bring: CSV, TSV (GLUE layout), JSONL, CoNLL columns and
SQuAD JSON. Each returns plain Python records with the line they came from, so that every later
complaint can name a line. Problems raise DataError with the file and line."""
import csv
import json
import os


class DataError(ValueError):
    """A problem with a data file the user gave: the message names the file and, where it can, the line."""


def where(path, line=None):
    return f"{path}, line {line}" if line is not None else str(path)


def check_readable(path, what="data file"):
    if not os.path.exists(path):
        raise DataError(f"{what} {path} does not exist")
    if os.path.isdir(path):
        raise DataError(f"{what} {path} is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{what} {path} is empty")


def file_format(path):
    """'csv', 'tsv', 'jsonl', 'json' or 'conll', from the file name."""
    name = path.lower()
    for suffix in (".gz", ".bz2"):
        if name.endswith(suffix):
            raise DataError(f"{path}: compressed files are not read directly; decompress it first")
    ext = os.path.splitext(name)[1]
    if ext in (".csv",):
        return "csv"
    if ext in (".tsv", ".tab"):
        return "tsv"
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext in (".conll", ".conllu", ".txt", ".iob", ".bio", ".ner"):
        return "conll"
    raise DataError(f"{path}: cannot tell the format from the extension {ext or '(none)'}; "
                    "use .csv, .tsv, .jsonl, .json (SQuAD) or .conll/.txt (token columns)")


def _open_text(path):
    return open(path, encoding="utf-8-sig", newline="")


def read_table(path):
    """CSV (quoted fields), TSV (GLUE layout: header row, no quoting) or JSONL -> (columns, rows),
    rows a list of (line_number, dict)."""
    check_readable(path)
    fmt = file_format(path)
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt not in ("csv", "tsv"):
        raise DataError(f"{path}: expected a .csv, .tsv or .jsonl file for this task, got {fmt}")
    rows = []
    with _open_text(path) as f:
        try:
            if fmt == "csv":
                reader = csv.reader(f)
            else:
                # GLUE's TSV files contain unbalanced quotes in their text: quoting must be off.
                reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if not header or all(not h.strip() for h in header):
                raise DataError(f"{path}: no header row")
            header = [h.strip() for h in header]
            header_line = reader.line_num
            for fields in reader:
                line = reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # blank line
                if len(fields) != len(header):
                    raise DataError(f"{where(path, line)}: {len(fields)} fields, but the header "
                                    f"(line {header_line}) has {len(header)}: {header}")
                rows.append((line, dict(zip(header, fields))))
        except csv.Error as e:
            raise DataError(f"{where(path, reader.line_num)}: malformed {fmt.upper()} ({e})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not rows:
        raise DataError(f"{path}: a header but no data rows")
    return header, rows


def _read_jsonl(path):
    rows, columns = [], []
    with _open_text(path) as f:
        try:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where(path, line)}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{where(path, line)}: expected a JSON object, got {type(obj).__name__}")
                for k in obj:
                    if k not in columns:
                        columns.append(k)
                rows.append((line, obj))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not rows:
        raise DataError(f"{path}: no JSON lines")
    return columns, rows


def read_conll(path, need_tags=True):
    """CoNLL columns: one token per line, its tag in the last column (whitespace separated),
    a blank line between sentences, -DOCSTART- lines skipped. Returns a list of
    (first_line, tokens, tags); tags is None when a line has a single column and need_tags is False."""
    check_readable(path)
    sentences, tokens, tags, first = [], [], [], None
    with _open_text(path) as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    for line, text in enumerate(lines + ["\n"], start=1):
        cols = text.split()
        if not cols or cols[0] == "-DOCSTART-":
            if tokens:
                sentences.append((first, tokens, tags if tags and tags[0] is not None else None))
            tokens, tags, first = [], [], None
            continue
        if len(cols) == 1 and need_tags:
            raise DataError(f"{where(path, line)}: expected 'token ... tag' columns, found only {cols[0]!r}")
        if tokens and (len(cols) == 1) != (tags[0] is None):
            raise DataError(f"{where(path, line)}: this line has {len(cols)} column(s), "
                            "unlike the lines before it in the sentence")
        first = first or line
        tokens.append(cols[0])
        tags.append(cols[-1] if len(cols) > 1 else None)
    if not sentences:
        raise DataError(f"{path}: no sentences found")
    return sentences


def read_tagged_jsonl(path, need_tags=True):
    """JSONL with {"tokens": [...], "tags": [...]} (also "ner_tags"/"labels"/"words")."""
    _, rows = _read_jsonl(path)
    out = []
    for line, obj in rows:
        tokens = obj.get("tokens", obj.get("words"))
        tags = next((obj[k] for k in ("tags", "ner_tags", "labels", "pos_tags") if k in obj), None)
        if not isinstance(tokens, list) or not tokens:
            raise DataError(f"{where(path, line)}: needs a non-empty list under \"tokens\"")
        if tags is None and need_tags:
            raise DataError(f"{where(path, line)}: needs a list of tags under \"tags\" (or \"ner_tags\")")
        if tags is not None and len(tags) != len(tokens):
            raise DataError(f"{where(path, line)}: {len(tokens)} tokens but {len(tags)} tags")
        out.append((line, [str(t) for t in tokens], [str(t) for t in tags] if tags is not None else None))
    return out


def read_squad(path, need_answers=True):
    """SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [...]}]}]}) or JSONL in the
    Hugging Face datasets layout ({"id", "question", "context", "answers": {"text": [...],
    "answer_start": [...]}}). Returns a list of dicts id, question, context, answers, line;
    checks that every answer occurs in its context at its answer_start."""
    check_readable(path)
    fmt = file_format(path)
    examples = []
    if fmt == "json":
        with _open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{where(path, e.lineno)}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise DataError(f"{path}: not SQuAD JSON (expected an object with a \"data\" list)")
        for a, article in enumerate(data["data"]):
            for p, paragraph in enumerate(article.get("paragraphs", [])):
                context = paragraph.get("context")
                for q, qa in enumerate(paragraph.get("qas", [])):
                    place = f"data[{a}].paragraphs[{p}].qas[{q}]"
                    examples.append(_qa_example(path, place, None, qa, context, need_answers))
    elif fmt == "jsonl":
        for line, obj in _read_jsonl(path)[1]:
            examples.append(_qa_example(path, None, line, obj, obj.get("context"), need_answers))
    else:
        raise DataError(f"{path}: QA data must be SQuAD .json or .jsonl, not {fmt}")
    if not examples:
        raise DataError(f"{path}: no questions found")
    return examples


def _qa_example(path, place, line, qa, context, need_answers):
    here = where(path, line) if place is None else f"{path}, {place}"
    qid = qa.get("id", place or f"line-{line}")
    question = qa.get("question")
    if not isinstance(context, str) or not context.strip():
        raise DataError(f"{here} (id {qid}): missing or empty \"context\"")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{here} (id {qid}): missing or empty \"question\"")
    raw = qa.get("answers")
    if isinstance(raw, dict):  # datasets layout: {"text": [...], "answer_start": [...]}
        texts, starts = raw.get("text", []), raw.get("answer_start", [None] * len(raw.get("text", [])))
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    answers = []
    for ans in raw or []:
        text, start = ans.get("text"), ans.get("answer_start")
        if not isinstance(text, str) or not text:
            raise DataError(f"{here} (id {qid}): an answer without text")
        if start is None:
            start = context.find(text)
        if not isinstance(start, int) or context[start:start + len(text)] != text:
            found = context.find(text)
            hint = f" (it occurs at {found})" if found >= 0 else ""
            raise DataError(f"{here} (id {qid}): answer {text!r} does not occur in its context "
                            f"at answer_start {start}{hint}")
        answers.append({"text": text, "answer_start": start})
    if need_answers and not answers:
        raise DataError(f"{here} (id {qid}): no answers (training and evaluation need at least one)")
    return {"id": str(qid), "question": question, "context": context, "answers": answers, "line": line}
