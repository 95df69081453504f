"""bertfast.optimize on transformers models: same parameters, same outputs and gradients."""
import copy
import io
import warnings

import pytest
import torch

import bertfast
from bert_testing import HEADS, assert_close, grads_by_hf_name, random_config_kwargs, random_inputs

transformers = pytest.importorskip("transformers")


def _labels(head, kwargs, ids, mask):
    g = torch.Generator().manual_seed(0)
    batch, seqlen = ids.shape
    if head == "BertForSequenceClassification":
        return {"labels": torch.randint(0, 2, (batch,), generator=g)}
    if head in ("BertModel", "BertForQuestionAnswering"):  # QA: see test_question_answering_loss
        return {}
    vocab = kwargs["vocab_size"] if head in ("BertForMaskedLM", "BertForPreTraining") else 2
    labels = torch.randint(0, vocab, ids.shape, generator=g).masked_fill(mask == 0, -100)
    extra = {"next_sentence_label": torch.randint(0, 2, (batch,), generator=g)} if head == "BertForPreTraining" else {}
    return {"labels": labels, **extra}


def _run(model, ids, mask, types, labels):
    model.zero_grad()
    out = model(ids, attention_mask=mask, token_type_ids=types, **labels)
    first = out[0]
    # padded positions are defined by neither model (bertfast leaves zeros there): real tokens only
    loss = out.loss if labels else first[mask.bool()].square().mean() + (out.pooler_output.sum() if "pooler_output" in out else 0)
    loss.backward()
    return [t.detach().clone() for t in out.to_tuple() if isinstance(t, torch.Tensor)], grads_by_hf_name(model)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("head", list(HEADS))
def test_optimize_keeps_outputs_gradients_and_parameters(head, attn_implementation):
    kwargs = random_config_kwargs(21)
    torch.manual_seed(0)
    model = getattr(transformers, head)(transformers.BertConfig(**kwargs, attn_implementation=attn_implementation))
    model.eval()
    ids, mask, types = random_inputs(kwargs, 21)
    labels = _labels(head, kwargs, ids, mask)
    params_before = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    outputs_before, grads_before = _run(model, ids, mask, types, labels)

    assert bertfast.optimize(model) is model
    assert type(model.base_model.encoder.layer[0].attention.self).__qualname__ == "BertfastBertSelfAttention"
    for name, p in model.named_parameters():
        assert params_before[name][0] is p and p.data_ptr() == params_before[name][1], name
    outputs_after, grads_after = _run(model, ids, mask, types, labels)
    real = mask.bool()
    for before, after in zip(outputs_before, outputs_after):
        if before.dim() >= 2 and before.shape[:2] == real.shape:
            before, after = before[real], after[real]  # padded positions are not defined by either
        assert_close(after, before, "output")
    for name, expected in grads_before.items():
        assert_close(grads_after[name], expected, f"grad {name}", rtol=5e-4, atol=1e-6)


def test_question_answering_loss():
    """transformers' span loss softmaxes over padded positions too, whose logits come from the pad
    tokens' hidden states; the optimized model's are zeros there. Without padding the losses are
    equal; with padding only the logits on real tokens are (a documented difference)."""
    kwargs = random_config_kwargs(27)
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering(transformers.BertConfig(**kwargs)).eval()
    ids, mask, types = random_inputs(kwargs, 27, padding=False)
    spans = {"start_positions": torch.zeros(3, dtype=torch.long), "end_positions": mask.sum(1) - 1}
    before, grads_before = _run(model, ids, mask, types, spans)
    after, grads_after = _run(bertfast.optimize(model), ids, mask, types, spans)
    for b, a in zip(before, after):
        assert_close(a, b, "QA output")
    for name, expected in grads_before.items():
        assert_close(grads_after[name], expected, f"grad {name}", rtol=5e-4, atol=1e-6)


def test_optimized_model_saves_pickles_and_trains(tmp_path):
    kwargs = random_config_kwargs(22, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = bertfast.optimize(transformers.BertForSequenceClassification(transformers.BertConfig(**kwargs)))
    model.save_pretrained(tmp_path)
    reloaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    for key, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key]), key
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=False).bert.encoder.layer[0].output).__qualname__ == "BertfastBertOutput"
    # a plain training loop: the loss goes down
    ids, mask, types = random_inputs(kwargs, 22, batch=8)
    labels = torch.arange(8) % 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_optimized_model_with_transformers_trainer(tmp_path):
    pytest.importorskip("accelerate")
    kwargs = random_config_kwargs(23)
    model = bertfast.optimize(transformers.BertForSequenceClassification(transformers.BertConfig(**kwargs)))
    ids, mask, _ = random_inputs(kwargs, 23, batch=8)
    data = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": torch.tensor(i % 2)} for i in range(8)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                                          report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no")
    result = transformers.Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 2


def test_unsupported_models_left_unchanged_with_reason():
    kwargs = random_config_kwargs(24)
    decoder = transformers.BertModel(transformers.BertConfig(**kwargs, is_decoder=True))
    classes = [type(m) for m in decoder.modules()]
    with pytest.warns(UserWarning, match="decoder"):
        assert bertfast.optimize(decoder) is decoder
    assert [type(m) for m in decoder.modules()] == classes
    with pytest.warns(UserWarning, match="left unchanged"):
        bertfast.optimize(torch.nn.Linear(2, 2))


def test_output_attentions_runs_the_original_attention():
    kwargs = random_config_kwargs(25)
    model = transformers.BertModel(transformers.BertConfig(**kwargs, attn_implementation="eager")).eval()
    ids, mask, _ = random_inputs(kwargs, 25)
    expected = model(ids, attention_mask=mask, output_attentions=True).attentions
    bertfast.optimize(model)
    attentions = model(ids, attention_mask=mask, output_attentions=True).attentions
    assert len(attentions) == kwargs["num_hidden_layers"] and attentions[0] is not None
    for a, b in zip(attentions, expected):
        assert_close(a, b, "attentions")


def test_optimize_twice_is_harmless():
    kwargs = random_config_kwargs(26)
    model = transformers.BertModel(transformers.BertConfig(**kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bertfast.optimize(bertfast.optimize(model))
    copy.deepcopy(model)
    assert type(model.encoder.layer[0].attention.self).__mro__[1] is transformers.models.bert.modeling_bert.BertSelfAttention
