"""BertConfig: the fields of a Hugging Face BERT `config.json`, validated, with unknown fields kept."""
import copy
import json
import os

from .._files import atomic_write_text
from . import families
from .activations import ACTIVATIONS

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# name -> default, as in transformers' BertConfig (bert-base-uncased).
_DEFAULTS = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "classifier_dropout": None,
    "problem_type": None,
    "tie_word_embeddings": True,
    "is_decoder": False,
    "add_cross_attention": False,
}
_POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size")


class BertConfig:
    """Hyperparameters of a BERT, read from and written to Hugging Face's `config.json` format.

    Every field of transformers' BertConfig is an attribute (defaults: bert-base-uncased); fields
    this package does not know are kept as attributes and written back by `to_dict`. Labels follow
    transformers: `num_labels` (default 2) with `id2label`/`label2id`, and `problem_type` one of
    "regression", "single_label_classification", "multi_label_classification" or None (decided
    from the labels at the first loss, as transformers does).
    """

    model_type = "bert"

    def __init__(self, **kwargs):
        model_type = kwargs.pop("model_type", "bert")
        kwargs = families.config_to_bert_fields(families.family(model_type), kwargs)
        if model_type != "bert":  # the family (roberta, electra, ...): see bertfast.model.families
            self.model_type = model_type
        for name, default in _DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        self.architectures = kwargs.pop("architectures", None)
        for name, value in kwargs.items():  # unknown fields: kept as they are
            setattr(self, name, value)
        if id2label is not None:
            self.id2label = {int(k): v for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                self.num_labels = num_labels  # an explicit num_labels wins, as in transformers
        else:
            self.num_labels = 2 if num_labels is None else num_labels
        if label2id is not None and len(label2id) == self.num_labels:
            self.label2id = {k: int(v) for k, v in label2id.items()}
        else:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.validate()

    @property
    def num_labels(self):
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"BertConfig: num_labels must be a positive int, got {n!r}")
        if getattr(self, "id2label", None) is None or len(self.id2label) != n:
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    def validate(self):
        """Raise a ValueError naming the field when the config is not a BERT this package runs."""
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig: {name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig: hidden_act {self.hidden_act!r} is not supported; use one of "
                             f"{', '.join(ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is None and name == "classifier_dropout":
                continue
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig: {name} must be a number in [0, 1), got {value!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise ValueError(f"BertConfig: layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"BertConfig: position_embedding_type {self.position_embedding_type!r} is not "
                             "supported (only 'absolute')")
        if self.is_decoder or self.add_cross_attention:
            raise ValueError("BertConfig: is_decoder / add_cross_attention are not supported: bertfast's BERT is "
                             "an encoder with bidirectional self-attention")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"BertConfig: problem_type must be None or one of {', '.join(PROBLEM_TYPES)}, got "
                             f"{self.problem_type!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig: pad_token_id {self.pad_token_id} is outside the vocabulary "
                             f"[0, {self.vocab_size})")

    # ---- dict / JSON ----
    @classmethod
    def from_dict(cls, config_dict, **overrides):
        if not isinstance(config_dict, dict):
            raise TypeError(f"BertConfig.from_dict: expected a dict, got {type(config_dict).__name__}")
        merged = dict(config_dict)
        if "num_labels" in overrides and "id2label" not in overrides:
            merged.pop("id2label", None)
            merged.pop("label2id", None)
        merged.update(overrides)
        return cls(**merged)

    @classmethod
    def from_json_file(cls, path, **overrides):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
            raise ValueError(f"BertConfig: {path} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"BertConfig: {path} holds a JSON {type(data).__name__}, not an object")
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_pretrained(cls, path, **overrides):
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"BertConfig: no config.json at {path}")
        return cls.from_json_file(file, **overrides)

    def to_dict(self):
        out = {"model_type": self.model_type}
        for name, value in vars(self).items():
            if name in ("id2label", "label2id", "model_type"):
                continue
            out[name] = copy.deepcopy(value)
        if out.get("architectures") is None:
            out.pop("architectures", None)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        return families.config_from_bert_fields(families.family(self.model_type), out)

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path):
        atomic_write_text(path, self.to_json_string())

    def __eq__(self, other):
        return isinstance(other, BertConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"BertConfig {self.to_json_string()}"
