"""Masked-LM pretraining (`bertfast pretrain`): a corpus tokenized once into a memory-mapped
cache (corpus), packed into blocks or sentence pairs (blocks), masked anew each epoch (masking),
trained on the fine-tuning trainer's steps (job)."""
from .job import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "pretrain"]
