"""Tokenization for the five fine-tuning tasks with Hugging Face `tokenizers`: the checkpoint's
tokenizer.json (or vocab.txt), texts and pairs with longest-first truncation and token types,
word-level tags aligned to each word's first sub-token, and QA windows with a document stride
and character offsets for the answer text."""
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from tokenizers import Tokenizer

IGNORE_INDEX = -100  # label of tokens that do not count in the loss (as torch's cross_entropy)


@dataclass
class Feature:
    """One model input: token ids and types, and what the task needs to train and to decode."""
    input_ids: List[int]
    token_type_ids: List[int]
    label: object = None            # int (classify/pair), float (regress), list of ints (tag)
    example_index: int = 0          # which example this came from (several QA windows per example)
    word_starts: List[int] = field(default_factory=list)   # tag: token position of each kept word
    offsets: List[Optional[Tuple[int, int]]] = field(default_factory=list)  # qa: char span per token
    max_context: List[bool] = field(default_factory=list)  # qa: this window is the token's best
    start_position: int = 0         # qa: answer span in tokens, 0/0 ([CLS]) when not in this window
    end_position: int = 0


# (first, separator, pad) tokens, and how many separators stand between the two texts of a pair
SPECIAL_LAYOUTS = {"bert": (("[CLS]", "[SEP]", "[PAD]"), 1),      # [CLS] A [SEP] B [SEP], types 0 then 1
                   "roberta": (("<s>", "</s>", "<pad>"), 2)}     # <s> A </s></s> B </s>, one token type
_ROBERTA_STYLE = ("roberta", "xlm-roberta", "camembert")


class BertTokenizer:
    """`tokenizers.Tokenizer` without its own truncation or padding (we do both), plus the
    special token ids that inputs are assembled from: BERT's `[CLS] A [SEP] B [SEP]` (types 0/1)
    or RoBERTa's `<s> A </s></s> B </s>` (one type), as the model folder's `config.json`
    (`model_type`, `type_vocab_size`) and the vocabulary say. Any `tokenizer.json` works:
    WordPiece, byte-level BPE, Unigram/SentencePiece. Pre-split words (tagging) go through a copy
    whose byte-level pre-tokenizer adds the leading space, so that each word is tokenized as it
    would be inside a sentence (transformers' `add_prefix_space=True`)."""

    def __init__(self, model_dir):
        path = os.path.join(model_dir, "tokenizer.json")
        vocab = os.path.join(model_dir, "vocab.txt")
        bpe = [os.path.join(model_dir, name) for name in ("vocab.json", "merges.txt")]
        if os.path.exists(path):
            self.tokenizer = Tokenizer.from_file(path)
        elif all(os.path.exists(f) for f in bpe):  # a RoBERTa folder without tokenizer.json
            from tokenizers.implementations import ByteLevelBPETokenizer
            self.tokenizer = ByteLevelBPETokenizer(*bpe)._tokenizer
        elif os.path.exists(vocab):
            from tokenizers.implementations import BertWordPieceTokenizer
            self.tokenizer = BertWordPieceTokenizer(vocab, lowercase=_lowercase(model_dir))._tokenizer
        else:
            raise FileNotFoundError(f"{model_dir}: no tokenizer.json or vocab.txt to tokenize with")
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.word_tokenizer = _with_prefix_space(self.tokenizer)
        config = _model_config(model_dir)
        layout = _special_layout(model_dir, self.tokenizer, config.get("model_type", "bert"))
        (cls, sep, pad), separators = SPECIAL_LAYOUTS[layout]
        self.cls_id, self.sep_id, self.pad_id = (self.tokenizer.token_to_id(t) for t in (cls, sep, pad))
        self.between = [self.sep_id] * separators  # after the first text of a pair
        self.typed_pairs = layout == "bert" and config.get("type_vocab_size", 2) >= 2

    def specials(self, pair):
        """How many special tokens a single text (pair=False) or a pair gets."""
        return 1 + len(self.between) + 1 if pair else 2

    def encode_texts(self, texts):
        return self.tokenizer.encode_batch(list(texts), add_special_tokens=False)

    def encode_words(self, word_lists):
        return self.word_tokenizer.encode_batch([list(w) for w in word_lists], is_pretokenized=True,
                                                add_special_tokens=False)

    def assemble(self, a, b=None):
        """first a sep (sep.. b sep); token types 0 for the first segment, 1 for the second (BERT's
        layout), all 0 in RoBERTa's."""
        ids = [self.cls_id] + a + self.between[:1]
        types = [0] * len(ids)
        if b is not None:
            ids += self.between[1:] + b + [self.sep_id]
            types += [1 if self.typed_pairs else 0] * (len(self.between) - 1 + len(b) + 1)
        return ids, types


