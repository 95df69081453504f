"""bertfast.optimize(model): a transformers Bert* model with its encoder on bertfast's kernels.

Each BertLayer's self-attention, attention output and FFN output modules get a subclass of
their own transformers class whose forward calls bertfast ops: attention through
bertfast.model.attention_routing (the fused op; SDPA for float32 on CUDA outside autocast, which
the CUDA kernels do not take), and GEMM without bias then add_layer_norm with the bias, dropout,
residual and LayerNorm in one op. Only the class of those module objects changes: parameters,
buffers, state dict keys, hooks and everything transformers.Trainer relies on stay the same
objects, so nothing is copied and the model saves, loads and trains as before.
"""
import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ._library import has_cuda_kernels
from .model import attention_routing
from .model.activations import ACTIVATIONS
from .ops import add_layer_norm

logger = logging.getLogger(__name__)

_FAST_CLASSES = {}


def _attentions_requested(module, kwargs):
    if kwargs.get("output_attentions") or getattr(module.config, "output_attentions", False):
        return True
    try:  # transformers >= 5 records attentions through hooks, requested in a context variable
        from transformers.utils.output_capturing import _active_collector
        return "attentions" in (_active_collector.get() or {})
    except (ImportError, LookupError):
        return False


def _key_padding_mask(attention_mask, batch, seqlen):
    """transformers' prepared mask -> (batch, seq) bool key mask, or False when it is not a
    plain key-padding mask (then the original forward runs)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2 and tuple(attention_mask.shape) == (batch, seqlen):  # flash-attention style
        return attention_mask.bool()
    if attention_mask.dim() == 4 and attention_mask.shape[-1] == seqlen and attention_mask.shape[1] == 1:
        row = attention_mask[:, 0, 0, :].expand(batch, seqlen)
        return row if row.dtype == torch.bool else row == 0  # additive masks: 0 where a key is attended
    return False


def _fast_self_attention_forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
    batch, seqlen = hidden_states.shape[:2]
    key_mask = _key_padding_mask(attention_mask, batch, seqlen)
    if cache is not None or key_mask is False or _attentions_requested(self, kwargs):
        return self._bertfast_original_forward(hidden_states, attention_mask=attention_mask, cache=cache, **kwargs)
    shape = (batch, seqlen, self.num_attention_heads, self.attention_head_size)
    q = self.query(hidden_states).view(shape)
    k = self.key(hidden_states).view(shape)
    v = self.value(hidden_states).view(shape)
    out = attention_routing.attention(q, k, v, key_padding_mask=key_mask, dropout_p=self.dropout.p if self.training else 0.0,
                            scale=self.scaling)
    return out.reshape(batch, seqlen, -1), None


def _fast_dense_add_norm_forward(self, hidden_states, input_tensor):
    """transformers: LayerNorm(dropout(dense(x)) + residual); here GEMM + one fused op."""
    x = F.linear(hidden_states, self.dense.weight)
    return add_layer_norm(x, input_tensor.to(x.dtype), self.LayerNorm.weight, self.LayerNorm.bias,
                          self.LayerNorm.eps, x_bias=self.dense.bias,
                          dropout_p=self.dropout.p if self.training else 0.0)


def _fast_class(original, forward):
    """A subclass of `original` with `forward` replaced, one per original class, registered as a
    module attribute so that pickling finds it."""
    if original in _FAST_CLASSES:
        return _FAST_CLASSES[original]
    name = f"Bertfast{original.__name__}"
    cls = type(name, (original,), {"forward": forward, "_bertfast_original_forward": original.forward,
                                   "__module__": __name__})
    cls.__qualname__ = name
    globals()[name] = cls
    _FAST_CLASSES[original] = cls
    return cls


def _unsupported_reason(config):
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "it is a decoder (is_decoder/add_cross_attention): bertfast runs bidirectional encoders only"
    position = getattr(config, "position_embedding_type", "absolute")
    if position not in (None, "absolute"):
        return f"position_embedding_type={position!r} (relative attention scores) is not supported"
    if config.hidden_act not in ACTIVATIONS:
        return f"hidden_act={config.hidden_act!r} is not supported"
    return None


def _swap(module, forward):
    if type(module) in _FAST_CLASSES.values():
        return  # already optimized
    module.__class__ = _fast_class(type(module), forward)


def optimize(model):
    """Run a transformers BertModel or Bert* head model's encoder on bertfast's kernels, in place.

    Returns the same model object. Parameters are shared, not copied. Outputs match the original
    within floating-point tolerance (dropout draws different masks). Models this cannot convert
    (decoders, relative position embeddings, unknown activations, modules that are not
    transformers' BERT layers) are returned unchanged with a warning that says why. A forward
    that asks for attention weights (output_attentions) or uses a cache runs the original code.
    """
    try:
        from transformers.models.bert import modeling_bert as hf
    except ImportError as e:
        raise ImportError("bertfast.optimize needs the `transformers` package") from e
    base = model if isinstance(model, hf.BertModel) else getattr(model, "bert", None)
    if not isinstance(base, hf.BertModel):
        warnings.warn(f"bertfast.optimize: {type(model).__name__} is not a transformers BertModel or a Bert* "
                      "model with a `.bert` BertModel; left unchanged", stacklevel=2)
        return model
    reason = _unsupported_reason(base.config)
    on_cuda = any(p.device.type == "cuda" for p in base.parameters())
    if reason is None and on_cuda and not has_cuda_kernels():
        reason = "it is on a CUDA device and this bertfast build has no CUDA kernels (rebuild with nvcc)"
    if reason is None:
        for i, layer in enumerate(base.encoder.layer):
            parts = (layer.attention.self, layer.attention.output, layer.output)
            if not (isinstance(parts[0], hf.BertSelfAttention) and isinstance(parts[1], hf.BertSelfOutput)
                    and isinstance(parts[2], hf.BertOutput)):
                reason = f"encoder layer {i} has modules that are not transformers' BERT modules"
            elif not all(isinstance(p.LayerNorm, nn.LayerNorm) for p in parts[1:]):
                reason = f"encoder layer {i} has a LayerNorm that is not torch.nn.LayerNorm"
    if reason is not None:
        warnings.warn(f"bertfast.optimize: {type(model).__name__} left unchanged: {reason}", stacklevel=2)
        return model
    for layer in base.encoder.layer:
        _swap(layer.attention.self, _fast_self_attention_forward)
        _swap(layer.attention.output, _fast_dense_add_norm_forward)
        _swap(layer.output, _fast_dense_add_norm_forward)
    logger.info("bertfast.optimize: %d encoder layers of %s now run on bertfast ops", len(base.encoder.layer),
                type(model).__name__)
    return model
