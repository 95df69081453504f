"""Readers, task examples, labels and tokenization on the shipped samples and on bad files."""
import json
import os

import pytest

from bertfast.finetune.data import (Columns, DataError, check_known_labels, label_list, load_examples, read_conll,
                           read_squad, read_table, sample_path)
from bertfast.finetune.data.batching import collate, epoch_batches, shard
from bertfast.finetune.tokenization import (IGNORE_INDEX, BertTokenizer, encode_qa_examples, encode_tag_examples,
                                   encode_text_examples, longest_first)

from finetune_helpers import minilm_path

TASKS = ["classify", "pair", "regress", "tag", "qa"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(minilm_path())


def test_samples_are_small_and_have_sources():
    root = os.path.dirname(sample_path("classify"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.dirname(root)) for f in fs)
    assert total <= 3 * 1024 * 1024
    source = open(os.path.join(os.path.dirname(root), "SOURCE.md")).read()
    for needle in ("CC BY-SA 4.0", "LGPL-2.1", "Apache-2.0", "WNUT-16"):
        assert needle in source


@pytest.mark.parametrize("task", TASKS)
def test_shipped_samples_load(task):
    train = load_examples(task, sample_path(task))
    evaluation = load_examples(task, sample_path(task, "eval"))
    labels = label_list(task, train)
    check_known_labels(task, evaluation, labels, sample_path(task, "eval"))
    assert len(train) >= 500 and len(evaluation) >= 100
    if task == "classify":
        assert labels == ["fresh", "rotten"]
    if task == "pair":
        assert labels == ["entailment", "not_entailment"] and train[0].text_pair
    if task == "regress":
        assert all(0.0 <= ex.label <= 1.0 for ex in train) and train[0].text_pair
    if task == "tag":
        assert "O" in labels and "B-person" in labels
    if task == "qa":
        assert all(len(ex["answers"]) >= 1 for ex in evaluation)


def test_csv_quotes_and_integer_labels(tmp_path):
    path = write(tmp_path, "d.csv", 'sentence,label\n"a, quoted ""text""",1\nplain,0\nthird,10\n')
    ex = load_examples("classify", path)
    assert ex[0].text == 'a, quoted "text"' and ex[0].line == 2
    assert label_list("classify", ex) == ["0", "1", "10"]  # numeric order, not "0","1","10" by chance


def test_glue_tsv_keeps_quotes(tmp_path):
    path = write(tmp_path, "d.tsv", 'index\tsentence1\tsentence2\tlabel\n0\tHe said "hi\tok\t1\n1\tb\tc\t0\n')
    ex = load_examples("pair", path)
    assert ex[0].text == 'He said "hi' and ex[0].text_pair == "ok"


def test_jsonl_and_explicit_columns(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"q": "x", "s": "y", "y": 0.5}\n\n{"q": "z", "s": "w", "y": 2}\n')
    ex = load_examples("regress", path, Columns("q", "s", "y"))
    assert [e.label for e in ex] == [0.5, 2.0] and ex[1].line == 3


@pytest.mark.parametrize("text, message", [
    ("text,label\nok,1\ntoo,many,fields\n", "line 3: 3 fields"),
    ("text,label\n", "no data rows"),
    ("text,label\nfine,1\n,0\n", "line 3: column 'text' is empty"),
    ("text,label\nfine,1\nno label,\n", "line 3: the label column 'label' is empty"),
])
def test_malformed_csv_names_the_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_examples("classify", write(tmp_path, "d.csv", text))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples("classify", str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="is empty"):
        load_examples("classify", write(tmp_path, "e.csv", ""))


def test_missing_columns(tmp_path):
    path = write(tmp_path, "d.csv", "review_body,stars\nx,1\n")
    with pytest.raises(DataError, match="cannot find the text column"):
        load_examples("classify", path)
    with pytest.raises(DataError, match="no column 'body'"):
        load_examples("classify", path, Columns(text="body"))
    with pytest.raises(DataError, match="cannot find the label column"):
        load_examples("classify", path, Columns(text="review_body"))
    with pytest.raises(DataError, match="two text columns"):
        load_examples("pair", path, Columns(text="review_body", label="stars"))


def test_bad_jsonl_and_regression_label(tmp_path):
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_examples("classify", write(tmp_path, "a.jsonl", '{"text": "a", "label": 1}\n{"text": \n'))
    with pytest.raises(DataError, match="line 1: regression label 'high' is not a number"):
        load_examples("regress", write(tmp_path, "b.jsonl", '{"text": "a", "label": "high"}\n'))


def test_eval_labels_must_occur_in_train(tmp_path):
    train = load_examples("classify", write(tmp_path, "t.csv", "text,label\na,pos\nb,neg\n"))
    evaluation = load_examples("classify", write(tmp_path, "e.csv", "text,label\na,pos\nb,neutral\n"))
    with pytest.raises(DataError, match="line 3: label 'neutral' does not occur in the training data"):
        check_known_labels("classify", evaluation, label_list("classify", train), "e.csv")


def test_conll_columns(tmp_path):
    text = "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nGerman JJ B-MISC\n"
    sentences = read_conll(write(tmp_path, "d.conll", text))
    assert [s[1] for s in sentences] == [["EU", "rejects"], ["German"]]
    assert [s[2] for s in sentences] == [["B-ORG", "O"], ["B-MISC"]]
    with pytest.raises(DataError, match="line 2: expected 'token ... tag' columns"):
        read_conll(write(tmp_path, "bad.conll", "EU B-ORG\nrejects\n"))


def test_squad_answer_must_be_in_context(tmp_path):
    good = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}
    assert read_squad(write(tmp_path, "g.json", json.dumps(good)))[0]["answers"][0]["text"] == "France"
    good["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    with pytest.raises(DataError, match="q1.*does not occur in its context at answer_start 3 .it occurs at 12"):
        read_squad(write(tmp_path, "b.json", json.dumps(good)))
    good["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "Spain"
    with pytest.raises(DataError, match="answer 'Spain' does not occur in its context"):
        read_squad(write(tmp_path, "c.json", json.dumps(good)))
    line = {"id": "x", "question": "Where?", "context": "In Rome.", "answers": {"text": ["Rome"], "answer_start": [3]}}
    assert read_squad(write(tmp_path, "d.jsonl", json.dumps(line) + "\n"))[0]["answers"][0]["answer_start"] == 3


def test_longest_first_matches_transformers(tok):
    from transformers import BertTokenizerFast
    hf = BertTokenizerFast.from_pretrained(minilm_path(), local_files_only=True)
    examples = load_examples("pair", sample_path("pair"))[:200]
    for max_length in (16, 33, 64):
        features, truncated = encode_text_examples(tok, examples, max_length, {"entailment": 0, "not_entailment": 1})
        expected = hf([e.text for e in examples], [e.text_pair for e in examples], truncation="longest_first",
                      max_length=max_length)
        assert [f.input_ids for f in features] == expected["input_ids"]
        assert [f.token_type_ids for f in features] == expected["token_type_ids"]
        assert truncated > 0
    for a in range(0, 14):
        for b in range(0, 14):
            la, lb = longest_first(a, b, 9)
            assert la + lb == min(a + b, 9) and la <= a and lb <= b
            if a + b > 9 and min(a, b) <= 9 - min(a, b):
                assert min(la, lb) == min(a, b)  # the shorter text is kept whole when it can be


def test_tags_on_first_subtoken(tok):
    from bertfast.finetune.data import TagExample
    ex = [TagExample(1, ["Tokenization", "in", "Wonderland"], ["O", "O", "B-loc"])]
    (f,), _ = encode_tag_examples(tok, ex, 64, {"O": 0, "B-loc": 1})
    pieces = tok.tokenizer.encode(["Tokenization", "in", "Wonderland"], is_pretokenized=True, add_special_tokens=False)
    assert len(pieces.ids) > 3  # some word is split
    assert f.label[0] == IGNORE_INDEX and f.label[-1] == IGNORE_INDEX
    assert [f.label[p] for p in f.word_starts] == [0, 0, 1]
    assert sum(1 for t in f.label if t != IGNORE_INDEX) == 3
    (cut,), truncated = encode_tag_examples(tok, ex, 4, {"O": 0, "B-loc": 1})
    assert truncated == 1 and len(cut.input_ids) == 4 and cut.word_starts[-1] == -1


def test_qa_windows_cover_the_answer(tok):
    examples = load_examples("qa", sample_path("qa"))[:60]
    features, _ = encode_qa_examples(tok, examples, 96, doc_stride=32)
    by_example = {}
    for f in features:
        by_example.setdefault(f.example_index, []).append(f)
        assert len(f.input_ids) <= 96
        if f.start_position:
            ex = examples[f.example_index]
            text = ex["context"][f.offsets[f.start_position][0]:f.offsets[f.end_position][1]]
            assert text.lower() == ex["answers"][0]["text"].lower()
    assert any(len(v) > 1 for v in by_example.values())  # long contexts became several windows
    assert len(by_example) == len(examples)
    for windows in by_example.values():  # every context token is "max context" in exactly one window
        counts = {}
        for f in windows:
            for off, best in zip(f.offsets, f.max_context):
                if off is not None and best:
                    counts[off] = counts.get(off, 0) + 1
        assert set(counts.values()) == {1}


def test_epoch_order_is_deterministic_and_shards_cover_batches():
    lengths = [5 + (i * 7) % 50 for i in range(1000)]
    a = epoch_batches(lengths, 16, seed=3, epoch=1)
    assert a == epoch_batches(lengths, 16, seed=3, epoch=1)
    assert a != epoch_batches(lengths, 16, seed=3, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 10  # bucketed: little padding
    for batch in a[:5]:
        parts = [shard(batch, r, 3) for r in range(3)]
        assert sum(parts, []) == batch


def test_collate_pads_to_longest(tok):
    examples = load_examples("classify", sample_path("classify"))[:8]
    features, _ = encode_text_examples(tok, examples, 64, {"fresh": 0, "rotten": 1})
    batch = collate("classify", features, list(range(8)), tok.pad_id)
    longest = max(len(f.input_ids) for f in features)
    assert batch["input_ids"].shape == (8, longest)
    assert batch["attention_mask"].sum().item() == sum(len(f.input_ids) for f in features)
