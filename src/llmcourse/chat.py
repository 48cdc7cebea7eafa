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
tokenizer's own Jinja template (``tokenizer.apply_chat_template``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["SMOLLM2_SYSTEM_PROMPT", "END_OF_TURN", "render_chatml"]

#: The system turn SmolLM2's template adds when a conversation has none.
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
END_OF_TURN = "<|im_end|>"
ROLES = ("system", "user", "assistant")


def render_chatml(
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = False,
    default_system: str | None = SMOLLM2_SYSTEM_PROMPT,
) -> str:
    """The ChatML text of ``messages`` (dicts with ``role`` and ``content``), as SmolLM2 was trained on.

    ``default_system`` is put first when the first message is not a system turn (None: nothing added).
    """
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} must be a dict with a role in {ROLES} and a string content, got {message!r}")
    turns = list(messages)
    if default_system is not None and turns and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": default_system})
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}{END_OF_TURN}\n" for m in turns)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
