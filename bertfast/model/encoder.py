"""BertModel: embeddings, encoder layers on packed real tokens, pooler.

Module and parameter names follow transformers' BERT (`embeddings.word_embeddings`,
`encoder.layer.0.attention.output.dense`, ...), so state dicts and optimizer parameter groups
written for transformers keep working. One exception inside: Q, K and V are one (3*hidden,
hidden) parameter, `attention.self.qkv_weight`, for a single GEMM; its state dict still has
transformers' separate `query`/`key`/`value` entries.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import attention_routing, families
from .activations import ACTIVATIONS
from .config import BertConfig
from ..ops import add_layer_norm
from .outputs import BaseModelOutput
from .packing import Packing


def compute_dtype(reference):
    """The activation dtype: autocast's when it is on, else the parameters'."""
    device_type = reference.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return reference.dtype


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        family, size = families.of(config), families.embedding_size(config)  # ELECTRA's may differ from hidden
        self.word_embeddings = nn.Embedding(config.vocab_size, size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, size, padding_idx=(
            config.pad_token_id if family.roberta_positions else None))
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, size) if family.token_types else None
        self.LayerNorm = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, input_ids, token_type_ids, position_ids):
        """All arguments (tokens,) int64; returns (tokens, hidden)."""
        word = self.word_embeddings(input_ids)
        other = self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:  # DistilBERT has none
            other = other + self.token_type_embeddings(token_type_ids)
        dtype = compute_dtype(word)
        # layer_norm(word + position + type) as one fused op: word is x, the rest the residual
        out = add_layer_norm(word.to(dtype), other.to(dtype), self.LayerNorm.weight, self.LayerNorm.bias,
                             self.LayerNorm.eps)
        return F.dropout(out, self.dropout_p, self.training)  # transformers drops out after the norm


class BertSelfAttention(nn.Module):
    """Q, K, V projections as one (3*hidden, hidden) GEMM; the state dict shows them as
    transformers' `query`, `key`, `value` linears."""

    def __init__(self, config):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.dropout_p = config.attention_probs_dropout_prob
        self.qkv_weight = nn.Parameter(torch.empty(3 * hidden, hidden))
        self.qkv_bias = nn.Parameter(torch.empty(3 * hidden))

    def forward(self, hidden, packing):
        tokens = hidden.shape[0]
        qkv = F.linear(hidden, self.qkv_weight, self.qkv_bias).view(tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        dropout_p = self.dropout_p if self.training else 0.0
        context = attention_routing.attention_packed(q, k, v, packing, dropout_p=dropout_p,
                                                     scale=1.0 / math.sqrt(self.head_dim))
        return context.reshape(tokens, self.num_heads * self.head_dim)

    def forward_first_tokens(self, hidden, first_rows, packing):
        """Attention outputs of the first token of each sequence only: (batch, hidden). Keys and
        values still come from every token; queries only from `first_rows` (batch, hidden)."""
        size = self.num_heads * self.head_dim
        q = F.linear(first_rows, self.qkv_weight[:size], self.qkv_bias[:size])
        kv = F.linear(hidden, self.qkv_weight[size:], self.qkv_bias[size:]).view(-1, 2, self.num_heads, self.head_dim)
        k, v = kv.unbind(1)
        padding = None if packing.indices is None else (packing.indices, packing.key_mask)
        context = attention_routing.first_query_attention(q.view(-1, self.num_heads, self.head_dim), k, v, padding=padding,
                                                dropout_p=self.dropout_p if self.training else 0.0,
                                                scale=1.0 / math.sqrt(self.head_dim))
        return context.reshape(-1, size)

    _PARTS = ("query", "key", "value")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight, bias = self.qkv_weight, self.qkv_bias
        if not keep_vars:
            weight, bias = weight.detach(), bias.detach()
        for name, w, b in zip(self._PARTS, weight.chunk(3), bias.chunk(3)):
            if not keep_vars:
                # Copies: views of one storage are refused by safetensors' save_file (which
                # Trainer and accelerate call on a state dict), since they share memory.
                w, b = w.clone(), b.clone()
            destination[f"{prefix}{name}.weight"] = w
            destination[f"{prefix}{name}.bias"] = b

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for kind in ("weight", "bias"):
            keys = [f"{prefix}{name}.{kind}" for name in self._PARTS]
            if all(k in state_dict for k in keys):
                parts = [state_dict.pop(k) for k in keys]
                shapes = {tuple(p.shape) for p in parts}
                if len(shapes) != 1:
                    error_msgs.append(f"{keys}: query/key/value {kind}s have different shapes {sorted(shapes)}")
                    continue
                state_dict[f"{prefix}qkv_{kind}"] = torch.cat(parts)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # report missing parts under the names the checkpoint uses
        for kind in ("weight", "bias"):
            fused = f"{prefix}qkv_{kind}"
            if fused in missing_keys:
                missing_keys.remove(fused)
                missing_keys.extend(f"{prefix}{name}.{kind}" for name in self._PARTS)


class BertSelfOutput(nn.Module):
    def __init__(self, config, in_features=None):
        super().__init__()
        self.dense = nn.Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, x, residual):
        """layer_norm(residual + dropout(dense(x))): GEMM without bias, the rest one fused op."""
        return add_layer_norm(F.linear(x, self.dense.weight), residual.to(x.dtype), self.LayerNorm.weight,
                              self.LayerNorm.bias, self.LayerNorm.eps, x_bias=self.dense.bias,
                              dropout_p=self.dropout_p if self.training else 0.0)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden, packing):
        return self.output(self.self(hidden, packing), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.activation(self.dense(x))


class BertOutput(BertSelfOutput):
    """The FFN's output: BertSelfOutput's computation on the intermediate activations."""

    def __init__(self, config):
        super().__init__(config, in_features=config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden, packing):
        attended = self.attention(hidden, packing)
        return self.output(self.intermediate(attended), attended)

    def forward_first_tokens(self, hidden, packing):
        """The layer's output for each sequence's first token only: (batch, hidden). For a last
        layer whose other outputs nobody reads (a [CLS] classifier) this skips most of its GEMMs."""
        first_rows = packing.first_tokens(hidden)
        attended = self.attention.output(self.attention.self.forward_first_tokens(hidden, first_rows, packing),
                                         first_rows)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden, packing):
        for layer in self.layer:
            hidden = layer(hidden, packing)
        return hidden


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, first_tokens):
        return torch.tanh(self.dense(first_tokens))


