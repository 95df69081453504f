"""BertModel and every head against transformers with the same weights: outputs, loss and the
gradient of every parameter, fp32 on CPU, random configs with padding and token types."""
import pytest
import torch
import torch.nn.functional as F

import bertfast
from bert_testing import assert_close, grads_by_hf_name, random_config_kwargs, random_inputs, twin_models

pytest.importorskip("transformers")

SEEDS = [0, 1, 2]


def _compare_grads(ours, hf):
    ours_grads, hf_grads = grads_by_hf_name(ours), grads_by_hf_name(hf)
    assert set(ours_grads) == set(hf_grads)
    for name, expected in hf_grads.items():
        assert_close(ours_grads[name], expected, f"grad {name}", rtol=5e-4, atol=1e-6)


def _run_both(head, seed, make_labels, attn_implementation="eager", **config_overrides):
    kwargs = random_config_kwargs(seed, **config_overrides)
    ours, hf = twin_models(head, kwargs, seed, attn_implementation)
    ids, mask, types = random_inputs(kwargs, seed)
    labels = make_labels(kwargs, ids, mask, torch.Generator().manual_seed(seed + 100))
    out = ours(ids, attention_mask=mask, token_type_ids=types, **labels)
    ref = hf(ids, attention_mask=mask, token_type_ids=types, **labels)
    return ours, hf, out, ref, mask.bool(), labels


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_bert_model_matches_transformers(seed, attn_implementation):
    ours, hf, out, ref, real, labels = _run_both("BertModel", seed, lambda *a: {}, attn_implementation)
    assert_close(out.last_hidden_state[real], ref.last_hidden_state[real], "last_hidden_state")
    assert (out.last_hidden_state[~real] == 0).all()
    assert_close(out.pooler_output, ref.pooler_output, "pooler_output")
    torch.manual_seed(seed)
    weights = torch.randn_like(out.last_hidden_state) * real[..., None]
    ((out.last_hidden_state * weights).sum() + out.pooler_output.square().sum()).backward()
    ((ref.last_hidden_state * weights).sum() + ref.pooler_output.square().sum()).backward()
    _compare_grads(ours, hf)


def test_bert_model_without_mask_matches_transformers():
    kwargs = random_config_kwargs(5)
    ours, hf = twin_models("BertModel", kwargs)
    ids, _, types = random_inputs(kwargs, 5)
    assert_close(ours(ids, token_type_ids=types)[0], hf(ids, token_type_ids=types)[0], "last_hidden_state")


def _class_labels(kwargs, ids, mask, g, num_labels):
    return {"labels": torch.randint(0, num_labels, (ids.shape[0],), generator=g)}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("problem", ["single_label_classification", "regression", "multi_label_classification"])
def test_sequence_classification_matches_transformers(seed, problem):
    num_labels = {"single_label_classification": 3, "regression": 1, "multi_label_classification": 4}[problem]

    def labels(kwargs, ids, mask, g):
        if problem == "single_label_classification":
            return {"labels": torch.randint(0, num_labels, (ids.shape[0],), generator=g)}
        if problem == "regression":
            return {"labels": torch.rand(ids.shape[0], generator=g) * 5}
        return {"labels": (torch.rand(ids.shape[0], num_labels, generator=g) > 0.5).float()}

    ours, hf, out, ref, _, _ = _run_both("BertForSequenceClassification", seed, labels, num_labels=num_labels)
    assert ours.config.problem_type == hf.config.problem_type == problem
    assert_close(out.logits, ref.logits, "logits")
    assert_close(out.loss, ref.loss, "loss")
    out.loss.backward()
    ref.loss.backward()
    _compare_grads(ours, hf)


def _token_labels(kwargs, ids, mask, g, num_labels=5):
    labels = torch.randint(0, num_labels, ids.shape, generator=g)
    labels[torch.rand(ids.shape, generator=g) < 0.2] = -100
    return {"labels": labels.masked_fill(mask == 0, -100)}


@pytest.mark.parametrize("seed", SEEDS)
def test_token_classification_matches_transformers(seed):
    ours, hf, out, ref, real, labels = _run_both("BertForTokenClassification", seed, _token_labels, num_labels=5)
    assert_close(out.logits[real], ref.logits[real], "logits")
    assert_close(out.loss, ref.loss, "loss")
    out.loss.backward()
    ref.loss.backward()
    _compare_grads(ours, hf)


