"""A pretrained encoder as a classifier: token batches, a pooled head, its loss and its predictions.

``encode`` and ``classification_batches`` turn a task's examples into padded batches;
``EncoderClassifier`` puts a linear head on a pooled encoder output; ``classification_loss`` is
the objective ``llmcourse.training.train`` reads; ``predict`` and ``metrics_fn`` score a model on
held-out batches with ``llmcourse.tasks.classification_metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.device import autocast
from llmcourse.objectives import Batch
from llmcourse.retrieval import mean_pool
from llmcourse.tasks import Example, classification_metrics

__all__ = [
    "encode",
    "classification_batches",
    "EncoderClassifier",
    "logits_of",
    "classification_loss",
    "predict",
    "metrics_fn",
]


def encode(tokenizer: Any, examples: Sequence[Example], max_length: int = 64) -> Batch:
    """Token ids of every example, padded to the longest (at most ``max_length``), with ``labels``.

    A pair is encoded as ``[CLS] first [SEP] second [SEP]`` with segment ids 0 then 1.
    """
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    if any(p is None for p in pairs) and any(p is not None for p in pairs):
        raise ValueError("mix of single texts and pairs: encode them separately")
    encoded = tokenizer(texts, pairs if pairs and pairs[0] is not None else None, truncation=True,
                        max_length=max_length, padding=True, return_tensors="pt")
    batch = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
    batch["labels"] = torch.tensor([e.label for e in examples])  # a tensor, not a Python list
    return batch


def _trim(batch: Batch) -> Batch:
    # Drop the columns that are padding in every row: shorter batches run faster.
    width = int(batch["attention_mask"].sum(dim=1).max())
    return {name: value[:, :width] if value.dim() == 2 else value for name, value in batch.items()}


def classification_batches(encoded: Batch, batch_size: int, shuffle: bool = False, seed: int = 0,
                           endless: bool = False) -> Iterator[Batch]:
    """Batches of rows of ``encode``'s output, each trimmed to its longest row.

    ``shuffle`` draws a new order every epoch; ``endless`` starts a new epoch when one ends
    (for ``train``); otherwise one pass. Wrap in ``list`` for fixed validation batches.
    """
    n = len(encoded["labels"])
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            yield _trim({name: value[rows] for name, value in encoded.items()})
        if not endless:
            return


class EncoderClassifier(nn.Module):
    """A pretrained encoder, a pooling of its outputs, dropout and a linear layer: ``logits`` (B, C).

    ``pooling``: ``"mean"`` (the mean output vector over real tokens: how MiniLM was trained to
    embed sentences), ``"cls"`` (the output at ``[CLS]``), or ``"pooler"`` (BERT's pooler,
    tanh(W h_CLS + b), as ``AutoModelForSequenceClassification`` does). The encoder is a
    Hugging Face ``BertModel`` (or any model that returns ``last_hidden_state``). With mean or
    [CLS] pooling, BERT's pooler is unused: it is removed from the encoder, so that it is
    neither counted nor trained.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"unknown pooling {pooling!r}; use 'mean', 'cls' or 'pooler'")
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ValueError("this encoder has no pooler: use pooling='mean' or 'cls'")
        if pooling != "pooler" and getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        self.encoder, self.pooling = encoder, pooling
        hidden_size = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)  # the head: the same name as in Transformers
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @property
    def config(self) -> Any:
        """The encoder's configuration (hidden size, layers, heads...)."""
        return self.encoder.config

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table (prompt tuning prepends vectors of its width)."""
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, inputs_embeds: Tensor | None = None, **kwargs: Any) -> Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           inputs_embeds=inputs_embeds, **kwargs)
        hidden = out.last_hidden_state  # (B, T, D)
        if self.pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = out.pooler_output
        return self.classifier(self.dropout(pooled))  # (B, C)


def logits_of(output: Any) -> Tensor:
    """The logits of a model's output: a tensor, or a Transformers output with ``.logits``."""
    return output if isinstance(output, Tensor) else output.logits


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _inputs(batch: Batch) -> Batch:
    return {name: batch[name] for name in _MODEL_INPUTS if name in batch}


def classification_loss(weights: Tensor | None = None, label_smoothing: float = 0.0) -> Callable[[nn.Module, Batch], Tensor]:
    """A loss function for ``train``: cross-entropy of the logits against ``batch["labels"]``.

    ``weights`` (one per class, see ``class_weights``) make rare classes count more.
    """

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        logits = logits_of(model(**_inputs(batch))).float()  # (B, C); the loss in fp32 under autocast
        w = None if weights is None else weights.to(logits.device)
        return F.cross_entropy(logits, batch["labels"], weight=w, label_smoothing=label_smoothing)

    return loss_fn


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Batch]) -> tuple[list[int], list[int]]:
    """True and predicted classes over ``batches``, in eval mode (no dropout), without gradients."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    y_true: list[int] = []
    y_pred: list[int] = []
    for batch in batches:
        with autocast(device):
            logits = logits_of(model(**{k: v.to(device) for k, v in _inputs(batch).items()}))
        y_pred += logits.argmax(dim=-1).tolist()
        y_true += batch["labels"].tolist()
    model.train(was_training)
    return y_true, y_pred




def metrics_fn(batches: Sequence[Batch], prefix: str = "val_") -> Callable[[nn.Module], dict[str, float]]:
    """A ``metrics_fn`` for ``train``: the classification metrics of the model on fixed ``batches``."""

    def compute(model: nn.Module) -> dict[str, float]:
        return {prefix + name: value for name, value in classification_metrics(*predict(model, batches)).items()}

    return compute
