"""The one place the trainer, `bertfast predict` and `bertfast evaluate` get their models from:
bertfast's own BERT classes, always from a local folder (a Hugging Face checkpoint or one made
by `bertfast finetune`)."""
import logging
import os
import shutil
import warnings

from .._files import atomic_write_json, read_json

MODEL_CLASS = {
    "classify": "BertForSequenceClassification",
    "pair": "BertForSequenceClassification",
    "regress": "BertForSequenceClassification",
    "tag": "BertForTokenClassification",
    "qa": "BertForQuestionAnswering",
}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")  # every family's
TASK_FILE = "bertfast_task.json"  # task, labels and tokenization settings saved with a fine-tuned model


def model_class(task):
    import bertfast
    return getattr(bertfast, MODEL_CLASS[task])


def check_model_dir(model_dir):
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir} has no config.json: not a Hugging Face model folder")
    if not any(os.path.exists(os.path.join(model_dir, f)) for f in
               ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")):
        raise FileNotFoundError(f"{model_dir} has no weights (model.safetensors or pytorch_model.bin)")


def check_max_length(model_dir, max_length):
    """--max-length must fit the model's position table (512 tokens for BERT, 514 - 2 for RoBERTa)."""
    from ..model import families
    from ..model.config import BertConfig
    longest = families.max_length(BertConfig.from_pretrained(model_dir))
    if max_length > longest:
        raise ValueError(f"--max-length {max_length} is longer than the {longest} positions of the model")


def load_model(task, model_dir, labels=None):
    """The task's model from a local folder. `labels` (class or tag names) sets a new head's
    size and label mapping; regression gets one output trained with MSE. Without `labels` the
    folder's config decides (a fine-tuned model). Returns (model, notes for the log, such as
    which weights are new)."""
    check_model_dir(model_dir)
    cls = model_class(task)
    kwargs = {}
    if task == "regress":
        kwargs = {"num_labels": 1, "problem_type": "regression"}
    elif labels is not None and task != "qa":
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {name: i for i, name in enumerate(labels)}}
        if task != "tag":
            kwargs["problem_type"] = "single_label_classification"
    previous = logging.getLogger("bertfast").level
    logging.getLogger("bertfast").setLevel(logging.ERROR)  # said once, in our log line
    try:
        with warnings.catch_warnings(record=True) as caught:  # bertfast names the new weights in a warning
            warnings.simplefilter("always")
            model = cls.from_pretrained(model_dir, **kwargs)
    finally:
        logging.getLogger("bertfast").setLevel(previous)
    return model, [str(w.message) for w in caught]


def label_names(model):
    """Class or tag names of a fine-tuned model, in id order (None for regression and QA)."""
    id2label = getattr(model.config, "id2label", None) or {}
    return [id2label[i] if i in id2label else id2label[str(i)] for i in range(len(id2label))] or None


def save_model_files(model, source_dir, task_info, target_dir):
    """A complete model folder: weights and config (save_pretrained), the tokenizer files of the
    source checkpoint and our task file. `transformers` can load it back."""
    model.save_pretrained(target_dir)  # safetensors
    for name in TOKENIZER_FILES:
        src = os.path.join(source_dir, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(target_dir, name))
    atomic_write_json(os.path.join(target_dir, TASK_FILE), task_info)


def read_task_info(model_dir):
    path = os.path.join(model_dir, TASK_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{model_dir} has no {TASK_FILE}: it was not fine-tuned by `bertfast finetune` "
                                "(give --task to say what it does)")
    return read_json(path, "write it again (its fields: task, labels, max_length, ...) or give --task")
