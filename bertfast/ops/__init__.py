"""bertfast's fused ops. Each is a torch custom op (torch.ops.bertfast.*) with CPU and CUDA
kernels, autograd, and a fake implementation for torch.compile."""
from .add_layer_norm import add_layer_norm
from .attention import attention, attention_varlen, is_deterministic, set_deterministic

__all__ = ["add_layer_norm", "attention", "attention_varlen", "is_deterministic", "set_deterministic"]
