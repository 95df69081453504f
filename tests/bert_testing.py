"""Shared helpers for the model tests: random configs, inputs, transformers twins with the same
weights, and comparisons that report where the worst element is."""
import random

import torch

import bertfast

HEADS = {
    "BertModel": "BertModel",
    "BertForSequenceClassification": "BertForSequenceClassification",
    "BertForTokenClassification": "BertForTokenClassification",
    "BertForQuestionAnswering": "BertForQuestionAnswering",
    "BertForMaskedLM": "BertForMaskedLM",
    "BertForPreTraining": "BertForPreTraining",
}


def random_config_kwargs(seed, **overrides):
    """A small random BERT: hidden 32..384 (heads 1..12), 1..4 layers, no dropout."""
    rng = random.Random(seed)
    heads = rng.randint(1, 12)
    head_dim = rng.choice([d for d in (8, 16, 24, 32) if 32 <= heads * d <= 384] or [32])
    kwargs = dict(vocab_size=rng.randint(60, 130), hidden_size=heads * head_dim, num_hidden_layers=rng.randint(1, 4),
                  num_attention_heads=heads, intermediate_size=rng.randint(24, 200),
                  hidden_act=rng.choice(["gelu", "gelu_new", "relu"]), max_position_embeddings=rng.randint(24, 40),
                  type_vocab_size=rng.randint(2, 3), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  layer_norm_eps=rng.choice([1e-12, 1e-5]))
    kwargs.update(overrides)
    return kwargs


def random_inputs(config_kwargs, seed, batch=3, seqlen=None, padding=True):
    g = torch.Generator().manual_seed(seed)
    seqlen = seqlen or int(torch.randint(5, config_kwargs["max_position_embeddings"] + 1, (1,), generator=g))
    input_ids = torch.randint(1, config_kwargs["vocab_size"], (batch, seqlen), generator=g)
    mask = torch.ones(batch, seqlen, dtype=torch.long)
    if padding:
        for b in range(1, batch):  # row 0 stays full length
            mask[b, int(torch.randint(1, seqlen + 1, (1,), generator=g)):] = 0
    # segment A then segment B, as a text pair
    split = torch.randint(1, seqlen, (batch, 1), generator=g)
    token_type_ids = (torch.arange(seqlen)[None] >= split).long() * mask
    return input_ids, mask, token_type_ids


def twin_models(head, config_kwargs, seed=0, attn_implementation="eager"):
    """(bertfast model, transformers model) with the same weights, both in eval mode."""
    import transformers
    torch.manual_seed(seed)
    hf = getattr(transformers, HEADS[head])(
        transformers.BertConfig(**config_kwargs, attn_implementation=attn_implementation)).eval()
    ours = getattr(bertfast, head)(bertfast.BertConfig(**config_kwargs)).eval()
    result = ours.load_state_dict(hf.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours, hf


def grads_by_hf_name(model):
    """Parameter gradients under transformers' names (the fused QKV split into query/key/value)."""
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if name.endswith("qkv_weight") or name.endswith("qkv_bias"):
            prefix, kind = name.rsplit(".", 1)[0], name.rsplit("_", 1)[1]
            for part, g in zip(("query", "key", "value"), grad.chunk(3)):
                grads[f"{prefix}.{part}.{kind}"] = g
        else:
            grads[name] = grad
    return grads


def assert_close(actual, expected, name, rtol=2e-4, atol=1e-5):
    """|actual - expected| <= atol + rtol * max|expected|, reporting the worst element."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs().max().item()
    if err.numel() and err.max().item() > bound:
        where = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        raise AssertionError(f"{name}: max error {err.max().item():.3g} at {where} (actual {actual[where].item():.6g},"
                             f" expected {expected[where].item():.6g}) exceeds {bound:.3g}")
