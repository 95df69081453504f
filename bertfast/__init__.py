"""bertfast: fused CPU and CUDA kernels and a thin, fast BERT for fine-tuning and training."""
from . import ops
from ._info import info
from ._library import build_info, cpu_cache_stats, empty_cpu_cache, has_cuda_kernels
from .model import (BertConfig, BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                    BertForSequenceClassification, BertForTokenClassification, BertModel)
from .ops import reference
from .dropin import optimize

__version__ = "0.1.0"

__all__ = ["ops", "reference", "build_info", "has_cuda_kernels", "info", "cpu_cache_stats", "empty_cpu_cache",
           "__version__", "BertConfig", "BertModel", "BertForSequenceClassification", "BertForTokenClassification",
           "BertForQuestionAnswering", "BertForMaskedLM", "BertForPreTraining", "optimize"]
