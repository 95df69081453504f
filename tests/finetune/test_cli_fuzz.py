"""A fuzz of the `bertfast` command (issue 17): malformed data files (truncated JSON, wrong types at
every level of SQuAD and JSONL, wrong columns, empty files, binary garbage, huge numbers, unicode
oddities) and malformed options, run through `bertfast.cli.main` in-process and, where a crash is
possible, as `python -m bertfast` in a subprocess. Every case must end with exit status 0 (a file
that happens to be valid), 1 with a single line `bertfast CMD: error: ...` on stderr, or argparse's 2;
never a traceback, never a file left half-written. Cases that are invalid by an independent spec
(the wrong JSON type where SQuAD wants another, an option out of its range) must be refused.

The CI subset is fast and deterministic; BERTFAST_FUZZ_EXAMPLES=500 (make fuzz) runs longer."""
import contextlib
import copy
import io
import json
import math
import os
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from bertfast.cli import main

from finetune_helpers import make_tiny_bert

EXAMPLES = int(os.environ.get("BERTFAST_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 12, derandomize=not EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
CASES = {"run": 0, "failed": 0}
TEMP_NAME = re.compile(r"\.tmp|\.write-test-")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["bertfast.cli"].__file__)))

SQUAD = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Paris is the capital of France.",
         "qas": [{"id": "q1", "question": "Capital of France?", "answers": [{"text": "Paris", "answer_start": 0}]},
                 {"id": "q2", "question": "Which country?", "answers": [{"text": "France", "answer_start": 24}]}]}]}]}
QA_LINE = {"id": "a", "question": "Capital?", "context": "Paris is the capital of France.",
           "answers": {"text": ["Paris"], "answer_start": [0]}}
TAG_LINE = {"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"]}
CSV = "text,label\ngood film,pos\nbad film,neg\nfine film,pos\nawful film,neg\n"

# Each place in a SQuAD file and what it must hold there (the independent spec of the oracle).
P, Q, A = ("data", 0, "paragraphs", 0), ("data", 0, "paragraphs", 0, "qas", 0), \
    ("data", 0, "paragraphs", 0, "qas", 0, "answers", 0)
NONEMPTY_TEXT = lambda v: isinstance(v, str) and v.strip() != ""  # noqa: E731
INTEGER = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
SQUAD_SPEC = {("data",): lambda v: isinstance(v, list), ("data", 0): lambda v: isinstance(v, dict),
              ("data", 0, "paragraphs"): lambda v: isinstance(v, list), P: lambda v: isinstance(v, dict),
              P + ("context",): NONEMPTY_TEXT, P + ("qas",): lambda v: isinstance(v, list),
              Q: lambda v: isinstance(v, dict), Q + ("id",): lambda v: INTEGER(v) or NONEMPTY_TEXT(v),
              Q + ("question",): NONEMPTY_TEXT, Q + ("answers",): lambda v: isinstance(v, (list, dict)),
              A: lambda v: isinstance(v, dict), A + ("text",): NONEMPTY_TEXT,
              A + ("answer_start",): lambda v: v is None or INTEGER(v)}  # null: found in the context
QA_LINE_SPEC = {("id",): SQUAD_SPEC[Q + ("id",)], ("question",): NONEMPTY_TEXT, ("context",): NONEMPTY_TEXT,
                ("answers",): lambda v: isinstance(v, (list, dict)),
                ("answers", "text"): lambda v: isinstance(v, list), ("answers", "text", 0): NONEMPTY_TEXT,
                ("answers", "answer_start"): lambda v: v is None or (isinstance(v, list) and len(v) == 1),
                ("answers", "answer_start", 0): lambda v: v is None or INTEGER(v)}
TAG_SPEC = {("tokens",): lambda v: isinstance(v, list) and len(v) == 3, ("tokens", 0): NONEMPTY_TEXT,
            ("tags",): lambda v: isinstance(v, list) and len(v) == 3,
            ("tags", 0): lambda v: INTEGER(v) or NONEMPTY_TEXT(v)}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10 ** 30, max_value=10 ** 30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=4)
