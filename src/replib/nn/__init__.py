"""The library floor: layers, models and instrumentation in plain PyTorch."""
from .attention import create_attention, list_attentions, register_attention
from .cnn import TinyCNN
from .hypernet import HyperNet, PrimaryMLP  # chapter 01 (MIP hypernetworks)
from .instrument import (
                         angular_distances,
                         block_grad_norms,
                         capture_residuals,
                         hidden_states,
                         layer_drop_deltas,
                         residual_stats,
                         skip_block,
)
from .mlp import MLP
from .norms import create_norm, list_norms, register_norm
from .recurrent import CharLSTM, LSTMClassifier, NormLSTM, NormLSTMCell
from .selu import SELU, AlphaDropout
from .transformer import GPTConfig, TinyGPT
from .vit import TinyViT

# Modules that add norms to the registry on import (one module per paper).
from . import adab2n, bhyt, powernorm, seednorm, unified  # noqa: E402,F401  isort: skip

__all__ = ["create_attention", "list_attentions", "register_attention", "CharLSTM", "LSTMClassifier", "NormLSTM", "NormLSTMCell", "TinyCNN",
           "MLP", "GPTConfig", "TinyGPT", "create_norm", "list_norms", "register_norm",
           "SELU", "AlphaDropout", "TinyViT", "angular_distances", "block_grad_norms", "capture_residuals",
           "hidden_states", "layer_drop_deltas", "residual_stats", "skip_block"]
