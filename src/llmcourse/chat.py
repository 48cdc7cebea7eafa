"""Chat templates: how a conversation becomes the one string an instruction-tuned model reads.

A chat model was fine-tuned on conversations written in a fixed format, and answers well only
when asked in that format. SmolLM2 uses **ChatML**: every turn is

    <|im_start|>{role}
    {content}<|im_end|>

for the roles ``system`` (how the assistant should behave), ``user`` and ``assistant``. A
conversation that has no system turn gets the model's default one, and ``add_generation_prompt``
ends the text with an open assistant turn, ``<|im_start|>assistant\\n``, so that what the model
writes next is its answer; it ends that answer with ``<|im_end|>``, the token to stop at.

``render_chatml`` writes this out in plain Python; ``tests/test_llama.py`` checks it against the
tokenizer's own Jinja template (``tokenizer.apply_chat_template``). ``chat_tokens`` tokenizes a
conversation and marks which tokens an instruction-tuned model is trained to produce: the
assistant's turns, each with its end-of-turn token (``llmcourse.sft`` trains on them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from llmcourse.objectives import IGNORE_INDEX

__all__ = ["SMOLLM2_SYSTEM_PROMPT", "END_OF_TURN", "render_chatml", "ChatTokens", "chat_tokens"]

#: The system turn SmolLM2's template adds when a conversation has none.
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
END_OF_TURN = "<|im_end|>"
ROLES = ("system", "user", "assistant")


def _check(messages: Sequence[Mapping[str, str]]) -> None:
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} must be a dict with a role in {ROLES} and a string content, got {message!r}")


def _with_system(messages: Sequence[Mapping[str, str]], default_system: str | None) -> list[Mapping[str, str]]:
    turns = list(messages)
    if default_system is not None and turns and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": default_system})
    return turns


def render_chatml(
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = False,
    default_system: str | None = SMOLLM2_SYSTEM_PROMPT,
) -> str:
    """The ChatML text of ``messages`` (dicts with ``role`` and ``content``), as SmolLM2 was trained on.

    ``default_system`` is put first when the first message is not a system turn (None: nothing added).
    """
    _check(messages)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}{END_OF_TURN}\n" for m in _with_system(messages, default_system))
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class ChatTokens(NamedTuple):
    """A tokenized conversation: ``input_ids`` and, aligned with them, ``labels`` (-100 where nothing is learned)."""

    input_ids: list[int]
    labels: list[int]


def chat_tokens(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    default_system: str | None = SMOLLM2_SYSTEM_PROMPT,
    train_on_prompt: bool = False,
) -> ChatTokens:
    """Token ids of ``render_chatml(messages)``, with labels on the assistant's turns only.

    An assistant turn is ``<|im_start|>assistant\\n`` (a header, not learned: the prompt writes it)
    then ``content<|im_end|>\\n``, which is learned, end-of-turn token included: that is how the
    model learns to stop. Everything else (system and user turns) gets the label -100, unless
    ``train_on_prompt`` (the mistake the book demonstrates: the model then also learns to write
    questions). Each piece is tokenized on its own; the special tokens at every turn boundary make
    that the same as tokenizing the whole text (``tests/test_sft.py`` checks it).
    """
    _check(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant turn: there is nothing to learn from it")
    input_ids: list[int] = []
    labels: list[int] = []

    def add(text: str, learned: bool) -> None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if learned or train_on_prompt else [IGNORE_INDEX] * len(ids))

    for message in _with_system(messages, default_system):
        if message["role"] == "assistant":
            add("<|im_start|>assistant\n", learned=False)
            add(f"{message['content']}{END_OF_TURN}\n", learned=True)
        else:
            add(f"<|im_start|>{message['role']}\n{message['content']}{END_OF_TURN}\n", learned=False)
    return ChatTokens(input_ids, labels)
