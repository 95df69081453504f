"""Fine-tuning's loss is the heads' loss: loss_reduction="sum" adds up exactly the terms the
default mean averages, through the fused cross-entropy, and the trainer trains on it."""
import json

import pytest
import torch
import torch.nn.functional as F

import bertfast
from bertfast.model.heads import span_loss

from finetune_helpers import make_tiny_bert


def tiny_config(**kw):
    return bertfast.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0, **kw)


def batch(rows=5, seq=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 4, 7, 2, 9][:rows])
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    return torch.randint(1, 50, (rows, seq), generator=g), mask, g


def test_classification_sum_is_rows_times_mean():
    torch.manual_seed(0)
    ids, mask, g = batch()
    model = bertfast.BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    labels = torch.randint(0, 3, (5,), generator=g)
    mean = model(ids, attention_mask=mask, labels=labels).loss
    total = model(ids, attention_mask=mask, labels=labels, loss_reduction="sum").loss
    torch.testing.assert_close(total, 5 * mean)
    logits = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(total, F.cross_entropy(logits.double(), labels, reduction="sum").float())


def test_regression_sum_is_the_squared_errors():
    torch.manual_seed(0)
    ids, mask, g = batch()
    model = bertfast.BertForSequenceClassification(tiny_config(num_labels=1)).eval()
    scores = torch.rand(5, generator=g)
    out = model(ids, attention_mask=mask, labels=scores, loss_reduction="sum")
    torch.testing.assert_close(out.loss, ((out.logits.squeeze(-1) - scores) ** 2).sum())


def test_tagging_sum_counts_labelled_real_tokens_only():
    torch.manual_seed(0)
    ids, mask, g = batch()
    model = bertfast.BertForTokenClassification(tiny_config(num_labels=4)).eval()
    labels = torch.randint(0, 4, ids.shape, generator=g)
    labels[:, 0] = -100
    labels[1, 2] = -100
    labels[mask == 0] = 3  # labels under padding are ignored too
    real = (labels != -100) & (mask == 1)
    mean = model(ids, attention_mask=mask, labels=labels).loss
    total = model(ids, attention_mask=mask, labels=labels, loss_reduction="sum").loss
    torch.testing.assert_close(total, int(real.sum()) * mean)
    logits = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(total, F.cross_entropy(logits[real].double(), labels[real], reduction="sum").float())


def test_span_loss_sum_uses_the_same_clamp_and_ignore_rule():
    """Positions past the end are clamped to seq_len and ignored, on each side separately."""
    g = torch.Generator().manual_seed(1)
    start, end = torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g)
    start_pos = torch.tensor([0, 3, 10, 11, 40, 5])   # 11 and 40: outside, ignored
    end_pos = torch.tensor([[2], [3], [10], [4], [-7], [11]])  # -7 clamps to 0; 11 ignored; (batch, 1) squeezed
    total = span_loss(start, end, start_pos, end_pos.squeeze(-1), reduction="sum")
    ref = lambda logits, pos: F.cross_entropy(logits.double(), pos.clamp(0, 11), ignore_index=11, reduction="sum")
    torch.testing.assert_close(total, ((ref(start, start_pos) + ref(end, end_pos.squeeze(-1))) / 2).float())
    inside = (start_pos < 11) & (end_pos.squeeze(-1) < 11)
    rows = inside.nonzero().flatten()
    mean = span_loss(start[rows], end[rows], start_pos[rows], end_pos[rows].squeeze(-1))
    torch.testing.assert_close(span_loss(start[rows], end[rows], start_pos[rows], end_pos[rows].squeeze(-1), "sum"),
                               len(rows) * mean)
    torch.testing.assert_close(mean, bertfast.ops.span_loss(start[rows], end[rows], start_pos[rows], end_pos[rows]))


