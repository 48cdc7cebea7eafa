"""Fine-tuning: classification tasks from the corpus, a task head, and six ways to choose what trains.

A pretrained encoder (MiniLM, from ``llmcourse.models.load_minilm``) becomes a classifier by
adding a head, then some of its weights are trained on labelled examples:

- **full** fine-tuning: every weight;
- **head only**: the encoder is a frozen feature extractor, only the head learns;
- **FFN only**: the feed-forward sublayers of every block (and the head);
- **prompt tuning**: ``n`` trainable vectors prepended to the input embeddings (Lester et al., 2021);
- **prefix tuning**: ``n`` trainable keys and values prepended in the attention of every layer
  (Li and Liang, 2021);
- **LoRA**: a trainable low-rank update ``B A`` beside chosen weight matrices (Hu et al., 2022).

Prompt tuning, prefix tuning and LoRA follow PEFT's conventions (the classification head trains
too; a soft prompt sits before the text), so that the tests can check them against PEFT: same
trainable-parameter counts and, with the same weights copied across, the same outputs. (PEFT's
prefix tuning also moves the text to positions ``P, P + 1, ...``; ours leaves positions alone,
and the tests pass PEFT's positions explicitly.)

Training uses ``llmcourse.pretraining.train`` with ``classification_loss``; ``predict`` and
``classification_metrics`` (built on ``llmcourse.metrics``) score a model on held-out plays.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse import data, metrics
from llmcourse.device import autocast, pick_device, seed_everything
from llmcourse.pretraining import History, TrainConfig, train

__all__ = [
    "Example",
    "Task",
    "genre_task",
    "word_order_task",
    "class_weights",
    "majority_baseline",
    "tfidf_baseline",
    "encode",
    "classification_batches",
    "mean_pool",
    "EncoderClassifier",
    "logits_of",
    "classification_loss",
    "predict",
    "classification_metrics",
    "metrics_fn",
    "count_parameters",
    "freeze_except",
    "full_finetuning",
    "head_only",
    "ffn_only",
    "PromptTuning",
    "PrefixSelfAttention",
    "apply_prefix_tuning",
    "LoRALinear",
    "apply_lora",
    "merge_lora",
    "unmerge_lora",
    "STRATEGIES",
    "LEARNING_RATES",
    "training_memory",
    "StrategyRun",
    "run_strategy",
    "markdown_table",
]

Batch = dict[str, Tensor]

# ---------------------------------------------------------------------------------------------
# Tasks built from the corpus


@dataclass(frozen=True)
class Example:
    """One labelled example: a text (or a pair of texts), its class index and the play it comes from."""

    text: str
    label: int
    play: str
    text_pair: str | None = None


class Task(NamedTuple):
    """A classification task split by play: no play gives examples to two splits."""

    name: str
    classes: tuple[str, ...]
    train: list[Example]
    validation: list[Example]
    test: list[Example]


def genre_task(words: int = 64, validation_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Task:
    """Is a passage from a comedy, a history or a tragedy? (``data.GENRE_CLASSES``)

    Passages of ``words`` words with no speaker names (they would give the play away). Roman
    plays count as tragedies; problem plays and romances are left out (``data.GENRE_OF_FOLDER``).
    Plays, not passages, are split (stratified by class), so the model is tested on plays it
    never saw. The classes are unbalanced (histories are the most common): see ``class_weights``.
    """
    chosen = [play for play in data.plays() if data.genre_class(play) is not None]
    split = data.split_by_play(chosen, test_fraction, validation_fraction, seed, stratify=data.genre_class)
    index = {name: i for i, name in enumerate(data.GENRE_CLASSES)}

    def examples(plays: list[data.Play]) -> list[Example]:
        return [Example(p.text, index[data.genre_class(p.play) or ""], p.play) for p in data.passages(plays, words)]

    return Task("genre", data.GENRE_CLASSES, examples(split.train), examples(split.validation), examples(split.test))


def word_order_task(
    n_train: int = 4000, n_validation: int = 500, n_test: int = 1000, min_words: int = 8,
    validation_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
) -> Task:
    """Is a line in Shakespeare's word order, or are its words shuffled? (classes ``("original", "shuffled")``)

    Each example is one line of at least ``min_words`` words, used once: with probability 1/2
    its words (with the punctuation attached to them) are put in a random different order.
    Both classes then have the same words, so a bag of words sees no difference at all
    between them; a model must read the order. Lines come from plays split as usual.
    """
    split = data.split_by_play(test_fraction=test_fraction, validation_fraction=validation_fraction, seed=seed)
    rng = random.Random(seed)

    def examples(plays: list[data.Play], n: int) -> list[Example]:
        lines = [(line, play.slug) for play in plays for speech in data.speeches(play) for line in speech.lines
                 if len(line.split()) >= min_words and len(set(line.split())) > 1]
        rng.shuffle(lines)
        result = []
        for line, slug in lines[:n]:
            if rng.random() < 0.5:
                result.append(Example(line, 0, slug))
                continue
            words = line.split()
            shuffled = words[:]
            while shuffled == words:
                rng.shuffle(shuffled)
            result.append(Example(" ".join(shuffled), 1, slug))
        return result

    return Task("word order", ("original", "shuffled"), examples(split.train, n_train),
                examples(split.validation, n_validation), examples(split.test, n_test))


def class_weights(labels: Sequence[int], n_classes: int) -> Tensor:
    """Weights ``n / (k * count)`` per class, as scikit-learn's ``class_weight="balanced"``.

    In a weighted cross-entropy every class then counts as much as the others in total.
    """
    counts = Counter(labels)
    missing = [c for c in range(n_classes) if counts[c] == 0]
    if missing:
        raise ValueError(f"classes {missing} have no examples: a weight for them is undefined")
    return torch.tensor([len(labels) / (n_classes * counts[c]) for c in range(n_classes)])


def majority_baseline(train: Sequence[Example], test: Sequence[Example]) -> list[int]:
    """Predict the most common training class for every test example."""
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    return [majority] * len(test)


def _joined(example: Example) -> str:
    return example.text if example.text_pair is None else f"{example.text} ||| {example.text_pair}"


def tfidf_baseline(train: Sequence[Example], test: Sequence[Example], ngram_range: tuple[int, int] = (1, 2),
                   min_df: int = 2, C: float = 1.0) -> list[int]:
    """TF-IDF of word n-grams, then a class-balanced logistic regression (scikit-learn).

    A pair of texts becomes one bag of words, as a reader who ignores word order would see it.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from threadpoolctl import threadpool_limits

    vectorizer = TfidfVectorizer(ngram_range=ngram_range, min_df=min_df, sublinear_tf=True)
    features = vectorizer.fit_transform([_joined(e) for e in train])
    model = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
    # One BLAS thread: this fit is small, and on a busy machine extra threads only wait for
    # each other (several times slower, measured); the result is the same.
    with threadpool_limits(limits=1):
        model.fit(features, [e.label for e in train])
    return [int(y) for y in model.predict(vectorizer.transform([_joined(e) for e in test]))]


