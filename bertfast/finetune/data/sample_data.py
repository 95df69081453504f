"""Paths of the real data samples shipped inside the package (see samples/SOURCE.md)."""
import os

SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")

# task -> (train file, eval file)
SAMPLE_FILES = {
    "classify": ("sentiment/train.csv", "sentiment/test.csv"),
    "pair": ("qnli/train.tsv", "qnli/dev.tsv"),
    "regress": ("similarity/train.jsonl", "similarity/test.jsonl"),
    "tag": ("ner/train.conll", "ner/dev.conll"),
    "qa": ("squad/train.json", "squad/dev.json"),
    "rank": ("rank/train.jsonl", "rank/dev.jsonl"),
}


def sample_path(task, split="train"):
    """Path of the shipped sample for a task; split is 'train' or 'eval'."""
    train, evaluation = SAMPLE_FILES[task]
    return os.path.join(SAMPLES_DIR, train if split == "train" else evaluation)
