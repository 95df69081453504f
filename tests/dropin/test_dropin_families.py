"""bertfast.optimize on every family and head: the same outputs on real tokens and the same gradient
of every parameter as the unoptimized model, fp32 exactly (to rounding) and bf16/fp16 autocast within the
low-precision rule."""
import copy

import pytest
import torch

import bertfast
from bert_testing import assert_close
from helpers import assert_lowp_close
from hf_families import CASES, inputs, model, run


@pytest.mark.parametrize("family,head", CASES)
def test_outputs_and_gradients_match_fp32(family, head):
    hf = model(family, head).eval()
    args = inputs(family, head)
    expected_outputs, expected_grads = run(hf, args)
    params = {name: p for name, p in hf.named_parameters()}
    keys = list(hf.state_dict())
    assert bertfast.optimize(hf) is hf
    assert type(hf.base_model).__qualname__.startswith("Bertfast"), "not converted"
    assert {name: p for name, p in hf.named_parameters()} == params and list(hf.state_dict()) == keys
    outputs, grads = run(hf, args)
    assert len(outputs) == len(expected_outputs)
    for i, (actual, expected) in enumerate(zip(outputs, expected_outputs)):
        assert_close(actual, expected, f"output {i}")
    for name, expected in expected_grads.items():
        assert_close(grads[name], expected, f"grad {name}", rtol=5e-4, atol=1e-6)


@pytest.mark.parametrize("family,head", [("bert", "ForSequenceClassification"), ("roberta", "ForMaskedLM"),
                                         ("electra", "ForTokenClassification"),
                                         ("distilbert", "ForQuestionAnswering")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_within_the_low_precision_rule(family, head, dtype):
    hf = model(family, head).eval()
    args = inputs(family, head, seqlen=17)
    ref64_outputs, ref64_grads = run(copy.deepcopy(hf).double(), args)
    with torch.autocast("cpu", dtype=dtype):
        lowp_outputs, lowp_grads = run(hf, args)
    bertfast.optimize(hf)
    with torch.autocast("cpu", dtype=dtype):
        outputs, grads = run(hf, args)
    for i, (out, ref, lowp) in enumerate(zip(outputs, ref64_outputs, lowp_outputs)):
        assert_lowp_close(f"output {i}", out, ref, lowp, dtype)
    for name, ref in ref64_grads.items():
        assert_lowp_close(f"grad {name}", grads[name], ref, lowp_grads[name], dtype)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("shape", ["no_padding", "batch_1", "length_1", "one_row_empty"])
def test_edge_shapes(family, shape):
    batch, seqlen, lengths = {"no_padding": (3, 9, [9, 9, 9]), "batch_1": (1, 7, [4]), "length_1": (2, 1, [1, 1]),
                              "one_row_empty": (3, 8, [8, 0, 3])}[shape]
    hf = model(family, "ForTokenClassification").eval()
    args = inputs(family, "ForTokenClassification", batch=batch, seqlen=seqlen, lengths=lengths)
    expected_outputs, expected_grads = run(hf, args)
    outputs, grads = run(bertfast.optimize(hf), args)
    for actual, expected in zip(outputs, expected_outputs):
        assert_close(actual, expected, "logits")
    for name, expected in expected_grads.items():
        assert_close(grads[name], expected, f"grad {name}", rtol=5e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_fully_padded_batch(family):
    hf = bertfast.optimize(model(family, "ForSequenceClassification").eval())
    args = inputs(family, "ForSequenceClassification", lengths=[0, 0, 0])
    out = hf(**args, output_hidden_states=True)
    assert not out.logits.isnan().any()
    assert len(out.hidden_states) == 3 and all(h.shape == (3, 13, 32) for h in out.hidden_states)
    out.logits.sum().backward()


@pytest.mark.parametrize("family", ["bert", "electra", "distilbert"])
def test_hidden_states_are_padded_back(family):
    hf = model(family, "Model").eval()
    args = inputs(family, "Model")
    real = args["attention_mask"].bool()
    expected = hf(**args, output_hidden_states=True).hidden_states
    hidden_states = bertfast.optimize(hf)(**args, output_hidden_states=True).hidden_states
    assert len(hidden_states) == len(expected) == 3
    for i, (actual, want) in enumerate(zip(hidden_states, expected)):
        assert actual.shape == want.shape
        assert_close(actual[real], want[real], f"hidden state {i}")
        assert not actual[~real].any(), "padded positions are zeros"


def _last_attention(m):
    base = m.base_model
    layers = base.transformer.layer if hasattr(base, "transformer") else base.encoder.layer
    return layers[-1].attention if hasattr(base, "transformer") else layers[-1].attention.self


@pytest.mark.parametrize("family", ["bert", "roberta", "electra", "distilbert"])
def test_sequence_classification_computes_only_position_0_in_the_last_layer(family):
    """A [CLS] head reads position 0 only: the last layer computes just those rows (and the family
    test above shows the logits and gradients stay equal). Not with hidden states asked for, not
    when position 0 is padding (left padding), not for a head whose classifier was replaced."""
    m = bertfast.optimize(model(family, "ForSequenceClassification").eval())
    calls = []
    _last_attention(m).register_forward_hook(lambda *_: calls.append(1))
    args = inputs(family, "ForSequenceClassification")
    m(**args)
    assert calls == [], "the last layer's full attention should not run"
    m(**args, output_hidden_states=True)
    assert calls == [1]
    left = {k: v.flip(1) for k, v in args.items()}
    m(**left)
    assert calls == [1, 1], "left padding: position 0 is not a real token"


def test_replaced_classifier_keeps_the_full_last_layer():
    m = model("roberta", "ForSequenceClassification").eval()
    m.classifier = torch.nn.Sequential(torch.nn.Linear(32, 2))
    bertfast.optimize(m)
    calls = []
    _last_attention(m).register_forward_hook(lambda *_: calls.append(1))
    m(**inputs("roberta", "ForSequenceClassification"))
    assert calls == [1]
