"""Shared by the pretraining tests: the MiniLM tokenizer, corpora from the shipped samples."""
import csv
import os

from bertfast.finetune.data import sample_path


def tokenizer():
    from finetune_helpers import minilm_path
    from bertfast.finetune.tokenization import BertTokenizer
    return BertTokenizer(minilm_path())


def sentiment_text(path, split="train", rows=None):
    """The shipped Rotten Tomatoes snippets as a plain-text corpus, one document per line."""
    with open(sample_path("classify", split), newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:rows]
    path = os.fspath(path)
    with open(path, "w") as f:
        f.write("\n".join(texts) + "\n")
    return path
