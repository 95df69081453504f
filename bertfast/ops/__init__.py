"""bertfast's fused ops. Each is a torch custom op (torch.ops.bertfast.*) with CPU and CUDA
kernels, autograd, and a fake implementation for torch.compile."""
from .add_layer_norm import add_layer_norm

__all__ = ["add_layer_norm"]
