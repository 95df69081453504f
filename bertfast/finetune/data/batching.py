"""Batches: a deterministic per-epoch order that groups texts of similar length (shuffle, sort
inside mega-batches, shuffle the batches), an even split of each global batch across DDP ranks,
and padding to the longest text of the batch only."""
import numpy as np
import torch

from ..tokenization import IGNORE_INDEX

MEGA_BATCH = 50  # sort by length inside windows of this many batches: long runs stay random


def epoch_batches(lengths, global_batch_size, seed, epoch, shuffle=True, bucket=True):
    """Global batches (lists of feature indices) of one epoch; a function of (seed, epoch) only,
    so a resumed run and every DDP rank rebuild exactly the same order."""
    n = len(lengths)
    if not shuffle:
        order = np.arange(n)
        return [order[i:i + global_batch_size].tolist() for i in range(0, n, global_batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if bucket:
        lengths = np.asarray(lengths)
        window = MEGA_BATCH * global_batch_size
        chunks = []
        for i in range(0, n, window):
            chunk = order[i:i + window]
            chunks.append(chunk[np.argsort(-lengths[chunk], kind="stable")])
        order = np.concatenate(chunks)
    batches = [order[i:i + global_batch_size].tolist() for i in range(0, n, global_batch_size)]
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def shard(batch, rank, world_size):
    """This rank's contiguous part of a global batch (parts differ in size by at most one)."""
    if world_size == 1:
        return list(batch)
    return [int(i) for i in np.array_split(np.asarray(batch, dtype=np.int64), world_size)[rank]]


def eval_order(lengths):
    """Evaluation order: longest first (padding is wasted only between similar lengths)."""
    return np.argsort(-np.asarray(lengths), kind="stable").tolist()


def loss_items(task, features, indices):
    """How many terms the loss averages over: labelled tokens for tagging, else examples."""
    if task == "tag":
        return sum(sum(1 for t in features[i].label if t != IGNORE_INDEX) for i in indices)
    return len(indices)


def collate(task, features, indices, pad_id, with_labels=True):
    """Tensors of one batch, padded to its longest sequence."""
    rows = [features[i] for i in indices]
    longest = max(len(f.input_ids) for f in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), longest), dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, f in enumerate(rows):
        n = len(f.input_ids)
        ids[r, :n] = torch.tensor(f.input_ids)
        types[r, :n] = torch.tensor(f.token_type_ids)
        mask[r, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if not with_labels:
        return batch
    if task in ("classify", "pair"):
        batch["labels"] = torch.tensor([f.label for f in rows], dtype=torch.long)
    elif task == "regress":
        batch["labels"] = torch.tensor([f.label for f in rows], dtype=torch.float32)
    elif task == "tag":
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        for r, f in enumerate(rows):
            labels[r, :len(f.label)] = torch.tensor(f.label)
        batch["labels"] = labels
    elif task == "qa":
        batch["start_positions"] = torch.tensor([f.start_position for f in rows], dtype=torch.long)
        batch["end_positions"] = torch.tensor([f.end_position for f in rows], dtype=torch.long)
    return batch