odd_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30) | st.sampled_from(
    ["\u200b", "\ufeff", "e\u0301", "\u2028", "\U0001F600" * 5, "a\x00b", "\r\r\n", "1e999", "NaN",
     "9" * 5000, "\"unclosed", "\t\t"])


# ---- running a case and checking its outcome ----

def run_cli(argv):
    """(exit status, stderr) of bertfast.cli.main in this process; an escaped exception is a failure."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except Exception as e:  # a traceback for the user
            code = f"escaped {type(e).__name__}: {e}"
    return code, err.getvalue()


def run_subprocess(argv, timeout=120):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "bertfast"] + [str(a) for a in argv], capture_output=True,
                          text=True, env=env, timeout=timeout)
    return done.returncode, done.stderr


def check_outcome(argv, code, err, folder, must_fail=False):
    """The fuzz's assertions (counted in CASES)."""
    CASES["run"] += 1
    command = str(argv[0])
    try:
        assert "Traceback" not in err and not isinstance(code, str), f"{argv}: {code}\n{err[-2000:]}"
        assert code in ((1, 2) if must_fail else (0, 1, 2)), f"{argv}: exit {code} for an invalid case\n{err}"
        if code == 1:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"bertfast {command}: error: "), f"{argv}:\n{err}"
        if code == 2:
            assert "usage:" in err and f"bertfast {command}: error:" in err, f"{argv}:\n{err}"
        left = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if TEMP_NAME.search(n)]
        assert not left, f"{argv}: temporary files left behind: {left}"
    except AssertionError:
        CASES["failed"] += 1
        raise
    return code, err


def cli_case(argv, folder, must_fail=False, subprocess_=False):
    code, err = (run_subprocess if subprocess_ else run_cli)(argv)
    return check_outcome(argv, code, err, folder, must_fail)


def mutate(doc, path, value):
    """A copy of doc with the value at path replaced; None when the path does not exist."""
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\nCLI fuzz: {CASES['run']} cases, {CASES['failed']} failures", file=sys.__stderr__)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny"), hidden=16, layers=1)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One tiny classifier, trained once: predict and evaluate run against it (with --task for other tasks)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "train.csv").write_text(CSV)
    out = root / "model"
    code, err = run_cli(["finetune", "--task", "classify", "--model", tiny, "--train", root / "train.csv",
                         "--output", out, "--device", "cpu", "--epochs", "1", "--max-length", "16", "--no-progress"])
    assert code == 0, err
    return str(out)


@pytest.fixture
def folder(tmp_path):
    return tmp_path


def data_file(folder, name, content):
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


def evaluate_args(model, task, path, max_length=32):
    return ["evaluate", "--model", model, "--task", task, "--data", path, "--device", "cpu",
            "--max-length", str(max_length)]


# ---- generated data files ----

def _mutation_test(template, spec, task, suffix, encode):
    @FUZZ
    @given(path=st.sampled_from(sorted(spec, key=str)), value=json_values, data=st.data())
    def body(trained, tmp_path_factory, path, value, data):
        folder = tmp_path_factory.mktemp("case")
        doc = mutate(template, path, value)
        path_file = data_file(folder, "d" + suffix, encode(doc))
        command = data.draw(st.sampled_from(["evaluate", "predict"]))
        argv = evaluate_args(trained, task, path_file)
        if command == "predict":
            argv = ["predict", "--model", trained, "--task", task, "--input", path_file, "--output",
                    folder / "p.jsonl", "--device", "cpu", "--max-length", "32"]
        labels = "answers" in path or "tags" in path  # predict needs none: it may accept what evaluate refuses
        invalid = not spec[path](value) and not (command == "predict" and labels)
        cli_case(argv, folder, must_fail=invalid)
    return body


def test_squad_json_with_wrong_types(trained, tmp_path_factory):
    _mutation_test(SQUAD, SQUAD_SPEC, "qa", ".json", json.dumps)(trained, tmp_path_factory)


def test_qa_jsonl_with_wrong_types(trained, tmp_path_factory):
    _mutation_test(QA_LINE, QA_LINE_SPEC, "qa", ".jsonl", lambda d: json.dumps(d) + "\n")(trained, tmp_path_factory)


