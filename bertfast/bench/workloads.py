"""What is run: model sizes, batches (full length or drawn from real text lengths), and the
FLOPs a batch needs."""
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
TASKS = ("classification", "mlm")
LENGTH_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_lengths.json")


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
    token_type_ids: torch.Tensor
    labels: torch.Tensor           # class ids, or MLM targets with -100 off the masked positions
    lengths: list

    @property
    def real_tokens(self):
        return sum(self.lengths)

    @property
    def padded_tokens(self):
        return self.input_ids.numel()

    def to(self, device):
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.token_type_ids.to(device),
                     self.labels.to(device), self.lengths)


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


def forward_flops(size, lengths, task):
    """Useful forward FLOPs of a batch: the encoder's GEMMs and attention on real tokens only,
    plus the head (MLM: transform + decoder on every real token, as transformers computes it)."""
    h, n_layers, inter = size["hidden_size"], size["num_hidden_layers"], size["intermediate_size"]
    per_token = n_layers * 2 * (4 * h * h + 2 * h * inter)
    attention = sum(n_layers * 4 * n * n * h for n in lengths)  # QK^T and PV
    tokens = sum(lengths)
    head = tokens * 2 * (h * h + h * VOCAB_SIZE) if task == "mlm" else len(lengths) * 2 * (h * h + 2 * h)
    return tokens * per_token + attention + head


def step_flops(size, lengths, task, mode):
    """Training is forward + backward: three times the forward's FLOPs."""
    f = forward_flops(size, lengths, task)
    return 3 * f if mode == "train" else f
