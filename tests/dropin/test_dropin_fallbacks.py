"""Where bertfast.optimize cannot be exact it does not pretend: models it cannot convert are returned
unchanged with a warning naming the reason; a call asking for what the packed path cannot give
runs transformers' original forward."""
import logging

import pytest
import torch
from torch import nn

import bertfast
from bert_testing import assert_close
from hf_families import config, inputs, model, transformers


def _classes(m):
    return [type(x) for x in m.modules()]


def _refused(m, match):
    classes = _classes(m)
    with pytest.warns(UserWarning, match=match):
        assert bertfast.optimize(m) is m
    assert _classes(m) == classes, "an unconvertible model is left exactly as it was"


class _OtherNorm(nn.LayerNorm):
    pass


class _OwnAttention(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_decoder_refused(family):
    _refused(model(family, "Model", is_decoder=True), "decoder")


def test_cross_attention_refused():
    _refused(model("roberta", "Model", is_decoder=True, add_cross_attention=True), "decoder")


def test_relative_position_embeddings_refused():
    _refused(model("bert", "Model", position_embedding_type="relative_key"), "relative")


@pytest.mark.parametrize("family,activation", [("bert", "gelu_fast"), ("distilbert", "gelu_fast")])
def test_unknown_activation_refused(family, activation):
    key = "activation" if family == "distilbert" else "hidden_act"
    _refused(model(family, "Model", **{key: activation}), f"{key}='{activation}'")


def test_unknown_layer_norm_refused():
    m = model("camembert", "Model")
    m.encoder.layer[1].output.LayerNorm = _OtherNorm(32)
    _refused(m, "layer 1: output.LayerNorm is a _OtherNorm")
    d = model("distilbert", "Model")
    d.transformer.layer[0].sa_layer_norm = nn.LayerNorm(32, bias=False)
    _refused(d, "sa_layer_norm")


def test_foreign_module_refused():
    m = model("xlm_roberta", "Model")
    m.encoder.layer[0].attention.self = _OwnAttention()
    _refused(m, "attention.self is a _OwnAttention")


def test_other_models_refused():
    _refused(nn.Linear(2, 2), "not a transformers model of a family")
    albert = transformers.AlbertModel(transformers.AlbertConfig(vocab_size=50, hidden_size=32, num_attention_heads=4,
                                                                intermediate_size=37, embedding_size=16))
    _refused(albert, "not a transformers model of a family")


def _original_call(caplog, m, reference, args, **extra):
    """The optimized model's output for this call equals the original's, and the call ran it."""
    expected = reference(**args, **extra)
    with caplog.at_level(logging.DEBUG, logger="bertfast.optimize"):
        caplog.clear()
        out = m(**args, **extra)
    assert "original forward" in caplog.text, "this call should have run the original forward"
    assert_close(out.last_hidden_state, expected.last_hidden_state, "last_hidden_state", atol=1e-5)
    return out, expected


@pytest.mark.parametrize("family", ["bert", "electra", "distilbert"])
def test_output_attentions_runs_the_original(caplog, family):
    reference = model(family, "Model", attn_implementation="eager").eval()
    m = bertfast.optimize(model(family, "Model", attn_implementation="eager").eval())
    out, expected = _original_call(caplog, m, reference, inputs(family, "Model"), output_attentions=True)
    assert len(out.attentions) == 2
    for a, b in zip(out.attentions, expected.attentions):
        assert_close(a, b, "attentions")


def test_output_attentions_in_the_config_runs_the_original(caplog):
    reference = model("roberta", "Model", attn_implementation="eager", output_attentions=True).eval()
    m = bertfast.optimize(model("roberta", "Model", attn_implementation="eager", output_attentions=True).eval())
    out, _ = _original_call(caplog, m, reference, inputs("roberta", "Model"))
    assert len(out.attentions) == 2


@pytest.mark.parametrize("extra", ["head_mask", "encoder_hidden_states", "use_cache", "mask_4d"])
def test_unservable_arguments_run_the_original(caplog, extra):
    reference = model("bert", "Model").eval()
    m = bertfast.optimize(model("bert", "Model").eval())
    args = inputs("bert", "Model")
    batch, seqlen = args["input_ids"].shape
    if extra == "mask_4d":
        key = args.pop("attention_mask").bool()
        args["attention_mask"] = key[:, None, None, :].expand(batch, 1, seqlen, seqlen)
        kwargs = {}
    else:
        kwargs = {"head_mask": torch.ones(2, 4), "encoder_hidden_states": torch.randn(batch, 5, 32),
                  "use_cache": True}
        kwargs = {extra: kwargs[extra]}
    out, expected = _original_call(caplog, m, reference, args, **kwargs)
    assert_close(out.pooler_output, expected.pooler_output, "pooler_output")


def test_the_next_plain_call_is_packed_again(caplog):
    m = bertfast.optimize(model("bert", "Model", attn_implementation="eager").eval())
    args = inputs("bert", "Model")
    m(**args, output_attentions=True)
    with caplog.at_level(logging.DEBUG, logger="bertfast.optimize"):
        caplog.clear()
        out = m(**args)
    assert "original forward" not in caplog.text
    assert not out.last_hidden_state[~args["attention_mask"].bool()].any(), "packed path: zeros at padding"


def test_flattened_batches_under_flash_attention_run_the_original():
    """transformers' flash attention reads sequence boundaries from position_ids that restart at 0
    (DataCollatorWithFlattening); the packed path would see one sequence, so it leaves such calls."""
    from bertfast.dropin.packed import call_fallback_reason
    m = bertfast.optimize(model("bert", "Model"))
    args = {"input_ids": torch.ones(1, 6, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2]])}
    assert call_fallback_reason(m, args) is None  # sdpa attends across them too: the packed path is exact
    m.config._attn_implementation = "flash_attention_2"
    assert "position_ids" in call_fallback_reason(m, args)
