"""The course's post-training runs (``llmcourse.post_training``): their data, and their adapters cached as course models."""

from __future__ import annotations

import pytest
import torch

from llmcourse import data, models, post_training, tasks
from llmcourse.adapters import LoRALinear
from llmcourse.llama import LlamaDecoder
from tests.test_sft import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


def test_word_order_task_is_chapter_4s() -> None:
    ours = post_training.word_order_task()
    chapter_4 = tasks.word_order_task(n_train=8000, n_validation=128, n_test=500, seed=0)
    assert ours == chapter_4
    messages = post_training.word_order_messages(ours.test[0], "original")
    assert ours.test[0].text in messages[0]["content"] and messages[1] == {"role": "assistant", "content": "original"}


def test_next_line_pairs_take_the_real_next_line_and_a_line_of_another_play() -> None:
    plays = data.plays()[:3]
    pairs = post_training.next_line_pairs(plays, 40, seed=3)
    assert len(pairs) == 40 and pairs == post_training.next_line_pairs(plays, 40, seed=3)
    lines = {slug: [line for s in data.speeches(p) for line in s.lines] for slug, p in ((p.slug, p) for p in plays)}
    follows = {(a, b): slug for slug, p in ((p.slug, p) for p in plays) for s in data.speeches(p)
               for a, b in zip(s.lines, s.lines[1:])}
    for pair in pairs:
        line = pair.messages[0]["content"].split("\n\n", 1)[1]
        slug = follows[line, pair.chosen]  # chosen is the next line of the same speech
        assert pair.rejected not in lines[slug]  # rejected comes from another play...
        assert any(pair.rejected in other for s, other in lines.items() if s != slug)
        assert len(pair.rejected.split()) == len(pair.chosen.split())  # ... with as many words
    with pytest.raises(ValueError, match="second play"):
        post_training.next_line_pairs(data.plays()[:1], 10)


@pytest.fixture
def quick_post_training(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A private cache, a tiny random decoder in place of SmolLM2, and budgets of two steps."""
    tokenizer = models.load_smollm2_tokenizer()  # from the real cache, before it moves
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(post_training, "smollm2_decoder",
                        lambda progress=True: (LlamaDecoder.from_transformers(tiny_llama(len(tokenizer))), tokenizer))
    quick = {"steps": 2, "batch_size": 2, "learning_rate": 1e-2, "warmup_steps": 0, "eval_every": 2}
    monkeypatch.setitem(post_training.BUDGETS, "sft", {"cpu": quick, "cuda": quick})
    monkeypatch.setitem(post_training.BUDGETS, "dpo", {"cpu": {**quick, "beta": 0.1}, "cuda": {**quick, "beta": 0.1}})
    return tmp_path


@pytest.mark.parametrize("name", ["smollm2-sft-word-order", "smollm2-sft-prompt-in-loss", "smollm2-dpo-next-line"])
def test_adapters_are_trained_once_and_only_the_lora_matrices_are_cached(quick_post_training, name) -> None:
    first = models.load_course_model(name, progress=False)
    folder = quick_post_training / name
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "course_model.json"]
    second = models.load_course_model(name, progress=False)
    assert len(second.history.train_loss) == 2 and second.history.val_loss == first.history.val_loss
    assert second.info["budget"]["steps"] == 2 and second.info["device"] in ("cpu", "cuda")
    assert second.info.get("train_on_prompt", False) == (name == "smollm2-sft-prompt-in-loss")
    lora = [m for m in second.model.modules() if isinstance(m, LoRALinear)]
    assert len(lora) == 2 * 2 and all(m.lora_B.abs().sum() > 0 for m in lora)  # trained: B left zero
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(first.model(ids), second.model(ids))
    if name == "smollm2-dpo-next-line":
        assert set(second.info["val"]) == {"loss", "accuracy", "policy_accuracy", "reference_accuracy", "margin", "kl"}
