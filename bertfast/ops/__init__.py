"""bertfast's fused ops. Each is a torch custom op (torch.ops.bertfast.*) with CPU and CUDA
kernels, autograd, and a fake implementation for torch.compile."""
from .add_layer_norm import add_layer_norm
from .attention import attention, attention_varlen, is_deterministic, set_deterministic
from .cross_entropy import softmax_cross_entropy, span_loss
from .linear_cross_entropy import linear_cross_entropy

__all__ = [
    "add_layer_norm",
    "attention",
    "attention_varlen",
    "is_deterministic",
    "set_deterministic",
    "softmax_cross_entropy",
    "span_loss",
    "linear_cross_entropy",
]
