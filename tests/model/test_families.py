"""Every family (bert, roberta, xlm-roberta, camembert, electra, distilbert) and every head against
transformers' class for that family: logits, loss and every parameter's gradient (fp32, dropout off,
padded batches of mixed lengths), loaded from a folder transformers wrote; and save_pretrained read
back by transformers with equal outputs."""
import pytest
import torch
import torch.nn.functional as F

import bertfast
from bert_testing import assert_close, grads_by_hf_name, random_inputs
from bertfast.model import families
from bertfast.model.hf_checkpoint import _tied_groups

transformers = pytest.importorskip("transformers")

FAMILIES = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert"]
HEADS = ["BertModel", "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
         "BertForMaskedLM"]
_BERT_TO_DISTILBERT = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                       "intermediate_size": "hidden_dim", "hidden_act": "activation", "hidden_dropout_prob": "dropout",
                       "attention_probs_dropout_prob": "attention_dropout"}


def family_config(model_type, num_labels=3):
    """transformers' config for a small model of the family: hidden 32, 2 layers, no dropout."""
    kwargs = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  max_position_embeddings=40, num_labels=num_labels)
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        kwargs.update(max_position_embeddings=42, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
    elif model_type == "electra":
        kwargs.update(embedding_size=16, type_vocab_size=2)
    elif model_type == "distilbert":
        kwargs = {_BERT_TO_DISTILBERT.get(k, k): v for k, v in kwargs.items()}
        kwargs.update(seq_classif_dropout=0.0, qa_dropout=0.0)
    else:
        kwargs.update(type_vocab_size=2)
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def family_inputs(hf_config, seed):
    """(input_ids, attention_mask, token_type_ids or None): padding holds the pad token."""
    vocab = hf_config.vocab_size
    ids, mask, types = random_inputs({"vocab_size": vocab, "max_position_embeddings": 30}, seed, batch=3)
    pad = hf_config.pad_token_id
    ids = ids.masked_fill(ids == pad, pad + 2).masked_fill(mask == 0, pad)
    if getattr(hf_config, "type_vocab_size", 1) < 2 or hf_config.model_type == "distilbert":
        types = None
    return ids, mask, types


def twins(model_type, head, tmp_path, seed=0):
    """(bertfast model loaded from the folder transformers saved, that transformers model)."""
    hf_config = family_config(model_type, num_labels=2 if head == "BertForQuestionAnswering" else 3)
    hf_class = getattr(transformers, families.architecture(hf_config, head))
    torch.manual_seed(seed)
    hf = hf_class(hf_config).eval()
    with torch.no_grad():  # heads start at zero bias in both: make every parameter count
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp_path / "hf")
    ours = getattr(bertfast, head).from_pretrained(tmp_path / "hf").eval()
    assert not ours.loading_info["newly_initialized"], ours.loading_info
    return ours, hf


def _labels(head, ids, mask, hf_config, seed):
    g = torch.Generator().manual_seed(seed + 100)
    if head == "BertForSequenceClassification":
        return {"labels": torch.randint(0, 3, (ids.shape[0],), generator=g)}
    if head in ("BertForTokenClassification", "BertForMaskedLM"):
        high = 3 if head == "BertForTokenClassification" else hf_config.vocab_size
        labels = torch.randint(0, high, ids.shape, generator=g)
        labels[torch.rand(ids.shape, generator=g) < 0.3] = -100
        labels[0, 1] = 2
        return {"labels": labels.masked_fill(mask == 0, -100)}
    if head == "BertForQuestionAnswering":
        lengths = mask.sum(1)
        start = (torch.rand(ids.shape[0], generator=g) * lengths).long()
        return {"start_positions": start, "end_positions": torch.minimum(start + 2, lengths - 1)}
    return {}


def _reference_loss(head, ref, labels, real):
    """transformers' loss, except QA: bertfast keeps padding out of the span softmax, so mask it."""
    if head != "BertForQuestionAnswering":
        return ref.loss
    low = torch.finfo(torch.float32).min
    return sum(F.cross_entropy(logits.masked_fill(~real, low), pos)
               for logits, pos in ((ref.start_logits, labels["start_positions"]),
                                   (ref.end_logits, labels["end_positions"]))) / 2


def _outputs(head, out, real):
    """The (name, tensor) pairs to compare, at real tokens only where per token."""
    if head == "BertModel":
        pairs = [("last_hidden_state", out.last_hidden_state[real])]
        pooled = getattr(out, "pooler_output", None)
        return pairs + ([("pooler_output", pooled)] if pooled is not None else [])
    if head == "BertForQuestionAnswering":
        return [("start_logits", out.start_logits[real]), ("end_logits", out.end_logits[real])]
    if head == "BertForSequenceClassification":
        return [("logits", out.logits)]
    return [("logits", out.logits[real])]


