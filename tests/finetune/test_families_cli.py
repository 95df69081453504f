"""`bertfast finetune`, `predict` and `evaluate` on a tiny RoBERTa-style folder (byte-level BPE
trained in the test, random 2-layer model): classify, pair, tag and qa in seconds each; the output
is a RoBERTa that transformers loads; eval labels unseen in training are counted, not refused."""
import json

import pytest
import torch

from family_testing import make_tiny_roberta
from test_cli import run

transformers = pytest.importorskip("transformers")

CLASSIFY = "text,label\n" + "".join(f"{t},{l}\n" for t, l in [
    ("I loved this movie", "pos"), ("great acting and story", "pos"), ("a dull boring film", "neg"),
    ("terrible dialogue no plot", "neg")] * 6)
PAIR = "question\tsentence\tlabel\n" + "".join(f"{q}\t{s}\t{l}\n" for q, s, l in [
    ("Where is Paris?", "Paris is in France.", "entailment"), ("Who was first?", "The fox jumps.", "not_entailment"),
    ("What is the capital?", "Paris is the capital.", "entailment"), ("Where is it?", "The dog is lazy.",
                                                                       "not_entailment")] * 6)
TAG_TRAIN = "\n".join(["Paris B-LOC\nis O\nnice O\n", "George B-PER\nWashington I-PER\nwon O\n"] * 6)
TAG_EVAL = "Paris B-LOC\nis O\nNormandy B-REGION\n\nGeorge B-PER\nsaw O\nFrance B-LOC\n"
CONTEXT = "Normans gave their name to Normandy, a region in northern France."


def _squad(n):
    qas = [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
           for i, (q, a) in enumerate([("Who gave their name?", "Normans"), ("Where is Normandy?", "northern France"),
                                       ("What got the name?", "Normandy")] * n)]
    return json.dumps({"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]})


FILES = {"classify": ("train.csv", CLASSIFY, CLASSIFY), "pair": ("train.tsv", PAIR, PAIR),
         "tag": ("train.conll", TAG_TRAIN, TAG_EVAL), "qa": ("train.json", _squad(6), _squad(1))}


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    return make_tiny_roberta(tmp_path_factory.mktemp("roberta"))


@pytest.mark.parametrize("task", ["classify", "pair", "tag", "qa"])
def test_finetune_predict_evaluate_roberta(task, tiny_roberta, tmp_path, capsys):
    name, train, evaluation = FILES[task]
    (tmp_path / name).write_text(train)
    (tmp_path / ("eval" + name[5:])).write_text(evaluation)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "finetune", "--task", task, "--model", tiny_roberta, "--train", tmp_path / name,
                             "--eval", tmp_path / ("eval" + name[5:]), "--output", out, "--device", "cpu",
                             "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--no-progress")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "roberta" and config["architectures"][0].startswith("RobertaFor")
    log = (out / "train_log.txt").read_text()
    if task == "tag":  # B-REGION is in the eval file only: evaluated, counted, reported
        assert "1 tokens have labels that never occur in the training data" in log and "'B-REGION' (1)" in log
    code, stdout, err = run(capsys, "evaluate", "--model", out, "--data", tmp_path / ("eval" + name[5:]),
                             "--device", "cpu")
    assert code == 0, err
    if task == "tag":
        assert '"unseen_labels": 1' in stdout
    code, _, err = run(capsys, "predict", "--model", out, "--input", tmp_path / ("eval" + name[5:]),
                        "--output", tmp_path / "pred.jsonl", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "pred.jsonl").read_text().count("\n") >= 2
    hf_class = getattr(transformers, config["architectures"][0])
    hf = hf_class.from_pretrained(out).eval()
    assert sum(p.numel() for p in hf.parameters()) > 0 and not torch.isnan(next(hf.parameters())).any()


def test_unseen_eval_class_counts_as_error():
    from bertfast.finetune.data import TextExample
    from bertfast.finetune.evaluation import score
    examples = [TextExample(i, "x", None, label) for i, label in enumerate(["pos", "neg", "neutral", "pos"])]
    predictions = [{"label": p} for p in ["pos", "neg", "pos", "pos"]]
    result = score("classify", examples, predictions, ["neg", "pos"])
    assert result["accuracy"] == 0.75 and result["unseen_labels"] == 1
