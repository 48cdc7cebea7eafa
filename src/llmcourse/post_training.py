"""The course's post-training runs on SmolLM2-135M-Instruct: what it is taught, and how each run is made.

Two runs, both with LoRA on the attention's query and value projections, each cached as a course
model (``models.load_course_model``) holding only its adapter:

- ``smollm2-sft-word-order`` (instruction tuning, ``llmcourse.sft``): is a line of Shakespeare in
  its original word order, or are its words shuffled? The lines of chapter 4's word-order task
  (held-out plays for the test). Zero-shot, SmolLM2 answers at chance: the knowledge is in the
  model (a shuffled line is far less likely under it), the habit of answering is not.
- ``smollm2-sft-prompt-in-loss``: the same run with the loss on every token, prompt included.
- ``smollm2-dpo-next-line`` (preference tuning, ``llmcourse.dpo``): given a line, which line
  follows it? The chosen answer is the line that really comes next in the same speech; the
  rejected one is a line from another play.

Budgets come from the device (``BUDGETS``): a few minutes on a CPU, more steps and longer runs in
bfloat16 on CUDA; the budget used is kept in the model's ``info``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from llmcourse import data, tasks
from llmcourse.chat import chat_tokens
from llmcourse.dpo import PreferencePair, dpo_batches, dpo_objective, pair_batch, preference_metrics
from llmcourse.llama import LlamaDecoder
from llmcourse.corpora import held_out_split
from llmcourse.models import CourseModel, load_smollm2
from llmcourse.sft import LLAMA_ATTENTION, add_lora, choose_answers, pad_batch, sft_batches, sft_loss

__all__ = [
    "WORD_ORDER_SYSTEM", "NEXT_LINE_SYSTEM", "BUDGETS", "smollm2_decoder", "word_order_task", "word_order_messages",
    "word_order_accuracy", "next_line_pairs", "build_sft_word_order", "build_dpo_next_line", "save_adapter",
    "load_adapter",
]

WORD_ORDER_SYSTEM = "Answer with one word."
_WORD_ORDER_QUESTION = ("Is this line of Shakespeare in its original word order, or have its words been shuffled? "
                        "Answer 'original' or 'shuffled'.\n\n{line}")
NEXT_LINE_SYSTEM = "You continue passages of Shakespeare's plays."
_NEXT_LINE_QUESTION = "Write the line that follows this one:\n\n{line}"

#: Training budgets by device type. ``lora`` is (rank, alpha) on the query and value projections.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "sft": {
        "cpu": {"steps": 60, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 10, "eval_every": 20},
        "cuda": {"steps": 500, "batch_size": 16, "learning_rate": 5e-4, "warmup_steps": 25, "eval_every": 50},
    },
    "dpo": {
        "cpu": {"steps": 40, "batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 5, "eval_every": 20, "beta": 0.1},
        "cuda": {"steps": 400, "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 20, "eval_every": 50,
                 "beta": 0.1},
    },
}
_LORA = {"targets": list(LLAMA_ATTENTION), "r": 8, "alpha": 16}


def smollm2_decoder(progress: bool = True) -> tuple[LlamaDecoder, Any]:
    """SmolLM2-135M-Instruct in the course's own ``LlamaDecoder`` (float32, eval mode), and its tokenizer."""
    hf_model, tokenizer = load_smollm2(progress=progress)
    decoder = LlamaDecoder.from_transformers(hf_model)
    del hf_model
    return decoder, tokenizer


def word_order_task() -> tasks.Task:
    """The lines of chapter 4's word-order task (the same call, so the same train, validation and test lines)."""
    return tasks.word_order_task(n_train=8000, n_validation=128, n_test=500, seed=0)


