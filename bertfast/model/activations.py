"""The activations a BERT's `hidden_act` may name, as transformers spells them: name -> function.

The one table: the config accepts exactly its keys, the encoder's FFN and the heads' transforms
look their function up in it, and `bertfast.optimize` refuses a model whose activation is not in it.
"""
import torch.nn.functional as F


def _gelu_tanh(x):
    """transformers' `gelu_new` and `gelu_pytorch_tanh`: GELU with the tanh approximation."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
}