def _compare_grads(ours, hf):
    """Every parameter's gradient under the checkpoint's names, tied parameters under each of theirs."""
    fam = families.of(ours.config)
    ours_grads = grads_by_hf_name(ours)
    for group in _tied_groups(ours):
        for key in group:
            ours_grads.setdefault(key, next(ours_grads[k] for k in group if k in ours_grads))
    ours_grads = {families.checkpoint_key(fam, k): g for k, g in ours_grads.items()}
    hf_grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p))
                for k, p in hf.state_dict(keep_vars=True).items() if isinstance(p, torch.nn.Parameter)}
    assert set(ours_grads) == set(hf_grads), set(ours_grads) ^ set(hf_grads)
    for name, expected in hf_grads.items():
        assert_close(ours_grads[name], expected, f"grad {name}", rtol=5e-4, atol=1e-6)


def _scalar(head, out, real):
    if head != "BertModel":
        return out.loss
    weights = torch.randn(out.last_hidden_state.shape, generator=torch.Generator().manual_seed(0)) * real[..., None]
    pooled = getattr(out, "pooler_output", None)
    pooled = pooled.square().sum() if pooled is not None else 0
    return (out.last_hidden_state * weights).sum() + pooled


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_family_head_matches_transformers(model_type, head, tmp_path):
    ours, hf = twins(model_type, head, tmp_path)
    ids, mask, types = family_inputs(hf.config, 1)
    real = mask.bool()
    labels = _labels(head, ids, mask, hf.config, 1)
    inputs = {"attention_mask": mask, **({} if types is None else {"token_type_ids": types})}
    out, ref = ours(ids, **inputs, **labels), hf(ids, **inputs, **labels)
    for (name, got), (_, expected) in zip(_outputs(head, out, real), _outputs(head, ref, real)):
        assert_close(got, expected, name)
    if head != "BertModel":
        ref.loss = _reference_loss(head, ref, labels, real)
        assert_close(out.loss, ref.loss, "loss")
    _scalar(head, out, real).backward()
    _scalar(head, ref, real).backward()
    _compare_grads(ours, hf)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_save_pretrained_loads_in_transformers(model_type, head, tmp_path):
    ours, hf = twins(model_type, head, tmp_path)
    ours.save_pretrained(tmp_path / "ours")
    back = getattr(transformers, families.architecture(ours.config, head)).from_pretrained(tmp_path / "ours").eval()
    assert type(back) is type(hf) and back.config.model_type == model_type
    ids, mask, types = family_inputs(hf.config, 2)
    real = mask.bool()
    inputs = {"attention_mask": mask, **({} if types is None else {"token_type_ids": types})}
    with torch.no_grad():
        for (name, got), (_, expected) in zip(_outputs(head, back(ids, **inputs), real),
                                               _outputs(head, hf(ids, **inputs), real)):
            assert_close(got, expected, name, rtol=1e-6, atol=1e-7)


def test_roberta_positions_count_real_tokens_from_padding_idx():
    """Left padding too: a real token's position is pad_token_id + 1 + its rank among real tokens."""
    config = bertfast.BertConfig(**family_config("roberta").to_dict())
    model = bertfast.BertModel(config).eval()
    ids = torch.tensor([[0, 5, 6, 2], [1, 1, 0, 2]])
    mask = (ids != 1).long()
    _, packing = model.encode(ids, attention_mask=mask)
    assert families.position_ids(config, ids, packing).tolist() == [2, 3, 4, 5, 2, 3]


def test_distilbert_config_round_trips_its_names():
    config = bertfast.BertConfig(**family_config("distilbert").to_dict())
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (32, 2, 48)
    written = config.to_dict()
    assert written["dim"] == 32 and "hidden_size" not in written and "type_vocab_size" not in written
    assert bertfast.BertConfig(**written) == config
    assert bertfast.BertConfig.from_dict(written, hidden_dropout_prob=0.3).hidden_dropout_prob == 0.3


def test_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        bertfast.BertConfig(model_type="gpt2")
    with pytest.raises(ValueError, match="next-sentence"):
        bertfast.BertForPreTraining(bertfast.BertConfig(**family_config("roberta").to_dict()))


def test_roberta_torch_compile_fullgraph_matches_eager():
    """RoBERTa's position ids (cumsum over the grid, then packed) trace without graph breaks."""
    hf_config = family_config("roberta")
    model = bertfast.BertForSequenceClassification(bertfast.BertConfig(**hf_config.to_dict())).eval()
    ids, mask, _ = family_inputs(hf_config, 0)
    labels = torch.tensor([0, 1, 2])
    out = torch.compile(model, fullgraph=True)(ids, attention_mask=mask, labels=labels)
    ref = model(ids, attention_mask=mask, labels=labels)
    assert_close(out.logits, ref.logits, "logits")
    assert_close(out.loss, ref.loss, "loss")
