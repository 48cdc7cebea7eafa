"""Retrieval: embed passages with MiniLM, find the nearest ones to a question, answer from their location.

Sentence embeddings as sentence-transformers' ``all-MiniLM-L6-v2`` makes them: run MiniLM over
the text (truncated to 256 WordPiece tokens), average the last hidden states over the real
tokens (**mean pooling**: padding positions are left out by the attention mask), and scale the
average to length 1. Two unit vectors' dot product is their **cosine similarity**, so a search
is one matrix product and a top-k. ``tests/test_retrieval.py`` checks the embeddings against
sentence-transformers itself.

The documents are Shakespeare's speeches, each with where it is said (play, act, scene with its
setting) and by whom, so a question such as "who says ...?" or "where does ... happen?" is
answered by the location of the best-matching speech: extractive question answering by
retrieval, graded with accuracy@k (is a right answer among the k best hits?).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from llmcourse import data

__all__ = [
    "Document",
    "speech_documents",
    "mean_pool",
    "embed",
    "Hit",
    "Index",
    "cosine_top_k",
    "accuracy_at_k",
]

#: all-MiniLM-L6-v2 was trained on, and truncates at, 256 tokens (sentence_bert_config.json).
MAX_TOKENS = 256


@dataclass(frozen=True)
class Document:
    """A piece of one speech, with its location and speaker."""

    text: str
    play: str  # slug, e.g. "hamlet"
    act: str  # e.g. "ACT III"
    scene: str  # e.g. "SCENE I. A room in the castle."
    speaker: str  # e.g. "HAMLET"

    @property
    def place(self) -> tuple[str, str, str]:
        """(play, act, scene number): what a "where" question is graded on."""
        return self.play, self.act, self.scene.split(".")[0]

    def citation(self) -> str:
        """A readable answer: speaker, play title, act and scene with its setting."""
        return f"{self.speaker}, in {data.get_play(self.play).title}, {self.act}, {self.scene}"


def speech_documents(
    selection: Sequence[data.Play | str] | None = None, max_words: int = 80, min_words: int = 1
) -> list[Document]:
    """Every speech of the chosen plays (all by default) as documents of at most ``max_words`` words.

    A longer speech is cut at line ends into pieces of about ``max_words`` words (a line longer
    than that is a piece of its own), so one embedding never averages away a whole soliloquy.
    Speeches shorter than ``min_words`` words are left out.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    chosen = data.plays() if selection is None else [data.get_play(p) if isinstance(p, str) else p for p in selection]
    documents: list[Document] = []
    for play in chosen:
        last_act = ""
        for speech in data.speeches(play):
            act, scene = speech.act, speech.scene
            if act.startswith("SCENE"):  # a scene heading written at act level (Macbeth I.1): repair it
                act, scene = last_act or "ACT I", scene or act
            last_act = act
            if len(speech.text.split()) < min_words:
                continue
            piece: list[str] = []
            words = 0
            for line in speech.lines:
                n = len(line.split())
                if piece and words + n > max_words:
                    documents.append(Document("\n".join(piece), play.slug, act, scene, speech.speaker))
                    piece, words = [], 0
                piece.append(line)
                words += n
            if piece:
                documents.append(Document("\n".join(piece), play.slug, act, scene, speech.speaker))
    return documents


def mean_pool(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Average (B, T, d) hidden states over the positions where the (B, T) mask is 1; -> (B, d).

    MiniLM was trained to embed sentences this way; with no mask every position counts.
    """
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@functools.lru_cache(maxsize=1)
def _minilm() -> tuple[Any, Any]:
    from llmcourse.models import load_minilm, load_minilm_tokenizer

    return load_minilm().eval(), load_minilm_tokenizer()


@torch.no_grad()  # not inference_mode: the same model may later need gradients (e.g. to attack a classifier)
def embed(
    texts: Sequence[str],
    model: Any = None,
    tokenizer: Any = None,
    batch_size: int = 64,
    max_length: int = MAX_TOKENS,
    normalize: bool = True,
) -> Tensor:
    """(N, d) sentence embeddings of ``texts``: MiniLM (the default), mean pooling, unit length.

    Texts are batched by length (shortest first), so little time goes into padding; the rows come
    back in the order of ``texts``.
    """
    if isinstance(texts, str):
        raise TypeError("embed takes a list of texts; wrap a single one: embed([text])")
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (MiniLM then)")
    if model is None:
        model, tokenizer = _minilm()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    rows: list[Tensor] = []
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**encoded).last_hidden_state  # (B, T, d)
        rows.append(mean_pool(hidden, encoded["attention_mask"]).float())
    hidden_size = model.config.hidden_size
    pooled = torch.cat(rows) if rows else torch.empty(0, hidden_size)
    result = torch.empty_like(pooled)
    result[torch.tensor(order, dtype=torch.long)] = pooled  # undo the sort by length
    return F.normalize(result, dim=-1) if normalize else result


def cosine_top_k(queries: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` keys most cosine-similar to each query: (Q, d) x (N, d) -> scores and indices (Q, k), best first."""
    if queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"need (Q, d) queries and (N, d) keys of the same width, got {tuple(queries.shape)}, {tuple(keys.shape)}")
    similarities = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T  # (Q, N)
    return similarities.topk(min(k, keys.shape[0]), dim=-1)


class Hit(NamedTuple):
    """One search result."""

    score: float  # cosine similarity to the query
    document: Document
    position: int  # index in the Index's documents


class Index:
    """Documents and their unit-length embeddings; ``search`` returns the nearest ones by cosine similarity."""

    def __init__(self, documents: Sequence[Document], embeddings: Tensor) -> None:
        if len(documents) != embeddings.shape[0]:
            raise ValueError(f"{len(documents)} documents but {embeddings.shape[0]} embeddings")
        self.documents = list(documents)
        self.embeddings = F.normalize(embeddings.float(), dim=-1)  # (N, d)

    @classmethod
    def build(cls, documents: Sequence[Document], model: Any = None, tokenizer: Any = None, batch_size: int = 64) -> Index:
        """Embed the documents' texts (MiniLM by default) and index them."""
        return cls(documents, embed([d.text for d in documents], model, tokenizer, batch_size))

    def __len__(self) -> int:
        return len(self.documents)

    def search(self, queries: Sequence[str] | Tensor, k: int = 5, model: Any = None, tokenizer: Any = None) -> list[list[Hit]]:
        """The ``k`` best documents for each query (texts, embedded like the documents, or (Q, d) embeddings)."""
        query_embeddings = queries if isinstance(queries, Tensor) else embed(queries, model, tokenizer)
        scores, indices = cosine_top_k(query_embeddings.float(), self.embeddings, k)
        return [
            [Hit(score, self.documents[i], i) for score, i in zip(row_scores.tolist(), row_indices.tolist())]
            for row_scores, row_indices in zip(scores, indices)
        ]


def accuracy_at_k(ranked: Sequence[Sequence[Hashable]], gold: Sequence[Hashable | set[Any]], k: int) -> float:
    """Share of queries with a right answer among their first ``k`` ranked answers.

    ``ranked[i]`` lists query i's answers best first (e.g. the speaker of each hit); ``gold[i]``
    is its right answer, or a set of acceptable ones.
    """
    if len(ranked) != len(gold):
        raise ValueError(f"{len(ranked)} ranked lists but {len(gold)} gold answers")
    if not ranked:
        raise ValueError("no queries: accuracy@k is undefined")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    right = 0
    for answers, truth in zip(ranked, gold):
        accepted = truth if isinstance(truth, set) else {truth}
        right += any(answer in accepted for answer in list(answers)[:k])
    return right / len(ranked)
