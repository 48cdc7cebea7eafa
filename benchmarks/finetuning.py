"""LoRA against full fine-tuning of MiniLM on chapter 4's genre task, same budget, same batches."""

from __future__ import annotations

import random

from llmcourse import classifier, models, strategies, tasks
from llmcourse.training import TrainConfig

STEPS, BATCH, LENGTH, TEST_PASSAGES = 150, 16, 64, 512


def lora_vs_full(repeats: int) -> dict[str, float]:
    """LoRA's (r 8 on query and value) trainable share, and its test accuracy over full fine-tuning's.

    Each strategy trains for ``STEPS`` steps of ``BATCH`` passages of up to ``LENGTH`` tokens at
    its own learning rate (``strategies.LEARNING_RATES``) and is scored on ``TEST_PASSAGES``
    passages of plays neither saw. ``repeats`` is unused: one run of each costs minutes.
    """
    task = tasks.genre_task(words=64)
    tokenizer = models.load_minilm_tokenizer()
    sample = random.Random(0).sample(task.test, min(TEST_PASSAGES, len(task.test)))
    train_encoded = classifier.encode(tokenizer, task.train, max_length=LENGTH)
    val_batches = list(classifier.classification_batches(
        classifier.encode(tokenizer, random.Random(1).sample(task.validation, 128), LENGTH), batch_size=64))
    test_batches = list(classifier.classification_batches(classifier.encode(tokenizer, sample, LENGTH), batch_size=64))
    weights = tasks.class_weights([e.label for e in task.train], len(task.classes))
    runs = {}
    for strategy in ("full", "LoRA"):
        config = TrainConfig(max_steps=STEPS, eval_every=STEPS, warmup_steps=STEPS // 10,
                             learning_rate=strategies.LEARNING_RATES[strategy], progress=False)
        runs[strategy] = strategies.run_strategy(
            strategy, lambda: classifier.EncoderClassifier(models.load_minilm(), num_labels=len(task.classes)),
            train_encoded, val_batches, test_batches, config, batch_size=BATCH, weights=weights)
    lora, full = runs["LoRA"], runs["full"]
    return {"lora_trainable_fraction": lora.trainable / lora.total, "lora_accuracy_vs_full": lora.accuracy / full.accuracy,
            "lora_accuracy": lora.accuracy, "full_accuracy": full.accuracy,
            "lora_seconds_per_epoch_vs_full": lora.seconds_per_epoch / full.seconds_per_epoch}


lora_vs_full.keys = ("lora_trainable_fraction", "lora_accuracy_vs_full")  # type: ignore[attr-defined]
