"""Readers for the file formats people bring: CSV, TSV (GLUE layout), JSONL, CoNLL columns and
SQuAD JSON. Each returns plain Python records with the line they came from, so that every later
complaint can name a line. Problems raise DataError with the file and line."""
import csv
import io
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


def read_text(path):
    """The file's text (UTF-8, an optional BOM dropped); text that is not UTF-8 raises DataError
    naming the file, the line and the byte offset."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{where(path, line)}: not UTF-8 text (byte {e.start} of the file is "
                        f"{data[e.start:e.start + 1].hex()}; {e.reason}); convert it to UTF-8") from None


def _lines(path):
    """(line number, line) of a text file, lines ending at \n, \r or \r\n as csv and open() split them."""
    return enumerate(io.StringIO(read_text(path), newline=""), start=1)


def parse_json(path, line, text):
    """json.loads, with every failure (syntax, integers too long, nesting too deep) a DataError naming the place."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = e.lineno if line is None else line
        raise DataError(f"{where(path, at)}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{where(path, line)}: not readable JSON ({type(e).__name__}: {e})") from None


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
    with io.StringIO(read_text(path), newline="") as f:
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
    if not rows:
        raise DataError(f"{path}: a header but no data rows")
    return header, rows


def _read_jsonl(path):
    rows, columns = [], []
    for line, text in _lines(path):
        if not text.strip():
            continue
        obj = parse_json(path, line, text)
        if not isinstance(obj, dict):
            raise DataError(f"{where(path, line)}: expected a JSON object, got {type(obj).__name__}")
        for k in obj:
            if k not in columns:
                columns.append(k)
        rows.append((line, obj))
    if not rows:
        raise DataError(f"{path}: no JSON lines")
    return columns, rows


def read_conll(path, need_tags=True):
    """CoNLL columns: one token per line, its tag in the last column (whitespace separated),
    a blank line between sentences, -DOCSTART- lines skipped. Returns a list of
    (first_line, tokens, tags); tags is None when a line has a single column and need_tags is False."""
    check_readable(path)
    sentences, tokens, tags, first = [], [], [], None
    lines = [text for _, text in _lines(path)]
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
    """JSONL with {"tokens": [...], "tags": [...]} (also "ner_tags"/"labels"/"words"): tokens are
    non-empty strings, tags strings or integers (class ids, as in Hugging Face exports)."""
    _, rows = _read_jsonl(path)
    out = []
    for line, obj in rows:
        here = where(path, line)
        tokens = obj.get("tokens", obj.get("words"))
        tags = next((obj[k] for k in ("tags", "ner_tags", "labels", "pos_tags") if k in obj), None)
        if not isinstance(tokens, list) or not tokens:
            raise DataError(f"{here}: needs a non-empty list under \"tokens\"")
        _check_items(here, "tokens", tokens, lambda t: isinstance(t, str) and t.strip(), "a non-empty string")
        if tags is None and need_tags:
            raise DataError(f"{here}: needs a list of tags under \"tags\" (or \"ner_tags\")")
        if tags is not None:
            if not isinstance(tags, list):
                raise DataError(f"{here}: the tags must be a list (one per token), not {type(tags).__name__}")
            if len(tags) != len(tokens):
                raise DataError(f"{here}: {len(tokens)} tokens but {len(tags)} tags")
            _check_items(here, "tags", tags, _is_label, "a non-empty string or an integer")
        out.append((line, tokens, [str(t).strip() for t in tags] if tags is not None else None))
    return out


def _is_label(value):
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.strip())


