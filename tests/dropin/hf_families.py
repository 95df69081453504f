"""Small random transformers models of every family bertfast.optimize converts, their heads, padded
inputs of mixed lengths, and a loss on real tokens only (padded positions are defined by neither)."""
import torch

transformers = __import__("pytest").importorskip("transformers")

COMMON = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
ROBERTA_LIKE = dict(COMMON, pad_token_id=1, bos_token_id=0, eos_token_id=2, max_position_embeddings=42,
                    type_vocab_size=1)
HEADS = ("Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM",
         "ForMultipleChoice")

# family -> (class-name prefix, config class, config kwargs, head suffixes)
FAMILIES = {
    "bert": ("Bert", "BertConfig", dict(COMMON, max_position_embeddings=40, type_vocab_size=2),
             HEADS + ("ForPreTraining", "ForNextSentencePrediction")),
    "roberta": ("Roberta", "RobertaConfig", ROBERTA_LIKE, HEADS),
    "xlm_roberta": ("XLMRoberta", "XLMRobertaConfig", ROBERTA_LIKE, HEADS),
    "camembert": ("Camembert", "CamembertConfig", ROBERTA_LIKE, HEADS),
    "electra": ("Electra", "ElectraConfig", dict(COMMON, embedding_size=16, max_position_embeddings=40,
                                                 type_vocab_size=2), HEADS + ("ForPreTraining",)),
    "distilbert": ("DistilBert", "DistilBertConfig",
                   dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, hidden_dim=37, activation="gelu", dropout=0.0,
                        attention_dropout=0.0, max_position_embeddings=40, pad_token_id=0), HEADS),
}

CASES = [(family, head) for family, (_, _, _, heads) in FAMILIES.items() for head in heads]


def config(family, **overrides):
    _, config_class, kwargs, _ = FAMILIES[family]
    return getattr(transformers, config_class)(**{**kwargs, **overrides})


def model(family, head, seed=0, **overrides):
    prefix = FAMILIES[family][0]
    torch.manual_seed(seed)
    return getattr(transformers, prefix + head)(config(family, **overrides))


def inputs(family, head, seed=0, batch=3, seqlen=13, lengths=None):
    """input_ids with the pad id where the mask is 0 (as a tokenizer writes them), mixed lengths:
    row 0 full, the others shorter; token types for families that have them."""
    cfg = config(family)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, cfg.vocab_size, (batch, seqlen), generator=g)
    if lengths is None:
        lengths = [seqlen] + torch.randint(1, seqlen, (batch - 1,), generator=g).tolist()
    mask = (torch.arange(seqlen)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
    args = {"input_ids": ids, "attention_mask": mask}
    if family in ("bert", "electra"):
        args["token_type_ids"] = (torch.arange(seqlen)[None] >= seqlen // 2).long() * mask
    if head == "ForMultipleChoice":  # (batch, choices=2, seq)
        args = {k: torch.stack([v, v.roll(1, 0)], 1) for k, v in args.items()}
    return args


def real_loss(outputs, mask):
    """A loss of every tensor output, on real tokens only, with fixed random weights."""
    g = torch.Generator().manual_seed(1)
    real = mask.bool()
    total = 0.0
    for t in outputs:
        if t.shape[:real.dim()] == real.shape:
            t = t[real]
        total = total + (t.float() * torch.randn(t.shape, generator=g)).sum()
    return total


def run(model, args):
    """(tensor outputs on real tokens, gradients by parameter name) of one forward and backward."""
    model.zero_grad(set_to_none=True)
    outputs = [t for t in model(**args).to_tuple() if isinstance(t, torch.Tensor)]
    real_loss(outputs, args["attention_mask"]).backward()
    real = args["attention_mask"].bool()
    kept = [(t[real] if t.shape[:real.dim()] == real.shape else t).detach().clone() for t in outputs]
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
             for name, p in model.named_parameters()}
    return kept, grads