def test_qa_head_sum_and_mean():
    torch.manual_seed(0)
    ids, mask, g = batch()
    model = bertfast.BertForQuestionAnswering(tiny_config(num_labels=2)).eval()
    start, end = torch.tensor([0, 1, 6, 1, 3]), torch.tensor([[2], [3], [6], [1], [8]])
    mean = model(ids, attention_mask=mask, start_positions=start, end_positions=end).loss
    total = model(ids, attention_mask=mask, start_positions=start, end_positions=end, loss_reduction="sum").loss
    torch.testing.assert_close(total, 5 * mean)


@pytest.mark.parametrize("cls, kwargs", [
    (bertfast.BertForSequenceClassification, {"labels": torch.tensor([0, 1])}),
    (bertfast.BertForTokenClassification, {"labels": torch.zeros(2, 9, dtype=torch.long)}),
    (bertfast.BertForQuestionAnswering, {"start_positions": torch.tensor([0, 1]), "end_positions": torch.tensor([1, 2])}),
])
def test_an_unknown_reduction_is_refused(cls, kwargs):
    model = cls(tiny_config(num_labels=2)).eval()
    ids, mask, _ = batch(rows=2)
    with pytest.raises(ValueError, match="loss_reduction must be 'mean' or 'sum'"):
        model(ids, attention_mask=mask, loss_reduction="none", **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny"), dropout=0.0)


@pytest.mark.parametrize("task", ["classify", "tag", "qa"])
def test_finetuning_trains_on_the_heads_fused_loss(task, tiny, tmp_path, monkeypatch):
    """Every training loss is the fused op's sum, called by the head with gradients on; and the
    loss the trainer logs is the head's mean loss of the step's examples."""
    from bertfast.finetune.data import sample_path
    from bertfast.finetune.trainer import FinetuneConfig, finetune
    calls = []
    fused = bertfast.ops.softmax_cross_entropy

    def spy(logits, labels, **kw):
        calls.append((kw.get("reduction", "mean"), logits.requires_grad))
        return fused(logits, labels, **kw)

    monkeypatch.setattr(bertfast.ops, "softmax_cross_entropy", spy)
    cfg = FinetuneConfig(task=task, model=tiny, train=sample_path(task), eval=sample_path(task, "eval"),
                         output=str(tmp_path / "out"), max_length=64 if task != "qa" else 128,
                         epochs=0.02 if task == "tag" else 1,  # tag: every eval tag must occur in train
                         batch_size=8, gradient_accumulation=2, lr=1e-3, device="cpu",
                         max_train_examples={"classify": 64, "tag": 0, "qa": 12}[task], eval_every=1,
                         progress=False, quiet=True)
    finetune(cfg)
    training_calls = list(calls)
    first_step_loss, micro_batches = _replay(cfg)
    assert micro_batches > 2
    calls_per_batch = 2 if task == "qa" else 1  # start and end
    assert training_calls == [("sum", True)] * (micro_batches * calls_per_batch)  # evaluation computes no loss
    first = json.loads((tmp_path / "out" / "eval_log.jsonl").read_text().splitlines()[0])
    assert first["train_loss"] == pytest.approx(first_step_loss, rel=1e-4)


def _replay(cfg):
    """(the head's own mean loss over the first optimizer step's examples, from the same start;
    the number of micro-batches of the run)."""
    import random

    import numpy as np

    from bertfast.finetune import trainer
    from bertfast.finetune.data.batching import collate
    from bertfast.finetune.models import load_model
    tok, labels, examples, _ = trainer._read_inputs(cfg)
    data = trainer._encode(cfg, lambda message: None, tok, labels, examples, None)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model, _ = load_model(cfg.task, cfg.model, labels)
    plan = trainer._schedule(len(data.features), cfg, 1)
    groups = trainer._epoch_groups(plan, data.lengths, cfg.seed, 0)
    with torch.no_grad():
        loss = model.train()(**collate(cfg.task, data.features, sum(groups[0], []), tok.pad_id)).loss
    return float(loss), sum(len(group) for group in groups)
