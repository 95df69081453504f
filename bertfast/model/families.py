"""The BERT family as data: what RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA and DistilBERT change.

They are one encoder (post-LayerNorm transformer layers on word + position (+ type) embeddings);
what differs is listed here and read by the model, the heads and the checkpoint reader/writer:

- the config's field names and defaults (DistilBERT says `dim`, `n_layers`, ...);
- position ids: BERT counts from 0 over the whole row; RoBERTa from `pad_token_id + 1` over the
  tokens that are not padding (transformers' `create_position_ids_from_input_ids`);
- token types (DistilBERT has none), ELECTRA's embedding size and its projection to the hidden size,
  whether the base model has a pooler;
- the heads: the sequence classifier on the first token (BERT: pooler + linear; RoBERTa: dense +
  tanh + out_proj; ELECTRA: dense + GELU + out_proj; DistilBERT: pre_classifier + ReLU +
  classifier), the MLM head's activation and size, dropouts;
- the names in the checkpoint. Inside bertfast every family uses BERT's module names (`bert.`,
  `encoder.layer.N.attention.self.query`, `cls.predictions.*`); `checkpoint_key` gives the name a
  family's transformers class uses, and `to_model_keys` maps a checkpoint back.
"""
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .activations import ACTIVATIONS

BASE_PREFIXES = ("embeddings.", "embeddings_project.", "encoder.", "pooler.")


@dataclass(frozen=True)
class Family:
    model_type: str
    class_prefix: str                  # transformers' class names: f"{class_prefix}ForMaskedLM"
    base_prefix: str                   # the base model's attribute in transformers' heads
    defaults: dict = field(default_factory=dict)   # transformers' config defaults that differ from BERT's
    config_names: dict = field(default_factory=dict)  # the family's config field -> BERT's field
    roberta_positions: bool = False    # position ids from pad_token_id + 1 over non-padding tokens
    token_types: bool = True
    pooler: bool = True                # the base model has a pooler
    classifier: str = "pooler"         # the sequence head: "pooler", "dense_tanh", "dense_gelu", "pre_classifier"
    lm_activation: str = None          # the MLM head's activation (None: hidden_act)
    inner_names: tuple = ()            # (regex on our encoder key, replacement) for the checkpoint
    head_names: tuple = ()             # (our key prefix, checkpoint key prefix), first match wins
    fixed: dict = field(default_factory=dict)      # BERT fields the family does not let a config choose

    @property
    def is_bert(self):
        return self.model_type == "bert"


_ROBERTA_DEFAULTS = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
_ROBERTA_HEADS = (("cls.predictions.transform.dense.", "lm_head.dense."),
                  ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
                  ("cls.predictions.decoder.", "lm_head.decoder."),
                  ("cls.predictions.bias", "lm_head.bias"))


def _roberta_like(model_type, class_prefix, vocab_size):
    return Family(model_type, class_prefix, "roberta", defaults={**_ROBERTA_DEFAULTS, "vocab_size": vocab_size},
                  roberta_positions=True, classifier="dense_tanh", lm_activation="gelu", head_names=_ROBERTA_HEADS)