def test_tag_jsonl_with_wrong_types(trained, tmp_path_factory):
    _mutation_test(TAG_LINE, TAG_SPEC, "tag", ".jsonl", lambda d: json.dumps(d) + "\n")(trained, tmp_path_factory)


FORMATS = [("qa", ".json"), ("qa", ".jsonl"), ("tag", ".jsonl"), ("tag", ".conll"), ("classify", ".csv"),
           ("classify", ".tsv"), ("classify", ".jsonl"), ("regress", ".jsonl")]
VALID = {".json": json.dumps(SQUAD), ".jsonl": json.dumps(QA_LINE) + "\n", ".conll": "Paris B-LOC\nis O\n\n",
         ".csv": CSV, ".tsv": CSV.replace(",", "\t")}


@FUZZ
@given(fmt=st.sampled_from(FORMATS), garbage=st.binary(max_size=64) | odd_text.map(lambda t: t.encode("utf-8")),
       cut=st.floats(0, 1), data=st.data())
def test_garbage_truncated_and_odd_files(trained, tmp_path_factory, fmt, garbage, cut, data):
    """Binary garbage, a valid file cut short, or odd bytes spliced into a valid file."""
    task, suffix = fmt
    folder = tmp_path_factory.mktemp("case")
    valid = VALID[suffix].encode()
    how = data.draw(st.sampled_from(["garbage", "truncated", "spliced"]))
    content = {"garbage": garbage, "truncated": valid[:int(cut * len(valid))],
               "spliced": valid[:int(cut * len(valid))] + garbage + valid[int(cut * len(valid)):]}[how]
    cli_case(evaluate_args(trained, task, data_file(folder, "d" + suffix, content)), folder)


