import os
import sys

# Tests import the package from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A random 2-layer BERT folder (dropout 0.1) with the MiniLM tokenizer; shared, read-only."""
    from finetune_helpers import make_tiny_bert
    return make_tiny_bert(tmp_path_factory.mktemp("tiny"), dropout=0.1)


@pytest.fixture(scope="session")
def tiny0(tmp_path_factory):
    """The same without dropout (runs that must match exactly)."""
    from finetune_helpers import make_tiny_bert
    return make_tiny_bert(tmp_path_factory.mktemp("tiny0"), dropout=0.0)
