"""What is run: model sizes, families, batches (full length or drawn from real text lengths), and
the FLOPs a batch needs."""
import json
import os
from dataclasses import dataclass

import torch

# transformers.BertConfig fields of the benchmarked sizes (random weights: timing only).
MODEL_SIZES = {
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # for tests and smoke runs
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
}
VOCAB_SIZE = 30522
# transformers' config fields of each family besides the size: its usual checkpoint's (XLM-R's
# vocabulary cut to RoBERTa's 50265 from 250002, so that the embeddings do not dwarf a small model).
_ROBERTA_LIKE = dict(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
FAMILY_CONFIGS = {
    "bert": dict(vocab_size=VOCAB_SIZE, type_vocab_size=2),
    "roberta": dict(vocab_size=50265, **_ROBERTA_LIKE),
    "xlm-roberta": dict(vocab_size=50265, **_ROBERTA_LIKE),
    "camembert": dict(vocab_size=32005, **_ROBERTA_LIKE),
    "electra": dict(vocab_size=VOCAB_SIZE, embedding_size=128, type_vocab_size=2),
    "distilbert": dict(vocab_size=VOCAB_SIZE),
}
FAMILIES = tuple(FAMILY_CONFIGS)
_DISTILBERT_NAMES = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                     "intermediate_size": "hidden_dim"}
TASKS = ("classification", "mlm")
LENGTH_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_lengths.json")


def family_config_fields(family, model_size):
    """transformers' config fields (in the family's own names) of `family` at `model_size`."""
    fields = {**MODEL_SIZES[model_size], **FAMILY_CONFIGS[family]}
    if family == "distilbert":
        fields = {_DISTILBERT_NAMES.get(k, k): v for k, v in fields.items()}
    return fields


def real_distribution_for(seq_len):
    """Short single sentences for sequence lengths up to 128, question + paragraph beyond."""
    return "rotten_tomatoes" if seq_len <= 128 else "squad"


def load_length_histogram(name):
    with open(LENGTH_FILE) as f:
        dist = json.load(f)["distributions"][name]
    lengths = torch.tensor([int(k) for k in dist["counts"]], dtype=torch.long)
    weights = torch.tensor(list(dist["counts"].values()), dtype=torch.double)
    return lengths, weights


@dataclass
class Batch:
    input_ids: torch.Tensor        # (batch, padded length)
    attention_mask: torch.Tensor   # (batch, padded length), 1 on real tokens
    token_type_ids: torch.Tensor   # None for a family without token types (DistilBERT)
    labels: torch.Tensor           # class ids, or MLM targets with -100 off the masked positions
    lengths: list

    @property
    def real_tokens(self):
        return sum(self.lengths)

    @property
    def padded_tokens(self):
        return self.input_ids.numel()

    def to(self, device):
        types = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), types, self.labels.to(device),
                     self.lengths)


def make_batches(task, batch_size, seq_len, lengths_kind, count, generator, num_labels=2):
    """`count` batches. "full": every sequence seq_len tokens. "real": lengths drawn from the
    real-text histogram, truncated to seq_len, each batch padded to its longest sequence (what a
    dynamic-padding collator does)."""
    batches = []
    for _ in range(1 if lengths_kind == "full" else count):
        if lengths_kind == "full":
            lengths = [seq_len] * batch_size
        else:
            values, weights = load_length_histogram(real_distribution_for(seq_len))
            picks = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
            lengths = [min(int(values[i]), seq_len) for i in picks]
        padded = max(lengths)
        ids = torch.randint(1000, VOCAB_SIZE, (batch_size, padded), generator=generator)
        mask = torch.zeros(batch_size, padded, dtype=torch.long)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
        ids = ids * mask  # pad id 0
        if task == "classification":
            labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
        else:  # 15% of the real tokens are prediction targets
            chosen = (torch.rand(batch_size, padded, generator=generator) < 0.15) & mask.bool()
            chosen[:, 0] = True  # at least one target per sequence (position 0 is always real)
            labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        batches.append(Batch(ids, mask, torch.zeros_like(ids), labels, lengths))
    return batches


def for_family(batches, family):
    """The same batches as `family` reads them: its pad id at padding, ids (and MLM targets) inside
    its vocabulary, no token types where it has none."""
    config = FAMILY_CONFIGS[family]
    pad, top = config.get("pad_token_id", 0), config["vocab_size"] - 1
    out = []
    for b in batches:
        ids = torch.where(b.attention_mask.bool(), b.input_ids.clamp(max=top), pad)
        types = None if family == "distilbert" else b.token_type_ids
        out.append(Batch(ids, b.attention_mask, types, b.labels.clamp(max=top), b.lengths))
    return out


def forward_flops(size, lengths, task, vocab_size=VOCAB_SIZE):
    """Useful forward FLOPs of a batch: the encoder's GEMMs and attention on real tokens only,
    plus the head (MLM: transform + decoder on every real token, as transformers computes it)."""
    h, n_layers, inter = size["hidden_size"], size["num_hidden_layers"], size["intermediate_size"]
    per_token = n_layers * 2 * (4 * h * h + 2 * h * inter)
    attention = sum(n_layers * 4 * n * n * h for n in lengths)  # QK^T and PV
    tokens = sum(lengths)
    head = tokens * 2 * (h * h + h * vocab_size) if task == "mlm" else len(lengths) * 2 * (h * h + 2 * h)
    return tokens * per_token + attention + head


def step_flops(size, lengths, task, mode, vocab_size=VOCAB_SIZE):
    """Training is forward + backward: three times the forward's FLOPs."""
    f = forward_flops(size, lengths, task, vocab_size)
    return 3 * f if mode == "train" else f
