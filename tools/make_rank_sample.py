"""Build bertfast/finetune/data/samples/rank/ from the shipped SQuAD sample (CC BY-SA 4.0):
each question with its paragraph as the positive; in train.jsonl the other paragraph of the
same article as a hard negative. Run from the repository root: python tools/make_rank_sample.py"""
import json
import os

SAMPLES = os.path.join("bertfast", "finetune", "data", "samples")


def rows(split, with_negatives):
    with open(os.path.join(SAMPLES, "squad", f"{split}.json")) as f:
        articles = json.load(f)["data"]
    for article in articles:
        paragraphs = [p["context"] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            others = [c for c in paragraphs if c != p["context"]]
            for qa in p["qas"]:
                row = {"query": qa["question"], "positive": p["context"]}
                if with_negatives and others:
                    row["negatives"] = others[:1]
                yield row


def main():
    os.makedirs(os.path.join(SAMPLES, "rank"), exist_ok=True)
    for split, name, negatives in (("train", "train.jsonl", True), ("dev", "dev.jsonl", False)):
        with open(os.path.join(SAMPLES, "rank", name), "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(split, negatives))


if __name__ == "__main__":
    main()