_DISTILBERT_LAYER = r"^encoder\.layer\.(\d+)\."
FAMILIES = {f.model_type: f for f in (
    Family("bert", "Bert", "bert"),
    _roberta_like("roberta", "Roberta", 50265),
    _roberta_like("xlm-roberta", "XLMRoberta", 30522),
    _roberta_like("camembert", "Camembert", 30522),
    Family("electra", "Electra", "electra",
           defaults={"embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024,
                     "summary_type": "first", "summary_use_proj": True, "summary_activation": "gelu",
                     "summary_last_dropout": 0.1},
           pooler=False, classifier="dense_gelu", lm_activation="gelu",
           head_names=(("cls.predictions.transform.dense.", "generator_predictions.dense."),
                       ("cls.predictions.transform.LayerNorm.", "generator_predictions.LayerNorm."),
                       ("cls.predictions.decoder.", "generator_lm_head."),
                       ("cls.predictions.bias", "generator_lm_head.bias"))),
    Family("distilbert", "DistilBert", "distilbert",
           defaults={"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072, "dropout": 0.1,
                     "attention_dropout": 0.1, "activation": "gelu", "qa_dropout": 0.1, "seq_classif_dropout": 0.2,
                     "sinusoidal_pos_embds": False},
           config_names={"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                         "hidden_dim": "intermediate_size", "activation": "hidden_act",
                         "dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob"},
           token_types=False, pooler=False, classifier="pre_classifier",
           fixed={"layer_norm_eps": 1e-12, "type_vocab_size": 1},
           inner_names=((_DISTILBERT_LAYER + r"attention\.self\.query\.", r"transformer.layer.\1.attention.q_lin."),
                        (_DISTILBERT_LAYER + r"attention\.self\.key\.", r"transformer.layer.\1.attention.k_lin."),
                        (_DISTILBERT_LAYER + r"attention\.self\.value\.", r"transformer.layer.\1.attention.v_lin."),
                        (_DISTILBERT_LAYER + r"attention\.output\.dense\.", r"transformer.layer.\1.attention.out_lin."),
                        (_DISTILBERT_LAYER + r"attention\.output\.LayerNorm\.", r"transformer.layer.\1.sa_layer_norm."),
                        (_DISTILBERT_LAYER + r"intermediate\.dense\.", r"transformer.layer.\1.ffn.lin1."),
                        (_DISTILBERT_LAYER + r"output\.dense\.", r"transformer.layer.\1.ffn.lin2."),
                        (_DISTILBERT_LAYER + r"output\.LayerNorm\.", r"transformer.layer.\1.output_layer_norm.")),
           head_names=(("cls.predictions.transform.dense.", "vocab_transform."),
                       ("cls.predictions.transform.LayerNorm.", "vocab_layer_norm."),
                       ("cls.predictions.decoder.", "vocab_projector."),
                       ("cls.predictions.bias", "vocab_projector.bias"),
                       ("classifier.pre_classifier.", "pre_classifier."),
                       ("classifier.classifier.", "classifier."))),
)}


def family(model_type):
    """The Family of a config's `model_type`; a ValueError names the supported ones."""
    if model_type not in FAMILIES:
        raise ValueError(f"BertConfig: model_type {model_type!r} is not supported; bertfast runs "
                         f"{', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def of(config):
    return family(getattr(config, "model_type", "bert"))


# ---------------------------------------------------------------- config
def config_to_bert_fields(fam, fields):
    """A family's config.json fields -> BERT's names, the family's defaults filled in."""
    given = dict(fields)
    fields = {**fam.defaults, **fields}
    for theirs, ours in fam.config_names.items():
        value = fields.pop(theirs, None)
        if ours not in given and value is not None:  # a BERT name given explicitly (an override) wins
            fields[ours] = value
    fields.update(fam.fixed)
    return fields


def config_from_bert_fields(fam, fields):
    """The inverse of config_to_bert_fields, for writing config.json."""
    fields = dict(fields)
    for theirs, ours in fam.config_names.items():
        if ours in fields:
            fields[theirs] = fields.pop(ours)
    for name in fam.fixed:
        fields.pop(name, None)
    return fields


def embedding_size(config):
    return getattr(config, "embedding_size", config.hidden_size) if of(config).model_type == "electra" \
        else config.hidden_size


def max_length(config):
    """The longest row the position table allows."""
    offset = config.pad_token_id + 1 if of(config).roberta_positions else 0
    return config.max_position_embeddings - offset


# ---------------------------------------------------------------- the model's pieces
def embeddings_project(config):
    """ELECTRA's Linear(embedding_size, hidden_size) when the two differ, else None."""
    size = embedding_size(config)
    return nn.Linear(size, config.hidden_size) if size != config.hidden_size else None


def position_ids(config, input_ids, packing):
    """(tokens,) position of each packed token: BERT's column index, or RoBERTa's count of the
    non-padding tokens up to it, from pad_token_id + 1 (so a packed row gets the ids a padded one would)."""
    if not of(config).roberta_positions:
        return packing.positions()
    pad = config.pad_token_id
    real = (input_ids != pad).long()
    return packing.pack(torch.cumsum(real, dim=1) * real + pad)


class ClassificationHead(nn.Module):
    """RoBERTa's and ELECTRA's sequence head on the first token: dropout, dense, tanh or GELU,
    dropout, out_proj."""

    def __init__(self, config, activation):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)
        self.activation = activation

    def forward(self, first_tokens):
        x = self.activation(self.dense(self.dropout(first_tokens)))
        return self.out_proj(self.dropout(x))