@FUZZ
@given(header=st.lists(odd_text, min_size=1, max_size=3), cells=st.lists(odd_text, min_size=1, max_size=3),
       task=st.sampled_from(["classify", "pair", "regress"]), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_tables_with_odd_columns_and_values(trained, tmp_path_factory, header, cells, task, suffix):
    folder = tmp_path_factory.mktemp("case")
    if suffix == ".jsonl":
        content = json.dumps(dict(zip(header, cells)), ensure_ascii=False) + "\n"
    else:
        sep = "," if suffix == ".csv" else "\t"
        content = sep.join(header) + "\n" + sep.join(cells) + "\n"
    cli_case(evaluate_args(trained, task, data_file(folder, "d" + suffix, content)), folder)


# ---- generated options ----

# Each numeric option of finetune and whether a value is in its range (the independent spec).
FINETUNE_RANGES = {
    "--max-length": (int, lambda v: 4 <= v <= 512), "--doc-stride": (int, lambda v: v >= 0),
    "--max-train-examples": (int, lambda v: v >= 0), "--epochs": (float, lambda v: 0 < v <= 1e6),
    "--batch-size": (int, lambda v: v >= 1), "--gradient-accumulation": (int, lambda v: v >= 1),
    "--lr": (float, lambda v: v > 0), "--warmup-ratio": (float, lambda v: 0 <= v <= 1),
    "--weight-decay": (float, lambda v: v >= 0), "--max-grad-norm": (float, lambda v: v >= 0),
    "--seed": (int, lambda v: 0 <= v < 2 ** 32), "--eval-every": (int, lambda v: v >= 0),
    "--save-every": (int, lambda v: v >= 0)}
option_values = st.sampled_from(["nan", "inf", "-inf", "-0", "1e309", "0x10", "", " 3", "1_000", "٣", "-5",
                                 "0", str(2 ** 64), str(10 ** 40)]) | st.integers(-10 ** 20, 10 ** 20).map(str) \
    | st.floats().map(repr) | odd_text


def _in_range(kind, ok, text):
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        return None  # argparse refuses it (exit 2)
    return math.isfinite(value) and ok(value)


@FUZZ
@given(option=st.sampled_from(sorted(FINETUNE_RANGES)), value=option_values)
def test_finetune_options_out_of_range(tiny, tmp_path_factory, option, value):
    kind, ok = FINETUNE_RANGES[option]
    valid = _in_range(kind, ok, value)
    assume(valid is not True)  # valid values would start a training run: the other tests train
    folder = tmp_path_factory.mktemp("case")
    (folder / "train.csv").write_text(CSV)
    out = folder / "out"
    code, err = cli_case(["finetune", "--task", "classify", "--model", tiny, "--train", folder / "train.csv",
                          "--output", out, "--device", "cpu", "--no-progress", f"{option}={value}"], folder,
                         must_fail=True)
    assert code == (2 if valid is None else 1), err
    if code == 1:
        assert option in err, err
    assert not out.exists()


@FUZZ
@given(batch_size=st.integers(-10 ** 20, 10 ** 20) | st.sampled_from([0, 1, 2 ** 63]),
       max_length=st.integers(-10 ** 6, 10 ** 6) | st.sampled_from([3, 4, 512, 513]),
       command=st.sampled_from(["predict", "evaluate"]), to_folder=st.booleans())
def test_predict_and_evaluate_options(trained, tmp_path_factory, batch_size, max_length, command, to_folder):
    folder = tmp_path_factory.mktemp("case")
    data = data_file(folder, "d.csv", CSV)
    output = folder if to_folder else folder / "p.jsonl"
    flag = "--input" if command == "predict" else "--data"
    argv = [command, "--model", trained, flag, data, "--output", output, "--device", "cpu",
            "--batch-size", batch_size, "--max-length", max_length]
    invalid = batch_size < 1 or not 4 <= max_length <= 512 or to_folder
    code, err = cli_case(argv, folder, must_fail=invalid)
    if to_folder:
        assert "is a folder" in err
    assert sorted(os.listdir(folder)) == sorted(["d.csv"] + ([] if to_folder or code else ["p.jsonl"]))


# ---- the examples of issue 17, each with the message it must give ----

def _squad_with(path, value):
    return json.dumps(mutate(SQUAD, path, value))


def _qa_line_with(path, value):
    return json.dumps(mutate(QA_LINE, path, value)) + "\n"


NAMED_FILES = {
    "articles not objects": ("qa", ".json", _squad_with(("data", 0), "article"), "data[0]: expected an object"),
    "paragraphs a string": ("qa", ".json", _squad_with(("data", 0, "paragraphs"), "p"), "paragraphs: expected a list"),
    "qas an object": ("qa", ".json", _squad_with(P + ("qas",), {}), "qas: expected a list"),
    "question a list": ("qa", ".json", _squad_with(Q + ("question",), ["x"]), "missing or empty \"question\""),
    "answers a string": ("qa", ".json", _squad_with(Q + ("answers",), "Paris"), "\"answers\" must be a list"),
    "answer a number": ("qa", ".json", _squad_with(A, 3), "answers[0] must be an object"),
    "answer_start a string": ("qa", ".json", _squad_with(A + ("answer_start",), "0"), "must be an integer"),
    "negative answer_start": ("qa", ".json", _squad_with(A + ("text",), "France.")
                              .replace('"answer_start": 0', '"answer_start": -7'), "at answer_start -7"),
    "duplicate ids": ("qa", ".json", _squad_with(Q + ("id",), "q2"), "also the id of"),
    "jsonl answer text a string": ("qa", ".jsonl", _qa_line_with(("answers", "text"), "Paris"),
                                   "answers.text must be a list"),
    "jsonl duplicate ids": ("qa", ".jsonl", json.dumps(QA_LINE) + "\n" + json.dumps(QA_LINE) + "\n",
                            "line 2 (id a): id 'a' is also the id of"),
    "tags a string": ("tag", ".jsonl", json.dumps({"tokens": ["a", "b", "c"], "tags": "O O O"}) + "\n",
                      "the tags must be a list"),
    "null token": ("tag", ".jsonl", json.dumps({"tokens": ["a", None], "tags": ["O", "O"]}) + "\n",
                   "tokens[1] is null"),
    "non-UTF-8 SQuAD": ("qa", ".json", b'{"data": []}\n\xff\xfe', "d.json, line 2: not UTF-8 text (byte 13"),
    "non-UTF-8 CSV": ("classify", ".csv", b"text,label\ngood,pos\nbad\xe9,neg\n", "d.csv, line 3: not UTF-8"),
    "deeply nested JSON": ("qa", ".json", "[" * 100000 + "]" * 100000, "d.json: not readable JSON"),
    "regression label 1e308": ("regress", ".jsonl", '{"text": "a", "label": 1e308}\n', "label 1e+308 is too large"),
}


@pytest.mark.parametrize("case", sorted(NAMED_FILES))
def test_named_bad_files(case, trained, tmp_path):
    task, suffix, content, message = NAMED_FILES[case]
    path = data_file(tmp_path, "d" + suffix, content)
    code, err = cli_case(evaluate_args(trained, task, path), tmp_path, must_fail=message is not None)
    assert message is None or message in err, err


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "inf", "--epochs must be more than 0"), ("--epochs", "nan", "--epochs must be"),
    ("--device", "tpu", "--device tpu: choose auto, cpu, cuda or cuda:N"),
    ("--doc-stride", "-5", "--doc-stride must be at least 0"), ("--warmup-ratio", "5", "--warmup-ratio must be"),
    ("--max-grad-norm", "nan", "--max-grad-norm must be"), ("--max-train-examples", "-5", "--max-train-examples"),
    ("--weight-decay", "nan", "--weight-decay must be"), ("--lr", "0", "--lr must be more than 0"),
    ("--max-length", "100000", "--max-length 100000 is longer than the 512 positions")])