# ---------------------------------------------------------------------------------------------
# Token ids and batches


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


# ---------------------------------------------------------------------------------------------
# The classification head


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean of the hidden states (B, T, D) over the real (unpadded) positions -> (B, D)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


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


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 (``llmcourse.metrics``, equal to scikit-learn)."""
    precision, recall, f1 = metrics.precision_recall_f1(y_true, y_pred, average="macro")
    return {"accuracy": metrics.accuracy(y_true, y_pred), "precision": precision, "recall": recall, "macro_f1": f1}


def metrics_fn(batches: Sequence[Batch], prefix: str = "val_") -> Callable[[nn.Module], dict[str, float]]:
    """A ``metrics_fn`` for ``train``: the classification metrics of the model on fixed ``batches``."""

    def compute(model: nn.Module) -> dict[str, float]:
        return {prefix + name: value for name, value in classification_metrics(*predict(model, batches)).items()}

    return compute


# ---------------------------------------------------------------------------------------------
# What trains: freezing


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())


def freeze_except(model: nn.Module, trainable: Callable[[str], bool]) -> nn.Module:
    """Set ``requires_grad`` to ``trainable(name)`` for every named parameter; return the model."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable(name))
    return model


HEAD_NAMES = ("classifier", "score")  # what Transformers and PEFT call a classification head


def _is_head(name: str, heads: Sequence[str] = HEAD_NAMES) -> bool:
    return any(part in heads for part in name.split(".")[:-1])


def full_finetuning(model: nn.Module) -> nn.Module:
    """Every weight trains."""
    return freeze_except(model, lambda name: True)


def head_only(model: nn.Module) -> nn.Module:
    """Only the classification head trains: the encoder is a fixed feature extractor."""
    return freeze_except(model, _is_head)


# A BERT block: attention.self (Q, K, V), attention.output (W^O + LayerNorm), then the feed-forward
# sublayer: intermediate.dense (D -> 4D, GELU) and output.dense (4D -> D) with its LayerNorm.
_FFN = re.compile(r"(^|\.)layer\.\d+\.(intermediate|output)\.")


