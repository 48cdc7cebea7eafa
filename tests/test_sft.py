"""Supervised fine-tuning (``llmcourse.sft``, ``chat.chat_tokens``): labels, padding, and the loss against TRL."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from llmcourse import chat, models, sft
from llmcourse.adapters import LoRALinear, lora_disabled
from llmcourse.freezing import count_parameters
from llmcourse.llama import LlamaDecoder
from llmcourse.objectives import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_thread")

CONVERSATIONS = [
    [{"role": "user", "content": "Who wrote Hamlet?"}, {"role": "assistant", "content": "William Shakespeare."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Is this shuffled?\n\nthe is king dead"},
     {"role": "assistant", "content": "shuffled"}],
    [{"role": "user", "content": "Name a play."}, {"role": "assistant", "content": "Macbeth"},
     {"role": "user", "content": "Another one, please."}, {"role": "assistant", "content": "The Tempest, a late romance."}],
]


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_smollm2_tokenizer()


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = HFLlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                           max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one turn", "own system", "two turns"])
def test_chat_tokens_are_the_template_tokens_with_labels_on_the_assistant_only(tokenizer, conversation) -> None:
    tokens = chat.chat_tokens(tokenizer, conversation)
    # Piece by piece, the same ids as the tokenizer's own template over the whole conversation.
    assert tokens.input_ids == tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    learned = [t for t, label in zip(tokens.input_ids, tokens.labels) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(tokens.input_ids, tokens.labels))
    answers = "".join(f"{m['content']}{chat.END_OF_TURN}\n" for m in conversation if m["role"] == "assistant")
    assert tokenizer.decode(learned) == answers  # every answer with its end-of-turn token, and nothing else
    everything = chat.chat_tokens(tokenizer, conversation, train_on_prompt=True)
    assert everything.labels == everything.input_ids


def test_chat_tokens_refuse_a_conversation_with_nothing_to_learn(tokenizer) -> None:
    with pytest.raises(ValueError, match="no assistant turn"):
        chat.chat_tokens(tokenizer, [{"role": "user", "content": "hello"}])


def test_right_padding_leaves_the_real_positions_unchanged() -> None:
    model = LlamaDecoder.from_transformers(tiny_llama(97))
    short = chat.ChatTokens([5, 6, 7], [IGNORE_INDEX, 6, 7])
    long = chat.ChatTokens([8, 9, 10, 11, 12, 13], [IGNORE_INDEX, IGNORE_INDEX, 10, 11, 12, 13])
    batch = sft.pad_batch([short, long], pad_id=0)
    assert batch["input_ids"].tolist()[0] == [5, 6, 7, 0, 0, 0]
    assert batch["labels"].tolist()[0] == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    with torch.no_grad():
        padded = model(batch["input_ids"])
        alone = model(torch.tensor([short.input_ids]))
    torch.testing.assert_close(padded[0, :3], alone[0])
    # The loss of the padded batch is the loss over the labelled tokens of both rows, nothing else.
    with torch.no_grad():
        loss = sft.sft_loss(model, batch)
        logprobs, counts = sft.sequence_logprobs(padded, batch["labels"])
    assert counts.tolist() == [2, 4]
    torch.testing.assert_close(loss, -logprobs.sum() / counts.sum())


def test_sft_loss_refuses_a_left_padded_batch() -> None:
    model = LlamaDecoder.from_transformers(tiny_llama(97))
    batch = {"input_ids": torch.tensor([[0, 5, 6]]), "labels": torch.tensor([[IGNORE_INDEX, 5, 6]]),
             "attention_mask": torch.tensor([[0, 1, 1]])}
    with pytest.raises(ValueError, match="pad on the right"):
        sft.sft_loss(model, batch)


def test_sequence_logprobs_sum_the_labelled_tokens_one_by_one() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 3, 9]])
    total, count = sft.sequence_logprobs(logits, labels)
    expected = [sum(torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]].item() for t in range(1, 5)
                    if labels[b, t] != IGNORE_INDEX) for b in range(2)]
    torch.testing.assert_close(total, torch.tensor(expected))
    assert count.tolist() == [2, 4]


def test_shuffled_batches_use_every_example_once_per_pass() -> None:
    batches = sft.shuffled_batches(list(range(10)), batch_size=3, seed=1)
    first_pass = [item for _ in range(3) for item in next(batches)]
    assert len(set(first_pass)) == 9  # 3 full batches; the tenth example waits for a later pass
    with pytest.raises(ValueError, match="cannot fill"):
        next(sft.shuffled_batches([1, 2], batch_size=3))


def test_add_lora_trains_only_the_chosen_projections() -> None:
    model = sft.add_lora(LlamaDecoder.from_transformers(tiny_llama(97)), r=4)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.self_attn.{proj}.lora_{m}" for i in range(2) for proj in ("q_proj", "v_proj")
                         for m in "AB"}
    with pytest.raises(ValueError, match="no nn.Linear named"):
        sft.add_lora(LlamaDecoder.from_transformers(tiny_llama(97)), targets=("query",))


def test_lora_disabled_gives_the_base_model_back() -> None:
    base = LlamaDecoder.from_transformers(tiny_llama(97))
    model = sft.add_lora(copy.deepcopy(base), r=4)
    for layer in model.modules():
        if isinstance(layer, LoRALinear):
            torch.nn.init.normal_(layer.lora_B)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        tuned = model(ids)
        with lora_disabled(model):
            torch.testing.assert_close(model(ids), base(ids))
        torch.testing.assert_close(model(ids), tuned)  # switched back on afterwards
    assert not torch.allclose(tuned, base(ids))
    with pytest.raises(ValueError, match="no LoRA layers"):
        with lora_disabled(base):
            pass


def peft_lora_into(ours: LlamaDecoder, peft_model: torch.nn.Module) -> None:
    """Copy PEFT's LoRA matrices into ``ours`` (same layers, same ranks)."""
    state = {}
    for name, tensor in peft_model.state_dict().items():
        if "lora_" in name:
            short = name.removeprefix("base_model.model.model.").replace(".default.weight", "")
            state[short] = tensor
    missing = ours.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys
    assert len(state) == sum(1 for name, _ in ours.named_parameters() if "lora_" in name)