def test_named_bad_options(option, value, message, tiny, tmp_path):
    (tmp_path / "train.csv").write_text(CSV)
    argv = ["finetune", "--task", "classify", "--model", tiny, "--train", tmp_path / "train.csv", "--output",
            tmp_path / "out", "--device", "cpu", "--no-progress", option, value]
    code, err = cli_case(argv, tmp_path, must_fail=True, subprocess_=option in ("--epochs", "--device"))
    assert code == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_predict_batch_size_zero_and_output_folder(trained, tmp_path):
    data = data_file(tmp_path, "d.csv", CSV)
    code, err = cli_case(["predict", "--model", trained, "--input", data, "--output", tmp_path / "p.jsonl",
                          "--batch-size", "0", "--device", "cpu"], tmp_path, must_fail=True)
    assert "--batch-size must be at least 1" in err
    code, err = cli_case(["predict", "--model", trained, "--input", data, "--output", tmp_path, "--device", "cpu"],
                         tmp_path, must_fail=True, subprocess_=True)
    assert "is a folder" in err and os.listdir(tmp_path) == ["d.csv"]


def test_corrupt_model_files(trained, tmp_path):
    """A model folder with garbage weights or config (a subprocess: the safetensors reader is native code)."""
    import shutil
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    data = data_file(tmp_path, "d.csv", CSV)
    for name, garbage in (("bertfast_task.json", b"{\"task\": "), ("config.json", b"\x00\xff"),
                          ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": [1, 2"),):
        original = (model / name).read_bytes()
        (model / name).write_bytes(garbage)
        code, err = cli_case(["evaluate", "--model", model, "--data", data, "--device", "cpu"], tmp_path,
                             must_fail=True, subprocess_=name == "model.safetensors")
        assert name in err or "corrupt" in err, err
        (model / name).write_bytes(original)


@pytest.mark.parametrize("name, content", [("train_args.json", "{\"task\": \"classify\""),
                                           ("checkpoints/POINTER.json", "{bad"),
                                           ("checkpoints/POINTER.json", "{\"latest\": \"step-9\"}"),
                                           ("checkpoints/POINTER.json", "[]")])
def test_resume_with_corrupt_run_files(trained, tmp_path, name, content):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / name).write_text(content)
    before = sorted(os.listdir(out))
    code, err = cli_case(["finetune", "--resume", "--output", out, "--no-progress"], tmp_path, must_fail=True)
    assert os.path.basename(name) in err and "corrupt" in err and "--overwrite" in err, err
    assert sorted(os.listdir(out)) == before


