"""bertfast.model.activations.ACTIVATIONS: every name the config accepts computes what
transformers' ACT2FN computes under that name, and the config and optimize() accept exactly
its names."""
import pytest
import torch

from bertfast.model.activations import ACTIVATIONS
from bertfast.model.config import BertConfig

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_transformers(name):
    from transformers.activations import ACT2FN
    x = torch.linspace(-6.0, 6.0, 1001, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS[name](x), ACT2FN[name](x), rtol=1e-12, atol=1e-12)


def test_config_accepts_exactly_the_table():
    for name in ACTIVATIONS:
        assert BertConfig(hidden_act=name).hidden_act == name
    with pytest.raises(ValueError, match="hidden_act 'swiglu' is not supported; use one of gelu, gelu_new"):
        BertConfig(hidden_act="swiglu")