class PreClassifierHead(nn.Module):
    """DistilBERT's sequence head: pre_classifier, ReLU, dropout (seq_classif_dropout), classifier."""

    def __init__(self, config):
        super().__init__()
        self.pre_classifier = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(getattr(config, "seq_classif_dropout", 0.2))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, first_tokens):
        return self.classifier(self.dropout(torch.relu(self.pre_classifier(first_tokens))))


def sequence_head(config):
    """The family's classifier on the first token's final hidden state, or None for BERT's
    pooler + dropout + linear (which the head builds itself)."""
    kind = of(config).classifier
    if kind == "dense_tanh":
        return ClassificationHead(config, torch.tanh)
    if kind == "dense_gelu":
        return ClassificationHead(config, ACTIVATIONS["gelu"])
    if kind == "pre_classifier":
        return PreClassifierHead(config)
    return None


def qa_dropout(config):
    """DistilBERT drops out before its span classifier; the others do not."""
    return getattr(config, "qa_dropout", 0.1) if of(config).model_type == "distilbert" else 0.0


def lm_activation(config):
    return ACTIVATIONS[of(config).lm_activation or config.hidden_act]


def check_head(config, head_name):
    """Raise for a head the family has no pretrained counterpart of (NSP is BERT's only)."""
    if head_name == "BertForPreTraining" and not of(config).is_bert:
        raise ValueError(f"BertForPreTraining: next-sentence prediction is BERT's; a {config.model_type!r} model has "
                         "no such head (use BertForMaskedLM)")


# ---------------------------------------------------------------- checkpoint names
def _inner_key(fam, key):
    for pattern, replacement in fam.inner_names:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    return key


def checkpoint_key(fam, key):
    """Our state-dict key -> the one in the family's transformers checkpoint."""
    if fam.is_bert:
        return key
    if key.startswith("bert."):
        return f"{fam.base_prefix}.{_inner_key(fam, key[len('bert.'):])}"
    if key.startswith(BASE_PREFIXES):
        return _inner_key(fam, key)
    for ours, theirs in fam.head_names:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def to_model_keys(fam, state, model_keys):
    """A checkpoint's tensors under our keys for a model with `model_keys`. A base checkpoint
    for a head (and a head's for a base model) maps too; keys we do not know pass unchanged,
    with the family's base prefix turned into `bert.` so that they are reported as such."""
    if fam.is_bert:
        return dict(state)
    inverse = {}
    for key in model_keys:
        variants = [key]
        if key.startswith("bert."):
            variants.append(key[len("bert."):])
        elif key.startswith(BASE_PREFIXES):
            variants.append("bert." + key)
        for variant in variants:
            inverse.setdefault(checkpoint_key(fam, variant), []).append(key)
    out, prefix = {}, fam.base_prefix + "."
    for name, tensor in state.items():
        targets = inverse.get(name)
        if targets is None:
            out["bert." + name[len(prefix):] if name.startswith(prefix) else name] = tensor
            continue
        for target in targets:
            out[target] = tensor
    return out


def architecture(config, class_name):
    """transformers' class name for one of ours: BertForMaskedLM -> RobertaForMaskedLM."""
    return of(config).class_prefix + class_name[len("Bert"):] if class_name.startswith("Bert") else class_name