def ffn_only(model: nn.Module) -> nn.Module:
    """Only the feed-forward sublayers of every block (with their LayerNorm) and the head train."""
    return freeze_except(model, lambda name: bool(_FFN.search(name)) or _is_head(name))


# ---------------------------------------------------------------------------------------------
# Prompt tuning


class PromptTuning(nn.Module):
    """Prepend ``n_tokens`` trainable vectors (a soft prompt) to the input embeddings of a frozen model.

    The wrapped model must accept ``inputs_embeds`` and have ``get_input_embeddings()``
    (Transformers models and ``EncoderClassifier`` do). Only the prompt and the head train.
    The prompt starts as the embeddings of random vocabulary tokens (Lester et al., 2021).
    As in PEFT, the text's tokens then sit at positions ``n_tokens, n_tokens + 1, ...``.
    """

    def __init__(self, model: nn.Module, n_tokens: int = 20, heads: Sequence[str] = HEAD_NAMES, seed: int = 0) -> None:
        super().__init__()
        if n_tokens < 1:
            raise ValueError("n_tokens must be at least 1")
        self.model = freeze_except(model, lambda name: _is_head(name, heads))
        table = model.get_input_embeddings().weight  # (V, D)
        rows = torch.randint(table.shape[0], (n_tokens,), generator=torch.Generator().manual_seed(seed))
        self.prompt = nn.Parameter(table[rows].detach().clone())  # (P, D)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, **kwargs: Any) -> Any:
        batch_size, n = input_ids.shape[0], self.prompt.shape[0]
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, D)
        prompt = self.prompt.to(embeds.dtype).expand(batch_size, -1, -1)  # (B, P, D)
        inputs_embeds = torch.cat([prompt, embeds], dim=1)  # (B, P + T, D)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.cat([attention_mask.new_ones(batch_size, n), attention_mask], dim=1)
        if token_type_ids is not None:
            token_type_ids = torch.cat([token_type_ids.new_zeros(batch_size, n), token_type_ids], dim=1)
            kwargs["token_type_ids"] = token_type_ids
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


# ---------------------------------------------------------------------------------------------
# Prefix tuning


class PrefixSelfAttention(nn.Module):
    """A frozen BERT self-attention whose keys and values get ``n_prefix`` trainable entries first.

    Every query may attend to the prefix as well as to the (unpadded) tokens; the queries
    themselves are unchanged, so the output keeps the input's length. Computes
    ``softmax(q [P_k; K]^T / sqrt(d)) [P_v; V]`` per head with PyTorch's fused attention.
    """

    def __init__(self, attention: nn.Module, n_prefix: int, init_std: float = 0.02) -> None:
        super().__init__()
        for name in ("query", "key", "value", "num_attention_heads", "attention_head_size"):
            if not hasattr(attention, name):
                raise TypeError(f"{type(attention).__name__} has no {name!r}: expected a BERT-style self-attention")
        self.attention = attention
        heads, size = attention.num_attention_heads, attention.attention_head_size
        self.prefix_keys = nn.Parameter(torch.randn(heads, n_prefix, size) * init_std)  # (H, P, d)
        self.prefix_values = nn.Parameter(torch.randn(heads, n_prefix, size) * init_std)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> tuple[Tensor, None]:
        att = self.attention
        batch, length, _ = hidden_states.shape
        heads, size = att.num_attention_heads, att.attention_head_size

        def split_heads(x: Tensor) -> Tensor:
            return x.view(batch, length, heads, size).transpose(1, 2)  # (B, H, T, d)

        q = split_heads(att.query(hidden_states))
        k = torch.cat([self.prefix_keys.to(q.dtype).expand(batch, -1, -1, -1), split_heads(att.key(hidden_states))], dim=2)
        v = torch.cat([self.prefix_values.to(q.dtype).expand(batch, -1, -1, -1), split_heads(att.value(hidden_states))], dim=2)
        mask = _may_attend(attention_mask, batch, length, q.device)  # (B or 1, 1 or H, T, T), True = may attend
        prefix_visible = torch.ones(*mask.shape[:-1], self.prefix_keys.shape[1], dtype=torch.bool, device=mask.device)
        mask = torch.cat([prefix_visible, mask], dim=-1)  # (.., T, P + T)
        dropout = att.dropout.p if self.training and hasattr(att, "dropout") else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, T, d)
        return out.transpose(1, 2).reshape(batch, length, heads * size), None