def _check_items(here, what, items, ok, expected):
    for i, item in enumerate(items):
        if not ok(item):
            raise DataError(f"{here}: {what}[{i}] is {json.dumps(item)[:40]}; each must be {expected}")


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _member(path, place, obj, key, kind):
    """obj[key] (obj a JSON object) of type `kind`: [] when absent; anything else a DataError."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}, {place}: expected an object, found {_kind(obj)}")
    value = obj.get(key, [])
    if not isinstance(value, kind):
        raise DataError(f"{path}, {place}.{key}: expected {_kind(kind())}, found {_kind(value)}")
    return value


def read_squad(path, need_answers=True):
    """SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [...]}]}]}) or JSONL in the
    Hugging Face datasets layout ({"id", "question", "context", "answers": {"text": [...],
    "answer_start": [...]}}). Returns a list of dicts id, question, context, answers, line;
    checks every JSON type, that ids are unique and that every answer occurs in its context at
    its answer_start."""
    check_readable(path)
    fmt = file_format(path)
    if fmt == "json":
        examples = _squad_json(path, need_answers)
    elif fmt == "jsonl":
        examples = [_qa_example(path, None, line, obj, obj.get("context"), need_answers)
                    for line, obj in _read_jsonl(path)[1]]
    else:
        raise DataError(f"{path}: QA data must be SQuAD .json or .jsonl, not {fmt}")
    if not examples:
        raise DataError(f"{path}: no questions found")
    _check_unique_ids(path, examples)
    return examples


def _squad_json(path, need_answers):
    data = parse_json(path, None, read_text(path))
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON (expected an object with a \"data\" list)")
    examples = []
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(_member(path, f"data[{a}]", article, "paragraphs", list)):
            place = f"data[{a}].paragraphs[{p}]"
            for q, qa in enumerate(_member(path, place, paragraph, "qas", list)):
                examples.append(_qa_example(path, f"{place}.qas[{q}]", None, qa, paragraph.get("context"),
                                            need_answers))
    return examples


def _check_unique_ids(path, examples):
    seen = {}
    for ex in examples:
        if ex["id"] in seen:
            raise DataError(f"{ex['where']}: id {ex['id']!r} is also the id of {seen[ex['id']]}; "
                            "question ids must be unique")
        seen[ex["id"]] = ex["where"]


def _qa_example(path, place, line, qa, context, need_answers):
    here = where(path, line) if place is None else f"{path}, {place}"
    if not isinstance(qa, dict):
        raise DataError(f"{here}: expected a question object, found {_kind(qa)}")
    qid = qa.get("id", place or f"line-{line}")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise DataError(f"{here}: \"id\" must be a non-empty string or an integer, found {_kind(qid)}")
    here = f"{here} (id {qid})"
    for name, value in (("context", context), ("question", qa.get("question"))):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{here}: missing or empty \"{name}\"")
    answers = [_checked_answer(here, context, text, start) for text, start in _raw_answers(here, qa.get("answers"))]
    if need_answers and not answers:
        raise DataError(f"{here}: no answers (training and evaluation need at least one)")
    return {"id": str(qid), "question": qa["question"], "context": context, "answers": answers, "line": line,
            "where": here}


def _raw_answers(here, raw):
    """[(text, answer_start or None)] of SQuAD's list of {"text", "answer_start"} or the datasets
    layout {"text": [...], "answer_start": [...]}."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        texts, starts = raw.get("text", []), raw.get("answer_start")
        if not isinstance(texts, list):
            raise DataError(f"{here}: answers.text must be a list of strings, found {_kind(texts)}")
        if starts is None:
            starts = [None] * len(texts)
        if not isinstance(starts, list) or len(starts) != len(texts):
            raise DataError(f"{here}: answers.answer_start must be a list of {len(texts)} integers (one per "
                            f"answers.text), found {_kind(starts)}" + (f" of {len(starts)}" if isinstance(starts, list) else ""))
        return list(zip(texts, starts))
    if not isinstance(raw, list):
        raise DataError(f"{here}: \"answers\" must be a list, found {_kind(raw)}")
    for i, ans in enumerate(raw):
        if not isinstance(ans, dict):
            raise DataError(f"{here}: answers[{i}] must be an object {{\"text\", \"answer_start\"}}, found {_kind(ans)}")
    return [(ans.get("text"), ans.get("answer_start")) for ans in raw]


def _checked_answer(here, context, text, start):
    if not isinstance(text, str) or not text:
        raise DataError(f"{here}: an answer's text must be a non-empty string, found {_kind(text)}")
    if start is None:
        start = context.find(text)
    if isinstance(start, bool) or not isinstance(start, int):
        raise DataError(f"{here}: answer {text!r}: answer_start must be an integer, found {_kind(start)}")
    if start < 0 or context[start:start + len(text)] != text:
        found = context.find(text)
        hint = f" (it occurs at {found})" if found >= 0 else ""
        raise DataError(f"{here}: answer {text!r} does not occur in its context at answer_start {start}{hint}")
    return {"text": text, "answer_start": start}
