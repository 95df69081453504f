"""The DDP case of test_dropin_ddp.py, shared by the test (one process, the whole batch) and
ddp_worker.py (each of 2 processes, half of it): a small random RoBERTa sequence classifier,
batches of mixed lengths padded as a tokenizer pads them, STEPS AdamW steps."""
import torch

import transformers

STEPS, BATCH, SEQLEN = 3, 8, 19


def build():
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=37, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0, max_position_embeddings=42,
                                        type_vocab_size=1, pad_token_id=1, num_labels=3)
    return transformers.RobertaForSequenceClassification(config).train()


def batches():
    """STEPS batches (input_ids, attention_mask, labels), lengths 1..SEQLEN, pad id 1."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        lengths = torch.randint(1, SEQLEN + 1, (BATCH,), generator=g)
        mask = (torch.arange(SEQLEN)[None] < lengths[:, None]).long()
        ids = torch.randint(3, 97, (BATCH, SEQLEN), generator=g).masked_fill(mask == 0, 1)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (BATCH,), generator=g)})
    return out


def shard(batch, rank, world):
    """This rank's rows, trimmed to their own longest sequence (dynamic padding per process)."""
    rows = {k: v[rank::world] for k, v in batch.items()}
    longest = int(rows["attention_mask"].sum(1).max())
    return {k: (v[:, :longest] if v.dim() == 2 else v) for k, v in rows.items()}


def train(model, parameters, select=lambda batch: batch):
    """STEPS AdamW steps of `model` on `select(batch)`; the loss is the mean over the rows given,
    so DDP's gradient average over two equal halves is the whole batch's gradient."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    for batch in batches():
        model(**select(batch)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def train_with_trainer(model, out):
    """The same steps under transformers' Trainer (torchrun, gloo on the CPU); saves to `out` (a folder)."""
    data = [{k: v[i] for k, v in b.items()} for b in batches() for i in range(BATCH)]
    args = transformers.TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH // 2, max_steps=STEPS,
                                          learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0,
                                          adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=0.0,
                                          report_to=[], use_cpu=True, ddp_backend="gloo", save_strategy="no",
                                          logging_strategy="no", dataloader_drop_last=True, seed=0)
    assert args.world_size == 2 and args.parallel_mode == transformers.training_args.ParallelMode.DISTRIBUTED
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel)
    trainer.save_model(out)