def _diverging_run(tiny, tmp_path, lr, extra=()):
    lines = "".join(json.dumps({"text": f"text {i}", "label": 1e14 * (i % 3)}) + "\n" for i in range(8))
    data = data_file(tmp_path, "train.jsonl", lines)
    argv = ["finetune", "--task", "regress", "--model", tiny, "--train", data, "--output", tmp_path / "out",
            "--device", "cpu", "--epochs", "1", "--batch-size", "2", "--lr", lr, "--max-grad-norm", "0",
            "--max-length", "8", "--no-progress", *extra]
    return cli_case(argv, tmp_path, must_fail=True)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tiny, tmp_path):
    from safetensors.torch import load_file
    code, err = _diverging_run(tiny, tmp_path, "1e20", ["--save-every", "1", "--weight-decay", "0"])
    assert "became" in err and "at step 2" in err and "last good checkpoint" in err, err
    kept = tmp_path / "out" / "checkpoints" / "step-00000001"
    assert kept.is_dir() and str(kept) in err
    import torch
    assert all(torch.isfinite(t).all() for t in load_file(str(kept / "model.safetensors")).values())
    assert not (tmp_path / "out" / "model.safetensors").exists()  # no final model made of NaN


def test_weights_that_overflow_are_never_saved(tiny, tmp_path):
    code, err = _diverging_run(tiny, tmp_path, "1e39")
    assert "became" in err and "no checkpoint had been saved yet" in err, err
    assert not (tmp_path / "out").exists()


@FUZZ
@given(fmt=st.sampled_from(FORMATS), odd=odd_text | json_values.map(json.dumps), cut=st.floats(0, 1))
def test_finetune_on_spliced_files(tiny, tmp_path_factory, fmt, odd, cut):
    """The training path (label sets, one step of training on what is valid): odd text spliced into a valid file."""
    task, suffix = fmt
    folder = tmp_path_factory.mktemp("case")
    valid = VALID[suffix] if task != "regress" else '{"text": "a", "label": 0.5}\n{"text": "b", "label": 1}\n'
    at = int(cut * len(valid))
    path = data_file(folder, "d" + suffix, valid[:at] + odd + valid[at:])
    out = folder / "out"
    code, err = cli_case(["finetune", "--task", task, "--model", tiny, "--train", path, "--output", out,
                          "--device", "cpu", "--epochs", "0.01", "--max-length", "32", "--no-progress"], folder)
    assert out.exists() == (code == 0), err


def test_labels_that_look_like_digits_train(tiny, tmp_path):
    """'²'.isdigit() is True but int('²') fails: label sets are numeric only for ASCII integers."""
    path = data_file(tmp_path, "d.jsonl", '{"text": "a", "label": "\u00b2"}\n{"text": "b", "label": "1"}\n')
    code, err = cli_case(["finetune", "--task", "classify", "--model", tiny, "--train", path, "--output",
                          tmp_path / "out", "--device", "cpu", "--epochs", "0.01", "--no-progress"], tmp_path)
    assert code == 0, err


@pytest.mark.parametrize("name", ["model.safetensors", "training_state.pt", "trainer_state.json"])
def test_resume_from_a_corrupt_checkpoint(tiny, tmp_path, name):
    data = data_file(tmp_path, "train.csv", CSV)
    out = tmp_path / "run"
    code, err = run_cli(["finetune", "--task", "classify", "--model", tiny, "--train", data, "--output", out,
                         "--device", "cpu", "--epochs", "1", "--batch-size", "2", "--max-length", "16",
                         "--keep-checkpoints", "--no-progress"])
    assert code == 0, err
    pointer = json.loads((out / "checkpoints" / "POINTER.json").read_text())
    (out / "checkpoints" / "POINTER.json").write_text(json.dumps({"latest": pointer["latest"], "best": None}))
    (out / "checkpoints" / pointer["latest"] / name).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\"")
    code, err = cli_case(["finetune", "--resume", "--output", out, "--no-progress"], tmp_path, must_fail=True,
                         subprocess_=name == "model.safetensors")
    assert pointer["latest"] in err and "--overwrite" in err, err