def test_sft_loss_and_trainable_parameters_match_trl_sft_trainer(tokenizer, tmp_path) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    hf = tiny_llama(len(tokenizer), seed=3)
    ours = LlamaDecoder.from_transformers(hf)  # before TRL wraps hf in LoRA layers
    # Single-turn conversations: TRL's prompt-completion format learns the last turn only, while
    # chat_tokens learns every assistant turn (as TRL's assistant_only_loss does).
    conversations = [*CONVERSATIONS[:2], [{"role": "user", "content": "Say something."},
                                          {"role": "assistant", "content": "To be, or not to be."}]]
    rows = [{"prompt": c[:-1], "completion": c[-1:]} for c in conversations]
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=3, report_to=[], use_cpu=True,
                     max_length=None, dataloader_drop_last=False)
    trainer = SFTTrainer(model=hf, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=list(sft.LLAMA_ATTENTION)))
    peft_model = trainer.model.eval()
    with torch.no_grad():  # B starts at zero in both; make the update matter
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    sft.add_lora(ours, sft.LLAMA_ATTENTION, r=4, alpha=8)
    peft_lora_into(ours, peft_model)
    assert count_parameters(ours)[0] == peft_model.get_nb_trainable_parameters()[0]

    trl_batch = next(iter(trainer.get_train_dataloader()))
    # Our tokens and labels for the same conversations, padded as TRL pads (with the end-of-turn id).
    batch = sft.pad_batch([chat.chat_tokens(tokenizer, c) for c in conversations], pad_id=tokenizer.pad_token_id)
    order = [batch["input_ids"].tolist().index(row) for row in trl_batch["input_ids"].tolist()]
    for key in ("input_ids", "labels", "attention_mask"):
        assert batch[key][order].tolist() == trl_batch[key].tolist(), key
    with torch.no_grad():
        theirs = trainer.compute_loss(peft_model, dict(trl_batch))
        mine = sft.sft_loss(ours.eval(), batch)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_answer_logprobs_score_each_answer_as_the_assistant_turn(tokenizer) -> None:
    model = LlamaDecoder.from_transformers(tiny_llama(len(tokenizer), seed=1))
    questions = [[{"role": "user", "content": "Original or shuffled?"}], [{"role": "user", "content": "And this?"}],
                 [{"role": "user", "content": "Shuffled or original?"}]]  # as long as the first: batched with it
    answers = ["original", "shuffled words"]
    logprobs, lengths = sft.answer_logprobs(model, tokenizer, questions, answers, batch_size=3)
    assert logprobs.shape == lengths.shape == (3, 2)
    for q, question in enumerate(questions):
        for a, answer in enumerate(answers):
            tokens = chat.chat_tokens(tokenizer, [*question, {"role": "assistant", "content": answer}])
            with torch.no_grad():
                loss = sft.sft_loss(model, sft.pad_batch([tokens], pad_id=0))
            assert int(lengths[q, a]) == sum(label != IGNORE_INDEX for label in tokens.labels[1:])
            torch.testing.assert_close(logprobs[q, a], -loss * lengths[q, a])
    assert sft.choose_answers(model, tokenizer, questions, answers) == logprobs.argmax(dim=1).tolist()
    per_token = sft.choose_answers(model, tokenizer, questions, answers, normalize=True)
    assert per_token == (logprobs / lengths).argmax(dim=1).tolist()


