"""The library floor: layers, models and instrumentation in plain PyTorch."""
from .mlp import MLP
from .norms import create_norm, list_norms, register_norm
from .transformer import GPTConfig, TinyGPT

__all__ = ["MLP", "GPTConfig", "TinyGPT", "create_norm", "list_norms", "register_norm"]
