"""The forwards bertfast.optimize gives a transformers model's modules: padding removed once at the
encoder's entrance, every layer on the packed real tokens, the padded shape restored at the exit.

The base model's forward decides per call: a call the packed path serves exactly goes to
`*_model_forward` (embeddings as transformers computes them, on the padded grid; then
`Packing.pack`, the layers, `Packing.pad`); any other call (attention weights asked for, a head
mask, a cache, cross-attention, a 4D mask, an argument this module does not know) runs the
original forward. Each swapped encoder/layer/attention module runs its packed forward only when
handed a `Packing` as its second argument, and its original forward otherwise, so the original
code path still works through the swapped modules.
"""
import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..model import attention_routing
from ..model.packing import Packing
from ..ops import add_layer_norm

logger = logging.getLogger("bertfast.optimize")

# Arguments of a base model's forward that the packed path takes as they are.
_SERVED = {"input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds",
           "output_hidden_states", "return_dict"}
_SIGNATURES = {}
# Passed by a sequence-classification head whose classifier reads only position 0: the last layer
# then computes the first token of each sequence only (keys and values still from every token).
FIRST_TOKENS = "_bertfast_first_tokens"
_LOGGED = set()


def _bind(module, args, kwargs):
    """The call's arguments by name (the original forward's **kwargs flattened in)."""
    original = type(module)._bertfast_original_forward
    signature = _SIGNATURES.get(original)
    if signature is None:
        signature = _SIGNATURES[original] = inspect.signature(original)
    arguments = signature.bind(module, *args, **kwargs).arguments
    arguments.pop(next(iter(signature.parameters)))  # self
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return arguments


def call_fallback_reason(module, arguments):
    """Why this call needs the original forward, or None when the packed path serves it exactly."""
    if arguments.get("output_attentions", getattr(module.config, "output_attentions", False)):
        return "output_attentions (attention weights are never materialised)"
    for name, value in arguments.items():
        if name not in _SERVED and value is not None and value is not False:
            return f"{name} was given"
    mask = arguments.get("attention_mask")
    if mask is None and arguments.get("position_ids") is not None and \
            "flash" in str(getattr(module.config, "_attn_implementation", "")):
        return "position_ids without an attention_mask under flash attention (sequences packed by position ids)"
    reference = arguments.get("input_ids")
    reference = arguments.get("inputs_embeds") if reference is None else reference
    if mask is not None and (reference is None or tuple(mask.shape) != tuple(reference.shape[:2])):
        return f"a {mask.dim()}-d attention_mask that is not the (batch, seq) padding mask of the input"
    return None


def model_forward(self, *args, **kwargs):
    """A base model's forward: the packed path when it serves this call, else the original."""
    first_tokens = kwargs.pop(FIRST_TOKENS, False)
    arguments = _bind(self, args, kwargs)
    reason = call_fallback_reason(self, arguments)
    if reason is None:
        return self._bertfast_packed_forward(**arguments, **{FIRST_TOKENS: first_tokens})
    level = logging.DEBUG if reason in _LOGGED else logging.INFO  # said once, then only at debug level
    _LOGGED.add(reason)
    logger.log(level, "bertfast.optimize: %s: this call runs transformers' original forward", reason)
    return self._bertfast_original_forward(*args, **kwargs)