@pytest.mark.parametrize("seed", SEEDS)
def test_question_answering_matches_transformers(seed):
    def positions(kwargs, ids, mask, g):
        lengths = mask.sum(1)
        start = (torch.rand(ids.shape[0], generator=g) * lengths).long()
        end = torch.minimum(start + 2, lengths - 1)
        end[0] = ids.shape[1] + 3  # outside the input: ignored, as in transformers
        return {"start_positions": start, "end_positions": end}

    ours, hf, out, ref, real, labels = _run_both("BertForQuestionAnswering", seed, positions)
    assert_close(out.start_logits[real], ref.start_logits[real], "start_logits")
    assert_close(out.end_logits[real], ref.end_logits[real], "end_logits")
    assert (out.start_logits[~real] == torch.finfo(torch.float32).min).all()
    # bertfast never lets padding into the span softmax: the reference loss masks it too
    low = torch.finfo(torch.float32).min
    seqlen = real.shape[1]
    ref_loss = sum(F.cross_entropy(logits.masked_fill(~real, low), pos.clamp(0, seqlen), ignore_index=seqlen)
                   for logits, pos in ((ref.start_logits, labels["start_positions"]),
                                       (ref.end_logits, labels["end_positions"]))) / 2
    assert_close(out.loss, ref_loss, "loss")
    out.loss.backward()
    ref_loss.backward()
    _compare_grads(ours, hf)


def _mlm_labels(kwargs, ids, mask, g):
    labels = torch.randint(0, kwargs["vocab_size"], ids.shape, generator=g)
    labels[torch.rand(ids.shape, generator=g) > 0.3] = -100
    labels[0, 0] = 3  # at least one labelled token
    return {"labels": labels.masked_fill(mask == 0, -100)}


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_lm_matches_transformers(seed):
    ours, hf, out, ref, real, labels = _run_both("BertForMaskedLM", seed, _mlm_labels)
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    assert_close(out.logits[real], ref.logits[real], "logits")
    assert_close(out.loss, ref.loss, "loss")
    out.loss.backward()
    ref.loss.backward()
    _compare_grads(ours, hf)


@pytest.mark.parametrize("seed", SEEDS)
def test_pretraining_matches_transformers(seed):
    def labels(kwargs, ids, mask, g):
        return {**_mlm_labels(kwargs, ids, mask, g),
                "next_sentence_label": torch.randint(0, 2, (ids.shape[0],), generator=g)}

    ours, hf, out, ref, real, _ = _run_both("BertForPreTraining", seed, labels)
    assert_close(out.prediction_logits[real], ref.prediction_logits[real], "prediction_logits")
    assert_close(out.seq_relationship_logits, ref.seq_relationship_logits, "seq_relationship_logits")
    assert_close(out.loss, ref.loss, "loss")
    out.loss.backward()
    ref.loss.backward()
    _compare_grads(ours, hf)


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertForPreTraining"])
def test_mlm_loss_without_logits_matches(head):
    """Training mode with labels skips the vocab logits; the loss and gradients are unchanged."""
    kwargs = random_config_kwargs(7)
    ours, hf = twin_models(head, kwargs)
    ids, mask, types = random_inputs(kwargs, 7)
    labels = _mlm_labels(kwargs, ids, mask, torch.Generator().manual_seed(1))
    if head == "BertForPreTraining":
        labels["next_sentence_label"] = torch.tensor([0, 1, 1])
    ours.train()  # dropout is 0 in these configs
    out = ours(ids, attention_mask=mask, token_type_ids=types, **labels)
    assert out.logits is None if head == "BertForMaskedLM" else out.prediction_logits is None
    ref = hf(ids, attention_mask=mask, token_type_ids=types, **labels)
    assert_close(out.loss, ref.loss, "loss")
    out.loss.backward()
    ref.loss.backward()
    _compare_grads(ours, hf)


def test_outputs_index_like_transformers():
    kwargs = random_config_kwargs(3)
    ours, _ = twin_models("BertForSequenceClassification", kwargs)
    ids, mask, _ = random_inputs(kwargs, 3)
    out = ours(ids, attention_mask=mask, labels=torch.tensor([0, 1, 0]))
    assert out[0] is out.loss and out["logits"] is out.logits and out.to_tuple() == (out.loss, out.logits)
    assert isinstance(out, dict)
    loss, logits = ours(ids, attention_mask=mask, labels=torch.tensor([0, 1, 0]), return_dict=False)
    assert_close(logits, out.logits, "logits")


