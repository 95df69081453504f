"""Task heads on BertModel, with transformers' names, inputs, outputs and loss semantics.

Differences from transformers, all about padding (positions where attention_mask is 0), which
bertfast never computes: padded positions get zero logits (tagging, MLM) or the dtype's lowest
value (QA start/end logits, so that padding never wins a span and never enters the span loss),
and labels at padded positions are ignored.

The fine-tuning heads (sequence and token classification, question answering) take
`loss_reduction`: "mean" (the default, transformers' loss) or "sum" (the sum of the same terms,
for a trainer that divides by the items of a whole accumulated, distributed step). The number
of terms is that of the mean: rows, labelled real tokens, or per side the span positions
inside the sequence.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from . import families
from .encoder import BertModel, BertPreTrainedModel, compute_dtype
from .outputs import (MaskedLMOutput, PreTrainingOutput, QuestionAnsweringOutput, SequenceClassifierOutput,
                      TokenClassifierOutput)
from .packing import unpad_index


def _classifier_dropout(config):
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def _finish(output, return_dict):
    return output if return_dict else output.to_tuple()


LOSS_REDUCTIONS = ("mean", "sum")


def _check_reduction(loss_reduction):
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
    return loss_reduction


def span_loss(start_logits, end_logits, start_positions, end_positions, reduction="mean"):
    """The question-answering loss: (CE(start) + CE(end)) / 2 with positions clamped to
    [0, seq_len] and position seq_len (outside the sequence) ignored. "mean" is the fused op
    bertfast.ops.span_loss (transformers' loss); "sum" adds up the same terms, from the same
    fused cross-entropy and the same rule."""
    if reduction == "mean":
        return ops.span_loss(start_logits, end_logits, start_positions, end_positions)
    ignored = start_logits.shape[1]
    sides = ((start_logits, start_positions), (end_logits, end_positions))
    return sum(ops.softmax_cross_entropy(logits, positions.clamp(0, ignored), ignore_index=ignored,
                                         reduction=reduction) for logits, positions in sides) / 2


class BertForSequenceClassification(BertPreTrainedModel):
    """[CLS] pooler -> dropout -> linear; the last encoder layer computes the [CLS] rows only. Loss by `config.problem_type`, decided as transformers
    does when None: num_labels == 1 -> "regression" (MSE), integer labels -> single-label
    cross-entropy, float labels -> "multi_label_classification" (BCE with logits)."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        family_head = families.sequence_head(config)  # None: BERT's pooler + linear
        self.bert = BertModel(config, add_pooling_layer=family_head is None)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = family_head or nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                return_dict=True, loss_reduction="mean"):
        first_tokens = self.bert.encode_first_tokens(input_ids, attention_mask, token_type_ids, position_ids)
        pooled = first_tokens if self.bert.pooler is None else self.dropout(self.bert.pooler(first_tokens))
        logits = self.classifier(pooled)
        loss = None if labels is None else self.loss(logits, labels, loss_reduction)
        return _finish(SequenceClassifierOutput(loss=loss, logits=logits), return_dict)

    def loss(self, logits, labels, reduction="mean"):
        reduction = _check_reduction(reduction)
        config = self.config
        if config.problem_type is None:
            if self.num_labels == 1:
                config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                config.problem_type = "single_label_classification"
            else:
                config.problem_type = "multi_label_classification"
        if config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze().float(), labels.squeeze().float(), reduction=reduction)
            return F.mse_loss(logits.float(), labels.float(), reduction=reduction)
        if config.problem_type == "single_label_classification":
            return ops.softmax_cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), reduction=reduction)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction=reduction)