def _collected_hidden_states():
    """The list transformers' output capture is filling for this call, or None."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return None
    collected = _active_collector.get()
    return None if collected is None else collected.get("hidden_states")


def _starts_with_a_real_token(attention_mask):
    """Whether position 0 of every row is real (right padding), where a [CLS] head reads."""
    if attention_mask is None:
        return True
    return not torch.compiler.is_compiling() and bool((attention_mask[:, 0] != 0).all())


def run_packed(encoder, embedded, attention_mask, first_tokens=False):
    """(batch, seq, hidden) embeddings -> the encoder on the packed real tokens -> (batch, seq,
    hidden), zeros at padded positions. Hidden states transformers' hooks capture on the way
    (packed, as the layers see them) are padded here too. With `first_tokens` (a [CLS] head, no
    hidden states asked for, right padding) only position 0 of the output is computed."""
    batch, seqlen = embedded.shape[:2]
    packing = Packing(batch, seqlen, embedded.device, attention_mask)
    captured = _collected_hidden_states()
    start = 0 if captured is None else len(captured)
    hidden = packing.pack(embedded)
    first_tokens = first_tokens and captured is None and _starts_with_a_real_token(attention_mask)
    if packing.indices is not None and packing.indices.shape[0] == 0:  # no real token: nothing to compute
        if captured is not None:
            captured.extend([hidden] * (len(encoder.layer) + (start == 0)))
        first_tokens = False
    else:
        hidden = encoder(hidden, packing, True) if first_tokens else encoder(hidden, packing)
    if first_tokens:  # (batch, hidden) rows of position 0
        return torch.cat([hidden[:, None], hidden.new_zeros(batch, seqlen - 1, hidden.shape[-1])], 1)
    if captured is not None:
        for i in range(start, len(captured)):
            if captured[i] is not None:
                captured[i] = packing.pad(captured[i])
    return packing.pad(hidden)


def _capture_outputs(func):
    from transformers.utils.output_capturing import capture_outputs
    return capture_outputs(func)


def bert_model_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                       inputs_embeds=None, **kwargs):
    """BertModel (RoBERTa, XLM-R, CamemBERT, ELECTRA) on packed tokens; the same output class."""
    from transformers.modeling_outputs import (BaseModelOutputWithPastAndCrossAttentions,
                                               BaseModelOutputWithPoolingAndCrossAttentions)
    if (input_ids is None) ^ (inputs_embeds is not None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    embedded = self.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                               inputs_embeds=inputs_embeds)
    if hasattr(self, "embeddings_project"):  # ELECTRA with embedding_size != hidden_size
        embedded = self.embeddings_project(embedded)
    sequence_output = run_packed(self.encoder, embedded, attention_mask, kwargs.get(FIRST_TOKENS, False))
    if not hasattr(self, "pooler"):  # ELECTRA has none
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=sequence_output)
    pooled = self.pooler(sequence_output) if self.pooler is not None else None
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=sequence_output, pooler_output=pooled)


def distilbert_model_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None,
                             **kwargs):
    from transformers.modeling_outputs import BaseModelOutput
    if (input_ids is None) ^ (inputs_embeds is not None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    embedded = self.embeddings(input_ids, inputs_embeds, position_ids)
    sequence_output = run_packed(self.transformer, embedded, attention_mask, kwargs.get(FIRST_TOKENS, False))
    return BaseModelOutput(last_hidden_state=sequence_output)


def packed_model_forward(forward):
    """`forward` wrapped as transformers wraps its own (output capture: hidden states, return_dict)."""
    return _capture_outputs(forward)


def _packing(args):
    return args[0] if args and isinstance(args[0], Packing) else None


def encoder_forward(self, hidden_states, *args, **kwargs):
    """The encoder: each layer on packed tokens, called positionally (gradient checkpointing)."""
    packing = _packing(args)
    if packing is None:
        return self._bertfast_original_forward(hidden_states, *args, **kwargs)
    last = len(self.layer) - 1
    first_tokens = _first_tokens_only(args)
    for i, layer in enumerate(self.layer):
        hidden_states = layer(hidden_states, packing, True) if first_tokens and i == last else layer(hidden_states, packing)
    return hidden_states


def _first_tokens_only(args):
    return len(args) > 1 and args[1] is True


def first_token_head_forward(self, *args, **kwargs):
    """A [CLS] classification head: its encoder's last layer computes position 0 only."""
    return self._bertfast_original_forward(*args, **kwargs, **{FIRST_TOKENS: True})


def bert_layer_forward(self, hidden_states, *args, **kwargs):
    packing = _packing(args)
    if packing is None:
        return self._bertfast_original_forward(hidden_states, *args, **kwargs)
    if _first_tokens_only(args):
        first_rows = packing.first_tokens(hidden_states)
        attention = self.attention
        context = _first_query_attention(attention.self, (attention.self.query, attention.self.key, attention.self.value),
                                         hidden_states, first_rows, packing, attention.self.num_attention_heads,
                                         attention.self.attention_head_size)
        attention_output = attention.output(context, first_rows)
    else:
        attention_output = self.attention(hidden_states, packing)
    return self.output(self.intermediate(attention_output), attention_output)