def word_order_messages(example: tasks.Example, answer: str | None = None) -> list[dict[str, str]]:
    """The conversation that asks about ``example`` (and answers it, when ``answer`` is given)."""
    messages = [{"role": "user", "content": _WORD_ORDER_QUESTION.format(line=example.text)}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def word_order_accuracy(model: torch.nn.Module, tokenizer: Any, examples: Sequence[tasks.Example],
                        classes: Sequence[str] = ("original", "shuffled")) -> tuple[float, list[int]]:
    """Accuracy of the more likely answer (``sft.choose_answers``), and the predictions."""
    predictions = choose_answers(model, tokenizer, [word_order_messages(e) for e in examples], classes,
                                 WORD_ORDER_SYSTEM)
    return sum(p == e.label for p, e in zip(predictions, examples)) / len(examples), predictions


def next_line_pairs(plays: Sequence[data.Play], n: int, seed: int = 0, min_words: int = 5) -> list[PreferencePair]:
    """``n`` preference pairs: a line; the line after it in the same speech (chosen); a line of another play
    with as many words (rejected), so that length alone gives nothing away."""
    rng = random.Random(seed)
    consecutive: list[tuple[str, str, str]] = []
    by_words: dict[int, list[tuple[str, str]]] = {}
    for play in plays:
        for speech in data.speeches(play):
            for line in speech.lines:
                if len(line.split()) >= min_words:
                    by_words.setdefault(len(line.split()), []).append((line, play.slug))
            consecutive += [(a, b, play.slug) for a, b in zip(speech.lines, speech.lines[1:])
                            if len(a.split()) >= min_words and len(b.split()) >= min_words]
    plays_of_length = {words: {slug for _, slug in lines} for words, lines in by_words.items()}
    rng.shuffle(consecutive)
    pairs = []
    for line, following, slug in consecutive:
        same_length = by_words[len(following.split())]
        if plays_of_length[len(following.split())] == {slug}:
            continue
        rejected, other = rng.choice(same_length)
        while other == slug:  # most lines of that length come from other plays: a few draws at most
            rejected, other = rng.choice(same_length)
        pairs.append(PreferencePair([{"role": "user", "content": _NEXT_LINE_QUESTION.format(line=line)}],
                                    following, rejected))
        if len(pairs) == n:
            break
    if len(pairs) < n:
        raise ValueError(f"these plays give only {len(pairs)} pairs, not {n}; the rejected line needs a second play")
    return pairs


def _budget(kind: str) -> tuple[str, dict[str, Any]]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, BUDGETS[kind][device]


def _config(budget: dict[str, Any], device: str, progress: bool) -> Any:
    from llmcourse.training import TrainConfig

    return TrainConfig(max_steps=budget["steps"], learning_rate=budget["learning_rate"],
                       warmup_steps=budget["warmup_steps"], eval_every=budget["eval_every"], weight_decay=0.0,
                       device=device, progress=progress)


def build_sft_word_order(progress: bool = True, train_on_prompt: bool = False) -> CourseModel:
    """Instruction-tune SmolLM2 on the word-order conversations: the loss on the assistant's tokens only,
    or (``train_on_prompt``, the mistake chapter 4 demonstrates) on every token."""
    from llmcourse.device import seed_everything
    from llmcourse.training import train

    seed_everything(0)
    device, budget = _budget("sft")
    model, tokenizer = smollm2_decoder(progress)
    add_lora(model, **_LORA)
    task = word_order_task()
    classes = task.classes

    def tokens(examples: Sequence[tasks.Example]) -> list[Any]:
        return [chat_tokens(tokenizer, word_order_messages(e, classes[e.label]), WORD_ORDER_SYSTEM, train_on_prompt)
                for e in examples]

    validation = tokens(task.validation[:32])
    val_batches = [pad_batch(validation[i:i + 16], tokenizer.pad_token_id) for i in range(0, len(validation), 16)]
    history = train(model, sft_loss, sft_batches(tokens(task.train), budget["batch_size"], tokenizer.pad_token_id),
                    val_batches, _config(budget, device, progress))
    info = {"device": device, "budget": budget, "lora": _LORA, "examples_seen": budget["steps"] * budget["batch_size"],
            "train_on_prompt": train_on_prompt, "val_loss": history.val_loss[-1]}
    return CourseModel(model.cpu().eval(), tokenizer, history, info)


def build_dpo_next_line(progress: bool = True) -> CourseModel:
    """Preference-tune SmolLM2 with DPO on next-line pairs of the training plays."""
    from llmcourse.device import seed_everything
    from llmcourse.training import train

    seed_everything(0)
    device, budget = _budget("dpo")
    model, tokenizer = smollm2_decoder(progress)
    add_lora(model, **_LORA)
    split = held_out_split()
    train_pairs = next_line_pairs(split.train, 4000, seed=0)
    val_pairs = next_line_pairs(split.train, 16, seed=1)  # a check on training plays; the book tests on held-out ones
    pad = tokenizer.pad_token_id
    val_batches = [pair_batch(val_pairs[i:i + 8], tokenizer, pad, NEXT_LINE_SYSTEM) for i in range(0, 16, 8)]
    beta = budget["beta"]
    history = train(model, dpo_objective(beta), dpo_batches(train_pairs, tokenizer, budget["batch_size"], pad, 0,
                                                            NEXT_LINE_SYSTEM),
                    val_batches, _config(budget, device, progress))
    model = model.cpu().eval()
    info = {"device": device, "budget": budget, "lora": _LORA, "pairs_seen": budget["steps"] * budget["batch_size"],
            "val_loss": history.val_loss[-1], "val": preference_metrics(model, val_batches, beta)._asdict()}
    return CourseModel(model, tokenizer, history, info)


def save_adapter(result: CourseModel, folder: Path) -> dict[str, Any]:
    """Write only the LoRA matrices (``adapter.safetensors``): the base model is SmolLM2, cached on its own."""
    from safetensors.torch import save_file

    state = {name: tensor.contiguous() for name, tensor in result.model.state_dict().items() if ".lora_" in name}
    save_file(state, str(folder / "adapter.safetensors"))
    return {}


def load_adapter(folder: Path, saved: Mapping[str, Any]) -> CourseModel:
    """SmolLM2 in ``LlamaDecoder`` with the LoRA matrices saved in ``folder``."""
    from safetensors.torch import load_file

    from llmcourse.training import History

    model, tokenizer = smollm2_decoder(progress=False)
    lora = saved["info"]["lora"]
    add_lora(model, lora["targets"], lora["r"], lora["alpha"])
    state = load_file(str(folder / "adapter.safetensors"))
    result = model.load_state_dict(state, strict=False)
    expected = {name for name, _ in model.named_parameters() if ".lora_" in name}
    if result.unexpected_keys or expected - set(state):
        raise RuntimeError(f"{folder} does not hold this adapter's LoRA matrices; delete the folder to retrain it")
    return CourseModel(model.eval(), tokenizer, History(**saved["history"]), dict(saved["info"]))