def _model_config(model_dir):
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        return config if isinstance(config, dict) else {}
    except (OSError, ValueError):
        return {}


def _special_layout(model_dir, tokenizer, model_type):
    """"roberta" or "bert": the model family's own, else whichever the vocabulary has."""
    preferred = ["roberta", "bert"] if model_type in _ROBERTA_STYLE else ["bert", "roberta"]
    for layout in preferred:
        if all(tokenizer.token_to_id(t) is not None for t in SPECIAL_LAYOUTS[layout][0]):
            return layout
    wanted = " or ".join("/".join(SPECIAL_LAYOUTS[k][0]) for k in preferred)
    raise ValueError(f"{model_dir}: the vocabulary lacks the special tokens of a {model_type!r} model ({wanted})")


def _with_prefix_space(tokenizer):
    """A copy of `tokenizer` whose ByteLevel pre-tokenizers add a leading space (the same object
    when it has none)."""
    spec = json.loads(tokenizer.to_str())
    changed = False

    def visit(node):
        nonlocal changed
        if isinstance(node, dict):
            if node.get("type") == "ByteLevel" and node.get("add_prefix_space") is False:
                node["add_prefix_space"] = changed = True
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(spec.get("pre_tokenizer"))
    return Tokenizer.from_str(json.dumps(spec)) if changed else tokenizer


def trim_offsets(text, offsets):
    """Character spans without the whitespace a token carries (byte-level BPE's `Ġ`, SentencePiece's
    `▁`), so that an answer's text starts at its first character."""
    out = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        out.append((start, end))
    return out


def _lowercase(model_dir):
    try:
        with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
            return bool(json.load(f).get("do_lower_case", True))
    except (OSError, ValueError):
        return True


def longest_first(len_a, len_b, budget):
    """Lengths after longest-first truncation of a pair to `budget` tokens in all, as the
    `tokenizers` library (and so transformers' fast tokenizers) does it: the shorter text is kept
    whole when the longer can absorb the cut; otherwise both get half, the longer one the odd token."""
    if len_a + len_b <= budget:
        return len_a, len_b
    swap = len_a > len_b
    n1, n2 = (len_b, len_a) if swap else (len_a, len_b)
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    return (n2, n1) if swap else (n1, n2)


def encode_text_examples(tok, examples, max_length, label_to_id=None):
    """classify/pair/regress examples -> (features, number truncated). label_to_id maps class
    names to ids; None for regression (labels are floats) or unlabelled data."""
    if max_length < 4:
        raise ValueError(f"--max-length must be at least 4 tokens, got {max_length}")
    first = tok.encode_texts(ex.text for ex in examples)
    has_pair = examples[0].text_pair is not None
    second = tok.encode_texts(ex.text_pair for ex in examples) if has_pair else [None] * len(examples)
    features, truncated = [], 0
    for i, (ex, ea, eb) in enumerate(zip(examples, first, second)):
        a = ea.ids
        b = eb.ids if eb is not None else None
        if b is None:
            keep_a, keep_b = min(len(a), max_length - tok.specials(False)), None
        else:
            keep_a, keep_b = longest_first(len(a), len(b), max_length - tok.specials(True))
        if keep_a < len(a) or (b is not None and keep_b < len(b)):
            truncated += 1
        ids, types = tok.assemble(a[:keep_a], b[:keep_b] if b is not None else None)
        label = ex.label
        if label is not None and label_to_id is not None:
            label = label_to_id.get(label, IGNORE_INDEX)  # a label training never saw (evaluation only)
        features.append(Feature(ids, types, label=label, example_index=i))
    return features, truncated