class BertPreTrainedModel(nn.Module):
    """Shared by BertModel and the heads: the config, weight initialisation as transformers
    does it, and Hugging Face checkpoints (`from_pretrained`, `save_pretrained`)."""

    config_class = BertConfig

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"{type(self).__name__}: config must be a bertfast.BertConfig, got "
                            f"{type(config).__name__}")
        config.validate()
        self.config = config

    def post_init(self):
        self.apply(self._init_weights)
        self.tie_weights()

    def _init_weights(self, module):
        """transformers' scheme: normal(0, initializer_range) weights, zero biases, LayerNorm 1/0,
        the padding embedding row zero."""
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, BertSelfAttention):
                module.qkv_weight.normal_(0.0, std)
                module.qkv_bias.zero_()

    def tie_weights(self):
        """Heads with an output embedding share it with the input one (overridden there)."""

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Load a Hugging Face BERT folder; see bertfast.model.hf_checkpoint.from_pretrained."""
        from .hf_checkpoint import from_pretrained
        return from_pretrained(cls, path, **overrides)

    def save_pretrained(self, directory):
        """Write config.json and model.safetensors that transformers loads back."""
        from .hf_checkpoint import save_pretrained
        save_pretrained(self, directory)

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def dtype(self):
        return next(self.parameters()).dtype


def _range_errors(checks):
    """First (name, value, position, limit, field) of int tensors outside [0, limit), or None."""
    for name, tensor, limit, field in checks:
        bad = (tensor < 0) | (tensor >= limit)
        if bad.any():
            where = tuple(int(i) for i in bad.nonzero()[0])
            return f"{name}[{', '.join(map(str, where))}] = {int(tensor[where])} is outside [0, {limit}) ({field}={limit})"
    return None


class BertModel(BertPreTrainedModel):
    """BERT encoder. forward(input_ids, attention_mask=None, token_type_ids=None, position_ids=None)
    returns `last_hidden_state` (batch, seq, hidden; zeros at padded positions) and
    `pooler_output` (batch, hidden; tanh(dense([CLS])), None without a pooler).

    With an attention_mask, padding is removed once after the embeddings and every layer runs on
    the real tokens only. Inputs are checked before any kernel runs: token ids, token types and
    positions outside their tables raise a ValueError. On CUDA that check costs one device sync
    per forward; set `model.check_inputs = False` to skip it (under torch.compile the check
    becomes a device-side assert, no sync).
    """

    check_inputs = True

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.embeddings_project = families.embeddings_project(config)  # ELECTRA: embedding -> hidden size
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer and families.of(config).pooler else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def _validate(self, input_ids, attention_mask, token_type_ids, position_ids):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"BertModel: input_ids must be a (batch, seq) tensor, got {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"BertModel: input_ids must be int64 or int32, got {input_ids.dtype}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                        ("position_ids", position_ids)):
            if t is not None and tuple(t.shape) != tuple(input_ids.shape):
                raise ValueError(f"BertModel: {name} has shape {tuple(t.shape)}, expected input_ids' shape "
                                 f"{tuple(input_ids.shape)}")
        config = self.config
        if position_ids is None and input_ids.shape[1] > families.max_length(config):
            raise ValueError(f"BertModel: sequence length {input_ids.shape[1]} is longer than "
                             f"{families.max_length(config)} (max_position_embeddings={config.max_position_embeddings})")
        if not self.check_inputs:
            return
        checks = [("input_ids", input_ids, config.vocab_size, "vocab_size")]
        if token_type_ids is not None and families.of(config).token_types:
            checks.append(("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size"))
        if position_ids is not None:
            checks.append(("position_ids", position_ids, config.max_position_embeddings, "max_position_embeddings"))
        if torch.compiler.is_compiling():
            for name, t, limit, field in checks:
                torch._assert_async(((t >= 0) & (t < limit)).all(), f"BertModel: {name} outside [0, {field})")
            return
        ok = torch.stack([((t >= 0) & (t < limit)).all() for _, t, limit, _ in checks]).all()
        if not bool(ok):  # one host sync on CUDA
            raise ValueError(f"BertModel: {_range_errors(checks)}")

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        """The encoder on packed tokens: (hidden (tokens, hidden), Packing)."""
        self._validate(input_ids, attention_mask, token_type_ids, position_ids)
        hidden, packing = self._embed(input_ids, attention_mask, token_type_ids, position_ids)
        return self.encoder(hidden, packing), packing

    def _embed(self, input_ids, attention_mask, token_type_ids, position_ids):
        batch, seqlen = input_ids.shape
        packing = Packing(batch, seqlen, input_ids.device, attention_mask)
        ids = packing.pack(input_ids)
        no_types = token_type_ids is None or self.embeddings.token_type_embeddings is None
        types = torch.zeros_like(ids) if no_types else packing.pack(token_type_ids)
        if position_ids is None:
            positions = families.position_ids(self.config, input_ids, packing)
        else:
            positions = packing.pack(position_ids)
        hidden = self.embeddings(ids, types, positions)
        if self.embeddings_project is not None:
            hidden = self.embeddings_project(hidden)
        return hidden, packing

    def encode_first_tokens(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        """Final hidden state of each sequence's first token ([CLS]) only, (batch, hidden): the
        last layer computes just those rows, as a [CLS] classifier needs nothing else."""
        self._validate(input_ids, attention_mask, token_type_ids, position_ids)
        hidden, packing = self._embed(input_ids, attention_mask, token_type_ids, position_ids)
        layers = self.encoder.layer
        for layer in layers[:-1]:
            hidden = layer(hidden, packing)
        return layers[-1].forward_first_tokens(hidden, packing)

    def pool(self, hidden, packing):
        return None if self.pooler is None else self.pooler(packing.first_tokens(hidden))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, return_dict=True):
        hidden, packing = self.encode(input_ids, attention_mask, token_type_ids, position_ids)
        out = BaseModelOutput(last_hidden_state=packing.pad(hidden), pooler_output=self.pool(hidden, packing))
        return out if return_dict else out.to_tuple()
