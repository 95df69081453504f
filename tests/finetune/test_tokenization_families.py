"""bertfast's tokenization against transformers' own tokenizer on the same tokenizer.json, for each
kind (WordPiece, byte-level BPE, Unigram/SentencePiece) with the family's special tokens: ids,
token types, offsets and word ids; and QA answers recovered from the offsets."""
import json

import pytest

from bertfast.finetune.tokenization import (BertTokenizer, encode_qa_examples, encode_tag_examples,
                                            encode_text_examples, trim_offsets)
from bertfast.finetune.data.tasks import TextExample, TagExample
from family_testing import CORPUS, hf_tokenizer, train_tokenizer, write_tokenizer_folder

pytest.importorskip("transformers")

KINDS = [("wordpiece", "bert"), ("bbpe", "roberta"), ("unigram", "xlm-roberta")]
TEXT = "Paris is  the capital of France."
PAIR = "Who was the first president?"
WORDS = ["Normans", "gave", "their", "name", "to", "Normandy", "."]


@pytest.fixture(scope="module", params=KINDS, ids=[k for k, _ in KINDS])
def kind_folder(request, tmp_path_factory):
    kind, model_type = request.param
    folder = tmp_path_factory.mktemp(kind)
    tok = write_tokenizer_folder(folder, kind, model_type)
    return kind, folder, tok, hf_tokenizer(tok, kind)


def test_single_and_pair_ids_and_types_match_transformers(kind_folder):
    kind, folder, _, hf = kind_folder
    ours = BertTokenizer(str(folder))
    a, b = (e.ids for e in ours.encode_texts([TEXT, PAIR]))
    assert ours.assemble(a)[0] == hf(TEXT)["input_ids"]
    ids, types = ours.assemble(a, b)
    expected = hf(TEXT, PAIR, return_token_type_ids=True)
    assert ids == expected["input_ids"]
    assert types == (expected["token_type_ids"] if kind == "wordpiece" else [0] * len(ids))
    if kind != "wordpiece":
        tokens = hf.convert_ids_to_tokens(ids)
        assert tokens[0] == "<s>" and tokens[len(a) + 1: len(a) + 3] == ["</s>", "</s>"] and tokens[-1] == "</s>"


def test_offsets_match_transformers_without_leading_spaces(kind_folder):
    kind, folder, _, hf = kind_folder
    ours = BertTokenizer(str(folder))
    enc = ours.encode_texts([TEXT])[0]
    expected = hf(TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert trim_offsets(TEXT, enc.offsets) == trim_offsets(TEXT, expected)
    for start, end in trim_offsets(TEXT, enc.offsets):
        assert TEXT[start:end] == TEXT[start:end].strip()


def test_word_ids_match_transformers_with_prefix_space(kind_folder, tmp_path):
    """Pre-split words as inside a sentence: byte-level BPE gets transformers' add_prefix_space=True."""
    kind, folder, tok, _ = kind_folder
    spec = json.loads(tok.to_str())
    if kind == "bbpe":
        spec["pre_tokenizer"]["add_prefix_space"] = True
    from tokenizers import Tokenizer
    hf = hf_tokenizer(Tokenizer.from_str(json.dumps(spec)), kind)
    expected = hf(WORDS, is_split_into_words=True)
    ours = BertTokenizer(str(folder))
    enc = ours.encode_words([WORDS])[0]
    assert ours.assemble(enc.ids)[0] == expected["input_ids"]
    assert [None] + enc.word_ids + [None] == expected.word_ids()
    if kind == "bbpe":  # every word starts with the space marker, as in running text
        assert all(hf.convert_ids_to_tokens(enc.ids[enc.word_ids.index(w)]).startswith("Ġ") for w in range(len(WORDS)))


def test_tag_labels_sit_on_first_pieces(kind_folder):
    kind, folder, _, _ = kind_folder
    ours = BertTokenizer(str(folder))
    tags = ["B-X", "O", "O", "O", "O", "B-Y", "O"]
    (feature,), _ = encode_tag_examples(ours, [TagExample(1, WORDS, tags)], 64, {"O": 0, "B-X": 1, "B-Y": 2})
    assert [feature.label[p] for p in feature.word_starts] == [1, 0, 0, 0, 0, 2, 0]
    assert sum(label != -100 for label in feature.label) == len(WORDS)


def test_qa_answers_come_back_from_offsets(kind_folder):
    kind, folder, _, _ = kind_folder
    ours = BertTokenizer(str(folder))
    context = CORPUS[2] + " " + CORPUS[0]
    examples = []
    for i, answer in enumerate(["Normandy", "northern France", "Paris", "capital"]):
        examples.append({"id": str(i), "question": "Where is it?", "context": context,
                         "answers": [{"text": answer, "answer_start": context.index(answer)}]})
    features, _ = encode_qa_examples(ours, examples, max_length=24, doc_stride=6)
    found = {}
    for f in features:
        if f.start_position:
            start, end = f.offsets[f.start_position][0], f.offsets[f.end_position][1]
            found.setdefault(f.example_index, context[start:end])
            assert f.input_ids[len(f.input_ids) - 1] == ours.sep_id
    assert found == {0: "Normandy", 1: "northern France", 2: "Paris", 3: "capital"}


def test_text_pairs_fit_max_length(kind_folder):
    kind, folder, _, _ = kind_folder
    ours = BertTokenizer(str(folder))
    examples = [TextExample(1, CORPUS[0], CORPUS[1], "a"), TextExample(2, CORPUS[2], None, "b")]
    features, truncated = encode_text_examples(ours, examples[:1], 12, {"a": 0, "b": 1})
    assert len(features[0].input_ids) == 12 and truncated == 1