def encode_tag_examples(tok, examples, max_length, label_to_id=None):
    """Tagging: each word's tag on its first sub-token, IGNORE_INDEX on the others and on the
    special tokens. Words past max_length are cut (counted as truncated sentences)."""
    encodings = tok.encode_words(ex.tokens for ex in examples)
    features, truncated = [], 0
    for i, (ex, enc) in enumerate(zip(examples, encodings)):
        ids = enc.ids[: max_length - tok.specials(False)]
        if len(ids) < len(enc.ids):
            truncated += 1
        word_ids = enc.word_ids[: len(ids)]
        labels, word_starts, previous = [IGNORE_INDEX], {}, None
        for pos, w in enumerate(word_ids, start=1):
            first_piece = w is not None and w != previous
            if first_piece:
                word_starts[w] = pos
            tag = ex.tags[w] if (first_piece and ex.tags is not None and label_to_id is not None) else None
            labels.append(label_to_id.get(tag, IGNORE_INDEX) if tag is not None else IGNORE_INDEX)  # unseen: not trained
            previous = w
        labels.append(IGNORE_INDEX)
        input_ids, types = tok.assemble(ids)
        starts = [word_starts.get(w, -1) for w in range(len(ex.tokens))]  # -1: word cut or empty
        features.append(Feature(input_ids, types, label=labels if label_to_id else None,
                                example_index=i, word_starts=starts))
    return features, truncated


def encode_qa_examples(tok, examples, max_length, doc_stride=128, max_query_length=64):
    """SQuAD-style windows: [CLS] question [SEP] context window [SEP] (RoBERTa's layout:
    <s> question </s></s> window </s>); character offsets without the tokens' leading spaces; consecutive windows
    overlap by doc_stride tokens. Returns (features, number of questions truncated)."""
    questions = tok.encode_texts(ex["question"] for ex in examples)
    contexts = tok.encode_texts(ex["context"] for ex in examples)
    features, truncated = [], 0
    for i, (ex, eq, ec) in enumerate(zip(examples, questions, contexts)):
        q = eq.ids[:max_query_length]
        truncated += len(q) < len(eq.ids)
        window = max_length - len(q) - tok.specials(True)
        if window < 8:
            raise ValueError(f"--max-length {max_length} leaves no room for the context after a "
                             f"{len(q)}-token question; use a larger --max-length")
        stride = min(doc_stride, window // 2)
        spans, start, n = [], 0, len(ec.ids)
        while True:
            end = min(start + window, n)
            spans.append((start, end))
            if end >= n:
                break
            start = end - stride
        context_offsets = trim_offsets(ex["context"], ec.offsets)
        answer = _answer_tokens(ex, context_offsets)
        for s, e in spans:
            ids, types = tok.assemble(q, ec.ids[s:e])
            context_from = len(q) + len(tok.between) + 1
            offsets = [None] * context_from + context_offsets[s:e] + [None]
            max_context = [False] * context_from + [_is_max_context(spans, (s, e), t) for t in range(s, e)] + [False]
            sp = ep = 0
            if answer is not None and s <= answer[0] and answer[1] < e:
                sp, ep = answer[0] - s + context_from, answer[1] - s + context_from
            features.append(Feature(ids, types, example_index=i, offsets=offsets, max_context=max_context,
                                    start_position=sp, end_position=ep))
    return features, truncated


def _answer_tokens(example, offsets):
    """First answer's (first, last) context token, or None without answers."""
    if not example["answers"]:
        return None
    a = example["answers"][0]
    start_char, end_char = a["answer_start"], a["answer_start"] + len(a["text"])
    first = next((t for t, (s, e) in enumerate(offsets) if e > start_char), None)
    last = next((t for t in range(len(offsets) - 1, -1, -1) if offsets[t][0] < end_char), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def _is_max_context(spans, span, token):
    """The window where `token` has the most context on both sides (as the original BERT)."""
    def score(sp):
        s, e = sp
        if not s <= token < e:
            return -1.0
        return min(token - s, e - 1 - token) + 0.01 * (e - s)
    return max(spans, key=score) == span


def encode_examples(task, tok, examples, max_length, doc_stride=128, label_to_id=None):
    """Any task's examples -> (features, number truncated): the one dispatch used by training,
    evaluation and prediction. label_to_id as in encode_text_examples (not used by qa)."""
    if task == "qa":
        return encode_qa_examples(tok, examples, max_length, doc_stride)
    if task == "tag":
        return encode_tag_examples(tok, examples, max_length, label_to_id)
    return encode_text_examples(tok, examples, max_length, label_to_id)