def test_answer_logprobs_read_a_shared_prefix_once_and_score_the_same(tokenizer) -> None:
    from llmcourse import icl

    model = LlamaDecoder.from_transformers(tiny_llama(len(tokenizer), seed=2))
    shots = [("Is 'to be or not to be' in order?", "original"), ("Is 'be to not or be to' in order?", "shuffled")]
    questions = [icl.few_shot_messages(q, shots, system="Answer with one word.")
                 for q in ("And 'that is the question'?", "And 'question the is that'?", "Now?")]
    answers = ["original", "shuffled"]
    plain, lengths = sft.answer_logprobs(model, tokenizer, questions, answers, batch_size=2)
    shared, shared_lengths = sft.answer_logprobs(model, tokenizer, questions, answers, batch_size=2, share_prefix=True)
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=1e-5)
    assert torch.equal(shared_lengths, lengths)
    # Only the last turn is the answer: the shots' answers are part of the prompt.
    for q, question in enumerate(questions):
        for a, answer in enumerate(answers):
            tokens = chat.chat_tokens(tokenizer, [*question, {"role": "assistant", "content": answer}])
            last = len(tokens.labels)
            while tokens.labels[last - 1] != IGNORE_INDEX:
                last -= 1
            ids = torch.tensor([tokens.input_ids])
            with torch.no_grad():
                logits = model(ids)[0, last - 1:-1].log_softmax(-1)
            want = logits.gather(-1, ids[0, last:, None])[:, 0].sum()
            assert int(lengths[q, a]) == len(tokens.input_ids) - last
            torch.testing.assert_close(plain[q, a], want, atol=1e-4, rtol=1e-5)
    # Prompts with nothing in common but the template still score the same.
    lone = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Bye now"}]]
    torch.testing.assert_close(sft.answer_logprobs(model, tokenizer, lone, answers, share_prefix=True)[0],
                               sft.answer_logprobs(model, tokenizer, lone, answers)[0], atol=1e-4, rtol=1e-5)


def test_a_repeated_prefix_cache_continues_like_the_whole_text() -> None:
    from llmcourse.llama import LlamaConfig

    torch.manual_seed(0)
    model = LlamaDecoder(LlamaConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, d_ff=64,
                                     block_size=32)).eval()
    prefix_ids, rest = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (3, 4))
    with torch.no_grad():
        prefix = model.new_cache(1, 7)
        model(prefix_ids, cache=prefix)
        cache = prefix.repeat_prefix(3, 11)
        assert cache.length == 7 and prefix.length == 7
        got = model(rest, cache=cache)
        want = model(torch.cat([prefix_ids.expand(3, -1), rest], dim=1))[:, 7:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one-row cache"):
        cache.repeat_prefix(2, 20)
    with pytest.raises(ValueError, match="cannot hold"):
        prefix.repeat_prefix(2, 5)