class BertForTokenClassification(BertPreTrainedModel):
    """Per-token dropout -> linear; cross-entropy over real tokens with labels != -100."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                return_dict=True, loss_reduction="mean"):
        hidden, packing = self.bert.encode(input_ids, attention_mask, token_type_ids, position_ids)
        logits = self.classifier(self.dropout(hidden))  # (tokens, num_labels)
        loss = None
        if labels is not None:
            loss = ops.softmax_cross_entropy(logits, packing.pack(labels), reduction=_check_reduction(loss_reduction))
        return _finish(TokenClassifierOutput(loss=loss, logits=packing.pad(logits)), return_dict)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Per-token linear to (start, end) logits; loss = mean of the start and end cross-entropies,
    positions outside the sequence ignored (transformers' clamp to seq_len)."""

    def __init__(self, config):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"BertForQuestionAnswering: config.num_labels must be 2 (start, end), got "
                             f"{config.num_labels}")
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(families.qa_dropout(config))  # DistilBERT's; 0 for the others
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, start_positions=None,
                end_positions=None, return_dict=True, loss_reduction="mean"):
        hidden, packing = self.bert.encode(input_ids, attention_mask, token_type_ids, position_ids)
        logits = self.qa_outputs(self.dropout(hidden))
        logits = packing.pad(logits, fill=torch.finfo(logits.dtype).min)
        start_logits, end_logits = logits[..., 0].contiguous(), logits[..., 1].contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            loss = span_loss(start_logits, end_logits, start_positions, end_positions, _check_reduction(loss_reduction))
        return _finish(QuestionAnsweringOutput(loss=loss, start_logits=start_logits, end_logits=end_logits),
                       return_dict)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = families.embedding_size(config)  # ELECTRA's generator maps back to the embedding size
        self.dense = nn.Linear(config.hidden_size, size)
        self.activation = families.lm_activation(config)
        self.LayerNorm = nn.LayerNorm(size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.activation(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform -> decoder (weight tied to the word embeddings, bias = `bias`)."""

    def __init__(self, config):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(families.embedding_size(config), config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden):
        return self.decoder(self.transform(hidden))

    def loss(self, hidden, labels, reduction="mean"):
        """MLM loss from packed hidden states: only the tokens with a label go through the
        transform, and the vocab-sized logits are never stored when the fused op is present."""
        selected, _ = unpad_index((labels != -100)[None])
        rows = self.transform(hidden.index_select(0, selected))
        dtype = compute_dtype(self.decoder.weight)  # autocast's, as F.linear would run
        return ops.linear_cross_entropy(rows.to(dtype), self.decoder.weight.to(dtype), labels.index_select(0, selected),
                                        bias=self.decoder.bias.to(dtype), reduction=reduction)


class _TiedDecoder:
    """For the models whose `cls.predictions` decodes to the vocabulary: the decoder's bias is
    the head's `bias`, and its weight the word embeddings (unless config.tie_word_embeddings
    is False)."""

    def tie_weights(self):
        prediction_head = self.cls.predictions
        prediction_head.decoder.bias = prediction_head.bias
        if self.config.tie_word_embeddings:
            prediction_head.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def get_output_embeddings(self):
        return self.cls.predictions.decoder


def _mlm_outputs(prediction_head, hidden, packing, labels, return_logits, reduction="mean"):
    """(loss or None, padded logits or None)."""
    packed_labels = None if labels is None else packing.pack(labels)
    if not return_logits:
        return (None if labels is None else prediction_head.loss(hidden, packed_labels, reduction)), None
    scores = prediction_head(hidden)
    loss = None if labels is None else ops.softmax_cross_entropy(scores, packed_labels, reduction=reduction)
    return loss, packing.pad(scores)


class _OnlyMLMHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class BertForMaskedLM(_TiedDecoder, BertPreTrainedModel):
    """Masked-LM head. `return_logits` (default: True unless training with labels) says whether the
    (batch, seq, vocab) logits are computed: without them the loss runs through the fused
    linear + cross-entropy on the labelled tokens only. `loss_reduction` as in the fine-tuning
    heads: "sum" adds up the terms of the mean (one per labelled token)."""

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = _OnlyMLMHead(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                return_dict=True, return_logits=None, loss_reduction="mean"):
        hidden, packing = self.bert.encode(input_ids, attention_mask, token_type_ids, position_ids)
        if return_logits is None:
            return_logits = labels is None or not self.training
        loss, logits = _mlm_outputs(self.cls.predictions, hidden, packing, labels, return_logits,
                                    _check_reduction(loss_reduction))
        return _finish(MaskedLMOutput(loss=loss, logits=logits), return_dict)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertForPreTraining(_TiedDecoder, BertPreTrainedModel):
    """Masked-LM + next-sentence prediction; loss = MLM loss + NSP loss when both `labels` and
    `next_sentence_label` are given. `return_logits` as in BertForMaskedLM; with
    loss_reduction="sum" the loss is the sum of the MLM terms plus the sum of the NSP terms."""

    def __init__(self, config):
        super().__init__(config)
        families.check_head(config, type(self).__name__)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                next_sentence_label=None, return_dict=True, return_logits=None, loss_reduction="mean"):
        hidden, packing = self.bert.encode(input_ids, attention_mask, token_type_ids, position_ids)
        seq_relationship_logits = self.cls.seq_relationship(self.bert.pool(hidden, packing))
        with_loss = labels is not None and next_sentence_label is not None
        if return_logits is None:
            return_logits = not with_loss or not self.training
        reduction = _check_reduction(loss_reduction)
        mlm_loss, logits = _mlm_outputs(self.cls.predictions, hidden, packing, labels if with_loss else None,
                                        return_logits, reduction)
        loss = None
        if with_loss:
            loss = mlm_loss + ops.softmax_cross_entropy(seq_relationship_logits.view(-1, 2),
                                                        next_sentence_label.view(-1), reduction=reduction)
        return _finish(PreTrainingOutput(loss=loss, prediction_logits=logits,
                                         seq_relationship_logits=seq_relationship_logits), return_dict)
