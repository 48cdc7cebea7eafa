"""The course's own small pretrained models: what each one is, its recipe, and the function that trains it.

A recipe is a plain dict (model sizes, batch size, the ``TrainConfig`` settings that differ from the
defaults), so a chapter can print it and build the same model by hand: ``CHAR_GPT`` (chapter 3's
character GPT), ``BPE_GPT`` (the same on byte-pair tokens) and ``MLM_ENCODER`` (the BERT-style encoder).
Each ``train_*`` function trains from a fixed seed on the CPU with ``llmcourse.training.train`` and
returns a ``CourseModel``. Nobody calls them directly: ``llmcourse.models.load_course_model`` trains
a model the first time it is asked for and caches it. The SmolLM2 adapters' recipes are in
``llmcourse.post_training``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from llmcourse.corpora import TokenCorpus

__all__ = ["CourseModel", "CHAR_GPT", "BPE_GPT", "MLM_ENCODER", "train_gpt", "train_char_gpt", "train_bpe_gpt",
           "train_mlm_encoder", "mlm_and_nsp_accuracy"]


class CourseModel(NamedTuple):
    """A course model with what it needs: its tokenizer, its training history, and notes."""

    model: Any
    tokenizer: Any
    history: Any  # llmcourse.training.History
    info: dict[str, Any]


def train_gpt(corpus: TokenCorpus, recipe: dict[str, Any], progress: bool) -> CourseModel:
    from llmcourse.device import seed_everything
    from llmcourse.batches import lm_batches, lm_eval_batches
    from llmcourse.objectives import clm_loss
    from llmcourse.training import TrainConfig, train
    from llmcourse.transformer import GPT, GPTConfig

    seed_everything(0)
    model = GPT(GPTConfig(vocab_size=corpus.tokenizer.vocab_size, **recipe["model"]))
    batch_size, block_size = recipe["batch_size"], recipe["model"]["block_size"]
    history = train(
        model, clm_loss,
        lm_batches(corpus.train_ids, batch_size, block_size, seed=0),
        lm_eval_batches(corpus.val_ids, 32, block_size, recipe["eval_batches"]),
        TrainConfig(**recipe["training"], device="cpu", progress=progress),
    )
    info = {"val_plays": corpus.val_plays, "val_loss": history.val_loss[-1], "batch_size": batch_size}
    return CourseModel(model.eval(), corpus.tokenizer, history, info)


def train_char_gpt(progress: bool) -> CourseModel:
    from llmcourse.corpora import char_corpus

    return train_gpt(char_corpus(), CHAR_GPT, progress)


def train_bpe_gpt(progress: bool) -> CourseModel:
    from llmcourse.corpora import bpe_corpus

    return train_gpt(bpe_corpus(BPE_GPT["vocab_size"]), BPE_GPT, progress)


def mlm_and_nsp_accuracy(encoder: Any, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Held-out scores of a BERT-style encoder: top-1 accuracy on the masked words, and on next-sentence labels."""
    from llmcourse.objectives import IGNORE_INDEX

    hits = masked = right = pairs = 0
    for batch in batches:
        selected = batch["labels"] != IGNORE_INDEX
        mlm_logits, nsp_logits = encoder(batch["input_ids"], batch["attention_mask"], batch["segment_ids"],
                                         mlm_positions=selected)
        hits += int((mlm_logits.argmax(-1) == batch["labels"][selected]).sum())
        masked += int(selected.sum())
        right += int((nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum())
        pairs += len(nsp_logits)
    return {"mlm_top1": hits / masked, "nsp_accuracy": right / pairs}


def train_mlm_encoder(progress: bool) -> CourseModel:
    import torch

    from llmcourse.device import seed_everything
    from llmcourse.batches import pair_batches
    from llmcourse.objectives import IGNORE_INDEX, bert_loss
    from llmcourse.training import TrainConfig, train
    from llmcourse.corpora import pair_corpus
    from llmcourse.transformer import EncoderConfig, MLMEncoder

    corpus = pair_corpus(**MLM_ENCODER["corpus"])
    seed_everything(0)
    vocab_size = corpus.tokenizer.vocab_size
    model = MLMEncoder(EncoderConfig(vocab_size=vocab_size, **MLM_ENCODER["model"]))
    # Held-out pairs masked at BERT's 15%, whatever rate training uses, so the figures compare with BERT's.
    val_batches = list(pair_batches(corpus.val_examples[:1024], 128, corpus.special, vocab_size, seed=1, endless=False))

    with torch.no_grad():  # the masked words' frequencies in the training pairs: the baseline to beat
        counts = torch.zeros(vocab_size)
        for ids, _, _ in corpus.train_examples:
            counts += torch.bincount(torch.tensor(ids), minlength=vocab_size)
        counts[list(corpus.special)] = 0
        targets = torch.cat([b["labels"][b["labels"] != IGNORE_INDEX] for b in val_batches])
        frequency_top1 = float((targets == counts.argmax()).float().mean())
    history = train(
        model, bert_loss,
        pair_batches(corpus.train_examples, MLM_ENCODER["batch_size"], corpus.special, vocab_size, seed=0,
                     mask_prob=MLM_ENCODER["mask_prob"]),
        val_batches,
        TrainConfig(**MLM_ENCODER["training"], device="cpu", progress=progress),
        metrics_fn=functools.partial(mlm_and_nsp_accuracy, batches=val_batches),
    )
    info = {"val_plays": corpus.val_plays, "val_loss": history.val_loss[-1], "special": list(corpus.special),
            "frequency_top1": frequency_top1}
    return CourseModel(model.eval(), corpus.tokenizer, history, info)


#: Recipes: model sizes and training settings (the rest of ``TrainConfig`` keeps its defaults).
CHAR_GPT: dict[str, Any] = {
    "model": {"block_size": 128, "n_layers": 4, "n_heads": 4, "d_model": 128},
    "batch_size": 32,
    "eval_batches": 16,
    "training": {"max_steps": 800, "warmup_steps": 50, "learning_rate": 2e-3, "betas": (0.9, 0.99), "eval_every": 100},
}
BPE_GPT: dict[str, Any] = {
    "vocab_size": 768,  # 256 bytes + 512 merges
    "model": {"block_size": 64, "n_layers": 3, "n_heads": 4, "d_model": 96},
    "batch_size": 32,
    "eval_batches": 16,
    "training": {"max_steps": 600, "warmup_steps": 30, "learning_rate": 3e-3, "betas": (0.9, 0.99), "eval_every": 100},
}
MLM_ENCODER: dict[str, Any] = {
    "model": {"block_size": 48, "n_layers": 4, "n_heads": 4, "d_model": 128},
    # 40% of the words masked, not BERT's 15%: more predictions per step, which a short run needs to
    # leave the plateau where it only knows word frequencies (Wettig et al., 2023, "Should You Mask 15%?").
    "mask_prob": 0.4,
    "batch_size": 128,
    "corpus": {"n_train": None, "n_val": 4096, "min_count": 10},
    "training": {"max_steps": 800, "warmup_steps": 50, "learning_rate": 2e-3, "eval_every": 100},
}