def _may_attend(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    # Transformers hands the attention layers a 4-D mask already: None (no padding), bool
    # (True = may attend, for SDPA) or additive floats (0 = may attend, very negative = not, eager).
    if mask is None:
        return torch.ones(1, 1, length, length, dtype=torch.bool, device=device)
    if mask.dtype != torch.bool:
        mask = mask == 0
    if mask.dim() != 4:
        raise ValueError(f"expected a 4-D attention mask (B, 1, T, T), got shape {tuple(mask.shape)}")
    return mask.expand(mask.shape[0], mask.shape[1], length, length)


def apply_prefix_tuning(model: nn.Module, n_prefix: int = 10, heads: Sequence[str] = HEAD_NAMES) -> nn.Module:
    """Freeze ``model`` and give every BERT self-attention ``n_prefix`` trainable keys and values.

    Modifies ``model`` in place (and returns it); only the prefixes and the head train.
    """
    freeze_except(model, lambda name: _is_head(name, heads))
    targets = [(name, module) for name, module in model.named_modules()
               if all(hasattr(module, a) for a in ("query", "key", "value", "num_attention_heads"))]
    if not targets:
        raise ValueError("no BERT-style self-attention (with query, key, value) found in the model")
    for name, module in targets:
        _replace(model, name, PrefixSelfAttention(module, n_prefix))
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


# ---------------------------------------------------------------------------------------------
# LoRA


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B A dropout(x)``: a frozen ``nn.Linear`` plus a trainable rank-r update.

    ``A`` (r, in) starts random and ``B`` (out, r) at zero, so the wrapped layer starts out
    computing exactly what ``base`` does. ``merge()`` adds ``(alpha / r) B A`` into the base
    weight (no extra cost at inference); ``unmerge()`` takes it out again.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if r < 1:
            raise ValueError(f"the rank r must be at least 1, got {r}")
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / r
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight (and PEFT, A)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> Tensor:
        """The update ``(alpha / r) B A``, shaped like the base weight (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)  # (..., out)
        if self.merged:
            return out
        update = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T  # (..., r) then (..., out)
        return out + (update * self.scaling).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight; the layer then costs what a plain ``nn.Linear`` does."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (to train on, or to recover the base model)."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(model: nn.Module, targets: Sequence[str] = ("query", "value"), r: int = 8, alpha: float = 16,
               dropout: float = 0.0, heads: Sequence[str] = HEAD_NAMES) -> nn.Module:
    """Wrap every ``nn.Linear`` whose name ends with one of ``targets`` in a ``LoRALinear``.

    Freezes the rest of ``model`` except the classification head (``heads``), in place, and
    returns it. PEFT's ``LoraConfig(target_modules=targets, r=r, lora_alpha=alpha)`` does the same.
    """
    freeze_except(model, lambda name: _is_head(name, heads))
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets and not _is_head(name + ".x", heads)]
    if not chosen:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear named {list(targets)} in the model; its linear layers are called {linear}")
    for name, module in chosen:
        _replace(model, name, LoRALinear(module, r, alpha, dropout))
    return model


def _lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [module for module in model.modules() if isinstance(module, LoRALinear)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA update into its base weight (for inference)."""
    for layer in _lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo ``merge_lora``."""
    for layer in _lora_layers(model):
        layer.unmerge()
    return model


#: The strategies by name: each takes a classifier and returns it ready to train (in place for all but
#: prompt tuning, which wraps it).
STRATEGIES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "full": full_finetuning,
    "head only": head_only,
    "FFN only": ffn_only,
    "prompt tuning": lambda model: PromptTuning(model, n_tokens=10),
    "prefix tuning": lambda model: apply_prefix_tuning(model, n_prefix=10),
    "LoRA": lambda model: apply_lora(model, ("query", "value"), r=8, alpha=16),
}

#: A peak learning rate for each strategy, for AdamW with warm-up and cosine decay. Fewer trainable
#: weights starting from scratch (a head, prompts, prefixes, LoRA's B) take larger steps than
#: pretrained weights, which a large step would wreck.
LEARNING_RATES: dict[str, float] = {
    "full": 5e-5,
    "head only": 3e-3,
    "FFN only": 1e-4,
    "prompt tuning": 3e-2,
    "prefix tuning": 1e-2,
    "LoRA": 1e-3,
}


# ---------------------------------------------------------------------------------------------
# Memory


def training_memory(model: nn.Module, batch: Batch, loss_fn: Callable[[nn.Module, Batch], Tensor] | None = None) -> dict[str, int]:
    """Bytes that one AdamW training step of ``model`` on ``batch`` holds at its peak, by kind.

    ``weights``: every parameter; ``gradients``: one per trainable parameter; ``optimizer``:
    AdamW's two moments per trainable parameter; ``activations``: the tensors autograd saves
    during the forward pass for the backward pass (counted once per storage). Frozen layers
    need no gradients or optimizer state, but activations must still be kept wherever a
    gradient has to flow back through them.
    """
    loss_fn = loss_fn or classification_loss()
    saved: dict[tuple[int, str], int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        saved[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
        return tensor

    device = next(model.parameters()).device
    batch = {name: value.to(device) for name, value in batch.items()}
    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn(model, batch)
    params = {id(p): p for p in model.parameters()}.values()
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    del loss
    model.train(was_training)
    trainable_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": trainable_bytes,
        "optimizer": 2 * trainable_bytes,
        "activations": sum(size for (ptr, _), size in saved.items() if ptr not in param_storages),
    }


# ---------------------------------------------------------------------------------------------
# One strategy, measured


@dataclass
class StrategyRun:
    """What one strategy did: the figures of the comparison table, and its training history."""

    strategy: str
    trainable: int
    total: int
    accuracy: float  # on the test batches
    macro_f1: float
    seconds_per_epoch: float  # training time only (evaluations left out)
    memory_mb: float  # training_memory's total, for one batch
    cuda_peak_mb: float | None  # measured by PyTorch's CUDA allocator (None on other devices)
    history: History
    model: nn.Module  # the trained model, in eval mode

    def row(self) -> dict[str, Any]:
        """The table row: strategy, trainable parameters (and their share), scores, time and memory."""
        return {
            "strategy": self.strategy,
            "trainable": self.trainable,
            "trainable %": 100 * self.trainable / self.total,
            "accuracy": self.accuracy,
            "macro-F1": self.macro_f1,
            "s / epoch": self.seconds_per_epoch,
            "memory MB": self.memory_mb,
        }


def run_strategy(
    strategy: str,
    make_classifier: Callable[[], nn.Module],
    train_encoded: Batch,
    val_batches: Sequence[Batch],
    test_batches: Sequence[Batch],
    config: TrainConfig,
    batch_size: int = 16,
    weights: Tensor | None = None,
    seed: int = 0,
) -> StrategyRun:
    """Build a fresh classifier, apply ``STRATEGIES[strategy]``, train it with ``train`` and score it.

    ``config`` sets the budget (``max_steps``; an epoch is ``len(train_encoded) / batch_size``
    steps) and the learning rate; validation accuracy is recorded at every evaluation.
    """
    if strategy not in STRATEGIES:
        raise KeyError(f"unknown strategy {strategy!r}; choose from {list(STRATEGIES)}")
    seed_everything(seed)
    model = STRATEGIES[strategy](make_classifier())
    device = pick_device(config.device)
    model.to(device)
    loss_fn = classification_loss(weights)
    trainable, total = count_parameters(model)
    first = next(classification_batches(train_encoded, batch_size))
    memory = sum(training_memory(model, first, loss_fn).values()) / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = classification_batches(train_encoded, batch_size, shuffle=True, seed=seed, endless=True)
    history = train(model, loss_fn, batches, val_batches, config, metrics_fn=metrics_fn(val_batches))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    scores = classification_metrics(*predict(model, test_batches))
    steps_per_epoch = math.ceil(len(train_encoded["labels"]) / batch_size)
    per_step = history.training_seconds() / max(1, len(history.step))
    return StrategyRun(strategy, trainable, total, scores["accuracy"], scores["macro_f1"], per_step * steps_per_epoch,
                       memory, peak, history, model.eval())


def markdown_table(rows: dict[str, dict[str, Any]], formats: dict[str, str] | None = None, index: str = "") -> str:
    """A Markdown table of named rows (``{row: {column: value}}``), for notebooks (``IPython.display.Markdown``).

    ``formats`` maps a column to a format spec (``"{:.3f}"``); a missing value leaves its cell empty.
    """
    formats = formats or {}
    columns = list(dict.fromkeys(column for row in rows.values() for column in row))

    def cell(column: str, value: Any) -> str:
        if value is None:
            return ""
        return formats.get(column, "{}").format(value)

    lines = ["| " + " | ".join([index, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        lines.append("| " + " | ".join([name, *(cell(c, row.get(c)) for c in columns)]) + " |")
    return "\n".join(lines)
