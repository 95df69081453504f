"""`bertfast predict` and `bertfast evaluate`: a fine-tuned model folder applied to a data file."""
import json
import os

import torch

from . import evaluation
from .data import Columns, load_examples
from .distributed import resolve_device
from .._files import atomic_write_text
from .tokenization import BertTokenizer, encode_examples
from .models import check_model_dir, label_names, load_model, read_task_info


def _load(model_dir, task, device, max_length):
    check_model_dir(model_dir)
    info = read_task_info(model_dir) if task is None else {"task": task}
    task = info["task"]
    tok = BertTokenizer(model_dir)
    model, _ = load_model(task, model_dir)
    model.to(device).eval()
    labels = (info.get("labels") or label_names(model)) if task in ("classify", "pair", "tag") else None
    if task in ("classify", "pair", "tag") and not labels:
        raise ValueError(f"{model_dir}: the config has no label names (id2label)")
    max_length = max_length or info.get("max_length") or 512
    return info, task, tok, model, labels, max_length


def _columns(info):
    return Columns(info.get("text_column"), info.get("text_pair_column"), info.get("label_column"))


def _run(model_dir, data, task, device, precision, batch_size, max_length, need_labels):
    device = resolve_device(device)
    info, task, tok, model, labels, max_length = _load(model_dir, task, device, max_length)
    examples = load_examples(task, data, _columns(info), need_labels=need_labels)
    features, truncated = encode_examples(task, tok, examples, max_length, info.get("doc_stride", 128))
    outputs = evaluation.model_outputs(model, task, features, batch_size, device, precision, tok.pad_id)
    predictions = evaluation.decode(task, examples, features, outputs, labels)
    return task, examples, predictions, labels, truncated


def predict(model_dir, input_path, output_path, task=None, device="auto", precision="fp32", batch_size=64,
            max_length=None):
    """Write one JSON line per input example; returns the number written."""
    out_parent = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(out_parent) or not os.access(out_parent, os.W_OK):
        raise OSError(f"--output {output_path}: the folder {out_parent} does not exist or cannot be written")
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


def evaluate(model_dir, data_path, task=None, device="auto", precision="fp32", batch_size=64, max_length=None):
    """Metrics of a fine-tuned model on a labelled file."""
    task, examples, predictions, labels, _ = _run(model_dir, data_path, task, device, precision, batch_size,
                                                  max_length, need_labels=True)
    result = evaluation.score(task, examples, predictions, labels)
    result["examples"] = len(examples)
    return result
