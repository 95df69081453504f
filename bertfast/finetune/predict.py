"""`bertfast predict` and `bertfast evaluate`: a fine-tuned model folder applied to a data file."""
import json
import os


from . import evaluation
from .data import Columns, load_examples
from .distributed import resolve_device
from .._files import atomic_write_json, atomic_write_text
from .tokenization import BertTokenizer, encode_examples
from .models import MODEL_CLASS, TASK_FILE, check_max_length, check_model_dir, label_names, load_model, read_task_info


def check_options(model_dir, batch_size, max_length):
    """--batch-size and --max-length of predict and evaluate, before the model is loaded."""
    for flag, value in (("--batch-size", batch_size), ("--max-length", max_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{flag} must be an integer, got {value!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if max_length is not None:
        if max_length < 4:
            raise ValueError(f"--max-length must be at least 4, got {max_length}")
        check_model_dir(model_dir)
        check_max_length(model_dir, max_length)


def check_output_file(path):
    """--output must name a file (new or to replace) in a folder that exists and can be written."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"--output {path} is a folder; give the path of a file to write")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise OSError(f"--output {path}: the folder {parent} does not exist or cannot be written")


def _task_info(model_dir, task):
    """(the model's bertfast_task.json, or just the --task given; the task)."""
    check_model_dir(model_dir)
    info = read_task_info(model_dir) if task is None else {"task": task}
    task = info.get("task")
    if task not in MODEL_CLASS:
        raise ValueError(f"{model_dir}: unknown task {task!r} in {TASK_FILE}; give --task")
    return info, task


def _load(model_dir, info, task, device, max_length):
    tok = BertTokenizer(model_dir)
    model, _ = load_model(task, model_dir)
    model.to(device).eval()
    labels = (info.get("labels") or label_names(model)) if task in ("classify", "pair", "tag") else None
    if task in ("classify", "pair", "tag") and not labels:
        raise ValueError(f"{model_dir}: the config has no label names (id2label)")
    max_length = max_length or info.get("max_length") or 512
    return tok, model, labels, max_length


def _columns(info):
    return Columns(info.get("text_column"), info.get("text_pair_column"), info.get("label_column"))


def _run(model_dir, data, task, device, precision, batch_size, max_length, need_labels):
    check_options(model_dir, batch_size, max_length)
    device = resolve_device(device)
    info, task = _task_info(model_dir, task)
    examples = load_examples(task, data, _columns(info), need_labels=need_labels)  # bad data: said before loading
    tok, model, labels, max_length = _load(model_dir, info, task, device, max_length)
    features, truncated = encode_examples(task, tok, examples, max_length, info.get("doc_stride", 128))
    outputs = evaluation.model_outputs(model, task, features, batch_size, device, precision, tok.pad_id)
    predictions = evaluation.decode(task, examples, features, outputs, labels)
    return task, examples, predictions, labels, truncated


def predict(model_dir, input_path, output_path, task=None, device="auto", precision="fp32", batch_size=64,
            max_length=None):
    """Write one JSON line per input example; returns the number written."""
    check_output_file(output_path)
    task, examples, predictions, labels, truncated = _run(model_dir, input_path, task, device, precision,
                                                          batch_size, max_length, need_labels=False)
    lines = []
    for ex, pred in zip(examples, predictions):
        if task == "qa":
            record = {"id": ex["id"], "question": ex["question"], "answer": pred["text"],
                      "start": pred["start"], "score": pred["score"]}
        elif task == "tag":
            record = {"tokens": ex.tokens, "tags": pred["tags"]}
        else:
            record = {"text": ex.text}
            if ex.text_pair is not None:
                record["text_pair"] = ex.text_pair
            record.update(pred)
        lines.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(output_path, "\n".join(lines) + "\n")
    return len(lines), truncated


def evaluate(model_dir, data_path, task=None, device="auto", precision="fp32", batch_size=64, max_length=None,
             output_path=None):
    """Metrics of a fine-tuned model on a labelled file (also written to output_path as JSON, if given)."""
    if output_path is not None:
        check_output_file(output_path)
    task, examples, predictions, labels, _ = _run(model_dir, data_path, task, device, precision, batch_size,
                                                  max_length, need_labels=True)
    result = evaluation.score(task, examples, predictions, labels)
    result["examples"] = len(examples)
    if output_path is not None:
        atomic_write_json(output_path, result)
    return result