def _low_precision_error(head_output, kwargs, seed):
    """max error vs transformers fp32 of (bertfast bf16, transformers bf16)."""
    ours, hf = twin_models("BertModel", kwargs, seed)
    ids, mask, types = random_inputs(kwargs, seed)
    real = mask.bool()
    expected = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state[real].double()
    ours_bf16 = ours.to(torch.bfloat16)(ids, attention_mask=mask, token_type_ids=types).last_hidden_state[real]
    hf_bf16 = hf.to(torch.bfloat16)(ids, attention_mask=mask, token_type_ids=types).last_hidden_state[real]
    return (ours_bf16.double() - expected).abs().max(), (hf_bf16.double() - expected).abs().max()


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_within_twice_transformers_bf16_error(seed):
    ours_err, hf_err = _low_precision_error(None, random_config_kwargs(seed), seed)
    assert ours_err <= 2 * hf_err + 1e-2, (ours_err, hf_err)


def test_dropout_in_training_only():
    kwargs = random_config_kwargs(4, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    model = bertfast.BertModel(bertfast.BertConfig(**kwargs))
    ids, mask, types = random_inputs(kwargs, 4)
    model.train()
    a = model(ids, attention_mask=mask).last_hidden_state
    b = model(ids, attention_mask=mask).last_hidden_state
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(ids, attention_mask=mask).last_hidden_state, model(ids, attention_mask=mask).last_hidden_state)


@pytest.mark.parametrize("bad, message", [
    (lambda ids, types: (ids.masked_fill(ids == ids[0, 1], 10_000), types), "input_ids"),
    (lambda ids, types: (ids.masked_fill(ids == ids[0, 1], -1), types), "input_ids"),
    (lambda ids, types: (ids, types + 5), "token_type_ids"),
    (lambda ids, types: (torch.cat([ids] * 20, 1), None), "max_position_embeddings"),
])
def test_bad_inputs_raise_clear_errors(bad, message):
    kwargs = random_config_kwargs(2)
    model = bertfast.BertForSequenceClassification(bertfast.BertConfig(**kwargs))
    ids, _, types = random_inputs(kwargs, 2)
    ids, types = bad(ids, types)
    with pytest.raises(ValueError, match=message):
        model(ids, token_type_ids=types)


@pytest.mark.parametrize("head", ["BertForTokenClassification", "BertForSequenceClassification"])
def test_torch_compile_fullgraph_matches_eager(head):
    kwargs = random_config_kwargs(1, num_hidden_layers=2)
    model = getattr(bertfast, head)(bertfast.BertConfig(**kwargs, num_labels=3)).eval()
    ids, mask, types = random_inputs(kwargs, 1)
    labels = _token_labels(kwargs, ids, mask, torch.Generator().manual_seed(0), num_labels=3)["labels"]
    if head == "BertForSequenceClassification":
        labels = labels[:, 0].clamp(min=0)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    ref = model(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert_close(out.loss, ref.loss, "loss")
    assert_close(out.logits, ref.logits, "logits")
    out.loss.backward()


def test_sequence_classification_without_mask_matches_transformers():
    """The [CLS]-only last layer on the dense path (no padding anywhere)."""
    kwargs = random_config_kwargs(6, num_labels=3)
    ours, hf = twin_models("BertForSequenceClassification", kwargs)
    ids, _, types = random_inputs(kwargs, 6)
    labels = torch.tensor([2, 0, 1])
    out, ref = ours(ids, token_type_ids=types, labels=labels), hf(ids, token_type_ids=types, labels=labels)
    assert_close(out.logits, ref.logits, "logits")
    out.loss.backward()
    ref.loss.backward()
    _compare_grads(ours, hf)


def test_masks_with_holes_match_transformers():
    """Left padding and holes: real tokens keep their positions and see only real keys."""
    kwargs = random_config_kwargs(8)
    ours, hf = twin_models("BertModel", kwargs)
    ids, _, types = random_inputs(kwargs, 8, seqlen=12)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, 3:6] = 0  # a hole
    real = mask.bool()
    assert_close(ours(ids, attention_mask=mask, token_type_ids=types).last_hidden_state[real],
                 hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state[real], "last_hidden_state")