def bert_attention_forward(self, hidden_states, *args, **kwargs):
    packing = _packing(args)
    if packing is None:
        return self._bertfast_original_forward(hidden_states, *args, **kwargs)
    return self.output(self.self(hidden_states, packing), hidden_states)


def _attention(module, projections, hidden, packing, heads, head_dim):
    """Q, K, V projections of packed `hidden` (tokens, hidden) -> attention -> (tokens, heads * head_dim)."""
    tokens = hidden.shape[0]
    q, k, v = (projection(hidden).view(tokens, heads, head_dim) for projection in projections)
    context = attention_routing.attention_packed(q, k, v, packing, scale=module.scaling,
                                                 dropout_p=module.dropout.p if module.training else 0.0)
    return context.reshape(tokens, heads * head_dim)


def _first_query_attention(module, projections, hidden, first_rows, packing, heads, head_dim):
    """Attention of each sequence's first token (queries from `first_rows`, (batch, hidden)) to all
    its tokens (keys and values from packed `hidden`) -> (batch, heads * head_dim)."""
    query, key, value = projections
    q = query(first_rows).view(-1, heads, head_dim)
    k, v = (projection(hidden).view(-1, heads, head_dim) for projection in (key, value))
    padding = None if packing.indices is None else (packing.indices, packing.key_mask)
    context = attention_routing.first_query_attention(q, k, v, padding=padding, scale=module.scaling,
                                                      dropout_p=module.dropout.p if module.training else 0.0)
    return context.reshape(-1, heads * head_dim)


def bert_self_attention_forward(self, hidden_states, *args, **kwargs):
    packing = _packing(args)
    if packing is None:
        return self._bertfast_original_forward(hidden_states, *args, **kwargs)
    return _attention(self, (self.query, self.key, self.value), hidden_states, packing, self.num_attention_heads,
                      self.attention_head_size)


def _dense_add_norm(dense, dropout, layer_norm, x, residual):
    """layer_norm(residual + dropout(dense(x))): the GEMM without its bias, the rest one fused op.
    A dense that is not a plain nn.Linear (an adapter, a quantised layer) is called as it is."""
    if type(dense) is nn.Linear:
        x, bias = F.linear(x, dense.weight), dense.bias
    else:
        x, bias = dense(x), None
    p = dropout.p if dropout is not None and dropout.training else 0.0
    return add_layer_norm(x, residual.to(x.dtype), layer_norm.weight, layer_norm.bias, layer_norm.eps, x_bias=bias,
                          dropout_p=p)


def dense_add_norm_forward(self, hidden_states, input_tensor):
    """BertSelfOutput / BertOutput: any leading dimensions, so padded (original) calls use it too."""
    return _dense_add_norm(self.dense, self.dropout, self.LayerNorm, hidden_states, input_tensor)


def distilbert_attention_forward(self, hidden_states, *args, **kwargs):
    packing = _packing(args)
    if packing is None:
        return self._bertfast_original_forward(hidden_states, *args, **kwargs)
    context = _attention(self, (self.q_lin, self.k_lin, self.v_lin), hidden_states, packing, self.n_heads,
                         self.attention_head_size)
    return self.out_lin(context)


def distilbert_block_forward(self, hidden_states, *args, **kwargs):
    packing = _packing(args)
    if packing is None:
        return self._bertfast_original_forward(hidden_states, *args, **kwargs)
    if _first_tokens_only(args):
        residual = packing.first_tokens(hidden_states)
        a = self.attention
        context = _first_query_attention(a, (a.q_lin, a.k_lin, a.v_lin), hidden_states, residual, packing, a.n_heads,
                                         a.attention_head_size)
        attended = a.out_lin(context)
    else:
        residual, attended = hidden_states, self.attention(hidden_states, packing)
    norm = self.sa_layer_norm
    attended = add_layer_norm(attended, residual.to(attended.dtype), norm.weight, norm.bias, norm.eps)
    ffn = self.ffn
    return _dense_add_norm(ffn.lin2, ffn.dropout, self.output_layer_norm, ffn.activation(ffn.lin1(attended)), attended)
