"""Hugging Face BERT checkpoints: read a model folder into any bertfast model, write one back.

Reads `config.json` plus `model.safetensors`, a sharded `model.safetensors.index.json`, or a
legacy `pytorch_model.bin` (sharded too), the latter only through torch.load(weights_only=True).
Nothing reaches the network: `path` is a local folder.
"""
import json
import logging
import os
import warnings

import torch

from .._files import atomic_write, atomic_write_json
from . import families
from .config import BertConfig

logger = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"

# Buffers some checkpoints carry that are not weights.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
_BASE_PREFIXES = families.BASE_PREFIXES


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message names the files or keys."""


# ---------------------------------------------------------------- reading tensors
def _load_safetensors(file):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(file, device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file, it may be truncated or corrupt ({e})") from e


def _load_torch_bin(file):
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(f"{file}: not a readable PyTorch weights file, it may be truncated, corrupt, or "
                              f"hold more than tensors (only weights_only loading is allowed) ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: expected a dict of tensors, got {type(state).__name__}")
    return state


def _load_sharded(index_file, load_shard):
    try:
        with open(index_file, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_file}: not a valid shard index with a 'weight_map' ({e})") from e
    folder = os.path.dirname(index_file)
    state = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = os.path.join(folder, shard)
        if not os.path.isfile(shard_file):
            raise CheckpointError(f"{index_file} names the shard {shard}, which is not in {folder}")
        state.update(load_shard(shard_file))
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise CheckpointError(f"{index_file}: keys listed in the index are in none of the shards: {absent[:10]}")
    return state


def load_checkpoint_tensors(path):
    """All tensors of the weights in folder `path` (or of a single weights file), on the CPU."""
    if os.path.isfile(path):
        return _load_safetensors(path) if path.endswith(".safetensors") else _load_torch_bin(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"bertfast: {path} is not a folder or a weights file (checkpoints are read from "
                                "local paths only)")
    for name, load in ((SAFETENSORS, _load_safetensors),
                       (SAFETENSORS_INDEX, lambda f: _load_sharded(f, _load_safetensors)),
                       (TORCH_BIN, _load_torch_bin),
                       (TORCH_BIN_INDEX, lambda f: _load_sharded(f, _load_torch_bin))):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            return load(file)
    raise FileNotFoundError(f"bertfast: no weights in {path}: looked for {SAFETENSORS}, {SAFETENSORS_INDEX}, "
                            f"{TORCH_BIN}, {TORCH_BIN_INDEX}")


# ---------------------------------------------------------------- matching keys
def _normalize_keys(state, has_bert_prefix):
    """Old LayerNorm.gamma/beta names -> weight/bias; `bert.` prefix added or removed to match
    the model; buffers dropped. Returns (state, keys of other heads that the model has no use for)."""
    out, foreign = {}, []
    for key, tensor in state.items():
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        if has_bert_prefix and key.startswith(_BASE_PREFIXES):
            key = "bert." + key
        elif not has_bert_prefix:
            if key.startswith("bert."):
                key = key[len("bert."):]
            elif not key.startswith(_BASE_PREFIXES):
                foreign.append(key)  # a head's weight: a base model has none
                continue
        out[key] = tensor
    return out, foreign


def _tied_groups(model):
    """Lists of state-dict keys that are one tensor in the model (the MLM decoder and the word
    embeddings); the first key of each is the one a checkpoint stores."""
    groups = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault((tensor.data_ptr(), tuple(tensor.shape), tensor.stride()), []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _is_base_key(key, has_bert_prefix):
    """Keys of the encoder proper, which must come from the checkpoint (the pooler and heads may be new)."""
    body = key[len("bert."):] if has_bert_prefix and key.startswith("bert.") else key
    if has_bert_prefix and not key.startswith("bert."):
        return False
    return body.startswith(("embeddings.", "embeddings_project.", "encoder."))


def load_state_into(model, state, source="checkpoint", ignore_mismatched_sizes=False):
    """Copy checkpoint tensors into `model`; returns {'newly_initialized', 'ignored', 'mismatched'}
    key lists. Raises CheckpointError for missing encoder weights, unknown encoder keys and
    shape mismatches (heads' mismatches too, unless ignore_mismatched_sizes)."""
    has_bert_prefix = hasattr(model, "bert")
    state = families.to_model_keys(families.of(model.config), state, model.state_dict().keys())
    state, ignored = _normalize_keys(state, has_bert_prefix)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for group in _tied_groups(model):
        present = [k for k in group if k in state]
        for key in group:
            if key not in state and present:
                state[key] = state[present[0]]
    unexpected = sorted(set(state) - set(expected))
    bad_unexpected = [k for k in unexpected if _is_base_key(k, has_bert_prefix)]
    if bad_unexpected:
        raise CheckpointError(f"{source}: keys that {type(model).__name__} does not have (a different "
                              f"architecture or config?): {bad_unexpected[:20]}")
    ignored += unexpected
    missing = sorted(set(expected) - set(state))
    bad_missing = [k for k in missing if _is_base_key(k, has_bert_prefix)]
    if bad_missing:
        raise CheckpointError(f"{source}: weights missing from the checkpoint for {type(model).__name__}: "
                              f"{bad_missing[:20]}{' ...' if len(bad_missing) > 20 else ''}")
    mismatched, wrong_shapes = [], []
    for key in sorted(set(state) & set(expected)):
        if tuple(state[key].shape) != expected[key]:
            if ignore_mismatched_sizes and not _is_base_key(key, has_bert_prefix):
                mismatched.append(key)
            else:
                wrong_shapes.append(f"{key}: {tuple(state[key].shape)} in the checkpoint, {expected[key]} in the model")
    if wrong_shapes:
        hint = ("; pass ignore_mismatched_sizes=True to re-initialise a head of another size"
                if any(not _is_base_key(k.split(":")[0], has_bert_prefix) for k in wrong_shapes) else "")
        raise CheckpointError(f"{source}: shapes differ (does config.json match the weights?): "
                              f"{'; '.join(wrong_shapes[:20])}{hint}")
    to_load = {k: v for k, v in state.items() if k in expected and k not in mismatched}
    result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{source}: could not load {result.unexpected_keys[:20]}")
    newly_initialized = sorted(set(result.missing_keys) | set(mismatched))
    # a missing head keeps the constructor's transformers-style init: normal(0, initializer_range), zero bias
    return {"newly_initialized": newly_initialized, "ignored": sorted(ignored), "mismatched": mismatched}


# ---------------------------------------------------------------- public entry points
def from_pretrained(cls, path, *, ignore_mismatched_sizes=False, **config_overrides):
    """Build `cls` (BertModel or a head) from the Hugging Face folder `path`.

    `config_overrides` replace fields of config.json (e.g. num_labels=3, hidden_dropout_prob=0.2).
    Weights the checkpoint lacks in the heads (a classifier on a base checkpoint) are initialised
    as transformers does and listed in a warning and in `model.loading_info`.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{cls.__name__}.from_pretrained: {path} is not a folder (a Hugging Face model "
                                "folder with config.json and model.safetensors; nothing is downloaded)")
    config_file = os.path.join(path, CONFIG)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no {CONFIG} in {path}")
    config = BertConfig.from_json_file(config_file, **config_overrides)
    model = cls(config)
    info = load_state_into(model, load_checkpoint_tensors(path), source=path,
                           ignore_mismatched_sizes=ignore_mismatched_sizes)
    if info["newly_initialized"]:
        message = (f"{cls.__name__}: weights not in the checkpoint at {path}, newly initialised: "
                   f"{info['newly_initialized']}. Train the model before using it for predictions.")
        logger.warning(message)
        warnings.warn(message, stacklevel=3)
    if info["ignored"]:
        logger.info("%s: checkpoint weights not used: %s", cls.__name__, info["ignored"])
    model.loading_info = info
    return model


def save_pretrained(model, directory):
    """config.json + model.safetensors in `directory`, in the layout transformers reads:
    separate query/key/value tensors, tied weights stored once (as transformers does)."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    state = model.state_dict()
    for group in _tied_groups(model):
        for key in group[1:]:
            state.pop(key, None)
    storages = {}
    for tensor in state.values():
        storages[tensor.untyped_storage().data_ptr()] = storages.get(tensor.untyped_storage().data_ptr(), 0) + 1
    tensors = {}
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if storages[state[key].untyped_storage().data_ptr()] > 1:  # views of one storage (query/key/value)
            tensor = tensor.clone()
        tensors[families.checkpoint_key(families.of(model.config), key)] = tensor.contiguous()
    config = model.config.to_dict()
    config["architectures"] = [families.architecture(model.config, type(model).__name__)]
    config["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    atomic_write(os.path.join(directory, SAFETENSORS), lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_json(os.path.join(directory, CONFIG), config, sort_keys=True)
