"""The `bertfast` command: help, the embedded default's settings, and every kind of bad input
(a clear message, exit status 1, nothing left behind)."""
import json
import os

import pytest

from bertfast.cli import DEFAULT_OUTPUT, build_parser, finetune_config, main
from bertfast.finetune.data import sample_path

from finetune_helpers import make_tiny_bert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny"))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--task", "--model", "--train", "--eval", "--output", "--text-column", "--text-pair-column",
                   "--label-column", "--max-length", "--epochs", "--batch-size", "--lr", "--warmup-ratio",
                   "--weight-decay", "--gradient-accumulation", "--precision", "--device", "--seed", "--eval-every",
                   "--resume", "torchrun"):
        assert option in text, option
    for command in ("predict", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--model" in capsys.readouterr().out


def test_no_arguments_is_the_embedded_default():
    cfg, default = finetune_config(build_parser().parse_args(["finetune"]))
    assert default and cfg.task == "classify" and cfg.device == "cpu"
    assert cfg.train == sample_path("classify") and cfg.eval == sample_path("classify", "eval")
    assert os.path.exists(os.path.join(cfg.model, "config.json")) and cfg.output == DEFAULT_OUTPUT
    cfg, default = finetune_config(build_parser().parse_args(["finetune", "--epochs", "1", "--output", "x"]))
    assert default and cfg.epochs == 1 and cfg.output == "x"


def test_missing_required_arguments(capsys):
    with pytest.raises(SystemExit, match="--train, --output required"):
        main(["finetune", "--task", "classify", "--model", "m"])


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def bad_input_cases(tmp_path, tiny):
    squad = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where?", "answers": [{"text": "Spain", "answer_start": 12}]}]}]}]}
    return {
        "missing train file": (["--train", tmp_path / "nope.csv"], "nope.csv does not exist"),
        "empty file": (["--train", write(tmp_path, "empty.csv", "")], "is empty"),
        "missing column": (["--train", write(tmp_path, "cols.csv", "body,label\nx,1\ny,0\n")],
                           "cannot find the text column"),
        "named column absent": (["--train", sample_path("classify"), "--text-column", "review"], "no column 'review'"),
        "malformed row": (["--train", write(tmp_path, "bad.csv", "text,label\na,1\nb,0,extra\n")], "bad.csv, line 3"),
        "qa answer not in context": (["--task", "qa", "--train", write(tmp_path, "q.json", json.dumps(squad))],
                                     "answer 'Spain' does not occur in its context"),
        "missing model": (["--model", tmp_path / "no-model"], "does not exist"),
        "fp16 on cpu": (["--precision", "fp16"], "fp16 needs a CUDA GPU"),
    }


@pytest.mark.parametrize("case", ["missing train file", "empty file", "missing column", "named column absent",
                                  "malformed row", "qa answer not in context", "missing model",
                                  "fp16 on cpu"])
def test_bad_input_fails_cleanly(case, tiny, tmp_path, capsys):
    extra, message = bad_input_cases(tmp_path, tiny)[case]
    out = tmp_path / "out"
    argv = ["finetune", "--task", "classify", "--model", tiny, "--train", sample_path("classify"),
            "--output", out, "--device", "cpu", "--epochs", "1", "--no-progress"] + extra
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert message in err
    assert err.startswith("bertfast finetune: error:")
    assert not out.exists()


def test_unwritable_output(tiny, tmp_path, capsys):
    blocker = write(tmp_path, "a-file", "x")
    code, _, err = run(capsys, "finetune", "--task", "classify", "--model", tiny, "--train", sample_path("classify"),
                       "--output", blocker / "out", "--device", "cpu", "--no-progress")
    assert code == 1 and "cannot be written" in err


def test_non_empty_output_refused(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "finetune", "--task", "classify", "--model", tiny, "--train", sample_path("classify"),
                       "--output", out, "--device", "cpu")
    assert code == 1 and "is not empty" in err and (out / "keep.txt").read_text() == "mine"


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    code, _, err = run(capsys, "finetune", "--resume", "--output", tmp_path / "never")
    assert code == 1 and "nothing to resume" in err
    assert not (tmp_path / "never").exists()


def test_truncation_is_counted_in_the_log(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "finetune", "--task", "pair", "--model", tiny, "--train", sample_path("pair"),
                            "--output", out, "--device", "cpu", "--max-length", "24", "--epochs", "0.05",
                            "--batch-size", "32", "--no-progress")
    assert code == 0, err
    log = (out / "train_log.txt").read_text()
    assert "texts longer than --max-length 24 tokens were truncated" in log
    assert "were truncated" in stdout


def test_predict_and_evaluate_errors(tiny, tmp_path, capsys):
    code, _, err = run(capsys, "predict", "--model", tiny, "--input", sample_path("classify"),
                       "--output", tmp_path / "p.jsonl")
    assert code == 1 and "bertfast_task.json" in err  # not a fine-tuned model: say what to do
    code, _, err = run(capsys, "evaluate", "--model", tmp_path / "nothing", "--data", sample_path("classify"))
    assert code == 1 and "does not exist" in err


def test_every_command_is_named_in_the_docstring_and_help(capsys):
    import bertfast.cli
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"finetune", "pretrain", "predict", "evaluate", "embed", "search", "bench", "info"}
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command, sub in commands.items():
        assert f"\n  {command} " in bertfast.cli.__doc__, command
        assert command in parser.description and command in text, command
        assert sub.description, command  # `bertfast COMMAND --help` says what it does


def test_interrupt_message_names_resume_only_with_a_checkpoint(tmp_path):
    from bertfast.cli import _interrupted
    from bertfast.finetune.checkpoints import POINTER, checkpoints_dir
    args = build_parser().parse_args(["finetune", "--output", str(tmp_path)])
    assert _interrupted(args) == "interrupted"
    os.makedirs(checkpoints_dir(str(tmp_path)))
    (tmp_path / "checkpoints" / POINTER).write_text("{}")
    assert "--resume --output" in _interrupted(args)
