"""`bertfast pretrain` end to end with tiny models: the loss is transformers', the shipped sample
trains, a killed run resumes bitwise, from-scratch and NSP runs give folders transformers loads,
bad input ends in one line."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertfast import cli
from bertfast.finetune.checkpoints import POINTER
from bertfast.pretrain import PretrainConfig, pretrain
from bertfast.pretrain.blocks import MLMBlocks
from bertfast.pretrain.corpus import token_cache
from bertfast.pretrain.job import _collate
from bertfast.pretrain.masking import tokenizer_masker, train_rng

from finetune_helpers import ROOT, make_tiny_bert
from pretrain_helpers import sentiment_text, tokenizer



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return sentiment_text(folder / "train.txt", rows=300), sentiment_text(folder / "eval.txt", "eval", rows=100)


def test_loss_equals_transformers_on_the_same_masked_batch(tiny, corpus, tmp_path):
    import transformers
    import bertfast
    tok = tokenizer()
    cache = token_cache([corpus[0]], tok.tokenizer, str(tmp_path / "cache"), "t", lambda m: None)
    blocks, masker = MLMBlocks(cache, 48, tok.cls_id, tok.sep_id), tokenizer_masker(tok.tokenizer, 0.15, True)
    rows = []
    for i in range(8):
        ids, types, _ = blocks.example(i)
        rows.append((*masker(ids, train_rng(0, 0, i)), types, None))
    batch = _collate([(a, t, b, n) for a, b, t, n in rows], tok.pad_id)
    with pytest.warns(UserWarning, match="newly initialised"):  # the MLM head is new
        ours = bertfast.BertForMaskedLM.from_pretrained(tiny, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours.save_pretrained(tmp_path / "mlm")
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path / "mlm", hidden_dropout_prob=0.0,
                                                          attention_probs_dropout_prob=0.0)
    ours.train(), theirs.train()
    mean = ours(**batch).loss
    reference = theirs(**batch).loss
    torch.testing.assert_close(mean, reference, rtol=1e-5, atol=1e-5)
    total = ours(**batch, loss_reduction="sum").loss
    torch.testing.assert_close(total, mean * (batch["labels"] != -100).sum(), rtol=1e-5, atol=1e-4)


def test_shipped_sample_trains_and_finetune_takes_the_output(tiny, tmp_path):
    train = sentiment_text(tmp_path / "train.txt", rows=2000)
    heldout = sentiment_text(tmp_path / "eval.txt", "eval", rows=300)
    out = tmp_path / "out"
    result = pretrain(PretrainConfig(model=tiny, train=[train], eval=[heldout], output=str(out), max_length=64,
                                     batch_size=32, lr=3e-3, epochs=1, device="cpu", progress=False, quiet=True))
    before, after = result["initial_eval"]["accuracy"], result["eval"]["accuracy"]
    assert before < 0.005 and after > 0.03 and after > 10 * before, (before, after)
    assert result["eval"]["loss"] < result["initial_eval"]["loss"] - 1
    saved = json.load(open(out / "eval_results.json"))
    assert saved["final"]["accuracy"] == after and saved["before_training"]["accuracy"] == before
    log = (out / "train_log.txt").read_text()
    assert "created a new one" in log and "tied to the word embeddings" in log and "trained " in log
    import transformers
    assert type(transformers.AutoModelForMaskedLM.from_pretrained(out)).__name__ == "BertForMaskedLM"
    from bertfast.finetune.models import load_model
    model, _ = load_model("classify", str(out), ["neg", "pos"])    # what `bertfast finetune --model` does
    assert model.num_labels == 2


def run_cli(args, env_extra=None, check=True):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "bertfast", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_resume_after_kills_is_bitwise_identical(tiny, corpus, tmp_path):
    """Killed while writing a checkpoint, then between checkpoints: the same weights, pointer and
    eval log as a run that never stopped (dropout on, masks drawn anew each epoch)."""
    args = lambda out: ["pretrain", "--model", tiny, "--train", corpus[0], "--eval", corpus[1], "--output", str(out),
                        "--max-length", "32", "--batch-size", "8", "--gradient-accumulation", "2", "--epochs", "0.5",
                        "--lr", "1e-3", "--device", "cpu", "--eval-every", "3", "--save-every", "2", "--seed", "5",
                        "--whole-word", "--keep-checkpoints", "--no-progress", "--max-eval-blocks", "24"]
    run_cli(args(tmp_path / "straight"))
    killed = tmp_path / "killed"
    first = run_cli(args(killed), {"BERTFAST_TEST_DIE_AT": "save:4"}, check=False)
    assert first.returncode == 17, first.stderr
    assert json.load(open(killed / "checkpoints" / POINTER))["latest"] == "step-00000003"
    second = run_cli(["pretrain", "--resume", "--output", str(killed), "--no-progress"],
                     {"BERTFAST_TEST_DIE_AT": "step:7"}, check=False)
    assert second.returncode == 17, second.stderr
    assert "token cache" in second.stdout and "reused" in second.stdout
    shutil.copytree(killed, tmp_path / "copy")
    run_cli(["pretrain", "--resume", "--output", str(killed), "--no-progress"])
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.load(open(tmp_path / "straight" / "checkpoints" / POINTER)) == json.load(open(killed / "checkpoints" / POINTER))
    assert (tmp_path / "straight" / "eval_log.jsonl").read_text() == (killed / "eval_log.jsonl").read_text()
    os.utime(corpus[0], ns=(os.stat(corpus[0]).st_atime_ns, os.stat(corpus[0]).st_mtime_ns + 10**9))
    changed = run_cli(["pretrain", "--resume", "--output", str(tmp_path / "copy")], check=False)
    assert changed.returncode == 1 and "other settings for corpus" in changed.stderr  # the corpus changed since


def test_from_scratch_with_nsp_in_bf16(corpus, tmp_path):
    from finetune_helpers import minilm_path
    out = tmp_path / "out"
    text = tmp_path / "docs.txt"  # blank-line separated documents of several sentences
    lines = open(corpus[0]).read().splitlines()
    text.write_text("\n\n".join("\n".join(lines[i:i + 6]) for i in range(0, len(lines), 6)) + "\n")
    result = pretrain(PretrainConfig(config="tiny", tokenizer=minilm_path(), train=[str(text)], eval=[str(text)],
                                     output=str(out), nsp=True, whole_word=True, max_length=64, batch_size=16, precision="bf16",
                                     epochs=0.3, device="cpu", progress=False, quiet=True, max_eval_blocks=16))
    assert {"accuracy", "loss", "perplexity", "nsp_accuracy"} <= set(result["eval"])
    import transformers
    model = transformers.BertForPreTraining.from_pretrained(out)
    assert model.config.hidden_size == 64 and os.path.exists(out / "tokenizer.json")


def cli_error(capsys, args):
    code = cli.main(args)
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertfast pretrain: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_bad_input_is_one_line_and_leaves_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["pretrain", "--model", tiny, "--output", str(out), "--device", "cpu", "--no-progress"]
    (tmp_path / "empty.txt").write_text("")
    assert "empty.txt: no usable text" in cli_error(capsys, base + ["--train", str(tmp_path / "empty.txt")])
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xc3\x28 broken\n")
    assert "bad.txt, line 2: not UTF-8" in cli_error(capsys, base + ["--train", str(tmp_path / "bad.txt")])
    (tmp_path / "empty_dir").mkdir()
    assert "has no files" in cli_error(capsys, base + ["--train", str(tmp_path / "empty_dir")])
    assert not out.exists()
    small = tmp_path / "config.json"
    small.write_text(json.dumps({"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 64}))
    message = cli_error(capsys, ["pretrain", "--config", str(small), "--tokenizer", tiny, "--train",
                                 str(tmp_path / "bad.txt"), "--output", str(out)])
    assert "30,522 tokens but the model's vocabulary 1,000" in message
    assert "more than the model's 512 positions" in cli_error(capsys, base + ["--train", str(tmp_path / "bad.txt"),
                                                                            "--max-length", "600"])
    assert "--tokenizer" in cli_error(capsys, ["pretrain", "--config", "tiny", "--train", "x", "--output", str(out)])
    assert "bert-base" in cli_error(capsys, ["pretrain", "--config", "nosuch", "--tokenizer", tiny, "--train", "x",
                                             "--output", str(out)])
    assert not out.exists()


def test_ddp_two_processes_match_one(corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo), batch 4 each, against 1 process with batch 8: the
    same masks, the same updates (float tolerance), the same held-out metrics; rank 0 builds the
    token cache, rank 1 opens it."""
    tiny0 = make_tiny_bert(tmp_path / "tiny0", dropout=0.0)
    common = ["--model", tiny0, "--train", corpus[0], "--eval", corpus[1], "--max-length", "32", "--epochs", "0.25",
              "--lr", "1e-3", "--device", "cpu", "--seed", "3", "--no-progress", "--max-eval-blocks", "16"]
    run_cli(["pretrain", *common, "--batch-size", "8", "--output", str(tmp_path / "one")])
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "bertfast", "pretrain", *common, "--batch-size", "4", "--output", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)
    la = [json.loads(x) for x in open(tmp_path / "one" / "eval_log.jsonl")]
    lb = [json.loads(x) for x in open(tmp_path / "two" / "eval_log.jsonl")]
    assert [x["step"] for x in la] == [x["step"] for x in lb] and la[0]["masked_tokens"] == lb[0]["masked_tokens"]
    for x, y in zip(la, lb):
        assert x["accuracy"] == pytest.approx(y["accuracy"], abs=1e-3)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
