"""Fine-tuning end to end on the shipped samples with a tiny random BERT (seconds each), exact
resume after kills at awkward moments, 2-process DDP against 1 process, and metrics."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertfast.finetune import metrics
from bertfast.finetune.checkpoints import POINTER
from bertfast.finetune.data import sample_path
from bertfast.finetune.trainer import FinetuneConfig, finetune

from finetune_helpers import ROOT


def config(task, model, output, **kw):
    base = dict(task=task, model=model, train=sample_path(task), eval=sample_path(task, "eval"), output=str(output),
                max_length=64, epochs=1, batch_size=16, lr=1e-3, device="cpu", max_train_examples=160,
                progress=False, quiet=True)
    base.update(kw)
    return FinetuneConfig(**base)


EXPECTED_METRICS = {"classify": {"accuracy", "f1", "mcc"}, "pair": {"accuracy", "f1", "mcc"},
                    "regress": {"pearson", "spearman"}, "tag": {"token_accuracy", "f1"}, "qa": {"exact_match", "f1"}}


@pytest.mark.parametrize("task", ["classify", "pair", "regress", "tag", "qa"])
def test_each_task_end_to_end(task, tiny, tmp_path):
    from bertfast.finetune.predict import evaluate, predict
    out = tmp_path / "out"
    extra = {"qa": dict(max_length=128), "tag": dict(max_train_examples=0, epochs=0.1)}.get(task, {})
    result = finetune(config(task, tiny, out, **extra))  # tag: every tag of the eval file must occur in train
    assert EXPECTED_METRICS[task] <= set(result["eval"])
    assert all(math.isfinite(v) for v in result["eval"].values())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "bertfast_task.json", "eval_log.jsonl"):
        assert (out / name).exists(), name
    assert not [n for n in os.listdir(out) if "tmp" in n]
    # predict writes one line per example; evaluate reproduces the training-time evaluation
    pred_file = tmp_path / "pred.jsonl"
    predict(str(out), sample_path(task, "eval"), str(pred_file), device="cpu")
    lines = [json.loads(x) for x in pred_file.read_text().splitlines()]
    expected_key = {"classify": "probabilities", "pair": "label", "regress": "score", "tag": "tags", "qa": "answer"}[task]
    assert lines and all(expected_key in x for x in lines)
    again = evaluate(str(out), sample_path(task, "eval"), device="cpu")
    best = result["best"]
    for k, v in best.items():  # another batch size packs differently: float noise only
        assert again[k] == pytest.approx(v, abs=1e-4), k
    # transformers loads the saved model back
    import transformers
    from bertfast.finetune.models import MODEL_CLASS
    getattr(transformers, MODEL_CLASS[task]).from_pretrained(str(out), local_files_only=True)


def test_gradient_accumulation_equals_big_batch(tiny0, tmp_path):
    """Accumulating 2 micro-batches of 8 is the same update as one batch of 16 (float tolerance)."""
    a = finetune(config("classify", tiny0, tmp_path / "a", batch_size=16, eval=None))
    b = finetune(config("classify", tiny0, tmp_path / "b", batch_size=8, gradient_accumulation=2, eval=None))
    assert a["steps"] == b["steps"]
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def run_cli(args, env_extra=None, check=True):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "bertfast", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def finetune_args(model, output, task="classify"):
    return ["finetune", "--task", task, "--model", model, "--train", sample_path(task), "--eval",
            sample_path(task, "eval"), "--output", str(output), "--max-length", "48", "--epochs", "2",
            "--batch-size", "16", "--gradient-accumulation", "2", "--lr", "1e-3", "--device", "cpu",
            "--eval-every", "3", "--save-every", "2", "--seed", "7", "--keep-checkpoints", "--no-progress"]


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_resume_after_kills_is_bitwise_identical(tiny, tmp_path):
    """Killed in the middle of writing a checkpoint, then between checkpoints, then resumed:
    the final weights (best and last) equal those of a run that never stopped, bit for bit.
    Dropout is on, so the RNG states must be restored too."""
    args = lambda out: finetune_args(tiny, out) + ["--train", str(small_train(tmp_path)),
                                                   "--eval", str(small_train(tmp_path, "eval", 100))]
    run_cli(args(tmp_path / "straight"))
    killed = tmp_path / "killed"
    first = run_cli(args(killed), {"BERTFAST_TEST_DIE_AT": "save:4"}, check=False)
    assert first.returncode == 17
    assert json.load(open(killed / "checkpoints" / POINTER))["latest"] == "step-00000003"  # saved at 2, 3 (eval); killed saving 4
    second = run_cli(["finetune", "--resume", "--output", str(killed), "--no-progress"],
                     {"BERTFAST_TEST_DIE_AT": "step:7"}, check=False)
    assert second.returncode == 17, second.stderr
    run_cli(["finetune", "--resume", "--output", str(killed), "--no-progress"])
    for name in ("model.safetensors",):
        a, b = weights(tmp_path / "straight"), weights(killed)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    pa = json.load(open(tmp_path / "straight" / "checkpoints" / POINTER))
    pb = json.load(open(killed / "checkpoints" / POINTER))
    assert pa == pb
    la, lb = weights(tmp_path / "straight" / "checkpoints" / pa["latest"]), weights(killed / "checkpoints" / pb["latest"])
    for k in la:
        assert torch.equal(la[k], lb[k]), k
    strip = lambda p: [{k: v for k, v in json.loads(x).items()} for x in open(p)]
    assert strip(tmp_path / "straight" / "eval_log.jsonl") == strip(killed / "eval_log.jsonl")


def small_train(tmp_path, split="train", rows=120):
    """The first rows of the sentiment sample: subprocess runs stay short."""
    path = tmp_path / f"small-{split}.csv"
    if not path.exists():
        lines = open(sample_path("classify", split)).read().splitlines()[:rows + 1]
        path.write_text("\n".join(lines) + "\n")
    return path


def test_ddp_two_processes_match_one(tiny0, tmp_path):
    """torchrun with 2 CPU processes (gloo), batch 8 each, against 1 process with batch 16."""
    common = ["--task", "classify", "--model", tiny0, "--train", str(small_train(tmp_path)),
              "--eval", str(small_train(tmp_path, "eval", 200)), "--max-length", "48", "--epochs", "2", "--lr", "1e-3",
              "--device", "cpu", "--seed", "3", "--no-progress"]
    run_cli(["finetune", *common, "--batch-size", "16", "--output", str(tmp_path / "one")])
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "bertfast", "finetune", *common, "--batch-size", "8", "--output", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)
    la = [json.loads(x) for x in open(tmp_path / "one" / "eval_log.jsonl")]
    lb = [json.loads(x) for x in open(tmp_path / "two" / "eval_log.jsonl")]
    assert [x["step"] for x in la] == [x["step"] for x in lb]
    for x, y in zip(la, lb):
        assert x["accuracy"] == pytest.approx(y["accuracy"], abs=2e-3)
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-3)


@pytest.mark.slow
def test_minilm_learns_sentiment(tmp_path):
    """The real checkpoint on real reviews: well above chance after a short run."""
    from finetune_helpers import minilm_path
    held_out = tmp_path / "held_out.csv"
    held_out.write_text("\n".join(open(sample_path("classify", "eval")).read().splitlines()[:401]) + "\n")
    result = finetune(config("classify", minilm_path(), tmp_path / "m", max_train_examples=800, epochs=1, eval=str(held_out),
                             batch_size=32, lr=1e-4, precision="bf16", max_length=48, warmup_ratio=0.1))
    assert result["best"]["accuracy"] >= 0.65, result["best"]  # chance is 0.5 (balanced); 400 examples: sd 0.025


# metrics: definitions checked on cases worked out by hand
def test_classification_metrics():
    m = metrics.classification_metrics([0, 1, 1, 0, 1], [0, 1, 0, 0, 1], 2)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.8)  # class 1: precision 2/3, recall 1
    tp, tn, fp, fn = 2, 2, 1, 0
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(mcc)
    assert metrics.classification_metrics([0, 0], [0, 0], 2)["mcc"] == 0.0


def test_correlations():
    x = [1.0, 2.0, 2.0, 3.0, 5.0]
    y = [2.0, 1.0, 4.0, 3.0, 7.0]
    assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert list(metrics.ranks(x)) == [1.0, 2.5, 2.5, 4.0, 5.0]
    m = metrics.regression_metrics(x, y)
    assert m["spearman"] == pytest.approx(np.corrcoef(metrics.ranks(x), metrics.ranks(y))[0, 1])


def test_entity_f1_and_token_accuracy():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "I-ORG"]]  # I- after O starts a chunk (conlleval)
    m = metrics.tagging_metrics(pred, gold)
    assert m["token_accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert "f1" not in metrics.tagging_metrics([["NN", "VB"]], [["NN", "NN"]])  # POS tags: accuracy only


def test_squad_metrics():
    assert metrics.normalize_answer("The  Denver Broncos!") == "denver broncos"
    examples = [{"id": "a", "answers": [{"text": "Denver Broncos"}, {"text": "the Broncos"}]},
                {"id": "b", "answers": [{"text": "in 1990"}]}]
    m = metrics.squad_metrics({"a": "broncos", "b": "1990"}, examples)
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(100 * (1.0 + 2 * (1 / 1) * (1 / 2) / 1.5) / 2)


def test_decoding_oracle_outputs_scores_perfectly():
    """Logits that point at the gold answer / gold tags decode to a perfect score: the QA window,
    offset and max-context bookkeeping and the tag-to-word alignment lose nothing."""
    from bertfast.finetune import evaluation
    from bertfast.finetune.data import label_list, load_examples
    from bertfast.finetune.tokenization import BertTokenizer, encode_qa_examples, encode_tag_examples
    from finetune_helpers import minilm_path
    tok = BertTokenizer(minilm_path())
    examples = load_examples("qa", sample_path("qa", "eval"))
    features, _ = encode_qa_examples(tok, examples, 96, doc_stride=32)
    outputs = []
    for f in features:
        start, end = np.zeros(len(f.input_ids)), np.zeros(len(f.input_ids))
        if f.start_position:
            start[f.start_position] = end[f.end_position] = 10.0
        outputs.append((start, end))
    predictions = evaluation.decode("qa", examples, features, outputs, None)
    assert evaluation.score("qa", examples, predictions, None)["exact_match"] > 97.0
    for ex, p in zip(examples, predictions):
        if not any(metrics.squad_exact_match(p["text"], a["text"]) for a in ex["answers"]):
            # only answers that end inside a word ("8" of "18") cannot be given exactly by token spans
            assert ex["answers"][0]["text"] in p["text"], (p["text"], ex["answers"][0]["text"])

    examples = load_examples("tag", sample_path("tag", "eval"))
    labels = label_list("tag", load_examples("tag", sample_path("tag")))
    index = {t: i for i, t in enumerate(labels)}
    features, _ = encode_tag_examples(tok, examples, 512, index)
    outputs = []
    for f, ex in zip(features, examples):
        word_logits = np.zeros((len(ex.tokens), len(labels)), dtype=np.float32)
        word_logits[np.arange(len(ex.tokens)), [index[t] for t in ex.tags]] = 1.0
        word_logits[np.asarray(f.word_starts) < 0] = np.nan  # words that tokenize to nothing
        outputs.append(word_logits)
    scores = evaluation.score("tag", examples, evaluation.decode("tag", examples, features, outputs, labels), labels)
    assert scores["token_accuracy"] > 0.999 and scores["f1"] > 0.99


@pytest.mark.parametrize("task", ["pair", "tag", "qa"])
def test_models_are_bertfasts_own_classes(task, tiny, tmp_path):
    """The trainer, predict and evaluate load bertfast's heads (whose loss they use), with the
    label names of the run, and save a folder that loads back."""
    import bertfast
    from bertfast.finetune.models import MODEL_CLASS, label_names, load_model, save_model_files
    labels = {"pair": ["no", "yes"], "tag": ["O", "B-PER", "I-PER"], "qa": None}[task]
    model, notes = load_model(task, tiny, labels)
    assert type(model) is getattr(bertfast, MODEL_CLASS[task])
    assert notes  # the new head is named in the log
    if labels is not None:
        assert label_names(model) == labels
    save_model_files(model, tiny, {"task": task}, str(tmp_path))
    assert json.loads((tmp_path / "bertfast_task.json").read_text()) == {"task": task}
    again, _ = load_model(task, str(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
