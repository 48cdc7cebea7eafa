"""llmcourse.dialogue and `llmcourse chat`: history kept, old turns dropped to fit, replies streamed."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from llmcourse import chat, generation
from llmcourse.dialogue import Chat
from llmcourse.llama import LlamaConfig, LlamaDecoder
from llmcourse.models import load_smollm2_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tokenizer():
    return load_smollm2_tokenizer()


@pytest.fixture(scope="module")
def tiny() -> LlamaDecoder:
    """A random decoder over SmolLM2's vocabulary: it writes nonsense, which is all these tests need."""
    torch.manual_seed(0)
    config = LlamaConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, d_ff=64, block_size=512,
                         tie_embeddings=False)  # tied random embeddings would repeat the last token
    return LlamaDecoder(config).eval()


def test_a_reply_is_the_greedy_continuation_of_the_rendered_conversation(tiny, tokenizer):
    conversation = Chat(tiny, tokenizer, max_new_tokens=12)
    pieces: list[str] = []
    reply = conversation.send("Who wrote Hamlet?", on_text=pieces.append)
    text = chat.render_chatml([{"role": "user", "content": "Who wrote Hamlet?"}], add_generation_prompt=True)
    prompt = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = generation.generate(tiny, prompt, 12, temperature=0, stop_token_id=end)[0, prompt.shape[1]:].tolist()
    expected = tokenizer.decode([token for token in ids if token != end])
    assert reply == expected.strip() and "".join(pieces) == expected
    assert len(pieces) > 1  # streamed as it came, not at the end
    assert conversation.history == [{"role": "user", "content": "Who wrote Hamlet?"},
                                    {"role": "assistant", "content": reply}]


def test_the_history_is_read_again_and_the_oldest_turns_go_first(tiny, tokenizer):
    conversation = Chat(tiny, tokenizer, max_context=140, max_new_tokens=8)
    first = conversation.send("Name a play by Shakespeare.")
    prompt = tokenizer.decode(conversation.prompt_ids())
    assert first in prompt and "Name a play" in prompt  # the second turn sees the first exchange
    for i in range(6):
        conversation.send(f"And another one, number {i}?")
    assert conversation.dropped >= 2 and conversation.dropped % 2 == 0
    assert len(conversation.prompt_ids()) <= 140 - 8
    assert conversation.history[0]["role"] == "user" and "Name a play" not in tokenizer.decode(conversation.prompt_ids())
    assert tokenizer.decode(conversation.prompt_ids()).startswith("<|im_start|>system\n" + chat.SMOLLM2_SYSTEM_PROMPT)
    before = list(conversation.history)
    with pytest.raises(ValueError, match="shorten it or raise max_context"):
        conversation.send("word " * 200)
    assert conversation.history == before  # nothing half-added
    conversation.reset()
    assert conversation.history == [] and conversation.dropped == 0


def test_sampling_is_seeded(tiny, tokenizer):
    replies = [Chat(tiny, tokenizer, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=seed).send("Hello")
               for seed in (1, 1, 2)]
    assert replies[0] == replies[1] != replies[2]
    with pytest.raises(ValueError, match="max_new_tokens < max_context"):
        Chat(tiny, tokenizer, max_context=10, max_new_tokens=10)


def test_the_chat_command_answers_on_the_terminal(monkeypatch, capsys):
    from llmcourse import cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n/reset\n\n/quit\nnever read\n"))
    assert cli.main(["chat", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "(a new conversation)" in out
